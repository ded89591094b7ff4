"""The ``syncline`` CLI, driven as a user would: demo twice, run/preview/log/list, errors with exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from connectors.ledger import open_ledger
from pipelines.cli import main

ROOT = Path(__file__).resolve().parent.parent
EVENTS = """
    CREATE TABLE analytics.events AS
    SELECT 'e' || i AS event_id, CASE WHEN i = 3 THEN NULL ELSE 'u' || i END AS user_id, 'Signed up' AS event_name,
           TIMESTAMPTZ '2026-06-01 00:00:00+00' + i * INTERVAL 6 HOUR AS occurred_at
    FROM range(20) t(i)
"""
SYNC = """
    source: {table: analytics.events, key: event_id, cursor: occurred_at}
    destination: {vendor: trubrics, endpoint: publish_events}
    partitions: {daily: {start: 2026-06-01}}
"""
SQL = "SELECT _key, user_id, event_name AS event, occurred_at AS timestamp FROM source"


@pytest.fixture
def cli_sync(sandbox, warehouse, write_sync, monkeypatch):
    warehouse(EVENTS)
    spec = write_sync("cli_events", SYNC, SQL)
    monkeypatch.setenv("SYNCLINE_SYNCS_DIR", str(write_sync.folder))
    return spec


@pytest.mark.slow
def test_demo_delivers_every_vendor_then_nothing_new_on_the_second_run(syncline_home):
    env_cmd = [sys.executable, "-m", "pipelines.cli", "demo"]
    first = subprocess.run(env_cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    for vendor in ("trubrics", "screeb", "streamback", "grademypage", "flux"):
        assert f"{vendor}." in first.stdout  # each vendor and endpoint appears in the summary
    assert "every source row accounted for: yes" in first.stdout
    assert "syncline rejects product_events_to_trubrics" in first.stdout  # where to look at what was rejected
    second = subprocess.run(env_cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "0 new items delivered" in second.stdout


def test_run_a_partition_then_a_range(cli_sync, sandbox, capsys):
    assert main(["run", "cli_events", "--partition", "2026-06-02"]) == 0
    assert len(sandbox.records("trubrics", "publish_events")) == 4
    assert main(["run", "cli_events", "--from", "2026-06-01", "--to", "2026-06-05"]) == 0
    out = capsys.readouterr().out
    assert "cli_events" in out and "2026-06-01..2026-06-05" in out
    assert len(sandbox.records("trubrics", "publish_events")) == 19  # one row has no user: rejected


def test_dry_run_sends_nothing_and_writes_no_ledger(cli_sync, sandbox, capsys):
    assert main(["run", "cli_events", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run: nothing was sent" in out
    assert sandbox.stats()["trubrics"] == {}
    assert open_ledger().counts("cli_events") == {"delivered": 0, "rejected": 0, "in_doubt": 0, "failed": 0}


def test_preview_shows_payloads_and_validation(cli_sync, capsys):
    assert main(["preview", "cli_events", "--limit", "20"]) == 0
    out = capsys.readouterr().out
    assert "Nothing is sent" in out and "1 fail validation" in out
    assert "REJECT" not in out and "Showing 19 valid rows" in out  # valid rows by default
    assert '"event": "Signed up"' in out
    assert main(["preview", "cli_events", "--rejected"]) == 0
    out = capsys.readouterr().out
    assert "[e3] REJECT: user_id is required" in out and "Showing 1 rejected rows" in out


def test_log_lists_runs_attempts_and_reasons(cli_sync, capsys):
    main(["run", "cli_events"])
    capsys.readouterr()
    assert main(["log", "cli_events"]) == 0
    out = capsys.readouterr().out
    assert "recent HTTP attempts" in out and "publish_events" in out
    assert "rejected     1  user_id is required" in out
    assert "rejections by rule" in out


def test_list_reports_a_broken_sync_file_with_file_and_field(cli_sync, write_sync, capsys):
    (write_sync.folder / "broken.yaml").write_text("name: broken\nsource: {table: t, key: id}\ndestination: {vendor: nobody}\n")
    assert main(["list"]) == 1
    out = capsys.readouterr().out
    assert "cli_events" in out
    assert "broken.yaml: destination.vendor: unknown vendor 'nobody'" in out


def test_running_a_sync_whose_file_is_broken_points_at_that_file(cli_sync, write_sync, capsys):
    """Not "unknown sync": the file defining it was skipped, and the errors above say why."""
    broken = write_sync.folder / "events_v2.yaml"
    broken.write_text("name: tidy\nsource: {table: t, key: id, cursr: ts}\ndestination: {vendor: trubrics}\n")
    (write_sync.folder / "typo.yaml").write_text("name: typo\nsource: {table: t, key: id}\ncolour: blue\n")
    for name, file in (("tidy", broken), ("typo", write_sync.folder / "typo.yaml")):
        assert main(["run", name]) == 2
        err = capsys.readouterr().err
        assert f"sync {name!r} is in {file}, which was skipped for the errors above" in err
        assert f"warning: skipped sync file: {file}" in err
        assert "unknown sync" not in err
    assert main(["items", "tidy"]) == 2
    err = capsys.readouterr().err
    assert f"sync 'tidy' is in {broken}, which does not load: {broken}: source.cursr: unknown field" in err
    assert main(["run", "nope"]) == 2
    assert "unknown sync(s): nope" in capsys.readouterr().err


def test_errors_have_exit_codes_and_no_tracebacks(cli_sync, capsys, monkeypatch):
    assert main(["run", "nope"]) == 2
    assert "unknown sync(s): nope" in capsys.readouterr().err
    monkeypatch.setenv("TRUBRICS_API_KEY", "bad-key-value")
    assert main(["run", "cli_events"]) == 1
    err = capsys.readouterr().err
    assert "refused the credential (HTTP 401)" in err and "bad-key-value" not in err


def test_sandbox_command_serves_and_prints_its_environment(syncline_home):
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "sandbox", "--port", "0"], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline() for _ in range(3)]  # type: ignore[union-attr]
        assert "syncline sandbox listening on http://127.0.0.1:" in lines[0]
        assert any(line.startswith("export ") and "_BASE_URL=http://127.0.0.1:" in line for line in lines[1:])
        url = lines[0].split(" on ")[1].split(" ")[0]
        import urllib.request

        with urllib.request.urlopen(f"{url}/_sandbox/stats", timeout=10) as resp:
            assert set(json.load(resp)) >= {"trubrics", "screeb", "streamback", "grademypage", "flux"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_reconcile_a_flux_sync_matches_then_reports_dropped_events(sandbox, warehouse, write_sync, monkeypatch, capsys):
    warehouse("""CREATE TABLE analytics.usage AS SELECT 'x' || i AS id, 'api.call' AS name, i * 1.5 AS amount,
                 TIMESTAMPTZ '2026-06-01 00:00:00+00' + i * INTERVAL 1 HOUR AS ts FROM range(30) t(i)""")
    write_sync("usage_cli", """
        source: {table: analytics.usage, key: id, cursor: ts}
        destination: {vendor: flux, endpoint: events_batch}
        partitions: {daily: {start: 2026-06-01}}
    """, "SELECT _key, name, ts AS timestamp, amount AS value FROM source")
    monkeypatch.setenv("SYNCLINE_SYNCS_DIR", str(write_sync.folder))
    assert main(["run", "usage_cli"]) == 0
    capsys.readouterr()

    assert main(["reconcile", "usage_cli"]) == 0
    clean = json.loads(capsys.readouterr().out)
    assert (clean["vendor_count"], clean["ledger_count"], clean["matches"]) == (30, 30, True)

    sandbox.emulator("flux").control("drop_events", {"count": 4})
    assert main(["reconcile", "usage_cli"]) == 3
    whole = json.loads(capsys.readouterr().out)
    assert whole["difference"] == 4 and whole["missing_at_vendor"] == 4 and whole["matches"] is False
    by_day = []
    for day in ("2026-06-01", "2026-06-02"):  # windows follow the ledger's cursor: 24 + 6 events
        main(["reconcile", "usage_cli", "--partition", day])
        by_day.append(json.loads(capsys.readouterr().out))
    assert [d["ledger_count"] for d in by_day] == [24, 6]
    assert sum(d["difference"] for d in by_day) == 4


def test_items_left_pending_exit_non_zero_and_the_summary_does_not_say_success(cli_sync, sandbox, capsys, write_sync):
    """cron and CI read the exit code: a run that leaves items in doubt is not a success."""
    from connectors.sandbox import Fault

    write_sync("cli_events", SYNC + "    delivery: {max_attempts: 1, backoff_base: 0.01}\n", SQL)
    sandbox.set_fault("trubrics", "publish_events", Fault("500", count=1000))
    assert main(["run", "cli_events"]) == 3
    captured = capsys.readouterr()
    assert "items pending" in captured.err and "rerun to resume" in captured.err
    assert " success" not in captured.out and "partial" in captured.out
    # the progress line's last word agrees: nothing is left to send, and the items are not called settled
    last = [line for line in captured.err.splitlines() if "sent in" in line][-1]
    assert "0 delivered" in last and "0 in doubt or failed" not in last and "in doubt or failed" in last
