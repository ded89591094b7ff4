"""The DataFrame path against the sync-file path: the same seeded data, the same sink, the same engine.

    .venv/bin/python benchmarks/bench_dataframe.py --events 300000 --repeat 3

The data and the sink are ``bench_compare.py``'s (seeded Trubrics ``publish_events`` Parquet, 100 items a
request, a local sink checking every item's count and checksum). Each contender runs in its own process
with a fresh ``SYNCLINE_HOME`` (so a fresh ledger: every run delivers everything) and times only its call:

- ``sync file``: ``run_sync(load_sync_file(...))`` on a Parquet-sourced sync file;
- ``DataFrame``: ``connectors.deliver(df, ...)`` on the file read into pandas beforehand (untimed: the
  user's asset computed it), with the sync file's SQL as ``model=``;
- ``Arrow table``: the same with ``pyarrow.parquet.read_table``.

The figure the issue asks for is the DataFrame path's events/s over the sync-file path's (target >= 0.8).
Runs alternate between contenders round by round; each figure is the median of ``--repeat`` runs, and the
ratio is also given as the median of each round's ratio (robust to a machine whose load changes).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_compare import (  # noqa: E402
    API_KEY,
    SYNCLINE_SQL,
    Context,
    Launch,
    Result,
    Sink,
    base_env,
    machine,
    prepare_data,
    report,
    run_one,
    versions,
)
from benchmarks.common import time_bound  # noqa: E402

CONTENDERS = ("sync file", "DataFrame", "Arrow table")
KINDS = {"sync file": "syncfile", "DataFrame": "dataframe", "Arrow table": "arrow"}


def child_main(argv: list[str]) -> None:
    """``bench_dataframe.py child KIND``: one timed delivery in this process, reported as ``RESULT {...}``."""
    parser = argparse.ArgumentParser(prog="bench_dataframe.py child")
    parser.add_argument("kind", choices=sorted(KINDS.values()))
    parser.add_argument("--parquet", required=True)
    opts = parser.parse_args(argv)
    from connectors import deliver
    from connectors.runner import run_sync
    from connectors.spec import load_sync_file

    if opts.kind == "syncfile":
        folder = Path(os.environ["SYNCLINE_HOME"]) / "syncs"
        folder.mkdir(parents=True)
        (folder / "bench.sql").write_text(SYNCLINE_SQL + "\n")
        (folder / "bench.yaml").write_text(
            f"name: bench\nsource: {{parquet: {json.dumps(opts.parquet)}, key: event_id, cursor: occurred_at}}\n"
            "destination: {vendor: trubrics, endpoint: publish_events}\nmodel: bench.sql\n")
        spec = load_sync_file(folder / "bench.yaml")
        cpu0, t0 = time.process_time(), time.perf_counter()
        run = run_sync(spec)
    else:
        if opts.kind == "dataframe":
            import pandas as pd

            data: object = pd.read_parquet(opts.parquet)
        else:
            import pyarrow.parquet as pq

            data = pq.read_table(opts.parquet)
        cpu0, t0 = time.process_time(), time.perf_counter()
        run = deliver(data, vendor="trubrics", endpoint="publish_events", key="event_id", cursor="occurred_at",
                      name="bench", model=SYNCLINE_SQL).run
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    if run.status != "success":
        raise SystemExit(f"run ended {run.status}: {run.error}")
    report(seconds=seconds, cpu_s=cpu, delivered=run.delivered, requests=run.requests)


def launch(ctx: Context, kind: str) -> Launch:
    home = Path(tempfile.mkdtemp(prefix=f"home-{kind}-", dir=ctx.work))
    env = base_env({"SYNCLINE_HOME": str(home), "TRUBRICS_BASE_URL": ctx.sink.url, "TRUBRICS_API_KEY": API_KEY})
    argv = [sys.executable, str(Path(__file__).resolve()), "child", kind, "--parquet", str(ctx.data.path)]
    return Launch(argv, env, ROOT, lambda: shutil.rmtree(home, ignore_errors=True))


def table(rows: dict[str, list[Result]]) -> tuple[str, dict[str, float]]:
    medians: dict[str, float] = {}
    lines = ["| path | events | runs | median s (the call) | median events/s | ratio to sync file | median process wall s"
             " | CPU s / M events | sink check |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, results in rows.items():
        good = [r for r in results if r.check_ok and r.events_per_s]
        check = "ok" if len(good) == len(results) else "; ".join(sorted({r.check for r in results if not r.check_ok}))
        if not good:
            lines.append(f"| {name} | — | {len(results)} | — | — | — | — | — | {check} |")
            continue
        medians[name] = statistics.median(r.events_per_s or 0.0 for r in good)
        seconds = statistics.median(r.seconds for r in good)
        wall = statistics.median(r.wall_s for r in good)
        cpu = statistics.median(r.cpu_s_per_million or 0.0 for r in good)
        base = medians.get(CONTENDERS[0])
        ratio = f"{medians[name] / base:.2f}×" if base else "—"
        lines.append(f"| {name} | {good[0].events:,} | {len(good)} | {seconds:.2f} | {medians[name]:,.0f} | {ratio} "
                     f"| {wall:.2f} | {cpu:.1f} | {check} |")
    return "\n".join(lines), medians


def round_ratios(rows: dict[str, list[Result]], name: str) -> list[float]:
    """``name``'s events/s over the sync file's, round by round: the two ran back to back, so a machine
    whose load changes during the benchmark (other processes) weighs on both alike."""
    pairs = zip(rows[name], rows[CONTENDERS[0]], strict=True)
    return [a.events_per_s / b.events_per_s for a, b in pairs if a.events_per_s and b.events_per_s]


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        child_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=None, help="per run, seconds")
    parser.add_argument("--out", help="also write the markdown report here")
    args = parser.parse_args()
    args.timeout = args.timeout or 60 + args.events / 2000
    time_bound(int(120 + args.repeat * len(CONTENDERS) * (args.timeout + 30)))
    work = Path(tempfile.mkdtemp(prefix="bench-dataframe-"))
    sink = None
    try:
        print(f"building {args.events:,} events in {work} ...", flush=True)
        full, _ = prepare_data(work, args.events, 1, args.timeout * 2)
        sink = Sink(0.0, work / "sink.log")
        rows: dict[str, list[Result]] = {name: [] for name in CONTENDERS}
        for round_ in range(args.repeat):
            order = CONTENDERS if round_ % 2 == 0 else tuple(reversed(CONTENDERS))
            for name in order:
                ctx = Context("A", full, sink, work, None, False, args)
                result = run_one(ctx, name, launch(ctx, KINDS[name]), capped=False)
                rows[name].append(result)
                rate = f"{result.events_per_s:,.0f} ev/s" if result.events_per_s else "-"
                print(f"[{round_ + 1}/{args.repeat}] {name}: {rate}, {result.seconds:.2f} s, {result.check}"
                      + (f" [{result.error}]" if result.error else ""), flush=True)
        text, medians = table(rows)
        info = machine()
        command = shlex.join([".venv/bin/python", "benchmarks/bench_dataframe.py", *sys.argv[1:]])
        header = (f"- command: `{command}`\n- machine: nproc {info['nproc']}, Python {info['python']}"
                  + (f", {info['cpu']}" if info["cpu"] else "")
                  + f"\n- versions: {', '.join(f'{k} {v}' for k, v in versions().items() if v != 'not installed')}\n")
        ratio = medians.get("DataFrame", 0.0) / medians["sync file"] if medians.get("sync file") else 0.0
        paired = round_ratios(rows, "DataFrame")
        summary = (f"\nDataFrame path / sync-file path: {ratio:.2f}× by median events/s; "
                   f"{statistics.median(paired) if paired else 0.0:.2f}× by the median of each round's ratio "
                   f"({', '.join(f'{r:.2f}' for r in paired)}) (target >= 0.80)\n")
        print("\n" + header + "\n" + text + summary)
        if args.out:
            Path(args.out).write_text(header + "\n" + text + "\n" + summary)
    finally:
        if sink is not None:
            sink.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
