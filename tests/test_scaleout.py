"""Running like production: runs in parallel processes share one credential's rate limit, and a 7-day
backfill launched as 7 parallel runs delivers every item exactly once, on the SQLite and Postgres ledgers."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest

from connectors.ledger import open_ledger
from tests.test_pipelines import _materialize_in_child

ROOT = Path(__file__).resolve().parent.parent

TRACK = """
    CREATE TABLE analytics.clicks_{name} AS
    SELECT '{name}-' || i AS click_id, 'user_' || (i % 400) AS alias,
           'clicked_' || (i % 5) AS what, TIMESTAMPTZ '2026-06-01 00:00:00+00' + i * INTERVAL 1 SECOND AS ts
    FROM range({n}) t(i)
"""
TRACK_SYNC = """
    source: {{table: analytics.clicks_{name}, key: click_id, cursor: ts}}
    destination: {{vendor: screeb, endpoint: event}}
    delivery: {{backoff_base: 0.05, backoff_cap: 0.5}}
"""
TRACK_SQL = "SELECT _key, alias AS user_alias, 'track' AS type, what AS event_name FROM source"


@pytest.mark.slow
def test_two_runs_sharing_a_credential_stay_under_its_limit_together(sandbox_process, warehouse, write_sync):
    """Two CLI runs in separate processes, same Screeb token, same time: measured at a sandbox in its own
    process (in the test's process, other tests' threads could delay and bunch the arrivals it times)."""
    warehouse(TRACK.format(name="a", n=5000), TRACK.format(name="b", n=5000))
    write_sync("clicks_a", TRACK_SYNC.format(name="a"), TRACK_SQL, fast=False)
    write_sync("clicks_b", TRACK_SYNC.format(name="b"), TRACK_SQL, fast=False)
    env = {**os.environ, "SYNCLINE_SYNCS_DIR": str(write_sync.folder)}
    cli = [sys.executable, "-m", "pipelines.cli", "run"]
    runs = [subprocess.Popen([*cli, name], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for name in ("clicks_a", "clicks_b")]
    outputs = [run.communicate(timeout=120)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs

    stats = sandbox_process.stats()["screeb"]["event"]
    assert stats["requests"] == 100 and stats["items_accepted"] == 10_000, stats
    assert stats["rate_limited"] == 0  # no 429 from the documented 50 requests/s per token
    assert stats["max_in_window"] <= 50  # most requests seen in any 1 s window, both runs together
    assert stats["last_at"] - stats["first_at"] < 2 * 100 / 50
    # Both runs really overlapped in time (the limit was shared, not taken in turns by luck): each run's
    # requests, as its ledger recorded them, started before the other's ended.
    ledger = open_ledger()
    try:
        spans = {name: sorted(a["at"] for a in ledger.attempts(sync=name, limit=1000)) for name in ("clicks_a", "clicks_b")}
    finally:
        ledger.close()
    assert spans["clicks_a"][0] < spans["clicks_b"][-1] and spans["clicks_b"][0] < spans["clicks_a"][-1], spans


EVENTS = """
    CREATE TABLE analytics.events AS
    SELECT 'e' || lpad(i::VARCHAR, 5, '0') AS event_id, 'u' || i AS user_id, 'Signed up' AS event_name,
           TIMESTAMPTZ '2026-06-01 00:00:00+00' + i * INTERVAL 30 MINUTE AS occurred_at
    FROM range(48 * 7) t(i)
"""
SYNC = """
    source: {table: analytics.events, key: event_id, cursor: occurred_at}
    destination: {vendor: trubrics, endpoint: publish_events}
    partitions: {daily: {start: 2026-06-01}}
"""
SQL = "SELECT _key, user_id, event_name AS event, occurred_at AS timestamp FROM source"


@pytest.mark.slow
@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_seven_day_backfill_as_seven_parallel_runs_delivers_each_item_once(
    sandbox, warehouse, write_sync, request, monkeypatch, store
):
    if store == "postgres":
        monkeypatch.setenv("SYNCLINE_LEDGER_URL", request.getfixturevalue("postgres_ledger_url"))
    warehouse(EVENTS)
    spec = write_sync("ev", SYNC, SQL)
    env = {k: v for k, v in os.environ.items() if k.startswith(("SYNCLINE_", "TRUBRICS_"))}
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    days = [f"2026-06-0{d}" for d in range(1, 8)]
    children = [ctx.Process(target=_materialize_in_child, args=(str(spec.file), day, env, queue)) for day in days]
    for child in children:
        child.start()
    results = [queue.get(timeout=300) for _ in children]
    for child in children:
        child.join(timeout=60)
    assert all(ok for _, ok, _ in results), results

    received = [(r["user_id"], r["timestamp"]) for r in sandbox.records("trubrics", "publish_events")]
    assert len(received) == len(set(received)) == 48 * 7  # every item exactly once, counted at the sandbox
    assert open_ledger().counts("ev") == {"delivered": 48 * 7, "rejected": 0, "in_doubt": 0, "failed": 0}


OVERLAP_SYNC = """
    source: {table: analytics.events, key: event_id, cursor: occurred_at}
    destination: {vendor: trubrics, endpoint: publish_events}
    partitions: {daily: {start: 2026-06-01}}
    delivery: {concurrency: 1}
"""


@pytest.mark.slow
@pytest.mark.parametrize("store", ["sqlite", "postgres"])
def test_overlapping_backfills_at_the_same_time_send_each_item_once(
    sandbox, warehouse, write_sync, request, monkeypatch, store
):
    """Days 1-4 and days 3-6 of one sync, launched together in two processes: the later one waits for the
    overlapping days, then skips what the first delivered. Every item arrives exactly once."""
    import time

    from connectors.sandbox import Fault

    if store == "postgres":
        monkeypatch.setenv("SYNCLINE_LEDGER_URL", request.getfixturevalue("postgres_ledger_url"))
    warehouse(EVENTS)
    write_sync("overlap", OVERLAP_SYNC, SQL, fast=False)
    sandbox.set_fault("trubrics", "publish_events", Fault("slow", count=1000, delay=0.4))  # hold the window a while
    env = {**os.environ, "SYNCLINE_SYNCS_DIR": str(write_sync.folder)}
    cli = [sys.executable, "-m", "pipelines.cli", "run", "overlap"]
    first = subprocess.Popen([*cli, "--from", "2026-06-01", "--to", "2026-06-04"], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    second = subprocess.Popen([*cli, "--from", "2026-06-03", "--to", "2026-06-06"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outputs = [p.communicate(timeout=180) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outputs

    received = [(r["user_id"], r["timestamp"]) for r in sandbox.records("trubrics", "publish_events")]
    assert len(received) == len(set(received)) == 48 * 6  # days 1..6, each item once
    assert any("waiting for another run" in err for _, err in outputs)  # one of them really waited
    assert open_ledger().counts("overlap")["delivered"] == 48 * 6
