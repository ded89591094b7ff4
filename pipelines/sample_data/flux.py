"""Flux sample table: metered billing/usage events of the sample week (``analytics.usage_events``).

One row per metering record: which account used how much of what, priced into a numeric ``quantity``,
with the plan and region as tags. The metering export hands over two fields as text, as such exports
do: ``metered_at`` (the meter's own ISO 8601 time) and ``quantity``. 1,200 rows: at Flux's 10 batch
requests/minute the whole table is 3 batch requests (~13 s), so the demo stays quick.

Bad rows, so the demo shows rejections with their reasons (each is a row Flux's single bulk insert would
fail on, taking the 499 good events of its batch down with it):
- records with no event name (``i % 211 = 17``, 6 rows);
- a non-numeric quantity, ``'n/a'`` (``i % 233 = 41``, 5 rows);
- a meter time that is not a time, ``'2026-06-31T25:00:00Z'`` (``i % 251 = 99``, 5 rows).
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from pipelines.sample_data import day

WEEK_SECONDS = 7 * 86400
ROWS = 1200


def build(con: duckdb.DuckDBPyConnection, home: Path) -> None:
    start = day(0)
    con.execute(
        f"""
        CREATE OR REPLACE TABLE analytics.usage_events AS
        WITH base AS (
            SELECT
                i,
                {start} + (i * 397) % {WEEK_SECONDS} * INTERVAL 1 SECOND AS occurred_at,
                (['api.requests', 'storage.gb_hours', 'compute.minutes', 'seats.active', 'invoice.paid'])[1 + i % 5]
                    AS meter,
                'acct_' || lpad((i % 37)::VARCHAR, 3, '0') AS account_id
            FROM range({ROWS}) AS t(i)
        )
        SELECT
            'use_' || lpad(i::VARCHAR, 6, '0') AS usage_id,
            account_id,
            CASE WHEN i % 211 = 17 THEN NULL ELSE meter END AS event_name,
            occurred_at,
            CASE WHEN i % 251 = 99 THEN '2026-06-31T25:00:00Z'
                 ELSE strftime(occurred_at, '%Y-%m-%dT%H:%M:%SZ') END AS metered_at,
            CASE WHEN i % 233 = 41 THEN 'n/a'
                 WHEN meter = 'invoice.paid' THEN (49 + (i % 7) * 50)::VARCHAR || '.00'
                 ELSE round(((i * 7919) % 1000) / 10.0, 1)::VARCHAR END AS quantity,
            CASE meter WHEN 'api.requests' THEN 'k_requests' WHEN 'storage.gb_hours' THEN 'gb_hour'
                       WHEN 'compute.minutes' THEN 'minute' WHEN 'seats.active' THEN 'seat' ELSE 'usd' END AS unit,
            'sku_' || (['starter', 'growth', 'scale'])[1 + (i % 37) % 3] AS sku,
            (['free', 'team', 'enterprise'])[1 + (i % 37) % 3] AS plan,
            (['us-east', 'eu-west', 'ap-south'])[1 + (i % 37) % 4 % 3] AS region
        FROM base
        """
    )
