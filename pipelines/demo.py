"""``syncline demo``: build the sample warehouse, start the sandbox, run every sync, print a summary.

Idempotent by design: a second demo finds everything in the ledger and delivers 0 new items, and says so.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from connectors import settings
from connectors.errors import SynclineError
from connectors.ledger import RunRow, open_ledger
from connectors.runner import run_sync
from connectors.spec import SyncSpec, load_syncs
from pipelines.sample_data import build_warehouse


def run_demo(warehouse_only: bool = False) -> int:
    home = settings.home()
    path = settings.warehouse_path()
    started = time.perf_counter()
    counts = build_warehouse(path, home)
    print(f"sample warehouse: {path} ({len(counts)} tables, {sum(counts.values())} rows)")
    if warehouse_only:
        for table, n in counts.items():
            print(f"  {table:<40} {n:>7}")
        return 0

    loaded = load_syncs()
    for error in loaded.errors:
        print(f"warning: skipped sync file: {error}", file=sys.stderr)
    with _demo_sandbox() as sandbox:
        os.environ.update(sandbox.env())  # the demo points every vendor at the sandbox, with its keys
        print(f"sandbox: {sandbox.url} ({', '.join(sandbox.emulators)})")
        print(f"ledger: {open_ledger().description}\n")
        runs: list[RunRow] = []
        ledger = open_ledger()
        try:
            for spec in loaded.syncs.values():
                print(f"  running {spec.name} -> {spec.endpoint.qualified_name} ...", flush=True)
                try:
                    run = run_sync(spec, ledger=ledger)
                except SynclineError as exc:  # one sync that cannot run does not stop the demo
                    run = RunRow("-", spec.name, spec.endpoint.name, "all", status="error", error=str(exc))
                runs.append(run)
                if run.error:
                    print(f"    {run.error}", file=sys.stderr)
                if run.notes:
                    print(f"    note: {run.notes}")
            print()
            _summary(runs, list(loaded.syncs.values()), sandbox.stats())
            conserved = all(
                r.source_rows == r.delivered + r.rejected + r.skipped + r.in_doubt + r.failed for r in runs
            )
            # From the ledger, not this run's counts: a second demo re-checks rejected rows (or leaves the
            # vendor's refusals alone) but they are still there to look at.
            with_rejects = {r.sync: ledger.counts(r.sync).get("rejected", 0) for r in runs}
        finally:
            ledger.close()
    total_new = sum(r.delivered for r in runs)
    total_skipped = sum(r.skipped for r in runs)
    print()
    if total_new == 0 and total_skipped:
        print(f"0 new items delivered: all {total_skipped} were already delivered (the ledger makes reruns safe).")
    else:
        print(f"{total_new} items delivered, {sum(r.rejected for r in runs)} rejected with reasons, "
              f"{total_skipped} skipped as already delivered.")
    print(f"every source row accounted for: {'yes' if conserved else 'NO'}; took {time.perf_counter() - started:.1f}s")
    _point_at_rejects({sync: n for sync, n in with_rejects.items() if n})
    stopped = [r for r in runs if r.status in ("stopped", "error")]
    if stopped:
        print(f"syncs that failed: {', '.join(r.sync for r in stopped)} (messages above)", file=sys.stderr)
    return 1 if stopped or not conserved else 0


DEMO_PORT = 8765


def _demo_sandbox() -> Any:
    """The sandbox on a stable port: the ledger knows a destination by its URL (and key), so a second
    demo finds its items delivered there. If the port is taken, any free port: a new destination."""
    from connectors.sandbox import Sandbox

    port = int(os.environ.get("SYNCLINE_SANDBOX_PORT", DEMO_PORT))
    try:
        return Sandbox(port=port)
    except OSError:
        print(f"note: port {port} is in use; the sandbox takes another port, so this demo is a new destination "
              "and everything is sent again", file=sys.stderr)
        return Sandbox()


def _summary(runs: list[RunRow], specs: list[SyncSpec], stats: dict[str, dict[str, dict[str, object]]]) -> None:
    from pipelines.cli import SUMMARY_HEADERS, _print_table, _summary_rows

    print("per-sync summary")
    _print_table(SUMMARY_HEADERS, _summary_rows(runs, specs))
    print("\nwhat each sandbox endpoint received in this demo")
    rows = []
    for vendor, endpoints in stats.items():
        for endpoint, s in endpoints.items():
            rows.append([f"{vendor}.{endpoint}", s["requests"], s["items_accepted"], s["max_items_per_request"],
                         s["rate_limited"], dict(s["by_status"])])  # type: ignore[call-overload]
    _print_table(["vendor.endpoint", "requests", "items stored", "max items/request", "429 (rate)", "statuses"], rows)


def _point_at_rejects(rejected: dict[str, int]) -> None:
    """Where to look next: the syncs whose rows were rejected, and the commands that explain them."""
    if not rejected:
        return
    ranked = sorted(rejected.items(), key=lambda kv: (-kv[1], kv[0]))
    print(f"\nrejected rows, by sync ({sum(rejected.values())} in the ledger): "
          + ", ".join(f"{sync} {n}" for sync, n in ranked))
    first = ranked[0][0]
    print("to see what was rejected and why:")
    print(f"  syncline rejects {first}                  # grouped by rule and field, with sample keys and values")
    print(f"  syncline items {first} --state rejected   # every rejected item, its rule, field and value")
    print(f"  syncline rejects {first} --format csv --out {first}-rejects.csv")
    others = [sync for sync, _ in ranked[1:]]
    if others:
        print(f"  other syncs with rejects: {', '.join(others)}")
