"""Sensors: a sync whose source is a Parquet glob runs when new files land there.

One run per new file set, never twice for the same file: the sensor's cursor keeps every file it has
launched a run for (name, size and modification time), and each run's ``run_key`` is a hash of its file
set, so Dagster itself also refuses a duplicate. The run reads only the new files (``syncline/files``
tag); for a partitioned sync it covers the partition range the new files' cursor values span.
"""

import glob
import hashlib
import json
import os
from typing import Any

import dagster as dg
import duckdb
from dagster import SensorEvaluationContext

from connectors.engine.payload import quote_ident, quote_literal
from connectors.spec import SyncSpec
from connectors.stage import parquet_glob

FILES_TAG = "syncline/files"
MAX_FILES_PER_RUN = 500


def _fingerprint(path: str) -> str:
    stat = os.stat(path)
    return f"{path}|{stat.st_size}|{int(stat.st_mtime)}"


def _day_range(spec: SyncSpec, files: list[str]) -> tuple[str, str] | None:
    assert spec.source.cursor
    listed = ", ".join(quote_literal(f) for f in files)
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        row = con.execute(
            f"SELECT CAST(min({quote_ident(spec.source.cursor)}) AS DATE), CAST(max({quote_ident(spec.source.cursor)}) AS DATE) "
            f"FROM read_parquet([{listed}], union_by_name = true)"
        ).fetchone()
    finally:
        con.close()
    if not row or row[0] is None:
        return None
    first = max(row[0], spec.partition_start) if spec.partition_start else row[0]
    return first.isoformat(), row[1].isoformat()


def build_parquet_sensor(spec: SyncSpec, job: Any) -> dg.SensorDefinition:
    @dg.sensor(name=f"{spec.name}_new_files", job=job, minimum_interval_seconds=30,
               default_status=dg.DefaultSensorStatus.STOPPED,
               description=f"Runs {spec.name} for new Parquet files under {spec.source.parquet}.")
    def _sensor(context: SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        seen: set[str] = set(json.loads(context.cursor)) if context.cursor else set()
        current = {_fingerprint(p): p for p in sorted(glob.glob(parquet_glob(spec), recursive=True))}
        new = [current[f] for f in sorted(current) if f not in seen][:MAX_FILES_PER_RUN]
        if not new:
            return dg.SkipReason(f"no new files under {spec.source.parquet}")
        fingerprints = [f for f in sorted(current) if current[f] in new]
        run_key = f"{spec.name}:" + hashlib.sha256("\n".join(fingerprints).encode()).hexdigest()[:24]
        tags = {FILES_TAG: json.dumps(new)}
        if spec.partitioned:
            span = _day_range(spec, new)
            if span is None:  # files with no rows: remember them, nothing to run
                return dg.SensorResult(run_requests=[], cursor=json.dumps(sorted(seen | set(fingerprints))))
            tags |= {"dagster/asset_partition_range_start": span[0], "dagster/asset_partition_range_end": span[1]}
        request = dg.RunRequest(run_key=run_key, tags=tags)
        return dg.SensorResult(run_requests=[request], cursor=json.dumps(sorted(seen | set(fingerprints))))

    return _sensor
