"""Side-by-side throughput: syncline against the usual alternatives, on one Parquet file and one sink.

    .venv/bin/python benchmarks/bench_compare.py --events 100000 --out docs/performance-compare.md
    .venv/bin/python benchmarks/bench_compare.py --events 1000000 --scenarios A --out docs/performance-compare.md

What is compared, and why it is fair:

- One seeded synthetic Parquet file (Trubrics ``publish_events`` shape) is built once with DuckDB; every
  contender reads it and sends each row as ``{"user_id", "event", "timestamp" (ISO 8601, +00:00),
  "properties": {"$thread_id", "plan"}}``, 100 items per JSON-array POST with ``x-api-key``.
- The sink (``benchmarks/sink.py``) runs in its own process, keeps a count and an order-independent
  checksum of every item, and the harness compares both with what the Parquet file says should arrive:
  a run whose figures do not match is marked FAILED and its events/s does not count.
- Every contender runs in its own subprocess (its own session, so a timeout kills its whole tree), so
  peak RSS (``ru_maxrss`` from ``os.wait4``) and CPU seconds (user + sys) are its own.
- Scenario A: the sink answers at once. Scenario B: it answers each request after 100 ms; concurrent
  contenders use 64 requests in flight, single-stream ones are capped to ``--capped-events`` (a smaller
  file cut from the same data) so the whole benchmark stays bounded.

- ``--repeat N`` runs every contender N times in rotated rounds and reports medians: this machine's
  speed drifts within a run, so one pass can move a ratio by a third.

Seconds are wall-clock of the whole subprocess (interpreter start, imports, reading, serialising,
sending) for the tools; the floors build every request body first and time only the sending.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import time_bound  # noqa: E402
from benchmarks.sink import MASK, item_hash  # noqa: E402

BIN = Path(sys.executable).parent  # the venv this harness runs in: syncline, drt and dlt live there
SINK = ROOT / "benchmarks" / "sink.py"
API_KEY = "bench-key"
ITEMS_PER_REQUEST = 100
PATH = "/publish_events"
POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SYNCLINE_MAX_CONCURRENCY = 64
# No contender may phone home: this benchmark sends traffic to 127.0.0.1 only.
QUIET_ENV = {"RUNTIME__DLTHUB_TELEMETRY": "false", "DO_NOT_TRACK": "1", "DRT_TELEMETRY": "0"}

BUILD_SQL = """COPY (
    SELECT 'evt_' || i AS event_id,
           'user_' || ((i * 7919) % 50000) AS user_id,
           (['Signed up', 'Viewed pricing', 'Started trial', 'Upgraded plan'])[1 + (i * 31) % 4] AS event_name,
           TIMESTAMPTZ '2026-06-01 00:00:00+00' + ((i * 104729) % 604800) * INTERVAL 1 SECOND
               + (i % 1000) * INTERVAL 1 MILLISECOND AS occurred_at,
           'thread_' || (i % 9973) AS thread_id,
           (['free', 'team', 'enterprise'])[1 + i % 3] AS plan
    FROM range({n}) t(i) ORDER BY i
) TO '{out}' (FORMAT parquet, ROW_GROUP_SIZE 100000)"""

SYNCLINE_SQL = (
    "SELECT _key, user_id, event_name AS event, occurred_at AS timestamp, "
    "{'$thread_id': thread_id, 'plan': plan} AS properties FROM source"
)


# --------------------------------------------------------------------------------------------------
# Data and the expected sink figures
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dataset:
    """A Parquet file and what the sink must have received once it has all been sent."""

    path: Path
    events: int
    checksum: int


def build_parquet(out: Path, events: int) -> None:
    """Deterministic rows (no RNG, so every run and every machine gets the same file)."""
    import duckdb

    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute(BUILD_SQL.format(n=int(events), out=str(out).replace("'", "''")))
    finally:
        con.close()


def expected_of(path: Path) -> Dataset:
    """Count and checksum with the sink's own formula (``sink.item_hash``), straight from the file."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    total = rows = 0
    columns = ["user_id", "event_name", "occurred_at", "thread_id"]
    for batch in pq.ParquetFile(path).iter_batches(batch_size=100_000, columns=columns):
        micros = pc.cast(batch.column("occurred_at"), pa.timestamp("us", tz="UTC")).cast(pa.int64())
        for user, event, us, thread in zip(batch.column("user_id").to_pylist(), batch.column("event_name").to_pylist(),
                                           micros.to_pylist(), batch.column("thread_id").to_pylist(), strict=True):
            total += item_hash(user, event, us, thread)
        rows += batch.num_rows
    return Dataset(path, rows, total & MASK)


def prepare_main(argv: list[str]) -> None:
    """``bench_compare.py prepare``: build both files and print their expected figures as JSON."""
    parser = argparse.ArgumentParser(prog="bench_compare.py prepare")
    parser.add_argument("--folder", required=True)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--capped", type=int, required=True)
    opts = parser.parse_args(argv)
    found = {}
    for name, events in (("full", opts.events), ("capped", min(opts.events, opts.capped))):
        path = Path(opts.folder) / f"events_{name}.parquet"
        build_parquet(path, events)
        data = expected_of(path)
        found[name] = {"path": str(data.path), "events": data.events, "checksum": data.checksum}
    print(json.dumps(found))


def prepare_data(folder: Path, events: int, capped: int, timeout: float) -> tuple[Dataset, Dataset]:
    """The full file and the capped one (its first ``capped`` rows) for single-stream runs in B.

    Built in a child process on purpose: a forked child starts with its parent's peak RSS (Linux keeps
    ``ru_maxrss`` across exec), so the harness must never load DuckDB or Arrow itself, or every
    contender would be charged for them.
    """
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "prepare", "--folder", str(folder),
         "--events", str(events), "--capped", str(capped)],
        capture_output=True, text=True, timeout=timeout, check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"could not build the data: {done.stderr.strip().splitlines()[-1:] or done.returncode}")
    found = json.loads(done.stdout.strip().splitlines()[-1])
    full, cap = (Dataset(Path(found[k]["path"]), int(found[k]["events"]), int(found[k]["checksum"]))
                 for k in ("full", "capped"))
    return full, cap


# --------------------------------------------------------------------------------------------------
# The sink process
# --------------------------------------------------------------------------------------------------


class Sink:
    """``benchmarks/sink.py`` in its own process; ``stats()``/``reset()`` over HTTP."""

    def __init__(self, delay_ms: float, log: Path) -> None:
        self.port = free_port()
        self.log = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, str(SINK), "--port", str(self.port), "--delay-ms", str(delay_ms)],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sink exited at start; see {log}")
            with contextlib.suppress(OSError):
                self.stats()
                return
            time.sleep(0.05)
        self.close()
        raise RuntimeError("sink did not start within 20 s")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _call(self, method: str, path: str) -> dict[str, Any]:
        request = urllib.request.Request(self.url + path, method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(request, timeout=10) as resp:
            return dict(json.load(resp))

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/_stats")

    def reset(self) -> None:
        self._call("POST", "/_reset")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------------------------------
# Running one contender
# --------------------------------------------------------------------------------------------------


@dataclass
class Launch:
    """How to start one contender: command, environment, folder; ``cleanup`` runs after it ends."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    cleanup: Callable[[], None] | None = None
    note: str = ""


@dataclass
class Result:
    scenario: str
    contender: str
    events: int = 0
    seconds: float = 0.0
    wall_s: float = 0.0
    events_per_s: float | None = None
    peak_rss_mb: float = 0.0
    harness_rss_mb: float = 0.0  # a child's ru_maxrss starts at its parent's RSS at fork: the floor of the figure
    cpu_s: float = 0.0
    cpu_s_per_million: float | None = None
    sink_cpu_s: float = 0.0  # the sink's own CPU over the contender's run (it shares the cores)
    sink_cpu_s_per_million: float | None = None
    sink_items: int = 0
    sink_requests: int = 0
    sink_rejected_requests: int = 0
    sink_max_in_flight: int = 0
    expected_items: int = 0
    check_ok: bool = False
    check: str = ""
    capped: bool = False
    error: str = ""
    note: str = ""
    exit_code: int | None = None
    command: str = ""
    ratio: float | None = None  # events/s over syncline (SQLite)'s in the same round (set_ratios)


@dataclass
class Context:
    """What every contender builder needs for one run."""

    scenario: str
    data: Dataset
    sink: Sink
    work: Path
    concurrency: int | None  # None: the contender's default
    parallel: bool  # scenario B: concurrent contenders should use ~64 requests in flight
    args: argparse.Namespace
    extra_env: dict[str, str] = field(default_factory=dict)


def base_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNCLINE_", "TRUBRICS_", "DLT_"))}
    env.update(QUIET_ENV)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def wait_bounded(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, Any, bool]:
    """Reap ``proc`` with its rusage (``os.wait4``), killing its whole session after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                return proc.returncode, usage, False
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)
    except BaseException:  # the harness's own time bound or Ctrl-C: leave no contender behind
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.wait4(proc.pid, 0)
        raise
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage, True


def first_error_line(path: Path) -> str:
    """The most telling line of a contender's stderr: the last exception line, else the first line."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    for line in reversed(lines):
        if "Error" in line or "error:" in line or "Exception" in line:
            return line[:240]
    return lines[0][:240] if lines else ""


def run_one(ctx: Context, name: str, launch: Launch, capped: bool) -> Result:
    result = Result(scenario=ctx.scenario, contender=name, capped=capped, expected_items=ctx.data.events,
                    note=launch.note, command=shlex.join(launch.argv))
    out_path, err_path = ctx.work / f"{name}.stdout", ctx.work / f"{name}.stderr"
    try:
        ctx.sink.reset()
        with out_path.open("wb") as out, err_path.open("wb") as err:
            result.harness_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            started = time.perf_counter()
            proc = subprocess.Popen(launch.argv, env=launch.env, cwd=launch.cwd, stdout=out, stderr=err,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            code, usage, timed_out = wait_bounded(proc, ctx.args.timeout)
            result.wall_s = time.perf_counter() - started
        result.exit_code = code
        result.peak_rss_mb = usage.ru_maxrss / 1024
        result.cpu_s = usage.ru_utime + usage.ru_stime
        stats = ctx.sink.stats()
    except Exception as exc:  # the harness must report and go on, never stop at one contender
        result.error = f"{type(exc).__name__}: {exc}"[:240]
        result.check = "FAILED"
        return result
    finally:
        if launch.cleanup:
            try:
                launch.cleanup()
            except Exception as exc:
                result.note = (result.note + f"; cleanup failed: {exc}").strip("; ")
    result.sink_items = int(stats["items"])
    result.sink_requests = int(stats["requests"])
    result.sink_rejected_requests = int(stats["rejected_requests"])
    result.sink_max_in_flight = int(stats["max_in_flight"])
    result.sink_cpu_s = float(stats.get("cpu_s", 0.0))
    child = child_report(out_path)
    result.seconds = float(child.get("seconds") or result.wall_s)
    if "cpu_s" in child:
        result.cpu_s = float(child["cpu_s"])
    if timed_out:
        result.error = f"timed out after {ctx.args.timeout:.0f} s (killed)"
    elif code != 0:
        result.error = f"exit {code}: {first_error_line(err_path) or first_error_line(out_path)}"
    count_ok = result.sink_items == ctx.data.events
    sum_ok = int(stats["checksum"]) == ctx.data.checksum
    result.check_ok = count_ok and sum_ok and not result.error
    if result.check_ok:
        result.check = "ok"
    else:
        why = [] if count_ok else [f"count {result.sink_items} != {ctx.data.events}"]
        why += [] if sum_ok or not count_ok else ["checksum differs"]
        why += [f"{result.sink_rejected_requests} requests refused"] if result.sink_rejected_requests else []
        result.check = "FAILED" + (f" ({'; '.join(why)})" if why else "")
    result.events = ctx.data.events if result.check_ok else result.sink_items
    if result.check_ok and result.seconds > 0:
        result.events_per_s = result.events / result.seconds
        result.cpu_s_per_million = result.cpu_s / result.events * 1e6
        result.sink_cpu_s_per_million = result.sink_cpu_s / result.events * 1e6
    return result


def child_report(stdout: Path) -> dict[str, Any]:
    """The ``RESULT {...}`` line a contender of ours prints (floors time only their sending)."""
    try:
        for line in reversed(stdout.read_text(errors="replace").splitlines()):
            if line.startswith("RESULT "):
                return dict(json.loads(line[7:]))
    except (OSError, ValueError):
        pass
    return {}


# --------------------------------------------------------------------------------------------------
# Contender launchers (in the harness) ...
# --------------------------------------------------------------------------------------------------


def launch_syncline(ctx: Context, ledger: str) -> Launch:
    """``syncline run bench`` on a sync file written for this run, fresh SYNCLINE_HOME each time."""
    folder = Path(tempfile.mkdtemp(prefix="syncs-", dir=ctx.work))
    home = Path(tempfile.mkdtemp(prefix="home-", dir=ctx.work))
    (folder / "bench.sql").write_text(SYNCLINE_SQL + "\n")
    delivery = f"delivery: {{concurrency: {ctx.concurrency}}}\n" if ctx.concurrency else ""
    (folder / "bench.yaml").write_text(
        "name: bench\n"
        f"source: {{parquet: {json.dumps(str(ctx.data.path))}, key: event_id, cursor: occurred_at}}\n"
        "destination: {vendor: trubrics, endpoint: publish_events}\n"
        "model: bench.sql\n" + delivery
    )
    env = base_env({
        "SYNCLINE_SYNCS_DIR": str(folder), "SYNCLINE_HOME": str(home),
        "TRUBRICS_BASE_URL": ctx.sink.url, "TRUBRICS_API_KEY": API_KEY,
    })
    cleanup: Callable[[], None] = lambda: shutil.rmtree(home, ignore_errors=True)  # noqa: E731
    note = f"concurrency {ctx.concurrency}" if ctx.concurrency else "default concurrency"
    if ledger == "postgres":
        db = f"syncline_bench_{os.getpid()}_{int(time.time() * 1000) % 10**9}"
        postgres_admin(f'CREATE DATABASE "{db}"')
        env["SYNCLINE_LEDGER_URL"] = f"postgresql://postgres@127.0.0.1:5432/{db}"

        def cleanup() -> None:
            shutil.rmtree(home, ignore_errors=True)
            postgres_admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')

    argv, cwd = [str(BIN / "syncline"), "run", "bench"], ROOT
    if ctx.args.syncline_src:  # another tree of syncline (e.g. `git archive HEAD`): same CLI, its code
        src = Path(ctx.args.syncline_src).resolve()
        # `python -m` puts the working folder first on sys.path, so run from that tree, not from ROOT
        # (whose editable install would otherwise win).
        env["PYTHONPATH"] = str(src) + os.pathsep + env.get("PYTHONPATH", "")
        argv, cwd = [sys.executable, "-m", "pipelines.cli", "run", "bench"], src
        note += f", code from {src}"
    return Launch(argv, env, cwd, cleanup, note)


POSTGRES_ADMIN_SCRIPT = """import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True, connect_timeout=10) as con:
    con.execute(sys.argv[2])
"""


def postgres_admin(sql: str) -> None:
    """CREATE/DROP DATABASE via psycopg in a short child process (keeps psycopg out of the harness's RSS)."""
    done = subprocess.run([sys.executable, "-c", POSTGRES_ADMIN_SCRIPT, POSTGRES_ADMIN_URL, sql],
                          capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise RuntimeError((done.stderr.strip().splitlines() or ["psycopg failed"])[-1])


def launch_child(ctx: Context, kind: str, **options: Any) -> Launch:
    """One of the contenders implemented below, as ``bench_compare.py child KIND``."""
    argv = [sys.executable, str(Path(__file__).resolve()), "child", kind, "--parquet", str(ctx.data.path),
            "--url", ctx.sink.url + PATH, "--time-limit", str(max(int(ctx.args.timeout) - 5, 1))]
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    work = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=ctx.work))
    argv += ["--work", str(work)]
    note = ", ".join(f"{k} {v}" for k, v in options.items())
    return Launch(argv, base_env(), work, lambda: shutil.rmtree(work, ignore_errors=True), note)


DRT_BATCH = 10_000  # records per destination.load(): drt opens one httpx.Client per load call


def launch_drt(ctx: Context) -> Launch:
    """A drt project (DuckDB profile reading the Parquet file, ``rest_api`` destination in batch mode).

    Tuned as its docs allow: ``body_mode: batch`` with 100 records per request, a large ``batch_size``
    (each load call opens a fresh httpx client, so fewer calls keep connections alive longer),
    ``rate_limit.requests_per_second: 0`` (pacing off; the default is 10 req/s) and streaming fetches.
    drt runs one sync on one thread (``--threads`` parallelises across syncs only).
    """
    project = Path(tempfile.mkdtemp(prefix="drt-", dir=ctx.work))
    home = project / "home"
    (home / ".drt").mkdir(parents=True)
    (home / ".drt" / "profiles.yml").write_text(
        "bench:\n  type: duckdb\n  database: ':memory:'\n  fetch_size: 10000\n"
    )
    (project / "drt_project.yml").write_text("name: bench\nversion: '0.1'\nprofile: bench\n")
    (project / "syncs").mkdir()
    parquet = str(ctx.data.path).replace("'", "''")
    model = (
        "SELECT user_id, event_name AS event, "
        "strftime(timezone('UTC', occurred_at), '%Y-%m-%dT%H:%M:%S.%g+00:00') AS timestamp, "
        "{'$thread_id': thread_id, 'plan': plan} AS properties "
        f"FROM read_parquet('{parquet}')"
    )
    sync = {
        "name": "bench",
        "description": "Parquet -> Trubrics-shaped sink",
        "model": model,
        "destination": {
            "type": "rest_api",
            "url": ctx.sink.url + PATH,
            "method": "POST",
            "headers": {"Content-Type": "application/json"},
            "auth": {"type": "api_key", "header": "x-api-key", "value_env": "BENCH_API_KEY"},
            "body_mode": "batch",
            "batch_template": "{{ rows | tojson_safe }}",
            "max_records_per_request": ITEMS_PER_REQUEST,
        },
        "sync": {
            "mode": "full",
            "batch_size": DRT_BATCH,
            "rate_limit": {"requests_per_second": 0},
            "on_error": "fail",
        },
    }
    (project / "syncs" / "bench.yml").write_text(json.dumps(sync, indent=2))  # JSON is YAML
    env = base_env({"HOME": str(home), "BENCH_API_KEY": API_KEY})
    return Launch([str(BIN / "drt"), "run", "--select", "bench"], env, project,
                  lambda: shutil.rmtree(project, ignore_errors=True),
                  f"batch_size {DRT_BATCH}, 100/request, pacing off, single thread")


# --------------------------------------------------------------------------------------------------
# ... and the contenders themselves, run as `bench_compare.py child KIND ...`
# --------------------------------------------------------------------------------------------------


def iso_ms(value: dt.datetime) -> str:
    """The timestamp the way syncline writes it: UTC, milliseconds, ``+00:00``."""
    return value.astimezone(dt.UTC).isoformat(timespec="milliseconds")


def report(**values: Any) -> None:
    print("RESULT " + json.dumps(values), flush=True)


def child_pandas_requests(opts: argparse.Namespace) -> None:
    """The natural ten-minute script: pandas itertuples, a dict per row, 100 per POST, one Session."""
    import pandas as pd
    import requests

    df = pd.read_parquet(opts.parquet)
    session = requests.Session()
    headers = {"x-api-key": API_KEY, "Content-Type": "application/json"}
    deadline = time.monotonic() + opts.time_limit
    batch: list[dict[str, Any]] = []

    def post() -> None:
        response = session.post(opts.url, data=json.dumps(batch), headers=headers, timeout=30)
        response.raise_for_status()
        batch.clear()
        if time.monotonic() > deadline:
            raise SystemExit("time limit reached")

    for row in df.itertuples(index=False):
        batch.append({
            "user_id": row.user_id, "event": row.event_name, "timestamp": row.occurred_at.isoformat(timespec="milliseconds"),
            "properties": {"$thread_id": row.thread_id, "plan": row.plan},
        })
        if len(batch) == ITEMS_PER_REQUEST:
            post()
    if batch:
        post()


def _row_item(row: dict[str, Any]) -> dict[str, Any]:
    occurred = row["occurred_at"]
    stamp = occurred if isinstance(occurred, str) else iso_ms(occurred)
    return {"user_id": row["user_id"], "event": row["event_name"], "timestamp": stamp,
            "properties": {"$thread_id": row["thread_id"], "plan": row["plan"]}}


def child_dlt(opts: argparse.Namespace, arrow: bool) -> None:
    """dlt: a resource over the Parquet file and a ``@dlt.destination`` that POSTs each batch of 100.

    Tuning (dlt's documented knobs): ``max_parallel_load_jobs`` / ``load.workers`` = ``--workers``
    with the ``parallel`` strategy, and ``data_writer.file_max_items`` sized so there are enough load
    files (a load job is one file; parallelism is across files). Dict mode yields row dicts and loads
    through ``typed-jsonl``; Arrow mode yields record batches and loads through ``parquet``.
    """
    workers = int(opts.workers)
    os.environ["LOAD__WORKERS"] = str(workers)
    os.environ["DATA_WRITER__FILE_MAX_ITEMS"] = str(int(opts.file_max_items))
    os.environ["DATA_WRITER__BUFFER_MAX_ITEMS"] = str(min(int(opts.file_max_items), 50_000))
    import dlt
    import pyarrow.parquet as pq
    import requests

    local = threading.local()
    headers = {"x-api-key": API_KEY, "Content-Type": "application/json"}
    file_format: Literal["parquet", "typed-jsonl"] = "parquet" if arrow else "typed-jsonl"

    def session() -> requests.Session:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        found: requests.Session = local.session
        return found

    @dlt.destination(batch_size=ITEMS_PER_REQUEST, loader_file_format=file_format, name="bench_sink",
                     max_table_nesting=0, max_parallel_load_jobs=workers, loader_parallelism_strategy="parallel")
    def bench_sink(items: Any, table: Any) -> None:
        rows = items.to_pylist() if arrow else items
        body = json.dumps([_row_item(r) for r in rows])
        response = session().post(opts.url, data=body, headers=headers, timeout=30)
        response.raise_for_status()

    columns = ["user_id", "event_name", "occurred_at", "thread_id", "plan"]

    # Arrow batches are written whole, so no larger than a load file: otherwise fewer files, less parallelism.
    read_rows = min(10_000, int(opts.file_max_items))

    @dlt.resource(name="events", write_disposition="append")
    def events() -> Iterator[Any]:
        for batch in pq.ParquetFile(opts.parquet).iter_batches(batch_size=read_rows, columns=columns):
            yield batch if arrow else batch.to_pylist()

    pipeline = dlt.pipeline(pipeline_name=f"bench_{'arrow' if arrow else 'dict'}", destination=bench_sink,
                            pipelines_dir=str(Path(opts.work) / "dlt"))
    info = pipeline.run(events(), loader_file_format=file_format)
    info.raise_on_failed_jobs()


def _prebuilt_bodies(path: str) -> list[bytes]:
    """Every request body, serialised before any clock starts (the floors measure sending only)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["user_id", "event_name", "occurred_at", "thread_id", "plan"])
    rows = [_row_item(r) for r in table.to_pylist()]
    return [json.dumps(rows[i:i + ITEMS_PER_REQUEST]).encode() for i in range(0, len(rows), ITEMS_PER_REQUEST)]


def _send_http_client(url: str, bodies: list[bytes], deadline: float) -> None:
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    headers = {"x-api-key": API_KEY, "Content-Type": "application/json"}
    try:
        for body in bodies:
            conn.request("POST", parts.path, body, headers)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"sink answered {response.status}")
            if time.monotonic() > deadline:
                raise SystemExit("time limit reached")
    finally:
        conn.close()


def child_floor(opts: argparse.Namespace, kind: str) -> None:
    """Lower bounds for a Python client: bodies are ready, only HTTP is timed (CPU of that phase too)."""
    bodies = _prebuilt_bodies(opts.parquet)
    deadline = time.monotonic() + opts.time_limit
    cpu0, t0 = time.process_time(), time.perf_counter()
    if kind == "floor_http_client":
        _send_http_client(opts.url, bodies, deadline)
    elif kind == "floor_requests":
        import requests

        session = requests.Session()
        headers = {"x-api-key": API_KEY, "Content-Type": "application/json"}
        for body in bodies:
            session.post(opts.url, data=body, headers=headers, timeout=30).raise_for_status()
            if time.monotonic() > deadline:
                raise SystemExit("time limit reached")
    else:  # floor_threads: N threads, each its own http.client connection and its own share of bodies
        threads_n = int(opts.threads)
        errors: list[BaseException] = []

        def work(share: list[bytes]) -> None:
            try:
                _send_http_client(opts.url, share, deadline)
            except BaseException as exc:  # noqa: B036 — re-raised in the main thread below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(bodies[i::threads_n],)) for i in range(threads_n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
    report(seconds=time.perf_counter() - t0, cpu_s=time.process_time() - cpu0, requests=len(bodies))


def child_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="bench_compare.py child")
    parser.add_argument("kind", choices=["pandas_requests", "dlt_dict", "dlt_arrow", "floor_http_client",
                                         "floor_requests", "floor_threads"])
    parser.add_argument("--parquet", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--time-limit", type=float, default=600)
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--file-max-items", type=int, default=100_000)
    opts = parser.parse_args(argv)
    time_bound(int(opts.time_limit) + 2)  # before the harness's kill (5 s later): stop with a message
    if opts.kind == "pandas_requests":
        child_pandas_requests(opts)
    elif opts.kind in ("dlt_dict", "dlt_arrow"):
        child_dlt(opts, arrow=opts.kind == "dlt_arrow")
    else:
        child_floor(opts, opts.kind)


# --------------------------------------------------------------------------------------------------
# Scenarios, the tables, main
# --------------------------------------------------------------------------------------------------


@dataclass
class Entry:
    """One row of a scenario: a name, whether it runs on the capped file, and how to launch it."""

    name: str
    capped: bool
    launch: Callable[[Context], Launch]


def entries(scenario: str, args: argparse.Namespace) -> list[Entry]:
    concurrent = scenario == "B"
    events = args.events
    if concurrent:
        dlt_opts = {"workers": 64, "file_max_items": max(1000, -(-events // 64))}
    else:
        dlt_opts = {"workers": 4, "file_max_items": max(10_000, -(-events // 8))}
    found: list[Entry] = [
        Entry("syncline (SQLite ledger)", False, lambda c: launch_syncline(c, "sqlite")),
        Entry("syncline (Postgres ledger)", False, lambda c: launch_syncline(c, "postgres")),
        Entry("pandas itertuples + requests", concurrent, lambda c: launch_child(c, "pandas_requests")),
        Entry("dlt @destination, dicts (typed-jsonl)", False, lambda c: launch_child(c, "dlt_dict", **dlt_opts)),
        Entry("dlt @destination, Arrow (parquet)", False, lambda c: launch_child(c, "dlt_arrow", **dlt_opts)),
        Entry("drt-core rest_api batch", concurrent, launch_drt),
        Entry("floor: http.client, 1 connection", concurrent, lambda c: launch_child(c, "floor_http_client")),
        Entry("floor: requests.Session", concurrent, lambda c: launch_child(c, "floor_requests")),
    ]
    if concurrent:
        found.append(Entry(f"floor: http.client, {args.threads} threads", False,
                           lambda c: launch_child(c, "floor_threads", threads=args.threads)))
    if args.only:
        wanted = [w.lower() for w in args.only]
        found = [e for e in found if any(w in e.name.lower() for w in wanted)]
    return found


def run_entry(scenario: str, entry: Entry, args: argparse.Namespace, data: Dataset, sink: Sink, work: Path,
              label: str = "") -> Result:
    """One contender's run against ``sink`` (printed as it finishes)."""
    concurrency = (args.concurrency_b if scenario == "B" else args.concurrency) if "syncline" in entry.name else None
    ctx = Context(scenario, data, sink, work, concurrency, scenario == "B", args)
    print(f"[{scenario}{label}] {entry.name}: {data.events:,} events ...", end=" ", flush=True)
    try:
        launch = entry.launch(ctx)
    except Exception as exc:
        result = Result(scenario=scenario, contender=entry.name, capped=entry.capped,
                        expected_items=data.events, check="FAILED",
                        error=f"could not set up: {type(exc).__name__}: {exc}"[:240])
    else:
        result = run_one(ctx, entry.name, launch, entry.capped)
        if ("syncline" in entry.name and concurrency and concurrency > SYNCLINE_MAX_CONCURRENCY
                and "concurrency" in result.error):
            ctx.concurrency = SYNCLINE_MAX_CONCURRENCY  # refused above 64: cap, as documented
            result = run_one(ctx, entry.name, entry.launch(ctx), entry.capped)
            result.note += f" (capped from {concurrency})"
    rate = f"{result.events_per_s:,.0f} ev/s" if result.events_per_s else "-"
    print(f"{rate}, {result.seconds:.1f} s, {result.peak_rss_mb:.0f} MB, {result.check}"
          + (f" [{result.error}]" if result.error else ""), flush=True)
    result.note = result.note.strip()
    return result


BASE = "syncline (SQLite ledger)"  # the contender every ratio is to


def set_ratios(results: list[Result]) -> None:
    """Each result's events/s over syncline (SQLite)'s in the same round (none if that run failed its check)."""
    base = next((r.events_per_s for r in results if r.contender == BASE and r.events_per_s and r.check_ok), None)
    for r in results:
        if base and r.events_per_s:
            r.ratio = r.events_per_s / base


def run_scenario(scenario: str, args: argparse.Namespace, full: Dataset, capped: Dataset, work: Path,
                 rounds: list[list[Result]] | None = None) -> list[Result]:
    """Every contender once per round (``--repeat``); with more than one round, each contender's median.

    Why rounds, rotated: this machine's speed drifts within a run (the sink's own CPU per million items,
    the same work every time, moved 1.3-1.6x between contenders a minute apart). Round k starts k
    contenders later, so no contender always runs in the same stretch, and each ratio is taken within its
    round (the contender over syncline of the same round) before the median of the rounds is taken.
    ``rounds`` receives every round's results (the JSON keeps them all)."""
    delay = 100.0 if scenario == "B" else 0.0
    sink = Sink(delay, work / f"sink-{scenario}.log")
    listed = entries(scenario, args)
    found = rounds if rounds is not None else []
    try:
        for number in range(args.repeat):
            shift = number % len(listed) if listed else 0
            label = f" round {number + 1}/{args.repeat}" if args.repeat > 1 else ""
            done = {e.name: run_entry(scenario, e, args, capped if e.capped else full, sink, work, label)
                    for e in listed[shift:] + listed[:shift]}
            found.append([done[e.name] for e in listed])
    finally:
        sink.close()
    for results in found:
        set_ratios(results)
    if len(found) == 1:
        return found[0]
    return [median_of([results[i] for results in found]) for i in range(len(listed))]


def median_of(runs: list[Result]) -> Result:
    """The run with the median events/s among the runs whose sink check passed (the lower median for an
    even count), its ratio the median of the rounds' ratios; its check is "ok" only when every run's was."""
    valid = sorted((r for r in runs if r.check_ok and r.events_per_s), key=lambda r: r.events_per_s or 0.0)
    if not valid:
        return runs[-1]
    picked = replace(valid[(len(valid) - 1) // 2])
    ratios = [r.ratio for r in valid if r.ratio is not None]
    picked.ratio = statistics.median(ratios) if ratios else None
    rates = [r.events_per_s or 0.0 for r in valid]
    spread = f"median of {len(valid)} runs, {min(rates):,.0f}-{max(rates):,.0f} ev/s"
    if len(valid) < len(runs):
        picked.check = f"FAILED in {len(runs) - len(valid)} of {len(runs)} runs"
        picked.check_ok = False
    picked.note = ", ".join(n for n in (spread, picked.note) if n)
    return picked


def markdown_table(results: list[Result]) -> str:
    head = ("| contender | events | seconds | events/s | ratio to syncline (SQLite) | peak RSS MB | CPU s / M events"
            " | sink CPU s / M | sink check | notes |\n|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
    rows = [head]
    for r in results:
        rate = f"{r.events_per_s:,.0f}" if r.events_per_s else "—"
        ratio = r.ratio
        notes = ", ".join(n for n in [("capped (single stream)" if r.capped else ""), r.note,
                                      (f"ERROR: {r.error}" if r.error else "")] if n)
        rows.append(
            f"| {r.contender} | {r.events:,} | {r.seconds:.2f} | {rate} | {f'{ratio:.2f}×' if ratio else '—'} "
            f"| {r.peak_rss_mb:.0f} | {f'{r.cpu_s_per_million:.1f}' if r.cpu_s_per_million else '—'} "
            f"| {f'{r.sink_cpu_s_per_million:.1f}' if r.sink_cpu_s_per_million else '—'} "
            f"| {r.check} | {notes.replace('|', '/')} |"
        )
    return "\n".join(rows)


SCENARIO_TITLES = {
    "A": "Scenario A: the sink answers at once",
    "B": "Scenario B: the sink answers each request after 100 ms",
}


def machine() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"nproc": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(), "cpu": cpu}


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("syncline", "dlt", "drt-core", "pandas", "requests", "duckdb", "pyarrow"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


def write_outputs(args: argparse.Namespace, all_results: dict[str, list[Result]], full: Dataset, capped: Dataset,
                  rounds: dict[str, list[list[Result]]] | None = None) -> str:
    info = machine()
    harness_rss = max((r.harness_rss_mb for rs in all_results.values() for r in rs), default=0.0)
    lines = [
        "# Throughput compared: syncline and the alternatives",
        "",
        f"- command: `{shlex.join(['.venv/bin/python', 'benchmarks/bench_compare.py', *sys.argv[1:]])}`",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: nproc {info['nproc']}, Python {info['python']}, {info['platform']}"
        + (f", {info['cpu']}" if info["cpu"] else ""),
        f"- versions: {', '.join(f'{k} {v}' for k, v in versions().items())}",
        f"- data: {full.events:,} events (seeded synthetic Trubrics `publish_events` Parquet); capped runs: "
        f"the first {capped.events:,}",
        "",
        "Every contender runs in its own process against the same sink process on the same machine (the sink's "
        "CPU competes with the contender's). *seconds*: wall-clock of the whole subprocess (start, imports, read, "
        "serialise, send) for tools; the floors pre-build every body and time (and count CPU of) sending only. "
        "*sink check*: count and checksum of items received equal those of the source file; a FAILED row does "
        "not count. *sink CPU s / M*: the sink process's own CPU over the contender's run, per million events; "
        "on this machine's cores a run cannot take less than (contender CPU + sink CPU) / cores. "
        "*peak RSS*: ru_maxrss of the contender's process tree (os.wait4); Linux carries the "
        f"parent's RSS at fork into it, so no figure can be below the harness's {harness_rss:.0f} MB. *capped*: cannot send concurrently, so it ran single-stream on the first "
        f"{capped.events:,} events."
        + (f" *median of {args.repeat} runs*: every contender ran {args.repeat} times, each round starting one "
           "contender later; the row is its median run by events/s, its ratio the median of its ratio to syncline "
           "(SQLite) within each round, and the range is every run's (all in the .json)." if args.repeat > 1 else ""),
        "",
    ]
    for scenario, results in all_results.items():
        lines += [f"## {SCENARIO_TITLES[scenario]}", "", markdown_table(results), ""]
    text = "\n".join(lines)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        raw = {
            "command": sys.argv, "machine": info, "versions": versions(), "events": full.events,
            "capped_events": capped.events,
            "scenarios": {s: [asdict(r) for r in rs] for s, rs in all_results.items()},
            "rounds": {s: [[asdict(r) for r in rs] for rs in found] for s, found in (rounds or {}).items()},
        }
        out.with_suffix(".json").write_text(json.dumps(raw, indent=2))
    return text


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        child_main(sys.argv[2:])
        return
    if len(sys.argv) > 1 and sys.argv[1] == "prepare":
        prepare_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--out", help="markdown report (a .json with the raw numbers is written beside it)")
    parser.add_argument("--scenarios", default="AB", help="A, B or AB")
    parser.add_argument("--concurrency", type=int, default=None,
                        help="syncline's delivery.concurrency in scenario A (default: syncline's default)")
    parser.add_argument("--concurrency-b", type=int, default=64, help="syncline's concurrency in scenario B")
    parser.add_argument("--threads", type=int, default=64, help="threads of the concurrent floor in scenario B")
    parser.add_argument("--capped-events", type=int, default=5000,
                        help="events for single-stream contenders in scenario B (100 ms per request)")
    parser.add_argument("--timeout", type=float, default=None, help="per-contender timeout, seconds")
    parser.add_argument("--only", nargs="*", help="run only contenders whose name contains one of these")
    parser.add_argument("--syncline-src", help="run syncline's CLI from this source tree instead of the installed "
                        "`syncline` (e.g. an export of `git archive HEAD` while the engine is being rewritten)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, data)")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="run every contender N times, each round starting one contender later, and report "
                        "each one's median run (ratios: the median of each round's ratio); the JSON keeps every round")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat: at least 1")
    if args.timeout is None:
        args.timeout = 60 + args.events / 2000
    scenarios = [s for s in "AB" if s in args.scenarios.upper()]
    # The whole run is bounded: every contender by its timeout, the harness by their sum.
    contenders = 10
    time_bound(int(120 + len(scenarios) * contenders * args.repeat * (args.timeout + 30)))

    work = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    try:
        print(f"building {args.events:,} events in {work} ...", flush=True)
        full, capped = prepare_data(work, args.events, args.capped_events, args.timeout * 2)
        all_results: dict[str, list[Result]] = {}
        rounds: dict[str, list[list[Result]]] = {}
        for scenario in scenarios:
            all_results[scenario] = run_scenario(scenario, args, full, capped, work, rounds.setdefault(scenario, []))
        text = write_outputs(args, all_results, full, capped, rounds)
        print("\n" + text)
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
