"""The delivery engine over real HTTP: chunking, retries, Retry-After, in-doubt handling, crash recovery."""

from __future__ import annotations

import email.utils
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from connectors.engine.deliver import ChunkLimits, chunk_items
from connectors.engine.retry import Backoff, parse_retry_after
from connectors.engine.sender import Item
from connectors.ledger import open_ledger
from connectors.runner import run_sync
from connectors.sandbox import Fault

EVENTS = """
    CREATE TABLE analytics.events AS
    SELECT 'e' || lpad(i::VARCHAR, 5, '0') AS event_id, 'u' || i AS user_id, 'Signed up' AS event_name,
           TIMESTAMPTZ '2026-06-01 00:00:00+00' + i * INTERVAL 1 MINUTE AS occurred_at,
           repeat('x', {pad}) AS padding
    FROM range({n}) t(i)
"""
SYNC = """
    source: {{table: analytics.events, key: event_id, cursor: occurred_at}}
    destination: {{vendor: trubrics, endpoint: publish_events}}
    partitions: {{daily: {{start: 2026-06-01}}}}
    {extra}
"""
SQL = "SELECT _key, user_id, event_name AS event, occurred_at AS timestamp, {'pad': padding} AS properties FROM source"


def items(*sizes: int) -> list[Item]:
    return [Item(f"k{i}", f"s{i}", "h", b"x" * size) for i, size in enumerate(sizes)]


def test_chunking_by_item_count():
    chunks = list(chunk_items(iter(items(*[10] * 250)), ChunkLimits(max_items=100, max_body_bytes=10**6, envelope_bytes=2)))
    assert [len(c) for c in chunks] == [100, 100, 50]


def test_chunking_by_bytes_counts_envelope_and_separators():
    # Body = 2 (brackets) + 3*30 + 2 commas = 94 bytes fits 94; a 4th item would not.
    limits = ChunkLimits(max_items=100, max_body_bytes=94, envelope_bytes=2)
    chunks = list(chunk_items(iter(items(*[30] * 7)), limits))
    assert [len(c) for c in chunks] == [3, 3, 1]
    for chunk in chunks:
        body = b"[" + b",".join(i.payload for i in chunk) + b"]"
        assert len(body) <= 94


def test_chunking_never_yields_an_empty_chunk():
    assert list(chunk_items(iter([]), ChunkLimits(100, 1000, 2))) == []


def test_retry_after_parses_seconds_and_http_date():
    now = time.time()
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("0.5") == 0.5
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert 28 <= parse_retry_after(date, now=now) <= 31  # type: ignore[operator]
    assert parse_retry_after(email.utils.formatdate(now - 60, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_backoff_is_capped_exponential_with_jitter():
    backoff = Backoff(base=1.0, cap=8.0)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)]:
        delays = [backoff.delay(attempt) for _ in range(200)]
        assert max(delays) <= ceiling and min(delays) >= 0
        assert len(set(delays)) > 100  # jittered, not a fixed sleep


@pytest.mark.parametrize("mode", ["429", "429_date"])
def test_429_honours_retry_after_in_both_forms(sandbox, warehouse, write_sync, mode):
    warehouse(EVENTS.format(n=100, pad=1))  # one request: the retry is the only next request
    spec = write_sync("ev", SYNC.format(extra=""), SQL)
    # An HTTP-date has one-second resolution: 2 s ahead means a wait of at least ~1 s.
    sandbox.set_fault("trubrics", "publish_events", Fault(mode, count=1, retry_after=1.2 if mode == "429" else 2))

    started = time.monotonic()
    run = run_sync(spec)
    elapsed = time.monotonic() - started

    assert run.delivered == 100 and run.http_429 == 1 and run.retries == 1
    assert elapsed >= 0.8  # the whole credential paused for the Retry-After
    log = sandbox.emulator("trubrics").request_log["publish_events"]
    first_429_at, next_at = log[0]["at"], log[1]["at"]
    assert next_at - first_429_at >= (1.0 if mode == "429" else 0.8)
    assert len(sandbox.records("trubrics", "publish_events")) == 100


def test_5xx_backs_off_and_retries_then_delivers_once(sandbox, warehouse, write_sync):
    warehouse(EVENTS.format(n=100, pad=1))
    spec = write_sync("ev", SYNC.format(extra=""), SQL)
    sandbox.set_fault("trubrics", "publish_events", Fault("500", count=3))
    run = run_sync(spec)
    assert run.delivered == 100 and run.retries == 3
    statuses = [a["status"] for a in sorted(open_ledger().attempts(sync="ev"), key=lambda a: a["attempt"])]
    assert statuses == [500, 500, 500, 200]
    assert len(sandbox.records("trubrics", "publish_events")) == 100


def test_exhausted_5xx_leaves_items_in_doubt_and_a_rerun_resends_them(sandbox, warehouse, write_sync):
    warehouse(EVENTS.format(n=20, pad=1))
    spec = write_sync("ev", SYNC.format(extra="delivery: {max_attempts: 2, backoff_base: 0.01}"), SQL)
    sandbox.set_fault("trubrics", "publish_events", Fault("500", count=2))
    first = run_sync(spec)
    assert first.in_doubt == 20 and first.delivered == 0 and first.status == "partial"
    assert open_ledger().counts("ev")["in_doubt"] == 20
    second = run_sync(spec)  # default policy: at-least-once, resend in-doubt items
    assert second.delivered == 20
    assert open_ledger().counts("ev") == {"delivered": 20, "rejected": 0, "in_doubt": 0, "failed": 0}


def test_lost_response_is_in_doubt_and_hold_policy_does_not_resend(sandbox, warehouse, write_sync):
    warehouse(EVENTS.format(n=10, pad=1))
    spec = write_sync("ev", SYNC.format(extra="delivery: {max_attempts: 1, in_doubt: hold}"), SQL)
    sandbox.set_fault("trubrics", "publish_events", Fault("drop_after", count=1))
    first = run_sync(spec)
    assert first.in_doubt == 10
    assert len(sandbox.records("trubrics", "publish_events")) == 10  # it did land: the answer was lost
    second = run_sync(spec)
    assert second.in_doubt == 10 and second.delivered == 0
    assert len(sandbox.records("trubrics", "publish_events")) == 10  # held, not sent twice


def test_a_timeout_is_an_unknown_outcome_resent_by_the_next_run_and_counted(sandbox, warehouse, write_sync):
    """Trubrics cannot dedup: a timed-out request is not resent in the run (in_doubt); the next run resends
    it under the default at-least-once policy and counts it, and the count equals the extra copies."""
    warehouse(EVENTS.format(n=10, pad=1))
    spec = write_sync("ev", SYNC.format(extra="delivery: {timeout: 0.3, backoff_base: 0.01}"), SQL)
    sandbox.set_fault("trubrics", "publish_events", Fault("slow", count=1, delay=1.0))
    run = run_sync(spec)
    assert run.delivered == 0 and run.in_doubt == 10 and run.requests == 1 and run.status == "partial"
    errors = [a["error"] for a in open_ledger().attempts(sync="ev") if a["status"] is None]
    assert errors and "no answer within" in errors[0]
    # The slow request still lands after the client gave up.
    deadline = time.monotonic() + 5
    while len(sandbox.records("trubrics", "publish_events")) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    again = run_sync(spec)
    assert again.delivered == 10 and again.resent_unknown == 10 and again.status == "success"
    assert "may hold up to 10 duplicates" in (again.notes or "")
    extra = len(sandbox.records("trubrics", "publish_events")) - 10
    assert extra == again.resent_unknown
    assert {i["resent_unknown"] for i in open_ledger().items("ev")} == {1}


def test_unreachable_vendor_leaves_items_failed_not_in_doubt(warehouse, write_sync, monkeypatch):
    warehouse(EVENTS.format(n=5, pad=1))
    monkeypatch.setenv("TRUBRICS_BASE_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("TRUBRICS_API_KEY", "k")
    spec = write_sync("ev", SYNC.format(extra="delivery: {max_attempts: 2, backoff_base: 0.01}"), SQL)
    run = run_sync(spec)
    assert run.failed == 5 and run.in_doubt == 0
    assert "cannot connect" in open_ledger().items("ev", state="failed")[0]["reason"]


def test_oversized_item_is_rejected_before_sending(sandbox, warehouse, write_sync):
    warehouse(EVENTS.format(n=3, pad=5000))
    spec = write_sync("ev", SYNC.format(extra="delivery: {max_body_bytes: 4000}"), SQL)
    run = run_sync(spec)
    assert run.rejected == 3 and run.requests == 0
    assert "over the 3998-byte request limit" in open_ledger().items("ev", state="rejected")[0]["reason"]


def test_partition_window_selects_one_day(sandbox, warehouse, write_sync):
    import datetime as dt

    from connectors.stage import Window

    warehouse(EVENTS.format(n=3000, pad=1))  # one event a minute: 1440 a day
    spec = write_sync("ev", SYNC.format(extra=""), SQL)
    run = run_sync(spec, Window.days(dt.date(2026, 6, 2), dt.date(2026, 6, 2)))
    assert run.source_rows == 1440 and run.delivered == 1440 and run.span == "2026-06-02"


CRASH_SCRIPT = """
import sys
from connectors.spec import load_sync_file
from connectors.runner import run_sync
run_sync(load_sync_file(__import__('pathlib').Path(sys.argv[1])))
"""


def test_crash_between_chunks_then_rerun_delivers_every_item_exactly_once(sandbox, warehouse, write_sync):
    warehouse(EVENTS.format(n=1000, pad=1))
    spec = write_sync("ev", SYNC.format(extra="delivery: {concurrency: 1}"), SQL)
    env = {**os.environ, "SYNCLINE_CRASH_AFTER_CHUNKS": "4"}
    crashed = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(spec.file)], env=env, cwd=Path(__file__).parent.parent,
                             capture_output=True, text=True, timeout=120)
    assert crashed.returncode == 70, crashed.stderr
    assert len(sandbox.records("trubrics", "publish_events")) == 400
    assert open_ledger().counts("ev")["delivered"] == 400

    rerun = run_sync(spec)

    assert rerun.skipped == 400 and rerun.delivered == 600
    received = [r["user_id"] for r in sandbox.records("trubrics", "publish_events")]
    assert len(received) == 1000 and len(set(received)) == 1000  # every item exactly once, counted at the sandbox


def test_a_key_with_a_trailing_newline_is_cleaned_and_never_leaks(sandbox, warehouse, write_sync, monkeypatch):
    from connectors.errors import SynclineError
    from connectors.sandbox.emulators.trubrics import TrubricsEmulator

    warehouse(EVENTS.format(n=10, pad=1))
    spec = write_sync("ev", SYNC.format(extra=""), SQL)
    monkeypatch.setenv("TRUBRICS_API_KEY", TrubricsEmulator.keys["api_key"] + "\n")  # as mounted secrets often are
    assert run_sync(spec).delivered == 10
    monkeypatch.setenv("TRUBRICS_API_KEY", "sk_live_secret\x07value")
    with pytest.raises(SynclineError) as error:
        run_sync(spec)
    assert "TRUBRICS_API_KEY contains a control character" in str(error.value)
    assert "sk_live_secret" not in str(error.value)


def test_a_vendor_echoing_the_key_never_gets_it_into_the_ledger(sandbox, warehouse, write_sync):
    warehouse(EVENTS.format(n=3, pad=1))
    spec = write_sync("ev", SYNC.format(extra=""), SQL)
    emulator = sandbox.emulator("trubrics")
    key = emulator.keys["api_key"]
    original = emulator.validation_error
    # The key straddles the 200-character excerpt: redaction must come before truncation.
    emulator.validation_error = lambda endpoint, message: original(endpoint, "x" * 145 + f" key={key} refused")  # type: ignore[method-assign]
    sandbox.set_fault("trubrics", "publish_events", Fault("reject_matching", count=100, match="u0"))
    try:
        run_sync(spec)
    finally:
        emulator.validation_error = original  # type: ignore[method-assign]
    ledger = open_ledger()
    texts = [str(r) for r in ledger.items("ev", limit=100)] + [str(a) for a in ledger.attempts(sync="ev", limit=100)]
    texts += [str(r) for r in ledger.runs("ev")]
    assert not any(key[:8] in t for t in texts)
    assert any("[redacted]" in t for t in texts)


def test_an_unexpected_error_in_a_vendor_hook_leaves_items_in_doubt_not_a_crash(sandbox, warehouse, write_sync, monkeypatch):
    from connectors.vendors.trubrics import TrubricsEndpoint

    warehouse(EVENTS.format(n=250, pad=1))
    spec = write_sync("ev", SYNC.format(extra=""), SQL)

    def broken_parse(self, response, items):
        raise KeyError("status")  # e.g. a vendor answer of an unexpected shape

    monkeypatch.setattr(TrubricsEndpoint, "parse", broken_parse)
    run = run_sync(spec)
    assert run.status == "partial" and run.in_doubt == 250 and run.delivered == 0
    assert run.source_rows == run.delivered + run.rejected + run.skipped + run.in_doubt + run.failed
    (reason,) = {r["reason"] for r in open_ledger().items("ev", state="in_doubt")}
    assert reason.startswith("unexpected KeyError")
    assert "unexpected KeyError" in (run.notes or "")


def test_duplicate_keys_the_newest_row_wins_and_ties_are_sent_once(sandbox, warehouse, write_sync):
    """The dedup pass is narrow (keys and cursors only); the newest row by cursor is delivered, older ones are
    rejected with a reason, and rows tied on the newest cursor are sent once, the others counted skipped."""
    warehouse("""CREATE TABLE analytics.ev AS SELECT * FROM (VALUES
        ('k1', 'old', TIMESTAMPTZ '2026-06-01 00:00:00+00'),
        ('k1', 'new', TIMESTAMPTZ '2026-06-02 00:00:00+00'),
        ('k2', 'same', TIMESTAMPTZ '2026-06-01 00:00:00+00'),
        ('k2', 'same', TIMESTAMPTZ '2026-06-01 00:00:00+00'),
        ('k3', 'only', TIMESTAMPTZ '2026-06-01 00:00:00+00')) AS t(id, u, ts)""")
    spec = write_sync("ev", """
        source: {table: analytics.ev, key: id, cursor: ts}
        destination: {vendor: trubrics, endpoint: publish_events}
    """, "SELECT _key, _cursor, u AS user_id, 'Ping' AS event, ts AS timestamp FROM source")
    run = run_sync(spec)
    received = sorted(r["user_id"] for r in sandbox.records("trubrics", "publish_events"))
    assert received == ["new", "only", "same"]
    assert (run.delivered, run.rejected, run.skipped) == (3, 1, 1)
    assert run.source_rows == run.delivered + run.rejected + run.skipped
    (reason,) = [r["reason"] for r in open_ledger().items("ev", state="rejected")]
    assert "duplicate source key k1" in reason


def test_a_rerun_renders_none_of_the_rows_the_destination_has(sandbox, warehouse, write_sync):
    """Skipping happens before Python and before rendering: the ledger's snapshot of this destination is
    anti-joined with the model in DuckDB, so a delivered sync's rerun renders no payload at all."""
    from connectors.ledger import open_ledger
    from connectors.runner import SyncPipeline

    warehouse(EVENTS.format(n=300, pad=1))
    spec = write_sync("ev", SYNC.format(extra=""), SQL)
    assert run_sync(spec).delivered == 300
    warehouse("INSERT INTO analytics.events SELECT 'new' || i, 'u' || i, 'Signed up', TIMESTAMPTZ '2026-06-02 00:00:00+00', "
              "'x' FROM range(7) t(i)")
    ledger = open_ledger()
    with SyncPipeline(spec) as pipeline:
        run = pipeline.deliver(ledger=ledger)
        assert pipeline.counts.rendered == 7  # only the new rows were rendered at all
    assert (run.source_rows, run.skipped, run.delivered) == (307, 300, 7)
    assert len(sandbox.records("trubrics", "publish_events")) == 307


def test_answers_hands_back_finished_requests_in_the_order_they_finish():
    """The delivery loop's wait for answers (``Answers``): each request finished is handed back once, in
    the order it finished, with every other already finished, and leaves the in-flight set; one finished
    before it was watched counts too."""
    import threading
    from concurrent.futures import Future, ThreadPoolExecutor

    from connectors.engine.deliver import Answers

    answers = Answers()
    in_flight: set[Future] = set()
    gates = [threading.Event() for _ in range(3)]
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(gates[i].wait, 10) for i in range(3)]
        for future in futures:
            answers.watch(future, in_flight)
        gates[2].set()
        assert answers.take(in_flight) == [futures[2]]
        assert in_flight == {futures[0], futures[1]}
        gates[0].set()
        gates[1].set()
        futures[0].result(10)
        futures[1].result(10)
        taken = answers.take(in_flight)
        assert sorted(taken, key=futures.index) == futures[:2] and not in_flight
        done: Future = Future()
        done.set_result("x")
        answers.watch(done, in_flight)
        assert answers.take(in_flight) == [done] and not in_flight
