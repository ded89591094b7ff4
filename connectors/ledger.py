"""The ledger: one row per item (its fate) and one row per HTTP attempt (the run log), plus run summaries.

Two stores share one schema and one set of statements:
- SQLite (default, ``$SYNCLINE_HOME/ledger.sqlite``) in WAL mode: many processes may read and write at
  once (short ``BEGIN IMMEDIATE`` transactions wait on a busy timeout), which DuckDB's one-writer-process
  rule would not allow for parallel Dagster steps.
- PostgreSQL (``SYNCLINE_LEDGER_URL=postgresql://...``) for runs spread over several machines.

Nothing secret is ever written here: attempts keep a redacted error excerpt, never headers or bodies.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import operator
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

ITEM_STATES = ("delivered", "rejected", "in_doubt", "failed")


@dataclass
class ItemRow:
    idem_key: str
    sync: str
    endpoint: str
    source_key: str | None
    payload_hash: str | None
    state: str
    reason: str | None = None
    vendor_id: str | None = None
    run_id: str | None = None
    chunk_id: str | None = None
    excerpt: str | None = None
    cursor: str | None = None  # the source cursor value, for read-back reconciliation by window


@dataclass
class AttemptRow:
    run_id: str
    sync: str
    endpoint: str
    chunk_id: str
    attempt: int
    items: int
    bytes: int
    status: int | None  # None: no HTTP status (timeout, connection error)
    latency_ms: float
    error: str | None = None


@dataclass
class RunRow:
    run_id: str
    sync: str
    endpoint: str
    span: str  # the cursor window, e.g. "2026-01-03" or "all"
    dry_run: bool = False
    status: str = "running"
    error: str | None = None
    source_rows: int = 0
    delivered: int = 0
    rejected: int = 0
    skipped: int = 0
    in_doubt: int = 0
    failed: int = 0
    requests: int = 0
    retries: int = 0
    http_429: int = 0
    bytes_sent: int = 0
    seconds: float = 0.0
    p95_latency_ms: float = 0.0
    notes: str | None = None  # vendor warnings, e.g. "Screeb counted 99 of 100 events"


ITEM_COLUMNS = [f.name for f in fields(ItemRow)]
ATTEMPT_COLUMNS = [f.name for f in fields(AttemptRow)]
RUN_COLUMNS = [f.name for f in fields(RunRow)]
# attrgetter, not dataclasses.astuple: astuple deep-copies every field and dominated delivery's CPU.
_item_values = operator.attrgetter(*ITEM_COLUMNS)
_attempt_values = operator.attrgetter(*ATTEMPT_COLUMNS)
_run_values = operator.attrgetter(*RUN_COLUMNS)

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS syncline_items (
        idem_key TEXT PRIMARY KEY, sync TEXT NOT NULL, endpoint TEXT NOT NULL, source_key TEXT,
        payload_hash TEXT, state TEXT NOT NULL, reason TEXT, vendor_id TEXT, run_id TEXT, chunk_id TEXT,
        excerpt TEXT, cursor TEXT, progress TEXT, updated_at TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS syncline_items_sync_state ON syncline_items (sync, state)",
    """CREATE TABLE IF NOT EXISTS syncline_attempts (
        run_id TEXT NOT NULL, sync TEXT NOT NULL, endpoint TEXT NOT NULL, chunk_id TEXT, attempt INTEGER,
        items INTEGER, bytes INTEGER, status INTEGER, latency_ms REAL, error TEXT, at TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS syncline_attempts_run ON syncline_attempts (run_id)",
    """CREATE TABLE IF NOT EXISTS syncline_runs (
        run_id TEXT NOT NULL, sync TEXT NOT NULL, endpoint TEXT NOT NULL, span TEXT, dry_run BOOLEAN,
        status TEXT, error TEXT, source_rows INTEGER, delivered INTEGER, rejected INTEGER, skipped INTEGER,
        in_doubt INTEGER, failed INTEGER, requests INTEGER, retries INTEGER, http_429 INTEGER,
        bytes_sent BIGINT, seconds REAL, p95_latency_ms REAL, notes TEXT, started_at TEXT NOT NULL, finished_at TEXT,
        PRIMARY KEY (run_id, sync))""",
    "CREATE INDEX IF NOT EXISTS syncline_runs_sync ON syncline_runs (sync, started_at)",
]


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


class Ledger:
    """A DB-API connection behind a lock. Use :func:`open_ledger` to get one for a URL."""

    placeholder = "?"
    lookup_chunk = 500

    def __init__(self, conn: Any, description: str) -> None:
        self._conn = conn
        self._lock = threading.RLock()
        self.description = description
        with self._write() as cur:
            self._lock_schema(cur)
            for statement in SCHEMA:
                cur.execute(statement)

    # -- plumbing ------------------------------------------------------------------------------------
    def _sql(self, statement: str) -> str:
        return statement if self.placeholder == "?" else statement.replace("?", self.placeholder)

    @contextmanager
    def _write(self) -> Iterator[Any]:
        with self._lock:
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

    def _begin(self, cur: Any) -> None:
        """Start a write transaction (SQLite takes the write lock up front to avoid upgrade deadlocks)."""

    def _lock_schema(self, cur: Any) -> None:
        """Serialize first-time schema creation between processes (Postgres needs it; SQLite's BEGIN IMMEDIATE does it)."""

    def _query(self, statement: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            cur = self._conn.cursor()
            try:
                cur.execute(self._sql(statement), params)
                rows = list(cur.fetchall())
            finally:
                cur.close()
            self._conn.commit()
            return rows

    def close(self) -> None:
        with self._lock:
            self._conn.close()

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

    # -- items ---------------------------------------------------------------------------------------
    def _rows_for_keys(
        self, columns: str, idem_keys: Sequence[str], where: str = "", params: Sequence[Any] = ()
    ) -> Iterator[tuple[Any, ...]]:
        """``SELECT idem_key, <columns>`` for many keys, a bounded IN list per statement."""
        for i in range(0, len(idem_keys), self.lookup_chunk):
            part = list(idem_keys[i : i + self.lookup_chunk])
            marks = ",".join(["?"] * len(part))
            yield from self._query(
                f"SELECT idem_key{columns} FROM syncline_items WHERE idem_key IN ({marks}){where}", [*part, *params]
            )

    def lookup(self, idem_keys: Sequence[str]) -> dict[str, tuple[str, str | None]]:
        """State and payload hash of the given keys that the ledger knows."""
        return {key: (state, phash) for key, state, phash in self._rows_for_keys(", state, payload_hash", idem_keys)}

    def claim(self, rows: Sequence[ItemRow], *, over_delivered: bool) -> set[str]:
        """Record a chunk ``in_doubt`` before it is sent; returns the keys this run may send.

        Unless ``over_delivered`` (mirror mode resends changed payloads), an item that another run marked
        delivered since this run planned is left alone and not returned: it is not sent twice."""
        if not rows:
            return set()
        self.write_items(rows, keep_delivered=not over_delivered)
        keys = [r.idem_key for r in rows]
        mine = " AND chunk_id = ? AND state = 'in_doubt'"
        return {key for (key,) in self._rows_for_keys("", keys, mine, [rows[0].chunk_id])}

    def write_items(self, rows: Iterable[ItemRow], *, keep_delivered: bool = False) -> None:
        """Upsert items; a NULL vendor id never erases one already stored. ``keep_delivered`` leaves
        items already delivered untouched."""
        now = _now()
        values = [(*_item_values(r), now) for r in rows]
        if not values:
            return
        cols = ", ".join(ITEM_COLUMNS + ["updated_at"])
        marks = ", ".join(["?"] * (len(ITEM_COLUMNS) + 1))
        updates = ", ".join(
            f"{c} = coalesce(excluded.{c}, syncline_items.{c})" if c == "vendor_id" else f"{c} = excluded.{c}"
            for c in ITEM_COLUMNS[1:] + ["updated_at"]
        )
        statement = (
            f"INSERT INTO syncline_items ({cols}) VALUES ({marks}) ON CONFLICT (idem_key) DO UPDATE SET {updates}"
        )
        if keep_delivered:
            statement += " WHERE syncline_items.state <> 'delivered'"
        with self._write() as cur:
            cur.executemany(self._sql(statement), values)

    def set_progress(self, idem_key: str, progress: str, vendor_id: str | None = None) -> None:
        """Persist a multi-step item's progress (JSON) at once, so a rerun resumes at the failed step."""
        with self._write() as cur:
            cur.execute(
                self._sql(
                    "UPDATE syncline_items SET progress = ?, vendor_id = coalesce(?, vendor_id), updated_at = ? "
                    "WHERE idem_key = ?"
                ),
                (progress, vendor_id, _now(), idem_key),
            )

    def progress(self, idem_keys: Sequence[str]) -> dict[str, tuple[str | None, str | None]]:
        """(progress JSON, vendor id) of the given keys."""
        return {key: (progress, vendor_id) for key, progress, vendor_id in self._rows_for_keys(", progress, vendor_id", idem_keys)}

    def counts(self, sync: str) -> dict[str, int]:
        counts = dict.fromkeys(ITEM_STATES, 0)
        for state, n in self._query("SELECT state, count(*) FROM syncline_items WHERE sync = ? GROUP BY state", [sync]):
            counts[state] = int(n)
        return counts

    def delivered_in_window(self, sync: str, start: dt.datetime | None, end: dt.datetime | None) -> int:
        """Delivered items of ``sync`` whose source cursor falls in [start, end) (all of them without bounds)."""
        # Cursors are stored as fixed-width UTC ISO text (payload.CURSOR_TEXT_FORMAT): a text range is a
        # time range, counted by the database.
        where, params = "sync = ? AND state = 'delivered'", [sync]
        for op, bound in ((">=", start), ("<", end)):
            if bound is not None:
                where += f" AND cursor {op} ?"
                params.append(bound.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
        (row,) = self._query(f"SELECT count(*) FROM syncline_items WHERE {where}", params)
        return int(row[0])

    def items(self, sync: str, state: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        where, params = "sync = ?", [sync]
        if state:
            where += " AND state = ?"
            params.append(state)
        cols = ITEM_COLUMNS + ["progress", "updated_at"]
        rows = self._query(
            f"SELECT {', '.join(cols)} FROM syncline_items WHERE {where} ORDER BY updated_at DESC LIMIT {int(limit)}",
            params,
        )
        return [dict(zip(cols, r, strict=True)) for r in rows]

    def rejection_reasons(self, sync: str, limit: int = 20) -> list[tuple[str, int]]:
        rows = self._query(
            "SELECT reason, count(*) AS n FROM syncline_items WHERE sync = ? AND state = 'rejected' "
            f"GROUP BY reason ORDER BY n DESC, reason LIMIT {int(limit)}",
            [sync],
        )
        return [(str(r), int(n)) for r, n in rows]

    # -- attempts and runs ------------------------------------------------------------------------------
    def write_attempts(self, rows: Iterable[AttemptRow]) -> None:
        now = _now()
        values = [(*_attempt_values(r), now) for r in rows]
        if not values:
            return
        marks = ", ".join(["?"] * (len(ATTEMPT_COLUMNS) + 1))
        with self._write() as cur:
            cur.executemany(
                self._sql(f"INSERT INTO syncline_attempts ({', '.join(ATTEMPT_COLUMNS)}, at) VALUES ({marks})"),
                values,
            )

    def start_run(self, run: RunRow) -> None:
        marks = ", ".join(["?"] * (len(RUN_COLUMNS) + 1))
        with self._write() as cur:
            cur.execute(
                self._sql(f"INSERT INTO syncline_runs ({', '.join(RUN_COLUMNS)}, started_at) VALUES ({marks})"),
                (*_run_values(run), _now()),
            )

    def finish_run(self, run: RunRow) -> None:
        sets = ", ".join(f"{c} = ?" for c in RUN_COLUMNS[2:])
        with self._write() as cur:
            cur.execute(
                self._sql(f"UPDATE syncline_runs SET {sets}, finished_at = ? WHERE run_id = ? AND sync = ?"),
                (*_run_values(run)[2:], _now(), run.run_id, run.sync),
            )

    def runs(self, sync: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
        cols = RUN_COLUMNS + ["started_at", "finished_at"]
        where, params = ("WHERE sync = ?", [sync]) if sync else ("", [])
        rows = self._query(
            f"SELECT {', '.join(cols)} FROM syncline_runs {where} ORDER BY started_at DESC LIMIT {int(limit)}", params
        )
        return [dict(zip(cols, r, strict=True)) for r in rows]

    def attempts(self, run_id: str | None = None, sync: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        cols = ATTEMPT_COLUMNS + ["at"]
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
        self._lock_dir = path.parent / f".{path.stem}-locks"
        conn = sqlite3.connect(str(path), timeout=120, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA busy_timeout = 120000")
        super().__init__(_AutoCommitSqlite(conn), f"sqlite:{path}")

    def _begin(self, cur: Any) -> None:
        cur.execute("BEGIN IMMEDIATE")

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

    def __init__(self, url: str) -> None:
        import psycopg

        self._url = url
        conn = psycopg.connect(url, autocommit=False)
        host = conn.info.host
        super().__init__(conn, f"postgresql://{host}/{conn.info.dbname}")

    def _lock_schema(self, cur: Any) -> None:
        # Concurrent CREATE TABLE IF NOT EXISTS can still collide in Postgres' catalog; serialize it.
        cur.execute("SELECT pg_advisory_xact_lock(74218)")

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


def open_ledger(url: str | None = None) -> Ledger:
    """The ledger at ``url`` (default ``SYNCLINE_LEDGER_URL`` or ``$SYNCLINE_HOME/ledger.sqlite``)."""
    from connectors import settings

    target = url or settings.ledger_url()
    if target.startswith(("postgresql://", "postgres://")):
        return PostgresLedger(target)
    return SqliteLedger(Path(target.removeprefix("sqlite:")))
