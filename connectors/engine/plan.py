"""Planning in DuckDB: which payload rows to skip, reject, hold or send, and the requests' bytes.

The payload Parquet is anti-joined against the ledger's view of the sync at this destination (one Arrow
table read through ADBC), so a rerun of a delivered sync touches almost no Python. Rows to send come out
as Arrow batches whose string columns already hold what a request needs, each value followed by a comma:
the item's JSON, its key as a JSON string, and its claim record as a JSON array. A request's body, its key
list and its claim are then one slice of a buffer each: Python handles one object per request, not per item.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from connectors.engine.payload import quote_literal, read_payloads_sql
from connectors.engine.sender import Item

EXCERPT_CHARS = 500


@dataclass
class PlanCounts:
    source_rows: int = 0
    skipped: int = 0
    rejected: int = 0
    held: int = 0
    to_send: int = 0
    refused: int = 0  # the vendor refused the same payload before: not sent again


class Column:
    """A string column of a batch as (offsets, bytes): slicing rows [i, j) is one bytes slice."""

    def __init__(self, array: pa.Array) -> None:
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        if array.type == pa.string_view() or array.type == pa.large_string():
            array = array.cast(pa.large_string())
            dtype: type = np.int64
        else:
            array = array.cast(pa.string())
            dtype = np.int32
        _, offsets, data = array.buffers()
        assert offsets is not None
        self.offsets = np.frombuffer(offsets, dtype=dtype)[array.offset : array.offset + len(array) + 1].astype(np.int64)
        self.data = data.to_pybytes() if data is not None else b""

    def joined(self, start: int, stop: int) -> bytes:
        """Rows [start, stop) without the last trailing comma: ``a,b,c``."""
        return self.data[self.offsets[start] : self.offsets[stop] - 1]


class Planner:
    """Owns a private DuckDB database (a file in the run's staging folder) for the run's planning."""

    def __init__(self, payload_path: Path, ledger_state: Path | None, *, mode: str, hold_in_doubt: bool,
                 work_dir: Path, memory_limit: str, threads: int | None) -> None:
        self.repeats = 0  # rows dropped as repeats of a key already in this run (ties on the newest cursor)
        self.mode = mode
        self.payload_path = payload_path
        self.con = duckdb.connect(str(work_dir / "plan.duckdb"))
        self.con.execute(f"SET memory_limit = {quote_literal(memory_limit)}")
        self.con.execute(f"SET temp_directory = {quote_literal(str(work_dir / 'plan_tmp'))}")
        self.con.execute("SET preserve_insertion_order = false")
        if threads:
            self.con.execute(f"SET threads = {int(threads)}")
        if ledger_state is None:
            self.con.execute("CREATE VIEW ledger_state AS SELECT NULL::VARCHAR AS idem_key, NULL::VARCHAR AS state, "
                             "NULL::VARCHAR AS payload_hash WHERE false")
        else:
            self.con.execute(f"CREATE VIEW ledger_state AS SELECT * FROM read_parquet({quote_literal(str(ledger_state))})")
        skip_delivered = "TRUE" if mode == "append" else "l.payload_hash = p.payload_hash"
        hold = "TRUE" if hold_in_doubt else "FALSE"
        payload = read_payloads_sql(payload_path)
        # One ledger row per key: two runs over different windows of one sync may both have delivered a key
        # (each as a first delivery, in a group of its own). Only keys of this payload are looked at, so a
        # rerun of a delivered sync (payload all but empty) never aggregates the whole snapshot.
        self.con.execute(f"""
            CREATE VIEW ledger_one AS
            SELECT idem_key, arg_max(state, rank) AS state, arg_max(payload_hash, rank) AS payload_hash FROM (
                SELECT l.*, CASE l.state WHEN 'delivered' THEN 4 WHEN 'refused' THEN 3 WHEN 'in_doubt' THEN 2
                                         ELSE 1 END AS rank
                FROM ledger_state AS l SEMI JOIN {payload} AS p USING (idem_key)) AS r
            GROUP BY idem_key
        """)
        self.con.execute(f"""
            CREATE VIEW classified AS
            SELECT p.*, CASE
                WHEN l.state = 'delivered' AND ({skip_delivered}) THEN 'skip'
                WHEN p.reject_reason IS NOT NULL THEN 'reject'
                WHEN l.state = 'refused' AND l.payload_hash IS NOT DISTINCT FROM p.payload_hash THEN 'refused'
                WHEN l.state = 'in_doubt' AND {hold} THEN 'hold'
                ELSE 'send' END AS action,
                coalesce(l.state = 'in_doubt', FALSE) AS prior_in_doubt,
                l.idem_key IS NOT NULL AS known
            FROM {payload} AS p
            LEFT JOIN ledger_one AS l USING (idem_key)
        """)

    def close(self) -> None:
        self.con.close()

    def counts(self) -> PlanCounts:
        found = dict(self.con.execute("SELECT action, count(*) FROM classified GROUP BY action").fetchall())
        return PlanCounts(
            source_rows=int(sum(found.values())), skipped=int(found.get("skip", 0)),
            rejected=int(found.get("reject", 0)), held=int(found.get("hold", 0)), to_send=int(found.get("send", 0)),
            refused=int(found.get("refused", 0)),
        )

    def rejects(self) -> list[tuple[str, str | None, str | None, str, str, str | None]]:
        """(idem_key, source key, payload hash, reason, excerpt, cursor) of the rows failing validation."""
        return self.con.execute(
            f"SELECT idem_key, _key, payload_hash, reject_reason, left(payload, {EXCERPT_CHARS}), cursor_text "
            "FROM classified WHERE action = 'reject'"
        ).fetchall()

    def removed(self) -> tuple[list[str], int]:
        """Mirror mode: keys delivered before and gone from the source now, and how many are delivered."""
        delivered = "SELECT idem_key FROM ledger_state WHERE state = 'delivered'"
        (total,) = self.con.execute(f"SELECT count(*) FROM ({delivered})").fetchone() or (0,)
        gone = self.con.execute(
            f"SELECT idem_key FROM ({delivered}) AS l WHERE NOT EXISTS (SELECT 1 FROM "
            f"{read_payloads_sql(self.payload_path)} AS p WHERE p.idem_key = l.idem_key) ORDER BY 1"
        ).fetchall()
        return [row[0] for row in gone], int(total)

    def to_send(self, batch_rows: int) -> Iterator[pa.RecordBatch]:
        """Rows to send in batches of ``batch_rows`` (a multiple of the request size), sorted by key when
        the ledger may fold them item by item.

        Sorted within the batch when some row is known to the ledger (or ties on a key): the batch is one
        claim group, which the fold then writes item by item, and the key index takes it as one run of
        neighbouring entries (a fold measured 7 us an item so, 9 with random order). A batch of new items
        is kept as one ledger row when delivered whole, so its order does not matter (the sort cost 6% of
        the main thread at 1M items). Not one global sort: DuckDB 2.0 ran out of memory sorting 1M wide
        rows at 128 and 256 MB, and requests stay unordered in every way a vendor could care about."""
        reader = self.con.sql(
            "SELECT idem_key, _key AS source_key, payload_hash, cursor_text, _maybe_tie, prior_in_doubt, known, "
            "payload || ',' AS body_part, to_json(idem_key) || ',' AS key_part, "
            f"to_json([idem_key, _key, payload_hash, cursor_text{', payload' if self.mode == 'mirror' else ''}]) || ',' AS claim_part "
            "FROM classified WHERE action = 'send'"
        ).to_arrow_reader(batch_rows)
        tied: set[str] = set()
        for batch in _exactly(reader, batch_rows):
            if pc.any(batch.column("known")).as_py() or pc.any(batch.column("_maybe_tie")).as_py():
                batch = batch.take(pc.sort_indices(batch, sort_keys=[("idem_key", "ascending"), ("body_part", "descending")]))
            yield self._drop_repeats(batch, tied)

    def _drop_repeats(self, batch: pa.RecordBatch, tied: set[str]) -> pa.RecordBatch:
        """Rows tied on a key's newest cursor share one idempotency key (payload.py): send the first seen,
        count the others as repeats. Only such rows are looked at (a dup key's newest rows: rare)."""
        flags = batch.column("_maybe_tie")
        if not pc.any(flags).as_py():
            return batch
        keep = [True] * batch.num_rows
        for index in pc.indices_nonzero(pc.fill_null(flags, False)).to_pylist():
            key = batch.column("idem_key")[index].as_py()
            if key in tied:
                keep[index] = False
                self.repeats += 1
            tied.add(key)
        return batch if all(keep) else batch.filter(pa.array(keep))


def _exactly(reader: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """Batches of exactly ``rows`` rows (the last may be shorter): DuckDB's batches vary at thread and
    row-group edges, and every short batch would end in a short request."""
    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in reader:
        if batch.num_rows == 0:
            continue
        if not pending and batch.num_rows == rows:  # the usual case: no copy
            yield batch
            continue
        pending.append(batch)
        held += batch.num_rows
        while held >= rows:
            table = pa.Table.from_batches(pending).combine_chunks()
            yield table.slice(0, rows).to_batches()[0]
            rest = table.slice(rows)
            pending = rest.to_batches() if rest.num_rows else []
            held = rest.num_rows
    if held:
        yield pa.Table.from_batches(pending).combine_chunks().to_batches()[0]


def items_of(batch: pa.RecordBatch, start: int, stop: int) -> list[Item]:
    """Materialize rows [start, stop) as :class:`Item` objects (multi-step items, bisection, rewrites)."""
    part = batch.slice(start, stop - start)
    keys = part.column("idem_key").to_pylist()
    sources = part.column("source_key").to_pylist()
    hashes = part.column("payload_hash").to_pylist()
    cursors = part.column("cursor_text").to_pylist()
    bodies = part.column("body_part").to_pylist()
    return [
        Item(k, s, h, b[:-1].encode(), c) for k, s, h, c, b in zip(keys, sources, hashes, cursors, bodies, strict=True)
    ]


def boundaries(body: Column, count: int, max_items: int, budget: int) -> Iterator[tuple[int, int]]:
    """Request boundaries over ``count`` rows: at most ``max_items`` items and ``budget`` bytes of items
    (with separators) each. Per request, not per item: a binary search on the offsets when bytes bind."""
    offsets = body.offsets
    start = 0
    while start < count:
        stop = min(start + max_items, count)
        if offsets[stop] - offsets[start] - 1 > budget:
            stop = int(np.searchsorted(offsets, offsets[start] + budget + 1, side="right")) - 1
            stop = max(stop, start + 1)  # an item over budget alone was rejected in SQL; never loop
        yield start, stop
        start = stop
