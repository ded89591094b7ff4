"""The example project (examples/dataframe_project): ``dagster dev`` loads its own workspace.yaml, the UI's
GraphQL shows its assets, checks and schedule, and its job runs as a queued run-worker process, delivering
the DataFrame to Trubrics and Screeb in the sandbox; the checks it attaches pass. Uses the webserver test's
``DagsterDev`` and helpers."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest

from connectors.ledger import open_ledger
from tests.test_webserver import (
    ASSET_NODES,
    LAUNCH_RUN,
    WORKSPACE,
    DagsterDev,
    _poll,
    _python_error,
    _wait_for_run,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "dataframe_project"
LOCATION = "dataframe_project"
JOB = "deliver_product_events_job"
BUDGET_S = 300
SCHEDULES = """query($selector: RepositorySelector!) { schedulesOrError(repositorySelector: $selector) {
  __typename ... on Schedules { results { name cronSchedule } } ... on PythonError { message } } }"""
CHECKS = """{ assetNodes { assetKey { path } assetChecksOrError { __typename
  ... on AssetChecks { checks { name } } } } }"""


@pytest.fixture
def example_dev(sandbox, syncline_home: Path, tmp_path: Path) -> Iterator[DagsterDev]:
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(EXAMPLE.parent.parent / "deploy" / "dagster.yaml", dagster_home / "dagster.yaml")
    # The project builds the sample warehouse itself on first use (under SYNCLINE_HOME).
    env = {**os.environ, **sandbox.env(), "SYNCLINE_HOME": str(syncline_home)}
    server = DagsterDev(dagster_home, env, tmp_path / "dagster-dev.log", cwd=EXAMPLE)
    try:
        yield server
    finally:
        server.stop()


def _deliverable(warehouse: Path, sql: str) -> int:
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        row = con.execute(f"SELECT count(*) FROM analytics.product_events WHERE {sql}").fetchone()
    finally:
        con.close()
    assert row is not None
    return int(row[0])


@pytest.mark.slow
@pytest.mark.timeout(BUDGET_S + 60)
def test_the_example_project_loads_in_dagster_dev_and_its_job_delivers(example_dev, sandbox, syncline_home):
    server = example_dev
    try:
        _exercise(server, sandbox, syncline_home, time.monotonic())
    except BaseException:
        print(server.diagnose())
        raise


def _exercise(server: DagsterDev, sandbox: Any, home: Path, started: float) -> None:
    def remaining(cap: float) -> float:
        return max(5.0, min(cap, BUDGET_S - (time.monotonic() - started)))

    server.wait_until_serving(remaining(120))

    def loaded() -> dict[str, Any] | None:
        entries = server.gql(WORKSPACE)["workspaceOrError"]["locationEntries"]
        return None if any(e["loadStatus"] != "LOADED" for e in entries) else {e["name"]: e for e in entries}

    entries = _poll("the example's code location to load", remaining(120), loaded)
    assert list(entries) == [LOCATION], list(entries)
    location = entries[LOCATION]["locationOrLoadError"]
    assert location["__typename"] == "RepositoryLocation", f"failed to load: {_python_error(location)}"
    (repository,) = [r["name"] for r in location["repositories"]]
    selector = {"repositoryLocationName": LOCATION, "repositoryName": repository}

    nodes = {"/".join(n["assetKey"]["path"]) for n in server.gql(ASSET_NODES)["assetNodes"]}
    assert {"product_events", "product_events_in_trubrics", "product_events_in_screeb"} <= nodes, nodes
    checks = {"/".join(n["assetKey"]["path"]): {c["name"] for c in n["assetChecksOrError"].get("checks", [])}
              for n in server.gql(CHECKS)["assetNodes"]}
    assert "example_events_to_trubrics__no_items_in_doubt_or_failed" in checks["product_events_in_trubrics"]
    assert "example_events_to_screeb__rejected_share_under_threshold" in checks["product_events_in_screeb"]
    schedules = server.gql(SCHEDULES, {"selector": selector})["schedulesOrError"]["results"]
    assert [(s["name"], s["cronSchedule"]) for s in schedules] == [("deliver_product_events_hourly", "25 * * * *")]

    launched = server.gql(LAUNCH_RUN, {"params": {
        "selector": {**selector, "jobName": JOB}, "runConfigData": {}, "executionMetadata": {"tags": []}}})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    server.run_ids.append(run_id)
    run = _wait_for_run(server, run_id, remaining(150))
    assert run["status"] == "SUCCESS", f"run {run_id} ended {run['status']}:\n{server.run_errors(run_id)}"

    warehouse = home / "warehouse.duckdb"
    to_trubrics = _deliverable(warehouse, "user_id IS NOT NULL AND event_name IS NOT NULL")
    received = {"example_events_to_trubrics": len(sandbox.records("trubrics", "publish_events")),
                "example_events_to_screeb": len(sandbox.records("screeb", "event"))}
    assert received["example_events_to_trubrics"] == to_trubrics > 1000
    ledger = open_ledger()
    try:
        for name, count in received.items():
            counts = ledger.counts(name)
            assert counts["delivered"] == count > 1000 and counts["in_doubt"] == counts["failed"] == 0, (name, counts)
            assert counts["delivered"] + counts["rejected"] == 1200  # every row delivered or rejected with a reason
            assert ledger.runs(name, limit=1)[0]["status"] == "success"
    finally:
        ledger.close()
