"""The real thing: ``dagster dev`` on the workspace with ``deploy/dagster.yaml`` as its instance, driven over
GraphQL the way the UI drives it. One partitioned run and one 3-day single-run backfill of the Trubrics sync
are queued, launched as run-worker processes and delivered to the sandbox, each item exactly once."""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from connectors.ledger import open_ledger
from connectors.spec import load_syncs
from pipelines.factory import pool_for
from pipelines.sample_data import build_warehouse

ROOT = Path(__file__).resolve().parent.parent
SYNC = "product_events_to_trubrics"
JOB = f"{SYNC}_job"
ONE_DAY = "2026-06-02"
BACKFILL_DAYS = ["2026-06-03", "2026-06-04", "2026-06-05"]
STAGES = ("extract", "payloads", "delivered")

BUDGET_S = 240  # all the waits of the test together (the server starts in the fixture just before)
SERVER_START_S = 120
RUN_S = 100
BACKFILL_S = 150
FINISHED_RUN = {"SUCCESS", "FAILURE", "CANCELED"}
FINISHED_BACKFILL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}

ERROR_FIELDS = "__typename ... on Error { message } ... on RunConfigValidationInvalid { errors { message } }"
WORKSPACE = """{ workspaceOrError { __typename ... on PythonError { message stack }
  ... on Workspace { locationEntries { name loadStatus locationOrLoadError { __typename
    ... on RepositoryLocation { name repositories { name } }
    ... on PythonError { message stack causes { message stack } } } } } } }"""
INSTANCE = """{ instance { runQueuingSupported runLauncher { name } runQueueConfig { maxConcurrentRuns }
  poolConfig { poolGranularity defaultPoolLimit opGranularityRunBuffer }
  daemonHealth { allDaemonStatuses { daemonType required healthy } } } }"""
ASSET_NODES = "{ assetNodes { assetKey { path } groupName isPartitioned } }"
LAUNCH_RUN = f"""mutation($params: ExecutionParams!) {{ launchRun(executionParams: $params) {{ {ERROR_FIELDS}
  ... on LaunchRunSuccess {{ run {{ runId }} }} }} }}"""
RUN = """query($runId: ID!) { runOrError(runId: $runId) { __typename ... on PythonError { message }
  ... on Run { runId status jobName tags { key value } allPools assetSelection { path } } } }"""
RUNS = """query($filter: RunsFilter) { runsOrError(filter: $filter) { __typename ... on PythonError { message }
  ... on Runs { results { runId status jobName tags { key value } } } } }"""
LAUNCH_BACKFILL = f"""mutation($params: LaunchBackfillParams!) {{ launchPartitionBackfill(backfillParams: $params) {{
  {ERROR_FIELDS} ... on LaunchBackfillSuccess {{ backfillId }} }} }}"""
BACKFILL = """query($id: String!) { partitionBackfillOrError(backfillId: $id) { __typename
  ... on Error { message } ... on PartitionBackfill { id status numPartitions partitionNames
    error { message stack } } } }"""
POOL = """query($key: String!) { instance { concurrencyLimit(concurrencyKey: $key) {
  slotCount usingDefaultLimit claimedSlots { runId stepKey } pendingSteps { runId stepKey } } } }"""
RUN_LOGS = """query($runId: ID!) { logsForRun(runId: $runId, limit: 1000) { __typename ... on PythonError { message }
  ... on EventConnection { events { __typename ... on MessageEvent { message level stepKey }
    ... on ErrorEvent { error { message stack causes { message stack } } } } } } }"""


class DagsterDev:
    """``dagster dev`` in its own process group, output to a file; ``gql`` posts to its GraphQL endpoint."""

    def __init__(self, dagster_home: Path, env: dict[str, str], log_path: Path, cwd: Path = ROOT) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.run_ids: list[str] = []
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster"), "dev", "-w", "workspace.yaml",
             "-h", "127.0.0.1", "-p", str(self.port)],
            cwd=cwd, env={**env, "DAGSTER_HOME": str(dagster_home)},
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )

    def gql(self, query: str, variables: dict[str, Any] | None = None, timeout: float = 30) -> dict[str, Any]:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = json.load(response)
        assert not payload.get("errors"), f"GraphQL errors: {json.dumps(payload['errors'], indent=1)[:3000]}"
        return payload["data"]

    def wait_until_serving(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"dagster dev exited with {self.process.returncode}"
            try:
                with urllib.request.urlopen(f"{self.url}/server_info", timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(1)
        raise AssertionError(f"dagster dev did not answer /server_info within {seconds:.0f} s")

    def log_tail(self, lines: int = 120) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        """SIGTERM to the whole group (webserver, daemon, code servers, run workers), then SIGKILL."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=15)
        # Whatever is left of the group: dagster dev would give each child up to 60 s on its own.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        try:
            self.process.wait(timeout=10)
        finally:
            self._log.close()

    def diagnose(self) -> str:
        """dagster dev's output tail and the status and errors of every run launched, for CI logs."""
        parts = [f"--- dagster dev output (last lines of {self.log_path}) ---", self.log_tail()]
        try:
            runs = self.gql(RUNS, {"filter": {}})["runsOrError"].get("results", [])
        except Exception as exc:  # the server may be the thing that broke
            runs = [{"runId": run_id, "status": f"unknown ({exc!r})"} for run_id in self.run_ids]
        for run in runs:
            parts.append(f"--- run {run['runId']} {run.get('jobName', '')} {run['status']} ---")
            parts.append(self.run_errors(run["runId"]))
        return "\n".join(parts)

    def run_errors(self, run_id: str) -> str:
        try:
            return _run_errors(self.gql(RUN_LOGS, {"runId": run_id}))
        except Exception as exc:
            return f"(could not read the logs of run {run_id}: {exc!r})"


def _run_errors(data: dict[str, Any]) -> str:
    logs = data["logsForRun"]
    if logs["__typename"] != "EventConnection":
        return f"{logs['__typename']}: {logs.get('message')}"
    lines: list[str] = []
    seen: set[str] = set()
    for event in logs["events"]:
        if event.get("error"):
            error = event["error"]
            if error["message"] in seen:  # the run failure repeats the step failure
                lines.append(f"{event['__typename']}: (same error as above)")
                continue
            seen.add(error["message"])
            lines.append(f"{event['__typename']} {event.get('stepKey') or ''}: {_python_error(error)}")
        elif event.get("level") in ("ERROR", "CRITICAL", "WARNING"):
            lines.append(f"{event['__typename']} {event.get('level')}: {event.get('message')}")
    return "\n".join(lines) or "(no error events)"


def _python_error(error: dict[str, Any]) -> str:
    """A GraphQL PythonError with its causes (the user code's own exception is usually a cause)."""
    parts = [f"{error.get('message')}\n{''.join(error.get('stack') or [])}"]
    parts += [f"caused by: {c['message']}\n{''.join(c['stack'] or [])}" for c in error.get("causes") or []]
    return "\n".join(parts)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _poll(what: str, seconds: float, probe: Callable[[], Any]) -> Any:
    """Call ``probe`` every second until it returns something truthy; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(1)
    raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")


def _expected_per_day(warehouse: Path, days: list[str]) -> dict[str, int]:
    """Rows per UTC day the sync can deliver (the model needs a user and an event name)."""
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        con.execute("SET TimeZone = 'UTC'")
        rows = con.execute(
            "SELECT strftime(occurred_at, '%Y-%m-%d') AS day, count(*) FROM analytics.product_events "
            "WHERE user_id IS NOT NULL AND event_name IS NOT NULL GROUP BY day"
        ).fetchall()
    finally:
        con.close()
    counts = dict(rows)
    return {day: int(counts.get(day, 0)) for day in days}


def _received_per_day(records: list[dict[str, Any]]) -> collections.Counter[str]:
    return collections.Counter(
        dt.datetime.fromisoformat(r["timestamp"]).astimezone(dt.UTC).date().isoformat() for r in records
    )


@pytest.fixture
def dagster_dev(sandbox, syncline_home: Path, tmp_path: Path) -> Iterator[DagsterDev]:
    build_warehouse(syncline_home / "warehouse.duckdb", syncline_home)
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(ROOT / "deploy" / "dagster.yaml", dagster_home / "dagster.yaml")
    env = {**os.environ, **sandbox.env(), "SYNCLINE_HOME": str(syncline_home)}
    server = DagsterDev(dagster_home, env, tmp_path / "dagster-dev.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.timeout(BUDGET_S + 60)
def test_dagster_dev_loads_the_workspace_runs_a_day_and_a_single_run_backfill(dagster_dev, sandbox, syncline_home):
    server = dagster_dev
    started = time.monotonic()
    expected = _expected_per_day(syncline_home / "warehouse.duckdb", [ONE_DAY, *BACKFILL_DAYS])
    assert all(expected.values()), expected
    try:
        _exercise(server, sandbox, expected, started)
    except BaseException:
        print(server.diagnose())
        raise


def _exercise(server: DagsterDev, sandbox: Any, expected: dict[str, int], started: float) -> None:
    def remaining(cap: float) -> float:
        return max(5.0, min(cap, BUDGET_S - (time.monotonic() - started)))

    server.wait_until_serving(SERVER_START_S)

    # -- the code location loads (no PythonError) ----------------------------------------------------------
    def location_loaded() -> dict[str, Any] | None:
        workspace = server.gql(WORKSPACE)["workspaceOrError"]
        assert workspace["__typename"] == "Workspace", workspace
        entries = workspace["locationEntries"]
        if any(e["loadStatus"] != "LOADED" for e in entries):
            return None
        return {e["name"]: e for e in entries}

    entries = _poll("the code location to load", remaining(SERVER_START_S), location_loaded)
    assert list(entries) == ["pipelines.definitions"], list(entries)
    location = entries["pipelines.definitions"]["locationOrLoadError"]
    assert location["__typename"] == "RepositoryLocation", f"code location failed to load: {_python_error(location)}"
    (repository,) = [r["name"] for r in location["repositories"]]

    # -- the webserver serves deploy/dagster.yaml as its instance ------------------------------------------
    instance = server.gql(INSTANCE)["instance"]
    assert instance["runQueuingSupported"] is True
    assert instance["runQueueConfig"]["maxConcurrentRuns"] == 4
    assert instance["poolConfig"] == {"poolGranularity": "op", "defaultPoolLimit": 1, "opGranularityRunBuffer": 0}
    daemons = {d["daemonType"]: d for d in instance["daemonHealth"]["allDaemonStatuses"]}
    assert {"QUEUED_RUN_COORDINATOR", "BACKFILL", "MONITORING"} <= {k for k, d in daemons.items() if d["required"]}

    # -- every packaged sync is three assets in its own group ----------------------------------------------
    nodes = {"/".join(n["assetKey"]["path"]): n for n in server.gql(ASSET_NODES)["assetNodes"]}
    syncs = load_syncs().syncs
    assert syncs, "no packaged syncs loaded"
    missing = sorted(f"{name}/{stage}" for name in syncs for stage in STAGES if f"{name}/{stage}" not in nodes)
    assert not missing, f"asset nodes missing from the webserver: {missing}"
    assert {nodes[f"{name}/{stage}"]["groupName"] for name in syncs for stage in STAGES} == set(syncs)
    assert nodes[f"{SYNC}/delivered"]["isPartitioned"]

    # -- one partitioned run of the job: queued, launched, SUCCESS, that day's events in the sandbox ------
    launched = server.gql(LAUNCH_RUN, {"params": {
        "selector": {"repositoryLocationName": "pipelines.definitions", "repositoryName": repository, "jobName": JOB},
        "runConfigData": {},
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": ONE_DAY}]},
    }})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    server.run_ids.append(run_id)
    run = _wait_for_run(server, run_id, remaining(RUN_S))
    assert run["status"] == "SUCCESS", f"run {run_id} ended {run['status']}:\n{server.run_errors(run_id)}"
    assert run["allPools"] == [pool_for(syncs[SYNC])], run["allPools"]

    received = sandbox.records("trubrics", "publish_events")
    assert _received_per_day(received) == {ONE_DAY: expected[ONE_DAY]}
    assert open_ledger().counts(SYNC)["delivered"] == expected[ONE_DAY]

    # -- a 3-day backfill of the sync's assets: one run (single-run policy), each item delivered once ------
    backfill = server.gql(LAUNCH_BACKFILL, {"params": {
        "partitionNames": BACKFILL_DAYS,
        "assetSelection": [{"path": [SYNC, stage]} for stage in STAGES],
        "fromFailure": False,
    }})["launchPartitionBackfill"]
    assert backfill["__typename"] == "LaunchBackfillSuccess", backfill
    backfill_id = backfill["backfillId"]

    def backfill_runs() -> list[dict[str, Any]]:
        found = server.gql(RUNS, {"filter": {"tags": [{"key": "dagster/backfill", "value": backfill_id}]}})
        runs = found["runsOrError"]["results"]
        server.run_ids.extend(r["runId"] for r in runs if r["runId"] not in server.run_ids)
        return runs

    def backfill_done() -> dict[str, Any] | None:
        state = server.gql(BACKFILL, {"id": backfill_id})["partitionBackfillOrError"]
        assert state["__typename"] == "PartitionBackfill", state
        backfill_runs()
        return state if state["status"] in FINISHED_BACKFILL else None

    state = _poll(f"backfill {backfill_id} to finish", remaining(BACKFILL_S), backfill_done)
    runs = backfill_runs()
    assert state["status"] in ("COMPLETED", "COMPLETED_SUCCESS"), (
        f"backfill ended {state['status']}: {(state.get('error') or {}).get('message')}")
    assert len(runs) == 1, f"expected one run for the 3-day backfill, got {[(r['runId'], r['status']) for r in runs]}"
    (backfill_run,) = runs
    assert backfill_run["status"] == "SUCCESS", (
        f"backfill run {backfill_run['runId']} ended {backfill_run['status']}:\n{server.run_errors(backfill_run['runId'])}")
    tags = {t["key"]: t["value"] for t in backfill_run["tags"]}
    assert (tags.get("dagster/asset_partition_range_start"), tags.get("dagster/asset_partition_range_end")) == (
        BACKFILL_DAYS[0], BACKFILL_DAYS[-1]), tags

    received = sandbox.records("trubrics", "publish_events")
    assert _received_per_day(received) == expected
    pairs = [(r["user_id"], r["timestamp"]) for r in received]
    assert len(pairs) == len(set(pairs)) == sum(expected.values())
    assert open_ledger().counts(SYNC)["delivered"] == sum(expected.values())

    # -- the pool's one slot is free again once the runs are over -----------------------------------------
    pool = server.gql(POOL, {"key": pool_for(syncs[SYNC])})["instance"]["concurrencyLimit"]
    assert pool["slotCount"] == 1 and pool["usingDefaultLimit"], pool
    assert pool["claimedSlots"] == [] and pool["pendingSteps"] == [], pool


def _wait_for_run(server: DagsterDev, run_id: str, seconds: float) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        run = server.gql(RUN, {"runId": run_id})["runOrError"]
        assert run["__typename"] == "Run", run
        return run if run["status"] in FINISHED_RUN else None

    return _poll(f"run {run_id} to finish", seconds, finished)
