"""Shared fixtures: an isolated SYNCLINE_HOME per test, one real-HTTP sandbox per session, sync-file helpers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pytest

from connectors.sandbox import Sandbox
from connectors.spec import SyncSpec, load_sync_file

# Fast retries for tests; a sync file may still override any of these.
FAST_DELIVERY = {"backoff_base": 0.01, "backoff_cap": 0.05, "max_retry_after": 5}

POSTGRES_URL = os.environ.get("SYNCLINE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

_ENV_PREFIXES = ("SYNCLINE_", "TRUBRICS_", "SCREEB_", "STREAMBACK_", "GRADEMYPAGE_", "FLUX_")


@pytest.fixture(autouse=True)
def syncline_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own state folder and an environment with no syncline/vendor variables."""
    for name in list(os.environ):
        if name.startswith(_ENV_PREFIXES) and name != "SYNCLINE_TEST_POSTGRES_URL":
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("SYNCLINE_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def _sandbox_server() -> Iterator[Sandbox]:
    with Sandbox() as sandbox:
        yield sandbox


@pytest.fixture
def sandbox(_sandbox_server: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    """The session's sandbox, reset, with every vendor's base URL and sandbox keys in the environment."""
    _sandbox_server.reset()
    for name, value in _sandbox_server.env().items():
        monkeypatch.setenv(name, value)
    return _sandbox_server


@dataclass
class SandboxProcess:
    """A sandbox in its own process, as a vendor is: nothing in the test's process (its threads, its GIL)
    delays or bunches the arrivals it times, which rate-window tests measure."""

    url: str
    env: dict[str, str]

    def stats(self) -> dict[str, dict[str, dict[str, Any]]]:
        with urllib.request.urlopen(f"{self.url}/_sandbox/stats", timeout=10) as resp:
            return dict(json.load(resp))


@pytest.fixture
def sandbox_process(monkeypatch: pytest.MonkeyPatch) -> Iterator[SandboxProcess]:
    """``syncline sandbox --port 0`` in a child process, its variables in the environment; stopped after."""
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "sandbox", "--port", "0", "--counts-only"],
                            cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert " listening on " in first, first
        env: dict[str, str] = {}
        for line in iter(proc.stdout.readline, ""):
            if not line.startswith("export "):
                break
            name, _, value = line.removeprefix("export ").strip().partition("=")
            env[name] = value
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        yield SandboxProcess(first.split(" on ")[1].split(" ")[0], env)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def warehouse(syncline_home: Path) -> Callable[..., Path]:
    """Run SQL statements into $SYNCLINE_HOME/warehouse.duckdb (schema ``analytics`` exists)."""

    def build(*statements: str) -> Path:
        path = syncline_home / "warehouse.duckdb"
        con = duckdb.connect(str(path))
        try:
            con.execute("SET TimeZone = 'UTC'")
            con.execute("CREATE SCHEMA IF NOT EXISTS analytics")
            for statement in statements:
                con.execute(statement)
        finally:
            con.close()
        return path

    return build


@pytest.fixture
def sample_warehouse(warehouse: Callable[..., Path], syncline_home: Path) -> Callable[[Any], Path]:
    """Build one vendor's packaged sample tables (a ``pipelines.sample_data`` module) into the warehouse."""

    def build(sample: Any) -> Path:
        path = warehouse()
        con = duckdb.connect(str(path))
        try:
            con.execute("SET TimeZone = 'UTC'")
            sample.build(con, syncline_home)
        finally:
            con.close()
        return path

    return build


@pytest.fixture
def write_sync(tmp_path: Path) -> Callable[..., SyncSpec]:
    """Write ``<name>.yaml`` + ``<name>.sql`` into a folder and load it. ``delivery`` defaults to fast retries."""
    folder = tmp_path / "syncs"
    folder.mkdir(exist_ok=True)

    def write(name: str, yaml_body: str, sql: str, *, fast: bool = True) -> SyncSpec:
        body = textwrap.dedent(yaml_body).strip() + "\n"
        if "model:" not in body:
            body += f"model: {name}.sql\n"
        if "name:" not in body:
            body = f"name: {name}\n" + body
        if fast and "delivery:" not in body:
            body += "delivery: {" + ", ".join(f"{k}: {v}" for k, v in FAST_DELIVERY.items()) + "}\n"
        (folder / f"{name}.yaml").write_text(body)
        (folder / f"{name}.sql").write_text(textwrap.dedent(sql))
        return load_sync_file(folder / f"{name}.yaml")

    write.folder = folder  # type: ignore[attr-defined]
    return write


@pytest.fixture
def postgres_ledger_url() -> Iterator[str]:
    """A fresh schema on the real PostgreSQL server for a ledger; CI must reach it (no silent skip)."""
    import uuid

    import psycopg

    schema = f"syncline_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f"DROP SCHEMA {schema} CASCADE")


# --- reading what a run left, shared by the per-vendor tests ----------------------------------------------
def ledger_items(sync: str, state: str) -> list[dict[str, Any]]:
    """The ledger's items of ``sync`` in ``state`` (the ledger of the test's SYNCLINE_HOME), closed after."""
    from connectors.ledger import open_ledger

    ledger = open_ledger()
    try:
        return list(ledger.items(sync, state=state, limit=10_000))
    finally:
        ledger.close()


def rejection_reasons(sync: str) -> dict[str, str]:
    """source key -> reject reason, for every rejected item of ``sync``."""
    return {r["source_key"]: r["reason"] for r in ledger_items(sync, "rejected")}


def assert_nothing_refused_at_the_vendor(sandbox: Sandbox, vendor: str, endpoint: str) -> None:
    """Only 200s at the emulator, and every body strict JSON: the engine did the rejecting."""
    assert sandbox.wait_idle(30)
    stats = sandbox.stats()[vendor].get(endpoint, {})
    assert stats.get("invalid_json", 0) == 0, sandbox.emulator(vendor).invalid_bodies[:2]
    assert set(stats.get("by_status", {})) <= {200}, stats
