"""A richer model (issue 10, item 7), end to end over real HTTP to the sandbox:

- the model joins other warehouse tables and views besides ``source`` (a DuckDB warehouse is attached
  read-only; a Postgres warehouse's tables are declared in ``source.lookups`` and staged once per run),
  and may use CTEs;
- a model may emit several items per source row (a fan-out), each with its own ``_key``, the ledger keyed
  per item, the source cursor carried by ``_source_key``;
- a cursor may be a timestamp, a date, or an epoch number with ``source.cursor_unit``; daily windows
  select epoch cursors by numeric bounds, in DuckDB and in Postgres.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from connectors.check import check_model
from connectors.errors import ConfigError, SynclineError
from connectors.ledger import Ledger, open_ledger
from connectors.runner import SyncPipeline, run_sync
from connectors.spec import SyncFileError
from connectors.stage import Window, duckdb_cursor, extract_window, parquet_cursor_days, staging_path
from tests.conftest import POSTGRES_URL

D = dt.date
DAY = Window.days(D(2026, 6, 1), D(2026, 6, 1))
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
MIDNIGHT_MS = int((dt.datetime(2026, 6, 1, tzinfo=dt.UTC) - EPOCH).total_seconds()) * 1000  # 2026-06-01 00:00 UTC
NEXT_MS = MIDNIGHT_MS + 86_400_000
TS = "TIMESTAMPTZ '2026-06-01 10:00:00+00'"


def records(sandbox):
    return sandbox.records("trubrics", "publish_events")


@contextmanager
def ledger() -> Iterator[Ledger]:
    """The test's ledger, closed afterwards (try/finally)."""
    found = open_ledger()
    try:
        yield found
    finally:
        found.close()


def delivered_items(sync: str) -> dict[str, str | None]:
    with ledger() as found:
        return {r["source_key"]: r["cursor"] for r in found.items(sync, state="delivered", limit=10_000)}


def delivered_in_window(sync: str, window: Window) -> int:
    with ledger() as found:
        return found.delivered_in_window(sync, window.start, window.end)


# --- joining other warehouse tables: DuckDB -------------------------------------------------------------
PEOPLE = [
    """CREATE TABLE analytics.events AS SELECT * FROM (VALUES
        ('e1', 'u1', 'Signed up', TIMESTAMPTZ '2026-06-01 10:00:00+00'),
        ('e2', 'u2', 'Signed up', TIMESTAMPTZ '2026-06-01 11:00:00+00'),
        ('e3', 'u3', 'Signed up', TIMESTAMPTZ '2026-06-01 12:00:00+00')
    ) t(event_id, user_id, event_name, occurred_at)""",
    "CREATE TABLE analytics.plans AS SELECT * FROM (VALUES ('u1', 'pro'), ('u2', 'free')) t(user_id, plan)",
    "CREATE VIEW analytics.paying AS SELECT user_id FROM analytics.plans WHERE plan <> 'free'",
    "CREATE TABLE main.regions AS SELECT * FROM (VALUES ('u1', 'eu'), ('u3', 'us')) t(user_id, region)",
]
EVENTS_SYNC = """
    source: {{table: analytics.events, key: event_id, cursor: occurred_at{extra}}}
    destination: {{vendor: trubrics, endpoint: publish_events}}
"""
JOIN_SQL = """
    SELECT s._key, s.user_id, s.event_name AS event, s.occurred_at AS timestamp,
           {'plan': p.plan, 'region': r.region, 'paying': s.user_id IN (SELECT user_id FROM analytics.paying)} AS properties
    FROM source AS s
    LEFT JOIN analytics.plans AS p USING (user_id)
    LEFT JOIN regions AS r USING (user_id)
"""


def _properties(sandbox) -> dict[str, dict]:
    return {r["user_id"]: r.get("properties", {}) for r in records(sandbox)}


def test_a_model_joins_warehouse_tables_and_views_of_a_duckdb_warehouse(sandbox, warehouse, write_sync):
    warehouse(*PEOPLE)
    spec = write_sync("joined", EVENTS_SYNC.format(extra=""), JOIN_SQL)
    assert check_model(spec) is None

    run = run_sync(spec)

    assert (run.status, run.delivered, run.rejected) == ("success", 3, 0)
    assert _properties(sandbox) == {
        "u1": {"plan": "pro", "region": "eu", "paying": True},
        "u2": {"plan": "free", "paying": False},
        "u3": {"region": "us", "paying": False},
    }


def test_source_still_means_the_window_even_when_the_warehouse_has_a_table_named_source(sandbox, warehouse, write_sync):
    warehouse(*PEOPLE, "CREATE TABLE main.source AS SELECT 'x' AS event_id")
    spec = write_sync("shadow", EVENTS_SYNC.format(extra="") + "    partitions: {daily: {start: 2026-06-01}}\n",
                      "SELECT _key, user_id, 'n=' || count(*) OVER () AS event, occurred_at AS timestamp FROM source")
    run = run_sync(spec, DAY)
    assert run.delivered == 3 and {r["event"] for r in records(sandbox)} == {"n=3"}


def test_declared_lookups_of_a_duckdb_warehouse_are_checked_and_a_parquet_source_may_join_them(
    sandbox, warehouse, write_sync, syncline_home
):
    warehouse(*PEOPLE)
    declared = write_sync("declared", EVENTS_SYNC.format(extra=", lookups: [analytics.plans, analytics.paying, regions]"),
                          JOIN_SQL)
    assert declared.source.lookups == ("analytics.plans", "analytics.paying", "regions")
    assert run_sync(declared).delivered == 3

    missing = write_sync("missing", EVENTS_SYNC.format(extra=", lookups: [analytics.nope]"), JOIN_SQL)
    with pytest.raises(ConfigError) as error:
        run_sync(missing)
    assert error.value.field == "source.lookups" and "analytics.nope is not a table or view" in str(error.value)

    landing = syncline_home / "landing"
    landing.mkdir()
    pq.write_table(pa.table({"event_id": ["p1"], "user_id": ["u1"], "event_name": ["Paid"],
                             "occurred_at": pa.array([dt.datetime(2026, 6, 1, 9, tzinfo=dt.UTC)])}), landing / "a.parquet")
    sandbox.reset()
    files = write_sync("files", f"""
        source: {{parquet: "{landing}/*.parquet", key: event_id, cursor: occurred_at, lookups: [analytics.plans, analytics.paying, regions]}}
        destination: {{vendor: trubrics, endpoint: publish_events}}
    """, JOIN_SQL)
    assert check_model(files) is None
    assert run_sync(files).delivered == 1
    assert _properties(sandbox) == {"u1": {"plan": "pro", "region": "eu", "paying": True}}

    undeclared = write_sync("undeclared", f"""
        source: {{parquet: "{landing}/*.parquet", key: event_id, cursor: occurred_at}}
        destination: {{vendor: trubrics, endpoint: publish_events}}
    """, JOIN_SQL)
    with pytest.raises(ConfigError, match="sees the DuckDB warehouse when the sync lists source.lookups"):
        run_sync(undeclared)


def test_lookup_names_are_checked_when_the_file_loads(write_sync):
    for lookups, message in [("[source]", "source is the extracted window"), ("['a.b.c']", "a table or view name"),
                             ("[x.plans, X.PLANS]", "listed twice")]:
        with pytest.raises(SyncFileError) as error:
            write_sync("bad", EVENTS_SYNC.format(extra=f", lookups: {lookups}"), JOIN_SQL)
        assert error.value.field == "source.lookups" and message in str(error.value)


# --- CTEs --------------------------------------------------------------------------------------------------
CTE_SQL = """
    WITH enriched AS (
        SELECT s.*, p.plan FROM source AS s LEFT JOIN analytics.plans AS p USING (user_id)
    ),
    labelled AS (SELECT *, coalesce(plan, 'none') AS label FROM enriched)
    SELECT _key, user_id, event_name || ' (' || label || ')' AS event, occurred_at AS timestamp FROM labelled
"""


def test_a_model_with_ctes_runs_also_when_a_repeated_key_makes_it_run_twice(sandbox, warehouse, write_sync):
    warehouse(*PEOPLE, """INSERT INTO analytics.events VALUES
        ('e1', 'u1', 'Upgraded', TIMESTAMPTZ '2026-06-01 18:00:00+00')""")  # e1 again, newer
    spec = write_sync("cte", EVENTS_SYNC.format(extra=""), CTE_SQL)
    assert check_model(spec) is None

    run = run_sync(spec)

    assert (run.delivered, run.rejected) == (3, 1)  # the older e1 is a duplicate of the newer one
    assert sorted(r["event"] for r in records(sandbox)) == [
        "Signed up (free)", "Signed up (none)", "Upgraded (pro)"]
    assert delivered_items("cte")["e1"] == "2026-06-01T18:00:00.000000Z"
    assert run_sync(spec).delivered == 0


# --- fan-out: several items per source row -------------------------------------------------------------------
FAN_OUT_SQL = """
    SELECT s._key || ':' || k.kind AS _key, s._key AS _source_key, s.user_id,
           s.event_name || ' ' || k.kind AS event, s.occurred_at AS timestamp
    FROM source AS s CROSS JOIN (VALUES ('viewed'), ('clicked'), ('converted')) AS k(kind)
"""


def test_a_fan_out_model_delivers_three_items_per_row_once_each_keyed_per_item(sandbox, warehouse, write_sync):
    warehouse(PEOPLE[0])
    spec = write_sync("fan", EVENTS_SYNC.format(extra="") + "    partitions: {daily: {start: 2026-06-01}}\n", FAN_OUT_SQL)
    assert check_model(spec) is None

    with SyncPipeline(spec, DAY) as pipeline, ledger() as store:
        run = pipeline.deliver(ledger=store)
        assert (pipeline.counts.extracted, pipeline.counts.items) == (3, 9)

    assert (run.status, run.source_rows, run.delivered, run.rejected, run.skipped) == ("success", 9, 9, 0, 0)
    assert run.notes == "the model made 9 items from 3 source rows (counts are items)"
    assert len(records(sandbox)) == 9
    items = delivered_items("fan")
    assert len(items) == 9 and {k.split(":")[0] for k in items} == {"e1", "e2", "e3"}
    # each item carries its source row's cursor: the ledger places it in its window
    assert items["e2:clicked"] == "2026-06-01T11:00:00.000000Z" and None not in items.values()
    assert delivered_in_window("fan", DAY) == 9

    again = run_sync(spec, DAY)
    assert (again.delivered, again.skipped, again.rejected) == (0, 9, 0)
    assert len(records(sandbox)) == 9


def test_a_rerun_renders_only_what_the_destination_lacks_and_rejects_keyless_rows_again(
        sandbox, warehouse, write_sync, monkeypatch):
    """Reruns through the bulk snapshot (SQLite: a child process, written while the source is extracted):
    new rows are sent, delivered ones are left out before rendering, a row without a key is rejected on
    every run, and with nothing left to send the payload query runs over nothing."""
    from connectors.ledger import store

    monkeypatch.setattr(store, "SMALL_SNAPSHOT", 1)
    warehouse(f"""CREATE TABLE analytics.events AS SELECT * FROM (VALUES
        ('e1', 'u1', 'Signed up', {TS}), ('e2', 'u2', 'Signed up', {TS}), (NULL, 'u9', 'Signed up', {TS})
    ) t(event_id, user_id, event_name, occurred_at)""")
    spec = write_sync("rerun", EVENTS_SYNC.format(extra=""),
                      "SELECT _key, user_id, event_name AS event, occurred_at AS timestamp FROM source")
    first = run_sync(spec)
    assert (first.delivered, first.rejected, first.skipped) == (2, 1, 0)

    warehouse(f"INSERT INTO analytics.events VALUES ('e3', 'u3', 'Signed up', {TS})")
    again = run_sync(spec)
    assert (again.source_rows, again.delivered, again.skipped, again.rejected) == (4, 1, 2, 1)
    with ledger() as found:
        assert "the source key is NULL" in found.rejection_reasons("rerun")[0][0]

    warehouse("DELETE FROM analytics.events WHERE event_id IS NULL")
    third = run_sync(spec)
    assert (third.status, third.source_rows, third.delivered, third.skipped, third.rejected) == ("success", 3, 0, 3, 0)
    assert sorted(r["user_id"] for r in records(sandbox)) == ["u1", "u2", "u3"]


def test_a_fan_out_of_a_repeated_source_key_keeps_the_newest_rows_items(sandbox, warehouse, write_sync):
    warehouse(PEOPLE[0], "INSERT INTO analytics.events VALUES ('e1', 'u1', 'Upgraded', TIMESTAMPTZ '2026-06-01 18:00:00+00')")
    spec = write_sync("fan2", EVENTS_SYNC.format(extra=""), FAN_OUT_SQL)

    run = run_sync(spec)

    assert (run.delivered, run.rejected) == (9, 3)  # the older e1's three items are duplicates
    assert {r["event"] for r in records(sandbox) if r["user_id"] == "u1"} == {
        "Upgraded viewed", "Upgraded clicked", "Upgraded converted"}
    with ledger() as found:
        reasons = [r["reason"] for r in found.items("fan2", state="rejected")]
    assert len(reasons) == 3 and all(r.startswith("duplicate source key e1:") for r in reasons)


def test_a_fan_out_model_that_selects_its_own_cursor_needs_no_source_key(sandbox, warehouse, write_sync):
    warehouse(PEOPLE[0])
    spec = write_sync("fan3", EVENTS_SYNC.format(extra=""), FAN_OUT_SQL.replace(
        "s._key AS _source_key", "s.occurred_at AS _cursor"))
    run = run_sync(spec)
    assert run.delivered == 9 and None not in delivered_items("fan3").values()


def test_a_fan_out_without_source_key_is_delivered_and_the_run_says_its_items_have_no_cursor(sandbox, warehouse, write_sync):
    """A choice: the items are sent (their keys are fine), and the run notes what the ledger lacks."""
    warehouse(PEOPLE[0])
    spec = write_sync("fan4", EVENTS_SYNC.format(extra=""), FAN_OUT_SQL.replace("s._key AS _source_key, ", ""))
    run = run_sync(spec)
    assert run.delivered == 9
    assert "9 items have no occurred_at: their _key is not a source key; select the source row's key as _source_key" in (
        run.notes or "")


# --- epoch cursors: DuckDB -----------------------------------------------------------------------------
# Rows at the edges of 2026-06-01 (UTC) in milliseconds: the first and last millisecond are in the day,
# the millisecond before and the next midnight are not; NULL and a value past year 9999 have no day.
EDGES = [
    ("before", MIDNIGHT_MS - 1),
    ("first", MIDNIGHT_MS),
    ("noon", MIDNIGHT_MS + 43_200_000),
    ("last", NEXT_MS - 1),
    ("next", NEXT_MS),
    ("none", None),
    ("far", 253_402_300_800_000),  # 10000-01-01: no UTC day syncline handles
]
EPOCH_SQL = "SELECT _key, 'u-' || _key AS user_id, 'Seen' AS event, _cursor AS timestamp FROM source"


def _epoch_sync(write_sync, name: str, table: str, extra: str = "", unit: str = "ms"):
    unit_part = f", cursor_unit: {unit}" if unit else ""
    return write_sync(name, f"""
        source: {{table: {table}, key: id, cursor: created_ms{unit_part}{extra}}}
        destination: {{vendor: trubrics, endpoint: publish_events}}
        partitions: {{daily: {{start: 2026-05-01}}}}
    """, EPOCH_SQL)


def _edges_values() -> str:
    return ", ".join(f"('{k}', {'NULL' if v is None else v}::BIGINT)" for k, v in EDGES)


def test_an_epoch_ms_cursor_selects_exactly_the_rows_of_each_day_in_duckdb(sandbox, warehouse, write_sync):
    warehouse(f"CREATE TABLE analytics.clicks AS SELECT * FROM (VALUES {_edges_values()}) t(id, created_ms)")
    spec = _epoch_sync(write_sync, "clicks", "analytics.clicks")
    assert spec.source.cursor_unit == "ms"

    staged = extract_window(spec, DAY, staging_path(spec, DAY, "t1"))
    assert (staged.rows, staged.null_cursor_rows) == (3, 2)  # NULL and the year-10000 value have no day
    assert staged.note(spec) == ("2 rows have no created_ms (NULL, or not a time in ms): run without a window, "
                                 "or set `null_cursor: include`")
    run = run_sync(spec, DAY)
    assert run.delivered == 3
    assert delivered_items("clicks") == {"first": "2026-06-01T00:00:00.000000Z", "noon": "2026-06-01T12:00:00.000000Z",
                                         "last": "2026-06-01T23:59:59.999000Z"}
    assert sorted(r["timestamp"] for r in records(sandbox))[-1].startswith("2026-06-01T23:59:59.999")

    assert run_sync(spec, Window.days(D(2026, 5, 31), D(2026, 6, 2))).delivered == 2  # before, next
    assert delivered_in_window("clicks", DAY) == 3


def test_the_window_filter_on_an_epoch_cursor_is_numeric_bounds_of_the_column(warehouse, write_sync):
    """Sargable: the column is compared with numbers, not converted row by row."""
    path = warehouse(f"CREATE TABLE analytics.clicks AS SELECT * FROM (VALUES {_edges_values()}) t(id, created_ms)")
    import duckdb

    con = duckdb.connect(str(path), read_only=True)
    try:
        for unit, bounds in (("s", [MIDNIGHT_MS // 1000, NEXT_MS // 1000]), ("ms", [MIDNIGHT_MS, NEXT_MS]),
                             ("us", [MIDNIGHT_MS * 1000, NEXT_MS * 1000])):
            spec = _epoch_sync(write_sync, f"c_{unit}", "analytics.clicks", unit=unit)
            cursor = duckdb_cursor(spec, con, "SELECT * FROM analytics.clicks", DAY)
            assert cursor is not None
            where, params = cursor.window_filter(spec, DAY)
            assert where == ' WHERE "created_ms" >= ? AND "created_ms" < ?'
            assert params == bounds
            assert cursor.window_filter(spec, DAY, "$")[0] == ' WHERE "created_ms" >= $1 AND "created_ms" < $2'
    finally:
        con.close()


@pytest.mark.parametrize("unit, per_ms", [("s", None), ("us", 1000)])
def test_epoch_seconds_and_microseconds_select_the_same_day(sandbox, warehouse, write_sync, unit, per_ms):
    if unit == "s":  # whole seconds: the last second of the day is in it, the next midnight is not
        values = [("first", MIDNIGHT_MS // 1000), ("last", NEXT_MS // 1000 - 1), ("next", NEXT_MS // 1000)]
    else:
        assert per_ms is not None
        values = [("first", MIDNIGHT_MS * per_ms), ("last", NEXT_MS * per_ms - 1), ("next", NEXT_MS * per_ms)]
    rows = ", ".join(f"('{k}', {v}::BIGINT)" for k, v in values)
    warehouse(f"CREATE TABLE analytics.clicks AS SELECT * FROM (VALUES {rows}) t(id, created_ms)")
    spec = _epoch_sync(write_sync, f"clicks_{unit}", "analytics.clicks", unit=unit)
    assert run_sync(spec, DAY).delivered == 2
    last = "2026-06-01T23:59:59.000000Z" if unit == "s" else "2026-06-01T23:59:59.999999Z"
    assert delivered_items(f"clicks_{unit}") == {"first": "2026-06-01T00:00:00.000000Z", "last": last}


def test_null_cursor_include_puts_an_epoch_rows_without_a_time_in_the_window(sandbox, warehouse, write_sync):
    warehouse(f"CREATE TABLE analytics.clicks AS SELECT * FROM (VALUES {_edges_values()}) t(id, created_ms)")
    spec = _epoch_sync(write_sync, "inc", "analytics.clicks", extra=", null_cursor: include")
    staged = extract_window(spec, DAY, staging_path(spec, DAY, "t1"))
    assert (staged.rows, staged.null_cursor_rows) == (5, 2)


def test_a_date_cursor_selects_its_days_to_the_end_of_the_calendar(sandbox, warehouse, write_sync):
    warehouse("""CREATE TABLE analytics.daily AS SELECT * FROM (VALUES
        ('a', DATE '2026-05-31'), ('b', DATE '2026-06-01'), ('c', DATE '2026-06-02'), ('z', DATE '9999-12-31')
    ) t(id, day)""")
    spec = write_sync("daily", """
        source: {table: analytics.daily, key: id, cursor: day}
        destination: {vendor: trubrics, endpoint: publish_events}
        partitions: {daily: {start: 2026-01-01}}
    """, "SELECT _key, 'u' AS user_id, 'Day' AS event, TIMESTAMPTZ '2026-06-01 00:00:00+00' AS timestamp FROM source")
    assert run_sync(spec, DAY).delivered == 1
    assert delivered_items("daily") == {"b": "2026-06-01T00:00:00.000000Z"}
    assert extract_window(spec, Window.days(D(9999, 12, 31), D.max), staging_path(spec, DAY, "t2")).rows == 1


def test_a_bigint_cursor_without_a_unit_is_a_config_error_naming_the_file_and_field(sandbox, warehouse, write_sync):
    warehouse(f"CREATE TABLE analytics.clicks AS SELECT * FROM (VALUES {_edges_values()}) t(id, created_ms)")
    spec = _epoch_sync(write_sync, "nounit", "analytics.clicks", unit="")
    with pytest.raises(ConfigError) as error:
        run_sync(spec, DAY)
    assert error.value.field == "source.cursor_unit" and error.value.file == str(spec.file)
    assert "created_ms is BIGINT, a number: declare its epoch unit, e.g. `cursor_unit: ms`" in str(error.value)
    problem = check_model(spec)
    assert problem is not None and "source.cursor_unit" in problem
    assert records(sandbox) == []


def test_a_unit_on_a_timestamp_cursor_or_without_a_cursor_is_a_config_error(sandbox, warehouse, write_sync):
    warehouse(*PEOPLE)
    spec = write_sync("unit", EVENTS_SYNC.format(extra=", cursor_unit: ms"), JOIN_SQL)
    with pytest.raises(ConfigError, match="occurred_at is TIMESTAMP WITH TIME ZONE, not an epoch number"):
        run_sync(spec)
    with pytest.raises(SyncFileError) as error:
        write_sync("nocursor", "source: {table: analytics.events, key: event_id, cursor_unit: ms}\n"
                               "destination: {vendor: trubrics, endpoint: publish_events}\n", JOIN_SQL)
    assert error.value.field == "source.cursor_unit"
    with pytest.raises(SyncFileError, match="source.cursor_unit: must be 's', 'ms' or 'us'"):
        write_sync("badunit", EVENTS_SYNC.format(extra=", cursor_unit: ns"), JOIN_SQL)


def test_an_integer_cursor_on_a_sync_without_days_is_still_an_ordering_cursor(sandbox, warehouse, write_sync):
    """A choice: a version or sequence number orders a repeated key's rows without being a time."""
    warehouse("CREATE TABLE analytics.v AS SELECT * FROM (VALUES ('a', 'old', 1), ('a', 'new', 2)) t(id, user_id, version)")
    spec = write_sync("versions", "source: {table: analytics.v, key: id, cursor: version}\n"
                                  "destination: {vendor: trubrics, endpoint: publish_events}\n",
                      f"SELECT _key, user_id, 'Seen' AS event, {TS} AS timestamp FROM source")
    run = run_sync(spec)
    assert (run.delivered, run.rejected) == (1, 1) and records(sandbox)[0]["user_id"] == "new"


def test_the_sensor_reads_the_days_of_an_epoch_cursor_in_new_parquet_files(write_sync, syncline_home):
    landing = syncline_home / "landing"
    landing.mkdir()
    pq.write_table(pa.table({"id": ["a", "b"], "created_ms": pa.array([MIDNIGHT_MS - 1, NEXT_MS], pa.int64())}),
                   landing / "a.parquet")
    spec = write_sync("landed", f"""
        source: {{parquet: "{landing}/*.parquet", key: id, cursor: created_ms, cursor_unit: ms}}
        destination: {{vendor: trubrics, endpoint: publish_events}}
        partitions: {{daily: {{start: 2026-05-01}}}}
    """, EPOCH_SQL)
    assert parquet_cursor_days(spec, [str(landing / "a.parquet")]) == (D(2026, 5, 31), D(2026, 6, 2))
    from pipelines.sensors import _day_range

    assert _day_range(spec, [str(landing / "a.parquet")]) == ("2026-05-31", "2026-06-02")


# --- Postgres warehouse: lookups, epoch cursors -----------------------------------------------------------
@pytest.fixture
def pg(monkeypatch) -> Iterator[str]:
    """A fresh schema on the real PostgreSQL server, as the sync's warehouse (never skipped)."""
    schema = f"model_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as con:
        con.execute(f"CREATE SCHEMA {schema}")
    monkeypatch.setenv("SYNCLINE_WAREHOUSE_URL", POSTGRES_URL)
    yield schema
    with psycopg.connect(POSTGRES_URL, autocommit=True) as con:
        con.execute(f"DROP SCHEMA {schema} CASCADE")


def pg_run(*statements: str) -> None:
    with psycopg.connect(POSTGRES_URL, autocommit=True) as con:
        for statement in statements:
            con.execute(statement)


def test_a_postgres_model_joins_the_tables_it_declares_in_lookups(sandbox, write_sync, pg):
    pg_run(f"""CREATE TABLE {pg}.events AS SELECT * FROM (VALUES
                 ('e1', 'u1', 'Signed up', timestamptz '2026-06-01 10:00:00+00'),
                 ('e2', 'u2', 'Signed up', timestamptz '2026-06-01 11:00:00+00'),
                 ('e3', 'u3', 'Signed up', timestamptz '2026-06-01 12:00:00+00')) t(event_id, user_id, event_name, occurred_at)""",
           f"CREATE TABLE {pg}.plans AS SELECT * FROM (VALUES ('u1', 'pro'), ('u2', 'free')) t(user_id, plan)",
           f"CREATE VIEW {pg}.paying AS SELECT user_id FROM {pg}.plans WHERE plan <> 'free'")
    model = f"""
        WITH enriched AS (SELECT s.*, p.plan FROM source AS s LEFT JOIN {pg}.plans AS p USING (user_id))
        SELECT _key, user_id, event_name AS event, occurred_at AS timestamp,
               {{'plan': plan, 'paying': user_id IN (SELECT user_id FROM {pg}.paying)}} AS properties
        FROM enriched
    """
    spec = write_sync("pg_join", f"""
        source: {{table: {pg}.events, key: event_id, cursor: occurred_at, warehouse: postgres,
                  lookups: [{pg}.plans, {pg}.paying]}}
        destination: {{vendor: trubrics, endpoint: publish_events}}
    """, model)
    assert check_model(spec) is None

    run = run_sync(spec)

    assert (run.status, run.delivered) == ("success", 3)
    assert _properties(sandbox) == {"u1": {"plan": "pro", "paying": True}, "u2": {"plan": "free", "paying": False},
                                    "u3": {"paying": False}}

    undeclared = write_sync("pg_undeclared", f"""
        source: {{table: {pg}.events, key: event_id, cursor: occurred_at, warehouse: postgres, lookups: [{pg}.plans]}}
        destination: {{vendor: trubrics, endpoint: publish_events}}
    """, model)
    with pytest.raises(ConfigError, match="a Postgres table the model joins must be listed in source.lookups"):
        run_sync(undeclared)
    missing = write_sync("pg_missing", f"""
        source: {{table: {pg}.events, key: event_id, warehouse: postgres, lookups: [{pg}.nope]}}
        destination: {{vendor: trubrics, endpoint: publish_events}}
    """, "SELECT _key, user_id, 'x' AS event, occurred_at AS timestamp FROM source")
    with pytest.raises(ConfigError, match="reading from Postgres failed"):
        run_sync(missing)


def test_an_epoch_ms_cursor_selects_exactly_the_rows_of_each_day_in_postgres(sandbox, write_sync, pg):
    values = ", ".join(f"('{k}', {'NULL' if v is None else v}::bigint)" for k, v in EDGES)
    pg_run(f"CREATE TABLE {pg}.clicks AS SELECT * FROM (VALUES {values}) t(id, created_ms)",
           f"CREATE INDEX ON {pg}.clicks (created_ms)")
    spec = _epoch_sync(write_sync, "pg_clicks", f"{pg}.clicks", extra=", warehouse: postgres")

    staged = extract_window(spec, DAY, staging_path(spec, DAY, "t1"))
    assert (staged.rows, staged.null_cursor_rows) == (3, 2)
    run = run_sync(spec, DAY)
    assert run.delivered == 3
    assert delivered_items("pg_clicks") == {"first": "2026-06-01T00:00:00.000000Z", "noon": "2026-06-01T12:00:00.000000Z",
                                            "last": "2026-06-01T23:59:59.999000Z"}
    assert run_sync(spec, Window.days(D(2026, 5, 31), D(2026, 6, 2))).delivered == 2

    # the pushed-down filter compares the column with numbers: Postgres can use the index on it
    with psycopg.connect(POSTGRES_URL) as con:
        con.execute("SET enable_seqscan = off")
        plan = con.execute(f"EXPLAIN SELECT * FROM {pg}.clicks WHERE created_ms >= {MIDNIGHT_MS} "
                           f"AND created_ms < {NEXT_MS}").fetchall()
    assert any("Index" in line[0] for line in plan)

    nounit = _epoch_sync(write_sync, "pg_nounit", f"{pg}.clicks", extra=", warehouse: postgres", unit="")
    with pytest.raises(ConfigError) as error:
        run_sync(nounit, DAY)
    assert error.value.field == "source.cursor_unit" and "created_ms is int8, a number" in str(error.value)


def test_a_postgres_date_cursor_and_a_fan_out_model(sandbox, write_sync, pg):
    pg_run(f"""CREATE TABLE {pg}.daily AS SELECT * FROM (VALUES
                 ('a', date '2026-05-31'), ('b', date '2026-06-01'), ('c', date '2026-06-02')) t(id, day)""")
    spec = write_sync("pg_daily", f"""
        source: {{table: {pg}.daily, key: id, cursor: day, warehouse: postgres}}
        destination: {{vendor: trubrics, endpoint: publish_events}}
        partitions: {{daily: {{start: 2026-01-01}}}}
    """, "SELECT s._key || ':' || n AS _key, s._key AS _source_key, 'u' AS user_id, 'Day ' || n AS event, "
         "TIMESTAMPTZ '2026-06-01 00:00:00+00' AS timestamp FROM source AS s, range(3) AS r(n)")
    run = run_sync(spec, DAY)
    assert (run.delivered, run.source_rows) == (3, 3)
    assert delivered_items("pg_daily") == {f"b:{n}": "2026-06-01T00:00:00.000000Z" for n in range(3)}
    assert run_sync(spec, DAY).delivered == 0


def test_a_missing_warehouse_url_stays_a_clear_error_with_lookups(write_sync, sandbox):
    spec = write_sync("pg_nourl", """
        source: {table: public.x, key: id, warehouse: postgres, lookups: [public.y]}
        destination: {vendor: trubrics, endpoint: publish_events}
    """, "SELECT _key, 'u' AS user_id, 'e' AS event, now() AS timestamp FROM source")
    with pytest.raises(SynclineError, match="SYNCLINE_WAREHOUSE_URL"):
        run_sync(spec)


@pytest.mark.parametrize("unit", ["s", "ms", "us"])
def test_epoch_values_become_the_same_utc_time_in_duckdb_postgres_and_python(unit):
    """The extract's _cursor for an epoch cursor, exact to the microsecond, before 1970 too."""
    import duckdb

    from connectors.stage import Cursor

    per_us = {"s": 1_000_000, "ms": 1_000, "us": 1}[unit]
    values = [0, -1, 1, -1501, 1_780_272_000_123 * 1000 // per_us, 253_402_300_799_999_999 // per_us,
              -62_135_596_800_000_000 // per_us]
    cursor = Cursor("v", "epoch", "BIGINT", unit, True)
    expected = [EPOCH + dt.timedelta(microseconds=v * per_us) for v in values]
    listed = ", ".join(f"({v}::BIGINT)" for v in values)
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        got = [r[0] for r in con.execute(f"SELECT {cursor.time_sql()} FROM (VALUES {listed}) t(v)").fetchall()]
    finally:
        con.close()
    assert got == expected
    with psycopg.connect(POSTGRES_URL) as pg_con:
        pg_con.execute("SET TIME ZONE 'UTC'")
        rows = pg_con.execute(f"SELECT {cursor.time_sql('postgres')} FROM (VALUES {listed}) t(v)").fetchall()
    assert [r[0] for r in rows] == expected
