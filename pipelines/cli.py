"""``syncline``: the same work as the Dagster UI, from a terminal.

    syncline sandbox                      local emulators of every vendor API on 127.0.0.1
    syncline demo [--warehouse-only]      sample warehouse -> sandbox, every sync, with a summary
    syncline ui                           the Dagster UI on the sample warehouse, vendors in the sandbox
    syncline list                         the syncs found, whether each model binds, broken sync files
    syncline run SYNC... | --all [--partition DAY | --from DAY --to DAY] [--dry-run [--out DIR]]
    syncline preview SYNC [--rejected]    rendered payloads (or rejected rows and why); nothing is sent
    syncline log [SYNC]                   recent runs, HTTP attempts and rejection rules from the ledger
    syncline items SYNC                   every item: state, reason (rule, field, value), attempts
    syncline rejects SYNC                 rejected rows grouped by rule, or every one exported (--all)
    syncline retry SYNC --rejected        queue rejected / in-doubt / chosen items again and run the sync
    syncline resolve SYNC --delivered     a person's verdict on items left in doubt
    syncline reconcile SYNC [--apply]     ledger vs what the vendor reports (vendors with a read API)

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

import yaml

from connectors import operate, settings
from connectors.errors import ConfigError, SynclineError
from connectors.ledger import ITEM_STATES, RunRow, open_ledger
from connectors.progress import for_stream
from connectors.runner import SyncPipeline, new_run_id, reconcile, run_sync
from connectors.spec import SyncSpec, load_syncs
from connectors.stage import Window
from connectors.window import resolve_window


def _print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    sys.stdout.write(operate.format_table(headers, rows))


def _load(names: Sequence[str], all_syncs: bool) -> list[SyncSpec]:
    loaded = load_syncs()
    for error in loaded.errors:
        print(f"warning: skipped sync file: {error}", file=sys.stderr)
    if all_syncs:
        return list(loaded.syncs.values())
    if not names:
        raise SynclineError("name one or more syncs, or pass --all (see `syncline list`)")
    missing = [n for n in names if n not in loaded.syncs]
    broken = {n: f for n in missing if (f := _broken_file_of(n, loaded.errors))}
    if broken:
        raise SynclineError("; ".join(f"sync {n!r} is in {f}, which was skipped for the errors above: fix them "
                                      "and run again" for n, f in broken.items()))
    if missing:
        raise SynclineError(f"unknown sync(s): {', '.join(missing)} (known: {', '.join(loaded.syncs) or 'none'})")
    return [loaded.syncs[n] for n in names]


def _broken_file_of(name: str, errors: Sequence[ConfigError]) -> str | None:
    """The skipped sync file that most likely holds ``name``: its file is named so, or its top-level
    ``name:`` says so. Without this, a typo in a sync file read as "unknown sync" (the file was skipped)."""
    for error in errors:
        path = Path(error.file)
        if path.suffix not in (".yaml", ".yml") or not path.is_file():
            continue
        if path.stem == name:
            return str(path)
        try:
            doc = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(doc, dict) and doc.get("name") == name:
            return str(path)
    return None


def _day(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {value!r}") from None


def _window(spec: SyncSpec, args: argparse.Namespace) -> Window:
    """The run's window from --partition / --from / --to (rules in connectors/window.py); warnings on stderr."""
    window, warnings = resolve_window(spec, partition=getattr(args, "partition", None),
                                      from_day=getattr(args, "from_day", None), to_day=getattr(args, "to_day", None))
    for warning in warnings:
        print(f"warning: {spec.name}: {warning}", file=sys.stderr)
    return window


def _summary_rows(runs: Sequence[RunRow], specs: Sequence[SyncSpec]) -> list[list[Any]]:
    endpoints = {s.name: s.endpoint.qualified_name for s in specs}
    return [
        [r.sync, endpoints.get(r.sync, r.endpoint), r.span, r.delivered, r.rejected, r.skipped, r.in_doubt + r.failed, r.retries,
         r.http_429, getattr(r, "resent_unknown", 0) or "-", f"{r.seconds:.2f}", r.status]
        for r in runs
    ]


SUMMARY_HEADERS = ["sync", "vendor.endpoint", "window", "delivered", "rejected", "skipped", "pending", "retries", "429s",
                   "resent?", "secs", "status"]


def print_resent(runs: Sequence[RunRow]) -> None:
    resent = sum(getattr(r, "resent_unknown", 0) or 0 for r in runs)
    if resent:
        print(f"resent after an unknown outcome: {resent} — the vendor may hold up to {resent} duplicates")


EXIT_STOPPED = 1  # a sync stopped (401/403, wrong base URL) or errored
EXIT_CONFIG = 2  # a sync file, model or setting is wrong
EXIT_PENDING = 3  # every sync ran, but some items are in doubt or failed: not a success
EXIT_SIGNAL = 128  # + the signal that interrupted a run (SIGINT 2 -> 130, SIGTERM 15 -> 143)


def _note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _failed_row(spec: SyncSpec, span: str, status: str, message: str) -> RunRow:
    return RunRow("-", spec.name, spec.endpoint.name, span, status=status, error=message)


def _run_all(specs: Sequence[SyncSpec], args: argparse.Namespace, *, dry_run: bool = False) -> tuple[list[RunRow], int]:
    """Run each sync in turn; one that fails to bind or run is recorded and the others still run."""
    runs: list[RunRow] = []
    for spec in specs:
        try:
            window = _window(spec, args)
        except SynclineError as exc:
            runs.append(_failed_row(spec, "-", "config", str(exc)))
            print(f"{spec.name}: {exc}", file=sys.stderr)
            continue
        try:
            run = run_sync(spec, window, dry_run=dry_run, announce=_note, handle_signals=True,
                           progress=None if dry_run else for_stream(sys.stderr),
                           dry_out=getattr(args, "out", None) if dry_run else None)
        except KeyboardInterrupt:
            runs.append(_failed_row(spec, window.label, "interrupted", "interrupted (SIGINT)"))
            print(f"{spec.name}: interrupted; the remaining syncs were not run", file=sys.stderr)
            return runs, EXIT_SIGNAL + signal.SIGINT
        except ConfigError as exc:
            run = _failed_row(spec, window.label, "config", f"config error: {exc}")
        except SynclineError as exc:
            run = _failed_row(spec, window.label, "error", str(exc))
        except Exception as exc:  # an unexpected failure of one sync must not hide the others' results
            run = _failed_row(spec, window.label, "error", f"{exc.__class__.__name__}: {exc}")
        runs.append(run)
        if run.error:
            print(f"{spec.name}: {run.error}", file=sys.stderr)
        if run.notes:
            print(f"{spec.name}: note: {run.notes}", file=sys.stderr)
        if run.status == "interrupted":
            print(f"{spec.name}: interrupted; the remaining syncs were not run", file=sys.stderr)
            break
    return runs, _exit_code(runs)


def _exit_code(runs: Sequence[RunRow]) -> int:
    signals = [getattr(r, "stop_signal", 0) or 0 for r in runs if r.status == "interrupted"]
    if any(r.status == "interrupted" for r in runs):
        return EXIT_SIGNAL + (max(signals) or int(signal.SIGINT))
    if any(r.status in ("stopped", "error") for r in runs):
        return EXIT_STOPPED
    if any(r.status == "config" for r in runs):
        return EXIT_CONFIG
    if sum(r.in_doubt + r.failed for r in runs if not r.dry_run):
        return EXIT_PENDING
    return 0


def _report_runs(runs: Sequence[RunRow], specs: Sequence[SyncSpec], code: int, *, dry_run: bool = False,
                 broken_files: Sequence[str] = ()) -> None:
    _print_table(SUMMARY_HEADERS, _summary_rows(runs, specs))
    print_resent(runs)
    if dry_run:
        print("dry run: nothing was sent and the ledger was not written ('requests' below is what would be sent)")
        _print_table(["sync", "items to send", "requests"],
                     [[r.sync, r.source_rows - r.skipped - r.rejected - r.in_doubt, r.requests] for r in runs if r.run_id != "-"])
    failed = [f"{r.sync} ({r.status})" for r in runs if r.status in ("stopped", "error", "config", "interrupted")]
    failed += [f"{name} (did not load)" for name in broken_files]
    if failed:
        print(f"syncs that failed: {', '.join(failed)}", file=sys.stderr)
    pending = sum(r.in_doubt + r.failed for r in runs if not r.dry_run)
    if code > EXIT_SIGNAL:
        print(f"interrupted by signal {code - EXIT_SIGNAL}: answers in flight were recorded; "
              f"rerun to resume ({pending} items pending)", file=sys.stderr)
    elif code == EXIT_PENDING and pending:
        print(f"{pending} items pending (in doubt or failed, see `syncline log`): rerun to resume", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    if args.all:
        loaded = load_syncs()
        for error in loaded.errors:
            print(f"warning: skipped sync file: {error}", file=sys.stderr)
        specs = list(loaded.syncs.values())
        broken = [Path(error.file).name for error in loaded.errors]
    else:
        specs, broken = _load(args.syncs, False), []
    if args.out is not None and not args.dry_run:
        raise SynclineError("--out writes a dry run's requests: use it with --dry-run")
    runs, code = _run_all(specs, args, dry_run=args.dry_run)
    if args.out is not None:
        print(f"dry run written to {args.out}: <sync>/requests.jsonl, rejected.jsonl, plan.json", file=sys.stderr)
    if broken and code in (0, EXIT_PENDING):
        code = EXIT_CONFIG
    _report_runs(runs, specs, code, dry_run=args.dry_run, broken_files=broken)
    return code


PREVIEW_WIDTH = 200


def _clip(value: Any, width: int = PREVIEW_WIDTH) -> Any:
    """Long strings inside a payload, cut for reading: ``…(+N chars)`` says how much is left out."""
    if isinstance(value, str) and len(value) > width:
        return value[:width] + f"…(+{len(value) - width} chars)"
    if isinstance(value, dict):
        return {k: _clip(v, width) for k, v in value.items()}
    if isinstance(value, list):
        return [_clip(v, width) for v in value]
    return value


def cmd_preview(args: argparse.Namespace) -> int:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    (spec,) = _load([args.sync], False)
    window = _window(spec, args)
    with SyncPipeline(spec, window, run_id="preview-" + new_run_id()) as pipeline:
        table = pq.read_table(pipeline.render(), columns=["_key", "payload", "reject_reason"])
        counts = pipeline.counts
        reasons = table.column("reject_reason")
        table = table.filter(pc.is_valid(reasons) if args.rejected else pc.is_null(reasons))
        rows = table.slice(0, int(args.limit)).to_pylist()
    which = "rejected rows and their reasons" if args.rejected else "valid rows (`--rejected` shows the others)"
    print(f"{spec.name} -> {spec.endpoint.qualified_name}: {counts.extracted} source rows in window {window.label}; "
          f"{counts.failing_validation} fail validation. Nothing is sent. Showing {len(rows)} {which}.")
    for row in rows:
        reason = row["reject_reason"]
        if reason:
            print(f"\n[{row['_key']}] REJECT: {_clip(reason, 400)}")
            for part in operate.parse_reason(reason):
                where = f"{part.field}: " if part.field else ""
                got = f"  (got {_clip(part.value, 80)})" if part.value else ""
                print(f"  - {where}{part.rule}{got}")
        else:
            print(f"\n[{row['_key']}] ok")
        try:
            payload = _clip(json.loads(row["payload"]))
        except (TypeError, ValueError):
            payload = _clip(row["payload"])
        print(json.dumps(payload, indent=2, ensure_ascii=False))
    return 0


def _model_checker() -> Any:
    """``connectors.check.check_model`` when that module exists (it binds a model against its source)."""
    try:
        from connectors.check import check_model  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    return check_model


def cmd_list(args: argparse.Namespace) -> int:
    loaded = load_syncs()
    check = _model_checker() if not args.no_check else None
    problems: list[str] = []
    rows = []
    for s in loaded.syncs.values():
        row = [s.name, s.endpoint.qualified_name, s.source.table or s.source.parquet or "query", s.mode,
               f"daily from {s.partition_start}" if s.partition_start else "-", s.schedule or "-"]
        if check is not None:
            try:
                problem = check(s)
            except Exception as exc:  # a check that cannot run is itself worth reporting
                problem = f"{exc.__class__.__name__}: {exc}"
            row.append("ok" if problem is None else "ERROR")
            if problem is not None:
                problems.append(f"{s.name}: model: {problem}")
        rows.append(row)
    headers = ["sync", "vendor.endpoint", "source", "mode", "partitions", "schedule"] + (["model"] if check else [])
    _print_table(headers, rows)
    for error in loaded.errors:
        print(f"error: {error}")
    for problem in problems:
        print(f"error: {problem}")
    return 1 if loaded.errors or problems else 0


def cmd_log(args: argparse.Namespace) -> int:
    ledger = open_ledger()
    try:
        print(f"ledger: {ledger.description} ({settings.home_source()})")
        destinations = ledger.destinations()
        runs = ledger.runs(args.sync, limit=args.limit)
        _print_table(
            ["run", "sync", "window", "started", "status", "delivered", "rejected", "skipped", "pending", "retries", "429s",
             "resent?", "p95 ms", "destination"],
            [[r["run_id"][:12], r["sync"], r["span"], (r["started_at"] or "")[:19], r["status"], r["delivered"], r["rejected"],
              r["skipped"], (r["in_doubt"] or 0) + (r["failed"] or 0), r["retries"], r["http_429"],
              r.get("resent_unknown") or "-", r["p95_latency_ms"],
              destinations.get(r["destination"] or "", {}).get("identity") or r["destination"] or "-"] for r in runs],
        )
        errors = [(r["run_id"][:12], r["sync"], r["error"]) for r in runs if r.get("error")]
        if errors:
            print("\nrun errors")
            for run_id, sync, error in errors:
                print(f"  {run_id}  {sync}: {operate.truncate(operate.readable_error(error), 200)}")
        attempts = ledger.attempts(sync=args.sync, limit=args.limit)
        if attempts:
            print("\nrecent HTTP attempts")
            _print_table(
                ["at", "sync", "endpoint", "attempt", "items", "bytes", "status", "ms", "error"],
                [[a["at"][:23], a["sync"], a["endpoint"], a["attempt"], a["items"], a["bytes"], a["status"] or "-",
                  a["latency_ms"], operate.truncate(operate.readable_error(a["error"]), 80)] for a in attempts],
            )
        if args.sync:
            counts = ledger.counts(args.sync)
            print(f"\nledger items for {args.sync}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        groups = operate.reason_groups(ledger, args.sync, limit=10)
        if groups:
            print("\nrejections by rule" + ("" if args.sync else " (every sync)") + " — `syncline rejects SYNC` for samples")
            for rule, field, n, sample in groups:
                said = f"{field} {rule}" if field and not rule.startswith(field) else rule
                example = f"  (e.g. {operate.truncate(sample, 60)})" if sample else ""
                print(f"  rejected {n:>5}  {said}{example}")
    finally:
        ledger.close()
    return 0


# --- items, rejects, retry, resolve ---------------------------------------------------------------------------


def _filters(args: argparse.Namespace, states: Sequence[str] = ()) -> operate.Filters:
    return operate.Filters(
        states=tuple(states or getattr(args, "state", None) or ()), reason=getattr(args, "reason", None),
        since=getattr(args, "since", None), until=getattr(args, "until", None),
        destination=getattr(args, "destination", None), limit=getattr(args, "limit", None),
        keys=tuple(getattr(args, "keys", None) or ()),
    )


def _known_sync(ledger: Any, name: str) -> None:
    """A sync is known when a sync file defines it or the ledger has items of it (a removed sync's history)."""
    loaded = load_syncs()
    if name in loaded.syncs:
        return
    if ledger.has_items(name):
        return
    broken = _broken_file_of(name, loaded.errors)
    if broken:
        raise SynclineError(f"sync {name!r} is in {broken}, which does not load: {_error_of(broken, loaded.errors)}")
    raise SynclineError(f"unknown sync {name!r}: no sync file defines it and the ledger has no items of it")


def _error_of(file: str, errors: Sequence[ConfigError]) -> str:
    return "; ".join(str(e) for e in errors if e.file == file)


ITEM_TABLE = ["key", "source_key", "state", "field", "rule", "value", "attempts", "resent_unknown", "destination",
              "updated_at"]
ITEM_WIDTHS = {"rule": 60, "value": 40, "destination": 60, "updated_at": 29, "source_key": 30}


def _out(args: argparse.Namespace) -> Path | None:
    return Path(args.out).expanduser() if getattr(args, "out", None) else None


def cmd_items(args: argparse.Namespace) -> int:
    ledger = open_ledger()
    try:
        _known_sync(ledger, args.sync)
        items = operate.query_items(ledger, args.sync, _filters(args))
    finally:
        ledger.close()
    columns = ITEM_TABLE if args.format == "table" else operate.ITEM_OUTPUT
    operate.write_rows(items, columns, args.format, _out(args), sys.stdout, table_widths=ITEM_WIDTHS)
    if args.format == "table" and _out(args) is None:
        limit = f" (--limit {args.limit}: there may be more)" if args.limit and len(items) >= args.limit else ""
        print(f"{len(items)} item(s) of {args.sync}{limit}")
    elif _out(args) is not None:
        print(f"wrote {len(items)} item(s) of {args.sync} to {_out(args)} ({args.format})")
    return 0


def cmd_rejects(args: argparse.Namespace) -> int:
    ledger = open_ledger()
    try:
        _known_sync(ledger, args.sync)
        filters = _filters(args, states=("rejected",))
        items = operate.query_items(ledger, args.sync, filters)
    finally:
        ledger.close()
    out = _out(args)
    if args.all or args.format != "table":
        operate.write_rows(items, operate.ITEM_OUTPUT if args.format != "table" else ITEM_TABLE, args.format, out,
                           sys.stdout, table_widths=ITEM_WIDTHS)
        if out is not None:
            print(f"wrote {len(items)} rejected row(s) of {args.sync} to {out} ({args.format})")
        return 0
    groups = operate.group_rejects(items)
    if not groups:
        print(f"{args.sync}: no rejected rows" + (" match the filters" if args.reason or args.since or args.until else ""))
        return 0
    print(f"{args.sync}: {len(items)} rejected row(s) in {len(groups)} group(s), by rule")
    rows = [{"count": g["count"], "field": g["field"] or "-", "rule": g["rule"],
             "sample keys": ", ".join(str(k) for k in g["sample_keys"]),
             "sample values": ", ".join(operate.truncate(v, 30) for v in g["sample_values"]) or "-"} for g in groups]
    operate.write_rows(rows, ["count", "field", "rule", "sample keys", "sample values"], "table", out, sys.stdout,
                       table_widths={"rule": 70, "sample keys": 40, "sample values": 50})
    print(f"\nevery row: `syncline rejects {args.sync} --all` (or --format csv|json|parquet --out FILE); "
          f"after fixing the model: `syncline retry {args.sync} --rejected`")
    return 0


def _current_destination(spec: SyncSpec) -> str:
    from connectors.runner import destination_for, resolve_base_url, resolve_credentials

    return destination_for(spec, resolve_base_url(spec.vendor), resolve_credentials(spec.vendor)).id


@contextlib.contextmanager
def _sync_quiet(ledger: Any, sync: str) -> Any:
    """Hold the whole sync's lock: no run of it is delivering while items change state here."""
    with ledger.window_lock(sync, None, lambda: _note(f"{sync}: waiting for a run of it to finish")):
        yield


def cmd_retry(args: argparse.Namespace) -> int:
    (spec,) = _load([args.sync], False)
    states = [s for s, on in (("rejected", args.rejected), ("in_doubt", args.in_doubt)) if on]
    if not states and not args.keys:
        raise SynclineError("choose what to retry: --rejected, --in-doubt and/or --keys K ...")
    _window(spec, args)  # a bad window fails before anything changes
    by = args.by or operate.operator()
    filters = _filters(args, states=states or ("rejected", "in_doubt", "failed"))
    filters.destination = args.destination or _current_destination(spec)
    filters.limit = None
    ledger = open_ledger()
    try:
        if not args.destination and not ledger._query(
                "SELECT 1 FROM syncline_items WHERE sync = ? AND destination = ? LIMIT 1", (spec.name, filters.destination)):
            print(f"{spec.name}: nothing to retry: the ledger has no items of it at the destination it delivers to now "
                  f"({filters.destination}; pass --destination for another)")
            return 0
        with _sync_quiet(ledger, spec.name):
            queued = operate.mark_for_retry(ledger, spec.name, filters, by)
    finally:
        ledger.close()
    if not queued:
        print(f"{spec.name}: nothing to retry (no {' or '.join(filters.states)} items match)")
        return 0
    by_state: dict[str, int] = {}
    for item in queued:
        by_state[item["state"]] = by_state.get(item["state"], 0) + 1
    print(f"{spec.name}: queued {len(queued)} item(s) for resending ("
          + ", ".join(f"{n} {state}" for state, n in sorted(by_state.items())) + f"), requested by {by}")
    _print_table(["source_key", "was", "field", "rule"],
                 [[i["source_key"], i["state"], i["field"] or "-", operate.truncate(i["rule"], 70)] for i in queued[:20]])
    if len(queued) > 20:
        print(f"... and {len(queued) - 20} more (`syncline items {spec.name} --reason retry` lists them)")
    if by_state.get("in_doubt"):
        print("note: in-doubt items may already be at the vendor; resending them may store duplicates")
    print(f"\nrunning {spec.name} (every row is rendered again against the current model) ...", flush=True)
    runs, code = _run_all([spec], args)
    _report_runs(runs, [spec], code)
    return code


def cmd_resolve(args: argparse.Namespace) -> int:
    ledger = open_ledger()
    try:
        _known_sync(ledger, args.sync)
        by = args.by or operate.operator()
        filters = _filters(args, states=("in_doubt",))
        filters.limit = None
        with _sync_quiet(ledger, args.sync):
            changed = operate.resolve_items(ledger, args.sync, filters, delivered=args.delivered, by=by)
            missing: list[tuple[str, str]] = []
            if args.keys:
                done = {i["key"] for i in changed} | {i["source_key"] for i in changed}
                others = operate.query_items(ledger, args.sync, operate.Filters(keys=tuple(args.keys)))
                found = {i["key"]: i["state"] for i in others} | {i["source_key"]: i["state"] for i in others}
                missing = [(k, found.get(k, "not in the ledger")) for k in args.keys if k not in done]
    finally:
        ledger.close()
    verdict = "delivered (never resent)" if args.delivered else "not delivered (failed: the next run resends them)"
    print(f"{args.sync}: {len(changed)} in-doubt item(s) resolved as {verdict}, by {by}")
    if changed:
        _print_table(["key", "source_key", "destination"],
                     [[i["key"], i["source_key"], i["destination"]] for i in changed[:20]])
        if len(changed) > 20:
            print(f"... and {len(changed) - 20} more")
    for key, state in missing:
        print(f"not in doubt, left alone: {key} ({state})", file=sys.stderr)
    return EXIT_STOPPED if missing else 0


def cmd_reconcile(args: argparse.Namespace) -> int:
    (spec,) = _load([args.sync], False)
    window = _window(spec, args)
    ledger = open_ledger()
    applied: dict[str, Any] | None = None
    try:
        if args.apply:
            with _sync_quiet(ledger, spec.name):
                applied = operate.reconcile_apply(spec, ledger, window, by=args.by or operate.operator())
        report = reconcile(spec, ledger, window)
    except NotImplementedError as exc:
        raise SynclineError(f"{exc}; record a verdict on in-doubt items with `syncline resolve {spec.name}`") from None
    finally:
        ledger.close()
    if applied is not None:
        report["applied"] = applied
    print(json.dumps(report, indent=2, default=str))
    if applied is not None:
        print(f"{spec.name}: {applied['in_doubt']} in doubt: {applied['delivered']} marked delivered, "
              f"{applied['not_delivered']} marked not delivered (resent next run), {applied['undecided']} left in doubt",
              file=sys.stderr)
    return 0 if report.get("matches") else 3


# --- sandbox, ui, demo -------------------------------------------------------------------------------------------


def cmd_sandbox(args: argparse.Namespace) -> int:
    from connectors.sandbox import Sandbox

    sandbox = Sandbox(args.host, args.port, record_items=not args.counts_only)
    print(f"syncline sandbox listening on {sandbox.url} (Ctrl-C to stop). To point syncline at it:")
    for name, value in sandbox.env().items():
        print(f"export {name}={value}")
    print(flush=True)  # the end of the block, for a program reading it
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with contextlib.suppress(KeyboardInterrupt):
        sandbox.serve_forever()
    return 0


# The instance settings `syncline ui` seeds $DAGSTER_HOME with when deploy/dagster.yaml is not at hand (an
# installed wheel): the same settings, see deploy/dagster.yaml for why each is what it is.
DAGSTER_YAML = """\
# Seeded by `syncline ui` (the settings of syncline's deploy/dagster.yaml); edit freely, it is not overwritten.
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
concurrency:
  runs:
    max_concurrent_runs: 4
  pools:
    default_limit: 1
    granularity: op
    op_granularity_run_buffer: 0
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  cancel_timeout_seconds: 180
  max_resume_run_attempts: 0
  max_runtime_seconds: 43200
  poll_interval_seconds: 30
  free_slots_after_run_end_seconds: 60
telemetry:
  enabled: false
"""

WORKSPACE_YAML = """\
# Written by `syncline ui`: the code location is the installed package, wherever it is.
load_from:
  - python_module:
      module_name: pipelines.definitions
      working_directory: {folder}
"""


def _ui_files(home: Path) -> tuple[Path, Path]:
    """$DAGSTER_HOME (seeded with dagster.yaml once) and a workspace.yaml, both under SYNCLINE_HOME, so
    the UI works from an installed wheel as from a checkout."""
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True, exist_ok=True)
    instance = dagster_home / "dagster.yaml"
    if not instance.exists():
        template = settings.CHECKOUT_ROOT / "deploy" / "dagster.yaml"
        instance.write_text(template.read_text() if template.is_file() else DAGSTER_YAML)
    workspace = dagster_home / "workspace.yaml"
    workspace.write_text(WORKSPACE_YAML.format(folder=json.dumps(str(home))))
    return dagster_home, workspace


def _port_free(host: str, port: int) -> str | None:
    """None when ``host:port`` can be listened on; else why not."""
    import socket

    if port == 0:
        return None
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def _signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to a process group; False when no process of it is left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group is alive (zombies waiting for their parent do not count)."""
    proc = Path("/proc")
    if proc.is_dir():
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[-1].split()
            except OSError:
                continue
            if int(stat[2]) == pgid and stat[0] != "Z":
                return True
        return False
    return _signal_group(pgid, 0)


def run_process_group(command: Sequence[str], env: dict[str, str], cwd: Path, grace: float = 20.0) -> int:
    """Run ``command`` in its own process group; SIGINT/SIGTERM here stop the whole group (SIGINT first, as
    Ctrl-C would, then SIGKILL after ``grace`` seconds or a second signal) and nothing outlives this call."""
    import subprocess
    import time

    proc = subprocess.Popen(list(command), env=env, cwd=cwd, start_new_session=True)
    pgid = proc.pid
    asked: list[float] = []

    def stop(signum: int, _frame: Any) -> None:
        if asked:
            _signal_group(pgid, signal.SIGKILL)
        else:
            asked.append(time.monotonic())
            _note(f"stopping (signal {signum}): dagster dev, its webserver, daemon and code servers ...")
            _signal_group(pgid, signal.SIGINT)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while True:
            try:
                code = proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                if asked and time.monotonic() - asked[0] > grace:
                    _signal_group(pgid, signal.SIGKILL)
        # dagster dev is gone; whatever it started in the group goes too.
        deadline = time.monotonic() + grace
        if _group_alive(pgid):
            _signal_group(pgid, signal.SIGTERM)
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _group_alive(pgid):
            _signal_group(pgid, signal.SIGKILL)
            while _group_alive(pgid) and time.monotonic() < deadline + 5:
                time.sleep(0.1)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0 if asked else code


def cmd_ui(args: argparse.Namespace) -> int:
    """The Dagster UI on the sample warehouse, with the sandbox standing in for every vendor."""
    busy = _port_free(args.host, args.port)
    if busy:
        print(f"error: cannot serve the Dagster UI on {args.host}:{args.port}: {busy} (another process listens there; "
              "pass --port)", file=sys.stderr)
        return EXIT_STOPPED
    if not args.no_sandbox:
        busy = _port_free("127.0.0.1", args.sandbox_port)
        if busy:
            print(f"error: cannot start the sandbox on 127.0.0.1:{args.sandbox_port}: {busy} (pass --sandbox-port)",
                  file=sys.stderr)
            return EXIT_STOPPED
    dagster = Path(sys.executable).parent / "dagster"
    if not dagster.exists():
        raise SynclineError(f"dagster is not installed next to {sys.executable} (pip install dagster-webserver)")

    from pipelines.sample_data import build_warehouse

    home = settings.home()
    build_warehouse(settings.warehouse_path(), home)
    dagster_home, workspace = _ui_files(home)
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "SYNCLINE_HOME": str(home)}
    command = [str(dagster), "dev", "-w", str(workspace), "-h", args.host, "-p", str(args.port)]
    if args.no_sandbox:
        print(f"Dagster UI: http://{args.host}:{args.port} (vendors from the environment)", flush=True)
        return run_process_group(command, env, home)
    from connectors.sandbox import Sandbox

    with Sandbox(port=args.sandbox_port) as sandbox:
        env.update(sandbox.env())
        print(f"sandbox: {sandbox.url} (every vendor); Dagster UI: http://{args.host}:{args.port}", flush=True)
        return run_process_group(command, env, home)


def cmd_demo(args: argparse.Namespace) -> int:
    from pipelines.demo import run_demo

    return run_demo(warehouse_only=args.warehouse_only)


# --- the parser ------------------------------------------------------------------------------------------------


def _add_window_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--partition", type=_day, metavar="DAY", help="one daily partition (YYYY-MM-DD, UTC)")
    group.add_argument("--from", dest="from_day", type=_day, metavar="DAY", help="first day of a range (with --to)")
    parser.add_argument("--to", dest="to_day", type=_day, metavar="DAY", help="last day of a range (inclusive)")


def _add_filters(parser: argparse.ArgumentParser, *, states: bool = True, limit: int | None = 100) -> None:
    if states:
        parser.add_argument("--state", action="append", choices=ITEM_STATES,
                            help="only items in this state (repeat for several)")
    parser.add_argument("--reason", metavar="TEXT", help="only items whose reason contains TEXT (case-insensitive)")
    parser.add_argument("--since", type=_day, metavar="DAY", help="only items updated on or after DAY (UTC)")
    parser.add_argument("--until", type=_day, metavar="DAY", help="only items updated on or before DAY (UTC)")
    parser.add_argument("--destination", metavar="DEST",
                        help="only items at this destination (its id, identity or name; see `syncline log`)")
    parser.add_argument("--limit", type=int, default=limit, metavar="N",
                        help=f"at most N rows, newest first (default {limit}; 0: all)" if limit else
                        "at most N rows, newest first (default: all)")


def _add_output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=operate.FORMATS, default="table",
                        help="table (default), csv, json, or parquet (needs --out)")
    parser.add_argument("--out", metavar="FILE", help="write to FILE instead of the terminal")


def _sub(sub: Any, name: str, help_text: str, description: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help_text, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="syncline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _sub(sub, "sandbox", "run the vendor emulators on 127.0.0.1",
             "Serve local emulators of every vendor's ingestion API (Trubrics, Screeb, StreamBack, GradeMyPage, Flux)\n"
             "in the foreground, and print the environment variables that point syncline at them.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=int(os.environ.get("SYNCLINE_SANDBOX_PORT", "8765")),
                   help="port to listen on (default $SYNCLINE_SANDBOX_PORT or 8765; 0: any free port)")
    p.add_argument("--counts-only", action="store_true", help="keep counters, not items (for benchmarks)")
    p.set_defaults(func=cmd_sandbox)

    p = _sub(sub, "demo", "sample warehouse -> sandbox, every sync, with a summary",
             "Build the sample warehouse under SYNCLINE_HOME, start the sandbox, run every sync against it and\n"
             "print a per-sync summary. Run it twice: the second run delivers nothing new.")
    p.add_argument("--warehouse-only", action="store_true", help="only build the sample warehouse under SYNCLINE_HOME")
    p.set_defaults(func=cmd_demo)

    p = _sub(sub, "ui", "the Dagster UI on the sample warehouse, vendors served by the sandbox",
             "Build the sample warehouse, start the sandbox in this process, and run `dagster dev` with\n"
             "DAGSTER_HOME=$SYNCLINE_HOME/dagster (seeded with syncline's instance settings) and a workspace\n"
             "written there. Ctrl-C or SIGTERM stops dagster dev, its webserver, daemon and code servers.")
    p.add_argument("--host", default="127.0.0.1", help="address of the UI (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=3000, help="port of the UI (default 3000); checked before starting")
    p.add_argument("--sandbox-port", type=int, default=0, help="port of the sandbox (default: any free port)")
    p.add_argument("--no-sandbox", action="store_true", help="use the vendor URLs and keys in the environment")
    p.set_defaults(func=cmd_ui)

    p = _sub(sub, "list", "list syncs, check their models, report broken sync files",
             "List every sync found (packaged and SYNCLINE_SYNCS_DIR), bind each model against its source and\n"
             "report SQL errors, and report sync files that failed to load (file and field). Exits 1 on any error.")
    p.add_argument("--no-check", action="store_true", help="do not bind the models against their sources")
    p.set_defaults(func=cmd_list)

    p = _sub(sub, "run", "run syncs against the configured vendors",
             "Extract, transform and deliver syncs to the vendors the environment names. With --all every sync\n"
             "that loads runs; one that fails does not stop the others.\n\n"
             "exit codes: 0 ok; 1 a sync stopped or errored; 2 configuration error; 3 items left pending;\n"
             "128+N a run was interrupted by signal N (130 SIGINT, 143 SIGTERM)")
    p.add_argument("syncs", nargs="*", metavar="SYNC", help="syncs to run (see `syncline list`)")
    p.add_argument("--all", action="store_true", help="every sync")
    p.add_argument("--dry-run", action="store_true", help="extract, render and plan; send nothing, write no ledger")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="with --dry-run: write <DIR>/<sync>/requests.jsonl (every request a real run would send: "
                        "method, URL, redacted headers, body, keys), rejected.jsonl and plan.json")
    _add_window_args(p)
    p.set_defaults(func=cmd_run)

    p = _sub(sub, "preview", "show rendered payloads and validation results",
             "Render a sync's payloads for a window and show them, without sending anything. Valid rows by\n"
             "default; --rejected shows the rows that fail validation, with their reasons. Long values are cut\n"
             f"at {PREVIEW_WIDTH} characters.")
    p.add_argument("sync", metavar="SYNC", help="the sync to preview")
    p.add_argument("--limit", type=int, default=5, metavar="N", help="rows to show (default 5)")
    p.add_argument("--rejected", action="store_true", help="show rejected rows and why, instead of valid ones")
    _add_window_args(p)
    p.set_defaults(func=cmd_preview)

    p = _sub(sub, "log", "recent runs, attempts and rejection rules",
             "Recent runs (status, counts, resends after unknown outcomes, destination), their errors, recent\n"
             "HTTP attempts with vendor errors as readable text, and rejections grouped by rule.")
    p.add_argument("sync", nargs="?", metavar="SYNC", help="only this sync (default: every sync)")
    p.add_argument("--limit", type=int, default=20, metavar="N", help="runs and attempts to show (default 20)")
    p.set_defaults(func=cmd_log)

    p = _sub(sub, "items", "every item of a sync in the ledger, with its reason split into rule, field and value",
             "One row per item of the sync in the ledger: idempotency key, source key, state, the reason split into\n"
             "field, rule and the row's value, attempts of its request(s), resends after an unknown outcome, and\n"
             "the destination. Filters combine; --format/--out export.")
    p.add_argument("sync", metavar="SYNC", help="the sync")
    _add_filters(p)
    _add_output(p)
    p.set_defaults(func=cmd_items)

    p = _sub(sub, "rejects", "rejected rows grouped by rule, with samples; or every one (--all)",
             "Rejected rows of a sync grouped by rule and field: how many, sample source keys and sample values.\n"
             "--all, or --format csv|json|parquet, exports every rejected row in full instead.")
    p.add_argument("sync", metavar="SYNC", help="the sync")
    p.add_argument("--all", action="store_true", help="every rejected row, not groups")
    _add_filters(p, states=False, limit=None)
    _add_output(p)
    p.set_defaults(func=cmd_rejects)

    p = _sub(sub, "retry", "queue rejected, in-doubt or chosen items again, then run the sync",
             "Mark the chosen items failed ('retry requested by <user> at <time>') so they are sent again, then run\n"
             "the sync: every row is rendered again against the current model, so a fixed row is delivered and a\n"
             "row that still breaks a rule is rejected again. Delivered items are never resent.")
    p.add_argument("sync", metavar="SYNC", help="the sync")
    p.add_argument("--rejected", action="store_true", help="every rejected item")
    p.add_argument("--in-doubt", action="store_true", help="every in-doubt item (may store duplicates at the vendor)")
    p.add_argument("--keys", nargs="+", metavar="K", help="these items (idempotency keys or source keys)")
    p.add_argument("--reason", metavar="TEXT", help="only items whose reason contains TEXT")
    p.add_argument("--destination", metavar="DEST", help="items at this destination (default: where the sync delivers now)")
    p.add_argument("--by", metavar="NAME", help="who asks (default: your login name)")
    _add_window_args(p)
    p.set_defaults(func=cmd_retry)

    p = _sub(sub, "resolve", "a person's verdict on items left in doubt",
             "Settle in-doubt items by hand: --delivered (the vendor has them: never resent) or --not-delivered\n"
             "(failed: the next run resends them). Records who decided (resolved_by) and when (resolved_at).\n"
             "Waits for a running delivery of the sync to finish first.")
    p.add_argument("sync", metavar="SYNC", help="the sync")
    verdict = p.add_mutually_exclusive_group(required=True)
    verdict.add_argument("--delivered", action="store_true", help="the vendor holds them")
    verdict.add_argument("--not-delivered", action="store_true", help="the vendor does not hold them: resend")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--keys", nargs="+", metavar="K", help="these items (idempotency keys or source keys)")
    which.add_argument("--all-in-doubt", action="store_true", help="every in-doubt item of the sync")
    p.add_argument("--destination", metavar="DEST", help="only items at this destination")
    p.add_argument("--by", metavar="NAME", help="who decides (default: your login name, or $USER)")
    p.set_defaults(func=cmd_resolve)

    p = _sub(sub, "reconcile", "compare the ledger with the vendor's read API (Flux, StreamBack)",
             "Count what the vendor holds for the sync's window against what the ledger marks delivered (JSON).\n"
             "--apply also settles in-doubt items item by item where the read API can tell (Flux: by key;\n"
             "StreamBack: finalized feedback ids), and leaves the rest in doubt, saying so. Exits 3 on a mismatch.")
    p.add_argument("sync", metavar="SYNC", help="the sync")
    p.add_argument("--apply", action="store_true", help="settle in-doubt items the vendor's answer makes certain")
    p.add_argument("--by", metavar="NAME", help="recorded as who resolved (default: your login name)")
    _add_window_args(p)
    p.set_defaults(func=cmd_reconcile)
    return parser


def _quiet_stdout() -> None:
    """After a closed pipe (``syncline log | head``): drop whatever is still buffered, without a traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "limit", None) == 0 and args.command in ("items", "rejects"):
        args.limit = None
    try:
        code = int(args.func(args))
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_SIGNAL + int(signal.SIGPIPE)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except SynclineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_SIGNAL + int(signal.SIGINT)


if __name__ == "__main__":
    sys.exit(main())
