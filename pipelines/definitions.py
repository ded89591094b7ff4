"""The Dagster code location (``workspace.yaml`` -> ``pipelines.definitions``): every sync file's assets.

A sync file that does not load is reported in the log and skipped; the other syncs still load.
"""

from __future__ import annotations

import logging

import dagster as dg

from connectors.spec import load_syncs
from connectors.vendors import vendors
from pipelines.factory import build_sync
from pipelines.resources import SynclineResource, resource_key, vendor_resource

log = logging.getLogger("syncline")


def build_definitions() -> dg.Definitions:
    loaded = load_syncs()
    for error in loaded.errors:
        log.warning("syncline: skipped a sync file: %s", error)
    built = [build_sync(spec) for spec in loaded.syncs.values()]
    resources = {"syncline": SynclineResource(), **{resource_key(v): vendor_resource(v) for v in vendors().values()}}
    return dg.Definitions(
        assets=[b.assets for b in built],
        asset_checks=[c for b in built for c in b.checks],
        jobs=[b.job for b in built],
        schedules=[b.schedule for b in built if b.schedule is not None],
        sensors=[b.sensor for b in built if b.sensor is not None],
        resources=resources,
    )


defs = build_definitions()
