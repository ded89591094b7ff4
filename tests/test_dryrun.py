"""An exact dry run: ``syncline run --dry-run --out DIR`` writes the requests a real run then sends."""

from __future__ import annotations

import json
from collections import Counter

from connectors.ledger import open_ledger
from connectors.sandbox.emulators.trubrics import TrubricsEmulator
from pipelines.cli import main

EVENTS = """
    CREATE TABLE analytics.events AS
    SELECT 'e' || lpad(i::VARCHAR, 5, '0') AS event_id, 'u' || i AS user_id,
           CASE WHEN i % 100 = 7 THEN NULL ELSE 'Signed up' END AS event_name,
           TIMESTAMPTZ '2026-06-01 00:00:00+00' + i * INTERVAL 1 MINUTE AS occurred_at, repeat('x', i % 50) AS pad
    FROM range(250) t(i)
"""
SYNC = """
    source: {table: analytics.events, key: event_id, cursor: occurred_at}
    destination: {vendor: trubrics, endpoint: publish_events}
"""
SQL = "SELECT _key, user_id, event_name AS event, occurred_at AS timestamp, {'pad': pad} AS properties FROM source"


def test_a_dry_run_writes_exactly_the_requests_a_real_run_sends(sandbox, warehouse, write_sync, monkeypatch, tmp_path,
                                                                capsys):
    warehouse(EVENTS)
    write_sync("ev", SYNC, SQL)
    monkeypatch.setenv("SYNCLINE_SYNCS_DIR", str(write_sync.folder))
    out = tmp_path / "plan"

    assert main(["run", "ev", "--dry-run", "--out", str(out)]) == 0
    assert sandbox.stats()["trubrics"].get("publish_events") is None  # nothing was sent
    assert open_ledger().counts("ev")["delivered"] == 0

    planned = [json.loads(line) for line in (out / "ev" / "requests.jsonl").read_text().splitlines()]
    rejected = [json.loads(line) for line in (out / "ev" / "rejected.jsonl").read_text().splitlines()]
    plan = json.loads((out / "ev" / "plan.json").read_text())
    assert [r["items"] for r in planned] == [100, 100, 47]
    assert {r["source_key"] for r in rejected} == {"e00007", "e00107", "e00207"}
    assert all("event" in r["reason"] for r in rejected)
    assert (plan["source_rows"], plan["to_send"], plan["rejected"], plan["requests"]) == (250, 247, 3, 3)
    assert plan["estimated_seconds"] is None and "no documented rate limit" in plan["pacing"]
    key = TrubricsEmulator.keys["api_key"]
    assert all(r["headers"]["x-api-key"] == "[redacted]" for r in planned)
    assert key not in (out / "ev" / "requests.jsonl").read_text()
    assert all(r["method"] == "POST" and r["url"].endswith("/publish_events") for r in planned)

    assert main(["run", "ev"]) == 0
    capsys.readouterr()
    # At the sandbox: the same requests (sizes in bytes) carrying the same items, as planned.
    log = sandbox.emulator("trubrics").request_log["publish_events"]
    assert Counter(entry["bytes"] for entry in log) == Counter(r["bytes"] for r in planned)
    planned_items = Counter(json.dumps(i, sort_keys=True) for r in planned for i in json.loads(r["body"]))
    stored = Counter(json.dumps(i, sort_keys=True) for i in sandbox.records("trubrics", "publish_events"))
    assert stored == planned_items and sum(stored.values()) == 247
