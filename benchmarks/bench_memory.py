"""Memory and rerun time with default settings: a sync whose model merges JSON, at 1M and 10M rows.

    .venv/bin/python benchmarks/bench_memory.py --events 1000000 10000000

For each size: build a seeded Parquet file (a JSON ``properties`` text column), run ``syncline run`` in its
own process with no tuning variables set, against ``benchmarks/sink.py`` (which counts every item), then
run it again (everything already delivered). Reports peak RSS of the syncline process (``ru_maxrss`` from
``os.wait4``), wall seconds of both runs, and the sink's count. Writes a JSON line per size to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import run_cli, time_bound  # noqa: E402

MODEL = """SELECT _key, user_id, event_name AS event, occurred_at AS timestamp,
       json_merge_patch(properties, json_object('$thread_id', thread_id, 'plan', plan)) AS properties
FROM source"""

BUILD = """COPY (SELECT 'evt_' || i AS event_id, 'user_' || (i % 50000) AS user_id,
       (['Signed up', 'Viewed pricing', 'Started trial', 'Upgraded plan'])[1 + i % 4] AS event_name,
       TIMESTAMPTZ '2026-06-01 00:00:00+00' + (i % 604800) * INTERVAL 1 SECOND AS occurred_at,
       'thread_' || (i % 9973) AS thread_id, (['free', 'team', 'enterprise'])[1 + i % 3] AS plan,
       '{"source": "web", "n": ' || (i % 1000) || ', "tags": ["a", "b"], "utm": {"campaign": "c' || (i % 50) || '"}}'
         AS properties
FROM range({n}) t(i)) TO '{out}' (FORMAT parquet)"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stats(port: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stats", timeout=10) as resp:
        return json.load(resp)  # type: ignore[no-any-return]


def measure(events: int, work: Path, port: int) -> dict[str, object]:
    data = work / f"events-{events}.parquet"
    if not data.exists():
        import duckdb

        duckdb.connect().execute(BUILD.replace("{n}", str(events)).replace("{out}", str(data)))
    syncs = work / f"syncs-{events}"
    syncs.mkdir(exist_ok=True)
    (syncs / "bench.sql").write_text(MODEL)
    (syncs / "bench.yaml").write_text(
        f"name: bench\nsource: {{parquet: {data}, key: event_id, cursor: occurred_at}}\n"
        "destination: {vendor: trubrics, endpoint: publish_events}\nmodel: bench.sql\n"
    )
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SYNCLINE_", "TRUBRICS_")) or k.startswith("SYNCLINE_DUCKDB_")}
    env.update(SYNCLINE_SYNCS_DIR=str(syncs), SYNCLINE_HOME=str(work / f"home-{events}"),
               TRUBRICS_BASE_URL=f"http://127.0.0.1:{port}", TRUBRICS_API_KEY="bench-key")
    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/_reset", method="POST"), timeout=10)
    first_wall, first_rss, first_rc, first_err = run_cli(env, 60 + events / 2000)
    received = _stats(port)["items"]
    second_wall, second_rss, second_rc, _ = run_cli(env, 60 + events / 20000)
    return {
        "events": events, "first_run_s": round(first_wall, 1), "first_run_exit": first_rc,
        "peak_rss_mb": round(first_rss), "received_at_sink": received, "rerun_s": round(second_wall, 1),
        "rerun_exit": second_rc, "rerun_peak_rss_mb": round(second_rss), "note": first_err[:200] if first_rc else "",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: measure one size in this process
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, Path(args.work), args.port)), flush=True)
        return
    time_bound(3 * 3600)
    work = Path(tempfile.mkdtemp(prefix="syncline-mem-"))
    port = _free_port()
    sink = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "sink.py"), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        for n in args.events:
            subprocess.run([sys.executable, __file__, "--one", str(n), "--work", str(work), "--port", str(port)],
                           check=True, timeout=600 + n / 1000)
    finally:
        sink.terminate()
        sink.wait(timeout=10)


if __name__ == "__main__":
    main()
