"""Sensors: a sync whose source is a Parquet glob runs when new files land there.

One run per new file set, never twice for the same file version, with a cursor of bounded size:

- A file's *arrival time* is ``max(mtime, ctime)``. ctime cannot be set from user space and moves on
  create, rename, write and metadata change, so a file copied in with an old preserved mtime (``cp -p``,
  ``rsync -t``, ``mv`` from a staging folder) still arrives *now*.
- The cursor holds a *floor* (nanoseconds) and the files that arrived after it (``near``: path, size,
  mtime, ctime). A file is seen when it arrived at or before the floor, or when its exact version is in
  ``near``. Everything else is new: a file arriving later, a file arriving with the same timestamp as
  one already seen (coarse filesystem clocks), and a file written again (a new mtime, ctime and usually
  size: a new version, so a new run).
- After each run request the floor moves up to ``WINDOW`` behind the newest arrival seen, and ``near``
  keeps only what arrived after the floor, so its size is what arrives within ``WINDOW`` (at most
  ``MAX_NEAR`` files; past that the floor rises further, though never to the newest arrival, nor past a
  new file not launched yet). The window covers listings racing with writers: a file linked into the
  folder just after a listing has a later ctime than anything that listing saw.
- New files go out oldest arrival first, at most ``MAX_FILES_PER_RUN`` a run; the rest wait for the next
  tick (the floor never passes them). Each run's ``run_key`` is a hash of its file versions, so Dagster
  itself also refuses a duplicate.
- Known costs of never missing a file: a metadata-only change (``chmod``, ``touch``) counts as a new
  version and starts a run, in which the ledger skips every row already delivered.

The run reads only the new files (``syncline/files`` tag); for a partitioned sync it covers the partition
range the new files' cursor values span. Cursors of the earlier format (a list of every file seen) are
read once and rewritten in this one.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

import dagster as dg
from dagster import SensorEvaluationContext

from connectors.spec import SyncSpec
from connectors.stage import parquet_cursor_days, parquet_glob

FILES_TAG = "syncline/files"
MAX_FILES_PER_RUN = 500
WINDOW_NS = 300 * 10**9  # files arriving up to 5 minutes behind the newest one seen are still checked by name
MAX_NEAR = 5_000  # most files the cursor lists, however many arrive within the window
CURSOR_VERSION = 2


@dataclass(frozen=True, order=True)
class FileVersion:
    """One version of one file, as a listing sees it."""

    arrived: int  # max(mtime, ctime), ns: first, so versions sort by arrival
    path: str
    size: int
    mtime: int  # ns

    @classmethod
    def of(cls, path: str) -> FileVersion | None:
        try:
            stat = os.stat(path)
        except FileNotFoundError:  # removed between the listing and the stat
            return None
        return cls(max(stat.st_mtime_ns, stat.st_ctime_ns), path, stat.st_size, stat.st_mtime_ns)

    @property
    def fingerprint(self) -> str:
        return f"{self.path}|{self.size}|{self.mtime}|{self.arrived}"

    def as_json(self) -> list[Any]:
        return [self.path, self.size, self.mtime, self.arrived]

    @classmethod
    def from_json(cls, row: list[Any]) -> FileVersion:
        path, size, mtime, arrived = row
        return cls(int(arrived), str(path), int(size), int(mtime))


@dataclass
class Cursor:
    floor: int = -1  # ns: files that arrived at or before it are seen
    near: frozenset[FileVersion] = frozenset()

    def seen(self, version: FileVersion) -> bool:
        return version.arrived <= self.floor or version in self.near

    def dumps(self) -> str:
        near = sorted(self.near)
        return json.dumps({"v": CURSOR_VERSION, "floor": self.floor, "near": [v.as_json() for v in near]},
                          separators=(",", ":"))


def load_cursor(raw: str | None, listing: list[FileVersion]) -> Cursor:
    """The cursor of a tick. An earlier cursor (a JSON list of ``path|size|mtime-seconds``) becomes a
    cursor whose ``near`` holds the listed files it had seen, with the floor below every listed file."""
    if not raw:
        return Cursor()
    data = json.loads(raw)
    if isinstance(data, dict):
        return Cursor(int(data["floor"]), frozenset(FileVersion.from_json(row) for row in data["near"]))
    old = set(data)
    seen = frozenset(v for v in listing if f"{v.path}|{v.size}|{v.mtime // 10**9}" in old)
    return Cursor(-1, seen)


def advance(cursor: Cursor, launched: list[FileVersion], waiting: list[FileVersion]) -> Cursor:
    """The cursor once ``launched`` is started; ``waiting`` are new files left for a later tick."""
    near = set(cursor.near) | set(launched)
    newest = max((v.arrived for v in near), default=cursor.floor)
    floor = max(cursor.floor, newest - WINDOW_NS)
    kept = sorted((v for v in near if v.arrived > floor), reverse=True)
    if len(kept) > MAX_NEAR:
        floor = max(floor, kept[MAX_NEAR].arrived)
    ceiling = min([newest, *(v.arrived for v in waiting)]) - 1  # never at the newest nor past a waiting file
    floor = max(cursor.floor, min(floor, ceiling))
    return Cursor(floor, frozenset(v for v in near if v.arrived > floor))


def plan_tick(raw_cursor: str | None, paths: list[str]) -> tuple[list[FileVersion], Cursor]:
    """(file versions to run now, oldest arrival first; the cursor after them) for a listing of ``paths``."""
    listing = sorted(v for v in (FileVersion.of(p) for p in paths) if v is not None)
    cursor = load_cursor(raw_cursor, listing)
    new = [v for v in listing if not cursor.seen(v)]
    launched, waiting = new[:MAX_FILES_PER_RUN], new[MAX_FILES_PER_RUN:]
    return launched, advance(cursor, launched, waiting)


def _day_range(spec: SyncSpec, files: list[str]) -> tuple[str, str] | None:
    row = parquet_cursor_days(spec, files)  # a timestamp, a date or an epoch number (source.cursor_unit)
    if row is None:
        return None
    first = max(row[0], spec.partition_start) if spec.partition_start else row[0]
    return first.isoformat(), row[1].isoformat()


def build_parquet_sensor(spec: SyncSpec, job: Any) -> dg.SensorDefinition:
    @dg.sensor(name=f"{spec.name}_new_files", job=job, minimum_interval_seconds=30,
               default_status=dg.DefaultSensorStatus.STOPPED,
               description=f"Runs {spec.name} for new Parquet files under {spec.source.parquet}.")
    def _sensor(context: SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
        launched, cursor = plan_tick(context.cursor, glob.glob(parquet_glob(spec), recursive=True))
        if not launched:
            if context.cursor and cursor.dumps() != context.cursor:  # an earlier cursor, rewritten
                return dg.SensorResult(run_requests=[], cursor=cursor.dumps())
            return dg.SkipReason(f"no new files under {spec.source.parquet}")
        new = [v.path for v in launched]
        fingerprints = sorted(v.fingerprint for v in launched)
        run_key = f"{spec.name}:" + hashlib.sha256("\n".join(fingerprints).encode()).hexdigest()[:24]
        tags = {FILES_TAG: json.dumps(new)}
        if spec.partitioned:
            span = _day_range(spec, new)
            if span is None:  # files with no rows: remember them, nothing to run
                return dg.SensorResult(run_requests=[], cursor=cursor.dumps())
            tags |= {"dagster/asset_partition_range_start": span[0], "dagster/asset_partition_range_end": span[1]}
        request = dg.RunRequest(run_key=run_key, tags=tags)
        return dg.SensorResult(run_requests=[request], cursor=cursor.dumps())

    return _sensor
