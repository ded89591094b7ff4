"""Run windows (--partition/--from/--to), rows with a NULL cursor, the newest row of a repeated key, and one
reason per field: resolved and delivered for real (DuckDB warehouse, sandbox over HTTP)."""

from __future__ import annotations

import datetime as dt

import pytest

from connectors.errors import SynclineError
from connectors.ledger import open_ledger
from connectors.runner import SyncPipeline, run_sync
from connectors.stage import NULL_CURSOR_LOCK, Window, extract_window, staging_path
from connectors.window import resolve_window
from pipelines.cli import main

D = dt.date
START = D(2026, 1, 1)
TODAY = D(2026, 6, 10)

EVENTS = """
    CREATE TABLE analytics.events AS SELECT * FROM (VALUES
        ('e1', 'u1', 'Signed up', TIMESTAMPTZ '2026-06-01 10:00:00+00'),
        ('e2', 'u2', 'Signed up', TIMESTAMPTZ '2026-06-02 10:00:00+00'),
        ('e3', 'u3', 'Signed up', NULL),
        ('e4', 'u4', 'Signed up', NULL)
    ) t(event_id, user_id, event_name, occurred_at)
"""
SYNC = """
    source: {{table: analytics.events, key: event_id, cursor: occurred_at{extra}}}
    destination: {{vendor: trubrics, endpoint: publish_events}}
    partitions: {{daily: {{start: 2026-01-01}}}}
"""
SQL = "SELECT _key, user_id, event_name AS event, coalesce(occurred_at, TIMESTAMPTZ '2026-06-05 00:00:00+00') AS timestamp FROM source"


@pytest.fixture
def spec(write_sync):
    return write_sync("ev", SYNC.format(extra=""), SQL)


# --- resolving the window ------------------------------------------------------------------------------
def test_from_alone_runs_to_today_and_to_alone_from_the_start(spec):
    window, warnings = resolve_window(spec, from_day=D(2026, 6, 1), today=TODAY)
    assert window == Window.days(D(2026, 6, 1), TODAY) and warnings == []
    window, warnings = resolve_window(spec, to_day=D(2026, 2, 1), today=TODAY)
    assert window == Window.days(START, D(2026, 2, 1)) and warnings == []
    assert resolve_window(spec, partition=D(2026, 6, 2)) == (Window.days(D(2026, 6, 2), D(2026, 6, 2)), [])
    assert resolve_window(spec) == (Window(), [])


def test_to_before_from_and_other_misuse_are_clear_errors(spec, write_sync):
    with pytest.raises(SynclineError, match=r"--to 2026-06-01 is before --from 2026-06-03"):
        resolve_window(spec, from_day=D(2026, 6, 3), to_day=D(2026, 6, 1))
    with pytest.raises(SynclineError, match=r"--from 2026-07-01 is after today \(2026-06-10\)"):
        resolve_window(spec, from_day=D(2026, 7, 1), today=TODAY)
    with pytest.raises(SynclineError, match=r"--to 2025-12-01 is before the sync's start 2026-01-01"):
        resolve_window(spec, to_day=D(2025, 12, 1))
    with pytest.raises(SynclineError, match="--partition is one day"):
        resolve_window(spec, partition=D(2026, 6, 2), to_day=D(2026, 6, 3))
    with pytest.raises(SynclineError, match="is not a date"):
        resolve_window(spec, partition="10000-01-01")
    flat = write_sync("flat", "source: {table: analytics.events, key: event_id}\n"
                              "destination: {vendor: trubrics, endpoint: publish_events}\n", SQL)
    with pytest.raises(SynclineError, match="has no daily partitions"):
        resolve_window(flat, partition=D(2026, 6, 2))
    assert resolve_window(flat) == (Window(), [])


def test_windows_before_the_start_warn_and_the_ends_of_the_calendar_resolve(spec):
    window, warnings = resolve_window(spec, partition=D(2025, 12, 31))
    assert warnings == ["2025-12-31 is before the sync's start 2026-01-01: it has no rows"]
    assert window.label == "2025-12-31"
    _, warnings = resolve_window(spec, from_day=D(2025, 12, 30), to_day=D(2026, 1, 2))
    assert warnings == ["2025-12-30..2026-01-02 starts before the sync's start 2026-01-01: the days before it have no rows"]

    last, warnings = resolve_window(spec, partition=D.max)
    assert warnings == [] and last.label == "9999-12-31" and last.day_labels() == ["9999-12-31"]
    assert last.start == dt.datetime(9999, 12, 31, tzinfo=dt.UTC) and last.end is not None
    span, _ = resolve_window(spec, from_day=D(9999, 12, 30), to_day=D.max)
    assert span.day_labels() == ["9999-12-30", "9999-12-31"] and span.label == "9999-12-30..9999-12-31"
    first, warnings = resolve_window(spec, partition=D.min)
    assert first.label == "0001-01-01" and warnings == ["0001-01-01 is before the sync's start 2026-01-01: it has no rows"]
    everything, _ = resolve_window(spec, from_day=D.min, to_day=D.max)
    assert everything.day_labels() is not None and len(everything.day_labels() or []) == (D.max - D.min).days + 1


@pytest.mark.parametrize("day", ["9999-12-31", "0001-01-01"])
def test_runs_at_the_ends_of_the_calendar_deliver_nothing_without_a_traceback(sandbox, warehouse, write_sync, monkeypatch, capsys, day):
    warehouse(EVENTS)
    write_sync("ev", SYNC.format(extra=""), SQL)
    monkeypatch.setenv("SYNCLINE_SYNCS_DIR", str(write_sync.folder))
    assert main(["run", "ev", "--partition", day]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert sandbox.records("trubrics", "publish_events") == []


# --- rows with a NULL cursor ---------------------------------------------------------------------------
def test_a_windowed_run_counts_the_rows_with_no_cursor_and_leaves_them_out(sandbox, warehouse, spec):
    warehouse(EVENTS)
    window = Window.days(D(2026, 6, 1), D(2026, 6, 2))
    staged = extract_window(spec, window, staging_path(spec, window, "t1"))
    assert (staged.rows, staged.null_cursor_rows, staged.null_cursor_included) == (2, 2, False)
    assert staged.note(spec) == "2 rows have no occurred_at: run without a window, or set `null_cursor: include`"
    assert window.lock_labels(spec) == ["2026-06-01", "2026-06-02"]

    run = run_sync(spec, window)
    assert run.delivered == 2
    assert sorted(r["user_id"] for r in sandbox.records("trubrics", "publish_events")) == ["u1", "u2"]
    whole = run_sync(spec)  # no window: every row, NULL cursors too
    assert whole.delivered == 2 and whole.skipped == 2
    unwindowed = extract_window(spec, Window(), staging_path(spec, Window(), "t2"))
    assert unwindowed.null_cursor_rows is None and unwindowed.note(spec) is None


def test_null_cursor_include_puts_them_in_every_window_once(sandbox, warehouse, write_sync):
    warehouse(EVENTS)
    spec = write_sync("ev", SYNC.format(extra=", null_cursor: include"), SQL)
    assert spec.source.null_cursor == "include"
    june_1 = Window.days(D(2026, 6, 1), D(2026, 6, 1))
    assert june_1.lock_labels(spec) == ["2026-06-01", NULL_CURSOR_LOCK]
    staged = extract_window(spec, june_1, staging_path(spec, june_1, "t1"))
    assert (staged.rows, staged.null_cursor_rows) == (3, 2)
    assert staged.note(spec) == "2 rows have no occurred_at: included in this window (null_cursor: include)"

    first = run_sync(spec, june_1)
    assert first.delivered == 3
    second = run_sync(spec, Window.days(D(2026, 6, 2), D(2026, 6, 2)))
    assert second.delivered == 1 and second.skipped == 2  # the NULL-cursor rows went once
    assert sorted(r["user_id"] for r in sandbox.records("trubrics", "publish_events")) == ["u1", "u2", "u3", "u4"]


# --- a key repeated within one run: the newest row by the sync's cursor wins -----------------------------
REPEATS = """
    CREATE TABLE analytics.events AS SELECT * FROM (VALUES
        ('a', 'old', TIMESTAMPTZ '2026-06-01 08:00:00+00'),
        ('a', 'new', TIMESTAMPTZ '2026-06-01 12:00:00+00'),
        ('a', 'mid', TIMESTAMPTZ '2026-06-01 10:00:00+00'),
        ('b', 'only', TIMESTAMPTZ '2026-06-01 09:00:00+00'),
        ('c', 'nocursor', NULL),
        ('c', 'dated', TIMESTAMPTZ '2026-06-01 07:00:00+00')
    ) t(event_id, user_id, occurred_at)
"""


@pytest.mark.parametrize(
    "model",
    [
        "SELECT _key, user_id, 'Seen' AS event, TIMESTAMPTZ '2026-06-01 00:00:00+00' AS timestamp FROM source",
        "SELECT _key, _cursor, user_id, 'Seen' AS event, TIMESTAMPTZ '2026-06-01 00:00:00+00' AS timestamp FROM source",
    ],
    ids=["model-without-_cursor", "model-with-_cursor"],
)
def test_a_repeated_key_delivers_its_newest_row_by_the_sync_cursor(sandbox, warehouse, write_sync, model):
    warehouse(REPEATS)
    spec = write_sync("rep", "source: {table: analytics.events, key: event_id, cursor: occurred_at}\n"
                             "destination: {vendor: trubrics, endpoint: publish_events}\n", model)

    run = run_sync(spec)

    assert (run.source_rows, run.delivered, run.rejected) == (6, 3, 3)
    assert sorted(r["user_id"] for r in sandbox.records("trubrics", "publish_events")) == ["dated", "new", "only"]
    ledger = open_ledger()
    delivered = {r["source_key"]: r["cursor"] for r in ledger.items("rep", state="delivered")}
    assert delivered == {"a": "2026-06-01T12:00:00.000000Z", "b": "2026-06-01T09:00:00.000000Z",
                         "c": "2026-06-01T07:00:00.000000Z"}
    reasons = [r["reason"] for r in ledger.items("rep", state="rejected")]
    assert reasons and all(reason.startswith("duplicate source key ") for reason in reasons)
    assert run_sync(spec).delivered == 0


def test_a_model_that_aggregates_without_repeated_keys_keeps_one_pass(sandbox, warehouse, write_sync):
    warehouse(EVENTS)
    spec = write_sync("agg", "source: {table: analytics.events, key: event_id, cursor: occurred_at}\n"
                             "destination: {vendor: trubrics, endpoint: publish_events}\n",
                      "SELECT _key, user_id, 'Seen ' || count(*) OVER () AS event, "
                      "TIMESTAMPTZ '2026-06-01 00:00:00+00' AS timestamp FROM source")
    with SyncPipeline(spec) as pipeline:
        rows = pipeline.preview(10)
    assert len(rows) == 4 and all('"event":"Seen 4"' in r["payload"] for r in rows)


# --- one reason per field ------------------------------------------------------------------------------
def test_a_bad_value_of_a_required_field_gets_one_reason_not_two(sandbox, warehouse, write_sync):
    warehouse("""CREATE TABLE analytics.events AS SELECT * FROM (VALUES
        ('k1', 'u1', 'yesterday', '2026-06-01 10:00:00+00'),
        ('k2', 'u2', NULL,        '2026-06-01 10:00:00+00'),
        ('k3', NULL, 'yesterday', '2026-06-01 10:00:00+00'),
        ('k4', 'u4', '2026-06-01T10:00:00+00:00', '2026-06-01 10:00:00+00')
    ) t(event_id, user_id, ts, occurred_at)""")
    spec = write_sync("one", "source: {table: analytics.events, key: event_id, cursor: occurred_at}\n"
                             "destination: {vendor: trubrics, endpoint: publish_events}\n",
                      "SELECT _key, user_id, 'Seen' AS event, ts AS timestamp FROM source")
    run = run_sync(spec)
    assert (run.delivered, run.rejected) == (1, 3)
    reasons = {r["source_key"]: r["reason"] for r in open_ledger().items("one", state="rejected")}
    iso = "timestamp must be an ISO 8601 timestamp with an offset (e.g. 2026-06-20T12:00:00+00:00), got yesterday"
    assert reasons == {"k1": iso, "k2": "timestamp is required", "k3": f"user_id is required; {iso}"}
