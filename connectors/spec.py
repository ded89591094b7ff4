"""Sync files: a small YAML file plus a DuckDB SQL model. Loading validates every field up front.

A broken sync file yields a :class:`ConfigError` naming the file and the field; it never stops the other
syncs from loading (:func:`load_syncs` returns the good ones and the errors side by side).
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from connectors.engine.endpoint import Endpoint, Vendor
from connectors.errors import ConfigError
from connectors.vendors import vendors

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
DESTINATION_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
MAX_CONCURRENCY = 256
Mode = Literal["append", "mirror"]
InDoubtPolicy = Literal["resend", "hold"]


@dataclass(frozen=True)
class SourceSpec:
    """Where rows come from. Exactly one of ``table``, ``query`` or ``parquet``."""

    key: tuple[str, ...]
    cursor: str | None
    table: str | None = None
    query: str | None = None
    parquet: str | None = None
    warehouse: Literal["duckdb", "postgres"] = "duckdb"


@dataclass(frozen=True)
class DeliverySpec:
    """Knobs for the delivery engine; defaults suit a production vendor, tests shrink the backoff."""

    concurrency: int | None = None  # most requests in flight; default 64 adaptive, 4 on rate-limited endpoints
    adaptive: bool = True  # grow/shrink in-flight requests with the vendor's answers (no documented rate)
    max_attempts: int = 6
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    max_retry_after: float = 300.0
    timeout: float = 30.0
    max_items: int | None = None  # never above the endpoint's documented limit
    max_body_bytes: int | None = None
    in_doubt: InDoubtPolicy = "resend"
    rate_safety: float | None = None  # fraction of the documented rate to use
    # Bounded failure: this many requests in a row ending with no answer (down, timeouts, 5xx after every
    # retry) open the circuit and stop the sync; and a run delivers for at most ``deadline`` seconds.
    breaker_failures: int = 5
    deadline: float = 21600.0


@dataclass(frozen=True)
class SyncSpec:
    name: str
    file: Path
    source: SourceSpec
    vendor: Vendor
    endpoint: Endpoint
    model_sql: str
    model_file: Path
    mode: Mode = "append"
    keep_nulls: bool = False
    partition_start: dt.date | None = None
    schedule: str | None = None
    description: str = ""
    delivery: DeliverySpec = field(default_factory=DeliverySpec)
    options: Mapping[str, Any] = field(default_factory=dict)
    max_rejected_share: float = 0.01
    destination_name: str | None = None  # destination.name: the ledger's identity for where items go

    @property
    def partitioned(self) -> bool:
        return self.partition_start is not None


def _expect(value: object, kind: type | tuple[type, ...], file: str, path: str, what: str) -> Any:
    if not isinstance(value, kind):
        raise ConfigError(file, path, f"expected {what}, got {type(value).__name__} {value!r}")
    return value


def _only_keys(section: Mapping[str, Any], allowed: Iterable[str], file: str, path: str) -> None:
    unknown = sorted(set(section) - set(allowed))
    if unknown:
        where = f"{path}.{unknown[0]}" if path else unknown[0]
        raise ConfigError(file, where, f"unknown field (allowed: {', '.join(sorted(allowed))})")


def _parse_source(raw: object, file: str) -> SourceSpec:
    section = _expect(raw, dict, file, "source", "a mapping with table/query/parquet, key and cursor")
    _only_keys(section, {"table", "query", "parquet", "key", "cursor", "warehouse"}, file, "source")
    given = [k for k in ("table", "query", "parquet") if section.get(k)]
    if len(given) != 1:
        raise ConfigError(file, "source", "give exactly one of table, query or parquet")
    key = section.get("key")
    if isinstance(key, str):
        key = [key]
    if not key or not all(isinstance(k, str) and k for k in key):
        raise ConfigError(file, "source.key", "the primary key column (or a list of columns) is required")
    cursor = section.get("cursor")
    if cursor is not None:
        _expect(cursor, str, file, "source.cursor", "a column name")
    warehouse = section.get("warehouse", "duckdb")
    if warehouse not in ("duckdb", "postgres"):
        raise ConfigError(file, "source.warehouse", f"must be duckdb or postgres, got {warehouse!r}")
    if warehouse == "postgres" and section.get("parquet"):
        raise ConfigError(file, "source.warehouse", "a parquet source is read by DuckDB; drop warehouse")
    for k in given:
        _expect(section[k], str, file, f"source.{k}", "a string")
    return SourceSpec(
        key=tuple(key),
        cursor=cursor,
        table=section.get("table"),
        query=section.get("query"),
        parquet=section.get("parquet"),
        warehouse=warehouse,
    )


def _parse_delivery(raw: object, file: str, endpoint: Endpoint) -> DeliverySpec:
    if raw is None:
        return DeliverySpec()
    section = _expect(raw, dict, file, "delivery", "a mapping")
    fields = DeliverySpec.__dataclass_fields__
    _only_keys(section, fields, file, "delivery")
    values: dict[str, Any] = {}
    for name, value in section.items():
        if name == "in_doubt":
            if value not in ("resend", "hold"):
                raise ConfigError(file, "delivery.in_doubt", "must be resend (at-least-once) or hold")
        elif name == "adaptive":
            if not isinstance(value, bool):
                raise ConfigError(file, "delivery.adaptive", f"must be true or false, got {value!r}")
        elif name in ("concurrency", "max_attempts", "max_items", "max_body_bytes", "breaker_failures"):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(file, f"delivery.{name}", f"must be a positive whole number, got {value!r}")
        elif not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise ConfigError(file, f"delivery.{name}", f"must be a positive number, got {value!r}")
        values[name] = value
    if values.get("max_items", 0) > endpoint.max_items:
        raise ConfigError(
            file,
            "delivery.max_items",
            f"{endpoint.qualified_name} accepts at most {endpoint.max_items} items per request",
        )
    if values.get("concurrency", 0) > MAX_CONCURRENCY:
        raise ConfigError(file, "delivery.concurrency", f"at most {MAX_CONCURRENCY} requests in flight")
    if values.get("rate_safety", 0) > 1:
        raise ConfigError(file, "delivery.rate_safety", "must be at most 1 (a share of the documented rate)")
    return DeliverySpec(**values)


def _parse_partitions(raw: object, file: str) -> dt.date | None:
    if raw is None:
        return None
    section = _expect(raw, dict, file, "partitions", "a mapping like {daily: {start: 2026-01-01}}")
    _only_keys(section, {"daily"}, file, "partitions")
    daily = _expect(section.get("daily"), dict, file, "partitions.daily", "a mapping with start")
    _only_keys(daily, {"start"}, file, "partitions.daily")
    start = daily.get("start")
    if isinstance(start, str):
        try:
            start = dt.date.fromisoformat(start)
        except ValueError:
            raise ConfigError(file, "partitions.daily.start", f"not a date: {start!r}") from None
    if not isinstance(start, dt.date):
        raise ConfigError(file, "partitions.daily.start", "a date like 2026-01-01 is required")
    return start


def load_sync_file(path: Path) -> SyncSpec:
    """Parse and check one sync file. Raises :class:`ConfigError` naming the file and field."""
    file = str(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(file, "(yaml)", f"not valid YAML: {exc}") from None
    doc = _expect(raw, dict, file, "(top level)", "a mapping")
    _only_keys(
        doc,
        {
            "name", "description", "source", "destination", "model", "mode", "keep_nulls",
            "partitions", "schedule", "delivery", "checks",
        },
        file,
        "",
    )
    name = doc.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError(file, "name", "lower_snake_case name (letters, digits, _) is required")
    source = _parse_source(doc.get("source"), file)

    dest = _expect(doc.get("destination"), dict, file, "destination", "a mapping with vendor and endpoint")
    _only_keys(dest, {"vendor", "endpoint", "options", "name"}, file, "destination")
    destination_name = dest.get("name")
    if destination_name is not None and (
        not isinstance(destination_name, str) or not DESTINATION_NAME_RE.match(destination_name)
    ):
        raise ConfigError(file, "destination.name", f"a short name like prod or staging-eu, got {destination_name!r}")
    known = vendors()
    vendor = known.get(str(dest.get("vendor")))
    if vendor is None:
        raise ConfigError(
            file, "destination.vendor", f"unknown vendor {dest.get('vendor')!r} (known: {', '.join(known)})"
        )
    endpoint = vendor.endpoints.get(str(dest.get("endpoint")))
    if endpoint is None:
        raise ConfigError(
            file,
            "destination.endpoint",
            f"unknown endpoint {dest.get('endpoint')!r} for {vendor.name} (known: {', '.join(vendor.endpoints)})",
        )
    options = _expect(dest.get("options") or {}, dict, file, "destination.options", "a mapping")
    try:
        endpoint = endpoint.configure(options)
    except ValueError as exc:
        option, _, message = str(exc).partition(": ")
        raise ConfigError(file, f"destination.options.{option}", message or str(exc)) from None

    model = doc.get("model")
    if not isinstance(model, str) or not model.endswith(".sql"):
        raise ConfigError(file, "model", "the name of a .sql file next to the sync file is required")
    model_file = (path.parent / model).resolve()
    if not model_file.is_file():
        raise ConfigError(file, "model", f"model file not found: {model_file}")
    model_sql = model_file.read_text().strip().rstrip(";")
    if not model_sql:
        raise ConfigError(file, "model", f"model file is empty: {model_file}")

    mode = doc.get("mode", "append")
    if mode not in ("append", "mirror"):
        raise ConfigError(file, "mode", f"must be append or mirror, got {mode!r}")
    partition_start = _parse_partitions(doc.get("partitions"), file)
    if partition_start is not None and not source.cursor:
        raise ConfigError(file, "source.cursor", "daily partitions need a cursor column")
    schedule = doc.get("schedule")
    if schedule is not None:
        _expect(schedule, str, file, "schedule", "a cron string like '15 * * * *'")
        if len(schedule.split()) != 5:
            raise ConfigError(file, "schedule", f"a five-field cron string is required, got {schedule!r}")
    keep_nulls = doc.get("keep_nulls", False)
    _expect(keep_nulls, bool, file, "keep_nulls", "true or false")
    checks = _expect(doc.get("checks") or {}, dict, file, "checks", "a mapping")
    _only_keys(checks, {"max_rejected_share"}, file, "checks")
    share = checks.get("max_rejected_share", 0.01)
    if not isinstance(share, int | float) or not 0 <= share <= 1:
        raise ConfigError(file, "checks.max_rejected_share", "a share between 0 and 1 (0.01 = 1%)")

    return SyncSpec(
        name=name,
        file=path,
        source=source,
        vendor=vendor,
        endpoint=endpoint,
        model_sql=model_sql,
        model_file=model_file,
        mode=mode,
        keep_nulls=keep_nulls,
        partition_start=partition_start,
        schedule=schedule,
        description=str(doc.get("description", "")),
        delivery=_parse_delivery(doc.get("delivery"), file, endpoint),
        options=options,
        max_rejected_share=float(share),
        destination_name=destination_name,
    )


@dataclass
class LoadedSyncs:
    syncs: dict[str, SyncSpec]
    errors: list[ConfigError]


def load_syncs(dirs: Iterable[Path] | None = None) -> LoadedSyncs:
    """Load every ``*.yaml``/``*.yml`` in the given folders (default: packaged + ``SYNCLINE_SYNCS_DIR``)."""
    from connectors import settings

    syncs: dict[str, SyncSpec] = {}
    errors: list[ConfigError] = []
    for folder in dirs if dirs is not None else settings.syncs_dirs():
        if not folder.is_dir():
            if folder != settings.PACKAGE_SYNCS_DIR:
                errors.append(ConfigError(str(folder), "SYNCLINE_SYNCS_DIR", "folder does not exist"))
            continue
        for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
            try:
                spec = load_sync_file(path)
            except ConfigError as exc:
                errors.append(exc)
                continue
            if spec.name in syncs:
                errors.append(
                    ConfigError(str(path), "name", f"sync {spec.name!r} is already defined in {syncs[spec.name].file}")
                )
                continue
            syncs[spec.name] = spec
    return LoadedSyncs(syncs, errors)


def expand_path(pattern: str, base: Path) -> str:
    """Expand ``${VAR}``/``~`` in a parquet glob; relative globs are taken from ``base`` (SYNCLINE_HOME)."""
    expanded = os.path.expanduser(os.path.expandvars(pattern))
    return expanded if os.path.isabs(expanded) else str(base / expanded)
