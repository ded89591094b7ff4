"""GradeMyPage sample tables: page views (for /track) and conversions with A/B experiments (/server-events).

Odd rows are planted on purpose. Rejected by default (the document forbids them):
- page views: a missing pathname, a timestamp in epoch seconds, and a double-fired pageview (same visitor,
  millisecond, type and path as another row: GradeMyPage would keep one);
- conversions: a variant without its experiment, and visitors whose ``id``/``ip``/``userAgent`` are not strings.
Delivered by default, rejected only by opt-in checks (``strict:`` or ``options.check_experiments``; the
document does not forbid them): a full URL where the pathname belongs, an unknown (stopped) experiment, a
variant that is not in its experiment, and a visitor with an undocumented member.

Experiment ids match the sandbox's active experiments (``connectors/sandbox/emulators/grademypage.py``).
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from pipelines.sample_data import day

PAGE_VIEWS = 700
CONVERSIONS = 240


def build(con: duckdb.DuckDBPyConnection, home: Path) -> None:
    start = day(0)
    # Timestamps are stored in epoch ms (BIGINT), as a browser collector writes them; `viewed_at` is the
    # TIMESTAMPTZ cursor for daily partitions. Row 77 double-fires row 76's pageview (same ms, path, visitor),
    # so both fall in the same partition.
    con.execute(
        f"""
        CREATE OR REPLACE TABLE analytics.page_views AS
        WITH base AS (
            SELECT
                i,
                j,
                {start} + (j * 863) % (7 * 86400) * INTERVAL 1 SECOND + (j % 1000) * INTERVAL 1 MILLISECOND AS seen_at
            FROM (SELECT i, CASE WHEN i = 77 THEN 76 ELSE i END AS j FROM range({PAGE_VIEWS}) AS t(i))
        )
        SELECT
            'pv_' || lpad(i::VARCHAR, 6, '0') AS view_id,
            'gmp_vid_' || (j % 97) AS visitor_id,
            'sess_' || (j // 4) AS session_id,
            (['pageview', 'pageview', 'pageview', 'scroll', 'engagement'])[1 + j % 5] AS event_type,
            CASE WHEN j % 5 = 4 THEN 'read_' || (j % 3) END AS event_name,
            CASE
                WHEN i = 211 THEN NULL
                WHEN i = 388 THEN 'https://acme.example/pricing'
                ELSE (['/', '/pricing', '/signup', '/blog/launch-week', '/docs/getting-started'])[1 + j % 5]
            END AS pathname,
            'https://acme.example' || (['/', '/pricing', '/signup', '/blog/launch-week', '/docs/getting-started'])[1 + j % 5]
                AS full_url,
            CASE WHEN j % 3 = 0 THEN 'https://www.google.com/' WHEN j % 3 = 1 THEN 'https://news.ycombinator.com/' END
                AS referrer,
            CASE WHEN j % 4 = 0 THEN 'newsletter' WHEN j % 4 = 1 THEN 'google' END AS utm_source,
            CASE WHEN j % 4 = 0 THEN 'email' WHEN j % 4 = 1 THEN 'cpc' END AS utm_medium,
            CASE WHEN j % 4 = 0 THEN 'june_launch' END AS utm_campaign,
            CASE WHEN j % 5 = 3 THEN 25 * (1 + j % 4) END AS scroll_depth,
            CASE WHEN i = 533 THEN epoch(seen_at)::BIGINT ELSE epoch_ms(seen_at) END AS occurred_at_ms,
            seen_at AS viewed_at
        FROM base
        """
    )
    con.execute(
        f"""
        CREATE OR REPLACE TABLE analytics.conversions AS
        SELECT
            'cv_' || lpad(i::VARCHAR, 6, '0') AS conversion_id,
            (['signup', 'purchase', 'trial_started'])[1 + i % 3] AS event_name,
            {start} + (i * 2477) % (7 * 86400) * INTERVAL 1 SECOND AS converted_at,
            (['/signup', '/checkout', '/pricing'])[1 + i % 3] AS page,
            CASE WHEN i % 3 = 1 THEN round(19 + (i % 5) * 20, 2) END AS amount_usd,
            (['free', 'team', 'enterprise'])[1 + i % 3] AS plan,
            CASE
                WHEN i = 45 THEN '"anonymous"'
                WHEN i = 146 THEN '{{"id": 4242}}'
                WHEN i = 178 THEN '{{"id": "gmp_vid_9", "user_agent": "Mozilla/5.0"}}'
                ELSE json_object('id', 'gmp_vid_' || (i % 97), 'ip', '203.0.113.' || (1 + i % 250),
                                 'userAgent', (['Mozilla/5.0 (Macintosh)', 'Mozilla/5.0 (iPhone)'])[1 + i % 2])::VARCHAR
            END AS visitor,
            CASE
                WHEN i = 61 THEN 'exp_old_hero_banner'
                WHEN i = 130 THEN NULL
                WHEN i % 4 = 0 THEN 'exp_pricing_headline'
                WHEN i % 4 = 1 THEN 'exp_signup_cta'
            END AS experiment_id,
            CASE
                WHEN i = 61 THEN 'var_hero_b'
                WHEN i = 93 THEN 'var_cta_purple'
                WHEN i = 130 THEN 'var_cta_green'
                WHEN i % 4 = 0 THEN (['var_pricing_control', 'var_pricing_value'])[1 + (i // 4) % 2]
                WHEN i % 4 = 1 THEN (['var_cta_control', 'var_cta_green', 'var_cta_large'])[1 + (i // 4) % 3]
            END AS variant_id
        FROM range({CONVERSIONS}) AS t(i)
        """
    )
