"""The ledger's contract, run against both stores: embedded SQLite and the real PostgreSQL server."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import os

import pytest

from connectors.ledger import AttemptRow, ItemRow, RunRow, open_ledger
from tests.conftest import POSTGRES_URL

PG_URL = POSTGRES_URL


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request, syncline_home) -> str:
    if request.param == "sqlite":
        return str(syncline_home / "ledger.sqlite")
    return request.getfixturevalue("postgres_ledger_url")


DEST = "trubrics-d1"


def item(key: str, state: str, dest: str = DEST, **kw) -> ItemRow:
    return ItemRow(dest, key, "s", "ep", f"src-{key}", "hash", state, **kw)


def test_items_upsert_lookup_and_counts(ledger_url):
    ledger = open_ledger(ledger_url)
    ledger.write_items([item("a", "in_doubt"), item("b", "in_doubt"), item("c", "rejected", reason="bad")])
    ledger.write_items([item("a", "delivered", vendor_id="v1"), item("b", "failed", reason="HTTP 503")])
    ledger.write_items([item("a", "delivered")])  # a later write without an id keeps the stored one
    assert ledger.lookup(DEST, ["a", "b", "zz"]) == {"a": ("delivered", "hash"), "b": ("failed", "hash")}
    assert ledger.counts("s") == {"delivered": 1, "rejected": 1, "in_doubt": 0, "failed": 1}
    assert ledger.items("s", state="delivered")[0]["vendor_id"] == "v1"
    assert ledger.rejection_reasons("s") == [("bad", 1)]
    ledger.close()
    reopened = open_ledger(ledger_url)  # durable, and schema creation is idempotent
    assert reopened.counts("s")["delivered"] == 1


def test_lookup_handles_more_keys_than_one_statement(ledger_url):
    ledger = open_ledger(ledger_url)
    ledger.write_items([item(f"k{i}", "delivered") for i in range(1234)])
    assert len(ledger.lookup(DEST, [f"k{i}" for i in range(0, 2000)])) == 1234


def test_progress_is_saved_per_item(ledger_url):
    ledger = open_ledger(ledger_url)
    ledger.write_items([item("a", "in_doubt")])
    ledger.set_progress(DEST, "a", '{"feedback": "fb_1"}', vendor_id="fb_1")
    assert ledger.progress(DEST, ["a"]) == {"a": ('{"feedback": "fb_1"}', "fb_1")}
    assert ledger.progress("other-dest", ["a"]) == {}


def test_runs_and_attempts_are_logged(ledger_url):
    ledger = open_ledger(ledger_url)
    run = RunRow("r1", "s", "ep", "2026-06-01")
    ledger.start_run(run)
    ledger.write_attempts([AttemptRow("r1", "s", "ep", "c1", 1, 100, 5000, 429, 3.2, "rate limited")])
    run.delivered, run.status = 100, "success"
    ledger.finish_run(run)
    (logged,) = ledger.runs("s")
    assert logged["delivered"] == 100 and logged["status"] == "success" and logged["finished_at"]
    assert ledger.attempts(run_id="r1")[0]["status"] == 429


def test_delivered_in_window_uses_the_cursor(ledger_url):
    ledger = open_ledger(ledger_url)
    ledger.write_items([item("a", "delivered", cursor="2026-06-01T10:00:00.000000Z"),
                        item("b", "delivered", cursor="2026-06-02T10:00:00.000000Z")])
    start = dt.datetime(2026, 6, 2, tzinfo=dt.UTC)
    assert ledger.delivered_in_window("s", start, start + dt.timedelta(days=1)) == 1
    assert ledger.delivered_in_window("s", None, None) == 2


def _writer(url: str, worker: int, errors) -> None:  # pragma: no cover - child process
    try:
        ledger = open_ledger(url)
        for chunk in range(20):
            rows = [item(f"w{worker}-{chunk}-{i}", "in_doubt") for i in range(50)]
            ledger.write_items(rows)
            for row in rows:
                row.state = "delivered"
            ledger.write_items(rows)
        ledger.close()
    except Exception as exc:
        errors.put(repr(exc))


def test_concurrent_writer_processes(ledger_url):
    ctx = multiprocessing.get_context("spawn")
    errors = ctx.Queue()
    workers = [ctx.Process(target=_writer, args=(ledger_url, w, errors)) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert errors.empty(), errors.get()
    assert open_ledger(ledger_url).counts("s")["delivered"] == 4 * 20 * 50


def test_a_sync_runs_on_the_postgres_ledger(sandbox, warehouse, write_sync, postgres_ledger_url, monkeypatch):
    from connectors.runner import run_sync

    monkeypatch.setenv("SYNCLINE_LEDGER_URL", postgres_ledger_url)
    warehouse("CREATE TABLE analytics.ev AS SELECT 'e' || i AS id, 'u' || i AS u, now() AS ts FROM range(150) t(i)")
    spec = write_sync("pgsync", """
        source: {table: analytics.ev, key: id, cursor: ts}
        destination: {vendor: trubrics, endpoint: publish_events}
    """, "SELECT _key, u AS user_id, 'Ping' AS event, ts AS timestamp FROM source")
    assert run_sync(spec).delivered == 150
    assert run_sync(spec).skipped == 150
    assert open_ledger(postgres_ledger_url).counts("pgsync")["delivered"] == 150
    assert not (os.path.exists(os.path.join(os.environ["SYNCLINE_HOME"], "ledger.sqlite")))


def _claim_json(*keys: str) -> str:
    return json.dumps([[k, f"src-{k}", "hash", None] for k in keys])


def test_claim_never_takes_an_item_another_run_delivered(ledger_url):
    ledger = open_ledger(ledger_url)
    ledger.write_items([item("done", "delivered", vendor_id="v1")])
    claimed = ledger.claim(DEST, "s", "ep", "run1", "c1", _claim_json("done", "new"), over_delivered=False)
    assert claimed == ["new"]
    assert ledger.lookup(DEST, ["done", "new"]) == {"done": ("delivered", "hash"), "new": ("in_doubt", "hash")}
    # mirror mode resends a changed payload over a delivery
    assert ledger.claim(DEST, "s", "ep", "run2", "c2", _claim_json("done"), over_delivered=True) == ["done"]
    # the same key at another destination is another item
    assert ledger.claim("other-d", "s", "ep", "run3", "c3", _claim_json("new"), over_delivered=False) == ["new"]


def test_mark_delivered_takes_only_this_claims_items(ledger_url):
    ledger = open_ledger(ledger_url)
    ledger.claim(DEST, "s", "ep", "run1", "c1", _claim_json("a", "b"), over_delivered=False)
    ledger.claim(DEST, "s", "ep", "run2", "c2", _claim_json("c"), over_delivered=False)
    assert ledger.mark_delivered(DEST, "run1", "c1", json.dumps(["a", "b", "c"])) == 2
    states = {k: v[0] for k, v in ledger.lookup(DEST, ["a", "b", "c"]).items()}
    assert states == {"a": "delivered", "b": "delivered", "c": "in_doubt"}


def test_snapshot_reads_one_destination_in_bulk(ledger_url, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from connectors.ledger import store

    ledger = open_ledger(ledger_url)
    assert ledger.snapshot(DEST, "s", tmp_path / "none.parquet") is None
    ledger.write_items([item(f"k{i}", "delivered") for i in range(300)] + [item("x", "failed", dest="other")])
    small = pq.read_table(ledger.snapshot(DEST, "s", tmp_path / "small.parquet"))
    monkeypatch.setattr(store, "SMALL_SNAPSHOT", 10)  # the bulk path: ADBC (a child process for SQLite)
    bulk = pq.read_table(ledger.snapshot(DEST, "s", tmp_path / "bulk.parquet"))
    for table in (small, bulk):
        assert table.num_rows == 300 and table.column_names == ["idem_key", "state", "payload_hash"]
        assert set(table.column("state").to_pylist()) == {"delivered"}
    ledger.write_items([item("after", "delivered")])  # the ledger is still healthy after the bulk read
    assert ledger.counts("s", destination=DEST)["delivered"] == 301


def test_a_version_1_ledger_migrates_in_place_and_is_adopted(syncline_home):
    import sqlite3

    from connectors.destination import resolve_destination
    from connectors.ledger.schema import LATEST, V1

    path = syncline_home / "ledger.sqlite"
    conn = sqlite3.connect(path)
    for statement in V1:
        conn.execute(statement)
    conn.execute("INSERT INTO syncline_items (idem_key, sync, endpoint, state, updated_at) "
                 "VALUES ('old1', 's', 'ep', 'delivered', '2026-01-01')")
    conn.commit()
    conn.close()
    ledger = open_ledger(str(path))
    assert ledger.migrated == [2, 3, 4, 5, 6, 7]
    (version,) = ledger._query("SELECT max(version) FROM syncline_schema_version")
    assert version[0] == LATEST
    dest = resolve_destination("trubrics", "http://127.0.0.1:1", {"api_key": "k"}, "api_key")
    assert ledger.adopt("s", dest) == 1  # the first destination the sync delivers to takes its history
    assert ledger.lookup(dest.id, ["old1"]) == {"old1": ("delivered", None)}
    other = resolve_destination("trubrics", "http://127.0.0.1:2", {"api_key": "k"}, "api_key")
    assert ledger.adopt("s", other) == 0  # history is adopted once, never shared
    ledger.close()
    assert open_ledger(str(path)).migrated == []


def test_bulk_rows_are_written_whole_and_keep_deliveries(ledger_url):
    """Above a few dozen rows the Postgres store ingests through COPY; both stores give the same result."""
    ledger = open_ledger(ledger_url)
    ledger.write_items([item("d0", "delivered", vendor_id="v0")])
    bulk = [item(f"d{i}", "rejected", reason="bad", excerpt="{}") for i in range(500)]
    ledger.write_items(bulk, keep_delivered=True)
    assert ledger.counts("s") == {"delivered": 1, "rejected": 499, "in_doubt": 0, "failed": 0}
    assert ledger.items("s", state="delivered")[0]["vendor_id"] == "v0"
    ledger.write_attempts([AttemptRow("r1", "s", "ep", f"c{i}", 1, 100, 5000, 200, 3.2) for i in range(200)])
    assert len(ledger.attempts(run_id="r1", limit=500)) == 200


# --- the journal: appended by a run's writer on its own connection, folded on another -----------------------
def _journal_claim(journal, claim: str, keys: list[str]) -> int:
    doc = json.dumps([[k, f"src-{k}", "hash", "2026-06-01T00:00:00.000000Z"] for k in keys])
    return journal.journal("claim", DEST, "s", "ep", "r1", claim, doc, len(keys), state="in_doubt")


def test_a_fold_applies_each_journal_row_once_while_the_writer_appends(ledger_url):
    """Claims, deliveries and attempts appended through the writer's journal connection while folds run
    on two other connections: every item ends delivered, every attempt is stored once, nothing is left."""
    import threading

    ledger = open_ledger(ledger_url)
    journal = ledger.open_journal()
    folders = [ledger.open_another(), ledger.open_another()]
    done = threading.Event()
    errors: list[BaseException] = []

    def fold_until_done(conn) -> None:
        try:
            while not done.is_set():
                conn.fold()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=fold_until_done, args=(f,)) for f in folders]
    for t in threads:
        t.start()
    try:
        for g in range(40):
            keys = [f"g{g}-{i:03d}" for i in range(50)]
            with journal.batch():
                _journal_claim(journal, f"c{g}", keys)
            with journal.batch():
                journal.journal("delivered", DEST, "s", "ep", "r1", f"c{g}", json.dumps(keys), len(keys))
                attempt = AttemptRow("r1", "s", "ep", f"c{g}.0", 1, len(keys), 999, 200, 1.5, destination=DEST)
                from connectors.ledger.rows import attempt_values

                journal.journal("attempts", DEST, "s", "ep", "r1", f"c{g}", json.dumps([attempt_values(attempt)]), 1)
    finally:
        done.set()
        for t in threads:
            t.join(timeout=60)
    assert not errors, errors
    ledger.fold()
    assert ledger.counts("s", destination=DEST) == {"delivered": 2000, "rejected": 0, "in_doubt": 0, "failed": 0}
    attempts = ledger.attempts(sync="s", limit=1000)
    assert len(attempts) == 40 and {a["status"] for a in attempts} == {200}
    assert {a["chunk_id"] for a in attempts} == {f"c{g}.0" for g in range(40)}
    assert attempts[0]["latency_ms"] == 1.5 and attempts[0]["items"] == 50
    assert ledger.fold() == 0  # nothing left to fold
    for conn in (journal, *folders, ledger):
        conn.close()


def test_a_sqlite_journal_lives_beside_the_ledger_and_a_new_journal_file_starts_over(syncline_home):
    """The journal file is ``ledger.sqlite.journal``; a fold's mark is kept per journal file, so a journal
    deleted and recreated (seqs from 1 again) is folded from its start, not skipped under the old mark."""
    path = syncline_home / "ledger.sqlite"
    ledger = open_ledger(str(path))
    journal = ledger.open_journal()
    assert journal.path == syncline_home / "ledger.sqlite.journal"
    for g in range(3):
        _journal_claim(journal, f"a{g}", [f"a{g}-{i}" for i in range(10)])
    journal.close()
    assert ledger.fold() == 3
    for suffix in ("", "-wal", "-shm"):
        (syncline_home / f"ledger.sqlite.journal{suffix}").unlink(missing_ok=True)
    journal = ledger.open_journal()
    assert _journal_claim(journal, "b0", ["b0-0", "b0-1"]) == 1
    journal.close()
    ledger.close()
    ledger = open_ledger(str(path))  # opening folds what a run left
    assert ledger.counts("s", destination=DEST)["in_doubt"] == 32
    ledger.close()


def test_a_new_journal_file_has_64k_pages_and_the_ledger_file_keeps_4k(syncline_home):
    """The journal is appended and deleted in bulk, so it takes SQLite's largest page (a sixteenth of the
    page reads and writes); the ledger's item upserts touch one index leaf each, so it keeps 4 KiB pages."""
    import sqlite3

    from connectors.ledger.journal import JOURNAL_PAGE_SIZE

    path = syncline_home / "ledger.sqlite"
    ledger = open_ledger(str(path))
    journal = ledger.open_journal()
    _journal_claim(journal, "a0", ["a0-0", "a0-1"])
    journal.close()
    assert ledger.fold() == 1
    ledger.close()
    sizes = {}
    for name in ("ledger.sqlite", "ledger.sqlite.journal"):
        conn = sqlite3.connect(syncline_home / name)
        sizes[name] = (conn.execute("PRAGMA page_size").fetchone()[0], conn.execute("PRAGMA journal_mode").fetchone()[0])
        conn.close()
    assert sizes == {"ledger.sqlite": (4096, "wal"), "ledger.sqlite.journal": (JOURNAL_PAGE_SIZE, "wal")}
    assert JOURNAL_PAGE_SIZE == 65536


def test_a_sqlite_fold_has_a_temporary_cache_large_enough_for_its_slice(syncline_home, monkeypatch):
    """The fold's temporary table gets a 32 MiB page cache on every ledger connection (SQLite's default
    2 MB spilled every slice to a file under /var/tmp), inside a caller's transaction too; temporary
    storage stays SQLite's default, so a larger slice spills and sorts stay bounded."""
    from connectors.ledger import store

    seen: list[tuple[int, int]] = []
    apply = store.Ledger._apply_journal

    def watching_apply(self, cur, before, table):
        cur.execute("PRAGMA temp.cache_size")
        size = int(cur.fetchone()[0])
        cur.execute("PRAGMA temp_store")
        seen.append((size, int(cur.fetchone()[0])))
        return apply(self, cur, before, table)

    monkeypatch.setattr(store.Ledger, "_apply_journal", watching_apply)
    ledger = open_ledger(str(syncline_home / "ledger.sqlite"))
    journal = ledger.open_journal()
    _journal_claim(journal, "a0", ["a0-0", "a0-1"])
    assert ledger.fold() == 1
    _journal_claim(journal, "a1", ["a1-0"])
    with ledger.batch():
        assert ledger.fold() == 2
    assert seen == [(-store.FOLD_TEMP_CACHE_KIB, 0)] * 2 and store.FOLD_TEMP_CACHE_KIB == 32_768
    assert ledger.counts("s", destination=DEST)["in_doubt"] == 3
    journal.close()
    ledger.close()


def test_journal_rows_left_in_the_ledger_file_by_version_4_are_folded(syncline_home):
    """A run of the previous version killed mid-delivery left its journal inside the ledger file."""
    path = syncline_home / "ledger.sqlite"
    ledger = open_ledger(str(path))
    _journal_claim(ledger, "old", ["k1", "k2"])  # the ledger's own syncline_journal, as version 4 wrote it
    ledger.journal("delivered", DEST, "s", "ep", "r1", "old", json.dumps(["k1"]), 1)
    ledger.close()
    ledger = open_ledger(str(path))
    assert ledger.lookup(DEST, ["k1", "k2"]) == {"k1": ("delivered", "hash"), "k2": ("in_doubt", "hash")}
    (left,) = ledger._query("SELECT count(*) FROM main.syncline_journal")
    assert left[0] == 0
    ledger.close()


def test_a_sqlite_fold_that_fell_behind_catches_up_in_bounded_slices(syncline_home, monkeypatch):
    """A fold of a long journal reads it a slice at a time (each slice with its mark, in one transaction):
    a 10M-item run's last fold once held every row at once (1.2 GB). Deliveries whose claim fell in an
    earlier slice still mark their items."""
    from connectors.ledger import store

    monkeypatch.setattr(store, "FOLD_MAX_ITEMS", 120)
    read: list[int] = []  # the items of each slice, as the fold applies it
    apply = store.Ledger._apply_journal

    def counting_apply(self, cur, before, table):
        cur.execute(f"SELECT coalesce(sum(items), 0) FROM {table}")
        read.append(int(cur.fetchone()[0]))
        return apply(self, cur, before, table)

    monkeypatch.setattr(store.Ledger, "_apply_journal", counting_apply)
    ledger = open_ledger(str(syncline_home / "ledger.sqlite"))
    journal = ledger.open_journal()
    for g in range(10):
        keys = [f"g{g}-{i:02d}" for i in range(50)]
        _journal_claim(journal, f"c{g}", keys)
        journal.journal("delivered", DEST, "s", "ep", "r1", f"c{g}", json.dumps(keys[:30]), 30)
    for g in range(10):  # late answers: their claims sit slices earlier
        keys = [f"g{g}-{i:02d}" for i in range(30, 50)]
        journal.journal("delivered", DEST, "s", "ep", "r1", f"c{g}", json.dumps(keys), 20)
    journal.close()
    assert ledger.fold() > 0
    assert ledger.counts("s", destination=DEST) == {"delivered": 500, "rejected": 0, "in_doubt": 0, "failed": 0}
    assert len(read) >= 6 and max(read) <= 120, read
    assert sum(read) == 1000  # every row read once
    assert ledger.fold() == 0
    ledger.close()


def test_an_append_mode_snapshot_reads_delivered_items_as_keys_alone(ledger_url, tmp_path, monkeypatch):
    """Without delivered hashes (append mode never compares them) the bulk snapshot reads delivered items'
    keys only and writes their state itself; every other item keeps its state and hash, a vendor's refusal
    reads as ``refused``. Same rows, same schema as the full snapshot."""
    import pyarrow.parquet as pq

    from connectors.ledger import store

    ledger = open_ledger(ledger_url)
    ledger.write_items([item(f"k{i}", "delivered") for i in range(40)] + [item("f", "failed", reason="HTTP 503")]
                       + [item("r", "rejected", reason="bad", chunk_id="c1"), item("d", "in_doubt")])
    monkeypatch.setattr(store, "SMALL_SNAPSHOT", 10)
    full = pq.read_table(ledger.snapshot(DEST, "s", tmp_path / "full.parquet")).to_pylist()
    keys_only = pq.read_table(ledger.snapshot(DEST, "s", tmp_path / "keys.parquet", delivered_hashes=False))
    assert keys_only.column_names == ["idem_key", "state", "payload_hash"]
    rows = {r["idem_key"]: r for r in keys_only.to_pylist()}
    assert len(rows) == keys_only.num_rows == len(full) == 43
    assert {k: r["state"] for k, r in rows.items()} == {r["idem_key"]: r["state"] for r in full}
    assert rows["r"]["state"] == "refused" and rows["f"] == {"idem_key": "f", "state": "failed", "payload_hash": "hash"}
    assert rows["k7"]["state"] == "delivered"
    if ledger_url.endswith(".sqlite"):  # SQLite's child reads delivered keys alone; Postgres reads them whole
        assert rows["k7"]["payload_hash"] is None


def test_a_postgres_fold_agrees_with_itself_when_a_group_row_commits_while_it_runs(postgres_ledger_url, monkeypatch):
    """A group row committed by another connection between two statements of a fold (Postgres reads committed
    rows per statement) must not make one statement move the claim and another skip it: the fold reads the
    group rows once. Here the row lands right after the step that moves whole groups, so this fold keeps the
    claim item by item, and the items are there either way."""
    from connectors.ledger.store import PostgresLedger

    ledger = open_ledger(postgres_ledger_url)
    writer = ledger.open_journal()
    writer.journal("claim", DEST, "s", "ep", "r1", "c1", _claim_json("k1", "k2"), 2, state="in_doubt")
    writer.journal("delivered", DEST, "s", "ep", "r1", "c1", json.dumps(["k1", "k2"]), 2)
    real = PostgresLedger._apply_journal

    class LateGroupRow:
        """The fold's cursor; after its first statement writing groups, another run commits the group row."""

        def __init__(self, cur):
            self._cur, self._done = cur, False

        def execute(self, statement, params=()):
            result = self._cur.execute(statement, params)
            if "INSERT INTO syncline_groups" in statement and not self._done:
                self._done = True
                writer.journal("group", DEST, "s", "ep", "r1", "c1", json.dumps(["k1", "k2"]), 2)
            return result

        def __getattr__(self, name):
            return getattr(self._cur, name)

    monkeypatch.setattr(PostgresLedger, "_apply_journal",
                        lambda self, cur, upto, table: real(self, LateGroupRow(cur), upto, table))
    ledger.fold()
    monkeypatch.undo()
    assert ledger.counts("s") == {"delivered": 2, "rejected": 0, "in_doubt": 0, "failed": 0}
    assert ledger.lookup(DEST, ["k1", "k2"]) == {"k1": ("delivered", "hash"), "k2": ("delivered", "hash")}
    ledger.fold()  # the late group row meets no claim: nothing changes
    assert ledger.counts("s")["delivered"] == 2
    writer.close()
    ledger.close()


def _open_at_once(path: str, barrier, results) -> None:
    barrier.wait()
    try:
        open_ledger(path).close()
        results.put("ok")
    except Exception as exc:  # reported to the test, which names it
        results.put(f"{exc.__class__.__name__}: {exc}")


def test_runs_opening_a_new_sqlite_ledger_at_the_same_moment_all_get_it(tmp_path):
    """Switching a new file to WAL needs it alone, and SQLite says "database is locked" at once, without the
    busy timeout, to a process that loses that race (two CLI runs starting together on a new ledger failed
    so, about 1 open in 60 measured). Every process must get the ledger."""
    ctx = multiprocessing.get_context("fork")
    outcomes = []
    for attempt in range(20):
        barrier, results = ctx.Barrier(4), ctx.Queue()
        path = str(tmp_path / f"ledger-{attempt}.sqlite")
        workers = [ctx.Process(target=_open_at_once, args=(path, barrier, results)) for _ in range(4)]
        for worker in workers:
            worker.start()
        outcomes += [results.get(timeout=120) for _ in workers]
        for worker in workers:
            worker.join(timeout=60)
    assert [o for o in outcomes if o != "ok"] == []
