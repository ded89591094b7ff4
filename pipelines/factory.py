"""Asset factory: one sync file -> extract / payloads / delivered assets, checks, job and schedule.

The three assets are one ``multi_asset`` step (subsettable): the staging Parquet files between them never
have to travel between processes or machines, while the UI still shows each stage with its own metadata.
Materializing only ``extract`` and ``payloads`` is a preview: nothing is sent.
"""


import datetime as dt
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg
from dagster import AssetCheckExecutionContext, AssetExecutionContext, ScheduleEvaluationContext

from connectors import runner, stage
from connectors.engine.endpoint import Endpoint
from connectors.ledger import Ledger, RunRow
from connectors.progress import PlainProgress
from connectors.spec import SyncSpec
from pipelines.resources import SynclineResource, resource_key
from pipelines.sensors import FILES_TAG, build_parquet_sensor

PREVIEW_ROWS = 3


def partitions_for(spec: SyncSpec) -> dg.DailyPartitionsDefinition | None:
    if spec.partition_start is None:
        return None
    # end_offset=1: today's partition exists, so an hourly schedule can deliver today's rows as they land.
    return dg.DailyPartitionsDefinition(start_date=spec.partition_start.isoformat(), timezone="UTC", end_offset=1)


def window_for(context: dg.AssetExecutionContext, spec: SyncSpec) -> stage.Window:
    if not spec.partitioned:
        return stage.Window()
    keys = context.partition_key_range
    return stage.Window.days(dt.date.fromisoformat(keys.start), dt.date.fromisoformat(keys.end))


def pool_for(spec: SyncSpec) -> str:
    """Concurrency pool per vendor credential: runs sharing a key queue for the same slots."""
    return f"syncline_{spec.vendor.name}_{spec.endpoint.credential}"


def run_metadata(run: RunRow) -> dict[str, Any]:
    """Numeric metadata under stable keys, so the asset page plots trends across runs."""
    rate = run.delivered / run.seconds if run.seconds else 0.0
    return {
        "items_delivered": dg.MetadataValue.int(run.delivered),
        "items_rejected": dg.MetadataValue.int(run.rejected),
        "items_skipped": dg.MetadataValue.int(run.skipped),
        "items_in_doubt": dg.MetadataValue.int(run.in_doubt),
        "items_failed": dg.MetadataValue.int(run.failed),
        # Sent again after an unknown outcome where the vendor can neither dedup nor be read back.
        "resent_after_unknown_outcome": dg.MetadataValue.int(run.resent_unknown),
        "source_rows": dg.MetadataValue.int(run.source_rows),
        "requests": dg.MetadataValue.int(run.requests),
        "retries": dg.MetadataValue.int(run.retries),
        "http_429": dg.MetadataValue.int(run.http_429),
        "events_per_s": dg.MetadataValue.float(round(rate, 2)),
        "p95_latency_ms": dg.MetadataValue.float(float(run.p95_latency_ms)),
        "bytes_sent": dg.MetadataValue.int(run.bytes_sent),
        "seconds": dg.MetadataValue.float(float(run.seconds)),
        "ledger_run_id": dg.MetadataValue.text(run.run_id),
        "destination": dg.MetadataValue.text(run.destination),
        "ledger": dg.MetadataValue.text(run.ledger),
        "status": dg.MetadataValue.text(run.status),
    }


def reasons_table(ledger: Ledger, sync: str, destination: str | None = None) -> dg.MetadataValue:
    return reasons_markdown(ledger.rejection_reasons(sync, limit=15, destination=destination))


def reasons_markdown(rows: Sequence[tuple[str, int]]) -> dg.MetadataValue:
    """(reason, rows) pairs as the markdown table the asset page shows."""
    if not rows:
        return dg.MetadataValue.md("No rejected rows.")
    lines = ["| rejected rows | reason |", "|---:|---|"]
    lines += [f"| {n} | {reason.replace('|', '/')[:200]} |" for reason, n in rows]
    return dg.MetadataValue.md("\n".join(lines))


@dataclass(frozen=True)
class SyncDefinitions:
    assets: dg.AssetsDefinition
    checks: Sequence[dg.AssetChecksDefinition]
    job: Any
    schedule: dg.ScheduleDefinition | None
    sensor: dg.SensorDefinition | None = None


def build_sync(spec: SyncSpec) -> SyncDefinitions:
    name = spec.name
    partitions = partitions_for(spec)
    vendor_key = resource_key(spec.vendor)
    extract_key = dg.AssetKey([name, "extract"])
    payloads_key = dg.AssetKey([name, "payloads"])
    delivered_key = dg.AssetKey([name, "delivered"])
    source_desc = spec.source.table or spec.source.parquet or "query"
    specs = [
        dg.AssetSpec(extract_key, description=f"Rows of {source_desc} in the partition's cursor window.",
                     kinds={"duckdb"}, skippable=True),
        dg.AssetSpec(payloads_key, deps=[extract_key], kinds={"duckdb"}, skippable=True,
                     description=f"{spec.endpoint.qualified_name} payloads rendered by {spec.model_file.name}."),
        dg.AssetSpec(delivered_key, deps=[payloads_key], kinds={spec.vendor.name}, skippable=True,
                     description=f"Items delivered to {spec.vendor.title} {spec.endpoint.path} (ledger-backed).",
                     metadata={"sync_file": str(spec.file), "mode": spec.mode}),
    ]

    @dg.multi_asset(
        name=f"{name}__sync",
        specs=specs,
        partitions_def=partitions,
        backfill_policy=dg.BackfillPolicy.single_run() if partitions else None,
        can_subset=True,
        group_name=name,
        required_resource_keys={"syncline", vendor_key},
        pool=pool_for(spec),
        description=spec.description or None,
    )
    def _sync(context: AssetExecutionContext) -> Iterator[dg.MaterializeResult]:
        syncline: SynclineResource = context.resources.syncline
        vendor_res = getattr(context.resources, vendor_key)
        selected = context.selected_asset_keys
        files_tag = context.run.tags.get(FILES_TAG)
        files = json.loads(files_tag) if files_tag and spec.source.parquet else None
        window = window_for(context, spec)
        # The same pipeline as `syncline run`; staging holds raw source rows and is removed on exit.
        with runner.SyncPipeline(spec, window, run_id=context.run.run_id, files=files) as pipeline:
            pipeline.extract()
            if extract_key in selected:
                yield dg.MaterializeResult(asset_key=extract_key, metadata={
                    "rows": dg.MetadataValue.int(pipeline.counts.extracted),
                    "window": dg.MetadataValue.text(window.label)})
            if not selected & {payloads_key, delivered_key}:
                return
            pipeline.render()
            if payloads_key in selected:
                yield dg.MaterializeResult(asset_key=payloads_key, metadata={
                    "rows": dg.MetadataValue.int(pipeline.counts.rendered),
                    "rows_failing_validation": dg.MetadataValue.int(pipeline.counts.failing_validation),
                    "preview": dg.MetadataValue.json(_preview(pipeline)),
                })
            if delivered_key not in selected:
                return
            ledger = syncline.open_ledger()
            try:
                run = pipeline.deliver(
                    ledger=ledger, credentials=vendor_res.credentials(), base_url=vendor_res.base_url,
                    progress=PlainProgress(context.log.info, every=30),
                    on_wait=lambda: context.log.info(f"{name}: waiting for a run delivering an overlapping window"),
                    announce=context.log.info,
                )
                metadata = run_metadata(run)
                metadata["rejection_reasons"] = reasons_table(ledger, name, run.destination)
            finally:
                ledger.close()
        if run.notes:
            context.log.warning(f"{name}: {run.notes}")
        if run.status in ("stopped", "interrupted"):
            raise dg.Failure(description=run.error or "sync stopped", metadata=metadata)
        yield dg.MaterializeResult(asset_key=delivered_key, metadata=metadata)

    checks = _checks(spec, delivered_key)
    job = dg.define_asset_job(
        f"{name}_job",
        selection=dg.AssetSelection.assets(extract_key, payloads_key, delivered_key),
        description=f"Deliver {name} ({spec.endpoint.qualified_name}).",
    )
    sensor = build_parquet_sensor(spec, job) if spec.source.parquet else None
    return SyncDefinitions(_sync, checks, job, _schedule(spec, job), sensor)


def _preview(pipeline: runner.SyncPipeline) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if v is not None} for r in pipeline.preview(PREVIEW_ROWS)]


def _checks(spec: SyncSpec, delivered_key: dg.AssetKey) -> list[dg.AssetChecksDefinition]:
    name = spec.name

    @dg.asset_check(asset=delivered_key, name="no_items_in_doubt_or_failed", required_resource_keys={"syncline"},
                    description="Every item the ledger knows is delivered or rejected; none waits in doubt or failed.")
    def settled(context: AssetCheckExecutionContext) -> dg.AssetCheckResult:
        ledger = context.resources.syncline.open_ledger()
        try:
            return settled_result(ledger, name)
        finally:
            ledger.close()

    @dg.asset_check(asset=delivered_key, name="rejected_share_under_threshold", required_resource_keys={"syncline"},
                    description=f"Rejected rows stay under {spec.max_rejected_share:.1%} of all rows (checks.max_rejected_share).")
    def rejected_share(context: AssetCheckExecutionContext) -> dg.AssetCheckResult:
        ledger = context.resources.syncline.open_ledger()
        try:
            return rejected_share_result(ledger, name, spec.max_rejected_share)
        finally:
            ledger.close()

    @dg.asset_check(asset=delivered_key, name="no_possible_duplicates", required_resource_keys={"syncline"},
                    description="No item was sent again after an unknown outcome (timeout, lost answer, 5xx) to an "
                    "endpoint that can neither dedup nor be read back; each such resend may be a duplicate.")
    def possible_duplicates(context: AssetCheckExecutionContext) -> dg.AssetCheckResult:
        ledger = context.resources.syncline.open_ledger()
        try:
            return duplicates_result(ledger, name)
        finally:
            ledger.close()

    checks = [settled, rejected_share, possible_duplicates]
    if type(spec.endpoint).reconcile is not Endpoint.reconcile:
        checks.append(_reconcile_check(spec, delivered_key))
    return checks


# The checks' verdicts from the ledger, shared with the checks users attach to their own assets
# (pipelines.delivery.delivery_checks), so both read the same numbers the same way.
def settled_result(ledger: Ledger, name: str) -> dg.AssetCheckResult:
    """Passed when no item of ``name`` waits in doubt or failed."""
    counts = ledger.counts(name)
    pending = ledger.items(name, state="in_doubt", limit=5) + ledger.items(name, state="failed", limit=5)
    passed = counts["in_doubt"] == 0 and counts["failed"] == 0
    return dg.AssetCheckResult(passed=passed, metadata={
        **{f"items_{k}": dg.MetadataValue.int(v) for k, v in counts.items()},
        "examples": dg.MetadataValue.md("\n".join(f"- `{p['source_key']}` {p['state']}: {p['reason']}" for p in pending) or "none"),
    })


def rejected_share_result(ledger: Ledger, name: str, threshold: float) -> dg.AssetCheckResult:
    """Passed when rejected items are at most ``threshold`` of all the items of ``name``."""
    counts = ledger.counts(name)
    total = sum(counts.values())
    share = counts["rejected"] / total if total else 0.0
    return dg.AssetCheckResult(passed=share <= threshold, metadata={
        "rejected_share": dg.MetadataValue.float(round(share, 5)),
        "threshold": dg.MetadataValue.float(threshold),
        "rejection_reasons": reasons_table(ledger, name),
    })


def duplicates_result(ledger: Ledger, name: str) -> dg.AssetCheckResult:
    """A warning when items were sent again after an unknown outcome (possible duplicates at the vendor)."""
    items, resends = ledger.resent_unknown(name)
    return dg.AssetCheckResult(
        passed=resends == 0, severity=dg.AssetCheckSeverity.WARN,
        description=None if not resends else
        f"resent after an unknown outcome: {resends} — the vendor may hold up to {resends} duplicates",
        metadata={"items_resent_after_unknown_outcome": dg.MetadataValue.int(items),
                  "possible_duplicates": dg.MetadataValue.int(resends)},
    )


def _reconcile_check(spec: SyncSpec, delivered_key: dg.AssetKey) -> dg.AssetChecksDefinition:
    """Vendors with a read API (Flux, StreamBack): what the vendor holds vs what the ledger delivered."""
    vendor_key = resource_key(spec.vendor)

    @dg.asset_check(asset=delivered_key, name="reconciled_with_vendor", required_resource_keys={"syncline", vendor_key},
                    description=f"Reads back from {spec.vendor.title} and compares with the ledger's delivered items.")
    def reconciled(context: AssetCheckExecutionContext) -> dg.AssetCheckResult:
        vendor_res = getattr(context.resources, vendor_key)
        ledger = context.resources.syncline.open_ledger()
        try:
            report = runner.reconcile(spec, ledger, credentials=vendor_res.credentials(), base_url=vendor_res.base_url,
                                      run_id=context.run.run_id)
        finally:
            ledger.close()
        metadata: dict[str, Any] = {
            k: (dg.MetadataValue.int(v) if isinstance(v, int) and not isinstance(v, bool) else dg.MetadataValue.text(str(v)))
            for k, v in report.items() if v is not None
        }
        return dg.AssetCheckResult(passed=bool(report.get("matches")), metadata=metadata)

    return reconciled


def _schedule(spec: SyncSpec, job: Any) -> dg.ScheduleDefinition | None:
    if not spec.schedule:
        return None
    if not spec.partitioned:
        return dg.ScheduleDefinition(name=f"{spec.name}_schedule", cron_schedule=spec.schedule, job=job,
                                     execution_timezone="UTC")

    @dg.schedule(name=f"{spec.name}_schedule", cron_schedule=spec.schedule, job=job, execution_timezone="UTC",
                 description="Delivers yesterday and today (UTC) as one run: rows that landed after yesterday's "
                             "last tick are picked up; append mode skips what was delivered.")
    def _recent_days(context: ScheduleEvaluationContext) -> dg.RunRequest:
        when = (context.scheduled_execution_time or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
        today = when.date()
        first = max(today - dt.timedelta(days=1), spec.partition_start or today)
        return dg.RunRequest(run_key=f"{spec.name}:{when.isoformat()}", tags={
            "dagster/asset_partition_range_start": first.isoformat(),
            "dagster/asset_partition_range_end": today.isoformat(),
        })

    return _recent_days

