"""Reliability rules of the engine over real HTTP: refused items stay refused, dead runs show as crashed and
lose their staging, a Flux run that died mid-request is settled by a read-back before anything is resent,
and a vendor that stays down or slow stops the sync within its bounds."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from connectors.ledger import open_ledger
from connectors.ledger.rows import NEVER_SENT
from connectors.operate import Filters, query_items
from connectors.runner import run_sync
from connectors.sandbox import Fault

REPO = Path(__file__).resolve().parent.parent
EVENTS = """
    CREATE OR REPLACE TABLE analytics.events AS
    SELECT 'e' || lpad(i::VARCHAR, 5, '0') AS event_id, 'u' || i AS user_id, 'Signed up' AS event_name,
           TIMESTAMPTZ '2026-06-01 00:00:00+00' + i * INTERVAL 1 MINUTE AS occurred_at, '{pad}' AS padding
    FROM range({n}) t(i)
"""
TRUBRICS = """
    source: {{table: analytics.events, key: event_id, cursor: occurred_at}}
    destination: {{vendor: trubrics, endpoint: publish_events}}
    delivery: {{backoff_base: 0.01, backoff_cap: 0.05{extra}}}
"""
TRUBRICS_SQL = "SELECT _key, user_id, event_name AS event, occurred_at AS timestamp, {'pad': padding} AS properties FROM source"
FLUX = """
    source: {table: analytics.events, key: event_id, cursor: occurred_at}
    destination: {vendor: flux, endpoint: events_batch}
    delivery: {backoff_base: 0.01, backoff_cap: 0.05, max_attempts: 2}
"""
FLUX_SQL = "SELECT _key, _cursor, event_name AS name, occurred_at AS timestamp, user_id FROM source"


@pytest.fixture(autouse=True, params=["sqlite", "postgres"])
def ledger_backend(request, monkeypatch):
    """Every rule holds on both ledgers: the default SQLite file and a real Postgres server."""
    if request.param == "postgres":
        monkeypatch.setenv("SYNCLINE_LEDGER_URL", request.getfixturevalue("postgres_ledger_url"))
    return request.param


RUN_SCRIPT = """
import sys
from connectors.spec import load_sync_file
from connectors.runner import run_sync
run_sync(load_sync_file(__import__('pathlib').Path(sys.argv[1])))
"""


def test_items_the_vendor_refused_are_not_resent_until_their_payload_changes(sandbox, warehouse, write_sync):
    warehouse(EVENTS.format(n=10, pad="a"))
    spec = write_sync("ev", TRUBRICS.format(extra=""), TRUBRICS_SQL)
    sandbox.set_fault("trubrics", "publish_events", Fault("reject_matching", count=1000, match='"u3"'))

    first = run_sync(spec)
    assert (first.delivered, first.rejected) == (9, 1)
    (refused,) = open_ledger().items("ev", state="rejected")
    assert refused["source_key"] == "e00003" and "server-side rule" in refused["reason"]
    sent = sandbox.stats()["trubrics"]["publish_events"]["requests"]

    sandbox.clear_faults()
    second = run_sync(spec)
    assert (second.delivered, second.rejected, second.skipped, second.requests) == (0, 1, 9, 0)
    assert "refused before were not sent again" in (second.notes or "")
    assert sandbox.stats()["trubrics"]["publish_events"]["requests"] == sent  # nothing went out

    warehouse("UPDATE analytics.events SET padding = 'b' WHERE event_id = 'e00003'")  # the row was fixed
    third = run_sync(spec)
    assert (third.delivered, third.rejected) == (1, 0)
    assert [r["user_id"] for r in sandbox.records("trubrics", "publish_events")].count("u3") == 1


def test_a_run_whose_process_died_shows_crashed_and_the_next_run_removes_its_staging(
    sandbox, warehouse, write_sync, syncline_home
):
    warehouse(EVENTS.format(n=300, pad="a"))
    spec = write_sync("ev", TRUBRICS.format(extra=", concurrency: 1"), TRUBRICS_SQL)
    env = {**os.environ, "SYNCLINE_CRASH_AFTER_CHUNKS": "1"}
    died = subprocess.run([sys.executable, "-c", RUN_SCRIPT, str(spec.file)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert died.returncode == 70, died.stderr
    staging = list((syncline_home / "staging" / "ev").iterdir())
    assert len(staging) == 1 and any(staging[0].iterdir())  # raw source rows left behind

    (run,) = open_ledger().runs("ev")
    assert run["status"] == "crashed" and "process died" in run["error"]
    assert run["host"] == socket.gethostname()

    rerun = run_sync(spec)
    assert rerun.status == "success" and rerun.delivered + rerun.skipped == 300
    assert not staging[0].exists()
    received = [r["user_id"] for r in sandbox.records("trubrics", "publish_events")]
    assert len(received) == len(set(received)) == 300


STAGE_AND_DIE = """
import os, sys
from connectors.spec import load_sync_file
from connectors.stage import Window, staging_path
folder = staging_path(load_sync_file(__import__('pathlib').Path(sys.argv[1])), Window(), 'killed-early')
(folder / 'extract.parquet').write_text('raw source rows')
os._exit(9)  # dies before the ledger has a run row that names the folder
"""


def test_staging_of_a_process_killed_before_its_run_was_recorded_is_removed_by_the_next_run(
    sandbox, warehouse, write_sync, syncline_home
):
    warehouse(EVENTS.format(n=20, pad="a"))
    spec = write_sync("ev", TRUBRICS.format(extra=""), TRUBRICS_SQL)
    died = subprocess.run([sys.executable, "-c", STAGE_AND_DIE, str(spec.file)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert died.returncode == 9, died.stderr
    (orphan,) = (syncline_home / "staging" / "ev").iterdir()
    assert open_ledger().runs("ev") == []  # nothing in the ledger knows of it
    from connectors.stage import Window, staging_path

    mine = staging_path(spec, Window(), "alive")  # a live process's folder (this one's) stays
    (mine / "extract.parquet").write_text("rows of a run still going")

    assert run_sync(spec).status == "success"
    assert not orphan.exists()
    assert (mine / "extract.parquet").exists()


def test_a_flux_batch_left_in_doubt_is_read_back_by_its_claim_tag_before_anything_is_resent(
    sandbox, warehouse, write_sync
):
    warehouse(EVENTS.format(n=40, pad="a"))
    spec = write_sync("usage", FLUX, FLUX_SQL)
    # Stored, then the answer is lost; and the read-back fails too, so the run cannot tell.
    sandbox.set_fault("flux", "events_batch", Fault("drop_after", count=1))
    sandbox.set_fault("flux", "query", Fault("500", count=1000))

    first = run_sync(spec)
    assert (first.delivered, first.in_doubt) == (0, 40)
    stored = sandbox.records("flux", "events_batch")
    assert len(stored) == 40 and all(e["tags"]["syncline_claim"].startswith("r") for e in stored)

    sandbox.clear_faults()
    second = run_sync(spec)
    assert (second.delivered, second.skipped, second.resent_unknown) == (0, 40, 0)
    assert len(sandbox.records("flux", "events_batch")) == 40  # nothing sent twice
    assert open_ledger().counts("usage")["delivered"] == 40


def test_a_vendor_that_is_down_stops_the_sync_after_the_breaker_and_nothing_is_lost(
    sandbox, warehouse, write_sync, monkeypatch
):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("TRUBRICS_BASE_URL", f"http://127.0.0.1:{port}")
    warehouse(EVENTS.format(n=2000, pad="a"))
    spec = write_sync("ev", TRUBRICS.format(extra=", concurrency: 2, adaptive: false, breaker_failures: 3"),
                      TRUBRICS_SQL)

    run = run_sync(spec)

    assert run.status == "stopped" and "requests in a row got no answer" in (run.error or "")
    assert run.delivered == 0 and run.failed == 2000  # every row accounted for, all safe to send later
    assert run.requests < 2000 // 100 * 6  # it did not try every request to exhaustion


def test_after_the_breaker_the_progress_line_counts_only_what_was_tried(
    sandbox, warehouse, write_sync, monkeypatch
):
    """Chunks planned but never sent after the stop are recorded failed "not sent"; the progress line
    must not call them sent (it said "2,000/2,000 sent" when 400 items had been tried)."""
    from connectors.progress import PlainProgress

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("TRUBRICS_BASE_URL", f"http://127.0.0.1:{port}")
    warehouse(EVENTS.format(n=2000, pad="a"))
    spec = write_sync("ev", TRUBRICS.format(
        extra=", concurrency: 2, adaptive: false, breaker_failures: 3, max_attempts: 2"),
        TRUBRICS_SQL)
    lines: list[str] = []

    run = run_sync(spec, progress=PlainProgress(lines.append))

    assert run.status == "stopped" and run.failed == 2000
    ledger = open_ledger()
    items = ledger.items("ev", limit=5000)
    assert any(str(i["reason"]).startswith("not sent") for i in items)  # some chunks never left
    tried = sum({a["chunk_id"]: a["items"] for a in ledger.attempts(run_id=run.run_id, limit=1000)}.values())
    assert 300 <= tried < 2000
    last = [line for line in lines if " sent in " in line][-1]
    assert last.startswith(f"ev: {tried:,}/2,000 sent in "), last
    assert f"{2000 - tried:,} left to send" in last, last
    # Items never tried show 0 attempts, not their claim group's (it showed the group's 2); the rest, 1-2
    # (a request stopped between its two attempts has 1).
    shown = query_items(ledger, "ev", Filters(limit=5000))
    never = [i for i in shown if str(i["reason"]).startswith(NEVER_SENT)]
    assert never and {i["attempts"] for i in never} == {0}
    assert {i["attempts"] for i in shown if i not in never} <= {1, 2}
    assert len(shown) - len(never) == tried


def test_requests_still_waiting_on_the_rate_limit_at_a_stop_show_no_attempts(sandbox, warehouse, write_sync):
    """Flux allows 10 batch requests a minute: at a 2 s deadline the chunks already handed to a sender but
    waiting for their slot never sent anything. They are recorded "never tried" (0 attempts in ``items``),
    not with their claim group's count, and the counts add up."""
    warehouse(EVENTS.format(n=3000, pad="a"))
    spec = write_sync("usage", FLUX.replace("max_attempts: 2}", "max_attempts: 2, concurrency: 4, deadline: 2}"),
                      FLUX_SQL)

    run = run_sync(spec)

    assert run.status == "stopped" and "deadline" in (run.error or "")
    assert run.delivered + run.rejected + run.in_doubt + run.failed == 3000
    ledger = open_ledger()
    shown = query_items(ledger, "usage", Filters(limit=5000))
    # No request failed here, so every item recorded "not sent" never had a request of its own.
    unsent = [i for i in shown if str(i["reason"]).startswith("not sent")]
    assert unsent and all(str(i["reason"]).startswith(NEVER_SENT) for i in unsent)
    assert {i["attempts"] for i in unsent} == {0}
    tried = sum({a["chunk_id"]: a["items"] for a in ledger.attempts(run_id=run.run_id, limit=1000)}.values())
    assert sum(1 for i in shown if i["attempts"] >= 1) == tried == run.delivered
    assert len(sandbox.records("flux", "events_batch")) == run.delivered


def test_a_deadline_stops_a_slow_run_and_leaves_the_rest_pending(sandbox, warehouse, write_sync):
    warehouse(EVENTS.format(n=500, pad="a"))
    spec = write_sync("ev", TRUBRICS.format(extra=", concurrency: 1, adaptive: false, deadline: 1"), TRUBRICS_SQL)
    sandbox.set_fault("trubrics", "publish_events", Fault("slow", count=1000, delay=0.4))

    run = run_sync(spec)

    assert run.status == "stopped" and "deadline" in (run.error or "")
    assert 0 < run.delivered < 500 and run.delivered + run.failed + run.in_doubt == 500
    received = [r["user_id"] for r in sandbox.records("trubrics", "publish_events")]
    assert len(received) == len(set(received)) == run.delivered  # each sent at most once
