"""StreamBack sample table: in-app feedback with screenshots and attachments, bad rows included.

``analytics.feedback`` holds 140 feedback rows over the sample week. Every 9th row has a screenshot (a small
real PNG written under ``home/screenshots``, stored as a path relative to ``SYNCLINE_HOME``, as the sync
expects), every 25th row has attachments under ``home/attachments``. Five rows are bad on purpose, one per
rejection path: a type outside the documented list, emotion 9, no message/emotion/survey at all, a
screenshot whose file is missing, and a screenshot path outside ``SYNCLINE_HOME``.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import duckdb

from pipelines.sample_data import day

ROWS = 140
SCREENSHOT_EVERY = 9
ATTACHMENT_EVERY = 25
MISSING_SCREENSHOT_ROW = 45  # a screenshot row whose file is never written
BAD_TYPE_ROW, BAD_EMOTION_ROW, EMPTY_ROW, OUTSIDE_ROW = 17, 31, 58, 63


def png(width: int, height: int, shade: int) -> bytes:
    """A valid greyscale PNG, deterministic for (width, height, shade)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + bytes((shade + x + y) % 256 for x in range(width)) for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")


def _write_files(home: Path) -> None:
    shots, files = home / "screenshots", home / "attachments"
    shots.mkdir(parents=True, exist_ok=True)
    files.mkdir(parents=True, exist_ok=True)
    for i in range(0, ROWS, SCREENSHOT_EVERY):
        if i != MISSING_SCREENSHOT_ROW:
            (shots / f"fb_{i:04d}.png").write_bytes(png(32, 20, i))
    for i in range(0, ROWS, ATTACHMENT_EVERY):
        (files / f"fb_{i:04d}-console.log").write_text(
            "".join(f"[{n:03d}] warn: checkout retry {n} for session s{i}\n" for n in range(12))
        )
        (files / f"fb_{i:04d}-har.json").write_text('{"log": {"version": "1.2", "entries": []}}\n')


def build(con: duckdb.DuckDBPyConnection, home: Path) -> None:
    _write_files(home)
    start = day(0)
    con.execute(
        f"""
        CREATE OR REPLACE TABLE analytics.feedback AS
        SELECT
            'fb_' || lpad(i::VARCHAR, 4, '0') AS feedback_id,
            {start} + (i * 4253) % (7 * 86400) * INTERVAL 1 SECOND AS submitted_at,
            CASE
                WHEN i = {EMPTY_ROW} THEN NULL
                WHEN i % 5 = 3 THEN NULL  -- emotion-only or survey-only feedback
                ELSE (['The checkout button does not work on mobile', 'Love the new dashboard',
                       'Export to CSV would help', 'How do I invite my team?', 'Search is slow today'])[1 + i % 5]
                     || ' (#' || i || ')'
            END AS message,
            CASE WHEN i = {BAD_TYPE_ROW} THEN 'complaint'
                 ELSE (['bug', 'praise', 'suggestion', 'question', 'bug', 'other'])[1 + i % 6] END AS feedback_type,
            CASE WHEN i = {BAD_EMOTION_ROW} THEN 9 WHEN i = {EMPTY_ROW} THEN NULL
                 WHEN i % 3 = 0 AND i % 5 <> 3 THEN NULL ELSE 1 + i % 5 END AS emotion,
            (['manual', 'error', 'frustration', 'idle', 'exitIntent', 'survey'])[1 + i % 6] AS trigger_source,
            CASE WHEN i % 6 = 5 THEN 'checkout-ease' END AS survey_id,
            CASE WHEN i % 6 = 5 THEN 1 + i % 5 END AS survey_answer,
            CASE WHEN i % 12 = 5 THEN 'Pretty smooth overall' END AS survey_follow_up,
            'https://app.example.com' || (['/checkout', '/dashboard', '/reports', '/settings/team'])[1 + i % 4] AS page_url,
            (['/checkout', '/dashboard', '/reports', '/settings/team'])[1 + i % 4] AS page_route,
            ([375, 1440, 1280, 390])[1 + i % 4] AS viewport_width,
            ([812, 900, 720, 844])[1 + i % 4] AS viewport_height,
            'Mozilla/5.0 (sample)' AS user_agent,
            'user_' || (i % 37) AS user_id,
            CASE WHEN i % 4 <> 1 THEN 'user' || (i % 37) || '@example.com' END AS user_email,
            CASE
                WHEN i = {OUTSIDE_ROW} THEN '/etc/hostname'
                WHEN i % {SCREENSHOT_EVERY} = 0 THEN 'screenshots/fb_' || lpad(i::VARCHAR, 4, '0') || '.png'
            END AS screenshot_path,
            CASE WHEN i % {ATTACHMENT_EVERY} = 0 THEN [
                'attachments/fb_' || lpad(i::VARCHAR, 4, '0') || '-console.log',
                'attachments/fb_' || lpad(i::VARCHAR, 4, '0') || '-har.json'
            ] END AS attachment_paths
        FROM range({ROWS}) AS t(i)
        """
    )
