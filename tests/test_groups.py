"""Claim groups delivered whole are kept as one ledger row (``syncline_groups``), and read as items.

A group becomes one row only when every item in it is new at the destination (the run's snapshot had
none), the sync is in append mode and every request was accepted whole. Everything else keeps per-item
rows. Every reader (counts, items, lookups, windows, `syncline items`, snapshots) sees the group's items
as delivered items. Both ledgers: the default SQLite file and a real Postgres server.
"""

from __future__ import annotations

import datetime as dt

import pytest

from connectors.ledger import open_ledger, store
from connectors.operate import Filters, query_items
from connectors.runner import run_sync
from connectors.sandbox import Fault

EVENTS = """
    CREATE TABLE analytics.events AS
    SELECT 'e' || lpad(i::VARCHAR, 5, '0') AS event_id, 'u' || i AS user_id, 'Signed up' AS event_name,
           TIMESTAMPTZ '2026-06-01 00:00:00+00' + i * INTERVAL 1 MINUTE AS occurred_at
    FROM range({n}) t(i)
"""
SYNC = """
    source: {{table: analytics.events, key: event_id, cursor: occurred_at}}
    destination: {{vendor: trubrics, endpoint: publish_events}}
    {extra}
"""
SQL = "SELECT _key, user_id, event_name AS event, occurred_at AS timestamp FROM source"
N = 5_000  # claim groups of 2,000: two whole ones and one of 1,000


@pytest.fixture(autouse=True, params=["sqlite", "postgres"])
def ledger_backend(request, monkeypatch, syncline_home):
    if request.param == "postgres":
        monkeypatch.setenv("SYNCLINE_LEDGER_URL", request.getfixturevalue("postgres_ledger_url"))
    return request.param


def _groups(ledger, sync: str) -> tuple[int, int]:
    (row,) = ledger._query("SELECT count(*), coalesce(sum(items), 0) FROM syncline_groups WHERE sync = ?", (sync,))
    return int(row[0]), int(row[1])


def _item_rows(ledger, sync: str) -> int:
    (row,) = ledger._query("SELECT count(*) FROM syncline_items WHERE sync = ?", (sync,))
    return int(row[0])


def test_groups_delivered_whole_are_one_row_each_and_every_reader_sees_their_items(
        sandbox, warehouse, write_sync, monkeypatch):
    warehouse(EVENTS.format(n=N))
    spec = write_sync("ev", SYNC.format(extra=""), SQL)
    run = run_sync(spec)
    assert run.delivered == N and run.status == "success"

    ledger = open_ledger()
    assert _groups(ledger, "ev") == (3, N)
    assert _item_rows(ledger, "ev") == 0
    assert ledger.counts("ev") == {"delivered": N, "rejected": 0, "in_doubt": 0, "failed": 0}
    assert ledger.has_items("ev", run.destination) and not ledger.has_items("other")

    newest = ledger.items("ev", state="delivered", limit=7)
    assert len(newest) == 7
    assert {i["state"] for i in newest} == {"delivered"} and {i["run_id"] for i in newest} == {run.run_id}
    keys = [i["idem_key"] for i in newest]
    looked_up = ledger.lookup(run.destination, keys)
    assert looked_up == {i["idem_key"]: ("delivered", i["payload_hash"]) for i in newest}
    assert all(len(i["payload_hash"]) == 32 for i in newest)

    # One event a minute from 2026-06-01: 1,440 on 2026-06-02, counted item by item in groups spanning days.
    day = dt.datetime(2026, 6, 2, tzinfo=dt.UTC)
    received = sandbox.records("trubrics", "publish_events")
    on_day = sum(1 for r in received if r["timestamp"].startswith("2026-06-02"))
    assert on_day == 1440
    assert ledger.delivered_in_window("ev", day, day + dt.timedelta(days=1), destination=run.destination) == 1440
    assert ledger.delivered_in_window("ev", None, None) == N

    found = query_items(ledger, "ev", Filters(keys=("e00042",)))
    assert [(i["source_key"], i["state"], i["run_id"]) for i in found] == [("e00042", "delivered", run.run_id)]
    assert query_items(ledger, "ev", Filters(states=("rejected",))) == []
    newest_three = query_items(ledger, "ev", Filters(limit=3))  # only the newest group is unnested
    assert len(newest_three) == 3 and {i["state"] for i in newest_three} == {"delivered"}
    assert len(query_items(ledger, "ev", Filters(since=dt.date(2000, 1, 1)))) == N
    assert query_items(ledger, "ev", Filters(until=dt.date(2000, 1, 1))) == []
    ledger.close()

    # The rerun reads the groups through the bulk snapshot (the export child for SQLite) and sends nothing.
    monkeypatch.setattr(store, "SMALL_SNAPSHOT", 10)
    rerun = run_sync(spec)
    assert (rerun.skipped, rerun.delivered, rerun.requests) == (N, 0, 0)
    assert len(sandbox.records("trubrics", "publish_events")) == N


def test_a_group_with_an_unanswered_request_is_kept_item_by_item_and_counts_add_up(sandbox, warehouse, write_sync):
    warehouse(EVENTS.format(n=N))
    spec = write_sync("ev", SYNC.format(extra="delivery: {max_attempts: 1, concurrency: 1, adaptive: false}"), SQL)
    sandbox.set_fault("trubrics", "publish_events", Fault("500", count=1))  # the first request: outcome unknown
    first = run_sync(spec)
    assert (first.delivered, first.in_doubt) == (N - 100, 100)

    ledger = open_ledger()
    assert _groups(ledger, "ev") == (2, 3_000)  # the first group (2,000 items) is kept item by item
    assert _item_rows(ledger, "ev") == 2_000
    assert ledger.counts("ev") == {"delivered": N - 100, "rejected": 0, "in_doubt": 100, "failed": 0}

    second = run_sync(spec)  # resends the 100: they were known, so they stay item rows
    assert (second.delivered, second.skipped) == (100, N - 100)
    assert _groups(ledger, "ev") == (2, 3_000)
    assert ledger.counts("ev") == {"delivered": N, "rejected": 0, "in_doubt": 0, "failed": 0}
    ledger.close()


def test_a_sync_switched_to_mirror_mode_turns_its_groups_into_item_rows(sandbox, warehouse, write_sync):
    path = warehouse(EVENTS.format(n=N))
    spec = write_sync("ev", SYNC.format(extra=""), SQL)
    assert run_sync(spec).delivered == N
    ledger = open_ledger()
    assert _groups(ledger, "ev") == (3, N)

    import duckdb

    con = duckdb.connect(str(path))
    con.execute("UPDATE analytics.events SET user_id = 'changed' WHERE event_id = 'e00007'")
    con.close()
    mirror = write_sync("ev", SYNC.format(extra="mode: mirror"), SQL)
    run = run_sync(mirror)
    # The groups kept each item's payload hash: only the changed row is sent again.
    assert run.delivered == 1 and run.skipped == N - 1
    assert _groups(ledger, "ev") == (0, 0)
    assert _item_rows(ledger, "ev") == N
    assert ledger.counts("ev") == {"delivered": N, "rejected": 0, "in_doubt": 0, "failed": 0}
    ledger.close()
