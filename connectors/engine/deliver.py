"""The delivery loop: plan in DuckDB, claim a group of items, send its requests many at a time, record.

- Planning (``plan.py``) skips what the destination already has and splits off rejects in SQL.
- Rows to send arrive in Arrow batches. Each batch is one claim group: one statement records all its
  items ``in_doubt`` (durable) before any of its requests leaves, so a crash loses at most the groups in
  flight, and those stay ``in_doubt`` (resent on the next run under the default at-least-once policy).
- Requests go out from a thread pool, up to the in-flight cap (``concurrency.py``); connections are reused.
- Outcomes go to the ledger's writer thread, which group-commits them (``ledger/writer.py``).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import queue
import random
import statistics
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from connectors.engine.concurrency import InFlightLimit
from connectors.engine.dryrun import DryRunOutput
from connectors.engine.plan import EXCERPT_CHARS, Column, Planner, boundaries, items_of
from connectors.engine.sender import CLAIM_PREFIX, Chunk, ChunkResult, Item, Sender
from connectors.errors import Interrupted, SyncStopped
from connectors.ledger import ItemRow, Ledger, OutcomeWriter, RunRow
from connectors.ledger.rows import NEVER_SENT
from connectors.ledger.writer import Outcome
from connectors.progress import NoProgress, Progress

LATENCY_SAMPLE = 10_000  # latencies kept for the p95 (a uniform sample beyond that)
MAX_WARNINGS = 50
CRASH_ENV = "SYNCLINE_CRASH_AFTER_CHUNKS"  # test-only fault hook: hard exit after N committed chunk outcomes
CLAIM_GROUP_ITEMS = 2_000  # items per claim statement (rounded to whole requests)
MAX_REMOVED_SHARE = 0.5  # more of the delivered items gone at once looks like a broken extract: undo none


@dataclass(frozen=True)
class ChunkLimits:
    max_items: int
    max_body_bytes: int
    envelope_bytes: int

    def __post_init__(self) -> None:
        if self.max_items < 1:
            raise ValueError("max_items must be at least 1")

    @property
    def budget(self) -> int:
        """Bytes of items (with separators) a request may carry."""
        return self.max_body_bytes - self.envelope_bytes


def chunk_items(items: Iterator[Item], limits: ChunkLimits) -> Iterator[list[Item]]:
    """Group separate items into requests of at most ``max_items`` and ``max_body_bytes`` (the slow path:
    bisection halves and endpoints that rewrite items). Never yields an empty list."""
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


@dataclass
class GroupTally:
    """A journaled claim group's requests still unanswered, and whether it can be kept as one ledger row:
    every item new at this destination (the snapshot had none of them), append mode, every request
    accepted whole. Then its last answer also journals a ``group`` row (``Ledger.fold``)."""

    chunks: int
    items: int
    keys_json: str | None  # the group's keys as a JSON array; None when it must be kept item by item
    min_cursor: str | None = None
    max_cursor: str | None = None
    whole: bool = True


class Answers:
    """The requests in flight that have finished, in the order they finished.

    ``concurrent.futures.wait(FIRST_COMPLETED)`` puts a waiter on every pending future and takes it off
    again, each under that future's lock, on every call: with 64 requests in flight that is 128 lock
    rounds per answer, contended by the sending threads finishing theirs. Here each future puts itself in
    a queue as it finishes, and the loop takes what is there: one lock round per answer."""

    def __init__(self) -> None:
        self._finished: queue.SimpleQueue[Future[ChunkResult]] = queue.SimpleQueue()

    def watch(self, future: Future[ChunkResult], in_flight: set[Future[ChunkResult]]) -> None:
        in_flight.add(future)
        future.add_done_callback(self._finished.put)

    def take(self, in_flight: set[Future[ChunkResult]]) -> list[Future[ChunkResult]]:
        """Wait for one request of ``in_flight`` to finish; return it and every other finished already,
        removed from ``in_flight``."""
        done = [self._finished.get()]
        with contextlib.suppress(queue.Empty):
            while True:
                done.append(self._finished.get_nowait())
        in_flight.difference_update(done)
        return done


@dataclass
class DeliveryOptions:
    limits: ChunkLimits
    concurrency: int = 64  # the most requests in flight
    adaptive: bool = True  # grow and shrink between 1 and ``concurrency`` (endpoints with no documented rate)
    mode: str = "append"  # append | mirror
    in_doubt: str = "resend"  # resend | hold
    dry_run: bool = False
    memory_limit: str = "256MB"
    threads: int | None = None
    removals: bool = False  # mirror mode over the whole source: undo what is gone (Endpoint.removal)
    breaker_failures: int = 5  # requests in a row ending without an answer that stop the sync
    deadline: float | None = None  # seconds the run may deliver for; then it stops, the rest left pending


class LedgerProgress:
    """Multi-step progress at one destination, written through the run's ledger writer (durable at once)."""

    def __init__(self, writer: OutcomeWriter, destination: str) -> None:
        self.writer = writer
        self.destination = destination

    def progress(self, idem_keys: Any) -> dict[str, tuple[str | None, str | None]]:
        keys = list(idem_keys)
        found: dict[str, tuple[str | None, str | None]] = self.writer.call(
            lambda ledger: ledger.progress(self.destination, keys))
        return found

    def set_progress(self, idem_key: str, progress: str, vendor_id: str | None = None) -> None:
        self.writer.call(lambda ledger: ledger.set_progress(self.destination, idem_key, progress, vendor_id))


class Delivery:
    """Runs one sync's payload file through a :class:`Sender` and records everything in the ledger."""

    def __init__(
        self,
        sender: Sender | None,
        ledger: Ledger,
        run: RunRow,
        options: DeliveryOptions,
        on_progress: Callable[[RunRow], None] | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.sender = sender
        self.progress: Progress = progress or NoProgress()
        self.dry_output: DryRunOutput | None = None  # an exact dry run writes its requests here
        self._progress_base = (0, 0, 0)
        self._to_send = 0
        self._unsent = 0  # items recorded "not sent" after a stop: in the run's counts, not "sent"
        self._in_flight_now = 0
        self.ledger = ledger
        self.run = run
        self.options = options
        self.on_progress = on_progress
        self.latencies: list[float] = []
        self.warnings: list[str] = []
        self.in_flight_peak = 0
        self.limit = InFlightLimit(options.concurrency, adaptive=options.adaptive)
        self._latency_seen = 0
        self._rng = random.Random(0)
        self._started = time.perf_counter()
        self._writer: OutcomeWriter | None = None
        self._chunks_recorded = 0
        self._journaled = sender is not None and not sender.endpoint.steps
        self._crash_after = int(os.environ.get(CRASH_ENV, "0") or 0)
        self._halt: SyncStopped | None = None  # set by request_stop, the deadline or the circuit breaker
        self._planner: Planner | None = None
        self._failures_in_a_row = 0
        self._groups: dict[str, GroupTally] = {}  # journaled claim groups with requests unanswered
        # Items an earlier run left in doubt are counted when sent again, where the vendor cannot dedup and
        # a read-back did not settle them (multi-step endpoints count their own).
        self._count_prior = (sender is not None and not sender.endpoint.steps
                             and sender.endpoint.dedup != "native")

    def request_stop(self, stop: SyncStopped) -> None:
        """Stop cleanly: claim nothing new, let requests on the wire finish and record their answers.
        Safe from a signal handler or another thread; the first reason given is kept."""
        if self._halt is None:
            self._halt = stop
        if self.sender is not None:
            self.sender.stop_retrying(str(self._halt))

    # -- entry ----------------------------------------------------------------------------------------------
    def run_file(self, payload_path: Path, work_dir: Path | None = None, *, state: Path | None = None) -> RunRow:
        """Deliver every pending item of ``payload_path``; returns the run's counters. ``state`` is the
        ledger snapshot of this destination the caller took (``runner.deliver_file``: None when empty)."""
        work_dir = work_dir or payload_path.parent
        planner = Planner(
            payload_path, state, mode=self.options.mode, hold_in_doubt=self.options.in_doubt == "hold",
            work_dir=work_dir, memory_limit=self.options.memory_limit, threads=self.options.threads,
        )
        timer = None
        if self.options.deadline and not self.options.dry_run:
            limit = self.options.deadline
            timer = threading.Timer(limit, lambda: self.request_stop(SyncStopped(
                f"the run's deadline of {limit:g}s (delivery.deadline) passed; the rest is left pending")))
            timer.daemon = True
            timer.start()
        try:
            return self._run(planner)
        except SyncStopped as stop:  # e.g. an item checker's lookup refused the credential
            self._stopped(stop)
            return self._finish(stop)
        finally:
            self.progress.finish()
            if timer is not None:
                timer.cancel()
            planner.close()
            if self._writer is not None:
                self._writer.close()

    def _stopped(self, stop: SyncStopped) -> None:
        self.run.error = str(stop)
        if isinstance(stop, Interrupted):
            self.run.status, self.run.stop_signal = "interrupted", stop.signum
        else:
            self.run.status = "stopped"

    def _run(self, planner: Planner) -> RunRow:
        run, options = self.run, self.options
        counts = planner.counts()
        run.source_rows += counts.source_rows
        run.skipped += counts.skipped
        run.rejected += counts.rejected + counts.refused
        run.in_doubt += counts.held
        if counts.refused:
            self.warnings.append(
                f"{counts.refused} items the vendor refused before were not sent again (same payload; "
                "`syncline retry --rejected` resends them)")
        limits = options.limits
        group_rows = max(limits.max_items, CLAIM_GROUP_ITEMS // limits.max_items * limits.max_items)
        if options.dry_run and self.dry_output is not None:
            return self._plan_requests(planner, group_rows, counts)
        if options.dry_run or self.sender is None:
            for batch in planner.to_send(group_rows):
                body = Column(batch.column("body_part"))
                run.requests += sum(1 for _ in boundaries(body, batch.num_rows, limits.max_items, limits.budget))
                run.bytes_sent += len(body.data) - batch.num_rows
            run.skipped += planner.repeats
            return self._finish(None)
        self._writer = OutcomeWriter(self.ledger.open_another()).start()
        progress = LedgerProgress(self._writer, run.destination)
        self.sender.progress_store = progress
        if self.sender.single is not None:
            self.sender.single.progress_store = progress
        self._write_rejects(planner)
        checker = self.sender.endpoint.item_checker(self.sender)
        self._planner = planner
        try:
            return self._send_all(planner.to_send(group_rows), checker, counts.to_send)
        finally:
            self.run.skipped += planner.repeats

    def _plan_requests(self, planner: Planner, group_rows: int, counts: Any) -> RunRow:
        """An exact dry run: every request a real run would send, with the same groups and boundaries."""
        out = self.dry_output
        assert out is not None
        run = self.run
        out.rejects(planner.rejects())
        for n, batch in enumerate(planner.to_send(group_rows)):
            for chunk in self._chunks(batch, f"dry{n}"):
                joined = chunk.joined or b""
                out.request(chunk.keys_json or "[]", joined, [i.payload for i in chunk.items]
                            if self._needs_items(out) else [], chunk.count)
                run.requests += 1
                run.bytes_sent += len(joined)
        run.skipped += planner.repeats
        out.finish({
            "sync": run.sync, "destination": run.destination, "window": run.span,
            "source_rows": counts.source_rows, "to_send": counts.to_send - planner.repeats,
            "rejected": counts.rejected, "refused_before": counts.refused, "skipped": counts.skipped,
            "held_in_doubt": counts.held, "repeats": planner.repeats,
        }, self.options.concurrency)
        return self._finish(None)

    @staticmethod
    def _needs_items(out: DryRunOutput) -> bool:
        """Whether the endpoint builds bodies from separate items (it rewrites them) rather than the join."""
        return out.endpoint.encode_joined(b"", 0, out.shown) is None

    def _write_rejects(self, planner: Planner) -> None:
        run = self.run
        rows = [
            ItemRow(run.destination, key, run.sync, run.endpoint, source, phash, "rejected", reason,
                    run_id=run.run_id, excerpt=excerpt, cursor=cursor)
            for key, source, phash, reason, excerpt, cursor in planner.rejects()
        ]
        if rows:
            assert self._writer is not None
            self._writer.call(lambda ledger: ledger.write_items(rows))

    # -- claiming and sending ------------------------------------------------------------------------------
    def _claim(self, batch: pa.RecordBatch, group_id: str, *, state: str = "in_doubt",
               reason: str | None = None) -> Future[Any]:
        """One statement claims the whole batch (committed when the future resolves).

        Batch endpoints append the claim to the journal (folded into the items in key order later);
        multi-step endpoints upsert the items at once, since their progress is saved per item as it goes."""
        assert self._writer is not None
        run = self.run
        doc = (b"[" + Column(batch.column("claim_part")).joined(0, batch.num_rows) + b"]").decode()
        mirror = self.options.mode == "mirror"
        if self._journaled:
            return self._writer.claim_journal(
                run.destination, run.sync, run.endpoint, run.run_id, group_id, doc, items=batch.num_rows,
                state=state, reason=reason, over_delivered=mirror,
            )
        return self._writer.claim(
            run.destination, run.sync, run.endpoint, run.run_id, group_id, doc, over_delivered=mirror,
            state=state, reason=reason,
        )

    def _claimed(self, batch: pa.RecordBatch, claim: Future[Any]) -> pa.RecordBatch:
        """The batch less the rows another run delivered since planning (a direct claim does not take them;
        a journaled claim runs under the window lock, where no other run delivers these items)."""
        claimed = claim.result()
        if claimed is None or len(claimed) == batch.num_rows:
            return batch
        self.run.skipped += batch.num_rows - len(claimed)
        return batch.filter(pc.is_in(batch.column("idem_key"), value_set=pa.array(claimed, pa.string())))

    def _check(self, batch: pa.RecordBatch, checker: Callable[[dict[str, Any]], str | None]) -> pa.RecordBatch:
        """The endpoint's per-run item check (rare: GradeMyPage server events): rejects drop out."""
        assert self._writer is not None
        run = self.run
        items = items_of(batch, 0, batch.num_rows)
        reasons = [checker(json.loads(item.payload)) for item in items]
        rejects = [
            ItemRow(run.destination, item.idem_key, run.sync, run.endpoint, item.source_key, item.payload_hash,
                    "rejected", reason, run_id=run.run_id, excerpt=item.payload[:EXCERPT_CHARS].decode("utf-8", "replace"),
                    cursor=item.cursor)
            for item, reason in zip(items, reasons, strict=True) if reason is not None
        ]
        if not rejects:
            return batch
        run.rejected += len(rejects)
        self._writer.call(lambda ledger: ledger.write_items(rejects))
        return batch.filter(pa.array([r is None for r in reasons]))

    def _chunks(self, batch: pa.RecordBatch, group_id: str) -> Iterator[Chunk]:
        limits = self.options.limits
        body = Column(batch.column("body_part"))
        keys = Column(batch.column("key_part"))
        prior = batch.column("prior_in_doubt") if self._count_prior else None
        if prior is not None and not pc.any(prior).as_py():
            prior = None
        for n, (start, stop) in enumerate(boundaries(body, batch.num_rows, limits.max_items, limits.budget)):
            chunk = Chunk(
                f"{group_id}.{n}", count=stop - start, joined=body.joined(start, stop),
                keys_json="[" + keys.joined(start, stop).decode() + "]",
                load=functools.partial(items_of, batch, start, stop), claim_id=group_id,
            )
            if prior is not None:
                flags = pc.fill_null(prior.slice(start, stop - start), False)
                chunk.resends = pc.filter(batch.column("idem_key").slice(start, stop - start), flags).to_pylist()
            yield chunk

    def _send_all(self, batches: Iterator[pa.RecordBatch], checker: Any, to_send: int) -> RunRow:
        """Claim group by group, one group ahead: the next claim commits while this group's requests go out."""
        assert self.sender is not None
        sender = self.sender
        stop: SyncStopped | None = None
        in_flight: set[Future[ChunkResult]] = set()
        pending_chunks: list[Chunk] = []
        run = self.run
        self._progress_base = (run.delivered, run.rejected, run.in_doubt + run.failed)
        self._to_send, self._unsent = to_send, 0
        self.progress.start(run.sync, run.endpoint, to_send)

        def claim_next() -> tuple[pa.RecordBatch, str, Future[list[str]]] | None:
            batch = next(batches, None)
            if batch is None:
                return None
            if checker is not None:
                batch = self._check(batch, checker)
            group_id = CLAIM_PREFIX + uuid.uuid4().hex[:15]
            return batch, group_id, self._claim(batch, group_id)

        limits = self.options.limits
        # Claims run ahead of sending by enough groups to cover the requests in flight, so the sending
        # loop never waits on the ledger; a crash leaves at most these groups claimed but unsent (in_doubt).
        depth = 1 + -(-self.options.concurrency * limits.max_items // CLAIM_GROUP_ITEMS)
        answered = Answers()
        with ThreadPoolExecutor(max_workers=self.options.concurrency, thread_name_prefix="syncline-send") as pool:
            ahead: deque[tuple[pa.RecordBatch, str, Future[Any]]] = deque()
            while stop is None:
                if self._halt is not None:
                    stop = self._halt
                    break
                while len(ahead) < depth and (claimed := claim_next()) is not None:
                    ahead.append(claimed)
                if not ahead:
                    break
                batch, group_id, claim = ahead.popleft()
                batch = self._claimed(batch, claim)
                pending_chunks = list(self._chunks(batch, group_id)) if batch.num_rows else []
                if self._journaled:
                    self._track_group(batch, group_id, len(pending_chunks))
                while pending_chunks and stop is None:
                    while len(in_flight) >= self.limit.current:
                        stop = self._collect(answered.take(in_flight)) or stop
                    stop = stop or self._halt
                    if stop is not None:
                        break
                    answered.watch(pool.submit(sender.send_chunk, pending_chunks.pop(0)), in_flight)
                    self._in_flight_now = len(in_flight)
                    self.in_flight_peak = max(self.in_flight_peak, len(in_flight))
            while in_flight:
                stop = self._collect(answered.take(in_flight)) or stop
        if stop is not None:
            # Items never sent stay accountable: recorded failed (pending retry) with the reason.
            reason = f"{NEVER_SENT}: {stop}"
            for chunk in pending_chunks:
                self._record(ChunkResult(chunk, failed=dict.fromkeys((i.idem_key for i in chunk.items), reason)))
            rest = []
            for batch, _, claim in ahead:
                claim.result()  # claimed ahead, never sent: recorded failed below, like the rest
                rest.append(batch)
            for batch in rest:
                self._claim(batch, "not-sent", state="failed", reason=reason).result()
                self.run.failed += batch.num_rows
            # Never claimed: nothing of them is in the ledger, so the next run sends them; counted pending
            # here (claiming millions of rows only to mark them failed would delay a Ctrl-C by minutes).
            self.run.failed += sum(batch.num_rows for batch in batches)
            self._stopped(stop)
        elif self.options.removals and self._planner is not None:
            stop = self._send_removals(self._planner)
            if stop is not None:
                self._stopped(stop)
        return self._finish(stop)

    def _track_group(self, batch: pa.RecordBatch, group_id: str, chunks: int) -> None:
        """Count the group's requests; a group with none is answered at once (the writer's fold waits
        for every claim before it to be answered)."""
        run = self.run
        if not chunks:
            assert self._writer is not None
            self._writer.record(Outcome(run.destination, run.run_id, group_id, sync=run.sync, endpoint=run.endpoint,
                                        group_done=True))
            return
        tally = GroupTally(chunks, batch.num_rows, None)
        if self.options.mode == "append" and not pc.any(batch.column("known")).as_py():
            tally.keys_json = "[" + Column(batch.column("key_part")).joined(0, batch.num_rows).decode() + "]"
            bounds = pc.min_max(batch.column("cursor_text"))
            tally.min_cursor, tally.max_cursor = bounds["min"].as_py(), bounds["max"].as_py()
        self._groups[group_id] = tally

    def _send_removals(self, planner: Planner) -> SyncStopped | None:
        """Mirror mode: undo at the vendor what is gone from the source (``Endpoint.removal``), recorded
        ``removed``. Few items, so one request at a time; a failed removal is simply tried again next run
        (the item stays delivered). Not claimed first: an undo sent twice changes nothing."""
        assert self.sender is not None and self._writer is not None
        run, sender = self.run, self.sender
        keys, delivered = planner.removed()
        if not keys:
            return None
        if len(keys) > 10 and len(keys) > MAX_REMOVED_SHARE * delivered:
            self.warnings.append(f"{len(keys)} of {delivered} delivered items are gone from the source: more than "
                                 f"{MAX_REMOVED_SHARE:.0%}, so no removal was sent (an empty or broken extract?)")
            return None
        stored = self._writer.call(lambda ledger: ledger.payloads(run.destination, keys))
        items = []
        for key in keys:
            payload, source = stored.get(key, (None, None))
            undo = sender.endpoint.removal(json.loads(payload)) if payload else None
            if undo is not None:
                items.append(Item(key, source, "removed", json.dumps(undo, separators=(",", ":")).encode()))
        for n, part in enumerate(chunk_items(iter(items), self.options.limits)):
            result = sender.send_chunk(Chunk(f"removal.{n}", part, claim_id="removal"))
            done = {i.idem_key: None for i in part} if result.all_delivered else result.delivered
            rows = [ItemRow(run.destination, item.idem_key, run.sync, run.endpoint, item.source_key, None, "removed",
                            "gone from the source; its removal was delivered", done[item.idem_key], run.run_id,
                            "removal") for item in part if item.idem_key in done]
            def write(ledger: Ledger, rows: list[ItemRow] = rows, attempts: Any = result.attempts) -> None:
                ledger.write_items(rows)
                ledger.write_attempts(attempts)

            self._writer.call(write)
            run.removed += len(rows)
            run.requests += result.requests
            run.bytes_sent += sum(a.bytes for a in result.attempts)
            for reason in {**result.rejected, **result.failed, **result.in_doubt}.values():
                if len(self.warnings) < MAX_WARNINGS:
                    self.warnings.append(f"a removal was not delivered (tried again next run): {reason}")
                break
            if result.stop is not None:
                return result.stop
        return None

    def _collect(self, done: Iterable[Future[ChunkResult]]) -> SyncStopped | None:
        stop = None
        for future in done:
            result = future.result()
            self._record(result)
            stop = stop or result.stop or self._breaker(result)
        return stop

    def _breaker(self, result: ChunkResult) -> SyncStopped | None:
        """Open the circuit after ``breaker_failures`` requests in a row ended without an answer (vendor
        down, timeouts, 5xx after every retry): the sync stops instead of trying every item for hours."""
        if not result.requests:
            return None
        answered = result.all_delivered or result.delivered or result.rejected
        if not result.gave_up or answered:
            self._failures_in_a_row = 0
            return None
        self._failures_in_a_row += 1
        if self._failures_in_a_row < self.options.breaker_failures:
            return None
        last = next(iter({**result.failed, **result.in_doubt}.values()), "no answer")
        # "Requests" are the vendor requests (one per chunk); each ran through its retries first, so the
        # vendor saw more attempts than that: say how many, or the count reads as five tries in all.
        stop = SyncStopped(f"{self._failures_in_a_row} requests in a row got no answer, the last after "
                           f"{result.requests} attempts, so the sync stopped (delivery.breaker_failures); last: {last}")
        self.request_stop(stop)
        return stop

    def _record(self, result: ChunkResult) -> None:
        run = self.run
        chunk = result.chunk
        if chunk.resends and result.requests:
            # Sent again after an earlier run's unknown outcome: the vendor may now hold two copies.
            result.count_resends([k for k in chunk.resends if k not in result.failed])
        if result.resent_unknown and result.all_delivered:  # counted per item: recorded item by item
            result.all_delivered = False
            result.delivered.update(dict.fromkeys(i.idem_key for i in chunk.items))
        run.resent_unknown += sum(result.resent_unknown.values())
        outcome = Outcome(run.destination, run.run_id, chunk.claim_id,
                          attempts=result.attempts, keep_delivered=self.options.mode == "append",
                          journaled=self._journaled, sync=run.sync, endpoint=run.endpoint)
        if result.all_delivered:
            outcome.delivered_keys_json = chunk.keys_json
            outcome.delivered_count = chunk.count
            run.delivered += chunk.count
        else:
            outcome.rows = self._item_rows(result)
            run.delivered += len(result.delivered)
        tally = self._groups.get(chunk.claim_id)
        if tally is not None:
            tally.chunks -= 1
            tally.whole = tally.whole and result.all_delivered
            if tally.chunks <= 0:
                del self._groups[chunk.claim_id]
                outcome.group_done = True
                if tally.whole and tally.keys_json is not None:
                    outcome.group_keys_json, outcome.group_items = tally.keys_json, tally.items
                    outcome.group_cursors = (tally.min_cursor, tally.max_cursor)
        run.rejected += len(result.rejected)
        run.in_doubt += len(result.in_doubt)
        run.failed += len(result.failed)
        run.requests += result.requests
        run.retries += max(0, result.requests - sum(1 for a in result.attempts if a.attempt == 1))
        run.http_429 += sum(1 for a in result.attempts if a.status == 429)
        run.bytes_sent += sum(a.bytes for a in result.attempts)
        for attempt in result.attempts:
            status = attempt.status
            clean = status is not None and status < 500 and status != 429
            self.limit.observe(attempt.latency_ms / 1000 if status is not None else None, clean=clean)
            if status is not None:
                self._sample_latency(attempt.latency_ms)
        for warning in result.warnings:
            if len(self.warnings) < MAX_WARNINGS and warning not in self.warnings:
                self.warnings.append(warning)
        if self._writer is not None:
            self._writer.record(outcome)
        if self.on_progress is not None:
            self.on_progress(run)
        if not (result.requests or result.all_delivered or result.delivered or result.rejected or result.in_doubt):
            # Failed before any request left (planned when the sync stopped, or stopped at its first
            # step): in the run's counts as failed, but not "sent" on the progress line.
            self._unsent += len(chunk.items)
        base = self._progress_base
        done = run.delivered + run.rejected + run.in_doubt + run.failed - sum(base) - self._unsent
        self.progress.update(done, self._in_flight_now, delivered=run.delivered - base[0],
                             rejected=run.rejected - base[1], pending=max(0, self._to_send - done))
        self._chunks_recorded += 1
        if self._crash_after and self._chunks_recorded >= self._crash_after and self._writer is not None:
            self._writer.flush()
            os._exit(70)

    def _item_rows(self, result: ChunkResult) -> list[ItemRow]:
        run = self.run
        by_key = {i.idem_key: i for i in result.chunk.items}
        rows: list[ItemRow] = []
        for state, outcomes in (
            ("delivered", result.delivered), ("rejected", result.rejected),
            ("in_doubt", result.in_doubt), ("failed", result.failed),
        ):
            for ikey, detail in outcomes.items():
                item = by_key[ikey]
                vendor_id = detail if state == "delivered" else None
                reason = None if state == "delivered" else detail
                excerpt = item.payload[:EXCERPT_CHARS].decode("utf-8", "replace") if state == "rejected" else None
                rows.append(
                    ItemRow(run.destination, ikey, run.sync, run.endpoint, item.source_key, item.payload_hash, state,
                            reason, vendor_id, run.run_id, result.chunk.claim_id,
                            excerpt, item.cursor, result.resent_unknown.get(ikey, 0))
                )
        return rows

    def _sample_latency(self, latency_ms: float) -> None:
        """Reservoir sample (Vitter's algorithm R) for p95: memory stays fixed however many requests."""
        self._latency_seen += 1
        if len(self.latencies) < LATENCY_SAMPLE:
            self.latencies.append(latency_ms)
        else:
            slot = self._rng.randrange(self._latency_seen)
            if slot < LATENCY_SAMPLE:
                self.latencies[slot] = latency_ms

    def _finish(self, stop: SyncStopped | None) -> RunRow:
        run = self.run
        if self.sender is not None and self.sender.side_attempts and not self.options.dry_run:
            attempts, self.sender.side_attempts = self.sender.side_attempts, []
            run.requests += len(attempts)
            if self._writer is not None:
                self._writer.call(lambda ledger: ledger.write_attempts(attempts))
            else:
                self.ledger.write_attempts(attempts)
        if self._writer is not None:
            self._writer.flush()
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
        if run.resent_unknown:
            note = (f"resent after an unknown outcome: {run.resent_unknown} — the vendor may hold up to "
                    f"{run.resent_unknown} duplicates")
            run.notes = f"{note}; {run.notes}" if run.notes else note
        return run
