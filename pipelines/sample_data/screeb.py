"""Screeb sample tables: the product's own users, events, groups, views, copilot chats and releases.

Tables are prefixed ``app_`` (first-party product data) so they never collide with another vendor's
sample tables. Each stays under ~1,000 rows: at Screeb's 50 requests/s (46.5 with the limiter's margin)
and 100 events per request the whole Screeb demo is a handful of requests per day partition.

Bad rows, so the demo shows rejections with their reasons:
- users and tracked events whose ``external_id`` is NULL (no user alias, anonymous users not enabled);
- tracked events with no event name; group changes with no group name; page views with no URL and
  screen views with no screen name;
- copilot prompts without a conversation id, one prompt over 10,000 characters, satisfaction answers
  without a rating;
- a release without a name.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from pipelines.sample_data import day

WEEK_SECONDS = 7 * 86400


def build(con: duckdb.DuckDBPyConnection, home: Path) -> None:
    start = day(0)
    # Users (identify). Some traits are NULL: omitted by default, deleted at Screeb with keep_nulls.
    con.execute(
        f"""
        CREATE OR REPLACE TABLE analytics.app_users AS
        SELECT
            i + 1 AS user_id,
            CASE WHEN i % 97 = 41 THEN NULL ELSE 'usr_' || lpad((i + 1)::VARCHAR, 4, '0') END AS external_id,
            (['ada', 'bob', 'chen', 'dina', 'emil', 'fatou', 'gus', 'hana'])[1 + i % 8] || '.' || (i + 1)
                || '@' || (['acme.io', 'globex.com', 'initech.net', 'umbrella.org'])[1 + i % 4] AS email,
            CASE WHEN i % 11 = 0 THEN NULL ELSE (['free', 'team', 'business', 'enterprise'])[1 + i % 4] END AS plan,
            CASE WHEN i % 7 = 3 THEN NULL ELSE (['admin', 'member', 'viewer'])[1 + i % 3] END AS role,
            (['Acme Inc', 'Globex', 'Initech', 'Umbrella'])[1 + i % 4] AS company,
            (i * 37) % 250 AS sessions_30d,
            TIMESTAMPTZ '2025-01-01 00:00:00+00' + (i * 7919) % (500 * 86400) * INTERVAL 1 SECOND AS signed_up_at,
            (['en-US', 'fr-FR', 'de-DE', 'pt-BR', 'en-GB'])[1 + i % 5] AS locale,
            (['America/New_York', 'Europe/Paris', 'Europe/Berlin', 'America/Sao_Paulo', 'Europe/London'])[1 + i % 5]
                AS timezone,
            {start} + (i * 1511) % {WEEK_SECONDS} * INTERVAL 1 SECOND AS updated_at
        FROM range(400) AS t(i)
        """
    )
    # Tracked events (track).
    con.execute(
        f"""
        CREATE OR REPLACE TABLE analytics.app_tracked_events AS
        SELECT
            'evt_' || lpad(i::VARCHAR, 5, '0') AS event_id,
            CASE WHEN i % 131 = 29 THEN NULL ELSE 'usr_' || lpad((1 + (i * 13) % 400)::VARCHAR, 4, '0') END
                AS external_id,
            CASE WHEN i % 157 = 61 THEN NULL
                 ELSE (['Report exported', 'Dashboard shared', 'Integration connected', 'Subscription renewed',
                        'Teammate invited', 'Survey viewed'])[1 + i % 6]
            END AS event_name,
            (['free', 'team', 'business', 'enterprise'])[1 + i % 4] AS plan,
            CASE WHEN i % 6 = 3 THEN round(19 + (i % 5) * 15 + 0.99, 2) END AS amount,
            (['web', 'ios', 'android'])[1 + i % 3] AS platform,
            {start} + (i * 587) % {WEEK_SECONDS} * INTERVAL 1 SECOND AS occurred_at
        FROM range(1000) AS t(i)
        """
    )
    # Group memberships (group.assign / group.unassign).
    con.execute(
        f"""
        CREATE OR REPLACE TABLE analytics.app_group_memberships AS
        SELECT
            'gm_' || lpad(i::VARCHAR, 4, '0') AS change_id,
            'usr_' || lpad((1 + (i * 7) % 400)::VARCHAR, 4, '0') AS external_id,
            (['company', 'team', 'workspace'])[1 + i % 3] AS group_type,
            CASE WHEN i % 89 = 44 THEN NULL
                 WHEN i % 3 = 0 THEN (['Acme Inc', 'Globex', 'Initech', 'Umbrella'])[1 + i % 4]
                 WHEN i % 3 = 1 THEN (['Growth', 'Platform', 'Design', 'Support', 'Sales'])[1 + i % 5]
                 ELSE 'ws-' || (i % 12)
            END AS group_name,
            CASE WHEN i % 10 = 7 THEN 'unassign' ELSE 'assign' END AS action,
            CASE WHEN i % 3 = 0 THEN (['SaaS', 'Retail', 'Fintech', 'Health'])[1 + i % 4] END AS industry,
            {start} + (i * 2333) % {WEEK_SECONDS} * INTERVAL 1 SECOND AS changed_at
        FROM range(300) AS t(i)
        """
    )
    # Page views (web) and screen views (mobile). Logged-out visitors have no external_id.
    con.execute(
        f"""
        CREATE OR REPLACE TABLE analytics.app_page_views AS
        SELECT
            'pv_' || lpad(i::VARCHAR, 5, '0') AS view_id,
            CASE WHEN i % 6 = 0 THEN NULL ELSE 'usr_' || lpad((1 + (i * 11) % 400)::VARCHAR, 4, '0') END
                AS external_id,
            CASE WHEN i % 149 = 77 THEN NULL
                 ELSE 'https://app.example.com' || (['/', '/pricing', '/reports', '/settings/billing',
                        '/integrations', '/docs/getting-started'])[1 + i % 6]
            END AS url,
            (['Home', 'Pricing', 'Reports', 'Billing', 'Integrations', 'Getting started'])[1 + i % 6] AS title,
            CASE WHEN i % 4 = 0 THEN 'https://www.google.com/' END AS referrer,
            (['en-US', 'fr-FR', 'de-DE'])[1 + i % 3] AS locale,
            {start} + (i * 997) % {WEEK_SECONDS} * INTERVAL 1 SECOND AS viewed_at
        FROM range(600) AS t(i)
        """
    )
    con.execute(
        f"""
        CREATE OR REPLACE TABLE analytics.app_screen_views AS
        SELECT
            'sv_' || lpad(i::VARCHAR, 5, '0') AS view_id,
            'usr_' || lpad((1 + (i * 17) % 400)::VARCHAR, 4, '0') AS external_id,
            CASE WHEN i % 113 = 50 THEN NULL
                 ELSE (['DashboardScreen', 'ReportDetailScreen', 'InboxScreen', 'SettingsScreen'])[1 + i % 4]
            END AS screen_name,
            (['ios', 'android'])[1 + i % 2] AS os,
            '4.' || (i % 3) || '.0' AS app_version,
            {start} + (i * 1201) % {WEEK_SECONDS} * INTERVAL 1 SECOND AS viewed_at
        FROM range(400) AS t(i)
        """
    )
    # Copilot interactions: 200 conversations of 4 steps. Step 0 prompt, 1 response, 2 satisfaction
    # (even conversations) or a follow-up prompt, 3 conversion (every third) or a second response.
    con.execute(
        f"""
        CREATE OR REPLACE TABLE analytics.app_copilot_events AS
        WITH steps AS (
            SELECT i, i // 4 AS conv, i % 4 AS step,
                   CASE i % 4
                       WHEN 0 THEN 'screeb_copilot_user_prompt'
                       WHEN 1 THEN 'screeb_copilot_response'
                       WHEN 2 THEN CASE WHEN (i // 4) % 2 = 0 THEN 'screeb_copilot_satisfaction'
                                        ELSE 'screeb_copilot_user_prompt' END
                       ELSE CASE WHEN (i // 4) % 3 = 0 THEN 'screeb_copilot_conversion'
                                 ELSE 'screeb_copilot_response' END
                   END AS event_name
            FROM range(800) AS t(i)
        )
        SELECT
            'cp_' || lpad(i::VARCHAR, 5, '0') AS interaction_id,
            'usr_' || lpad((1 + (conv * 19) % 400)::VARCHAR, 4, '0') AS external_id,
            event_name,
            CASE WHEN event_name = 'screeb_copilot_conversion' THEN NULL
                 WHEN conv % 53 = 20 AND event_name = 'screeb_copilot_user_prompt' THEN NULL
                 ELSE 'conv_' || lpad(conv::VARCHAR, 4, '0') END AS conversation_id,
            CASE WHEN event_name = 'screeb_copilot_conversion' THEN NULL
                 ELSE 'cps_' || lpad((conv // 3)::VARCHAR, 4, '0') END AS copilot_session_id,
            CASE WHEN event_name <> 'screeb_copilot_user_prompt' THEN NULL
                 WHEN conv = 101 AND step = 0 THEN 'Summarise this log: ' || repeat('ERROR timeout on job 42; ', 420)
                 ELSE (['How do I export a report?', 'Can I share a dashboard with a client?',
                        'Why is my Slack integration failing?', 'How do I add a teammate?'])[1 + conv % 4]
            END AS prompt,
            CASE WHEN event_name = 'screeb_copilot_response'
                 THEN (['Open Reports, pick the report, then Export > CSV.',
                        'Use Share > Public link; clients need no account.',
                        'Reconnect Slack under Integrations: the token expired.',
                        'Go to Settings > Members > Invite.'])[1 + conv % 4]
            END AS response,
            CASE WHEN event_name = 'screeb_copilot_satisfaction' AND conv % 37 <> 8 THEN 1 + (conv * 7) % 5 END
                AS rating,
            CASE WHEN event_name = 'screeb_copilot_satisfaction' THEN 5 END AS rating_scale,
            (['gpt-4o', 'claude-sonnet'])[1 + conv % 2] AS model,
            {start} + ((conv * 3037) % ({WEEK_SECONDS} - 3600) + step * 20) * INTERVAL 1 SECOND AS occurred_at
        FROM steps
        """
    )
    # Releases (one per request to /1.0/release, with the release token).
    con.execute(
        f"""
        CREATE OR REPLACE TABLE analytics.app_releases AS
        SELECT * FROM (VALUES
            ('rel_2026_06_01', 'Scheduled exports', 'Reports can be exported on a schedule.', '3.8.0',
             ['reports', 'exports'], {start} + INTERVAL 10 HOUR),
            ('rel_2026_06_02', 'Slack fix', 'Reconnects expired Slack tokens automatically.', '3.8.1',
             ['integrations', 'fix'], {start} + INTERVAL 1 DAY + INTERVAL 16 HOUR),
            ('rel_2026_06_03a', 'Copilot in reports', 'Ask the copilot about any report.', '3.9.0',
             ['copilot', 'reports', 'beta'], {start} + INTERVAL 2 DAY + INTERVAL 9 HOUR),
            ('rel_2026_06_04', 'Dark mode', NULL, '3.10.0',
             ['ui'], {start} + INTERVAL 3 DAY + INTERVAL 11 HOUR),
            ('rel_2026_06_05', 'Faster dashboards', 'Dashboards load twice as fast.', '3.10.1',
             CAST([] AS VARCHAR[]), {start} + INTERVAL 4 DAY + INTERVAL 14 HOUR),
            ('rel_2026_06_07', 'Audit log export', 'Enterprise plans can export the audit log.', '3.11.0',
             ['enterprise', 'security'], {start} + INTERVAL 6 DAY + INTERVAL 8 HOUR),
            ('rel_2026_06_07b', NULL, 'A hotfix someone forgot to name.', '3.11.1',
             ['fix'], {start} + INTERVAL 6 DAY + INTERVAL 19 HOUR)
        ) AS t(release_id, name, description, version, tags, released_at)
        """
    )
