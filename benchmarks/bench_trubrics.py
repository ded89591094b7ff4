"""Deliver N synthetic Trubrics events to the sandbox and report events/s and peak RSS.

    .venv/bin/python benchmarks/bench_trubrics.py --events 1000000
    .venv/bin/python benchmarks/bench_trubrics.py --events 100000

The sandbox runs in its own process (``syncline sandbox --counts-only``: it validates every item but keeps
only counters), so the figures are syncline's: its CPU, and its peak resident memory (ru_maxrss, which
includes DuckDB's extract and transform). Compare 100k with 1M: the peak must not grow with the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


BUILD_SQL = """CREATE TABLE analytics.bench_events AS
    SELECT 'evt_' || i AS event_id, 'user_' || (i % 50000) AS user_id,
           (['Signed up', 'Viewed pricing', 'Started trial', 'Upgraded plan'])[1 + i % 4] AS event_name,
           TIMESTAMPTZ '2026-06-01 00:00:00+00' + (i % 604800) * INTERVAL 1 SECOND AS occurred_at,
           'thread_' || (i % 9973) AS thread_id, (['free', 'team', 'enterprise'])[1 + i % 3] AS plan
    FROM range({n}) t(i)"""


def build_warehouse(home: Path, events: int) -> None:
    """In a child process, so building the synthetic table does not count toward syncline's memory."""
    script = (
        "import duckdb,sys; c=duckdb.connect(sys.argv[1]); c.execute('CREATE SCHEMA analytics'); "
        "c.execute(sys.argv[2]); c.close()"
    )
    subprocess.run([sys.executable, "-c", script, str(home / "warehouse.duckdb"), BUILD_SQL.format(n=events)], check=True)


class RssSampler:
    """Samples this process's resident memory (VmRSS) every 50 ms; ``peak()`` since the last ``mark()``."""

    def __init__(self) -> None:
        import threading

        self._peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def current_mb() -> float:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def _loop(self) -> None:
        while not self._stop.wait(0.05):
            self._peak = max(self._peak, self.current_mb())

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def mark(self) -> float:
        peak, self._peak = max(self._peak, self.current_mb()), self.current_mb()
        return peak


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="syncline-bench-"))
    os.environ["SYNCLINE_HOME"] = str(home)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "sandbox", "--port", str(port), "--counts-only"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy(),
    )
    try:
        for line in server.stdout:  # type: ignore[union-attr]
            if line.startswith("export "):
                name, _, value = line[7:].strip().partition("=")
                os.environ[name] = value
            if line.startswith("export TRUBRICS_API_KEY"):
                break
        run(args, home, port)
    finally:
        server.terminate()
        server.wait(timeout=10)


def run(args: argparse.Namespace, home: Path, port: int) -> None:
    from connectors.ledger import open_ledger
    from connectors.runner import deliver_file, new_run_id
    from connectors.spec import load_sync_file
    from connectors.stage import Window, extract, staging_path, transform

    started = time.perf_counter()
    build_warehouse(home, args.events)
    build_s = time.perf_counter() - started
    sampler = RssSampler().start()

    folder = home / "syncs"
    folder.mkdir()
    (folder / "bench.sql").write_text(
        "SELECT _key, user_id, event_name AS event, occurred_at AS timestamp, "
        "{'$thread_id': thread_id, 'plan': plan} AS properties FROM source"
    )
    (folder / "bench.yaml").write_text(
        "name: bench\nsource: {table: analytics.bench_events, key: event_id, cursor: occurred_at}\n"
        "destination: {vendor: trubrics, endpoint: publish_events}\nmodel: bench.sql\n"
        f"delivery: {{concurrency: {args.concurrency}}}\n"
    )
    spec = load_sync_file(folder / "bench.yaml")
    run_id = new_run_id()
    out = staging_path(spec, Window(), run_id)

    sampler.mark()
    t0 = time.perf_counter()
    extract_path, rows = extract(spec, Window(), out)
    t1 = time.perf_counter()
    payload_path, _, rejected = transform(spec, extract_path, out)
    t2 = time.perf_counter()
    rss_stage = sampler.mark()
    ledger = open_ledger()
    timeline: list[tuple[int, int]] = []

    def progress(run_row: Any) -> None:
        done = run_row.delivered + run_row.rejected
        if not timeline or done - timeline[-1][0] >= max(args.events // 10, 1):
            timeline.append((done, round(RssSampler.current_mb())))

    result = deliver_file(spec, payload_path, run_id=run_id, span="all", ledger=ledger, on_progress=progress)
    t3 = time.perf_counter()
    rss_delivery = sampler.mark()
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_sandbox/stats") as resp:
        stats = json.load(resp)["trubrics"]["publish_events"]

    report = {
        "events": args.events,
        "delivered": result.delivered,
        "rejected": rejected,
        "received_at_sandbox": stats["items_accepted"],
        "requests": result.requests,
        "retries": result.retries,
        "extract_s": round(t1 - t0, 2),
        "transform_s": round(t2 - t1, 2),
        "deliver_s": round(t3 - t2, 2),
        "end_to_end_events_per_s": round(args.events / (t3 - t0)),
        "delivery_events_per_s": round(result.delivered / (t3 - t2)),
        "peak_rss_mb_extract_transform": round(rss_stage),
        "peak_rss_mb_delivery": round(rss_delivery),
        "peak_rss_mb_process": round(peak_rss_mb),
        "rss_mb_during_delivery": timeline,
        "warehouse_build_s": round(build_s, 2),
        "concurrency": args.concurrency,
    }
    print(json.dumps(report, indent=2))
    assert result.delivered == stats["items_accepted"] == args.events, "delivered count mismatch"


if __name__ == "__main__":
    main()
