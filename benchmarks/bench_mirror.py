"""Mirror-mode rerun cost: diffing N rows against the ledger when 1% of them changed.

    .venv/bin/python benchmarks/bench_mirror.py --rows 1000000 [--changed 0.01]

1. Build a seeded Parquet source of N rows and deliver it once (``syncline run`` in its own process,
   ``mode: mirror``) to ``benchmarks/sink.py``, which counts and checksums every item.
2. Rewrite the source with ``changed`` of the rows altered (a property value), the rest byte-identical.
3. The diff alone, in a fresh process, through the engine's own stages: extract + render (the model over
   every row: mirror compares payloads, so nothing is left out before rendering), the ledger snapshot for
   the destination, and the planner (anti-join on ``idem_key``, compare ``payload_hash``, stream the rows
   to send). Reports seconds per stage and the process's peak RSS; nothing is sent, the ledger untouched.
4. The whole rerun: ``syncline run`` again in its own process: wall seconds, peak RSS (``ru_maxrss`` from
   ``os.wait4``), exit code, and how many items the sink received (must be exactly the changed rows).

Prints one JSON object per size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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
       {'$thread_id': thread_id, 'plan': plan, 'n': n} AS properties
FROM source"""

# ``{changed}``: the rows whose plan differs (every 1/changed-th row), so the changed set is spread evenly.
BUILD = """COPY (SELECT 'evt_' || i AS event_id, 'user_' || (i % 50000) AS user_id,
       (['Signed up', 'Viewed pricing', 'Started trial', 'Upgraded plan'])[1 + i % 4] AS event_name,
       TIMESTAMPTZ '2026-06-01 00:00:00+00' + (i % 604800) * INTERVAL 1 SECOND AS occurred_at,
       'thread_' || (i % 9973) AS thread_id,
       CASE WHEN {changed} > 0 AND i % {every} = 0 THEN 'changed'
            ELSE (['free', 'team', 'enterprise'])[1 + i % 3] END AS plan,
       i % 1000 AS n
FROM range({n}) t(i)) TO '{out}' (FORMAT parquet)"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sink_items(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stats", timeout=10) as resp:
        return int(json.load(resp)["items"])


def _build(rows: int, changed: float, out: Path) -> None:
    import duckdb

    every = max(1, round(1 / changed)) if changed > 0 else 1
    sql = BUILD.format(changed=1 if changed > 0 else 0, every=every, n=rows, out=out)
    con = duckdb.connect()
    try:
        con.execute(sql)
    finally:
        con.close()


def _run(env: dict[str, str], timeout: float) -> dict[str, object]:
    """Wall seconds, peak RSS MB and exit code of one ``syncline run bench``."""
    seconds, rss, code, last = run_cli(env, timeout)
    return {"s": round(seconds, 2), "peak_rss_mb": round(rss), "exit": code, "note": last[:200] if code else ""}


def diff_only() -> None:
    """In this process (env prepared by the parent): the stages a rerun goes through before sending."""
    from connectors import runner
    from connectors.engine.plan import Planner
    from connectors.ledger import open_ledger
    from connectors.settings import duckdb_memory, duckdb_threads
    from connectors.spec import load_sync_file

    spec = load_sync_file(Path(os.environ["SYNCLINE_SYNCS_DIR"]) / "bench.yaml")
    base = runner.resolve_base_url(spec.vendor)
    dest = runner.destination_for(spec, base, runner.resolve_credentials(spec.vendor))
    ledger = open_ledger()
    out: dict[str, object] = {}
    try:
        with runner.SyncPipeline(spec) as pipeline:
            t0 = time.perf_counter()
            pipeline.extract()
            t1 = time.perf_counter()
            payloads = pipeline.render()
            t2 = time.perf_counter()
            state = ledger.snapshot(dest.id, spec.name, pipeline.out_dir / "ledger_state.parquet")
            t3 = time.perf_counter()
            planner = Planner(payloads, state, mode=spec.mode, hold_in_doubt=False, work_dir=pipeline.out_dir,
                              memory_limit=duckdb_memory(), threads=duckdb_threads())
            try:
                counts = planner.counts()
                streamed = sum(batch.num_rows for batch in planner.to_send(2_000))
            finally:
                planner.close()
            t4 = time.perf_counter()
    finally:
        ledger.close()
    out.update(extract_s=round(t1 - t0, 2), render_s=round(t2 - t1, 2), snapshot_s=round(t3 - t2, 2),
               plan_s=round(t4 - t3, 2), diff_s=round(t4 - t2, 2), before_send_s=round(t4 - t0, 2),
               to_send=counts.to_send, streamed=streamed, skipped=counts.skipped,
               peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
    print(json.dumps(out), flush=True)


def measure(rows: int, changed: float, work: Path, port: int) -> dict[str, object]:
    data = work / f"events-{rows}.parquet"
    _build(rows, 0.0, data)
    syncs = work / f"syncs-{rows}"
    syncs.mkdir(exist_ok=True)
    (syncs / "bench.sql").write_text(MODEL)
    (syncs / "bench.yaml").write_text(
        f"name: bench\nsource: {{parquet: {data}, key: event_id, cursor: occurred_at}}\n"
        "destination: {vendor: trubrics, endpoint: publish_events}\nmodel: bench.sql\nmode: mirror\n"
    )
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SYNCLINE_", "TRUBRICS_")) or k.startswith("SYNCLINE_DUCKDB_")}
    env.update(SYNCLINE_SYNCS_DIR=str(syncs), SYNCLINE_HOME=str(work / f"home-{rows}"),
               TRUBRICS_BASE_URL=f"http://127.0.0.1:{port}", TRUBRICS_API_KEY="bench-key")
    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/_reset", method="POST"), timeout=10)

    first = _run(env, 120 + rows / 1000)
    delivered_first = _sink_items(port)
    _build(rows, changed, data)  # 1% of the rows now render a different payload
    expected = len(range(0, rows, max(1, round(1 / changed)))) if changed > 0 else 0

    diff = subprocess.run([sys.executable, __file__, "--diff-only"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120 + rows / 2000, check=True)
    diff_figures = json.loads(diff.stdout.strip().splitlines()[-1])

    rerun = _run(env, 120 + rows / 2000)
    received = _sink_items(port) - delivered_first
    return {
        "rows": rows, "changed_rows": expected, "first_run": first, "received_first": delivered_first,
        "diff": diff_figures, "rerun": rerun, "received_on_rerun": received,
        "valid": first["exit"] == 0 and rerun["exit"] == 0 and delivered_first == rows and received == expected
                 and diff_figures["to_send"] == expected,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--changed", type=float, default=0.01, help="share of rows changed before the rerun")
    parser.add_argument("--diff-only", action="store_true", help=argparse.SUPPRESS)  # internal: step 3
    args = parser.parse_args()
    if args.diff_only:
        diff_only()
        return
    time_bound(3 * 3600)
    work = Path(tempfile.mkdtemp(prefix="syncline-mirror-"))
    port = _free_port()
    sink = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "sink.py"), "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        for rows in args.rows:
            print(json.dumps(measure(rows, args.changed, work, port)), flush=True)
    finally:
        sink.terminate()
        sink.wait(timeout=10)


if __name__ == "__main__":
    main()
