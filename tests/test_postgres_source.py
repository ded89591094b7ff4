"""A sync whose source is a real PostgreSQL table (ADBC), transformed by the same DuckDB model."""

from __future__ import annotations

import datetime as dt
import uuid

import psycopg
import pytest

from connectors.errors import SynclineError
from connectors.runner import run_sync
from connectors.stage import Window
from tests.test_ledger import PG_URL


@pytest.fixture
def pg_table():
    name = f"events_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_URL, autocommit=True) as con:
        con.execute(
            f"""CREATE TABLE public.{name} AS
            SELECT 'e' || i AS event_id, CASE WHEN i = 5 THEN NULL ELSE 'u' || i END AS user_id,
                   'Signed up'::text AS event_name,
                   timestamptz '2026-06-01 00:00:00+00' + i * interval '1 hour' AS occurred_at,
                   (i % 3)::int AS plan_tier
            FROM generate_series(0, 71) AS i"""
        )
    yield f"public.{name}"
    with psycopg.connect(PG_URL, autocommit=True) as con:
        con.execute(f"DROP TABLE public.{name}")


def test_postgres_table_source_by_partition(sandbox, write_sync, monkeypatch, pg_table):
    monkeypatch.setenv("SYNCLINE_WAREHOUSE_URL", PG_URL)
    spec = write_sync("pg_events", f"""
        source: {{table: {pg_table}, key: event_id, cursor: occurred_at, warehouse: postgres}}
        destination: {{vendor: trubrics, endpoint: publish_events}}
        partitions: {{daily: {{start: 2026-06-01}}}}
    """, "SELECT _key, user_id, event_name AS event, occurred_at AS timestamp, {'tier': plan_tier} AS properties FROM source")

    day1 = run_sync(spec, Window.days(dt.date(2026, 6, 1), dt.date(2026, 6, 1)))
    assert day1.source_rows == 24 and day1.delivered == 23 and day1.rejected == 1
    rest = run_sync(spec, Window.days(dt.date(2026, 6, 1), dt.date(2026, 6, 3)))
    assert rest.source_rows == 72 and rest.skipped == 23 and rest.delivered == 48
    received = sandbox.records("trubrics", "publish_events")
    assert len(received) == 71 and {r["properties"]["tier"] for r in received} == {0, 1, 2}


def test_postgres_query_source(sandbox, write_sync, monkeypatch, pg_table):
    monkeypatch.setenv("SYNCLINE_WAREHOUSE_URL", PG_URL)
    spec = write_sync("pg_query", f"""
        source: {{query: "SELECT * FROM {pg_table} WHERE plan_tier = 1", key: event_id, warehouse: postgres}}
        destination: {{vendor: trubrics, endpoint: publish_events}}
    """, "SELECT _key, user_id, event_name AS event, occurred_at AS timestamp FROM source")
    assert run_sync(spec).delivered == 24


def test_missing_warehouse_url_is_a_clear_error(write_sync, sandbox):
    spec = write_sync("pg_events", """
        source: {table: public.x, key: id, warehouse: postgres}
        destination: {vendor: trubrics, endpoint: publish_events}
    """, "SELECT _key, 'u' AS user_id, 'e' AS event, now() AS timestamp FROM source")
    with pytest.raises(SynclineError, match="SYNCLINE_WAREHOUSE_URL"):
        run_sync(spec)
