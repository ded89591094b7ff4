"""The Python API: deliver a DataFrame, an Arrow table, a DuckDB relation or Parquet files to a vendor,
with the same guarantees as a sync file, from a script, a notebook or a Dagster asset.

``deliver(df, vendor="trubrics", endpoint="publish_events", key="event_id", name="signups")`` builds a
:class:`~connectors.spec.SyncSpec` in code (validated by the sync-file schema itself, so a bad option
reads exactly as it would in a YAML file), stages the data as Parquet in the run's staging folder
(:mod:`connectors.inputs`) and runs it through :class:`~connectors.runner.SyncPipeline`, the one pipeline
path every ``syncline run`` and generated asset takes: the same validation and reject reasons, chunking,
per-credential rate limits shared with every other run on the key, retries, ledger (reruns skip what
this destination has) and run log (``syncline log NAME``, ``syncline rejects NAME``).

``name`` is the ledger's identity for what is delivered (the idempotency key is built from it and the
row's key), so it is required here: two datasets delivered under one name would skip each other's keys.
The Dagster resources (:mod:`pipelines.resources`) derive it from the asset key when not given.
No Dagster import here, except :attr:`DeliveryResult.metadata`, which only Dagster callers read.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
from pydantic import ValidationError

from connectors.engine.endpoint import Endpoint, Vendor
from connectors.engine.payload import quote_ident
from connectors.errors import ConfigError, SynclineError
from connectors.inputs import (
    RESERVED_COLUMNS,
    DeliverInput,
    StagedInput,
    input_columns,
    input_rows,
    stage_input,
)
from connectors.ledger import Ledger, RunRow, open_ledger
from connectors.progress import Progress
from connectors.runner import SyncPipeline, new_run_id
from connectors.spec import (
    CursorUnit,
    DeliveryModel,
    DeliverySpec,
    Mode,
    NullCursor,
    SourceSpec,
    SyncFileError,
    SyncFileModel,
    SyncSpec,
    _collapse_unions,
    _message,
    _path,
    endpoint_problems,
    strict_rules,
)
from connectors.stage import Window, staging_path
from connectors.vendors import vendors

Key = str | Sequence[str]
WindowLike = Window | dt.date | tuple[dt.date, dt.date] | tuple[dt.datetime, dt.datetime] | None
Delivery = Mapping[str, Any] | DeliverySpec | None
OK_STATUSES = ("success", "dry_run")
LISTED = 20  # rejects and in-doubt items a result carries; `syncline rejects NAME --all` lists every one


def where(name: str) -> str:
    """What errors about a programmatic sync name in place of a sync file."""
    return f"deliver(name={name!r})"


# --- the spec ----------------------------------------------------------------------------------------------
def sync_spec(
    *,
    name: str,
    vendor: str,
    endpoint: str,
    key: Key,
    parquet: str,
    model_sql: str,
    cursor: str | None = None,
    mode: Mode = "append",
    delivery: Delivery = None,
    options: Mapping[str, Any] | None = None,
    destination_name: str | None = None,
    keep_nulls: bool = False,
    null_cursor: NullCursor = "exclude",
    cursor_unit: CursorUnit | None = None,
    strict: bool | Sequence[str] = False,
    partition_start: dt.date | None = None,
    max_rejected_share: float = 0.01,
    description: str = "",
) -> SyncSpec:
    """A Parquet-sourced :class:`SyncSpec` built in code, checked by the sync-file schema.

    Every problem is reported at once as a :class:`SyncFileError` whose lines read like a sync file's
    (``deliver(name='x'): delivery.concurency: unknown field (did you mean concurrency?)``)."""
    file = where(name)
    given_delivery = dataclasses.asdict(delivery) if isinstance(delivery, DeliverySpec) else dict(delivery or {})
    if isinstance(delivery, DeliverySpec):  # already typed: keep only what differs from the defaults
        defaults = dataclasses.asdict(DeliverySpec())
        given_delivery = {k: v for k, v in given_delivery.items() if v != defaults[k]}
    raw: dict[str, Any] = {
        "name": name,
        "source": {"parquet": parquet, "key": key if isinstance(key, str) else list(key), "null_cursor": null_cursor,
                   **({"cursor": cursor} if cursor is not None else {}),
                   **({"cursor_unit": cursor_unit} if cursor_unit is not None else {})},
        "destination": {"vendor": vendor, "endpoint": endpoint, "options": dict(options or {}),
                        **({"name": destination_name} if destination_name is not None else {})},
        "model": "model.sql",
        "mode": mode,
        "keep_nulls": keep_nulls,
        "delivery": given_delivery,
        "checks": {"max_rejected_share": max_rejected_share},
        "strict": strict if isinstance(strict, bool) else list(strict),
    }
    problems: list[ConfigError] = []
    doc: SyncFileModel | None = None
    try:
        doc = SyncFileModel.model_validate(raw)
    except ValidationError as exc:
        for error in _collapse_unions(exc.errors()):
            path = _path(error["loc"])
            problems.append(ConfigError(file, path, _message(error, path)))
    vendor_def, endpoint_def = _endpoint(file, vendor, endpoint, options or {}, problems)
    if endpoint_def is not None:
        problems += [ConfigError(file, where, message) for where, message in
                     endpoint_problems(endpoint_def, given_delivery.get("max_items"), strict)]
    if problems:
        raise SyncFileError(file, problems)
    assert doc is not None and vendor_def is not None and endpoint_def is not None
    values = DeliveryModel.model_validate(given_delivery).model_dump(exclude_unset=True)
    return SyncSpec(
        name=doc.name,
        file=Path(file),
        source=SourceSpec(key=tuple(doc.source.key), cursor=doc.source.cursor, parquet=parquet,
                          null_cursor=doc.source.null_cursor, cursor_unit=doc.source.cursor_unit),
        vendor=vendor_def,
        endpoint=endpoint_def,
        model_sql=model_sql,
        model_file=Path(f"{file}.model"),
        mode=doc.mode,
        keep_nulls=doc.keep_nulls,
        partition_start=partition_start,
        description=description,
        delivery=DeliverySpec(**values),
        options=dict(options or {}),
        max_rejected_share=max_rejected_share,
        destination_name=doc.destination.name,
        strict=strict_rules(doc.strict),
    )


def _endpoint(file: str, vendor: str, endpoint: str, options: Mapping[str, Any],
              problems: list[ConfigError]) -> tuple[Vendor | None, Endpoint | None]:
    known = vendors()
    found = known.get(vendor)
    if found is None:
        problems.append(ConfigError(file, "destination.vendor", f"unknown vendor {vendor!r} (known: {', '.join(known)})"))
        return None, None
    declared = found.endpoints.get(endpoint)
    if declared is None:
        problems.append(ConfigError(file, "destination.endpoint",
                                    f"unknown endpoint {endpoint!r} for {vendor} (known: {', '.join(found.endpoints)})"))
        return found, None
    try:
        return found, declared.configure(options)
    except ValueError as exc:
        option, _, message = str(exc).partition(": ")
        problems.append(ConfigError(file, f"destination.options.{option}", message or str(exc)))
        return found, None


def as_window(window: WindowLike) -> Window:
    """A :class:`Window` from a Window, one UTC day, (first day, last day) inclusive, or (start, end) instants."""
    if window is None:
        return Window()
    if isinstance(window, Window):
        return window
    if isinstance(window, dt.datetime):
        raise TypeError("window: give a date, (first_day, last_day) or (start, end) datetimes, not one datetime")
    if isinstance(window, dt.date):
        return Window.days(window, window)
    first, last = window
    if isinstance(first, dt.datetime) and isinstance(last, dt.datetime):
        return Window(_utc(first), _utc(last))
    if isinstance(first, dt.date) and isinstance(last, dt.date):
        return Window.days(first, last)
    raise TypeError(f"window: cannot read {window!r}")


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def default_model(columns: Sequence[tuple[str, str]], endpoint: Endpoint, key: Sequence[str],
                  cursor: str | None, file: str) -> tuple[str, list[str]]:
    """``SELECT _key[, _cursor], <the input's columns named like the endpoint's fields> FROM source``,
    and the input columns it leaves out. Nanosecond timestamps are cast to microseconds (what DuckDB's
    JSON and the vendors carry)."""
    types = dict(columns)
    fields = [f.name for f in endpoint.fields if f.name in types]
    if not fields:
        raise ConfigError(file, "model", (
            f"no column of the input is a field of {endpoint.qualified_name} (fields: "
            f"{', '.join(f.name for f in endpoint.fields)}; input columns: {', '.join(types)}): rename the "
            "columns, or pass model= (a DuckDB SELECT over `source`, as in a sync file)"))
    parts = ["_key", *(["_cursor"] if cursor else [])]
    for name in fields:
        kind = types[name].upper()
        ident = quote_ident(name)
        if kind.startswith("TIMESTAMP_NS") or kind.startswith("TIMESTAMPTZ_NS"):
            target = "TIMESTAMPTZ" if "TZ" in kind or "TIME ZONE" in kind else "TIMESTAMP"
            parts.append(f"CAST({ident} AS {target}) AS {ident}")
        else:
            parts.append(ident)
    used = {*fields, *key, cursor}
    ignored = [c for c, _ in columns if c not in used]
    return f"SELECT {', '.join(parts)} FROM source", ignored


# --- the result --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reject:
    """One row the run rejected: its source key and why (one reason per field, ``; ``-joined)."""

    key: str | None
    reason: str


@dataclass(frozen=True)
class PendingItem:
    """An item left ``in_doubt`` (a request may have landed) or ``failed`` (surely not stored)."""

    key: str | None
    state: str
    reason: str | None


@dataclass
class DeliveryResult:
    """What one :func:`deliver` did. ``ok`` only when every row ended delivered, rejected with a reason,
    or skipped as already delivered; ``partial`` (items in doubt or failed: rerun to resume), ``stopped``
    (401/403, a wrong base URL, the circuit breaker, the deadline) and ``interrupted`` are not ok."""

    name: str
    vendor: str
    endpoint: str
    run: RunRow
    input_kind: str
    input_rows: int  # rows given
    extracted: int  # rows in the window (all of them without one)
    rejects: list[Reject] = field(default_factory=list)  # this run's, at most LISTED
    in_doubt_items: list[PendingItem] = field(default_factory=list)  # at this destination, at most LISTED
    reasons: list[tuple[str, int]] = field(default_factory=list)  # (reason, rows) at this destination, top 15
    ignored_columns: list[str] = field(default_factory=list)  # input columns the default model leaves out
    destination_identity: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return self.run.status

    @property
    def ok(self) -> bool:
        return self.run.status in OK_STATUSES

    @property
    def window(self) -> str:
        return self.run.span

    @property
    def delivered(self) -> int:
        return self.run.delivered

    @property
    def rejected(self) -> int:
        return self.run.rejected

    @property
    def skipped(self) -> int:
        """Rows already delivered to this destination (by an earlier run), or repeats sent once."""
        return self.run.skipped

    @property
    def in_doubt(self) -> int:
        return self.run.in_doubt

    @property
    def failed(self) -> int:
        return self.run.failed

    @property
    def pending(self) -> int:
        """Items a rerun resumes: in doubt plus failed."""
        return self.run.in_doubt + self.run.failed

    @property
    def outside_window(self) -> int:
        """Input rows the window left out (their cursor is in another day, or NULL)."""
        return max(0, self.input_rows - self.extracted)

    @property
    def destination(self) -> str:
        return self.run.destination

    @property
    def ledger(self) -> str:
        return self.run.ledger

    @property
    def rejects_command(self) -> str:
        """The CLI that lists every rejected row of this name (same ledger: SYNCLINE_LEDGER_URL/HOME)."""
        return f"syncline rejects {self.name} --all"

    @property
    def metadata(self) -> dict[str, Any]:
        """The Dagster metadata generated sync assets attach (plotted counts, a reasons table), for
        ``dg.MaterializeResult(metadata=result.metadata)``. Imports Dagster."""
        from pipelines.delivery import delivery_metadata

        return delivery_metadata(self)

    def summary(self) -> str:
        r = self.run
        text = (f"{self.name} -> {self.vendor}.{self.endpoint} [{r.span}]: {r.status}: delivered {r.delivered}, "
                f"rejected {r.rejected}, skipped {r.skipped}, in doubt {r.in_doubt}, failed {r.failed} "
                f"({self.input_rows} input rows)")
        if r.error:
            text += f"; {r.error}"
        if r.rejected:
            text += f"; every rejected row: `{self.rejects_command}`"
        return text

    def __str__(self) -> str:
        return self.summary()

    def raise_for_status(self) -> DeliveryResult:
        """Raise :class:`SynclineError` unless ``ok``; returns self, to chain."""
        if not self.ok:
            raise SynclineError(self.summary())
        return self


# --- deliver -----------------------------------------------------------------------------------------------
def deliver(
    data: DeliverInput,
    *,
    vendor: str,
    endpoint: str,
    key: Key,
    name: str,
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
    base_url: str | None = None,
    credentials: Mapping[str, str] | None = None,
    ledger: Ledger | str | None = None,
    dry_run: bool = False,
    run_id: str | None = None,
    announce: Callable[[str], None] | None = None,
    progress: Progress | None = None,
    on_wait: Callable[[], None] | None = None,
) -> DeliveryResult:
    """Deliver ``data`` to ``vendor``'s ``endpoint`` and return what happened.

    - ``data``: a pandas DataFrame, a pyarrow Table / RecordBatch / RecordBatchReader, a DuckDB relation,
      a Parquet path, glob or folder, or a list of Parquet files.
    - ``key``: the column (or columns) identifying a row; the idempotency key is built from ``name`` and it.
    - ``name``: the ledger's name for this delivery (lower_snake_case); reruns under it skip what the
      destination has. ``syncline log/items/rejects NAME`` read it.
    - ``cursor``: the column placing each row in time: a repeated key keeps its newest row, and a
      ``window`` selects rows by it. ``window``: a date, (first_day, last_day) or a :class:`Window`; the
      run then locks those days, so overlapping runs of ``name`` stay exactly-once.
    - ``model``: a DuckDB SELECT over ``source`` (the rows, plus ``_key`` and ``_cursor``), as in a sync
      file. Default: ``_key`` and every column named like one of the endpoint's fields.
    - ``mode``, ``delivery`` (the ``delivery:`` keys of a sync file), ``options`` (``destination.options``),
      ``destination_name``, ``keep_nulls``, ``null_cursor``, ``cursor_unit`` (s, ms or us: an epoch-number cursor), ``strict`` (True, or names of the endpoint's
      opt-in rules, e.g. ``["event_not_blank"]``): as in a sync file (docs/sync-files.md).
    - ``base_url``, ``credentials`` (by name, e.g. ``{"api_key": ...}``): default from the environment.
    - ``ledger``: a :class:`Ledger`, a URL/path, or None for ``SYNCLINE_LEDGER_URL`` / ``$SYNCLINE_HOME``.

    Raises :class:`ConfigError` for what the caller wrote (options, model, columns) and
    :class:`SynclineError` when a delivery errors; a run that stops (bad key, wrong URL) returns a result
    whose ``status`` is ``stopped`` and ``error`` says why.
    """
    file = where(name)
    win = as_window(window)
    if win.bounded and not cursor:
        raise ConfigError(file, "window", "a window selects rows by their cursor: pass cursor= (the column "
                                          "that places each row in time)")
    start = win.start or win.end
    spec = sync_spec(name=name, vendor=vendor, endpoint=endpoint, key=key, parquet="(staged)", model_sql="",
                     cursor=cursor, mode=mode, delivery=delivery, options=options, destination_name=destination_name,
                     keep_nulls=keep_nulls, null_cursor=null_cursor, cursor_unit=cursor_unit, strict=strict,
                     partition_start=start.date() if win.bounded and start is not None else None)
    run_id = run_id or new_run_id()
    folder = staging_path(spec, win, run_id)  # the SyncPipeline's own folder: the input is removed with it
    try:
        staged = stage_input(data, folder)
        columns, rows = _inspect(staged)
        _check_columns(file, columns, spec.source.key, cursor)
        ignored: list[str] = []
        if model:
            model_sql = model.strip().rstrip(";").strip()
        else:
            model_sql, ignored = default_model(columns, spec.endpoint, spec.source.key, cursor, file)
        spec = dataclasses.replace(spec, source=dataclasses.replace(spec.source, parquet=staged.parquet),
                                   model_sql=model_sql)
        say = announce or (lambda _m: None)
        if ignored:
            say(f"{name}: input columns not sent (not fields of {spec.endpoint.qualified_name}; map them with "
                f"model=): {', '.join(ignored)}")
        own = not isinstance(ledger, Ledger)
        store = open_ledger(ledger if isinstance(ledger, str) else None) if own else ledger
        assert isinstance(store, Ledger)
        try:
            with _InputPipeline(spec, win, run_id=run_id, files=staged.files,
                                input_note=staged.nested_nan_note()) as pipeline:
                pipeline.extract()
                run = pipeline.deliver(ledger=store, credentials=credentials, base_url=base_url, dry_run=dry_run,
                                       announce=announce, on_wait=on_wait, progress=progress)
                result = _result(spec, run, store, staged, rows, pipeline.counts.extracted, ignored)
        finally:
            if own:
                store.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if result.outside_window:
        result.notes.append(f"{result.outside_window} of {rows} input rows are outside the window {win.label} "
                            f"(their {cursor} is in another day, or NULL) and were not delivered")
    if run.notes:
        result.notes.append(run.notes)
    return result


class _InputPipeline(SyncPipeline):
    """The one pipeline, with what staging the input found added to the run's notes (the ledger's run row,
    ``syncline log``, the result's ``notes``): e.g. NaN inside a DataFrame's objects read as missing."""

    def __init__(self, spec: SyncSpec, window: Window, *, run_id: str, files: list[str] | None,
                 input_note: str | None) -> None:
        super().__init__(spec, window, run_id=run_id, files=files)
        self.input_note = input_note

    def _notes(self) -> str | None:
        return "; ".join(n for n in (self.input_note, super()._notes()) if n) or None


def _inspect(staged: StagedInput) -> tuple[list[tuple[str, str]], int]:
    con = duckdb.connect()
    try:
        return input_columns(con, staged), input_rows(con, staged)
    except duckdb.Error as exc:
        raise SynclineError(f"cannot read the input ({staged.parquet}): {exc}") from None
    finally:
        con.close()


def _check_columns(file: str, columns: Sequence[tuple[str, str]], key: Sequence[str], cursor: str | None) -> None:
    names = [c for c, _ in columns]
    reserved = [c for c in names if c in RESERVED_COLUMNS]
    if reserved:
        raise ConfigError(file, "data", f"the input has a column named {reserved[0]}: syncline adds _key (from "
                                        "key=) and _cursor (from cursor=) itself; rename it")
    shown = ", ".join(names)
    for column in key:
        if column not in names:
            raise ConfigError(file, "key", f"column {column!r} is not in the input (columns: {shown})")
    if cursor is not None and cursor not in names:
        raise ConfigError(file, "cursor", f"column {cursor!r} is not in the input (columns: {shown})")


def _result(spec: SyncSpec, run: RunRow, ledger: Ledger, staged: StagedInput, rows: int, extracted: int,
            ignored: list[str]) -> DeliveryResult:
    """The run plus what a caller acts on, read back from the ledger (bounded lists)."""
    where_dest = "sync = ? AND destination = ?"
    rejects = ledger._query(
        f"SELECT source_key, reason FROM syncline_items WHERE {where_dest} AND run_id = ? AND state = 'rejected' "
        f"ORDER BY source_key LIMIT {LISTED}", (spec.name, run.destination, run.run_id))
    pending = ledger._query(
        f"SELECT source_key, state, reason FROM syncline_items WHERE {where_dest} AND state IN ('in_doubt', 'failed') "
        f"ORDER BY source_key LIMIT {LISTED}", (spec.name, run.destination))
    identity = ledger.destinations().get(run.destination, {}).get("identity") or run.destination
    return DeliveryResult(
        name=spec.name, vendor=spec.vendor.name, endpoint=spec.endpoint.name, run=run, input_kind=staged.kind,
        input_rows=rows, extracted=extracted,
        rejects=[Reject(k, r or "") for k, r in rejects],
        in_doubt_items=[PendingItem(k, s, r) for k, s, r in pending],
        reasons=ledger.rejection_reasons(spec.name, limit=15, destination=run.destination) if run.destination else [],
        ignored_columns=ignored, destination_identity=str(identity),
    )
