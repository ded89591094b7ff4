"""The Parquet sensor: one run per new file set, never twice for the same file, reading only new files."""

from __future__ import annotations

import json

import dagster as dg
import duckdb

from pipelines.factory import build_sync
from pipelines.resources import SynclineResource, resource_key, vendor_resource
from pipelines.sensors import FILES_TAG

SYNC = """
    source: {parquet: "landing/*.parquet", key: id, cursor: ts}
    destination: {vendor: trubrics, endpoint: publish_events}
    partitions: {daily: {start: 2026-06-01}}
"""
SQL = "SELECT _key, user_id, 'Ping' AS event, ts AS timestamp FROM source"


def write_file(home, name: str, first: int, count: int, day: str) -> None:
    folder = home / "landing"
    folder.mkdir(exist_ok=True)
    con = duckdb.connect()
    con.execute(
        f"COPY (SELECT 'r' || i AS id, 'u' || i AS user_id, TIMESTAMPTZ '{day} 08:00:00+00' + i * INTERVAL 1 MINUTE AS ts "
        f"FROM range({first}, {first + count}) t(i)) TO '{folder / name}' (FORMAT parquet)"
    )
    con.close()


def tick(sensor, cursor):
    result = sensor(dg.build_sensor_context(cursor=cursor))
    return result


def test_new_files_start_one_run_each_set_and_never_twice(sandbox, write_sync, syncline_home):
    spec = write_sync("landing", SYNC, SQL)
    built = build_sync(spec)
    sensor = built.sensor
    assert sensor is not None

    assert isinstance(tick(sensor, None), dg.SkipReason)
    write_file(syncline_home, "a.parquet", 0, 30, "2026-06-02")
    write_file(syncline_home, "b.parquet", 30, 30, "2026-06-03")
    first = tick(sensor, None)
    (request,) = first.run_requests
    assert sorted(json.loads(request.tags[FILES_TAG])) == [str(syncline_home / "landing" / n) for n in ("a.parquet", "b.parquet")]
    assert request.tags["dagster/asset_partition_range_start"] == "2026-06-02"
    assert request.tags["dagster/asset_partition_range_end"] == "2026-06-03"

    again = tick(sensor, first.cursor)
    assert isinstance(again, dg.SkipReason)  # the same files never start a second run

    resources = {"syncline": SynclineResource(), resource_key(spec.vendor): vendor_resource(spec.vendor)}
    assert dg.materialize([built.assets], resources=resources, tags=request.tags).success
    assert len(sandbox.records("trubrics", "publish_events")) == 60

    write_file(syncline_home, "c.parquet", 60, 10, "2026-06-03")
    third = tick(sensor, first.cursor)
    (new_request,) = third.run_requests
    assert json.loads(new_request.tags[FILES_TAG]) == [str(syncline_home / "landing" / "c.parquet")]
    assert new_request.run_key != request.run_key
    result = dg.materialize([built.assets], resources=resources, tags=new_request.tags)
    delivered = next(m for m in result.asset_materializations_for_node("landing__sync")
                     if m.asset_key.path[-1] == "delivered").metadata
    assert delivered["source_rows"].value == 10  # only the new file was read
    assert len(sandbox.records("trubrics", "publish_events")) == 70
