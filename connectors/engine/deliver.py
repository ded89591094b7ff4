"""The delivery loop: stream payload rows, split off rejects, skip what the ledger has, chunk, send, record.

Payloads are read from Parquet in bounded Arrow batches; memory stays flat whatever the row count. The
ledger is written per chunk: a chunk's items are recorded ``in_doubt`` before the request goes out and
get their final state when it returns, so a crash loses at most the chunks in flight, and those are
marked ``in_doubt`` (resent on the next run under the default at-least-once policy).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from connectors.engine.sender import Chunk, ChunkResult, Item, Sender
from connectors.errors import SyncStopped
from connectors.ledger import ItemRow, Ledger, RunRow

READ_BATCH_ROWS = 5_000
LATENCY_SAMPLE = 10_000  # latencies kept for the p95 (a uniform sample beyond that)
MAX_WARNINGS = 50
EXCERPT_CHARS = 500
CRASH_ENV = "SYNCLINE_CRASH_AFTER_CHUNKS"  # test-only fault hook: hard exit after N recorded chunks


@dataclass(frozen=True)
class ChunkLimits:
    max_items: int
    max_body_bytes: int
    envelope_bytes: int

    def __post_init__(self) -> None:
        if self.max_items < 1:
            raise ValueError("max_items must be at least 1")


def chunk_items(items: Iterator[Item], limits: ChunkLimits) -> Iterator[list[Item]]:
    """Group items into requests of at most ``max_items`` and ``max_body_bytes`` (body incl. separators).

    Never yields an empty list. An item too big for a request on its own is the caller's to reject first.
    """
    current: list[Item] = []
    size = limits.envelope_bytes
    for item in items:
        extra = len(item.payload) + (1 if current else 0)
        if current and (len(current) >= limits.max_items or size + extra > limits.max_body_bytes):
            yield current
            current, size = [], limits.envelope_bytes
            extra = len(item.payload)
        current.append(item)
        size += extra
    if current:
        yield current


def _batches(parquet: pq.ParquetFile, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """Row group by row group, then in slices. Not ``iter_batches``: its read-ahead kept up to ~100 MB of
    decoded pages alive on a 1M-row file (measured), so memory grew with the file; this stays at one group."""
    for index in range(parquet.num_row_groups):
        yield from parquet.read_row_group(index, columns=columns).to_batches(max_chunksize=READ_BATCH_ROWS)


@dataclass
class DeliveryOptions:
    limits: ChunkLimits
    concurrency: int = 4
    mode: str = "append"  # append | mirror
    in_doubt: str = "resend"  # resend | hold
    dry_run: bool = False


class Delivery:
    """Runs one sync's payload file through a :class:`Sender` and records everything in the ledger."""

    def __init__(
        self,
        sender: Sender | None,
        ledger: Ledger,
        run: RunRow,
        options: DeliveryOptions,
        on_progress: Callable[[RunRow], None] | None = None,
    ) -> None:
        self.sender = sender
        self.ledger = ledger
        self.run = run
        self.options = options
        self.on_progress = on_progress
        self.latencies: list[float] = []
        self.warnings: list[str] = []
        self._latency_seen = 0
        self._rng = random.Random(0)
        self._chunks_recorded = 0
        self._crash_after = int(os.environ.get(CRASH_ENV, "0") or 0)
        self._started = time.perf_counter()

    # -- reading and planning ---------------------------------------------------------------------------
    def _plan(self, payload_path: Path) -> Iterator[Item]:
        """Yield items to send; record rejects and count skips on the way (batch by batch)."""
        run = self.run
        parquet = pq.ParquetFile(payload_path)
        columns = ["_key", "cursor_text", "idem_key", "payload", "payload_hash", "reject_reason"]
        checker = None
        if self.sender is not None and not self.options.dry_run:
            checker = self.sender.endpoint.item_checker(self.sender)
        for batch in _batches(parquet, columns):
            keys = batch.column("_key").to_pylist()
            cursors = batch.column("cursor_text").to_pylist()
            idem = batch.column("idem_key").to_pylist()
            payloads = batch.column("payload").to_pylist()
            hashes = batch.column("payload_hash").to_pylist()
            reasons = batch.column("reject_reason").to_pylist()
            run.source_rows += len(idem)
            known = self.ledger.lookup(idem)
            rejects: list[ItemRow] = []
            rows = zip(keys, cursors, idem, payloads, hashes, reasons, strict=True)
            for key, cursor, ikey, payload, phash, reason in rows:
                state, old_hash = known.get(ikey, (None, None))
                if state == "delivered" and (self.options.mode == "append" or old_hash == phash):
                    run.skipped += 1
                    continue
                if reason is None and checker is not None:
                    reason = checker(json.loads(payload))
                if reason is not None:
                    run.rejected += 1
                    rejects.append(
                        ItemRow(ikey, run.sync, run.endpoint, key, phash, "rejected", reason,
                                run_id=run.run_id, excerpt=payload[:EXCERPT_CHARS], cursor=cursor)
                    )
                    continue
                if state == "in_doubt" and self.options.in_doubt == "hold":
                    run.in_doubt += 1
                    continue
                yield Item(ikey, key, phash, payload.encode(), cursor)
            if rejects and not self.options.dry_run:
                self.ledger.write_items(rejects)

    # -- sending and recording ----------------------------------------------------------------------------
    def _record(self, result: ChunkResult) -> None:
        run = self.run
        by_key = {i.idem_key: i for i in result.chunk.items}
        rows: list[ItemRow] = []
        for state, outcomes in (
            ("delivered", result.delivered),
            ("rejected", result.rejected),
            ("in_doubt", result.in_doubt),
            ("failed", result.failed),
        ):
            for ikey, detail in outcomes.items():
                item = by_key[ikey]
                vendor_id = detail if state == "delivered" else None
                reason = None if state == "delivered" else detail
                excerpt = item.payload[:EXCERPT_CHARS].decode("utf-8", "replace") if state == "rejected" else None
                rows.append(
                    ItemRow(ikey, run.sync, run.endpoint, item.source_key, item.payload_hash, state, reason,
                            vendor_id, run.run_id, result.chunk.chunk_id, excerpt, item.cursor)
                )
        keep = self.options.mode == "append"  # never let a failure here overwrite another run's delivery
        self.ledger.write_items([r for r in rows if r.state == "delivered"])
        self.ledger.write_items([r for r in rows if r.state != "delivered"], keep_delivered=keep)
        self.ledger.write_attempts(result.attempts)
        run.delivered += len(result.delivered)
        run.rejected += len(result.rejected)
        run.in_doubt += len(result.in_doubt)
        run.failed += len(result.failed)
        run.requests += result.requests
        run.retries += max(0, result.requests - self._distinct_parts(result))
        run.http_429 += sum(1 for a in result.attempts if a.status == 429)
        run.bytes_sent += sum(a.bytes for a in result.attempts)
        for attempt in result.attempts:
            if attempt.status is not None:
                self._sample_latency(attempt.latency_ms)
        for warning in result.warnings:
            if len(self.warnings) < MAX_WARNINGS and warning not in self.warnings:
                self.warnings.append(warning)
        self._chunks_recorded += 1
        if self.on_progress is not None:
            self.on_progress(run)
        if self._crash_after and self._chunks_recorded >= self._crash_after:
            os._exit(70)

    def _sample_latency(self, latency_ms: float) -> None:
        """Reservoir sample (Vitter's algorithm R) for p95: memory stays fixed however many requests."""
        self._latency_seen += 1
        if len(self.latencies) < LATENCY_SAMPLE:
            self.latencies.append(latency_ms)
        else:
            slot = self._rng.randrange(self._latency_seen)
            if slot < LATENCY_SAMPLE:
                self.latencies[slot] = latency_ms

    @staticmethod
    def _distinct_parts(result: ChunkResult) -> int:
        """Requests that were first attempts (bisected halves are new requests, not retries)."""
        return sum(1 for a in result.attempts if a.attempt == 1)

    def _claim(self, chunk: Chunk) -> Chunk:
        """Mark the chunk in_doubt before sending; drop items another run delivered since planning."""
        run = self.run
        rows = [
            ItemRow(i.idem_key, run.sync, run.endpoint, i.source_key, i.payload_hash, "in_doubt",
                    "request in flight (outcome unknown if the run stopped here)", run_id=run.run_id,
                    chunk_id=chunk.chunk_id, cursor=i.cursor)
            for i in chunk.items
        ]
        claimed = self.ledger.claim(rows, over_delivered=self.options.mode == "mirror")
        if len(claimed) < len(chunk.items):
            run.skipped += len(chunk.items) - len(claimed)
            chunk = Chunk(chunk.chunk_id, [i for i in chunk.items if i.idem_key in claimed])
        return chunk

    def run_file(self, payload_path: Path) -> RunRow:
        """Deliver every pending item of ``payload_path``; returns the run's counters."""
        try:
            return self._run_file(payload_path)
        except SyncStopped as stop:  # e.g. an item checker's lookup refused the credential
            self.run.status, self.run.error = "stopped", str(stop)
            return self._finish(stop)

    def _run_file(self, payload_path: Path) -> RunRow:
        items = self._plan(payload_path)
        chunks = chunk_items(items, self.options.limits)
        stop: SyncStopped | None = None
        if self.options.dry_run or self.sender is None:
            for planned in chunks:
                self.run.requests += 1
                self.run.bytes_sent += sum(len(i.payload) for i in planned)
            return self._finish(None)
        in_flight: set[Future[ChunkResult]] = set()
        with ThreadPoolExecutor(max_workers=self.options.concurrency, thread_name_prefix="syncline-send") as pool:
            for items_of_chunk in chunks:
                chunk = self._claim(Chunk(uuid.uuid4().hex[:16], items_of_chunk))
                if not chunk.items:
                    continue
                in_flight.add(pool.submit(self.sender.send_chunk, chunk))
                if len(in_flight) >= self.options.concurrency:
                    done, in_flight = wait(in_flight, return_when=FIRST_COMPLETED)
                    stop = self._collect(done) or stop
                if stop is not None:
                    break
            done, _ = wait(in_flight)
            stop = self._collect(done) or stop
        if stop is not None:
            # Items never sent stay accountable: recorded failed (pending retry) with the reason.
            for rest in chunks:
                self._record(ChunkResult(Chunk("not-sent", rest), failed={i.idem_key: f"not sent: {stop}" for i in rest}))
            self.run.status, self.run.error = "stopped", str(stop)
        return self._finish(stop)

    def _collect(self, done: set[Future[ChunkResult]]) -> SyncStopped | None:
        stop = None
        for future in done:
            result = future.result()
            self._record(result)
            stop = stop or result.stop
        return stop

    def _finish(self, stop: SyncStopped | None) -> RunRow:
        run = self.run
        if self.sender is not None and self.sender.side_attempts and not self.options.dry_run:
            self.ledger.write_attempts(self.sender.side_attempts)
            run.requests += len(self.sender.side_attempts)
            self.sender.side_attempts = []
        if self.warnings:
            more = len(self.warnings) - 10
            run.notes = "; ".join(self.warnings[:10]) + (f" (+{more} more)" if more > 0 else "")
        run.seconds = round(time.perf_counter() - self._started, 3)
        if len(self.latencies) >= 2:
            run.p95_latency_ms = round(statistics.quantiles(self.latencies, n=20)[-1], 3)
        elif self.latencies:
            run.p95_latency_ms = self.latencies[0]
        if stop is None:
            run.status = "dry_run" if self.options.dry_run else ("partial" if run.failed or run.in_doubt else "success")
        return run
