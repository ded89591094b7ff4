"""The one pipeline path: extract -> payloads -> delivered. Dagster, the CLI, preview and dry run all use it.

:class:`SyncPipeline` holds one run's staging folder and runs each stage once, in order; callers (the asset
factory, ``syncline run``, ``syncline preview``) only choose how far to go and what to report between
stages. Base URL and credentials come from the environment (``<PREFIX>_BASE_URL`` and the vendor's
credential variables) unless passed in, so one command drives the sandbox, a staging vendor or production.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import pyarrow.parquet as pq

from connectors import settings
from connectors.destination import Destination, resolve_destination
from connectors.engine.deliver import ChunkLimits, Delivery, DeliveryOptions
from connectors.engine.dryrun import DryRunOutput
from connectors.engine.endpoint import Endpoint, RunContext, Vendor
from connectors.engine.http import HttpClient, make_client
from connectors.engine.ratelimit import RateLimiter, credential_scope
from connectors.engine.retry import Backoff
from connectors.engine.sender import Sender, SendPolicy, redact
from connectors.errors import Interrupted, SynclineError
from connectors.ledger import ItemRow, Ledger, RunRow, open_ledger
from connectors.progress import NoProgress, Progress
from connectors.spec import SyncSpec
from connectors.stage import (
    Rendered,
    Window,
    extract_window,
    remove_dead_staging,
    render_payloads,
    staging_path,
)

RATE_LIMITED_CONCURRENCY = 4  # documented limits pace requests; a few in flight cover the round trip
DEFAULT_CONCURRENCY = 64  # the most in flight where no rate is documented (adaptive below it)


def resolve_base_url(vendor: Vendor, given: str | None = None) -> str:
    return (given or os.environ.get(vendor.base_url_env) or vendor.default_base_url).rstrip("/")


def resolve_credentials(vendor: Vendor, given: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """Credentials by name, from ``given`` or the environment. Errors name the variable, never the value."""
    found: dict[str, str] = {}
    for cred in vendor.credentials:
        value = ((given or {}).get(cred.name) or os.environ.get(cred.env) or "").strip()
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
            raise SynclineError(f"{vendor.title}: {cred.env} contains a control character; fix the secret's value")
        if value:
            found[cred.name] = value
    return found


def require_credential(vendor: Vendor, credentials: Mapping[str, str], name: str) -> None:
    if name not in credentials:
        env = next(c.env for c in vendor.credentials if c.name == name)
        raise SynclineError(f"{vendor.title}: set {env} in the environment (the sync needs it to authenticate)")


def destination_for(spec: SyncSpec, base_url: str, credentials: Mapping[str, str]) -> Destination:
    return resolve_destination(spec.vendor.name, base_url, credentials, spec.endpoint.credential, spec.destination_name)


def _limiter(spec: SyncSpec, endpoint: Endpoint, credentials: Mapping[str, str]) -> RateLimiter:
    interval = 0.0  # no documented rate: no spacing, but a Retry-After still pauses the whole credential
    if endpoint.rate is not None:
        rate = endpoint.rate
        interval = rate.per_seconds / (rate.requests * (spec.delivery.rate_safety or rate.safety))
    # Scoped by credential and endpoint path: one key's budget is shared by every run that uses it.
    scope = credential_scope(f"{spec.vendor.name}{endpoint.path}", credentials[endpoint.credential])
    return RateLimiter(settings.home() / "ratelimit", scope.replace("/", "_"), interval)


def make_sender(
    spec: SyncSpec,
    credentials: Mapping[str, str],
    base_url: str,
    run_id: str,
    ledger: Any = None,
    endpoint: Endpoint | None = None,
    *,
    destination: str = "",
    client: HttpClient | None = None,
) -> Sender:
    """A Sender for the sync's endpoint. ``ledger`` is only for side uses (reconcile); a delivery wires
    its own progress store through the run's ledger writer."""
    endpoint = endpoint or spec.endpoint
    require_credential(spec.vendor, credentials, endpoint.credential)
    policy = SendPolicy(
        max_attempts=spec.delivery.max_attempts,
        backoff=Backoff(spec.delivery.backoff_base, spec.delivery.backoff_cap),
        max_retry_after=spec.delivery.max_retry_after,
    )
    client = client or make_client(base_url, timeout=spec.delivery.timeout, pool_size=delivery_options(spec).concurrency)
    single = None
    if endpoint.single is not None and endpoint.single_below > 0:
        single = make_sender(spec, credentials, base_url, run_id, ledger, endpoint.single,
                             destination=destination, client=client)
    progress = _BoundProgress(ledger, destination) if ledger is not None else None
    return Sender(
        endpoint, credentials, client, _limiter(spec, endpoint, credentials), policy,
        run_id=run_id, sync=spec.name, progress_store=progress, single=single, destination=destination,
        in_doubt=spec.delivery.in_doubt,
    )


class _BoundProgress:
    """A ledger's progress methods bound to one destination (for side uses outside a delivery)."""

    def __init__(self, ledger: Ledger, destination: str) -> None:
        self.ledger, self.destination = ledger, destination

    def progress(self, idem_keys: Any) -> dict[str, tuple[str | None, str | None]]:
        return self.ledger.progress(self.destination, list(idem_keys))

    def set_progress(self, idem_key: str, progress: str, vendor_id: str | None = None) -> None:
        self.ledger.set_progress(self.destination, idem_key, progress, vendor_id)


def delivery_options(spec: SyncSpec, dry_run: bool = False) -> DeliveryOptions:
    endpoint = spec.endpoint
    limits = ChunkLimits(
        max_items=min(spec.delivery.max_items or endpoint.max_items, endpoint.max_items),
        max_body_bytes=spec.delivery.max_body_bytes or endpoint.max_body_bytes,
        envelope_bytes=endpoint.envelope_bytes(),
    )
    rate_limited = endpoint.rate is not None
    concurrency = spec.delivery.concurrency or (RATE_LIMITED_CONCURRENCY if rate_limited else DEFAULT_CONCURRENCY)
    if rate_limited and endpoint.rate is not None and endpoint.rate.interval > 1:
        concurrency = 1  # a slow limit gains nothing from parallel requests; keep order simple
    return DeliveryOptions(
        limits, concurrency, adaptive=spec.delivery.adaptive and not rate_limited, mode=spec.mode,
        in_doubt=spec.delivery.in_doubt, dry_run=dry_run, memory_limit=settings.duckdb_memory(),
        threads=settings.duckdb_threads(), breaker_failures=spec.delivery.breaker_failures,
        deadline=spec.delivery.deadline,
    )


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


# the ledger's snapshot (a call that waits for it: it is written while the source is extracted) ->
# (payload file, rows left out)
Render = Callable[[Callable[[], Path] | None], tuple[Path, int]]


class StopSignals:
    """SIGINT/SIGTERM during a run (installed by ``syncline run``): the first asks the delivery to stop
    cleanly (claim nothing new, record what is on the wire, print the summary); the second aborts at once,
    leaving whatever is in flight ``in_doubt`` (claims are durable before a request leaves)."""

    def __init__(self) -> None:
        self.delivery: Delivery | None = None
        self.received = 0

    def handle(self, signum: int, _frame: Any) -> None:
        self.received += 1
        name = signal.Signals(signum).name
        if self.received > 1:
            print(f"{name} again: aborted; requests in flight stay in_doubt (rerun to resume)",
                  file=sys.stderr, flush=True)
            os._exit(128 + signum)
        stop = Interrupted(signum, f"interrupted by {name}: nothing new was claimed, answers in flight were "
                                   "recorded; rerun to resume")
        if self.delivery is None:
            raise stop  # still extracting or rendering: nothing was claimed yet
        print(f"{name}: stopping after the requests in flight (again to abort at once)", file=sys.stderr, flush=True)
        self.delivery.request_stop(stop)

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopSignals]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self.handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _remove_dead_staging(ledger: Ledger, say: Callable[[str], None]) -> None:
    """Staging of runs whose process died holds raw source rows: remove it (only under SYNCLINE_HOME).
    Folders name their owning process (:func:`~connectors.stage.staging_path`); the ledger's record of a
    run's folder covers folders made before they did."""
    root = settings.home().resolve()
    for path in remove_dead_staging():
        say(f"removed the staging files of a process that died: {path}")
    for folder in ledger.take_dead_staging():
        path = Path(folder).resolve()
        if path.is_relative_to(root) and path.exists():
            shutil.rmtree(path, ignore_errors=True)
            say(f"removed the staging files of a run that died: {path}")


def settle_in_doubt(spec: SyncSpec, sender: Sender, ledger: Ledger, destination: str,
                    say: Callable[[str], None]) -> int:
    """Ask a vendor that can be read back what it holds of the items earlier runs left ``in_doubt``:
    found ones become delivered, the rest failed (surely not stored, so sent again without risk). Items
    the read-back cannot settle stay in doubt (then ``delivery.in_doubt`` decides, and resends count)."""
    endpoint = sender.endpoint
    if endpoint.dedup != "read_back" or endpoint.steps:
        return 0
    rows = ledger.items(spec.name, state="in_doubt", limit=100_000, destination=destination)
    if not rows:
        return 0
    try:
        answer = endpoint.resolve_in_doubt(sender, rows)
    except Exception as exc:  # the items stay in doubt: never lost
        say(f"{spec.name}: could not read back {len(rows)} in-doubt items ({exc.__class__.__name__}: {exc})")
        return 0
    if answer is None:
        return 0
    found, checked = answer
    settled = [
        ItemRow(destination, r["idem_key"], r["sync"], r["endpoint"], r["source_key"], r["payload_hash"],
                "delivered" if r["idem_key"] in found else "failed",
                None if r["idem_key"] in found else "not stored at the vendor (read back after an unknown outcome)",
                found.get(r["idem_key"]), r["run_id"], r["chunk_id"], None, r["cursor"])
        for r in rows if r["idem_key"] in checked
    ]
    ledger.write_items(settled)
    say(f"{spec.name}: read back {len(settled)} items left in doubt: {len(found)} stored, "
        f"{len(settled) - len(found)} to send")
    return len(settled)


def deliver_file(
    spec: SyncSpec,
    payload_path: Path | None,
    *,
    run_id: str,
    span: str,
    ledger: Ledger,
    credentials: Mapping[str, str] | None = None,
    base_url: str | None = None,
    dry_run: bool = False,
    on_progress: Callable[[RunRow], None] | None = None,
    window: Window | None = None,
    on_wait: Callable[[], None] | None = None,
    announce: Callable[[str], None] | None = None,
    render: Render | None = None,
    work_dir: Path | None = None,
    signals: StopSignals | None = None,
    progress: Progress | None = None,
    notes: Callable[[], str | None] | None = None,
    dry_out: Path | None = None,
) -> RunRow:
    """Deliver a rendered payload file (or what ``render`` makes, given the ledger's snapshot of this
    destination) and record the run in the ledger.

    The sync's ``window`` is locked for the delivery (see :meth:`Ledger.window_lock`): an overlapping run
    of the same sync waits, then skips what this one delivered, so concurrent backfills never double-send.
    """
    say = announce or (lambda _message: None)
    base = resolve_base_url(spec.vendor, base_url)
    creds = resolve_credentials(spec.vendor, credentials)
    dest = destination_for(spec, base, creds)
    run = RunRow(run_id, spec.name, spec.endpoint.name, span, dry_run=dry_run, destination=dest.id,
                 ledger=ledger.description, host=socket.gethostname(), pid=os.getpid())
    say(f"{spec.name}: destination {dest.describe()} [{dest.id}]; ledger {ledger.description}")
    options = delivery_options(spec, dry_run)
    # Removals need the whole source: a window shows only part of it, so what is missing there is not gone.
    options.removals = spec.mode == "mirror" and (window is None or window.start is None)
    folder = work_dir or (payload_path.parent if payload_path is not None else staging_path(spec, window or Window(), run_id))
    run.staging = str(folder) if work_dir is not None else ""

    def plan() -> tuple[Path, Path | None]:
        """The snapshot, then the payloads: rows this destination has are never rendered (append mode)."""
        folder.mkdir(parents=True, exist_ok=True)
        if spec.mode != "append" and not dry_run:
            ledger.explode_groups(dest.id, spec.name)  # mirror mode keeps per-item state
        state = ledger.start_snapshot(dest.id, spec.name, folder / "ledger_state.parquet",
                                      delivered_hashes=spec.mode != "append")
        if payload_path is not None:
            return payload_path, state() if state is not None else None
        assert render is not None
        leave_out = spec.mode == "append" and not spec.endpoint.rules_span_rows
        try:
            path, left_out = render(state if leave_out else None)
        except BaseException:
            if state is not None:
                with contextlib.suppress(Exception):
                    state()  # the child writing it is waited for, not left behind
            raise
        run.source_rows += left_out
        run.skipped += left_out
        return path, state() if state is not None else None

    def with_notes(result: RunRow) -> RunRow:
        extra = notes() if notes else None
        if extra:
            result.notes = f"{extra}; {result.notes}" if result.notes else extra
        return result

    if dry_run:
        path, state = plan()
        dry = Delivery(None, ledger, run, options, on_progress)
        if dry_out is not None:
            endpoint = spec.endpoint.bind(RunContext(spec.name, run_id, None))
            secret = [c.name for c in spec.vendor.credentials if c.secret]
            dry.dry_output = DryRunOutput(dry_out, spec.name, endpoint, base, creds, secret,
                                          {c.name: c.env for c in spec.vendor.credentials})
        return with_notes(dry.run_file(path, folder, state=state))
    sender = make_sender(spec, creds, base, run_id, destination=dest.id)
    shown = progress or NoProgress()
    for limiter in {id(s.limiter): s.limiter for s in (sender, sender.single) if s is not None}.values():
        limiter.on_wait = lambda seconds: shown.waiting(seconds, spec.vendor.name)
    days = (window or Window()).lock_labels(spec) if spec.partitioned else None
    with ledger.window_lock(spec.name, days, on_wait):
        ledger.register_destination(dest)
        ledger.fold()  # a crashed run's journal counts before this run plans
        _remove_dead_staging(ledger, say)
        moved = ledger.adopt(spec.name, dest)
        if moved:
            say(f"{spec.name}: {moved} items recorded before this destination had its identity now belong to it")
        ledger.start_run(run)
        delivery = Delivery(sender, ledger, run, options, on_progress, progress)
        if signals is not None:
            signals.delivery = delivery
        try:
            settle_in_doubt(spec, sender, ledger, dest.id, say)
            path, state = plan()
            result = delivery.run_file(path, folder, state=state)
        except Interrupted as stop:  # before delivery began (rendering): nothing was claimed
            run.status, run.error, run.stop_signal = "interrupted", str(stop), stop.signum
            ledger.finish_run(run)
            return run
        except Exception as exc:
            # Whatever failed, its message may quote a request (and so a key): store and raise it redacted.
            message = redact(f"{exc.__class__.__name__}: {exc}", creds)
            run.status, run.error = "error", message
            ledger.finish_run(run)
            if isinstance(exc, SynclineError):
                raise
            raise SynclineError(f"{spec.name}: delivery failed: {message}") from None
        finally:
            if signals is not None:
                signals.delivery = None
            sender.client.close()
        ledger.finish_run(with_notes(result))
    return result


@dataclass
class StageCounts:
    extracted: int = 0  # source rows in the window
    rendered: int = 0  # items rendered (not those left out as delivered already)
    failing_validation: int = 0
    items: int = 0  # every item the model made: a model that filters rows, or fans one row out, differs


class SyncPipeline:
    """One run of one sync over one window: its staging folder and its stages, each run once, in order.

    Staging holds raw source rows, so it is removed on exit whatever happened (``keep_staging`` aside)."""

    def __init__(self, spec: SyncSpec, window: Window | None = None, *, run_id: str | None = None,
                 files: list[str] | None = None, keep_staging: bool = False) -> None:
        self.spec = spec
        self.window = window or Window()
        self.run_id = run_id or new_run_id()
        self.files = files
        self.keep_staging = keep_staging
        self.out_dir = staging_path(spec, self.window, self.run_id)
        self.counts = StageCounts()
        self.extract_path: Path | None = None
        self.payload_path: Path | None = None
        self.null_cursor_note: str | None = None  # "N rows have no <cursor>: ..." on a windowed run
        self.model_note: str | None = None  # "the model made N items from M source rows" and the like

    def __enter__(self) -> SyncPipeline:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if not self.keep_staging:
            shutil.rmtree(self.out_dir, ignore_errors=True)

    def extract(self) -> Path:
        if self.extract_path is None:
            staged = extract_window(self.spec, self.window, self.out_dir, self.files)
            self.extract_path, self.counts.extracted = staged.path, staged.rows
            self.null_cursor_note = staged.note(self.spec)
        return self.extract_path

    def render(self) -> Path:
        if self.payload_path is None:
            self._rendered(render_payloads(self.spec, self.extract(), self.out_dir))
        assert self.payload_path is not None
        return self.payload_path

    def _rendered(self, done: Rendered) -> None:
        self.payload_path, self.counts.rendered, self.counts.failing_validation = done.path, done.rows, done.rejected
        self.counts.items = done.items
        self.model_note = done.note(self.spec, self.counts.extracted)

    def _notes(self) -> str | None:
        return "; ".join(n for n in (self.null_cursor_note, self.model_note) if n) or None

    def preview(self, limit: int, *, rejected_only: bool = False) -> list[dict[str, Any]]:
        """The first rendered rows (``_key``, ``payload``, ``reject_reason``), read from the payload file."""
        table = pq.read_table(self.render(), columns=["_key", "payload", "reject_reason"])
        if rejected_only:
            import pyarrow.compute as pc

            table = table.filter(pc.is_valid(table.column("reject_reason")))
        return table.slice(0, limit).to_pylist()

    def _render_pending(self, delivered: Callable[[], Path] | None) -> tuple[Path, int]:
        done = render_payloads(self.spec, self.extract(), self.out_dir, delivered)
        self._rendered(done)
        return done.path, done.left_out

    def deliver(
        self,
        *,
        ledger: Ledger,
        credentials: Mapping[str, str] | None = None,
        base_url: str | None = None,
        dry_run: bool = False,
        on_progress: Callable[[RunRow], None] | None = None,
        on_wait: Callable[[], None] | None = None,
        announce: Callable[[str], None] | None = None,
        signals: StopSignals | None = None,
        progress: Progress | None = None,
        dry_out: Path | None = None,
    ) -> RunRow:
        # Rendered already (Dagster shows the payloads asset first): deliver that file. Otherwise render
        # inside the delivery, after the ledger snapshot, leaving out what the destination has.
        return deliver_file(
            self.spec, self.payload_path, run_id=self.run_id, span=self.window.label, ledger=ledger,
            credentials=credentials, base_url=base_url, dry_run=dry_run, on_progress=on_progress,
            window=self.window, on_wait=on_wait, announce=announce,
            render=None if self.payload_path is not None else self._render_pending, work_dir=self.out_dir,
            signals=signals, progress=progress, notes=self._notes, dry_out=dry_out,
        )


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_sync(
    spec: SyncSpec,
    window: Window | None = None,
    *,
    run_id: str | None = None,
    ledger: Ledger | None = None,
    credentials: Mapping[str, str] | None = None,
    base_url: str | None = None,
    dry_run: bool = False,
    keep_staging: bool = False,
    on_progress: Callable[[RunRow], None] | None = None,
    announce: Callable[[str], None] | None = None,
    handle_signals: bool = False,
    progress: Progress | None = None,
    dry_out: Path | None = None,
) -> RunRow:
    """Extract, transform and deliver one window of one sync. ``handle_signals`` (the CLI): SIGINT and
    SIGTERM stop the run cleanly (see :class:`StopSignals`); the run ends ``interrupted``."""
    own_ledger = ledger is None
    ledger = ledger or open_ledger()
    signals = StopSignals()
    try:
        with contextlib.ExitStack() as stack:
            if handle_signals:
                stack.enter_context(signals.installed())
            pipeline = stack.enter_context(SyncPipeline(spec, window, run_id=run_id, keep_staging=keep_staging))
            return pipeline.deliver(
                ledger=ledger, credentials=credentials, base_url=base_url, dry_run=dry_run,
                on_progress=on_progress, announce=announce,
                on_wait=lambda: _stderr(f"{spec.name}: waiting for another run delivering an overlapping window"),
                signals=signals if handle_signals else None, progress=progress, dry_out=dry_out,
            )
    except Interrupted as stop:  # while extracting or rendering: nothing was claimed or sent
        return RunRow(pipeline_run_id(run_id), spec.name, spec.endpoint.name, (window or Window()).label,
                      status="interrupted", error=str(stop), stop_signal=stop.signum, ledger=ledger.description)
    finally:
        if own_ledger:
            ledger.close()


def pipeline_run_id(run_id: str | None) -> str:
    return run_id or "-"


def reconcile(
    spec: SyncSpec,
    ledger: Ledger,
    window: Window | None = None,
    *,
    credentials: Mapping[str, str] | None = None,
    base_url: str | None = None,
    run_id: str | None = None,
) -> dict[str, Any]:
    """What the vendor holds for the window vs what the ledger delivered there (vendors with a read API)."""
    window = window or Window()
    base = resolve_base_url(spec.vendor, base_url)
    creds = resolve_credentials(spec.vendor, credentials)
    dest = destination_for(spec, base, creds)
    delivered = ledger.delivered_in_window(spec.name, window.start, window.end, destination=dest.id)
    sender = make_sender(spec, creds, base, run_id or new_run_id(), ledger, destination=dest.id)
    try:
        report = spec.endpoint.reconcile(
            sender, sync=spec.name,
            window_start=window.start.isoformat() if window.start else None,
            window_end=window.end.isoformat() if window.end else None,
            delivered=delivered,
        )
    finally:
        sender.client.close()
    return {"destination": dest.identity, **report}
