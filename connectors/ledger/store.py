"""The ledger store: one row per item and destination (its fate), one per HTTP attempt, one per run.

Two stores share one schema (``schema.py``) and one set of statements:
- SQLite (default, ``<project>/.syncline/ledger.sqlite``) in WAL mode: many processes may read and write
  at once (short ``BEGIN IMMEDIATE`` transactions wait on a busy timeout), which DuckDB's one-writer-process
  rule would not allow for parallel Dagster steps.
- PostgreSQL (``SYNCLINE_LEDGER_URL=postgresql://...``) for runs spread over several machines.

The hot path is set-based: a run reads the ledger's view of its sync as one Arrow table (ADBC, no Python
per row) and anti-joins it in DuckDB; claims and delivered marks are one statement per group of items,
their keys passed as one JSON array built by DuckDB. A claim group delivered whole, every item new at its
destination, stays one row (``syncline_groups``, see :meth:`Ledger._apply_journal`); the readers here
read its items as delivered items. Nothing secret is ever written here: attempts keep a
redacted error excerpt, never headers or bodies.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import socket
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from connectors.destination import LEGACY, Destination
from connectors.ledger.rows import (
    ATTEMPT_COLUMNS,
    ITEM_COLUMNS,
    ITEM_STATES,
    RUN_COLUMNS,
    AttemptRow,
    ItemRow,
    RunRow,
    attempt_values,
    item_values,
    now_text,
    run_values,
)
from connectors.ledger.schema import JOURNAL_COLUMNS, JOURNAL_TABLE, migrate

if TYPE_CHECKING:
    from connectors.ledger.journal import JournalFile as JournalFileType

SMALL_SNAPSHOT = 50_000  # below this many items a snapshot is read through the ledger's own connection
JOURNAL_SCHEMA = "syncline_journal_file"  # the journal file, as a SQLite ledger's folds attach it
FOLD_TEMP_CACHE_KIB = 32_768  # a fold's temporary table stays in memory up to this (SqliteLedger.__init__)
FOLD_MAX_ITEMS = 200_000  # items applied per fold transaction: a fold that fell behind catches up in bounded slices
CLAIM_REASON = "claimed by run {run}: sent, or about to be; the outcome is unknown if the run stopped here"


JOURNAL_INSERT = ("INSERT INTO syncline_journal (destination, sync, endpoint, run_id, claim_id, kind, state, reason, "
                  "over_delivered, items, doc, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


def on_alias(where: str, alias: str) -> str:
    """``where`` (simple ``column op ?`` terms joined by AND, as :meth:`Ledger._scope` builds them) with its
    columns on ``alias``: the same scope for a table read under an alias (``syncline_groups AS g``)."""
    return " AND ".join(f"{alias}.{term}" for term in where.split(" AND "))


def journal_values(
    kind: str, destination: str, sync: str, endpoint: str, run_id: str, claim_id: str, doc: str, items: int, *,
    state: str | None = None, reason: str | None = None, over_delivered: bool = False,
) -> tuple[Any, ...]:
    """One journal row's values for :data:`JOURNAL_INSERT` (see :meth:`Store.journal`)."""
    why = reason if reason is not None or kind != "claim" or state != "in_doubt" else CLAIM_REASON.format(run=run_id)
    return (destination, sync, endpoint, run_id, claim_id, kind, state, why, over_delivered, items, doc, now_text())


class Store:
    """A DB-API connection behind a lock, with write transactions that group-commit inside :meth:`batch`,
    and the delivery journal's append (the ledger and the SQLite journal file share both)."""

    placeholder = "?"
    dialect = "sqlite"

    def __init__(self, conn: Any, description: str) -> None:
        self._conn = conn
        self._lock = threading.RLock()
        self._tx: Any = None  # the open write cursor while a batch (group commit) is in progress
        self.description = description

    # -- plumbing ------------------------------------------------------------------------------------
    def _sql(self, statement: str) -> str:
        return statement if self.placeholder == "?" else statement.replace("?", self.placeholder)

    def _json_rows(self, param: str = "?") -> str:
        """A FROM clause yielding ``value`` per element of a JSON array parameter."""
        return f"json_each({param})"

    def _json_at(self, index: int) -> str:
        return f"json_extract(value, '$[{index}]')"

    def _table_exists(self, cur: Any, table: str) -> bool:
        cur.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?", (table,))
        return bool(cur.fetchone()[0])

    @contextmanager
    def _write(self) -> Iterator[Any]:
        """A write transaction; inside :meth:`batch` it joins the batch's transaction (group commit)."""
        with self._lock:
            if self._tx is not None:
                yield self._tx
                return
            cur = self._conn.cursor()
            self._begin(cur)
            try:
                yield cur
            except BaseException:
                self._conn.rollback()
                raise
            else:
                self._conn.commit()
            finally:
                cur.close()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Everything written inside commits once, at the end: the outcome writer's group commit."""
        with self._lock, self._write() as cur:
            self._tx = cur
            try:
                yield
            finally:
                self._tx = None

    def _begin(self, cur: Any) -> None:
        """Start a write transaction (SQLite takes the write lock up front to avoid upgrade deadlocks)."""

    def _lock_schema(self, cur: Any) -> None:
        """Serialize migrations between processes (Postgres needs it; SQLite's BEGIN IMMEDIATE does it)."""

    def _query(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            cur = self._tx or self._conn.cursor()
            try:
                cur.execute(self._sql(statement), params)
                rows = list(cur.fetchall())
            except BaseException:
                if self._tx is None:
                    self._conn.rollback()
                raise
            finally:
                if cur is not self._tx:
                    cur.close()
            if self._tx is None:
                self._conn.commit()
            return rows

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def journal_many(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Append journal rows (:func:`journal_values` tuples) in one statement: a run's writer appends its
        requests' outcomes so (on Postgres one round trip each cost about 2 s per million items)."""
        if rows:
            with self._write() as cur:
                cur.executemany(self._sql(JOURNAL_INSERT), rows)

    def journal(
        self, kind: str, destination: str, sync: str, endpoint: str, run_id: str, claim_id: str, doc: str,
        items: int, *, state: str | None = None, reason: str | None = None, over_delivered: bool = False,
    ) -> int:
        """Append one journal row (returns its seq): ``claim`` (doc: ``[[idem_key, source_key, payload_hash, cursor], ...]``,
        ``state`` in_doubt or failed), ``delivered`` (doc: the keys of one accepted request), ``rows``
        (doc: ``[[idem_key, source_key, payload_hash, state, reason, vendor_id, excerpt, cursor], ...]``),
        ``attempts``, or ``group`` (doc: the keys of a claim group delivered whole, every item new at the
        destination; ``state`` and ``reason`` hold its lowest and highest cursor)."""
        with self._write() as cur:
            cur.execute(self._sql(f"{JOURNAL_INSERT} RETURNING seq"),
                        journal_values(kind, destination, sync, endpoint, run_id, claim_id, doc, items,
                                       state=state, reason=reason, over_delivered=over_delivered))
            return int(cur.fetchone()[0])


class Ledger(Store):
    """The ledger's items, attempts and runs. Use :func:`connectors.ledger.open_ledger` to get one."""

    def __init__(self, conn: Any, description: str) -> None:
        super().__init__(conn, description)
        self.migrated: list[int] = []
        with self._write() as cur:
            self._lock_schema(cur)
            self.migrated = migrate(cur, self.dialect, lambda t: self._table_exists(cur, t), now_text())

    def open_another(self) -> Ledger:
        """A second connection to the same ledger (the outcome writer's own)."""
        raise NotImplementedError

    # -- window locks ---------------------------------------------------------------------------------
    @contextmanager
    def window_lock(self, sync: str, days: Sequence[str] | None, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
        """Hold the sync's window while delivering, so overlapping runs of one sync never send at once.

        A run over days takes the sync's "all" lock shared and each of its days exclusively (in sorted
        order, so two runs cannot deadlock); a run over the whole source takes "all" exclusively. Runs
        over disjoint days proceed in parallel; an overlapping run waits (``on_wait`` is called first), then
        finds the overlap delivered in the ledger and skips it. Locks die with their process, so a crashed
        run never blocks the next one.
        """
        names = [("all", days is not None)] + [(day, False) for day in sorted(set(days or []))]
        with self._lock_names(sync, names, on_wait):
            yield

    @contextmanager
    def _lock_names(self, sync: str, names: list[tuple[str, bool]], on_wait: Callable[[], None] | None) -> Iterator[None]:
        raise NotImplementedError

    # -- destinations ----------------------------------------------------------------------------------
    def register_destination(self, dest: Destination) -> None:
        with self._write() as cur:
            cur.execute(
                self._sql(
                    "INSERT INTO syncline_destinations (destination, identity, vendor, name, base_url, "
                    "credential_fingerprint, first_seen) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (destination) DO UPDATE "
                    "SET base_url = excluded.base_url, credential_fingerprint = excluded.credential_fingerprint"
                ),
                (dest.id, dest.identity, dest.vendor, dest.name, dest.base_url, dest.fingerprint, now_text()),
            )

    def adopt(self, sync: str, dest: Destination) -> int:
        """Give ``dest`` the sync's history recorded where it must have gone, when ``dest`` has none yet.

        Candidates: items from before destinations existed (schema 1), and, for a named destination, the
        items recorded under the same vendor, URL and key without a name (naming a destination must not
        resend). Returns the number of items moved."""
        sources = [LEGACY] + ([dest.unnamed_id] if dest.name else [])
        moved = 0
        if self.has_items(sync, dest.id):
            return 0
        with self._write() as cur:
            for source in sources:
                cur.execute(
                    self._sql("UPDATE syncline_items SET destination = ? WHERE sync = ? AND destination = ?"),
                    (dest.id, sync, source),
                )
                moved += max(cur.rowcount or 0, 0)
                cur.execute(self._sql("SELECT coalesce(sum(items), 0) FROM syncline_groups WHERE sync = ? AND destination = ?"),
                            (sync, source))
                moved += int(cur.fetchone()[0])
                cur.execute(
                    self._sql("UPDATE syncline_groups SET destination = ? WHERE sync = ? AND destination = ?"),
                    (dest.id, sync, source),
                )
        return moved

    def has_items(self, sync: str, destination: str | None = None) -> bool:
        """Whether the ledger holds any item of ``sync`` (at ``destination``), per item or in delivered groups."""
        where, params = self._scope(sync, destination)
        for table in ("syncline_items", "syncline_groups"):
            # (LIMIT 1: a count of them all took 1 s at 10M items)
            if self._query(f"SELECT 1 FROM {table} WHERE {where} LIMIT 1", params):
                return True
        return False

    def destinations(self) -> dict[str, dict[str, Any]]:
        cols = ["destination", "identity", "vendor", "name", "base_url", "credential_fingerprint", "first_seen"]
        rows = self._query(f"SELECT {', '.join(cols)} FROM syncline_destinations")
        return {r[0]: dict(zip(cols, r, strict=True)) for r in rows}

    # -- items: the set-based hot path -------------------------------------------------------------------
    def snapshot(self, destination: str, sync: str, out: Path, *, delivered_hashes: bool = True) -> Path | None:
        """Write ``(idem_key, state, payload_hash)`` (state ``refused`` for a vendor's refusal) of every item of ``sync`` at ``destination`` to a
        Parquet file (None when there are none): DuckDB anti-joins it from disk, no Python per row.
        Without ``delivered_hashes`` (append mode never compares them) delivered items may have a null
        ``payload_hash``."""
        written = self.start_snapshot(destination, sync, out, delivered_hashes=delivered_hashes)
        return written() if written is not None else None

    def start_snapshot(self, destination: str, sync: str, out: Path, *,
                       delivered_hashes: bool = True) -> Callable[[], Path] | None:
        """:meth:`snapshot`, begun now: None when there are no items, else a call that returns the file
        (once or more). A large SQLite snapshot is written by a child process meanwhile, so the caller
        extracts the source in the same time (measured at 10M delivered items: 14 s for the snapshot, 5 s
        for the extract)."""
        where = "destination = ? AND sync = ?"
        params = (destination, sync)
        (row,) = self._query(f"SELECT count(*) FROM (SELECT 1 FROM syncline_items WHERE {where} LIMIT {SMALL_SNAPSHOT}) AS s", params)
        (grouped,) = self._query(f"SELECT count(*), coalesce(sum(items), 0) FROM syncline_groups WHERE {where}", params)
        if not row[0] and not grouped[0]:
            return None
        # A vendor's refusal (recorded from an answer, so with its request's chunk) reads as ``refused``: the
        # planner does not send that payload again. A local reject (no chunk) is checked again every run.
        statement = ("SELECT idem_key, CASE WHEN state = 'rejected' AND chunk_id IS NOT NULL THEN 'refused' "
                     f"ELSE state END AS state, payload_hash FROM syncline_items WHERE {where}")
        if row[0] + int(grouped[1]) < SMALL_SNAPSHOT:
            # Small: cheaper through this connection than through a bulk reader's start-up.
            rows = self._query(statement, params)
            for keys, doc in self._query(f"SELECT keys, doc FROM syncline_groups WHERE {where}", params):
                if delivered_hashes:
                    rows += [(item[0], "delivered", item[2]) for item in json.loads(doc)]
                else:
                    rows += [(key, "delivered", None) for key in json.loads(keys)]
            table = pa.table({name: pa.array([r[i] for r in rows], pa.string())
                              for i, name in enumerate(("idem_key", "state", "payload_hash"))})
            import pyarrow.parquet as pq

            pq.write_table(table, out, compression="none")
            return lambda: out
        written = (self._start_full_export(where, params, statement, out, bool(grouped[0])) if delivered_hashes
                   else self._start_keys_export(where, params, statement, out))

        def wait() -> Path:
            written()
            return out

        return wait

    def export(self, statement: str, params: Sequence[Any], out: Path) -> None:
        """A bulk read to Parquet through ADBC (Arrow end to end)."""
        raise NotImplementedError

    def start_export(self, statement: str, params: Sequence[Any], out: Path) -> Callable[[], None]:
        """:meth:`export`, begun now; the result waits for it (and raises what it hit)."""
        self.export(statement, params, out)
        return lambda: None

    def _start_keys_export(self, where: str, params: Sequence[Any], statement: str, out: Path) -> Callable[[], None]:
        """The snapshot without delivered items' hashes (see :meth:`snapshot`); here simply all of it."""
        return self._start_full_export(where, params, statement, out, True)

    def _start_full_export(self, where: str, params: Sequence[Any], statement: str, out: Path,
                           grouped: bool) -> Callable[[], None]:
        """The snapshot with delivered groups' items (``grouped``): unnested by the server."""
        if grouped:
            in_groups = on_alias(where, "g")
            statement = (f"{statement} UNION ALL SELECT idem_key, state, payload_hash "
                         f"FROM ({self.group_items(in_groups)}) AS x")
            params = (*params, *params)
        return self.start_export(statement, params, out)

    def claim(
        self, destination: str, sync: str, endpoint: str, run_id: str, chunk_id: str, items_json: str, *,
        over_delivered: bool, state: str = "in_doubt", reason: str | None = None,
    ) -> list[str]:
        """Record a group of items ``in_doubt`` before any is sent, in one statement; returns the keys claimed.

        ``items_json`` is a JSON array of ``[idem_key, source_key, payload_hash, cursor]`` (built by DuckDB).
        Unless ``over_delivered`` (mirror mode resends changed payloads), an item another run marked
        delivered since this run planned is left alone and not returned: it is not sent twice. The same
        statement with ``state="failed"`` records items a stopped run never sent."""
        guard = "" if over_delivered else " WHERE syncline_items.state <> 'delivered'"
        statement = (
            "INSERT INTO syncline_items (destination, idem_key, sync, endpoint, source_key, payload_hash, state, "
            "reason, run_id, chunk_id, cursor, updated_at) "
            f"SELECT ?, {self._json_at(0)}, ?, ?, {self._json_at(1)}, {self._json_at(2)}, ?, ?, ?, ?, "
            f"{self._json_at(3)}, ? FROM {self._json_rows()} WHERE true "
            "ON CONFLICT (destination, idem_key) DO UPDATE SET sync = excluded.sync, endpoint = excluded.endpoint, "
            "source_key = excluded.source_key, payload_hash = excluded.payload_hash, state = excluded.state, "
            "reason = excluded.reason, run_id = excluded.run_id, chunk_id = excluded.chunk_id, "
            f"cursor = excluded.cursor, updated_at = excluded.updated_at{guard} RETURNING idem_key"
        )
        why = reason or CLAIM_REASON.format(run=run_id)
        params = (destination, sync, endpoint, state, why, run_id, chunk_id, now_text(), items_json)
        with self._write() as cur:
            cur.execute(self._sql(statement), params)
            return [row[0] for row in cur.fetchall()]

    def mark_delivered(self, destination: str, run_id: str, chunk_id: str, keys_json: str) -> int:
        """Mark the keys (a JSON array) of one request delivered, when this run's claim still holds them."""
        with self._write() as cur:
            cur.execute(
                self._sql(
                    "UPDATE syncline_items SET state = 'delivered', reason = NULL, run_id = ?, updated_at = ? "
                    f"WHERE destination = ? AND chunk_id = ? AND idem_key IN (SELECT value FROM {self._json_rows()})"
                ),
                (run_id, now_text(), destination, chunk_id, keys_json),
            )
            return max(cur.rowcount or 0, 0)

    # -- the journal: appended on the hot path, folded into items in key order ------------------------------
    def _lock_fold(self, cur: Any) -> None:
        """Serialize folds between processes (SQLite's write lock does it; Postgres takes an advisory lock)."""

    def _elements(self, alias: str = "e") -> str:
        return self._elements_of("j.doc", alias)

    def _elements_of(self, expr: str, alias: str = "e") -> str:
        """A FROM item yielding ``value`` per element of the JSON array in column ``expr``."""
        return f"json_each({expr}) AS {alias}"

    def _at(self, alias: str, index: int) -> str:
        return f"json_extract({alias}.value, '$[{index}]')"

    def _text_value(self, alias: str) -> str:
        return f"{alias}.value"

    def fold(self, before: int | None = None) -> int:
        """Apply the journal rows (those with ``seq < before``, or all) to ``syncline_items`` and
        ``syncline_attempts``; returns the highest seq folded (0: nothing to fold). Cheap when the journal is
        empty. Safe to run from any process at any time (a crashed run's journal is folded by the next one),
        and from a thread of its own while the run's writer appends: each journal row is applied exactly once."""
        raise NotImplementedError

    def open_journal(self) -> Store:
        """Where a run's writer appends its journal, on a connection of its own (so that a fold on another
        connection never holds the writer up)."""
        return self.open_another()

    def _fold_table(self, before: int | None, table: str) -> int:
        """Fold the rows of ``table`` (in this database) below ``before`` and delete them, in one transaction."""
        where = "" if before is None else " WHERE seq < ?"
        (row,) = self._query(f"SELECT max(seq) FROM {table}{where}", () if before is None else (before,))
        upto = row[0]
        if upto is None:
            return 0
        with self._write() as cur:
            self._lock_fold(cur)
            self._apply_journal(cur, int(upto), table)
        return int(upto)

    def _apply_journal(self, cur: Any, upto: int, table: str) -> None:
        """The fold proper: the rows of ``table`` with ``seq <= upto`` applied in one transaction, then
        deleted from it. A claim delivered whole (its ``group`` row, in ``table`` at any seq: a group row
        written after the slice is copied in with it) becomes one ``syncline_groups`` row; other claims and
        the deliveries of the same fold go in one sorted upsert (each key written once); deliveries of
        claims folded earlier take the update path; attempts are copied."""
        at = self._at
        groups = f"SELECT destination, claim_id, run_id, doc, state, reason, at FROM {table} WHERE kind = 'group'"
        # A group row says every item of its claim was delivered, each for the first time at this destination
        # (the run's snapshot had none of them), so no item row can hold newer state: one row for them all.
        cur.execute(self._sql(
            "INSERT INTO syncline_groups (destination, claim_id, sync, endpoint, run_id, items, keys, doc, min_cursor, "
            "max_cursor, at) SELECT c.destination, c.claim_id, c.sync, c.endpoint, g.run_id, c.items, g.doc, c.doc, "
            f"g.state, g.reason, g.at FROM {table} AS c JOIN ({groups}) AS g ON g.destination = c.destination "
            "AND g.claim_id = c.claim_id WHERE c.kind = 'claim' AND c.seq <= ? AND c.state = 'in_doubt' "
            "AND c.over_delivered = FALSE ON CONFLICT (destination, claim_id) DO NOTHING"
        ), (upto,))
        moved = (f"(j.state = 'in_doubt' AND EXISTS (SELECT 1 FROM ({groups}) AS g "
                 "WHERE g.destination = j.destination AND g.claim_id = j.claim_id))")
        whole = f" AND NOT {moved}"
        done = (f"SELECT j.destination AS dd, {self._text_value('e')} AS dk, j.claim_id AS dc, j.run_id AS dr, j.at AS da "
                f"FROM {table} AS j, {self._elements()} WHERE j.kind = 'delivered' AND j.seq <= ?")
        # The claims left to fold item by item (none, usually: the upsert and its join are then skipped).
        cur.execute(self._sql(f"SELECT DISTINCT over_delivered FROM {table} AS j WHERE j.kind = 'claim' AND j.seq <= ? "
                              f"AND (j.over_delivered = TRUE OR NOT {moved})"), (upto,))
        flags = {bool(r[0]) for r in cur.fetchall()}
        for forced in sorted(flags):
            # Claims and the deliveries of the same fold in one sorted upsert: each key is written once.
            guard = "" if forced else " WHERE syncline_items.state <> 'delivered'"
            claims = self._latest(
                f"SELECT j.destination, {at('e', 0)} AS k, j.sync, j.endpoint, {at('e', 1)} AS s, {at('e', 2)} AS h, "
                "CASE WHEN d.dk IS NULL THEN j.state ELSE 'delivered' END AS state, "
                "CASE WHEN d.dk IS NULL THEN j.reason END AS reason, coalesce(d.dr, j.run_id) AS run_id, "
                f"j.claim_id, {at('e', 3)} AS c, {at('e', 4)} AS p, coalesce(d.da, j.at) AS at, j.seq "
                f"FROM {table} AS j CROSS JOIN {self._elements()} LEFT JOIN ({done}) AS d "
                f"ON d.dd = j.destination AND d.dc = j.claim_id AND d.dk = {at('e', 0)} "
                f"WHERE j.kind = 'claim' AND j.seq <= ? AND j.over_delivered = {'TRUE' if forced else 'FALSE'}"
                f"{'' if forced else whole}"
            )
            cur.execute(self._sql(
                "INSERT INTO syncline_items (destination, idem_key, sync, endpoint, source_key, payload_hash, state, "
                "reason, run_id, chunk_id, cursor, payload, updated_at) "
                f"SELECT destination, k, sync, endpoint, s, h, state, reason, run_id, claim_id, c, p, at FROM ({claims}) AS x "
                "WHERE true ON CONFLICT (destination, idem_key) DO UPDATE SET sync = excluded.sync, "
                "payload = coalesce(excluded.payload, syncline_items.payload), "
                "endpoint = excluded.endpoint, source_key = excluded.source_key, payload_hash = excluded.payload_hash, "
                "state = excluded.state, reason = excluded.reason, run_id = excluded.run_id, "
                f"chunk_id = excluded.chunk_id, cursor = excluded.cursor, updated_at = excluded.updated_at{guard}"
            ), (upto, upto))
        # Deliveries whose claim an earlier fold already wrote (as items: a whole group's are already there).
        cur.execute(self._sql(
            "UPDATE syncline_items SET state = 'delivered', reason = NULL, run_id = d.dr, updated_at = d.da "
            f"FROM ({done} AND j.claim_id NOT IN (SELECT claim_id FROM {table} "
            "WHERE kind = 'claim' AND seq <= ?) AND NOT EXISTS (SELECT 1 FROM syncline_groups AS m "
            "WHERE m.destination = j.destination AND m.claim_id = j.claim_id) ORDER BY 1, 2) AS d "
            "WHERE syncline_items.destination = d.dd AND syncline_items.idem_key = d.dk "
            "AND syncline_items.chunk_id = d.dc"
        ), (upto, upto))
        rows = self._latest(
            f"SELECT j.destination, {at('e', 0)} AS k, j.sync, j.endpoint, {at('e', 1)} AS s, {at('e', 2)} AS h, "
            f"{at('e', 3)} AS st, {at('e', 4)} AS r, {at('e', 5)} AS v, j.run_id, j.claim_id, {at('e', 6)} AS x, "
            f"{at('e', 7)} AS c, coalesce(CAST({at('e', 8)} AS INTEGER), 0) AS n, j.at, j.seq, j.over_delivered "
            f"FROM {table} AS j, {self._elements()} WHERE j.kind = 'rows' AND j.seq <= ?"
        )
        cur.execute(self._sql(
            "INSERT INTO syncline_items (destination, idem_key, sync, endpoint, source_key, payload_hash, state, "
            "reason, vendor_id, run_id, chunk_id, excerpt, cursor, resent_unknown, updated_at) "
            f"SELECT destination, k, sync, endpoint, s, h, st, r, v, run_id, claim_id, x, c, n, at FROM ({rows}) AS y "
            "WHERE true ON CONFLICT (destination, idem_key) DO UPDATE SET state = excluded.state, "
            "resent_unknown = syncline_items.resent_unknown + excluded.resent_unknown, "
            "reason = excluded.reason, vendor_id = coalesce(excluded.vendor_id, syncline_items.vendor_id), "
            "run_id = excluded.run_id, chunk_id = excluded.chunk_id, excerpt = excluded.excerpt, "
            "updated_at = excluded.updated_at "
            "WHERE syncline_items.state <> 'delivered' OR excluded.state = 'delivered'"
        ), (upto,))
        attempt_cols = ", ".join(ATTEMPT_COLUMNS)
        casts = {"attempt": "INTEGER", "items": "INTEGER", "bytes": "BIGINT", "status": "INTEGER",
                 "latency_ms": "REAL"}
        picked = ", ".join(
            f"CAST({at('e', i)} AS {casts[c]})" if c in casts else at("e", i) for i, c in enumerate(ATTEMPT_COLUMNS)
        )
        cur.execute(self._sql(
            f"INSERT INTO syncline_attempts ({attempt_cols}) SELECT {picked} "
            f"FROM {table} AS j, {self._elements()} WHERE j.kind = 'attempts' AND j.seq <= ? ORDER BY j.seq"
        ), (upto,))
        cur.execute(self._sql(f"DELETE FROM {table} WHERE seq <= ?"), (upto,))

    def _latest(self, select: str) -> str:
        """The journal's rows in journal order. SQLite applies a repeated key in that order (the latest
        wins). No ORDER BY: each claim group is already in key order (``plan.py``); sorting the whole fold
        here measured 1 s per 300k items, more than it saves."""
        return select

    def write_items(self, rows: Iterable[ItemRow], *, keep_delivered: bool = False) -> None:
        """Upsert items one by one (mixed outcomes, rejects); a NULL vendor id never erases one already
        stored. ``keep_delivered`` leaves items already delivered untouched."""
        now = now_text()
        values = [(*item_values(r), now) for r in rows]
        if not values:
            return
        cols = ", ".join(ITEM_COLUMNS + ["updated_at"])
        marks = ", ".join(["?"] * (len(ITEM_COLUMNS) + 1))
        updates = ", ".join(
            _item_update(c) for c in ITEM_COLUMNS[2:] + ["updated_at"]
        )
        statement = (
            f"INSERT INTO syncline_items ({cols}) VALUES ({marks}) "
            f"ON CONFLICT (destination, idem_key) DO UPDATE SET {updates}"
        )
        if keep_delivered:
            statement += " WHERE syncline_items.state <> 'delivered'"
        with self._write() as cur:
            cur.executemany(self._sql(statement), values)

    def _by_keys(self, columns: str, destination: str, idem_keys: Sequence[str]) -> dict[str, tuple[Any, ...]]:
        """``columns`` of the given keys at ``destination``, 500 keys per query."""
        found: dict[str, tuple[Any, ...]] = {}
        for i in range(0, len(idem_keys), 500):
            part = list(idem_keys[i : i + 500])
            marks = ",".join(["?"] * len(part))
            for key, *values in self._query(
                f"SELECT idem_key, {columns} FROM syncline_items WHERE destination = ? AND idem_key IN ({marks})",
                [destination, *part],
            ):
                found[key] = tuple(values)
        return found

    def lookup(self, destination: str, idem_keys: Sequence[str]) -> dict[str, tuple[str, str | None]]:
        """State and payload hash of the given keys at ``destination`` (small lookups and tests: a key not
        found per item is looked for in every delivered group of the destination)."""
        found = {k: (v[0], v[1]) for k, v in self._by_keys("state, payload_hash", destination, idem_keys).items()}
        rest = [k for k in dict.fromkeys(idem_keys) if k not in found]
        for i in range(0, len(rest), 500):
            part = rest[i : i + 500]
            marks = ",".join(["?"] * len(part))
            for key, state, phash in self._query(
                f"SELECT idem_key, state, payload_hash FROM ({self.group_items('g.destination = ?')}) AS x "
                f"WHERE idem_key IN ({marks})", [destination, *part]):
                found[key] = (state, phash)
        return found

    # -- delivered groups read as items ---------------------------------------------------------------------
    ITEM_VIEW_COLUMNS = (*ITEM_COLUMNS, "progress", "updated_at", "resolved_by", "resolved_at", "payload")

    def group_items(self, where: str = "true") -> str:
        """SQL: one row per item of the delivered groups matching ``where`` (on ``g``), with the columns of
        :data:`ITEM_VIEW_COLUMNS`. Unnesting costs a few microseconds an item: callers filter ``g`` first."""
        at = self._at
        values = {
            "destination": "g.destination", "idem_key": at("e", 0), "sync": "g.sync", "endpoint": "g.endpoint",
            "source_key": at("e", 1), "payload_hash": at("e", 2), "state": "'delivered'", "run_id": "g.run_id",
            "chunk_id": "g.claim_id", "cursor": at("e", 3), "resent_unknown": "0", "updated_at": "g.at",
        }
        picked = ", ".join(f"{values.get(c, 'NULL')} AS {c}" for c in self.ITEM_VIEW_COLUMNS)
        return f"SELECT {picked} FROM syncline_groups AS g, {self._elements_of('g.doc')} WHERE {where}"

    @staticmethod
    def newest_groups(scope: str, limit: int) -> str:
        """SQL on ``g``: the newest groups matching ``scope`` (on ``g``, the same table's alias inside) that
        can hold the newest ``limit`` items, so a listing unnests only those."""
        return (f"g.claim_id IN (SELECT claim_id FROM (SELECT g.claim_id, sum(g.items) OVER (ORDER BY g.at DESC, "
                f"g.claim_id DESC ROWS UNBOUNDED PRECEDING) - g.items AS before FROM syncline_groups AS g "
                f"WHERE {scope}) AS w WHERE before < {int(limit)})")

    def all_items(self, groups_where: str = "true") -> str:
        """SQL: every item row, and the items of the delivered groups matching ``groups_where``, with the
        columns of :data:`ITEM_VIEW_COLUMNS` (the parameters of ``groups_where`` come first)."""
        return (f"SELECT {', '.join(self.ITEM_VIEW_COLUMNS)} FROM syncline_items "
                f"UNION ALL {self.group_items(groups_where)}")

    def explode_groups(self, destination: str, sync: str) -> int:
        """Turn the sync's delivered groups at ``destination`` into item rows (mirror mode keeps per-item
        state: it resends changed payloads and undoes removals). Returns the items written."""
        where = "g.destination = ? AND g.sync = ?"
        if not self._query(f"SELECT 1 FROM syncline_groups AS g WHERE {where} LIMIT 1", (destination, sync)):
            return 0
        cols = [c for c in self.ITEM_VIEW_COLUMNS if c not in ("resolved_by", "resolved_at")]
        with self._write() as cur:
            cur.execute(self._sql(
                f"INSERT INTO syncline_items ({', '.join(cols)}) SELECT {', '.join(cols)} FROM "
                f"({self.group_items(where)}) AS x WHERE true ON CONFLICT (destination, idem_key) DO NOTHING"),
                (destination, sync))
            written = max(cur.rowcount or 0, 0)
            cur.execute(self._sql("DELETE FROM syncline_groups WHERE destination = ? AND sync = ?"), (destination, sync))
        return written

    def set_progress(self, destination: str, idem_key: str, progress: str, vendor_id: str | None = None) -> None:
        """Persist a multi-step item's progress (JSON) at once, so a rerun resumes at the failed step."""
        with self._write() as cur:
            cur.execute(
                self._sql(
                    "UPDATE syncline_items SET progress = ?, vendor_id = coalesce(?, vendor_id), updated_at = ? "
                    "WHERE destination = ? AND idem_key = ?"
                ),
                (progress, vendor_id, now_text(), destination, idem_key),
            )

    def progress(self, destination: str, idem_keys: Sequence[str]) -> dict[str, tuple[str | None, str | None]]:
        """(progress JSON, vendor id) of the given keys."""
        return {k: (v[0], v[1]) for k, v in self._by_keys("progress, vendor_id", destination, idem_keys).items()}

    # -- reading for people and checks --------------------------------------------------------------------
    @staticmethod
    def _scope(sync: str, destination: str | None) -> tuple[str, list[Any]]:
        if destination is None:
            return "sync = ?", [sync]
        return "sync = ? AND destination = ?", [sync, destination]

    def counts(self, sync: str, destination: str | None = None) -> dict[str, int]:
        where, params = self._scope(sync, destination)
        counts = dict.fromkeys(ITEM_STATES, 0)
        for state, n in self._query(f"SELECT state, count(*) FROM syncline_items WHERE {where} GROUP BY state", params):
            counts[state] = int(n)
        (grouped,) = self._query(f"SELECT coalesce(sum(items), 0) FROM syncline_groups WHERE {where}", params)
        counts["delivered"] += int(grouped[0])
        return counts

    def payloads(self, destination: str, idem_keys: Sequence[str]) -> dict[str, tuple[str | None, str | None]]:
        """(payload, source key) of delivered mirror-mode items (only mirror mode keeps payloads)."""
        return {k: (v[0], v[1]) for k, v in self._by_keys("payload, source_key", destination, idem_keys).items()}

    def resent_unknown(self, sync: str, destination: str | None = None) -> tuple[int, int]:
        """(items sent again after an unknown outcome, total such resends) of ``sync``: the most extra copies
        the vendor may hold."""
        where, params = self._scope(sync, destination)
        (row,) = self._query(
            f"SELECT count(*), coalesce(sum(resent_unknown), 0) FROM syncline_items WHERE {where} AND resent_unknown > 0",
            params)
        return int(row[0]), int(row[1])

    def delivered_in_window(
        self, sync: str, start: dt.datetime | None, end: dt.datetime | None, destination: str | None = None
    ) -> int:
        """Delivered items of ``sync`` whose source cursor falls in [start, end) (all of them without bounds)."""
        # Cursors are stored as fixed-width UTC ISO text (payload.CURSOR_TEXT_FORMAT): a text range is a
        # time range, counted by the database.
        scope, scope_params = self._scope(sync, destination)
        where, params = scope + " AND state = 'delivered'", list(scope_params)
        inside, outside, bounds = [], [], []
        for op, column, bound in ((">=", "min_cursor", start), ("<", "max_cursor", end)):
            if bound is not None:
                text = bound.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
                where += f" AND cursor {op} ?"
                inside.append(f"g.{column} {op} ?")
                outside.append(f"NOT (coalesce(g.{column}, '') {op} ?)")
                bounds.append(text)
        params += bounds
        (row,) = self._query(f"SELECT count(*) FROM syncline_items WHERE {where}", params)
        total = int(row[0])
        # Groups: wholly inside the window by their cursor range, counted whole; the others item by item.
        group_scope = on_alias(scope, "g")
        whole = " AND ".join(inside) or "true"
        (row,) = self._query(f"SELECT coalesce(sum(items), 0) FROM syncline_groups AS g WHERE {group_scope} AND {whole}",
                             [*scope_params, *bounds])
        total += int(row[0])
        if bounds:
            partial = f"{group_scope} AND ({' OR '.join(outside)})"
            cursor_where = " AND ".join(f"cursor {op} ?" for op, bound in ((">=", start), ("<", end)) if bound is not None)
            (row,) = self._query(f"SELECT count(*) FROM ({self.group_items(partial)}) AS x WHERE {cursor_where}",
                                 [*scope_params, *bounds, *bounds])
            total += int(row[0])
        return total

    def items(self, sync: str, state: str | None = None, limit: int = 1000, destination: str | None = None) -> list[dict[str, Any]]:
        where, params = self._scope(sync, destination)
        if state in ITEM_STATES:
            where += f" AND state = '{state}'"  # a literal (from a fixed set): the in-doubt partial index needs one
        elif state:
            where += " AND state = ?"
            params.append(state)
        cols = ITEM_COLUMNS + ["progress", "updated_at"]
        source, source_params = "syncline_items", []
        if state in (None, "delivered"):
            # Only the newest groups can hold the newest ``limit`` items.
            scope, scope_params = self._scope(sync, destination)
            source, source_params = f"({self.all_items(self.newest_groups(on_alias(scope, 'g'), limit))}) AS i", list(scope_params)
        rows = self._query(
            f"SELECT {', '.join(cols)} FROM {source} WHERE {where} ORDER BY updated_at DESC LIMIT {int(limit)}",
            [*source_params, *params],
        )
        return [dict(zip(cols, r, strict=True)) for r in rows]

    def rejection_reasons(self, sync: str, limit: int = 20, destination: str | None = None) -> list[tuple[str, int]]:
        where, params = self._scope(sync, destination)
        rows = self._query(
            f"SELECT reason, count(*) AS n FROM syncline_items WHERE {where} AND state = 'rejected' "
            f"GROUP BY reason ORDER BY n DESC, reason LIMIT {int(limit)}",
            params,
        )
        return [(str(r), int(n)) for r, n in rows]

    # -- attempts and runs ------------------------------------------------------------------------------
    def write_attempts(self, rows: Iterable[AttemptRow]) -> None:
        values = [attempt_values(r) for r in rows]
        if not values:
            return
        marks = ", ".join(["?"] * len(ATTEMPT_COLUMNS))
        with self._write() as cur:
            cur.executemany(
                self._sql(f"INSERT INTO syncline_attempts ({', '.join(ATTEMPT_COLUMNS)}) VALUES ({marks})"), values
            )

    def start_run(self, run: RunRow) -> None:
        marks = ", ".join(["?"] * (len(RUN_COLUMNS) + 1))
        with self._write() as cur:
            cur.execute(
                self._sql(f"INSERT INTO syncline_runs ({', '.join(RUN_COLUMNS)}, started_at) VALUES ({marks})"),
                (*run_values(run), now_text()),
            )

    def finish_run(self, run: RunRow) -> None:
        sets = ", ".join(f"{c} = ?" for c in RUN_COLUMNS[2:])
        with self._write() as cur:
            cur.execute(
                self._sql(f"UPDATE syncline_runs SET {sets}, finished_at = ? WHERE run_id = ? AND sync = ?"),
                (*run_values(run)[2:], now_text(), run.run_id, run.sync),
            )

    def reap_dead_runs(self) -> int:
        """Runs of this host still ``running`` whose process is gone (SIGKILL, a crash, a power cut) become
        ``crashed``; returns how many. Runs of other hosts (a shared Postgres ledger) are left alone: their
        liveness is not knowable from here."""
        rows = self._query("SELECT run_id, sync, pid FROM syncline_runs WHERE status = 'running' AND host = ?",
                           [socket.gethostname()])
        dead = [(run_id, sync) for run_id, sync, pid in rows if pid and not process_alive(int(pid))]
        if not dead:
            return 0
        with self._write() as cur:
            for run_id, sync in dead:
                cur.execute(self._sql(
                    "UPDATE syncline_runs SET status = 'crashed', finished_at = ?, error = coalesce(error, "
                    "'the process died before the run finished (killed or crashed); items it had claimed are "
                    "in_doubt and the next run settles them') WHERE run_id = ? AND sync = ? AND status = 'running'"),
                    (now_text(), run_id, sync))
        return len(dead)

    def take_dead_staging(self) -> list[str]:
        """Staging folders of this host's runs whose process is gone (raw source rows), forgotten as they are
        handed to the caller, which removes them: crashed runs, and finished ones killed after recording
        their end but before removing their folder."""
        self.reap_dead_runs()
        host = socket.gethostname()
        rows = self._query("SELECT run_id, sync, status, pid, staging FROM syncline_runs "
                           "WHERE host = ? AND staging <> '' AND status <> 'running'", [host])
        dead = [(run_id, sync, staging) for run_id, sync, status, pid, staging in rows
                if status == "crashed" or not pid or not process_alive(int(pid))]
        if dead:
            with self._write() as cur:
                for run_id, sync, _ in dead:
                    cur.execute(self._sql("UPDATE syncline_runs SET staging = '' WHERE run_id = ? AND sync = ?"),
                                (run_id, sync))
        return [staging for _, _, staging in dead]

    def runs(self, sync: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        self.reap_dead_runs()
        cols = RUN_COLUMNS + ["started_at", "finished_at"]
        where, params = ("WHERE sync = ?", [sync]) if sync else ("", [])
        rows = self._query(
            f"SELECT {', '.join(cols)} FROM syncline_runs {where} ORDER BY started_at DESC LIMIT {int(limit)}", params
        )
        return [dict(zip(cols, r, strict=True)) for r in rows]

    def attempts(self, run_id: str | None = None, sync: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        cols = ATTEMPT_COLUMNS
        clauses, params = [], []
        if run_id:
            clauses.append("run_id = ?")
            params.append(run_id)
        if sync:
            clauses.append("sync = ?")
            params.append(sync)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        rows = self._query(
            f"SELECT {', '.join(cols)} FROM syncline_attempts {where} ORDER BY at DESC LIMIT {int(limit)}", params
        )
        return [dict(zip(cols, r, strict=True)) for r in rows]


class SqliteLedger(Ledger):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock_dir = path.parent / f".{path.stem}-locks"
        conn = connect_wal(path)
        conn.execute("PRAGMA cache_size = -32768")  # 32 MB: the key index's hot pages stay cached
        conn.execute("PRAGMA wal_autocheckpoint = 4000")
        # The fold copies each slice to a temporary table (the only temporary objects here). With SQLite's
        # default 2 MB cache that table spilled to a file under /var/tmp: two fifths of a 200k-event run's
        # page reads and writes, each a system call. This holds a usual slice (the writer folds every
        # 40,000 items); a larger one still spills, so memory stays bounded however large the payloads a
        # mirror sync's claims carry. Not ``temp_store = MEMORY``: measured, that took 45 MB more at peak on
        # a 300k-row mirror run (this, 20 MB), and it makes SQLite sort wholly in memory.
        conn.execute(f"PRAGMA temp.cache_size = -{FOLD_TEMP_CACHE_KIB}")
        self._journal: JournalFileType | None = None  # read by folds, opened on the first one
        self._journal_attached = False  # the journal file attached read-only as JOURNAL_SCHEMA (folds)
        super().__init__(_AutoCommitSqlite(conn), str(path))

    def _begin(self, cur: Any) -> None:
        cur.execute("BEGIN IMMEDIATE")

    def open_another(self) -> Ledger:
        return SqliteLedger(self.path)

    def open_journal(self) -> Store:
        from connectors.ledger.journal import JournalFile

        return JournalFile(journal_path(self.path))

    def fold(self, before: int | None = None) -> int:
        """The journal lives in a file of its own (``journal.py``): SQLite has one write lock per file, and
        a fold holding this file's lock for a second must not stop the writer's claims. The fold reads the
        rows after this ledger's mark for that file, applies them from a temporary table and moves the mark
        in one transaction here, then deletes them there (a crash in between leaves rows the mark skips).
        Rows in this file's own ``syncline_journal`` (written before version 5) are folded first."""
        from connectors.ledger.journal import JournalFile

        folded = self._fold_table(None, "syncline_journal")
        path = journal_path(self.path)
        if not path.exists():
            return folded
        if self._journal is None:
            self._journal = JournalFile(path)
        journal = self._journal
        if not self._journal_attached:
            # Read-only, so this connection's BEGIN IMMEDIATE takes a read transaction there, never the
            # journal file's write lock (the writer's claims must not wait for a fold).
            self._query(f"ATTACH DATABASE ? AS {JOURNAL_SCHEMA}", (f"file:{urllib.parse.quote(str(path))}?mode=ro",))
            self._journal_attached = True
        upto = journal.max_seq(before)
        if upto is None:
            return folded
        mark = 0
        while True:
            # Slices of at most FOLD_MAX_ITEMS items, each with its mark in one transaction (read in it, so
            # two folders never apply a row twice): the rows of a slice pass through Python, and a fold that
            # fell behind (a 10M-item run's last one) must not hold them all at once (measured: 1.2 GB peak
            # at 10M items when it did).
            with self._write() as cur:
                cur.execute("SELECT seq FROM syncline_fold_mark WHERE journal = ?", (journal.id,))
                row = cur.fetchone()
                mark = int(row[0]) if row else 0
                if upto <= mark:
                    break
                end = journal.slice_end(mark, upto, FOLD_MAX_ITEMS)
                cur.execute(JOURNAL_TABLE.format(table="temp.syncline_journal_in", serial="INTEGER"))
                # Copied file to file in SQL: through Python, reading the rows and inserting them again was
                # about a third of a fold's CPU (py-spy on benchmarks/bench_fold.py, 2026-12-03).
                journal_rows = f"{JOURNAL_SCHEMA}.syncline_journal"
                cur.execute(f"INSERT INTO temp.syncline_journal_in ({JOURNAL_COLUMNS}) SELECT {JOURNAL_COLUMNS} "
                            f"FROM {journal_rows} WHERE seq > ? AND seq <= ?", (mark, end))
                # The group rows of this slice's claims written after it (a group row follows its last
                # request's answer, claims run ahead of sending): applied with their claims.
                cur.execute(f"INSERT INTO temp.syncline_journal_in ({JOURNAL_COLUMNS}) SELECT {JOURNAL_COLUMNS} "
                            f"FROM {journal_rows} WHERE seq > ? AND kind = 'group' AND claim_id IN "
                            "(SELECT claim_id FROM temp.syncline_journal_in WHERE kind = 'claim')", (end,))
                self._apply_journal(cur, end, "temp.syncline_journal_in")
                cur.execute("DROP TABLE temp.syncline_journal_in")
                cur.execute("INSERT INTO syncline_fold_mark (journal, seq) VALUES (?, ?) ON CONFLICT (journal) "
                            "DO UPDATE SET seq = excluded.seq", (journal.id, end))
        journal.delete_upto(max(upto, mark))
        return max(upto, folded)

    def close(self) -> None:
        if self._journal_attached:
            # Before the journal's own connection closes: the last one to close a WAL file checkpoints it
            # and removes its -wal and -shm, which a read-only attachment cannot.
            with contextlib.suppress(sqlite3.Error):
                self._query(f"DETACH DATABASE {JOURNAL_SCHEMA}")
            self._journal_attached = False
        if self._journal is not None:
            self._journal.close()
        super().close()

    def export(self, statement: str, params: Sequence[Any], out: Path) -> None:
        self.start_export(statement, params, out)()

    def _start_keys_export(self, where: str, params: Sequence[Any], statement: str, out: Path) -> Callable[[], None]:
        """Delivered items as keys alone (the child writes their state and null hashes itself), then the
        rest as :meth:`snapshot` has them, in one file: at 10M delivered items 5 s instead of 14 s, as
        each text column read through ADBC costs about 2 s."""
        parts = [
            {"sql": f"SELECT idem_key FROM syncline_items WHERE {where} AND state = 'delivered'", "params": list(params),
             "fill": {"state": "delivered", "payload_hash": None}},
            {"sql": f"{statement} AND state <> 'delivered'", "params": list(params)},
            # Delivered groups: one JSON key list per row, unnested by DuckDB in the child (SQLite's
            # json_each would cost about 4 us an item: 40 s for a 10M-item rerun).
            {"sql": f"SELECT keys FROM syncline_groups WHERE {where}", "params": list(params), "unnest": "keys",
             "fill": {"state": "delivered", "payload_hash": None}},
        ]
        return self.start_export("--parts", [json.dumps([["idem_key", "state", "payload_hash"], parts])], out)

    def _start_full_export(self, where: str, params: Sequence[Any], statement: str, out: Path,
                           grouped: bool) -> Callable[[], None]:
        if not grouped:
            return self.start_export(statement, params, out)
        parts = [
            {"sql": statement, "params": list(params)},
            {"sql": f"SELECT doc FROM syncline_groups WHERE {where}", "params": list(params), "unnest": "doc",
             "fill": {"state": "delivered"}},
        ]
        return self.start_export("--parts", [json.dumps([["idem_key", "state", "payload_hash"], parts])], out)

    def start_export(self, statement: str, params: Sequence[Any], out: Path) -> Callable[[], None]:
        """Through ADBC in a child process: two SQLite libraries in one process corrupt each other's
        locks (see ``export.py``). The result waits for the child (once; later calls return at once)."""
        import subprocess
        import sys

        child = subprocess.Popen(
            [sys.executable, "-m", "connectors.ledger.export", str(self.path), str(out), statement,
             *[str(p) for p in params]],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        failure: list[str] = []

        def wait() -> None:
            if child.returncode is None:
                try:
                    _, stderr = child.communicate(timeout=900)
                except subprocess.TimeoutExpired:
                    child.kill()
                    _, stderr = child.communicate()
                if child.returncode != 0:
                    failure.append(" ".join(stderr.strip().splitlines()[-1:]) or f"exit code {child.returncode}")
            if failure:
                raise RuntimeError(f"reading the ledger failed: {failure[0]}")

        return wait

    @contextmanager
    def _lock_names(self, sync: str, names: list[tuple[str, bool]], on_wait: Callable[[], None] | None) -> Iterator[None]:
        """``flock`` on one file per name: the SQLite ledger lives on one machine, as do its writers."""
        folder = self._lock_dir / hashlib.sha256(sync.encode()).hexdigest()[:16]
        folder.mkdir(parents=True, exist_ok=True)
        handles: list[int] = []
        try:
            for name, shared in names:
                fd = os.open(folder / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
                handles.append(fd)
                mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                except BlockingIOError:
                    if on_wait is not None:
                        on_wait()
                        on_wait = None
                    fcntl.flock(fd, mode)
            yield
        finally:
            for fd in reversed(handles):
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)


class _AutoCommitSqlite:
    """sqlite3 in autocommit mode with explicit BEGIN; commit/rollback only when a transaction is open."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def cursor(self) -> sqlite3.Cursor:
        return self._conn.cursor()

    def commit(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("COMMIT")

    def rollback(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def close(self) -> None:
        self._conn.close()


class PostgresLedger(Ledger):
    placeholder = "%s"
    dialect = "postgres"

    def __init__(self, url: str) -> None:
        import psycopg

        self._url = url
        conn = psycopg.connect(url, autocommit=False)
        super().__init__(conn, f"postgresql://{conn.info.host}:{conn.info.port}/{conn.info.dbname}")

    def _json_rows(self, param: str = "?") -> str:
        return f"jsonb_array_elements({param}::jsonb) AS e(value)"

    def _json_at(self, index: int) -> str:
        return f"value->>{index}"

    def mark_delivered(self, destination: str, run_id: str, chunk_id: str, keys_json: str) -> int:
        with self._write() as cur:
            cur.execute(
                "UPDATE syncline_items SET state = 'delivered', reason = NULL, run_id = %s, updated_at = %s "
                "WHERE destination = %s AND chunk_id = %s AND idem_key IN "
                "(SELECT jsonb_array_elements_text(%s::jsonb))",
                (run_id, now_text(), destination, chunk_id, keys_json),
            )
            return max(cur.rowcount or 0, 0)

    def fold(self, before: int | None = None) -> int:
        """The rows leave the journal by one ``DELETE ... RETURNING`` into a temporary table, applied in the
        same transaction: a row another connection commits meanwhile is neither applied nor deleted (a plain
        ``DELETE ... WHERE seq <= max`` could delete a row committed after the read, unapplied)."""
        with self._write() as cur:
            self._lock_fold(cur)
            cur.execute("CREATE TEMP TABLE syncline_journal_in (LIKE syncline_journal) ON COMMIT DROP")
            bound = "" if before is None else " WHERE seq < %s"
            cur.execute(f"WITH d AS (DELETE FROM syncline_journal{bound} RETURNING *) "
                        "INSERT INTO syncline_journal_in SELECT * FROM d", () if before is None else (before,))
            cur.execute("SELECT max(seq) FROM syncline_journal_in")
            upto = cur.fetchone()[0]
            if upto is not None:
                # The group rows of these claims written after them, read once: each statement of a fold
                # sees newer commits (read committed), and all of them must agree on which claims were
                # delivered whole.
                cur.execute("INSERT INTO syncline_journal_in SELECT * FROM syncline_journal WHERE kind = 'group' "
                            "AND claim_id IN (SELECT claim_id FROM syncline_journal_in WHERE kind = 'claim')")
                self._apply_journal(cur, int(upto), "syncline_journal_in")
        return int(upto or 0)

    COPY_ABOVE = 50  # rows: above this, bulk item and attempt rows go through COPY, not one INSERT each

    def write_items(self, rows: Iterable[ItemRow], *, keep_delivered: bool = False) -> None:
        """Bulk rows (rejects, mixed outcomes) through ``COPY`` into a temporary table, then one upsert."""
        values = [(*item_values(r), now_text()) for r in rows]
        if len(values) <= self.COPY_ABOVE:
            super().write_items(_rows_of(values), keep_delivered=keep_delivered)
            return
        cols = ", ".join(ITEM_COLUMNS + ["updated_at"])
        updates = ", ".join(
            _item_update(c) for c in ITEM_COLUMNS[2:] + ["updated_at"]
        )
        guard = " WHERE syncline_items.state <> 'delivered'" if keep_delivered else ""
        with self._write() as cur:
            cur.execute("CREATE TEMP TABLE IF NOT EXISTS syncline_items_in (LIKE syncline_items INCLUDING DEFAULTS) "
                        "ON COMMIT DELETE ROWS")
            with cur.copy(f"COPY syncline_items_in ({cols}) FROM STDIN") as copy:
                for value in values:
                    copy.write_row(value)
            cur.execute(
                f"INSERT INTO syncline_items ({cols}) SELECT DISTINCT ON (destination, idem_key) {cols} "
                f"FROM syncline_items_in ORDER BY destination, idem_key "
                f"ON CONFLICT (destination, idem_key) DO UPDATE SET {updates}{guard}"
            )
            cur.execute("DELETE FROM syncline_items_in")

    def write_attempts(self, rows: Iterable[AttemptRow]) -> None:
        values = [attempt_values(r) for r in rows]
        if len(values) <= self.COPY_ABOVE:
            super().write_attempts(_attempts_of(values))
            return
        with self._write() as cur, cur.copy(f"COPY syncline_attempts ({', '.join(ATTEMPT_COLUMNS)}) FROM STDIN") as copy:
            for value in values:
                copy.write_row(value)

    def _elements_of(self, expr: str, alias: str = "e") -> str:
        return f"jsonb_array_elements({expr}::jsonb) AS {alias}(value)"

    def _at(self, alias: str, index: int) -> str:
        return f"({alias}.value->>{index})"

    def _text_value(self, alias: str) -> str:
        return f"({alias}.value#>>'{{}}')"

    def _latest(self, select: str) -> str:
        return f"SELECT DISTINCT ON (destination, k) * FROM ({select}) AS q ORDER BY destination, k, seq DESC"

    def _lock_fold(self, cur: Any) -> None:
        cur.execute("SELECT pg_advisory_xact_lock(74219)")

    def _table_exists(self, cur: Any, table: str) -> bool:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
        return bool(cur.fetchone()[0])

    def _lock_schema(self, cur: Any) -> None:
        # Concurrent migrations could collide in Postgres' catalog; serialize them.
        cur.execute("SELECT pg_advisory_xact_lock(74218)")

    def open_another(self) -> Ledger:
        return PostgresLedger(self._url)

    def export(self, statement: str, params: Sequence[Any], out: Path) -> None:
        import adbc_driver_postgresql.dbapi as adbc

        from connectors.ledger.export import write_parquet

        numbered = statement
        for n in range(1, len(params) + 1):
            numbered = numbered.replace("?", f"${n}", 1)
        with adbc.connect(self._url) as conn, conn.cursor() as cur:
            cur.execute(numbered, tuple(params))
            write_parquet(cur.fetch_record_batch(), str(out))

    @contextmanager
    def _lock_names(self, sync: str, names: list[tuple[str, bool]], on_wait: Callable[[], None] | None) -> Iterator[None]:
        """Session advisory locks on their own connection: they hold across machines and are released
        by the server if the run's process dies."""
        import psycopg

        conn = psycopg.connect(self._url, autocommit=True)
        try:
            for name, shared in names:
                key = int.from_bytes(hashlib.sha256(f"syncline\x1f{sync}\x1f{name}".encode()).digest()[:8], "big", signed=True)
                kind = "_shared" if shared else ""
                row = conn.execute(f"SELECT pg_try_advisory_lock{kind}(%s)", (key,)).fetchone()
                if not (row and row[0]):
                    if on_wait is not None:
                        on_wait()
                        on_wait = None
                    conn.execute(f"SELECT pg_advisory_lock{kind}(%s)", (key,))
            yield
        finally:
            conn.close()  # ends the session: every lock it held is released

    def _sql(self, statement: str) -> str:
        return statement.replace("?", "%s")


def connect_wal(path: Path, wait_s: float = 120.0, *, page_size: int | None = None) -> sqlite3.Connection:
    """A connection to a SQLite file in WAL mode, autocommit, waiting up to ``wait_s`` for locks.

    Switching a new file to WAL needs it alone, and SQLite answers "database is locked" at once, not after
    the busy timeout, when another process opens it at that moment (two runs starting together on a new
    ledger: measured, 2 of 8 tries). So the switch is retried until ``wait_s``. ``page_size`` applies to a
    file created here (an existing file keeps its own). URI names are on (a plain
    path stays a path) so that a fold may attach the journal file read-only (:meth:`SqliteLedger.fold`)."""
    conn = sqlite3.connect(str(path), timeout=wait_s, isolation_level=None, check_same_thread=False, uri=True)
    if page_size is not None:
        conn.execute(f"PRAGMA page_size = {int(page_size)}")  # a new, empty file only: before WAL is on
    deadline = time.monotonic() + wait_s
    delay = 0.005
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                conn.close()
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute(f"PRAGMA busy_timeout = {int(wait_s * 1000)}")
    return conn


def journal_path(ledger: Path) -> Path:
    """The journal file beside a SQLite ledger: ``ledger.sqlite`` -> ``ledger.sqlite.journal`` (so that
    ``ledger.sqlite*`` names every file of the ledger, for a backup or a removal)."""
    return ledger.with_name(f"{ledger.name}.journal")


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host still runs (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def _item_update(column: str) -> str:
    """How an upsert sets ``column``: a NULL vendor id never erases a stored one; counted resends add up."""
    if column == "vendor_id":
        return "vendor_id = coalesce(excluded.vendor_id, syncline_items.vendor_id)"
    if column == "resent_unknown":
        return "resent_unknown = syncline_items.resent_unknown + excluded.resent_unknown"
    return f"{column} = excluded.{column}"


def _rows_of(values: list[tuple[Any, ...]]) -> list[ItemRow]:
    return [ItemRow(*v[:-1]) for v in values]


def _attempts_of(values: list[tuple[Any, ...]]) -> list[AttemptRow]:
    return [AttemptRow(*v) for v in values]
