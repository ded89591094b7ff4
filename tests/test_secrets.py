"""No credential value ever leaves the environment: the full demo (``syncline demo``, a child process) and
a Dagster materialize of every packaged sync run with recognisable credential values (the sandbox is told
to accept them through ``SYNCLINE_SANDBOX_KEYS``), plus runs where the vendor refuses the key or echoes the
whole request back in its error page. Then every output is searched for every value (and for fragments of
it, so a truncated excerpt is caught too):

- the demo's stdout and stderr, and ``syncline log`` / ``syncline run`` output;
- every row of every table of the SQLite ledger;
- every file under SYNCLINE_HOME: staging, rate-limiter state, DuckDB spill, the Dagster instance's
  storage (event log, runs), the ledger's WAL;
- the Dagster event log of each run (every event, serialized) and the asset metadata.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from connectors.sandbox import Fault, Sandbox
from connectors.sandbox.emulators import emulator_classes
from connectors.spec import load_syncs
from connectors.vendors import vendors
from pipelines.cli import main as cli_main
from pipelines.factory import build_sync
from pipelines.resources import SynclineResource, resource_key, vendor_resource

ROOT = Path(__file__).resolve().parent.parent
DAY = "2026-06-02"


def canaries() -> dict[str, dict[str, str]]:
    """A recognisable value for every credential of every vendor: ``CANARY<vendor><name><random>``."""
    out: dict[str, dict[str, str]] = {}
    for vendor, cls in emulator_classes().items():
        out[vendor] = {name: f"CANARY{vendor}{name.replace('_', '')}{secrets.token_hex(10)}" for name in cls.keys}
    return out


def fragments(value: str) -> list[str]:
    """The value and its random tail's halves: an excerpt cut anywhere still shows one of them whole."""
    tail = value[-20:]
    return [value, tail[:10], tail[10:]]


def find_leaks(keys: dict[str, dict[str, str]], where: str, data: bytes | str) -> list[str]:
    blob = data.encode("utf-8", "replace") if isinstance(data, str) else data
    leaks = []
    for vendor, creds in keys.items():
        for name, value in creds.items():
            for fragment in fragments(value):
                if fragment.encode() in blob:
                    leaks.append(f"{vendor}.{name} ({fragment!r}) in {where}")
                    break
    return leaks


def ledger_dump(path: Path) -> str:
    """Every row of every table, as text."""
    con = sqlite3.connect(path)
    try:
        return "\n".join(con.iterdump())
    finally:
        con.close()


def files_under(home: Path) -> list[tuple[str, bytes]]:
    found = []
    for path in sorted(home.rglob("*")):
        if path.is_file() and not path.name.endswith(".duckdb") and path.stat().st_size < 200_000_000:
            found.append((str(path.relative_to(home)), path.read_bytes()))
    return found


def _env_with(keys: dict[str, dict[str, str]], home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRUBRICS_", "SCREEB_", "STREAMBACK_", "GRADEMYPAGE_", "FLUX_"))}
    env.update({"SYNCLINE_HOME": str(home), "SYNCLINE_SANDBOX_KEYS": json.dumps(keys), "SYNCLINE_SANDBOX_PORT": "0"})
    return env


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_no_credential_value_in_any_output_of_the_demo_dagster_or_failing_runs(
    syncline_home, monkeypatch, capsys, tmp_path
):
    keys = canaries()
    leaks: list[str] = []

    # 1. The full demo, in a child process, with the canary keys (the demo's sandbox accepts only them).
    demo = subprocess.run([sys.executable, "-m", "pipelines.cli", "demo"], cwd=ROOT, env=_env_with(keys, syncline_home),
                          capture_output=True, text=True, timeout=600)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "items delivered" in demo.stdout
    leaks += find_leaks(keys, "demo stdout", demo.stdout) + find_leaks(keys, "demo stderr", demo.stderr)

    # 2. Dagster: materialize one day of every packaged sync against a sandbox that takes only the canaries.
    with Sandbox(keys=keys) as sandbox:
        for name, value in sandbox.env().items():
            monkeypatch.setenv(name, value)
        assert all(v in os.environ.values() for creds in keys.values() for v in creds.values())
        dagster_home = syncline_home / "dagster"
        dagster_home.mkdir(exist_ok=True)
        loaded = load_syncs()
        assert not loaded.errors
        with dg.instance_for_test(temp_dir=str(dagster_home)) as instance:
            for spec in loaded.syncs.values():
                built = build_sync(spec)
                resources = {"syncline": SynclineResource(), resource_key(spec.vendor): vendor_resource(spec.vendor)}
                result = dg.materialize([built.assets], resources=resources, instance=instance,
                                        partition_key=DAY if spec.partitioned else None, raise_on_error=False)
                assert result.success, spec.name
                for event in result.all_events:
                    leaks += find_leaks(keys, f"dagster event of {spec.name}", repr(event))
                for record in instance.all_logs(result.run_id):
                    leaks += find_leaks(keys, f"dagster event log of {spec.name}", dg.serialize_value(record))
                for materialization in result.asset_materializations_for_node(f"{spec.name}__sync"):
                    leaks += find_leaks(keys, f"metadata of {spec.name}", repr(materialization.metadata))
        sent = sum(s["requests"] for endpoints in sandbox.stats().values() for s in endpoints.values())
        assert sent > 0  # the keys were accepted: something went out

        # 3. The vendor refuses the key, or echoes the whole request (key included) in an error page.
        wrong = {"TRUBRICS_API_KEY": "CANARYwrongtrubrics" + secrets.token_hex(10)}
        keys_and_wrong = {**keys, "wrong": {"trubrics": wrong["TRUBRICS_API_KEY"]}}
        monkeypatch.setenv("SYNCLINE_SYNCS_DIR", str(ROOT / "pipelines" / "syncs"))
        monkeypatch.setenv("TRUBRICS_API_KEY", wrong["TRUBRICS_API_KEY"])
        capsys.readouterr()
        assert cli_main(["run", "product_events_to_trubrics", "--partition", "2026-06-03"]) == 1
        monkeypatch.setenv("TRUBRICS_API_KEY", keys["trubrics"]["api_key"])
        # Flux is left out: its 10/min limit makes retries slow, and the redaction path is the shared one.
        echoing = {"product_events_to_trubrics": ("trubrics", "publish_events", "echo_500"),
                   "users_to_screeb": ("screeb", "event", "echo_500"),
                   "releases_to_screeb": ("screeb", "release", "echo_400"),
                   "conversions_to_grademypage": ("grademypage", "server_events", "echo_500"),
                   "page_views_to_grademypage": ("grademypage", "track", "echo_500"),
                   "feedback_to_streamback": ("streamback", "feedback", "echo_500")}
        for vendor, endpoint, mode in echoing.values():
            sandbox.set_fault(vendor, endpoint, Fault(mode, count=2))  # two echoed errors, then answers
        code = cli_main(["run", *echoing, "--partition", "2026-06-04"])
        assert code in (0, 1, 3)
        sandbox.clear_faults()
        assert cli_main(["log"]) == 0
        for sync in loaded.syncs:
            assert cli_main(["log", sync]) == 0
        out = capsys.readouterr()
        leaks += find_leaks(keys_and_wrong, "syncline run/log stdout", out.out)
        leaks += find_leaks(keys_and_wrong, "syncline run/log stderr", out.err)
        echoed = sum(s["by_status"].get(500, 0) + s["by_status"].get(400, 0)
                     for endpoints in sandbox.stats().values() for s in endpoints.values())
        assert echoed > 0  # the echoing vendor was really asked

    # 4. Every table of the ledger, and every file under SYNCLINE_HOME (staging, limiter, Dagster storage).
    leaks += find_leaks(keys_and_wrong, "the ledger", ledger_dump(syncline_home / "ledger.sqlite"))
    for name, data in files_under(syncline_home):
        leaks += find_leaks(keys_and_wrong, f"file {name}", data)

    assert not leaks, "credential values leaked:\n" + "\n".join(sorted(set(leaks))[:50])


def test_the_sandbox_takes_configured_keys_and_refuses_its_fixed_ones():
    keys = {"trubrics": {"api_key": "CANARYtrubricsapikey0123"}, "grademypage": {"secret_key": "CANARYgmpsecret0123"}}
    with Sandbox(keys=keys) as sandbox:
        env = sandbox.env()
        assert env["TRUBRICS_API_KEY"] == "CANARYtrubricsapikey0123"
        assert env["GRADEMYPAGE_SECRET_KEY"] == "CANARYgmpsecret0123"
        trubrics = vendors()["trubrics"]
        assert env[trubrics.base_url_env] == sandbox.base_url("trubrics")
        body = json.dumps([{"user_id": "u", "event": "e", "timestamp": "2026-06-01T00:00:00+00:00"}]).encode()
        assert _post(sandbox, "/trubrics/publish_events", body, {"x-api-key": "CANARYtrubricsapikey0123"})[0] == 200
        assert _post(sandbox, "/trubrics/publish_events", body, {"x-api-key": "sandbox-trubrics-key"})[0] == 401
        event = json.dumps({"eventType": "conversion", "eventName": "signup"}).encode()
        auth = {"Authorization": "Bearer CANARYgmpsecret0123"}
        assert _post(sandbox, "/grademypage/api/analytics/server-events", event, auth)[0] == 200
        fixed = {"Authorization": "Bearer gmp_sk_sandbox_7Qm2Xv9LpT4rW8kZ"}
        assert _post(sandbox, "/grademypage/api/analytics/server-events", event, fixed)[0] == 401
    with pytest.raises(ValueError, match="no credential"):
        Sandbox(keys={"trubrics": {"token": "abcdefgh"}})


def _post(sandbox: Sandbox, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(sandbox.url + path, body, {"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")
