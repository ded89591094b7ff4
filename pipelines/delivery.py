"""Dagster wiring for deliveries made from users' own assets (``TrubricsResource.publish_events(df, ...)``).

What a user's asset gets that a generated sync asset has:

- a **name** for the ledger, derived from the asset key when not given (``<asset>_to_<vendor>_<endpoint>``,
  see :func:`sync_name`): stable while the asset keeps its key; pass ``name=`` to survive a rename;
- the **partition's window** (``context.partition_time_window``, also for a single-run backfill of a
  range) when a ``cursor`` column is given, so the ledger records it and overlapping backfills lock and
  skip exactly as a partitioned sync file's do;
- Dagster **logs** (the destination line, progress every 30 s, waits for overlapping runs);
- the same **metadata** (:func:`delivery_metadata`: the generated assets' numeric keys and reasons table,
  built by the same functions in :mod:`pipelines.factory`) and **checks** (:func:`delivery_checks`, with
  the verdict functions the generated checks use).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import dagster as dg

from connectors.api import Delivery, DeliveryResult, Key, WindowLike, deliver
from connectors.inputs import DeliverInput
from connectors.ledger import open_ledger
from connectors.progress import PlainProgress
from connectors.spec import NAME_RE, CursorUnit, Mode, NullCursor
from connectors.stage import Window
from pipelines.factory import (
    duplicates_result,
    reasons_markdown,
    rejected_share_result,
    run_metadata,
    settled_result,
)

if TYPE_CHECKING:
    from pipelines.resources import VendorResource

MAX_NAME = 63


def delivery_metadata(result: DeliveryResult) -> dict[str, Any]:
    """The generated ``delivered`` asset's metadata for ``result``, plus the name, window and input size.

    A choice (docs/resources.md): in a single-run backfill the counts are the whole range's, and Dagster
    attaches them to each partition of the range (``window`` names the range)."""
    metadata = run_metadata(result.run)
    metadata["rejection_reasons"] = reasons_markdown(result.reasons)
    metadata["sync_name"] = dg.MetadataValue.text(result.name)
    metadata["window"] = dg.MetadataValue.text(result.window)
    metadata["input_rows"] = dg.MetadataValue.int(result.input_rows)
    if result.outside_window:
        metadata["rows_outside_window"] = dg.MetadataValue.int(result.outside_window)
    return metadata


def sync_name(asset: dg.AssetKey | str | Sequence[str], vendor: str, endpoint: str) -> str:
    """``<asset path joined by _>_to_<vendor>_<endpoint>``, lower_snake_case, at most 63 characters (a
    longer one keeps its first 54 and a hash of the whole, so two long keys never share a name)."""
    key = asset if isinstance(asset, dg.AssetKey) else dg.AssetKey.from_coercible(asset)
    text = re.sub(r"[^a-z0-9_]+", "_", f"{'_'.join(key.path)}_to_{vendor}_{endpoint}".lower()).strip("_")
    if not text or not text[0].isalpha():
        text = f"a_{text}"
    if len(text) > MAX_NAME:
        text = f"{text[:54]}_{hashlib.sha256(text.encode()).hexdigest()[:8]}"
    assert NAME_RE.match(text), text
    return text


def current_context() -> dg.AssetExecutionContext | None:
    """The asset context of the step running now, if any (so callers need not pass ``context``)."""
    try:
        return dg.AssetExecutionContext.get()
    except Exception:  # outside a run (a script, a notebook): no context
        return None


def _asset_key(context: dg.AssetExecutionContext) -> dg.AssetKey:
    try:
        return context.asset_key
    except Exception:  # a multi-asset step has several keys: its op names it
        return dg.AssetKey(context.op_def.name)


def window_from(context: dg.AssetExecutionContext) -> Window | None:
    """The run's partition (or range of partitions) as a UTC window; None when the asset is not
    time-partitioned."""
    if not (context.has_partition_key or context.has_partition_key_range):
        return None
    try:
        span = context.partition_time_window
    except Exception:  # static or dynamic partitions: no time window
        return None
    return Window(span.start.astimezone(dt.UTC), span.end.astimezone(dt.UTC))


def deliver_from(
    resource: VendorResource,
    endpoint: str,
    data: DeliverInput,
    *,
    key: Key,
    name: str | None = None,
    cursor: str | None = None,
    model: str | None = None,
    mode: Mode = "append",
    window: WindowLike = None,
    delivery: Delivery = None,
    options: Mapping[str, Any] | None = None,
    destination_name: str | None = None,
    keep_nulls: bool = False,
    null_cursor: NullCursor = "exclude",
    cursor_unit: CursorUnit | None = None,
    strict: bool | Sequence[str] = False,
    context: dg.AssetExecutionContext | None = None,
    dry_run: bool = False,
    raise_on_stop: bool = True,
) -> DeliveryResult:
    """:meth:`VendorResource.deliver`: the asset's name, window and log filled in, then
    :func:`connectors.api.deliver` with the resource's base URL, credentials and ledger."""
    vendor = resource.vendor_name
    context = context or current_context()
    log: Callable[[str], None] | None = context.log.info if context is not None else None

    def say(message: str) -> None:
        if log is not None:
            log(message)
    if name is None:
        if context is None:
            raise dg.DagsterInvariantViolationError(
                f"{vendor}.{endpoint}: pass name= (the ledger's name for this delivery) when calling outside an asset")
        name = sync_name(_asset_key(context), vendor, endpoint)
    if window is None and context is not None:
        window = window_from(context)
        if window is not None and cursor is None:
            context.log.info(f"{name}: no cursor= given, so every row is delivered whatever the partition "
                             "(pass cursor= to deliver only the partition's rows)")
            window = None
    result = deliver(
        data, vendor=vendor, endpoint=endpoint, key=key, name=name, cursor=cursor, model=model, mode=mode,
        window=window, delivery=delivery, options=options, destination_name=destination_name,
        keep_nulls=keep_nulls, null_cursor=null_cursor, cursor_unit=cursor_unit, strict=strict, base_url=resource.base_url,
        credentials=resource.credentials(), ledger=resource.ledger_url, dry_run=dry_run,
        announce=log, progress=PlainProgress(say, every=30) if log else None,
        on_wait=lambda: say(f"{name}: waiting for a run delivering an overlapping window"),
    )
    if context is not None:
        for note in result.notes:
            context.log.warning(f"{name}: {note}")
    if raise_on_stop and result.status in ("stopped", "interrupted"):
        # As a generated asset does: the step fails, with the run's figures attached.
        raise dg.Failure(description=result.run.error or f"{name}: delivery {result.status}", metadata=result.metadata)
    return result


def delivery_checks(
    asset: dg.AssetKey | str | Sequence[str] | dg.AssetsDefinition,
    *,
    name: str | None = None,
    vendor: str | None = None,
    endpoint: str | None = None,
    max_rejected_share: float = 0.01,
    ledger_url: str | None = None,
    blocking: bool = False,
) -> list[dg.AssetChecksDefinition]:
    """Checks for a user's asset that delivers through a resource: no item of the delivery left in doubt
    or failed; rejected rows at most ``max_rejected_share``; a warning for possible duplicates.

    ``name`` is the delivery's name; without it, ``vendor`` and ``endpoint`` derive it from the asset key
    as the resource does. ``ledger_url``: the ledger the resource writes (default the same as the
    resource's default). One asset can carry the checks of several deliveries (their names differ)."""
    key = asset.key if isinstance(asset, dg.AssetsDefinition) else dg.AssetKey.from_coercible(asset)
    if name is None:
        if not (vendor and endpoint):
            raise dg.DagsterInvariantViolationError("delivery_checks: pass name=, or vendor= and endpoint=")
        name = sync_name(key, vendor, endpoint)
    sync = name

    def ledger() -> Any:
        return open_ledger(ledger_url)

    def known(found: Any) -> str | None:
        if found.runs(sync, limit=1):
            return None
        return (f"the ledger at {found.description} has no run of {sync!r} yet: has the asset delivered, and "
                "does the resource write this ledger?")

    @dg.asset_check(asset=key, name=f"{sync}__no_items_in_doubt_or_failed", blocking=blocking,
                    description=f"Every item of {sync} is delivered or rejected; none waits in doubt or failed.")
    def settled() -> dg.AssetCheckResult:
        found = ledger()
        try:
            missing = known(found)
            if missing:
                return dg.AssetCheckResult(passed=False, description=missing)
            return settled_result(found, sync)
        finally:
            found.close()

    @dg.asset_check(asset=key, name=f"{sync}__rejected_share_under_threshold", blocking=blocking,
                    description=f"Rejected rows of {sync} stay under {max_rejected_share:.1%} of all rows.")
    def rejected_share() -> dg.AssetCheckResult:
        found = ledger()
        try:
            missing = known(found)
            if missing:
                return dg.AssetCheckResult(passed=False, description=missing)
            return rejected_share_result(found, sync, max_rejected_share)
        finally:
            found.close()

    @dg.asset_check(asset=key, name=f"{sync}__no_possible_duplicates",
                    description=f"No item of {sync} was sent again after an unknown outcome to an endpoint that "
                    "can neither dedup nor be read back.")
    def possible_duplicates() -> dg.AssetCheckResult:
        found = ledger()
        try:
            return duplicates_result(found, sync)
        finally:
            found.close()

    return [settled, rejected_share, possible_duplicates]
