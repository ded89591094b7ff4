"""The ledger's schema, versioned: a ``syncline_schema_version`` table and forward migrations.

Why not alembic: it needs SQLAlchemy engines and a migration script folder, while the ledger speaks plain
DB-API (sqlite3, psycopg) with two dialects and a handful of tables. Each migration here is a list of
statements per dialect, applied once, in order, inside the caller's write transaction (which holds
SQLite's write lock or a Postgres advisory lock, so two processes never migrate at once).

Version 2 also adds ``syncline_journal``: the delivery hot path appends one row per claim group and one
per delivered request there, and folds them into ``syncline_items`` in large key-sorted batches (see
``Ledger.fold``): a random-key index insert per item per commit measured 20 us, a sorted fold 4 us.

Version 1 is the original schema (items keyed by idempotency key alone). Version 2 keys every item by
its destination; items recorded under version 1 get the destination ``''`` (unknown) and are adopted by
the first destination their sync delivers to afterwards (see ``Ledger.adopt``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

LATEST = 7

V1 = [
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

JOURNAL_TABLE = """CREATE TABLE {table} (
        seq {serial} PRIMARY KEY, destination TEXT NOT NULL, sync TEXT NOT NULL, endpoint TEXT NOT NULL,
        run_id TEXT NOT NULL, claim_id TEXT NOT NULL, kind TEXT NOT NULL, state TEXT, reason TEXT,
        over_delivered BOOLEAN NOT NULL DEFAULT FALSE, items INTEGER NOT NULL, doc TEXT NOT NULL, at TEXT NOT NULL)"""
JOURNAL_COLUMNS = "seq, destination, sync, endpoint, run_id, claim_id, kind, state, reason, over_delivered, items, doc, at"
_JOURNAL = JOURNAL_TABLE.replace("{table}", "syncline_journal")

_V2_COMMON = [
    """CREATE TABLE syncline_destinations (
        destination TEXT PRIMARY KEY, identity TEXT NOT NULL, vendor TEXT NOT NULL, name TEXT, base_url TEXT NOT NULL,
        credential_fingerprint TEXT NOT NULL, first_seen TEXT NOT NULL)""",
    "ALTER TABLE syncline_attempts ADD COLUMN destination TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE syncline_runs ADD COLUMN destination TEXT NOT NULL DEFAULT ''",
]

_ITEMS_V2 = """CREATE TABLE syncline_items (
        destination TEXT NOT NULL, idem_key TEXT NOT NULL, sync TEXT NOT NULL, endpoint TEXT NOT NULL,
        source_key TEXT, payload_hash TEXT, state TEXT NOT NULL, reason TEXT, vendor_id TEXT, run_id TEXT,
        chunk_id TEXT, excerpt TEXT, cursor TEXT, progress TEXT, updated_at TEXT NOT NULL,
        PRIMARY KEY (destination, idem_key)){suffix}"""
_ITEM_COPY_COLUMNS = (
    "idem_key, sync, endpoint, source_key, payload_hash, state, reason, vendor_id, run_id, chunk_id, excerpt, "
    "cursor, progress, updated_at"
)
# No state in the index: a state change (claimed -> delivered) then never touches it.
_V2_INDEXES = ["CREATE INDEX syncline_items_sync_dest ON syncline_items (sync, destination)"]

V2 = {
    # SQLite cannot change a primary key in place: rebuild the table, keeping every row.
    "sqlite": [
        *_V2_COMMON,
        _JOURNAL.format(serial="INTEGER"),
        "ALTER TABLE syncline_items RENAME TO syncline_items_v1",
        # A rowid table: rows of one claim sit together (appended), so marking a request delivered rewrites
        # a few pages; the key index takes the random inserts. WITHOUT ROWID measured 19 page writes per item.
        _ITEMS_V2.format(suffix=""),
        f"INSERT INTO syncline_items (destination, {_ITEM_COPY_COLUMNS}) "
        f"SELECT '', {_ITEM_COPY_COLUMNS} FROM syncline_items_v1",
        "DROP TABLE syncline_items_v1",
        *_V2_INDEXES,
    ],
    "postgres": [
        *_V2_COMMON,
        _JOURNAL.format(serial="BIGSERIAL"),
        "ALTER TABLE syncline_items ADD COLUMN destination TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE syncline_items DROP CONSTRAINT syncline_items_pkey",
        "ALTER TABLE syncline_items ADD PRIMARY KEY (destination, idem_key)",
        "DROP INDEX IF EXISTS syncline_items_sync_state",
        *_V2_INDEXES,
    ],
}

# Version 3: reliability bookkeeping. Items count resends after an unknown outcome and keep a person's
# verdict (``syncline resolve``); runs keep the counted resends, where their process ran (a dead process
# shows the run ``crashed``) and their staging folder (removed by the next run when the process died).
V3 = [
    "ALTER TABLE syncline_items ADD COLUMN resent_unknown INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE syncline_items ADD COLUMN resolved_by TEXT",
    "ALTER TABLE syncline_items ADD COLUMN resolved_at TEXT",
    "ALTER TABLE syncline_runs ADD COLUMN resent_unknown INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE syncline_runs ADD COLUMN host TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE syncline_runs ADD COLUMN pid INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE syncline_runs ADD COLUMN staging TEXT NOT NULL DEFAULT ''",
]

# Version 4: mirror mode keeps what it delivered, so a row gone from the source can be undone (Screeb's
# group.unassign), and runs count those removals.
V4 = [
    "ALTER TABLE syncline_items ADD COLUMN payload TEXT",
    "ALTER TABLE syncline_runs ADD COLUMN removed INTEGER NOT NULL DEFAULT 0",
]


# Version 5: a SQLite ledger's journal moves to a file of its own (``journal.py``; a fold here must not hold
# the writer's claims up); this table keeps, per journal file, the last seq folded. Also a journal kind
# ``attempts``: a run's HTTP attempts ride in the journal and are folded into ``syncline_attempts``.
V5 = ["CREATE TABLE syncline_fold_mark (journal TEXT PRIMARY KEY, seq BIGINT NOT NULL)"]

# Version 6: every run first looks for its destination's items left in doubt (``runner.settle_in_doubt``);
# the (sync, destination) index alone made that a scan of every item of the sync (7 s at 10M delivered
# items, most of a rerun). A partial index holds only the items in doubt, so it stays small and a fold
# touches it only for an item entering or leaving that state.
V6 = ["CREATE INDEX syncline_items_in_doubt ON syncline_items (sync, destination) WHERE state = 'in_doubt'"]

# Version 7: a claim group delivered whole, every item for the first time at its destination, is kept as
# one row here instead of one per item (``Ledger.fold``): ``keys`` is the JSON array of its idempotency
# keys, ``doc`` its claim record (``[[idem_key, source_key, payload_hash, cursor], ...]``), the cursors
# its range. Measured: the per-item fold was most of a run's CPU against a fast sink (a 300k-event run
# took 5.6 s with it, 2.6 s without). Every reader of items reads these rows as delivered items too.
V7_TABLE = """CREATE TABLE syncline_groups (
        destination TEXT NOT NULL, claim_id TEXT NOT NULL, sync TEXT NOT NULL, endpoint TEXT NOT NULL,
        run_id TEXT NOT NULL, items INTEGER NOT NULL, keys TEXT NOT NULL, doc TEXT NOT NULL, min_cursor TEXT,
        max_cursor TEXT, at TEXT NOT NULL, PRIMARY KEY (destination, claim_id))"""
_V7_COMMON = [V7_TABLE, "CREATE INDEX syncline_groups_sync_dest ON syncline_groups (sync, destination, at)"]
V7 = {
    "sqlite": _V7_COMMON,
    # Postgres compresses long text (pglz) by default: a claim group's 230 kB record, hex keys and hashes
    # that hardly compress. Measured at 1M items: claims waited 8.8 s on the server with it, 3.0 s without.
    "postgres": [
        *_V7_COMMON,
        "ALTER TABLE syncline_journal ALTER COLUMN doc SET STORAGE EXTERNAL",
        "ALTER TABLE syncline_groups ALTER COLUMN keys SET STORAGE EXTERNAL",
        "ALTER TABLE syncline_groups ALTER COLUMN doc SET STORAGE EXTERNAL",
    ],
}


def migrate(cur: Any, dialect: str, table_exists: Callable[[str], bool], now: str) -> list[int]:
    """Bring the schema to :data:`LATEST`; returns the versions applied (empty when up to date)."""
    if table_exists("syncline_schema_version"):
        cur.execute("SELECT max(version) FROM syncline_schema_version")
        row = cur.fetchone()
        current = int(row[0] or 0) if row else 0
    else:
        cur.execute("CREATE TABLE syncline_schema_version (version INTEGER NOT NULL, applied_at TEXT NOT NULL)")
        current = 1 if table_exists("syncline_items") else 0
        if current:
            cur.execute(f"INSERT INTO syncline_schema_version VALUES (1, '{now}')")
    applied: list[int] = []
    steps: dict[int, list[str]] = {1: V1, 2: V2[dialect], 3: V3, 4: V4, 5: V5, 6: V6, 7: V7[dialect]}
    for version in range(current + 1, LATEST + 1):
        for statement in steps[version]:
            cur.execute(statement)
        cur.execute(f"INSERT INTO syncline_schema_version VALUES ({version}, '{now}')")
        applied.append(version)
    return applied
