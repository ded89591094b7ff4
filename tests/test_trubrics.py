"""Trubrics over real HTTP against the sandbox: both endpoints, validation, 422 bisection, auth."""

from __future__ import annotations

import pytest

from connectors.errors import ConfigError
from connectors.ledger import open_ledger
from connectors.runner import run_sync
from connectors.sandbox import Fault

EVENTS = """
    CREATE TABLE analytics.events AS
    SELECT 'e' || lpad(i::VARCHAR, 4, '0') AS event_id,
           CASE WHEN i = 17 THEN NULL ELSE 'u' || (i % 7) END AS user_id,
           'Signed up' AS event_name,
           TIMESTAMPTZ '2026-06-01 00:00:00+00' + i * INTERVAL 10 MINUTE AS occurred_at,
           'thread_' || (i % 3) AS thread_id
    FROM range({n}) t(i)
"""
EVENTS_SYNC = """
    source: {table: analytics.events, key: event_id, cursor: occurred_at}
    destination: {vendor: trubrics, endpoint: publish_events}
"""
EVENTS_SQL = """
    SELECT _key, user_id, event_name AS event, occurred_at AS timestamp,
           {'$thread_id': thread_id} AS properties
    FROM source
"""


def test_publish_events_delivers_once_with_iso_offsets_and_thread_id(sandbox, warehouse, write_sync):
    warehouse(EVENTS.format(n=250))
    spec = write_sync("events", EVENTS_SYNC, EVENTS_SQL)

    run = run_sync(spec)

    received = sandbox.records("trubrics", "publish_events")
    assert run.delivered == 249 and run.rejected == 1
    assert len(received) == 249
    assert received[0]["timestamp"].endswith("+00:00")
    assert received[0]["properties"]["$thread_id"].startswith("thread_")
    stats = sandbox.stats()["trubrics"]["publish_events"]
    assert stats["max_items_per_request"] <= 100
    assert stats["requests"] == 3  # 100 + 100 + 49, never an empty array

    again = run_sync(spec)
    assert again.delivered == 0 and again.skipped == 249
    assert len(sandbox.records("trubrics", "publish_events")) == 249


def test_rejected_rows_are_recorded_with_reasons(sandbox, warehouse, write_sync):
    warehouse(EVENTS.format(n=30))
    spec = write_sync("events", EVENTS_SYNC, EVENTS_SQL)
    run_sync(spec)
    ledger = open_ledger()
    rejected = ledger.items("events", state="rejected")
    assert [r["source_key"] for r in rejected] == ["e0017"]
    assert rejected[0]["reason"] == "user_id is required"
    assert '"event":"Signed up"' in rejected[0]["excerpt"]


LLM_TABLE = """CREATE TABLE analytics.llm AS SELECT * FROM (VALUES
    ('a', 'u1', 'hi', 'hello', '1.5', TIMESTAMPTZ '2026-06-01 10:00:00+00'),
    ('b', 'u1', 'hi', NULL, '0.3', TIMESTAMPTZ '2026-06-01 10:01:00+00'),
    ('c', 'u2', 'hi', 'yo', 'fast', TIMESTAMPTZ '2026-06-01 10:02:00+00'),
    ('d', 'u2', 'hi', 'yo', '-1', TIMESTAMPTZ '2026-06-01 10:03:00+00')
) t(id, user_id, prompt, generation, latency, ts)"""
LLM_SYNC = """
    source: {table: analytics.llm, key: id, cursor: ts}
    destination: {vendor: trubrics, endpoint: publish_llm_events}
"""
LLM_SQL = (
    "SELECT _key, user_id, prompt, generation, latency, ts AS timestamp, {'$thread_id': 't1'} AS properties "
    "FROM source"
)


def test_llm_events_validate_types(sandbox, warehouse, write_sync):
    warehouse(LLM_TABLE)
    spec = write_sync("llm", LLM_SYNC, LLM_SQL)
    run = run_sync(spec)
    # generation is required and latency a number (doc); a negative latency is a number: delivered.
    assert run.delivered == 2 and run.rejected == 2
    reasons = dict(open_ledger().rejection_reasons("llm"))
    assert reasons == {"generation is required": 1, "latency must be a number, got fast": 1}
    received = sorted(sandbox.records("trubrics", "publish_llm_events"), key=lambda item: item["latency"])
    assert [item["latency"] for item in received] == [-1, 1.5]
    assert received[1]["properties"] == {"$thread_id": "t1"}


def test_choice_negative_latency_is_rejected_only_with_strict(sandbox, warehouse, write_sync):
    """A choice, not a documented rule: the document sets no minimum for latency (opt-in rule)."""
    warehouse(LLM_TABLE)
    spec = write_sync("llm", LLM_SYNC + "    strict: [latency_not_negative]\n", LLM_SQL)
    run = run_sync(spec)
    assert run.delivered == 1 and run.rejected == 3
    assert dict(open_ledger().rejection_reasons("llm"))[
        "latency must be at least 0 seconds, got -1 (rule latency_not_negative)"] == 1


def test_bisection_isolates_one_bad_item_in_a_batch_of_100(sandbox, warehouse, write_sync):
    warehouse(EVENTS.format(n=100).replace("CASE WHEN i = 17 THEN NULL ELSE 'u' || (i % 7) END", "'u' || i"))
    spec = write_sync("events", EVENTS_SYNC, EVENTS_SQL)
    # A server-side rule the client cannot know: any request containing user u42 is refused with 422.
    sandbox.set_fault("trubrics", "publish_events", Fault("reject_matching", count=1000, match='"u42"'))

    run = run_sync(spec)

    assert run.delivered == 99 and run.rejected == 1
    received = sandbox.records("trubrics", "publish_events")
    assert len(received) == 99
    assert len({r["user_id"] for r in received}) == 99  # each of the other 99 delivered exactly once
    (bad,) = open_ledger().items("events", state="rejected")
    assert bad["source_key"] == "e0042" and "422" in bad["reason"]


def test_auth_failure_stops_the_sync_and_marks_nothing_delivered(sandbox, warehouse, write_sync, monkeypatch):
    warehouse(EVENTS.format(n=50))
    spec = write_sync("events", EVENTS_SYNC, EVENTS_SQL)
    monkeypatch.setenv("TRUBRICS_API_KEY", "wrong-key-123")

    run = run_sync(spec)

    assert run.status == "stopped" and "HTTP 401" in (run.error or "")
    assert "wrong-key-123" not in (run.error or "")
    assert run.delivered == 0
    assert sandbox.stats()["trubrics"]["publish_events"]["requests"] == 1  # 401 is never retried
    counts = open_ledger().counts("events")
    assert counts["delivered"] == 0 and counts["failed"] == 49 and counts["rejected"] == 1


def test_unknown_model_column_is_a_config_error_naming_the_sql_file(sandbox, warehouse, write_sync):
    warehouse(EVENTS.format(n=5))
    spec = write_sync("events", EVENTS_SYNC, "SELECT _key, user_id, event_name AS evnt, occurred_at AS timestamp FROM source")
    with pytest.raises(ConfigError) as error:
        run_sync(spec)
    assert str(spec.model_file) in str(error.value)
    assert "evnt" in str(error.value)


def test_the_source_cursor_reaches_the_ledger_without_the_model_selecting_it(sandbox, warehouse, write_sync):
    import datetime as dt

    warehouse(EVENTS.format(n=200))  # one event every 10 minutes from 2026-06-01 00:00
    spec = write_sync("events", EVENTS_SYNC, EVENTS_SQL)
    run_sync(spec)
    ledger = open_ledger()
    day2 = dt.datetime(2026, 6, 2, tzinfo=dt.UTC)
    assert ledger.delivered_in_window("events", day2, day2 + dt.timedelta(days=1)) == 200 - 144
    assert ledger.delivered_in_window("events", None, None) == 199


def test_non_finite_numbers_are_rejected_not_sent_as_invalid_json(sandbox, warehouse, write_sync):
    warehouse(
        """CREATE TABLE analytics.llm AS SELECT * FROM (VALUES
            ('a', 'nan', 'NaN'::DOUBLE), ('b', '1e400', 1.0), ('c', '2.5', 'Infinity'::DOUBLE), ('d', '0.5', 1.5)
        ) t(id, latency_text, latency_double)"""
    )
    sync = """
        source: {table: analytics.llm, key: id}
        destination: {vendor: trubrics, endpoint: publish_llm_events}
    """
    as_text = write_sync("as_text", sync, "SELECT _key, 'u' AS user_id, 'p' AS prompt, 'g' AS generation, latency_text AS latency FROM source")
    as_double = write_sync("as_double", sync, "SELECT _key, 'u' AS user_id, 'p' AS prompt, 'g' AS generation, latency_double AS latency FROM source")
    assert run_sync(as_text).delivered == 2  # 'nan' and '1e400' (infinite) rejected
    assert run_sync(as_double).delivered == 2  # NaN and Infinity rejected
    reasons = dict(open_ledger().rejection_reasons("as_double"))
    assert reasons == {"latency must be a number, got nan": 1, "latency must be a number, got inf": 1}
    assert {r["latency"] for r in sandbox.records("trubrics", "publish_llm_events")} == {2.5, 0.5, 1.0, 1.5}
