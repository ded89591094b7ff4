"""The Dagster code location (``workspace.yaml`` -> ``pipelines.definitions``): every sync file's assets.

A sync file that does not load, or whose assets cannot be built, is reported in the log (a warning per
problem, naming the file and the field) and skipped; the other syncs still load, so one broken file never
takes the code location down.
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
        for line in str(error).splitlines():
            log.warning("syncline: skipped a sync file: %s", line)
    built = []
    for spec in loaded.syncs.values():
        try:
            built.append(build_sync(spec))
        except Exception as exc:  # a sync Dagster refuses (a name, a cron) must not stop the others
            log.warning("syncline: skipped a sync file: %s: %s: %s", spec.file, exc.__class__.__name__, exc)
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
