"""Dagster: the code location validates, one day and a range of days materialize, partitions run in
parallel processes against one ledger, checks and schedules behave, and bad sync files are contained."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb

from connectors.ledger import open_ledger
from pipelines.factory import build_sync
from pipelines.resources import SynclineResource, resource_key, vendor_resource

ROOT = Path(__file__).resolve().parent.parent
EVENTS = """
    CREATE TABLE analytics.events AS
    SELECT 'e' || lpad(i::VARCHAR, 5, '0') AS event_id,
           CASE WHEN i % 100 = 0 THEN NULL ELSE 'u' || i END AS user_id, 'Signed up' AS event_name,
           TIMESTAMPTZ '2026-06-01 00:00:00+00' + i * INTERVAL 15 MINUTE AS occurred_at
    FROM range(96 * 5) t(i)
"""  # 96 events a day for 5 days, 1 in 100 without a user
SYNC = """
    source: {table: analytics.events, key: event_id, cursor: occurred_at}
    destination: {vendor: trubrics, endpoint: publish_events}
    partitions: {daily: {start: 2026-06-01}}
    schedule: "15 * * * *"
"""
SQL = "SELECT _key, user_id, event_name AS event, occurred_at AS timestamp FROM source"


def _resources(spec):
    return {"syncline": SynclineResource(), resource_key(spec.vendor): vendor_resource(spec.vendor)}


def _materialize(spec, **kwargs):
    built = build_sync(spec)
    return dg.materialize([built.assets], resources=_resources(spec), **kwargs)


def test_definitions_validate_with_the_workspace():
    env = {**os.environ, "SYNCLINE_HOME": os.environ["SYNCLINE_HOME"]}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Validation successful" in result.stdout + result.stderr


def test_every_packaged_sync_becomes_three_assets_in_its_own_group():
    from pipelines.definitions import build_definitions

    defs = build_definitions()
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"product_events_to_trubrics/extract", "product_events_to_trubrics/payloads",
            "product_events_to_trubrics/delivered"} <= keys
    node = graph.get(dg.AssetKey(["product_events_to_trubrics", "delivered"]))
    assert node.group_name == "product_events_to_trubrics"
    assert node.backfill_policy == dg.BackfillPolicy.single_run()
    assert defs.resolve_job_def("product_events_to_trubrics_job") is not None


def test_materialize_one_day_then_a_range_of_days(sandbox, warehouse, write_sync):
    warehouse(EVENTS)
    spec = write_sync("ev", SYNC, SQL)

    one_day = _materialize(spec, partition_key="2026-06-02")
    assert one_day.success
    meta = one_day.asset_materializations_for_node("ev__sync")
    delivered = next(m for m in meta if m.asset_key == dg.AssetKey(["ev", "delivered"])).metadata
    assert delivered["items_delivered"].value + delivered["items_rejected"].value == 96
    assert {"events_per_s", "p95_latency_ms", "retries", "http_429", "bytes_sent", "rejection_reasons"} <= set(delivered)

    # The range overlaps the day already delivered: only the other days' keys are sent.
    span = _materialize(spec, tags={"dagster/asset_partition_range_start": "2026-06-01",
                                    "dagster/asset_partition_range_end": "2026-06-03"})
    assert span.success
    delivered = next(m for m in span.asset_materializations_for_node("ev__sync")
                     if m.asset_key == dg.AssetKey(["ev", "delivered"])).metadata
    assert delivered["items_skipped"].value == 95
    received = [r["user_id"] for r in sandbox.records("trubrics", "publish_events")]
    assert len(received) == len(set(received)) == 96 * 3 - 3


def test_preview_subset_sends_nothing(sandbox, warehouse, write_sync):
    warehouse(EVENTS)
    spec = write_sync("ev", SYNC, SQL)
    result = _materialize(spec, partition_key="2026-06-01", selection=[dg.AssetKey(["ev", "payloads"]), dg.AssetKey(["ev", "extract"])])
    assert result.success
    assert sandbox.stats().get("trubrics", {}).get("publish_events") is None
    assert open_ledger().counts("ev")["delivered"] == 0


def _materialize_in_child(sync_file: str, partition: str, env: dict[str, str], queue) -> None:  # pragma: no cover - child
    os.environ.update(env)
    from connectors.spec import load_sync_file

    try:
        result = _materialize(load_sync_file(Path(sync_file)), partition_key=partition)
        queue.put((partition, result.success, None))
    except Exception as exc:  # report, do not hang the parent
        queue.put((partition, False, repr(exc)))


def test_two_partitions_in_parallel_processes_share_the_ledger(sandbox, warehouse, write_sync):
    warehouse(EVENTS)
    spec = write_sync("ev", SYNC, SQL)
    env = {k: v for k, v in os.environ.items() if k.startswith(("SYNCLINE_", "TRUBRICS_"))}
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    children = [ctx.Process(target=_materialize_in_child, args=(str(spec.file), day, env, queue))
                for day in ("2026-06-03", "2026-06-04")]
    for child in children:
        child.start()
    results = [queue.get(timeout=240) for _ in children]
    for child in children:
        child.join(timeout=60)
    assert all(ok for _, ok, _ in results), results
    counts = open_ledger().counts("ev")
    assert counts["delivered"] + counts["rejected"] == 192 and counts["in_doubt"] == counts["failed"] == 0
    assert len(sandbox.records("trubrics", "publish_events")) == counts["delivered"]


def test_asset_checks_report_in_doubt_items_and_rejected_share(sandbox, warehouse, write_sync):
    warehouse(EVENTS)
    spec = write_sync("ev", SYNC.replace("schedule", "checks: {max_rejected_share: 0.001}\n    schedule"), SQL)
    built = build_sync(spec)
    result = dg.materialize([built.assets, *built.checks], resources=_resources(spec), partition_key="2026-06-01")
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["no_items_in_doubt_or_failed"].passed
    share = checks["rejected_share_under_threshold"]
    assert not share.passed  # 1 of 96 rejected is over 0.1%
    assert "user_id is required" in share.metadata["rejection_reasons"].value


def test_schedule_requests_yesterday_and_today_so_late_rows_are_not_missed(write_sync):
    spec = write_sync("ev", SYNC, SQL)
    schedule = build_sync(spec).schedule
    assert schedule is not None and schedule.cron_schedule == "15 * * * *"
    when = dt.datetime(2026, 6, 3, 0, 15, tzinfo=dt.UTC)
    request = schedule(dg.build_schedule_context(scheduled_execution_time=when))  # type: ignore[operator]
    assert isinstance(request, dg.RunRequest)
    assert request.tags["dagster/asset_partition_range_start"] == "2026-06-02"
    assert request.tags["dagster/asset_partition_range_end"] == "2026-06-03"
    first_day = schedule(dg.build_schedule_context(  # type: ignore[operator]
        scheduled_execution_time=dt.datetime(2026, 6, 1, 9, 15, tzinfo=dt.UTC)))
    assert first_day.tags["dagster/asset_partition_range_start"] == "2026-06-01"  # never before the start


def test_staging_files_are_removed_after_a_materialization(sandbox, warehouse, write_sync, syncline_home):
    warehouse(EVENTS)
    spec = write_sync("ev", SYNC, SQL)
    assert _materialize(spec, partition_key="2026-06-02").success
    assert not list((syncline_home / "staging").rglob("*.parquet"))


def test_a_bad_sync_file_is_reported_and_the_others_still_load(tmp_path, monkeypatch, write_sync):
    write_sync("good", SYNC, SQL)
    folder = write_sync.folder
    (folder / "bad.yaml").write_text("name: bad\nsource: {table: t, key: id}\ndestination: {vendor: trubrics, endpoint: nope}\nmodel: x.sql\n")
    monkeypatch.setenv("SYNCLINE_SYNCS_DIR", str(folder))
    from connectors.spec import load_syncs
    from pipelines.definitions import build_definitions

    loaded = load_syncs()
    assert "good" in loaded.syncs
    (error,) = loaded.errors
    assert error.file.endswith("bad.yaml") and error.field == "destination.endpoint"
    assert "publish_events" in error.message  # lists the known endpoints
    keys = {k.to_user_string() for k in build_definitions().resolve_asset_graph().get_all_asset_keys()}
    assert "good/delivered" in keys


def test_demo_data_conservation_every_source_row_is_accounted_for(sandbox, syncline_home):
    """Every packaged sync on the sample warehouse: source rows = delivered + rejected + in_doubt + failed."""
    from connectors.runner import run_sync
    from connectors.spec import load_syncs
    from pipelines.sample_data import build_warehouse

    build_warehouse(syncline_home / "warehouse.duckdb", syncline_home)
    loaded = load_syncs()
    assert not loaded.errors
    ledger = open_ledger()
    for spec in loaded.syncs.values():
        run = run_sync(spec, ledger=ledger)
        counts = ledger.counts(spec.name)
        source = spec.source.table
        con = duckdb.connect(str(syncline_home / "warehouse.duckdb"), read_only=True)
        try:
            rows = con.execute(f"SELECT count(*) FROM {source}").fetchone()[0] if source else run.source_rows
        finally:
            con.close()
        assert rows == sum(counts.values()), (spec.name, rows, counts)
        assert run.source_rows == rows
        assert counts["rejected"] > 0, f"{spec.name}: the sample data should exercise rejections"
        assert all(reason for reason, _ in ledger.rejection_reasons(spec.name))


def test_reconciliation_check_on_a_vendor_with_a_read_api(sandbox, warehouse, write_sync):
    """StreamBack has a read API: the check reads back each feedback and compares with the ledger."""
    warehouse("""CREATE TABLE analytics.fb AS SELECT 'f' || i AS id, 'Great app ' || i AS message, 'praise' AS kind,
                 TIMESTAMPTZ '2026-06-01 09:00:00+00' + i * INTERVAL 1 HOUR AS ts FROM range(5) t(i)""")
    spec = write_sync("fb", """
        source: {table: analytics.fb, key: id, cursor: ts}
        destination: {vendor: streamback, endpoint: feedback}
    """, "SELECT _key, message, kind AS type FROM source")
    built = build_sync(spec)
    assert "reconciled_with_vendor" in {key.name for c in built.checks for key in c.check_keys}
    result = dg.materialize([built.assets, *built.checks], resources=_resources(spec))
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["reconciled_with_vendor"].passed
    assert checks["reconciled_with_vendor"].metadata["vendor_count"].value == 5

    (feedback_id, *_) = sandbox.emulator("streamback").feedback
    sandbox.emulator("streamback").control("delete_feedback", {"id": feedback_id})
    again = dg.materialize([built.assets, *built.checks], resources=_resources(spec))
    failed = {c.check_name: c for c in again.get_asset_check_evaluations()}["reconciled_with_vendor"]
    assert not failed.passed and failed.metadata["difference"].value == 1
