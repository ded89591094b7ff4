"""The example project (examples/dataframe_project): ``dagster dev`` loads its own workspace.yaml, the UI's
GraphQL shows its assets, checks and schedule, and its job runs as a queued run-worker process, delivering
the DataFrame to Trubrics and Screeb in the sandbox: each vendor receives exactly the rows of the warehouse
its rules accept (counted in the warehouse by those rules, not read back from the ledger), and the six
checks the project attaches ran in that run and passed (their evaluations, read over GraphQL). Uses the
webserver test's ``DagsterDev`` and helpers."""

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
CHECK_EXECUTIONS = """query($key: AssetKeyInput!, $name: String!) {
  assetCheckExecutions(assetKey: $key, checkName: $name, limit: 1) {
    runId status evaluation { success severity description } } }"""
# What each vendor's rules accept of analytics.product_events, as the example's models map it: Trubrics
# requires user_id and event (event_name); Screeb's track events require event_name, and a row without
# user_alias is sent (Screeb creates an anonymous user: the default, anonymous_users: true).
ACCEPTED = {"example_events_to_trubrics": "user_id IS NOT NULL AND event_name IS NOT NULL",
            "example_events_to_screeb": "event_name IS NOT NULL"}
ROWS = 1200  # analytics.product_events


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
    expected_checks = {asset: {f"{name}__{check}" for check in ("no_items_in_doubt_or_failed",
                                                               "rejected_share_under_threshold",
                                                               "no_possible_duplicates")}
                       for asset, name in (("product_events_in_trubrics", "example_events_to_trubrics"),
                                           ("product_events_in_screeb", "example_events_to_screeb"))}
    for asset, names in expected_checks.items():
        assert checks[asset] == names, (asset, checks[asset])
    schedules = server.gql(SCHEDULES, {"selector": selector})["schedulesOrError"]["results"]
    assert [(s["name"], s["cronSchedule"]) for s in schedules] == [("deliver_product_events_hourly", "25 * * * *")]

    launched = server.gql(LAUNCH_RUN, {"params": {
        "selector": {**selector, "jobName": JOB}, "runConfigData": {}, "executionMetadata": {"tags": []}}})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    server.run_ids.append(run_id)
    run = _wait_for_run(server, run_id, remaining(150))
    assert run["status"] == "SUCCESS", f"run {run_id} ended {run['status']}:\n{server.run_errors(run_id)}"

    # Every check of the project ran in this run and passed.
    for asset, names in expected_checks.items():
        for name in sorted(names):
            executions = server.gql(CHECK_EXECUTIONS, {"key": {"path": [asset]}, "name": name})["assetCheckExecutions"]
            assert executions, f"{asset}: check {name} never ran"
            (latest,) = executions
            evaluation = latest["evaluation"] or {}
            assert (latest["runId"], latest["status"], evaluation.get("success")) == (run_id, "SUCCEEDED", True), \
                (asset, name, latest)

    # Each vendor holds exactly the warehouse rows its rules accept; the others are rejected with a reason.
    warehouse = home / "warehouse.duckdb"
    assert _deliverable(warehouse, "TRUE") == ROWS
    expected = {name: _deliverable(warehouse, rule) for name, rule in ACCEPTED.items()}
    assert ROWS > expected["example_events_to_screeb"] > expected["example_events_to_trubrics"] > 1000, expected
    received = {"example_events_to_trubrics": len(sandbox.records("trubrics", "publish_events")),
                "example_events_to_screeb": len(sandbox.records("screeb", "event"))}
    assert received == expected
    ledger = open_ledger()
    try:
        for name, count in expected.items():
            counts = ledger.counts(name)
            assert counts == {"delivered": count, "rejected": ROWS - count, "in_doubt": 0, "failed": 0}, (name, counts)
            assert ledger.runs(name, limit=1)[0]["status"] == "success"
    finally:
        ledger.close()
