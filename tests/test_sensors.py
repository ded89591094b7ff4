"""The Parquet sensor: one run per new file set, never twice for the same file, reading only new files."""

from __future__ import annotations

import json
import os

import dagster as dg
import duckdb

from pipelines.factory import build_sync
from pipelines.resources import SynclineResource, resource_key, vendor_resource
from pipelines.sensors import FILES_TAG

SYNC = """
    source: {parquet: "@HOME@/landing/*.parquet", key: id, cursor: ts}
    destination: {vendor: trubrics, endpoint: publish_events}
    partitions: {daily: {start: 2026-06-01}}
"""
SQL = "SELECT _key, user_id, 'Ping' AS event, ts AS timestamp FROM source"


SQL_NO_TS = SQL.replace(", ts AS timestamp", "")


def at_home(sync: str, home) -> str:
    """An absolute glob: relative ones are resolved from the sync file's folder, not the home."""
    return sync.replace("@HOME@", str(home))


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
    spec = write_sync("landing", at_home(SYNC, syncline_home), SQL)
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


# -- a bounded cursor: never a file missed, never a file version twice -----------------------------------
UNPARTITIONED = """
    source: {parquet: "@HOME@/landing/*.parquet", key: id}
    destination: {vendor: trubrics, endpoint: publish_events}
"""


def small_file(home, name: str, rows: int = 1, tag: str = "") -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = home / "landing"
    folder.mkdir(exist_ok=True)
    path = folder / name
    pq.write_table(pa.table({"id": [f"{name}{tag}-{i}" for i in range(rows)]}), path)
    return str(path)


def launched(result) -> list[str]:
    if isinstance(result, dg.SkipReason) or not result.run_requests:
        return []
    (request,) = result.run_requests
    return json.loads(request.tags[FILES_TAG])


def cursor_after(result, before):
    return before if isinstance(result, dg.SkipReason) else result.cursor


def test_a_file_written_again_runs_again_once(write_sync, syncline_home):
    sensor = build_sync(write_sync("landing", at_home(UNPARTITIONED, syncline_home), SQL_NO_TS)).sensor
    a = small_file(syncline_home, "a.parquet")
    first = tick(sensor, None)
    assert launched(first) == [a]

    small_file(syncline_home, "a.parquet", rows=3, tag="v2")  # the producer rewrites the file
    second = tick(sensor, first.cursor)
    assert launched(second) == [a]
    assert second.run_requests[0].run_key != first.run_requests[0].run_key  # a new version, a new run
    assert isinstance(tick(sensor, second.cursor), dg.SkipReason)


def test_a_file_landing_with_an_old_or_equal_mtime_is_not_missed(write_sync, syncline_home):
    sensor = build_sync(write_sync("landing", at_home(UNPARTITIONED, syncline_home), SQL_NO_TS)).sensor
    a = small_file(syncline_home, "a.parquet")
    first = tick(sensor, None)
    assert launched(first) == [a]
    mtime = os.stat(a).st_mtime_ns

    # Copied in with a preserved mtime: the same mtime as a file already seen, and one from 2020.
    b = small_file(syncline_home, "b.parquet")
    os.utime(b, ns=(mtime, mtime))
    c = small_file(syncline_home, "c.parquet")
    os.utime(c, (1_580_000_000, 1_580_000_000))
    second = tick(sensor, first.cursor)
    assert sorted(launched(second)) == [b, c]
    assert isinstance(tick(sensor, second.cursor), dg.SkipReason)


def test_cursor_stays_bounded_and_every_file_runs_exactly_once(write_sync, syncline_home, monkeypatch):
    from pipelines import sensors

    monkeypatch.setattr(sensors, "MAX_NEAR", 25)
    monkeypatch.setattr(sensors, "MAX_FILES_PER_RUN", 40)
    sensor = build_sync(write_sync("landing", at_home(UNPARTITIONED, syncline_home), SQL_NO_TS)).sensor
    written: list[str] = []
    runs: list[str] = []
    keys: set[str] = set()
    cursor = None
    sizes = []
    # Files land in bursts written back to back (many share a coarse filesystem timestamp) between ticks;
    # one burst is larger than a run takes, so the rest waits for the next tick.
    for burst in (3, 1, 17, 90, 2, 30, 1, 5):
        written += [small_file(syncline_home, f"f{len(written) + i:04d}.parquet") for i in range(burst)]
        result = tick(sensor, cursor)
        while launched(result):
            runs += launched(result)
            (request,) = result.run_requests
            assert request.run_key not in keys
            keys.add(request.run_key)
            cursor = result.cursor
            sizes.append(len(json.loads(cursor)["near"]))
            result = tick(sensor, cursor)
        cursor = cursor_after(result, cursor)
    assert sorted(runs) == sorted(written) and len(runs) == len(set(runs)) == 149
    assert max(sizes) <= 25 + 1  # the cap (ties at the newest arrival aside)
    assert len(cursor) < 5_000  # not a list of every file ever seen


def test_ties_at_the_newest_arrival_are_kept_by_name():
    from pipelines.sensors import Cursor, FileVersion, advance

    t = 1_750_000_000 * 10**9
    a, b = FileVersion(t, "/l/a.parquet", 10, t), FileVersion(t, "/l/b.parquet", 10, t)
    old = FileVersion(t - 400 * 10**9, "/l/old.parquet", 10, t - 400 * 10**9)
    cursor = advance(Cursor(), [old, a], [])
    assert cursor.seen(a) and cursor.seen(old)
    assert not cursor.seen(b)  # arrived with the same timestamp after the listing: still new
    assert old not in cursor.near  # far behind the newest arrival: remembered by the floor alone
    again = advance(cursor, [b], [])
    assert again.seen(a) and again.seen(b) and again.floor < t
    rewritten = FileVersion(t + 5, "/l/a.parquet", 12, t + 5)
    assert not again.seen(rewritten)


def test_an_earlier_cursor_listing_every_file_is_read_and_rewritten(write_sync, syncline_home):
    sensor = build_sync(write_sync("landing", at_home(UNPARTITIONED, syncline_home), SQL_NO_TS)).sensor
    a = small_file(syncline_home, "a.parquet")
    stat = os.stat(a)
    legacy = json.dumps([f"{a}|{stat.st_size}|{int(stat.st_mtime)}"])
    rewritten = tick(sensor, legacy)
    assert launched(rewritten) == [] and json.loads(rewritten.cursor)["v"] == 2
    b = small_file(syncline_home, "b.parquet")
    assert launched(tick(sensor, legacy)) == [b]  # from the old cursor directly, too
    assert launched(tick(sensor, rewritten.cursor)) == [b]
