"""The ledger knows where items went: a destination per vendor, URL and key (or a name), and one ledger
per project whatever the current directory. Real HTTP against two sandboxes on two ports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from connectors.ledger import open_ledger
from connectors.runner import run_sync
from connectors.sandbox import Sandbox

ROOT = Path(__file__).resolve().parent.parent
EVENTS = """CREATE TABLE analytics.ev AS SELECT 'e' || i AS id, 'u' || i AS u,
            TIMESTAMPTZ '2026-06-01 00:00:00+00' + i * INTERVAL 1 MINUTE AS ts FROM range(250) t(i)"""
SQL = "SELECT _key, u AS user_id, 'Ping' AS event, ts AS timestamp FROM source"


def _sync(name: str = "ev", destination: str = "") -> str:
    extra = f", name: {destination}" if destination else ""
    return f"""
        name: {name}
        source: {{table: analytics.ev, key: id, cursor: ts}}
        destination: {{vendor: trubrics, endpoint: publish_events{extra}}}
    """


def _point_at(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in sandbox.env().items():
        monkeypatch.setenv(name, value)


def test_a_second_sandbox_on_another_port_receives_everything(sandbox, warehouse, write_sync, monkeypatch):
    warehouse(EVENTS)
    spec = write_sync("ev", _sync(), SQL)
    first = run_sync(spec)
    assert first.delivered == 250 and len(sandbox.records("trubrics", "publish_events")) == 250
    with Sandbox() as second:
        _point_at(second, monkeypatch)
        moved = run_sync(spec)  # same sync, same ledger, another base URL: a new destination
        assert moved.delivered == 250 and moved.skipped == 0
        assert len(second.records("trubrics", "publish_events")) == 250
        assert moved.destination != first.destination
        assert run_sync(spec).skipped == 250  # and that destination is now up to date
    _point_at(sandbox, monkeypatch)
    back = run_sync(spec)
    assert back.delivered == 0 and back.skipped == 250  # the first destination still knows its items
    assert len(sandbox.records("trubrics", "publish_events")) == 250
    ledger = open_ledger()
    assert ledger.counts("ev", destination=first.destination)["delivered"] == 250
    assert ledger.counts("ev", destination=moved.destination)["delivered"] == 250
    identities = {d["identity"] for d in ledger.destinations().values()}
    assert any(second.base_url("trubrics") in i for i in identities) and any(sandbox.base_url("trubrics") in i for i in identities)
    assert not any("sandbox-trubrics-key" in i for i in identities)  # a fingerprint, never the key


def test_another_key_is_another_destination_unless_the_destination_is_named(sandbox, warehouse, write_sync, monkeypatch):
    warehouse(EVENTS)
    emulator = sandbox.emulators["trubrics"]
    spec = write_sync("ev", _sync(), SQL)
    assert run_sync(spec).delivered == 250
    # Naming the destination adopts what was delivered under its URL and key: nothing is resent.
    named = write_sync("ev", _sync(destination="prod"), SQL)
    renamed = run_sync(named)
    assert renamed.delivered == 0 and renamed.skipped == 250
    # Rotating the key of a named destination resends nothing...
    monkeypatch.setattr(emulator, "keys", {"api_key": "rotated-trubrics-key"})
    monkeypatch.setenv("TRUBRICS_API_KEY", "rotated-trubrics-key")
    assert run_sync(named).skipped == 250
    assert len(sandbox.records("trubrics", "publish_events")) == 250
    # ...while without a name, another key is another project: everything goes there.
    assert run_sync(spec).delivered == 250
    assert len(sandbox.records("trubrics", "publish_events")) == 500


def _cli(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_same_sync_from_two_working_directories_sends_once(sandbox, warehouse, write_sync, tmp_path):
    warehouse_path = warehouse(EVENTS)
    write_sync("ev", _sync(), SQL)
    env = {k: v for k, v in os.environ.items() if k != "SYNCLINE_HOME"}
    env.update(SYNCLINE_SYNCS_DIR=str(write_sync.folder), SYNCLINE_WAREHOUSE=str(warehouse_path),
               PYTHONPATH=str(ROOT))
    one, two = tmp_path / "one", tmp_path / "two" / "deeper"
    one.mkdir()
    two.mkdir(parents=True)
    first = _cli(["run", "ev"], one, env)
    assert first.returncode == 0, first.stderr
    second = _cli(["run", "ev"], two, env)
    assert second.returncode == 0, second.stderr
    assert len(sandbox.records("trubrics", "publish_events")) == 250  # sent once
    ledger_file = write_sync.folder / ".syncline" / "ledger.sqlite"
    assert f"ledger {ledger_file}" in first.stderr and f"ledger {ledger_file}" in second.stderr
    assert not (one / ".syncline").exists() and not (two / ".syncline").exists()


def test_a_dagster_project_keeps_its_ledger_at_its_root(sandbox, warehouse, write_sync, tmp_path, monkeypatch):
    from connectors import settings

    project = tmp_path / "project"
    (project / "src" / "deep").mkdir(parents=True)
    (project / "workspace.yaml").write_text("load_from: []\n")
    monkeypatch.delenv("SYNCLINE_HOME")
    for folder in (project, project / "src" / "deep"):
        monkeypatch.chdir(folder)
        assert settings.home() == project / ".syncline"
        assert "workspace.yaml" in settings.home_source()
