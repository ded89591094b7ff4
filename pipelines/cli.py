"""``syncline``: the same work as the Dagster UI, from a terminal.

    syncline sandbox                      local emulators of every vendor API on 127.0.0.1
    syncline demo [--warehouse-only]      sample warehouse -> sandbox, every sync, with a summary
    syncline ui                           the Dagster UI on the sample warehouse, vendors in the sandbox
    syncline list                         the syncs found, and sync files that failed to load
    syncline run SYNC... | --all [--partition DAY | --from DAY --to DAY] [--dry-run]
    syncline preview SYNC [--limit N]     rendered payloads and validation results; nothing is sent
    syncline log [SYNC]                   recent runs and HTTP attempts from the ledger
    syncline reconcile SYNC               ledger vs what the vendor reports (vendors with a read API)

``run`` uses whatever base URLs and credentials the environment names, so one command drives the
sandbox, a staging vendor or production.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from connectors import settings
from connectors.errors import ConfigError, SynclineError
from connectors.ledger import RunRow, open_ledger
from connectors.runner import SyncPipeline, new_run_id, reconcile, run_sync
from connectors.spec import SyncSpec, load_syncs
from connectors.stage import Window


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        print("  ".join(c.ljust(w) if i == 0 or not c.replace(".", "").isdigit() else c.rjust(w)
                        for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def _load(names: Sequence[str], all_syncs: bool) -> list[SyncSpec]:
    loaded = load_syncs()
    for error in loaded.errors:
        print(f"warning: skipped sync file: {error}", file=sys.stderr)
    if all_syncs:
        return list(loaded.syncs.values())
    if not names:
        raise SynclineError("name one or more syncs, or pass --all (see `syncline list`)")
    missing = [n for n in names if n not in loaded.syncs]
    if missing:
        raise SynclineError(f"unknown sync(s): {', '.join(missing)} (known: {', '.join(loaded.syncs) or 'none'})")
    return [loaded.syncs[n] for n in names]


def _day(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {value!r}") from None


def _window(spec: SyncSpec, args: argparse.Namespace) -> Window:
    first: dt.date | None = getattr(args, "partition", None) or getattr(args, "from_day", None)
    last: dt.date | None = getattr(args, "partition", None) or getattr(args, "to_day", None) or first
    if first is None or last is None:
        return Window()
    if not spec.partitioned:
        raise SynclineError(f"{spec.name} has no daily partitions; run it without --partition/--from/--to")
    if last < first:
        raise SynclineError("--to is before --from")
    return Window.days(first, last)


def _summary_rows(runs: Sequence[RunRow], specs: Sequence[SyncSpec]) -> list[list[Any]]:
    endpoints = {s.name: s.endpoint.qualified_name for s in specs}
    return [
        [r.sync, endpoints.get(r.sync, r.endpoint), r.span, r.delivered, r.rejected, r.skipped, r.in_doubt + r.failed, r.retries,
         r.http_429, f"{r.seconds:.2f}", r.status]
        for r in runs
    ]


SUMMARY_HEADERS = ["sync", "vendor.endpoint", "window", "delivered", "rejected", "skipped", "pending", "retries", "429s", "secs", "status"]


EXIT_STOPPED = 1  # a sync stopped (401/403, wrong base URL) or errored
EXIT_CONFIG = 2  # a sync file, model or setting is wrong
EXIT_PENDING = 3  # every sync ran, but some items are in doubt or failed: not a success


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    specs = _load(args.syncs, args.all)
    runs = []
    failed = False
    for spec in specs:
        run = run_sync(spec, _window(spec, args), dry_run=args.dry_run, announce=_note)
        runs.append(run)
        failed = failed or run.status in ("stopped", "error")
        if run.error:
            print(f"{spec.name}: {run.error}", file=sys.stderr)
        if run.notes:
            print(f"{spec.name}: note: {run.notes}", file=sys.stderr)
    _print_table(SUMMARY_HEADERS, _summary_rows(runs, specs))
    if args.dry_run:
        print("dry run: nothing was sent and the ledger was not written ('requests' below is what would be sent)")
        _print_table(["sync", "items to send", "requests"], [[r.sync, r.source_rows - r.skipped - r.rejected - r.in_doubt, r.requests] for r in runs])
    pending = sum(r.in_doubt + r.failed for r in runs if not r.dry_run)
    if failed:
        return EXIT_STOPPED
    if pending:
        print(f"{pending} items pending (in doubt or failed, see `syncline log`): rerun to resume", file=sys.stderr)
        return EXIT_PENDING
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    (spec,) = _load([args.sync], False)
    window = _window(spec, args)
    with SyncPipeline(spec, window, run_id="preview-" + new_run_id()) as pipeline:
        rows = pipeline.preview(int(args.limit))
        counts = pipeline.counts
    print(f"{spec.name} -> {spec.endpoint.qualified_name}: {counts.extracted} source rows in window {window.label}; "
          f"{counts.failing_validation} fail validation. Nothing is sent.")
    for row in rows:
        reason = row["reject_reason"]
        status = f"REJECT: {reason}" if reason else "ok"
        print(f"\n[{row['_key']}] {status}\n{json.dumps(json.loads(row['payload']), indent=2, ensure_ascii=False)}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    loaded = load_syncs()
    _print_table(
        ["sync", "vendor.endpoint", "source", "mode", "partitions", "schedule"],
        [[s.name, s.endpoint.qualified_name, s.source.table or s.source.parquet or "query", s.mode,
          f"daily from {s.partition_start}" if s.partition_start else "-", s.schedule or "-"] for s in loaded.syncs.values()],
    )
    for error in loaded.errors:
        print(f"error: {error}")
    return 1 if loaded.errors else 0


def cmd_log(args: argparse.Namespace) -> int:
    ledger = open_ledger()
    try:
        print(f"ledger: {ledger.description} ({settings.home_source()})")
        destinations = ledger.destinations()
        runs = ledger.runs(args.sync, limit=args.limit)
        _print_table(
            ["run", "sync", "window", "started", "status", "delivered", "rejected", "skipped", "pending", "retries", "429s",
             "p95 ms", "destination"],
            [[r["run_id"][:12], r["sync"], r["span"], (r["started_at"] or "")[:19], r["status"], r["delivered"], r["rejected"],
              r["skipped"], (r["in_doubt"] or 0) + (r["failed"] or 0), r["retries"], r["http_429"], r["p95_latency_ms"],
              destinations.get(r["destination"] or "", {}).get("identity") or r["destination"] or "-"] for r in runs],
        )
        attempts = ledger.attempts(sync=args.sync, limit=args.limit)
        if attempts:
            print("\nrecent HTTP attempts")
            _print_table(
                ["at", "sync", "endpoint", "attempt", "items", "bytes", "status", "ms", "error"],
                [[a["at"][:23], a["sync"], a["endpoint"], a["attempt"], a["items"], a["bytes"], a["status"] or "-",
                  a["latency_ms"], (a["error"] or "")[:60]] for a in attempts],
            )
        if args.sync:
            counts = ledger.counts(args.sync)
            print(f"\nledger items for {args.sync}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
            for reason, n in ledger.rejection_reasons(args.sync, limit=10):
                print(f"  rejected {n:>5}  {reason}")
    finally:
        ledger.close()
    return 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    (spec,) = _load([args.sync], False)
    window = _window(spec, args)
    ledger = open_ledger()
    try:
        report = reconcile(spec, ledger, window)
    except NotImplementedError as exc:
        raise SynclineError(str(exc)) from None
    finally:
        ledger.close()
    print(json.dumps(report, indent=2, default=str))
    return 0 if report.get("matches") else 3


def cmd_sandbox(args: argparse.Namespace) -> int:
    from connectors.sandbox import Sandbox

    sandbox = Sandbox(args.host, args.port, record_items=not args.counts_only)
    print(f"syncline sandbox listening on {sandbox.url} (Ctrl-C to stop). To point syncline at it:")
    for name, value in sandbox.env().items():
        print(f"export {name}={value}")
    sys.stdout.flush()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt):
        sandbox.serve_forever()
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    """The Dagster UI on the sample warehouse, with the sandbox standing in for every vendor."""
    import shutil
    import subprocess

    from connectors.sandbox import Sandbox
    from pipelines.sample_data import build_warehouse

    root = Path(__file__).resolve().parent.parent
    build_warehouse(settings.warehouse_path(), settings.home())
    dagster_home = settings.home() / "dagster"
    dagster_home.mkdir(parents=True, exist_ok=True)
    template = root / "deploy" / "dagster.yaml"
    if template.is_file() and not (dagster_home / "dagster.yaml").exists():
        shutil.copy(template, dagster_home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home)}
    dagster = str(Path(sys.executable).parent / "dagster")
    command = [dagster, "dev", "-w", str(root / "workspace.yaml"), "-h", args.host, "-p", str(args.port)]
    if args.no_sandbox:
        return subprocess.call(command, env=env, cwd=root)
    with Sandbox(port=args.sandbox_port) as sandbox:
        env.update(sandbox.env())
        print(f"sandbox: {sandbox.url} (every vendor); Dagster UI: http://{args.host}:{args.port}", flush=True)
        return subprocess.call(command, env=env, cwd=root)


def cmd_demo(args: argparse.Namespace) -> int:
    from pipelines.demo import run_demo

    return run_demo(warehouse_only=args.warehouse_only)


def _add_window_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--partition", type=_day, help="one daily partition (YYYY-MM-DD)")
    group.add_argument("--from", dest="from_day", type=_day, help="first day of a range (with --to)")
    parser.add_argument("--to", dest="to_day", type=_day, help="last day of a range (inclusive)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="syncline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sandbox", help="run the vendor emulators on 127.0.0.1")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=int(os.environ.get("SYNCLINE_SANDBOX_PORT", "8765")))
    p.add_argument("--counts-only", action="store_true", help="keep counters, not items (for benchmarks)")
    p.set_defaults(func=cmd_sandbox)

    p = sub.add_parser("demo", help="sample warehouse -> sandbox, every sync, with a summary")
    p.add_argument("--warehouse-only", action="store_true", help="only build the sample warehouse under SYNCLINE_HOME")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("ui", help="the Dagster UI on the sample warehouse, vendors served by the sandbox")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.add_argument("--sandbox-port", type=int, default=0)
    p.add_argument("--no-sandbox", action="store_true", help="use the vendor URLs and keys in the environment")
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("list", help="list syncs and sync-file errors")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("run", help="run syncs against the configured vendors")
    p.add_argument("syncs", nargs="*")
    p.add_argument("--all", action="store_true", help="every sync")
    p.add_argument("--dry-run", action="store_true", help="extract, render and plan; send nothing")
    _add_window_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("preview", help="show rendered payloads and validation results")
    p.add_argument("sync")
    p.add_argument("--limit", type=int, default=5)
    _add_window_args(p)
    p.set_defaults(func=cmd_preview)

    p = sub.add_parser("log", help="recent runs and attempts")
    p.add_argument("sync", nargs="?")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_log)

    p = sub.add_parser("reconcile", help="compare the ledger with the vendor's read API")
    p.add_argument("sync")
    _add_window_args(p)
    p.set_defaults(func=cmd_reconcile)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    except SynclineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
