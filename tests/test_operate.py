"""Operators' tools, driven through the CLI as a person types them: items, rejects, retry, resolve,
reconcile --apply, log grouping, closed pipes, --help, `run --all` past a broken sync, and `syncline ui`."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from connectors.ledger import open_ledger
from connectors.operate import parse_reason
from connectors.sandbox import Fault
from pipelines.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
SYNCLINE = str(Path(sys.executable).parent / "syncline")

EVENTS = """
    CREATE TABLE analytics.events AS
    SELECT 'e' || i AS event_id,
           CASE WHEN i IN (3, 7) THEN NULL ELSE 'u' || i END AS user_id,
           CASE WHEN i = 5 THEN NULL ELSE 'Signed up' END AS event_name,
           CASE WHEN i IN (11, 12) THEN 'fast' ELSE CAST(i AS VARCHAR) END AS latency,
           TIMESTAMPTZ '2026-06-01 00:00:00+00' + i * INTERVAL 6 HOUR AS occurred_at
    FROM range(20) t(i)
"""
SYNC = """
    source: {table: analytics.events, key: event_id, cursor: occurred_at}
    destination: {vendor: trubrics, endpoint: publish_events}
    partitions: {daily: {start: 2026-06-01}}
"""
SQL = ("SELECT _key, user_id, event_name AS event, occurred_at AS timestamp, "
       "{'latency': TRY_CAST(latency AS DOUBLE), 'raw': latency} AS properties FROM source")
# A model with a rule problem of its own: latency as a top-level number field of the LLM endpoint.
LLM_SYNC = """
    source: {table: analytics.events, key: event_id, cursor: occurred_at}
    destination: {vendor: trubrics, endpoint: publish_llm_events}
"""
LLM_SQL = ("SELECT _key, user_id, 'p' AS prompt, 'g' AS generation, 'a1' AS assistant_id, occurred_at AS timestamp, "
           "latency FROM source")
LLM_FIXED = ("SELECT _key, coalesce(user_id, 'anonymous') AS user_id, 'p' AS prompt, 'g' AS generation, "
             "'a1' AS assistant_id, occurred_at AS timestamp, TRY_CAST(latency AS DOUBLE) AS latency FROM source")


@pytest.fixture
def syncs(sandbox, warehouse, write_sync, monkeypatch):
    warehouse(EVENTS)
    write_sync("ops_events", SYNC, SQL)
    write_sync("ops_llm", LLM_SYNC, LLM_SQL)
    monkeypatch.setenv("SYNCLINE_SYNCS_DIR", str(write_sync.folder))
    return write_sync


def _run(*argv: str) -> int:
    return main(list(argv))


def test_reason_parser_splits_rule_field_and_value():
    (one,) = parse_reason("latency must be a number, got fast")
    assert (one.rule, one.field, one.value) == ("must be a number", "latency", "fast")
    first, second = parse_reason("type must be one of bug, praise; got complaint; user_id is required")
    assert (first.rule, first.field, first.value) == ("must be one of bug, praise", "type", "complaint")
    assert (second.rule, second.field) == ("is required", "user_id")
    # An endpoint rule carries its name (payload.py): the field and value still come apart from the rule.
    (named,) = parse_reason("latency must be at least 0, got -2 (rule latency_not_negative)")
    assert (named.rule, named.field, named.value) == ("must be at least 0 (rule latency_not_negative)", "latency", "-2")
    (said,) = parse_reason("user_alias is missing: an anonymous user would be made (rule user_alias_required)")
    assert (said.field, said.rule) == ("user_alias", "is missing: an anonymous user would be made (rule user_alias_required)")
    (flux,) = parse_reason("Flux rejected the event: name is required (missing_name)")
    assert flux.field == "name" and flux.rule == "Flux rejected the event: name is required (missing_name)"
    (long,) = parse_reason("prompt is 10519 characters, over the limit of 10000")
    assert (long.rule, long.value) == ("is over the limit of 10000 characters", "10519 characters")
    (dup,) = parse_reason("duplicate source key k9: a newer row with this key is in the same run")
    assert dup.value == "k9" and "k9" not in dup.rule
    (odd,) = parse_reason("the vendor said 'abc' 42 times")
    assert odd.rule == "the vendor said '…' N times" and odd.value is None
    (inner,) = parse_reason("user_alias is required (without one Screeb would create an anonymous user; set x)")
    assert inner.field == "user_alias"


def test_items_lists_every_item_with_rule_field_value_and_exports(syncs, capsys, tmp_path):
    assert _run("run", "ops_llm") == 0
    capsys.readouterr()
    assert _run("items", "ops_llm", "--state", "rejected") == 0
    out = capsys.readouterr().out
    assert "latency" in out and "must be a number" in out and "fast" in out and "user_id" in out
    assert "4 item(s) of ops_llm" in out

    assert _run("items", "ops_llm", "--format", "json", "--limit", "0") == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 20 and {r["state"] for r in rows} == {"delivered", "rejected"}
    bad = next(r for r in rows if r["source_key"] == "e11")
    assert (bad["field"], bad["rule"], bad["value"]) == ("latency", "must be a number", "fast")
    assert all(r["attempts"] == 1 for r in rows if r["state"] == "delivered")
    assert {"destination", "resent_unknown", "key"} <= set(bad)

    assert _run("items", "ops_llm", "--reason", "REQUIRED", "--format", "csv") == 0
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert sorted(r["source_key"] for r in table) == ["e3", "e7"]

    out_file = tmp_path / "items.parquet"
    assert _run("items", "ops_llm", "--format", "parquet", "--out", str(out_file)) == 0
    assert pq.read_table(out_file).num_rows == 20
    assert "wrote 20 item(s)" in capsys.readouterr().out
    assert _run("items", "ops_llm", "--until", "2000-01-01", "--format", "json") == 0
    assert json.loads(capsys.readouterr().out) == []
    assert _run("items", "nope") == 2
    assert "unknown sync 'nope'" in capsys.readouterr().err


def test_rejects_groups_by_rule_with_samples_and_exports_every_row(syncs, capsys, tmp_path):
    assert _run("run", "ops_llm") == 0
    capsys.readouterr()
    assert _run("rejects", "ops_llm") == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "must be a number" in line]
    assert len(lines) == 1 and lines[0].startswith("2 ") and "e11" in lines[0] and "e12" in lines[0]
    assert any(line.startswith("2 ") and "user_id" in line and "is required" in line for line in out.splitlines())
    path = tmp_path / "rejects.csv"
    assert _run("rejects", "ops_llm", "--format", "csv", "--out", str(path)) == 0
    rows = list(csv.DictReader(path.open()))
    capsys.readouterr()
    assert len(rows) == 4 and {r["state"] for r in rows} == {"rejected"}
    assert _run("rejects", "ops_llm", "--all", "--format", "json") == 0
    assert len(json.loads(capsys.readouterr().out)) == 4


def test_retry_rejected_revalidates_against_the_fixed_model(syncs, sandbox, capsys):
    assert _run("run", "ops_llm") == 0
    assert len(sandbox.records("trubrics", "publish_llm_events")) == 16
    syncs("ops_llm", LLM_SYNC, LLM_FIXED)  # the model is fixed: every row is valid now
    capsys.readouterr()
    assert _run("retry", "ops_llm", "--rejected", "--by", "ana") == 0
    out = capsys.readouterr().out
    assert "queued 4 item(s) for resending (4 rejected), requested by ana" in out
    assert "ops_llm" in out and "success" in out
    assert len(sandbox.records("trubrics", "publish_llm_events")) == 20
    assert open_ledger().counts("ops_llm") == {"delivered": 20, "rejected": 0, "in_doubt": 0, "failed": 0}
    assert _run("retry", "ops_llm", "--rejected") == 0
    assert "nothing to retry" in capsys.readouterr().out
    assert _run("retry", "ops_llm") == 2
    assert "choose what to retry" in capsys.readouterr().err


def test_retry_keys_of_a_row_still_broken_rejects_it_again(syncs, sandbox, capsys):
    assert _run("run", "ops_llm") == 0
    capsys.readouterr()
    assert _run("retry", "ops_llm", "--keys", "e11") == 0
    out = capsys.readouterr().out
    assert "queued 1 item(s)" in out
    (item,) = [i for i in open_ledger().items("ops_llm", state="rejected") if i["source_key"] == "e11"]
    assert "latency must be a number" in item["reason"]


def test_resolve_records_a_verdict_on_in_doubt_items(syncs, sandbox, capsys):
    syncs("ops_events", SYNC + "    delivery: {max_attempts: 1, in_doubt: hold}\n", SQL)
    sandbox.set_fault("trubrics", "publish_events", Fault("drop_after", count=1))
    assert _run("run", "ops_events") == 3
    assert open_ledger().counts("ops_events")["in_doubt"] == 17
    capsys.readouterr()

    assert _run("resolve", "ops_events", "--delivered", "--keys", "e0", "e1", "--by", "ana") == 0
    assert "2 in-doubt item(s) resolved as delivered" in capsys.readouterr().out
    ledger = open_ledger()
    resolved = {i["source_key"]: i for i in ledger.items("ops_events", state="delivered")}
    assert set(resolved) == {"e0", "e1"}
    row = ledger._query("SELECT resolved_by, resolved_at FROM syncline_items WHERE source_key = 'e0'")[0]
    assert row[0] == "ana" and row[1]

    assert _run("resolve", "ops_events", "--delivered", "--keys", "e0") == 1  # not in doubt any more
    assert "not in doubt, left alone: e0 (delivered)" in capsys.readouterr().err
    assert _run("resolve", "ops_events", "--not-delivered", "--all-in-doubt", "--by", "bo") == 0
    assert "15 in-doubt item(s) resolved as not delivered" in capsys.readouterr().out
    assert open_ledger().counts("ops_events")["failed"] == 15
    before = len(sandbox.records("trubrics", "publish_events"))
    assert _run("run", "ops_events") == 0  # failed items are resent
    assert len(sandbox.records("trubrics", "publish_events")) == before + 15
    assert _run("items", "ops_events", "--state", "in_doubt", "--format", "json") == 0


def test_reconcile_apply_settles_flux_items_by_key(sandbox, warehouse, write_sync, monkeypatch, capsys):
    warehouse("""CREATE TABLE analytics.usage AS SELECT 'x' || i AS id, 'api.call' AS name, i * 1.5 AS amount,
                 TIMESTAMPTZ '2026-06-01 00:00:00+00' + i * INTERVAL 1 HOUR AS ts FROM range(30) t(i)""")
    write_sync("usage_ops", """
        source: {table: analytics.usage, key: id, cursor: ts}
        destination: {vendor: flux, endpoint: events_batch}
        delivery: {max_attempts: 1, in_doubt: hold, backoff_base: 0.01}
    """, "SELECT _key, name, ts AS timestamp, amount AS value FROM source")
    monkeypatch.setenv("SYNCLINE_SYNCS_DIR", str(write_sync.folder))
    sandbox.set_fault("flux", "events_batch", Fault("store_500", count=-1))  # stored, but the answer is a 500
    sandbox.set_fault("flux", "query", Fault("500", count=-1))  # and the run's read-back cannot tell
    main(["run", "usage_ops"])
    counts = open_ledger().counts("usage_ops")
    assert counts["in_doubt"] == 30, counts
    sandbox.clear_faults()
    sandbox.emulator("flux").control("drop_events", {"count": 4})  # four of them are not at Flux after all
    capsys.readouterr()
    assert main(["reconcile", "usage_ops", "--apply", "--by", "ana"]) == 0  # what the ledger marks delivered is there
    report = json.loads(capsys.readouterr().out)
    applied = report["applied"]
    assert (applied["in_doubt"], applied["delivered"], applied["not_delivered"], applied["undecided"]) == (30, 26, 4, 0)
    assert open_ledger().counts("usage_ops") == {"delivered": 26, "rejected": 0, "in_doubt": 0, "failed": 4}
    assert main(["run", "usage_ops"]) == 0  # the four are resent
    capsys.readouterr()
    assert main(["reconcile", "usage_ops"]) == 0
    assert json.loads(capsys.readouterr().out)["vendor_count"] == 30


def test_reconcile_apply_without_a_read_api_points_at_resolve(syncs, capsys):
    assert _run("reconcile", "ops_events", "--apply") == 2
    assert "syncline resolve ops_events" in capsys.readouterr().err


def test_log_groups_rejections_by_rule_and_a_closed_pipe_is_quiet(syncs, capsys):
    assert _run("run", "ops_llm") == 0
    capsys.readouterr()
    assert _run("log", "ops_llm") == 0
    out = capsys.readouterr().out
    assert "rejected     2  latency must be a number  (e.g. fast)" in out
    assert "rejected     2  user_id is required" in out
    proc = subprocess.Popen([SYNCLINE, "log"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()  # `syncline log | head -1`
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert "Traceback" not in err and "BrokenPipeError" not in err


def test_every_command_has_a_description_and_argument_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert {"items", "rejects", "retry", "resolve", "reconcile", "log", "run", "list", "preview", "ui"} <= set(sub.choices)
    for name, command in sub.choices.items():
        assert command.description and len(command.description) > 30, name
        for action in command._actions:
            if action.dest != "help":
                assert action.help, f"{name} {action.dest}"


def test_run_all_goes_past_a_broken_sync_and_names_it(syncs, capsys):
    syncs("ops_broken", SYNC, "SELECT _key, no_such_column AS event FROM source")
    code = _run("run", "--all", "--partition", "2026-06-02")
    captured = capsys.readouterr()
    assert code in (1, 2)
    assert "syncs that failed:" in captured.err and "ops_broken" in captured.err.split("syncs that failed:")[1]
    summary = captured.out
    assert "ops_events" in summary and "ops_llm" in summary and "resent?" in summary


def test_preview_shows_valid_rows_or_rejected_ones_with_long_values_cut(sandbox, warehouse, write_sync, monkeypatch,
                                                                      capsys):
    warehouse("""CREATE TABLE analytics.events AS SELECT 'e' || i AS event_id, CASE WHEN i = 1 THEN NULL ELSE 'u' END AS
                 user_id, repeat('x', 500) AS event_name, TIMESTAMPTZ '2026-06-01 00:00:00+00' AS occurred_at
                 FROM range(3) t(i)""")
    write_sync("ops_long", SYNC, "SELECT _key, user_id, event_name AS event, occurred_at AS timestamp FROM source")
    monkeypatch.setenv("SYNCLINE_SYNCS_DIR", str(write_sync.folder))
    assert _run("preview", "ops_long") == 0
    out = capsys.readouterr().out
    assert "[e0] ok" in out and "[e2] ok" in out and "e1" not in out.split("Showing")[1]
    assert "…(+300 chars)" in out and "x" * 201 not in out
    assert _run("preview", "ops_long", "--rejected") == 0
    out = capsys.readouterr().out
    assert "[e1] REJECT: user_id is required" in out and "- user_id: is required" in out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_ui_refuses_a_port_in_use_before_starting(syncline_home):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run([SYNCLINE, "ui", "--port", str(port)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert f"127.0.0.1:{port}" in done.stderr and "in use" in done.stderr and "Traceback" not in done.stderr
    assert not (syncline_home / "warehouse.duckdb").exists()  # checked before building anything


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[-1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_ui_stops_the_whole_process_tree_on_a_signal(syncline_home, tmp_path, sig):
    port = _free_port()
    cwd = tmp_path / "elsewhere"  # not the checkout: the workspace is generated under SYNCLINE_HOME
    cwd.mkdir()
    proc = subprocess.Popen([SYNCLINE, "ui", "--port", str(port)], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=os.environ)
    try:
        deadline = time.monotonic() + 180
        up = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as resp:
                    up = resp.status == 200
                    break
            except OSError:
                time.sleep(1)
        assert up, proc.stderr.read() if proc.poll() is not None else "the UI did not come up"  # type: ignore[union-attr]
        tree = _descendants(proc.pid)
        assert len(tree) >= 2  # dagster dev and at least its webserver
        assert (syncline_home / "dagster" / "workspace.yaml").is_file()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err
        assert "stopping (signal" in err and "Traceback" not in err
        time.sleep(0.5)
        alive = [pid for pid in tree if Path(f"/proc/{pid}").exists()
                 and "Z" not in (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[:1] or ["Z"])]
        assert alive == [], f"orphans: {alive}"
    finally:
        if proc.poll() is None:  # the test failed: leave nothing behind
            for pid in _descendants(proc.pid):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.wait(timeout=10)
