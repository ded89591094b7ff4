"""An answer the engine has no rule for stops the sync, and the message sends the reader the right way:
a redirect, 404, 405 or 410 is a request that reached the wrong place (check ``<VENDOR>_BASE_URL``); any
other status (409, 412, ...) came from the endpoint itself, which no vendor document lists, so it is named
as that and not blamed on the base URL. Over real HTTP on 127.0.0.1: the transport tests' local server, answering one status."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from connectors.runner import run_sync
from tests.local_http import QuietHandler, serving

EVENTS = """
    CREATE OR REPLACE TABLE analytics.events AS
    SELECT 'e' || i AS event_id, 'u' || i AS user_id, 'Signed up' AS event_name,
           TIMESTAMPTZ '2026-06-01 00:00:00+00' + i * INTERVAL 1 MINUTE AS occurred_at
    FROM range(250) t(i)
"""
SYNC = """
    source: {table: analytics.events, key: event_id, cursor: occurred_at}
    destination: {vendor: trubrics, endpoint: publish_events}
    delivery: {backoff_base: 0.01, backoff_cap: 0.05, concurrency: 1, adaptive: false}
"""
SQL = "SELECT _key, user_id, event_name AS event, occurred_at AS timestamp FROM source"


@contextmanager
def answering(status: int) -> Iterator[tuple[str, list[str]]]:
    """A server answering every POST with ``status`` (a JSON error body); yields its URL and the paths asked."""
    asked: list[str] = []

    class Handler(QuietHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            asked.append(self.path)
            body = b'{"error": "conflict with the current state"}'
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if 300 <= status < 400:
                self.send_header("Location", "https://elsewhere.example/")
            self.end_headers()
            self.wfile.write(body)

    with serving(Handler) as server:
        yield server.url, asked


def _stopped_run(status: int, warehouse, write_sync, monkeypatch) -> tuple[str, int]:
    warehouse(EVENTS)
    spec = write_sync("ev", SYNC, SQL)
    with answering(status) as (url, asked):
        monkeypatch.setenv("TRUBRICS_BASE_URL", url)
        monkeypatch.setenv("TRUBRICS_API_KEY", "test-key")
        run = run_sync(spec)
    assert run.status == "stopped" and run.delivered == 0
    assert run.delivered + run.rejected + run.in_doubt + run.failed == 250  # every row accounted for
    return run.error or "", len(asked)


@pytest.mark.parametrize("status", [301, 404, 405, 410])
def test_an_answer_from_the_wrong_place_points_at_the_base_url(status, warehouse, write_sync, monkeypatch):
    message, asked = _stopped_run(status, warehouse, write_sync, monkeypatch)
    assert f"answered HTTP {status}" in message and "check TRUBRICS_BASE_URL" in message, message
    assert asked == 1  # stopped at the first answer, not retried


@pytest.mark.parametrize("status", [409, 412, 418])
def test_an_undocumented_answer_of_the_endpoint_is_named_as_such_not_blamed_on_the_base_url(
    status, warehouse, write_sync, monkeypatch
):
    message, asked = _stopped_run(status, warehouse, write_sync, monkeypatch)
    assert f"answered HTTP {status}" in message, message
    assert "BASE_URL" not in message and "does not list" in message, message
    assert "conflict with the current state" in message  # the vendor's own words, for whoever looks
    assert asked == 1
