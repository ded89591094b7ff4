"""Sync files: a small YAML file plus a DuckDB SQL model. Loading validates every field up front.

The schema is a set of pydantic models (:class:`SyncFileModel` and its sections); what loading produces is
the frozen :class:`SyncSpec` dataclass the rest of syncline uses. A broken sync file yields one
:class:`SyncFileError` (a :class:`ConfigError`) listing **every** problem in the file, one line each,
naming the file and the field path (``delivery.concurrency``); it never stops the other syncs from
loading (:func:`load_syncs` returns the good ones and the errors side by side).

Relative paths in a sync file (a Parquet glob in ``source.parquet``, folder options such as StreamBack's
``destination.options.files_root``) are taken from the sync file's folder, never the current directory;
``${SYNCLINE_HOME}`` in them names the state folder. See docs/sync-files.md.
"""

from __future__ import annotations

import datetime as dt
import difflib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from connectors.engine.endpoint import Endpoint, Vendor
from connectors.errors import ConfigError
from connectors.vendors import vendors

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
DESTINATION_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
MAX_CONCURRENCY = 256
Mode = Literal["append", "mirror"]
InDoubtPolicy = Literal["resend", "hold"]
NullCursor = Literal["exclude", "include"]
CursorUnit = Literal["s", "ms", "us"]
LOOKUP_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")
HOME_PLACEHOLDERS = ("${SYNCLINE_HOME}", "$SYNCLINE_HOME")
# destination.options holding a file or folder: relative values are taken from the sync file's folder.
PATH_OPTION_SUFFIXES = ("_root", "_dir", "_folder", "_path")


# --- the product of loading --------------------------------------------------------------------------------
@dataclass(frozen=True)
class SourceSpec:
    """Where rows come from. Exactly one of ``table``, ``query`` or ``parquet``."""

    key: tuple[str, ...]
    cursor: str | None
    table: str | None = None
    query: str | None = None
    parquet: str | None = None
    warehouse: Literal["duckdb", "postgres"] = "duckdb"
    # Rows whose cursor is NULL: left out of windowed runs and counted (exclude), or put in every window.
    null_cursor: NullCursor = "exclude"
    # An epoch-number cursor's unit (s, ms, us): windows then select it by numeric bounds (connectors.stage).
    cursor_unit: CursorUnit | None = None
    # Warehouse tables/views the model joins besides ``source`` (``analytics.plans``): a Postgres
    # warehouse copies them once per run into staging; a DuckDB warehouse is attached read-only.
    lookups: tuple[str, ...] = ()


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
    # The endpoint's opt-in rules this sync checks (``strict: true`` -> {"*"}: all of them). Default: only
    # what the vendor's document forbids is rejected (docs/vendors.md lists each rule and its basis).
    strict: frozenset[str] = frozenset()

    @property
    def partitioned(self) -> bool:
        return self.partition_start is not None

    @property
    def folder(self) -> Path:
        """The sync file's folder: relative paths in the file are taken from here."""
        return self.file.resolve().parent


class SyncFileError(ConfigError):
    """Every problem of one sync file. ``field``/``message`` are the first problem's (so code written for
    one problem keeps working); ``problems`` has them all; ``str()`` is one line per problem."""

    def __init__(self, file: str, problems: Sequence[ConfigError]) -> None:
        assert problems
        super().__init__(file, problems[0].field, problems[0].message)
        self.problems = list(problems)
        self.args = ("\n".join(str(p) for p in self.problems),)

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


# --- the schema ------------------------------------------------------------------------------------------
def _date(value: object) -> object:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"not a date like 2026-01-01: {value!r}") from None
    return value


def _key_list(value: object) -> object:
    return [value] if isinstance(value, str) else value


ColumnName = Annotated[StrictStr, Field(min_length=1)]
Positive = Annotated[StrictInt, Field(ge=1)]
PositiveNumber = Annotated[float, Field(gt=0)]  # strict: a whole number is a number, true is not


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SourceModel(_Section):
    table: StrictStr | None = Field(None, description="a warehouse table, e.g. analytics.events")
    query: StrictStr | None = Field(None, description="a SQL query over the warehouse")
    parquet: StrictStr | None = Field(None, description="a Parquet glob, relative to the sync file's folder")
    key: Annotated[list[ColumnName], BeforeValidator(_key_list), Field(min_length=1)] = Field(
        description="the primary key column, or a list of columns"
    )
    cursor: ColumnName | None = Field(None, description="the column daily windows select rows by (UTC days)")
    warehouse: Literal["duckdb", "postgres"] = "duckdb"
    null_cursor: NullCursor = "exclude"
    cursor_unit: CursorUnit | None = Field(None, description="an epoch-number cursor's unit: s, ms or us")
    lookups: list[StrictStr] = Field(
        default_factory=list, description="warehouse tables or views the model joins, e.g. analytics.plans"
    )

    @field_validator("lookups")
    @classmethod
    def _lookup_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not LOOKUP_RE.match(name):
                raise ValueError(f"a table or view name like analytics.plans (schema optional), got {name!r}")
            if name.lower() == "source":
                raise ValueError("source is the extracted window already; name the warehouse tables the model joins")
        repeated = sorted({n for n in value if [m.lower() for m in value].count(n.lower()) > 1})
        if repeated:
            raise ValueError(f"listed twice: {', '.join(repeated)}")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> SourceModel:
        given = [k for k in ("table", "query", "parquet") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of table, query or parquet")
        if self.warehouse == "postgres" and self.parquet:
            raise ValueError("a parquet source is read by DuckDB; drop warehouse: postgres")
        return self


class DestinationModel(_Section):
    vendor: StrictStr
    endpoint: StrictStr
    options: dict[str, Any] = Field(default_factory=dict)
    name: Annotated[StrictStr, Field(pattern=DESTINATION_NAME_RE.pattern)] | None = None


class DeliveryModel(_Section):
    concurrency: Annotated[Positive, Field(le=MAX_CONCURRENCY)] | None = None
    adaptive: StrictBool = True
    max_attempts: Positive = 6
    backoff_base: PositiveNumber = 0.5
    backoff_cap: PositiveNumber = 30.0
    max_retry_after: PositiveNumber = 300.0
    timeout: PositiveNumber = 30.0
    max_items: Positive | None = None
    max_body_bytes: Positive | None = None
    in_doubt: InDoubtPolicy = "resend"
    rate_safety: Annotated[PositiveNumber, Field(le=1)] | None = None
    breaker_failures: Positive = 5
    deadline: PositiveNumber = 21600.0


class DailyModel(_Section):
    start: Annotated[dt.date, BeforeValidator(_date)]


class PartitionsModel(_Section):
    daily: DailyModel


class ChecksModel(_Section):
    max_rejected_share: Annotated[float, Field(ge=0, le=1)] = 0.01


class SyncFileModel(_Section):
    """One sync file. Every section is checked; see docs/sync-files.md for each field."""

    name: Annotated[StrictStr, Field(pattern=NAME_RE.pattern)]
    description: StrictStr = ""
    source: SourceModel
    destination: DestinationModel
    model: Annotated[StrictStr, Field(pattern=r"\.sql$")]
    mode: Mode = "append"
    keep_nulls: StrictBool = False
    strict: StrictBool | list[StrictStr] = False
    partitions: PartitionsModel | None = None
    schedule: StrictStr | None = None
    delivery: DeliveryModel | None = None
    checks: ChecksModel | None = None

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            cron_problem = check_cron(value)
            if cron_problem:
                raise ValueError(cron_problem)
        return value


SECTIONS: dict[str, type[_Section]] = {
    "source": SourceModel,
    "destination": DestinationModel,
    "delivery": DeliveryModel,
    "partitions": PartitionsModel,
    "checks": ChecksModel,
}
TOP_FIELDS = list(SyncFileModel.model_fields)

# What to say when a field is missing or of the wrong shape (beyond pydantic's own words).
HINTS = {
    "name": "a lower_snake_case name (letters, digits, _) is required",
    "source": "a mapping with table/query/parquet, key and cursor",
    "source.key": "the primary key column (or a list of columns) is required",
    "source.cursor_unit": "the unit of an epoch-number cursor: s, ms or us",
    "destination": "a mapping with vendor and endpoint",
    "destination.name": "a short name like prod or staging-eu",
    "model": "the name of a .sql file next to the sync file is required",
    "partitions": "a mapping like {daily: {start: 2026-01-01}}",
    "partitions.daily": "a mapping with start",
    "partitions.daily.start": "a date like 2026-01-01 is required",
    "schedule": "a cron string like '15 * * * *'",
    "checks.max_rejected_share": "a share between 0 and 1 (0.01 = 1%)",
    "delivery.concurrency": f"at most {MAX_CONCURRENCY} requests in flight",
    "delivery.rate_safety": "must be at most 1 (a share of the documented rate)",
    "delivery.in_doubt": "must be resend (at-least-once) or hold",
    "strict": "true (every opt-in rule of the endpoint) or a list of rule names (docs/vendors.md)",
}


def check_cron(value: str) -> str | None:
    """None for a five-field cron string croniter accepts; else what is wrong."""
    from croniter import croniter

    if len(value.split()) != 5:
        return f"a five-field cron string is required, got {value!r}"
    try:
        croniter(value)
    except (ValueError, KeyError) as exc:
        return f"not a valid cron string {value!r}: {exc}"
    if not croniter.is_valid(value):
        return f"not a valid cron string: {value!r}"
    return None


# --- pydantic errors -> lines a person can act on --------------------------------------------------------
def _path(loc: Sequence[int | str]) -> str:
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts[-1:] = [f"{parts[-1]}[{part}]"] if parts else [f"[{part}]"]
        elif part in ("function-after", "function-before") or "[" in part:
            continue  # union / validator branches pydantic names in loc
        else:
            parts.append(part)
    return ".".join(parts)


def _allowed_fields(path: str) -> list[str]:
    parent = path.rpartition(".")[0]
    model: type[BaseModel] | None = SyncFileModel
    for part in parent.split(".") if parent else []:
        if model is None:
            return []
        annotation = model.model_fields[part].annotation if part in model.model_fields else None
        model = _model_in(annotation)
    return list(model.model_fields) if model is not None else []


def _model_in(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _message(error: Mapping[str, Any], path: str) -> str:
    kind = error["type"]
    given = error.get("input")
    ctx = error.get("ctx") or {}
    hint = HINTS.get(path)
    if kind == "extra_forbidden":
        name = path.rpartition(".")[2]
        allowed = _allowed_fields(path)
        close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
        if close:
            return f"unknown field (did you mean {close[0]}?)"
        return f"unknown field (allowed: {', '.join(sorted(allowed))})"
    if kind == "missing":
        return hint or "is required"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected {hint or 'a mapping'}, got {type(given).__name__} {_shown(given)}"
    if kind == "string_pattern_mismatch":
        return f"{hint or 'does not match ' + str(ctx.get('pattern'))}, got {_shown(given)}"
    if kind == "string_type":
        return f"expected {'text' if hint is None else hint}, got {type(given).__name__} {_shown(given)}"
    if kind == "bool_type":
        return f"must be true or false, got {_shown(given)}"
    if kind in ("int_type", "int_from_float"):
        return f"must be a whole number, got {_shown(given)}"
    if kind in ("float_type",):
        return f"must be a number, got {_shown(given)}"
    if kind == "greater_than_equal":
        if ctx.get("ge") == 1:
            return f"must be a positive whole number, got {_shown(given)}"
        return hint or f"must be at least {ctx.get('ge')}, got {_shown(given)}"
    if kind == "greater_than":
        return f"must be a positive number, got {_shown(given)}"
    if kind == "less_than_equal":
        return f"{hint or 'must be at most ' + str(ctx.get('le'))}, got {_shown(given)}"
    if kind == "literal_error":
        return f"must be {ctx.get('expected')}, got {_shown(given)}"
    if kind in ("too_short", "list_type") and path == "source.key":
        return f"{HINTS['source.key']}, got {_shown(given)}"
    if kind in ("value_error", "assertion_error"):
        text = str(error["msg"])
        return text.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind in ("date_type", "date_parsing", "date_from_datetime_inexact"):
        return f"{hint or 'a date like 2026-01-01'}, got {_shown(given)}"
    return f"{error['msg']}, got {_shown(given)}"


def _collapse_unions(errors: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """``int | float`` and ``X | None`` fields report one error per branch: keep the first per path."""
    seen: set[str] = set()
    kept = []
    for error in errors:
        path = _path(error["loc"])
        if path in seen:
            continue
        seen.add(path)
        kept.append(error)
    return kept


# --- YAML positions --------------------------------------------------------------------------------------
def _positions(node: yaml.Node | None, prefix: str, out: dict[str, int], dupes: list[tuple[str, int]]) -> None:
    """Line numbers (1-based) of every mapping key, by field path; repeated keys go to ``dupes``."""
    if not isinstance(node, yaml.MappingNode):
        return
    seen: set[str] = set()
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            continue
        path = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
        line = key_node.start_mark.line + 1
        if key_node.value in seen:
            dupes.append((path, line))
        seen.add(key_node.value)
        out.setdefault(path, line)
        _positions(value_node, path, out, dupes)


class _Loader(yaml.SafeLoader):
    """Safe YAML, except that a date-like value that is not a real date (2026-13-01) stays text, so the
    schema reports it with the field's name instead of YAML failing the whole file."""


def _timestamp_or_text(loader: yaml.SafeLoader, node: yaml.Node) -> object:
    try:
        return yaml.SafeLoader.construct_yaml_timestamp(loader, node)  # type: ignore[arg-type]
    except ValueError:
        return loader.construct_scalar(node)  # type: ignore[arg-type]


_Loader.add_constructor("tag:yaml.org,2002:timestamp", _timestamp_or_text)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"not valid YAML{where}: {problem}" + (f" ({context})" if context else "")


# --- loading ---------------------------------------------------------------------------------------------
def _resolve(value: str, base: Path) -> str:
    """``${SYNCLINE_HOME}``, ``$VAR`` and ``~`` expanded; a relative result is taken from ``base``."""
    from connectors import settings

    for placeholder in HOME_PLACEHOLDERS:
        if placeholder in value:
            value = value.replace(placeholder, str(settings.home()))
    expanded = os.path.expanduser(os.path.expandvars(value))
    return expanded if os.path.isabs(expanded) else str(base / expanded)


def expand_path(pattern: str, base: Path) -> str:
    """Expand ``${SYNCLINE_HOME}``/``${VAR}``/``~`` in a path or glob; relative ones are taken from ``base``
    (the sync file's folder: :attr:`SyncSpec.folder`)."""
    return _resolve(pattern, base)


def _is_path_option(name: str) -> bool:
    return name.endswith(PATH_OPTION_SUFFIXES)


class _Problems:
    def __init__(self, file: str, lines: Mapping[str, int]) -> None:
        self.file = file
        self.lines = lines
        self.found: list[tuple[int, int, ConfigError]] = []

    def add(self, path: str, message: str) -> None:
        top = path.split(".")[0].split("[")[0]
        order = TOP_FIELDS.index(top) if top in TOP_FIELDS else len(TOP_FIELDS)
        line = self._line(path)
        if line is not None and "line " not in message:
            message = f"{message} (line {line})"
        self.found.append((order, len(self.found), ConfigError(self.file, path or "(top level)", message)))

    def _line(self, path: str) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path.rpartition(".")[0]
        return None

    def raise_if_any(self) -> None:
        if self.found:
            raise SyncFileError(self.file, [p for _, _, p in sorted(self.found, key=lambda t: (t[0], t[1]))])


def _section(model: type[_Section], raw: object) -> Any:
    """The section validated on its own (None if it does not validate): problems were reported already."""
    try:
        return model.model_validate(raw)
    except ValidationError:
        return None


def load_sync_file(path: Path) -> SyncSpec:
    """Parse and check one sync file. Raises :class:`SyncFileError` (a ConfigError) listing every problem."""
    file = str(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(file, "(file)", f"cannot be read: {exc}") from None
    try:
        tree = yaml.compose(text, Loader=_Loader)
        raw = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(file, "(yaml)", _yaml_problem(exc)) from None
    lines: dict[str, int] = {}
    dupes: list[tuple[str, int]] = []
    _positions(tree, "", lines, dupes)
    problems = _Problems(file, lines)
    if not isinstance(raw, dict):
        problems.add("", f"expected a mapping of fields (name, source, destination, model...), got {_shown(raw)}")
        problems.raise_if_any()
    for dupe, line in dupes:
        problems.add(dupe, f"given twice (again at line {line}); YAML keeps only the last")

    doc: SyncFileModel | None = None
    try:
        doc = SyncFileModel.model_validate(raw)
    except ValidationError as exc:
        for error in _collapse_unions(exc.errors()):
            where = _path(error["loc"])
            problems.add(where, _message(error, where))

    # Sections that validated on their own, for the checks that span sections or need the vendor.
    def part(name: str) -> Any:
        if doc is not None:
            return getattr(doc, name)
        value = raw.get(name)
        return None if value is None else _section(SECTIONS[name], value)

    dest: DestinationModel | None = part("destination")

    vendor: Vendor | None = None
    endpoint: Endpoint | None = None
    options: dict[str, Any] = {}
    raw_dest = raw.get("destination")
    if isinstance(raw_dest, dict):
        known = vendors()
        given_vendor = raw_dest.get("vendor")
        if isinstance(given_vendor, str):
            vendor = known.get(given_vendor)
            if vendor is None:
                problems.add("destination.vendor", f"unknown vendor {given_vendor!r} (known: {', '.join(known)})")
        given_endpoint = raw_dest.get("endpoint")
        if vendor is not None and isinstance(given_endpoint, str):
            endpoint = vendor.endpoints.get(given_endpoint)
            if endpoint is None:
                problems.add(
                    "destination.endpoint",
                    f"unknown endpoint {given_endpoint!r} for {vendor.name} (known: {', '.join(vendor.endpoints)})",
                )
        if endpoint is not None and dest is not None:
            options = {
                k: _resolve(v, path.resolve().parent) if _is_path_option(k) and isinstance(v, str) and v.strip() else v
                for k, v in dest.options.items()
            }
            try:
                endpoint = endpoint.configure(options)
            except ValueError as exc:
                option, _, message = str(exc).partition(": ")
                problems.add(f"destination.options.{option}", message or str(exc))
                endpoint = None

    model_sql = ""
    model_file = path
    given_model = raw.get("model")
    if isinstance(given_model, str) and given_model.endswith(".sql"):
        model_file = (path.parent / given_model).resolve()
        if not model_file.is_file():
            problems.add("model", f"model file not found: {model_file}")
        else:
            model_sql = model_file.read_text().strip().rstrip(";").strip()
            if not model_sql:
                problems.add("model", f"model file is empty: {model_file}")

    # Checks across sections read the raw values, so they are made even when a section has other problems.
    raw_source, raw_delivery = raw.get("source"), raw.get("delivery")
    if raw.get("partitions") is not None and isinstance(raw_source, dict) and raw_source.get("cursor") is None:
        problems.add("source.cursor", "daily partitions need a cursor column")
    if isinstance(raw_source, dict) and raw_source.get("cursor_unit") is not None and raw_source.get("cursor") is None:
        problems.add("source.cursor_unit", "is the unit of source.cursor: give the cursor column too")
    max_items = raw_delivery.get("max_items") if isinstance(raw_delivery, dict) else None
    if endpoint is not None:
        for where, message in endpoint_problems(endpoint, max_items, raw.get("strict")):
            problems.add(where, message)

    problems.raise_if_any()
    assert doc is not None and vendor is not None and endpoint is not None
    source, dest, partitions = doc.source, doc.destination, doc.partitions
    delivery_values = doc.delivery.model_dump(exclude_unset=True) if doc.delivery is not None else {}
    return SyncSpec(
        name=doc.name,
        file=path,
        source=SourceSpec(
            key=tuple(source.key),
            cursor=source.cursor,
            table=source.table,
            query=source.query,
            parquet=source.parquet,
            warehouse=source.warehouse,
            null_cursor=source.null_cursor,
            cursor_unit=source.cursor_unit,
            lookups=tuple(source.lookups),
        ),
        vendor=vendor,
        endpoint=endpoint,
        model_sql=model_sql,
        model_file=model_file,
        mode=doc.mode,
        keep_nulls=doc.keep_nulls,
        partition_start=partitions.daily.start if partitions is not None else None,
        schedule=doc.schedule,
        description=doc.description,
        delivery=DeliverySpec(**delivery_values),
        options=options,
        max_rejected_share=float(doc.checks.max_rejected_share) if doc.checks is not None else 0.01,
        destination_name=dest.name,
        strict=strict_rules(doc.strict),
    )


def endpoint_problems(endpoint: Endpoint, max_items: object, strict: object) -> list[tuple[str, str]]:
    """The checks of a sync that need its endpoint, as (field, message): the same for a sync file and for
    a ``deliver()`` call, so both say the same thing."""
    problems: list[tuple[str, str]] = []
    if isinstance(max_items, int) and max_items > endpoint.max_items:
        problems.append(
            ("delivery.max_items", f"{endpoint.qualified_name} accepts at most {endpoint.max_items} items per request")
        )
    if isinstance(strict, list | tuple):
        known_rules = [rule.name for rule in endpoint.opt_in_rules()]
        problems += [
            ("strict", f"{name!r} is not an opt-in rule of {endpoint.qualified_name} "
                       f"(its opt-in rules: {', '.join(known_rules) or 'none'})")
            for name in strict if isinstance(name, str) and name not in known_rules
        ]
    return problems


def strict_rules(value: bool | Sequence[str] | None) -> frozenset[str]:
    """``strict:`` of a sync file (or an API call) as the set :meth:`Endpoint.active_rules` takes."""
    if value is True:
        return frozenset({"*"})
    if not value:
        return frozenset()
    return frozenset(value)


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
