"""A SQLite ledger's delivery journal, in a file of its own beside the ledger (``ledger.sqlite.journal``).

Why a second file: SQLite has one write lock per database file. The run's writer appends a claim group
before its requests may leave; a fold, which turns journal rows into per-item state, holds a write lock
for a second or two at a time (a key-sorted upsert of tens of thousands of items). In one file every fold
stopped the claims and so the sending: measured, half of a 100 ms-sink run's delivery time was the main
loop waiting on claims behind folds. Here the writer appends to this file while a fold, on its own thread
and connection, writes the ledger file; the two locks never meet.

Folding is exactly once: the ledger keeps, per journal file (by the random id this file is created with,
so a deleted and recreated journal starts over), the last seq it applied, and moves it in the same
transaction as the rows it applies; folded rows are deleted here afterwards. Seqs are ``AUTOINCREMENT``,
never reused, so a row written after a fold can never fall under that fold's mark.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from connectors.ledger.schema import JOURNAL_TABLE
from connectors.ledger.store import Store, _AutoCommitSqlite, connect_wal

# The journal's rows are claim documents of about 100 bytes an item, appended and deleted in bulk, never
# updated in place: SQLite's largest page (64 KiB, not the default 4 KiB) writes and reads them in a
# sixteenth of the system calls. Measured on a 200k-event run (strace -c, 2026-12-07): with the fold's
# temporary table cached (``FOLD_TEMP_CACHE_KIB``), the journal file's page reads and writes fell from
# about 94,000 to about 6,000. The ledger file keeps 4 KiB pages: its item upserts touch one key
# index leaf each, and a 64 KiB page would write sixteen times the bytes for each.
JOURNAL_PAGE_SIZE = 65_536


class JournalFile(Store):
    """The journal file: :meth:`journal` appends (inside :meth:`batch`, group-committed), folds read."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        conn = connect_wal(path, page_size=JOURNAL_PAGE_SIZE)
        super().__init__(_AutoCommitSqlite(conn), str(path))
        with self._write() as cur:
            cur.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'syncline_journal'")
            if not cur.fetchone()[0]:
                cur.execute(JOURNAL_TABLE.format(table="syncline_journal", serial="INTEGER").replace(
                    "INTEGER PRIMARY KEY", "INTEGER PRIMARY KEY AUTOINCREMENT", 1))
                cur.execute("CREATE TABLE syncline_journal_id (id TEXT NOT NULL)")
                cur.execute("INSERT INTO syncline_journal_id VALUES (?)", (uuid.uuid4().hex,))
            cur.execute("SELECT id FROM syncline_journal_id")
            self.id = str(cur.fetchone()[0])

    def _begin(self, cur: Any) -> None:
        cur.execute("BEGIN IMMEDIATE")

    def max_seq(self, before: int | None = None) -> int | None:
        """The newest row's seq (below ``before`` if given); None when there is none."""
        if before is None:
            (row,) = self._query("SELECT max(seq) FROM syncline_journal")
        else:
            (row,) = self._query("SELECT max(seq) FROM syncline_journal WHERE seq < ?", (before,))
        return None if row[0] is None else int(row[0])

    def slice_end(self, after: int, upto: int, max_items: int) -> int:
        """The last seq of the longest run of rows after ``after`` (up to ``upto``) holding at most
        ``max_items`` items; at least the first such row, however many items it holds."""
        (row,) = self._query(
            "SELECT max(seq), min(first) FROM (SELECT seq, min(seq) OVER () AS first, "
            "sum(items) OVER (ORDER BY seq ROWS UNBOUNDED PRECEDING) AS total "
            "FROM syncline_journal WHERE seq > ? AND seq <= ?) AS s WHERE total <= ? OR seq = first",
            (after, upto, max_items))
        return upto if row[0] is None else int(row[0])

    def delete_upto(self, upto: int) -> None:
        if upto > 0:
            with self._write() as cur:
                cur.execute("DELETE FROM syncline_journal WHERE seq <= ?", (upto,))
