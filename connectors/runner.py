"""Run a sync end to end without Dagster: extract -> payloads -> delivered. The CLI and the assets share it.

Base URL and credentials come from the environment (``<PREFIX>_BASE_URL`` and the vendor's credential
variables) unless passed in, so one command drives the sandbox, a staging vendor or production.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

from connectors import settings
from connectors.engine.deliver import ChunkLimits, Delivery, DeliveryOptions
from connectors.engine.endpoint import Endpoint, Vendor
from connectors.engine.http import HttpClient
from connectors.engine.ratelimit import RateLimiter, credential_scope
from connectors.engine.retry import Backoff
from connectors.engine.sender import Sender, SendPolicy, redact
from connectors.errors import SynclineError
from connectors.ledger import Ledger, RunRow, open_ledger
from connectors.spec import SyncSpec
from connectors.stage import Window, extract, staging_path, transform


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
    ledger: Ledger | None = None,
    endpoint: Endpoint | None = None,
) -> Sender:
    endpoint = endpoint or spec.endpoint
    require_credential(spec.vendor, credentials, endpoint.credential)
    policy = SendPolicy(
        max_attempts=spec.delivery.max_attempts,
        backoff=Backoff(spec.delivery.backoff_base, spec.delivery.backoff_cap),
        max_retry_after=spec.delivery.max_retry_after,
    )
    client = HttpClient(base_url, timeout=spec.delivery.timeout)
    single = None
    if endpoint.single is not None and endpoint.single_below > 0:
        single = make_sender(spec, credentials, base_url, run_id, ledger, endpoint.single)
    return Sender(
        endpoint, credentials, client, _limiter(spec, endpoint, credentials), policy,
        run_id=run_id, sync=spec.name, progress_store=ledger, single=single,
    )


def delivery_options(spec: SyncSpec, dry_run: bool = False) -> DeliveryOptions:
    endpoint = spec.endpoint
    limits = ChunkLimits(
        max_items=min(spec.delivery.max_items or endpoint.max_items, endpoint.max_items),
        max_body_bytes=spec.delivery.max_body_bytes or endpoint.max_body_bytes,
        envelope_bytes=endpoint.envelope_bytes(),
    )
    concurrency = spec.delivery.concurrency
    if endpoint.rate is not None and endpoint.rate.interval > 1:
        concurrency = 1  # a slow limit gains nothing from parallel requests; keep order simple
    return DeliveryOptions(limits, concurrency, spec.mode, spec.delivery.in_doubt, dry_run)


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def deliver_file(
    spec: SyncSpec,
    payload_path: Path,
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
) -> RunRow:
    """Deliver a rendered payload file and record the run in the ledger.

    The sync's ``window`` is locked for the delivery (see :meth:`Ledger.window_lock`): an overlapping run
    of the same sync waits, then skips what this one delivered, so concurrent backfills never double-send.
    """
    run = RunRow(run_id, spec.name, spec.endpoint.name, span, dry_run=dry_run)
    if dry_run:
        return Delivery(None, ledger, run, delivery_options(spec, dry_run), on_progress).run_file(payload_path)
    creds = resolve_credentials(spec.vendor, credentials)
    sender = make_sender(spec, creds, resolve_base_url(spec.vendor, base_url), run_id, ledger)
    days = (window or Window()).day_labels() if spec.partitioned else None
    with ledger.window_lock(spec.name, days, on_wait):
        ledger.start_run(run)
        delivery = Delivery(sender, ledger, run, delivery_options(spec, dry_run), on_progress)
        try:
            result = delivery.run_file(payload_path)
        except Exception as exc:
            # Whatever failed, its message may quote a request (and so a key): store and raise it redacted.
            message = redact(f"{exc.__class__.__name__}: {exc}", creds)
            run.status, run.error = "error", message
            ledger.finish_run(run)
            raise SynclineError(f"{spec.name}: delivery failed: {message}") from None
        ledger.finish_run(result)
    return result


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
) -> RunRow:
    """Extract, transform and deliver one window of one sync."""
    window = window or Window()
    run_id = run_id or new_run_id()
    own_ledger = ledger is None
    ledger = ledger or open_ledger()
    out_dir = staging_path(spec, window, run_id)
    try:
        extract_path, _ = extract(spec, window, out_dir)
        payload_path, _, _ = transform(spec, extract_path, out_dir)
        return deliver_file(
            spec, payload_path, run_id=run_id, span=window.label, ledger=ledger, credentials=credentials,
            base_url=base_url, dry_run=dry_run, on_progress=on_progress, window=window,
            on_wait=lambda: print(f"{spec.name}: waiting for another run delivering an overlapping window",
                                  file=sys.stderr, flush=True),
        )
    finally:
        if not keep_staging:
            shutil.rmtree(out_dir, ignore_errors=True)
        if own_ledger:
            ledger.close()
