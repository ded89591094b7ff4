"""Trubrics sample tables: product events and LLM interactions (with copilot threads), bad rows included."""

from __future__ import annotations

from pathlib import Path

import duckdb

from pipelines.sample_data import day


def build(con: duckdb.DuckDBPyConnection, home: Path) -> None:
    start = day(0)
    con.execute(
        f"""
        CREATE OR REPLACE TABLE analytics.product_events AS
        SELECT
            'evt_' || lpad(i::VARCHAR, 6, '0') AS event_id,
            CASE WHEN i % 97 = 13 THEN NULL ELSE 'user_' || (i % 53) END AS user_id,
            CASE WHEN i % 101 = 7 THEN NULL
                 ELSE (['Signed up', 'Viewed pricing', 'Started trial', 'Invited teammate', 'Upgraded plan'])[1 + i % 5]
            END AS event_name,
            {start} + (i * 301) % (7 * 86400) * INTERVAL 1 SECOND AS occurred_at,
            (['free', 'team', 'enterprise'])[1 + i % 3] AS plan,
            (['US', 'FR', 'DE', 'GB', 'BR'])[1 + i % 5] AS country,
            CASE WHEN i % 4 = 0 THEN 'thread_' || (i % 40) END AS thread_id
        FROM range(1200) AS t(i)
        """
    )
    con.execute(
        f"""
        CREATE OR REPLACE TABLE analytics.llm_interactions AS
        SELECT
            'llm_' || lpad(i::VARCHAR, 6, '0') AS interaction_id,
            CASE WHEN i % 89 = 5 THEN '' ELSE 'user_' || (i % 41) END AS user_id,
            (['gpt-4o', 'claude-sonnet', 'llama-3-70b'])[1 + i % 3] AS assistant_id,
            'How do I ' || (['export a report', 'invite my team', 'reset my password', 'connect Slack'])[1 + i % 4] || '?' AS prompt,
            CASE WHEN i % 113 = 9 THEN NULL ELSE 'Here is how: open Settings, then step ' || (i % 7) || '.' END AS generation,
            CASE WHEN i % 127 = 3 THEN 'fast' ELSE round(0.2 + (i % 50) / 10.0, 2)::VARCHAR END AS latency_s,
            {start} + (i * 433) % (7 * 86400) * INTERVAL 1 SECOND AS occurred_at,
            'thread_' || (i // 3) AS thread_id,
            'session_' || (i // 9) AS copilot_session_id
        FROM range(800) AS t(i)
        """
    )
    # The LLM interactions also land as one Parquet file a day (the llm sync reads these, not the table),
    # so the demo exercises a Parquet source and the new-file sensor has something to watch.
    folder = home / "parquet" / "llm_interactions"
    folder.mkdir(parents=True, exist_ok=True)
    for offset in range(7):
        target = folder / f"day={offset + 1:02d}.parquet"
        con.execute(
            f"COPY (SELECT * FROM analytics.llm_interactions WHERE occurred_at >= {day(offset)} "
            f"AND occurred_at < {day(offset + 1)} ORDER BY occurred_at) TO '{target}' (FORMAT parquet)"
        )
