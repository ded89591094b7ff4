"""What the HTTP client costs end to end: ``syncline run`` with the stdlib client, then with requests.

    .venv/bin/python benchmarks/bench_transport.py --events 300000 --repeat 3

Same Parquet file, same sink (``benchmarks/sink.py``, answering at once, checking every item's count),
fresh state folder per run; the two clients alternate so machine noise hits both. The brief allows a
client other than requests only if requests costs more than 10% of end-to-end throughput: the last line
says which side of that line this machine is on.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import time_bound  # noqa: E402

BUILD = """COPY (SELECT 'evt_' || i AS event_id, 'user_' || (i % 50000) AS user_id,
       (['Signed up', 'Viewed pricing', 'Started trial', 'Upgraded plan'])[1 + i % 4] AS event_name,
       TIMESTAMPTZ '2026-06-01 00:00:00+00' + (i % 604800) * INTERVAL 1 SECOND AS occurred_at,
       'thread_' || (i % 9973) AS thread_id, (['free', 'team', 'enterprise'])[1 + i % 3] AS plan
FROM range({n}) t(i)) TO '{out}' (FORMAT parquet)"""
MODEL = ("SELECT _key, user_id, event_name AS event, occurred_at AS timestamp, "
         "{'$thread_id': thread_id, 'plan': plan} AS properties FROM source")


def _post(url: str) -> None:
    urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=10).close()


def _items(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stats", timeout=10) as resp:
        return int(json.load(resp)["items"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    time_bound(1800)
    work = Path(tempfile.mkdtemp(prefix="syncline-transport-"))
    data = work / "events.parquet"
    import duckdb

    duckdb.connect().execute(BUILD.replace("{n}", str(args.events)).replace("{out}", str(data)))
    syncs = work / "syncs"
    syncs.mkdir()
    (syncs / "bench.sql").write_text(MODEL)
    (syncs / "bench.yaml").write_text(
        f"name: bench\nsource: {{parquet: {data}, key: event_id, cursor: occurred_at}}\n"
        "destination: {vendor: trubrics, endpoint: publish_events}\nmodel: bench.sql\n"
    )
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    sink = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "sink.py"), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rates: dict[str, list[float]] = {"stdlib": [], "requests": []}
    try:
        time.sleep(1.0)
        for n in range(args.repeat):
            for client in ("stdlib", "requests"):
                _post(f"http://127.0.0.1:{port}/_reset")
                env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNCLINE_", "TRUBRICS_"))}
                env.update(SYNCLINE_SYNCS_DIR=str(syncs), SYNCLINE_HOME=str(work / f"home-{client}-{n}"),
                           TRUBRICS_BASE_URL=f"http://127.0.0.1:{port}", TRUBRICS_API_KEY="bench-key",
                           SYNCLINE_HTTP_CLIENT=client)
                started = time.perf_counter()
                subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "bench"], cwd=ROOT, env=env,
                               check=True, capture_output=True, timeout=60 + args.events / 2000)
                seconds = time.perf_counter() - started
                received = _items(port)
                if received != args.events:
                    raise SystemExit(f"{client}: the sink received {received} of {args.events} items")
                rates[client].append(args.events / seconds)
    finally:
        sink.terminate()
        sink.wait(timeout=10)
    stdlib, req = statistics.median(rates["stdlib"]), statistics.median(rates["requests"])
    cost = 1 - req / stdlib
    print(json.dumps({"events": args.events, "runs_each": args.repeat,
                      "stdlib_events_per_s": round(stdlib), "requests_events_per_s": round(req),
                      "requests_costs_share_of_throughput": round(cost, 3)}))
    print(f"requests costs {cost:.0%} of end-to-end throughput: "
          + ("over the 10% the brief allows, so stdlib is the default" if cost > 0.10 else "within 10%: requests will do"))


if __name__ == "__main__":
    main()
