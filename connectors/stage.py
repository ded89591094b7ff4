"""Extract and transform: warehouse window -> extract Parquet -> payload Parquet.

Both steps are DuckDB (or ADBC for Postgres) streaming into Parquet files under
``$SYNCLINE_HOME/staging/<sync>/<window>/``. Files, not a shared DuckDB database, sit between the steps, so
parallel Dagster steps in separate processes never contend for a DuckDB write lock; the warehouse itself
is only ever opened read-only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import shutil
import socket
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from connectors import settings
from connectors.engine.payload import PayloadBuilder, describe, quote_ident, quote_literal, read_payloads_sql
from connectors.errors import ConfigError, ResourceError, SynclineError
from connectors.ledger.store import process_alive
from connectors.spec import SyncSpec, expand_path

ROW_GROUP_SIZE = 10_240  # small row groups keep the delivery reader's working set small


NULL_CURSOR_LOCK = "null-cursor"  # the lock name runs that carry NULL-cursor rows (null_cursor: include) share
_LAST_INSTANT = dt.datetime.max.replace(tzinfo=dt.UTC)  # the end of 9999-12-31: no day after it exists


@dataclass(frozen=True)
class Window:
    """A half-open cursor window [start, end) in UTC; ``None`` on both ends means the whole source.

    A window ending on 9999-12-31 (``date.max``) ends at the last representable instant instead of the
    next midnight, which does not exist."""

    start: dt.datetime | None = None
    end: dt.datetime | None = None

    @classmethod
    def days(cls, first: dt.date, last: dt.date) -> Window:
        """Daily partitions ``first``..``last`` inclusive."""
        start = dt.datetime.combine(first, dt.time(), tzinfo=dt.UTC)
        if last >= dt.date.max:
            return cls(start, _LAST_INSTANT)
        end = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
        return cls(start, end)

    @property
    def last_day(self) -> dt.date | None:
        """The last UTC day the window touches (None: open-ended)."""
        if self.end is None:
            return None
        if self.end >= _LAST_INSTANT:
            return dt.date.max
        return (self.end - dt.timedelta(microseconds=1)).date()

    def day_labels(self) -> list[str] | None:
        """The UTC days the window covers (None: the whole source, no bounds)."""
        if self.start is None or self.end is None:
            return None
        first, last = self.start.date(), self.last_day
        assert last is not None
        return [(first + dt.timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]

    def lock_labels(self, spec: SyncSpec) -> list[str] | None:
        """What a run over this window locks (:meth:`Ledger.window_lock`): its days, plus
        :data:`NULL_CURSOR_LOCK` when the sync puts its NULL-cursor rows in every window (``null_cursor:
        include``), so two runs over disjoint days never send those rows at the same time."""
        days = self.day_labels()
        if days is not None and includes_null_cursor(spec, self):
            days.append(NULL_CURSOR_LOCK)
        return days

    @property
    def label(self) -> str:
        if self.start is None and self.end is None:
            return "all"
        first = self.start.date().isoformat() if self.start else "start"
        last_day = self.last_day
        last = last_day.isoformat() if last_day is not None else "end"
        return first if first == last else f"{first}..{last}"

    @property
    def bounded(self) -> bool:
        return self.start is not None or self.end is not None


def includes_null_cursor(spec: SyncSpec, window: Window) -> bool:
    """True when a run over ``window`` reads the rows whose cursor is NULL."""
    return spec.source.cursor is None or not window.bounded or spec.source.null_cursor == "include"


def _connect(database: str = ":memory:", read_only: bool = False) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(database, read_only=read_only)
    con.execute("SET TimeZone = 'UTC'")
    # Bounded memory whatever the row count: DuckDB spills sorts and windows to disk past this limit.
    con.execute(f"SET memory_limit = {quote_literal(settings.duckdb_memory())}")
    con.execute(f"SET temp_directory = {quote_literal(str(settings.home() / 'duckdb_tmp'))}")
    con.execute("SET preserve_insertion_order = false")
    threads = settings.duckdb_threads()
    if threads:
        con.execute(f"SET threads = {threads}")
    return con


def duckdb_failure(exc: duckdb.Error, file: str, field: str, what: str) -> SynclineError:
    """A config error for what the user wrote; a resource error for what the machine ran out of."""
    if isinstance(exc, duckdb.OutOfMemoryException) or "Out of Memory" in str(exc):
        return ResourceError(
            f"{what}: DuckDB ran out of memory at its limit of {settings.duckdb_memory()} "
            f"(SYNCLINE_DUCKDB_MEMORY; it spills to {settings.home() / 'duckdb_tmp'} past it): {exc}"
        )
    if isinstance(exc, duckdb.IOException) and "No space left" in str(exc):
        return ResourceError(f"{what}: the disk under {settings.home()} is full: {exc}")
    return ConfigError(file, field, f"{what}: {exc}")


_OWNER = re.compile(r"\.p(?P<pid>[0-9]+)\.(?P<host>[0-9a-f]{8})$")  # the end of a staging folder's name


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def staging_path(spec: SyncSpec, window: Window, run_id: str) -> Path:
    """The run's staging folder. Its name ends with the owning process and host (``….p<pid>.<host hash>``),
    so the folder names its owner from the instant it exists: a process killed before the ledger knew of
    its run (still importing, waiting for a lock, folding) leaves nothing :func:`remove_dead_staging`
    cannot find."""
    safe = re.sub(r"[^0-9A-Za-z_.-]", "_", f"{window.label}-{run_id}")
    path = settings.staging_dir() / spec.name / f"{safe}.p{os.getpid()}.{_host_tag()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def remove_dead_staging() -> list[Path]:
    """Remove the staging folders (raw source rows) of this host's processes that are gone; returns them.
    A live process's folder, another host's (a shared home) and any folder not named by
    :func:`staging_path` are left alone."""
    root, host, removed = settings.staging_dir(), _host_tag(), []
    for folder in root.glob("*/*"):
        owner = _OWNER.search(folder.name)
        if owner and owner["host"] == host and not process_alive(int(owner["pid"])) and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def parquet_glob(spec: SyncSpec) -> str:
    assert spec.source.parquet
    return expand_path(spec.source.parquet, spec.folder)


def _source_select(spec: SyncSpec, files: list[str] | None = None) -> str:
    src = spec.source
    if src.table:
        return f"SELECT * FROM {src.table}"
    if src.query:
        return f"SELECT * FROM ({src.query}) AS q"
    if files is not None:
        listed = ", ".join(quote_literal(f) for f in files)
        return f"SELECT * FROM read_parquet([{listed}], union_by_name = true)"
    return f"SELECT * FROM read_parquet({quote_literal(parquet_glob(spec))}, union_by_name = true)"


def _key_expr(spec: SyncSpec) -> str:
    keys = spec.source.key
    if len(keys) == 1:
        return f"CAST({quote_ident(keys[0])} AS VARCHAR)"
    # A JSON array, so ('a|b', 'c') and ('a', 'b|c') stay apart; NULL when any part is NULL (rejected).
    parts = ", ".join(f"CAST({quote_ident(k)} AS VARCHAR)" for k in keys)
    nulls = " OR ".join(f"{quote_ident(k)} IS NULL" for k in keys)
    return f"(CASE WHEN {nulls} THEN NULL ELSE CAST(to_json([{parts}]) AS VARCHAR) END)"


# --- the cursor: a timestamp, a date, or an epoch number with its unit -------------------------------------
UNIT_MICROS = {"s": 1_000_000, "ms": 1_000, "us": 1}
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICRO = dt.timedelta(microseconds=1)
_MIN_MICROS = (dt.datetime.min.replace(tzinfo=dt.UTC) - _EPOCH) // _MICRO  # 0001-01-01 00:00
_MAX_MICROS = (_LAST_INSTANT - _EPOCH) // _MICRO  # 9999-12-31 23:59:59.999999
TIME_TYPES = {"timestamp with time zone", "timestamptz_ns", "timestamp", "timestamp_ms", "timestamp_ns", "timestamp_s"}
INTEGER_TYPES = {"tinyint", "smallint", "integer", "bigint", "hugeint", "utinyint", "usmallint", "uinteger",
                 "ubigint", "uhugeint"}
NUMBER_TYPES = {"float", "double", "decimal"}
PlaceholderStyle = str  # "?" (DuckDB) or "$" (Postgres: $1, $2, ...)


def _micros(instant: dt.datetime) -> int:
    instant = instant if instant.tzinfo is not None else instant.replace(tzinfo=dt.UTC)
    return (instant - _EPOCH) // _MICRO


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _first_date(instant: dt.datetime) -> dt.date:
    """The first date whose midnight (UTC) is at or after ``instant``."""
    instant = instant.astimezone(dt.UTC) if instant.tzinfo is not None else instant
    day = instant.date()
    return day if instant.time() == dt.time() else day + dt.timedelta(days=1)


def _last_date(end: dt.datetime) -> dt.date:
    """The last date whose midnight (UTC) is before ``end``."""
    end = end.astimezone(dt.UTC) if end.tzinfo is not None else end
    return end.date() - dt.timedelta(days=1) if end.time() == dt.time() else end.date()


@dataclass(frozen=True)
class Cursor:
    """How a sync's cursor column is read (``source.cursor``, ``source.cursor_unit``).

    ``kind``: ``time`` (a timestamp, with or without time zone: naive ones are UTC), ``date`` (a DATE: the
    day is the UTC day), ``epoch`` (a number of ``unit`` since 1970-01-01 UTC), ``number`` (a number
    without a unit: an ordering cursor, a version or sequence, on syncs without days) or ``other``
    (anything else: carried and ordered as it is, but no window can select by it). Windows select each kind by
    bounds of the column's own type, so the filter stays sargable (an index or zone map on the column
    works, in DuckDB and pushed down to Postgres). ``_cursor`` in the extract is the cursor as a time
    (TIMESTAMPTZ for an epoch: an epoch outside years 1-9999 has none), so the ledger, reconciliation and
    the newest-row-wins rule see times whatever the column holds."""

    column: str
    kind: str
    type_name: str
    unit: str | None = None
    integer: bool = True

    @property
    def ident(self) -> str:
        return quote_ident(self.column)

    def _range(self) -> tuple[object, object]:
        """The epoch values that are a time in years 1..9999."""
        assert self.unit is not None
        k = UNIT_MICROS[self.unit]
        if self.integer:
            return _ceil_div(_MIN_MICROS, k), _MAX_MICROS // k
        return _MIN_MICROS / k, _MAX_MICROS / k

    def _epoch_bound(self, instant: dt.datetime) -> object:
        assert self.unit is not None
        k = UNIT_MICROS[self.unit]
        us = _micros(instant)
        return _ceil_div(us, k) if self.integer else us / k

    def missing(self, ident: str | None = None) -> str:
        """SQL (both dialects): the row has no cursor time (NULL; for an epoch, also outside years 1-9999)."""
        col = ident or self.ident
        if self.kind != "epoch":
            return f"{col} IS NULL"
        lo, hi = self._range()
        return f"({col} IS NULL OR {col} < {lo!r} OR {col} > {hi!r})"

    def time_sql(self, dialect: str = "duckdb", ident: str | None = None) -> str:
        """SQL: the cursor as a time (the extract's ``_cursor``)."""
        col = ident or self.ident
        if self.kind != "epoch":
            return col
        assert self.unit is not None
        k = UNIT_MICROS[self.unit]
        lo, hi = self._range()
        if dialect == "postgres":
            base = "timestamptz '1970-01-01 00:00:00+00'"
            if self.integer:  # exact: whole seconds, then the rest (interval * number goes through float8)
                per_second = 1_000_000 // k
                value = f"{base} + ({col} / {per_second}) * interval '1 second'"
                if per_second > 1:
                    value += f" + ({col} % {per_second}) * interval '{k} microseconds'"
            else:
                value = f"{base} + ({col}::float8 * {k}) * interval '1 microsecond'"
        elif self.integer:
            value = f"timezone('UTC', make_timestamp(CAST({col} AS BIGINT) * {k}))"
        else:
            value = f"timezone('UTC', make_timestamp(CAST(round({col} * {k}) AS BIGINT)))"
        return f"(CASE WHEN {col} BETWEEN {lo!r} AND {hi!r} THEN {value} END)"

    def window_filter(self, spec: SyncSpec, window: Window, placeholder: PlaceholderStyle = "?",
                      ident: str | None = None) -> tuple[str, list[object]]:
        """The WHERE clause selecting ``window`` (rows with no cursor too, under ``null_cursor: include``)."""
        if not window.bounded:
            return "", []
        require_unit(spec, self, window)
        if self.kind == "other":
            raise ConfigError(
                str(spec.file), "source.cursor",
                f"{self.column} is {self.type_name}: a window selects rows by a timestamp, a date, or an epoch "
                "number with source.cursor_unit (s, ms, us); cast it in source.query",
            )
        col = ident or self.ident
        bounds: list[tuple[str, object]] = []
        if self.kind == "date":
            if window.start is not None:
                bounds.append((">=", _first_date(window.start)))
            if window.end is not None:
                bounds.append(("<=", _last_date(window.end)))
        elif self.kind == "epoch":
            if window.start is not None:
                bounds.append((">=", self._epoch_bound(window.start)))
            if window.end is not None:
                bounds.append(("<", self._epoch_bound(window.end)))
        else:
            if window.start is not None:
                bounds.append((">=", window.start))
            if window.end is not None:
                bounds.append(("<", window.end))
        clauses, params = [], []
        for op, value in bounds:
            params.append(value)
            mark = f"${len(params)}" if placeholder == "$" else placeholder
            clauses.append(f"{col} {op} {mark}")
        condition = " AND ".join(clauses)
        if spec.source.null_cursor == "include":
            condition = f"({condition}) OR {self.missing(col)}"
        return " WHERE " + condition, params


def cursor_of(spec: SyncSpec, type_id: str, type_name: str | None = None) -> Cursor:
    """The sync's :class:`Cursor` for a cursor column of DuckDB type ``type_id`` (``DuckDBPyType.id``).

    A number without ``source.cursor_unit`` is a config error on a sync with daily partitions or a
    windowed run (the error names the file and ``source.cursor_unit``); without either, a number is an
    ordering cursor (a version or sequence number: the newest row of a key wins), as before."""
    src = spec.source
    assert src.cursor is not None
    shown = type_name or type_id.upper()
    number = type_id in INTEGER_TYPES or type_id in NUMBER_TYPES
    if src.cursor_unit is not None:
        if not number:
            raise ConfigError(
                str(spec.file), "source.cursor_unit",
                f"the cursor {src.cursor} is {shown}, not an epoch number: drop cursor_unit "
                "(timestamps and dates need no unit)",
            )
        return Cursor(src.cursor, "epoch", shown, src.cursor_unit, type_id in INTEGER_TYPES)
    if type_id in TIME_TYPES:
        return Cursor(src.cursor, "time", shown)
    if type_id == "date":
        return Cursor(src.cursor, "date", shown)
    return Cursor(src.cursor, "number" if number else "other", shown)


def require_unit(spec: SyncSpec, cursor: Cursor, window: Window) -> None:
    """A number cursor without a unit cannot place rows in days: an error when the sync needs days."""
    if cursor.kind == "number" and (spec.partitioned or window.bounded):
        raise ConfigError(
            str(spec.file), "source.cursor_unit",
            f"the cursor {cursor.column} is {cursor.type_name}, a number: declare its epoch unit, e.g. "
            "`cursor_unit: ms` (s, ms or us), so windows and daily partitions can place rows in UTC days",
        )


def duckdb_cursor(spec: SyncSpec, con: duckdb.DuckDBPyConnection, relation: str, window: Window) -> Cursor | None:
    """The sync's cursor over ``relation`` (a DuckDB SELECT of the source), checked for ``window``."""
    if spec.source.cursor is None:
        return None
    (dtype,) = describe(con, f"(SELECT {quote_ident(spec.source.cursor)} FROM ({relation}) AS s)").values()
    cursor = cursor_of(spec, dtype.id, str(dtype))
    require_unit(spec, cursor, window)
    return cursor


def parquet_cursor_days(spec: SyncSpec, files: list[str]) -> tuple[dt.date, dt.date] | None:
    """The first and last UTC day of the cursor over ``files`` of a Parquet source (None: no cursor
    time in them), for the sensor's partition range. An epoch cursor is read in its unit."""
    assert spec.source.cursor is not None
    con = _connect()
    try:
        source = _source_select(spec, files)
        cursor = duckdb_cursor(spec, con, source, Window())
        assert cursor is not None
        time = cursor.time_sql()
        row = con.execute(f"SELECT CAST(min({time}) AS DATE), CAST(max({time}) AS DATE) FROM ({source}) AS s").fetchone()
    finally:
        con.close()
    if not row or row[0] is None:
        return None
    return row[0], row[1]


@dataclass(frozen=True)
class Extracted:
    """What :func:`extract_window` staged. ``null_cursor_rows``: the source rows whose cursor is NULL,
    counted on every windowed run (left out of the window, or included with ``null_cursor: include``);
    None when the run has no window or the sync no cursor (then every row is read)."""

    path: Path
    rows: int
    null_cursor_rows: int | None = None
    null_cursor_included: bool = True

    def note(self, spec: SyncSpec) -> str | None:
        """The run note about NULL-cursor rows, or None when there are none (or nothing was windowed)."""
        if not self.null_cursor_rows:
            return None
        cursor = spec.source.cursor
        if spec.source.cursor_unit:  # an epoch number: NULL, or no time in years 1-9999
            cursor = f"{cursor} (NULL, or not a time in {spec.source.cursor_unit})"
        if self.null_cursor_included:
            return (f"{self.null_cursor_rows} rows have no {cursor}: included in this window "
                    "(null_cursor: include)")
        return (f"{self.null_cursor_rows} rows have no {cursor}: run without a window, "
                "or set `null_cursor: include`")


def extract(spec: SyncSpec, window: Window, out_dir: Path, files: list[str] | None = None) -> tuple[Path, int]:
    """Copy the source rows of ``window`` to ``extract.parquet``, adding ``_key`` and ``_cursor``.

    ``files`` limits a Parquet source to those files (the sensor's new file set)."""
    staged = extract_window(spec, window, out_dir, files)
    return staged.path, staged.rows


def extract_window(spec: SyncSpec, window: Window, out_dir: Path, files: list[str] | None = None) -> Extracted:
    """:func:`extract`, also counting the rows with a NULL cursor on a windowed run (:class:`Extracted`)."""
    out = out_dir / "extract.parquet"
    windowed = spec.source.cursor is not None and window.bounded
    included = includes_null_cursor(spec, window)
    if spec.source.warehouse == "postgres":
        from connectors.postgres_source import extract_postgres

        _, null_rows = extract_postgres(spec, window, out)
        return Extracted(out, pq.ParquetFile(out).metadata.num_rows, null_rows if windowed else None, included)
    if spec.source.parquet:
        con = _connect()
    else:
        path = settings.warehouse_path()
        if not path.exists():
            raise SynclineError(
                f"warehouse not found at {path}: run `syncline demo --warehouse-only` or set SYNCLINE_WAREHOUSE"
            )
        con = _connect(str(path), read_only=True)
    source = _source_select(spec, files)
    nulls: int | None = None
    try:
        cursor = duckdb_cursor(spec, con, source, window)
        where, params = cursor.window_filter(spec, window) if cursor is not None else ("", [])
        cursor_sql = f"{cursor.time_sql()} AS _cursor" if cursor is not None else "NULL AS _cursor"
        query = f"SELECT *, {_key_expr(spec)} AS _key, {cursor_sql} FROM ({source}) AS s{where}"
        con.execute(
            f"COPY ({query}) TO {quote_literal(str(out))} (FORMAT parquet, ROW_GROUP_SIZE {ROW_GROUP_SIZE})",
            params,
        )
        if windowed and included:  # they are in the extract: count them there
            row = con.execute(
                f"SELECT count(*) FROM read_parquet({quote_literal(str(out))}) WHERE _cursor IS NULL"
            ).fetchone()
            nulls = int(row[0]) if row else 0
        elif windowed:  # left out: one narrow pass over the cursor column of the source
            assert cursor is not None
            row = con.execute(f"SELECT count(*) FROM ({source}) AS s WHERE {cursor.missing()}").fetchone()
            nulls = int(row[0]) if row else 0
    except duckdb.Error as exc:
        raise duckdb_failure(exc, str(spec.file), "source", "reading the source failed") from None
    finally:
        con.close()
    return Extracted(out, pq.ParquetFile(out).metadata.num_rows, nulls, included)


def builder_for(spec: SyncSpec) -> PayloadBuilder:
    return PayloadBuilder(
        spec.endpoint,
        sync_name=spec.name,
        model_file=str(spec.model_file),
        keep_nulls=spec.keep_nulls,
        max_body_bytes=spec.delivery.max_body_bytes,
        strict=spec.strict,
    )


WAREHOUSE_ALIAS = "warehouse"  # the DuckDB warehouse's catalog name inside the model's connection
SOURCE_KEY = "_source_key"  # a model column naming the source row an item came from (fan-out)


def attaches_warehouse(spec: SyncSpec) -> bool:
    """True when the model runs with the DuckDB warehouse attached: a table or query source in a DuckDB
    warehouse, or a Parquet source that declares ``source.lookups``."""
    src = spec.source
    return src.warehouse == "duckdb" and (not src.parquet or bool(src.lookups))


def _lookup_ref(name: str) -> str:
    return ".".join(quote_ident(part) for part in name.split("."))


def model_connection(spec: SyncSpec, staged: Path | None) -> duckdb.DuckDBPyConnection:
    """The DuckDB connection a sync's model runs in, before ``source`` exists.

    - A DuckDB warehouse is ATTACHed read-only (as ``warehouse``) and made the default catalog: the model
      may join any of its tables and views by the names the source's ``table:`` uses
      (``analytics.plans``; ``main`` tables unqualified). The objects syncline adds (``source``,
      ``model``...) are TEMP views, so they never touch the warehouse and shadow any table of that name.
    - A Postgres warehouse cannot be reached from DuckDB: the tables declared in ``source.lookups`` were
      staged beside the extract (``staged``: that folder) and are registered under their names; with
      ``staged`` None (binding only) they are zero-row tables of the right shape.
    Declared lookups of a DuckDB warehouse are checked to exist; a missing one is a config error."""
    con = _connect()
    src = spec.source
    try:
        if attaches_warehouse(spec):
            path = settings.warehouse_path()
            if not path.exists():
                raise SynclineError(
                    f"warehouse not found at {path}: run `syncline demo --warehouse-only` or set SYNCLINE_WAREHOUSE"
                )
            con.execute(f"ATTACH {quote_literal(str(path))} AS {WAREHOUSE_ALIAS} (READ_ONLY)")
            con.execute(f"USE {WAREHOUSE_ALIAS}")
            for name in src.lookups:
                try:
                    con.sql(f"SELECT * FROM {_lookup_ref(name)} LIMIT 0")
                except duckdb.CatalogException:
                    raise ConfigError(str(spec.file), "source.lookups",
                                      f"{name} is not a table or view of the warehouse {path}") from None
        elif src.lookups:
            from connectors.postgres_source import lookup_path, lookup_shapes

            shapes = lookup_shapes(spec) if staged is None else None
            for index, name in enumerate(src.lookups):
                if "." in name:
                    con.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(name.split('.')[0])}")
                if shapes is not None:
                    con.register(f"_lookup_{index}", shapes[index])
                    relation = f"_lookup_{index}"
                else:
                    assert staged is not None
                    relation = f"read_parquet({quote_literal(str(lookup_path(staged, index)))})"
                con.execute(f"CREATE VIEW {_lookup_ref(name)} AS SELECT * FROM {relation}")
    except BaseException:
        con.close()
        raise
    return con


def _model_hint(spec: SyncSpec, exc: duckdb.Error) -> str:
    """What to do about a table the model names that its connection does not have."""
    if not isinstance(exc, duckdb.CatalogException):
        return ""
    if spec.source.warehouse == "postgres":
        return (" (a Postgres table the model joins must be listed in source.lookups: it is copied once per "
                "run, as the window is read)")
    if spec.source.parquet and not spec.source.lookups:
        return " (a Parquet source's model sees the DuckDB warehouse when the sync lists source.lookups)"
    return ""


def cursor_carrier(columns: Mapping[str, object]) -> str | None:
    """The model column the source cursor is carried by (None: the model selects ``_cursor``, or has no
    key): ``_source_key`` when the model names each item's source row (a fan-out), else ``_key``."""
    if "_cursor" in columns:
        return None
    if SOURCE_KEY in columns:
        return SOURCE_KEY
    return "_key" if "_key" in columns else None


@dataclass
class ModelRender:
    """The model's DuckDB connection and its payload SELECTs: one, or one per key partition
    (``partitions`` > 1). Each SELECT is valid until the iterator is advanced: advancing it prepares the
    next partition's tables in ``con``."""

    con: duckdb.DuckDBPyConnection
    selects: Generator[str, None, None]
    partitions: int = 1


PART_COLUMN = "_syncline_part"  # the render partition of a materialized model row (see _partition_selects)


def _part_of(key: str, partitions: int) -> str:
    """SQL: the render partition (0 .. partitions-1) of a row, from its key as text: a key's rows all land
    in one partition (NULL keys too: ``hash`` of NULL is a number)."""
    return f"hash(CAST({key} AS VARCHAR)) % {partitions}"


def _one(select: str) -> Generator[str, None, None]:
    """A render of one pass: its single SELECT, as :class:`ModelRender` holds them."""
    yield select


def render_partitions(rows: int) -> int:
    """How many key partitions a render of ``rows`` rows runs in (``SYNCLINE_RENDER_PARTITION_ROWS``)."""
    return max(1, _ceil_div(rows, settings.render_partition_rows()))


def open_model(
    spec: SyncSpec, extract_path: Path, delivered: Path | Callable[[], Path] | None = None
) -> ModelRender:
    """A DuckDB connection with ``source`` (the extract) and ``model`` views, and the payload SELECTs.

    ``source`` is the window's extracted rows; the model may also join the warehouse's other tables
    (:func:`model_connection`) and use CTEs. ``delivered`` (the ledger's view of this destination, append
    mode) drops the model rows whose key the destination already has before any payload is rendered: the
    filter is on ``_key`` (each item's own key, also in a fan-out), so DuckDB pushes it below the model's
    expressions, and a rerun of a delivered sync renders almost nothing. The view ``model_all`` keeps
    every row, for counting.

    More rows to render than ``SYNCLINE_RENDER_PARTITION_ROWS`` run in key partitions
    (:func:`_partition_selects`) when every step after the model is by ``_key`` (the cursor carried by
    ``_key`` in one pass, or selected by the model): in one pass the cursor join and the repeated-key
    search over 10M keys spilled, and held DuckDB at its memory limit. A fan-out (``_source_key``), a
    two-pass carry, or an endpoint rule that compares rows (``rules_span_rows``: GradeMyPage's dedup tuple,
    a window over every row) renders in one pass, as before."""
    con = model_connection(spec, extract_path.parent)
    con.execute(f"CREATE TEMP VIEW source AS SELECT * FROM read_parquet({quote_literal(str(extract_path))})")
    try:
        con.execute(f"CREATE TEMP VIEW model AS {spec.model_sql}")
        columns = describe(con, "model")
        carrier = cursor_carrier(columns)
        source_rows = pq.ParquetFile(extract_path).metadata.num_rows
        pending = None
        if delivered is not None and "_key" in columns:
            pending = _pending_keys(con, spec, delivered, extract_path.parent / "model_keys.parquet", source_rows)
        relation = "model"
        two_pass = False
        repeats_in: str | None = None  # where repeated keys are found without the cursor join (see PayloadBuilder.sql)
        if spec.source.cursor and carrier is not None:
            # Nothing pending: the payload SELECT runs over no rows, so how the cursor is carried does not matter.
            two_pass = pending != 0 and _keys_with_cursors_apart(con, render_partitions(source_rows))
            _carry_cursor(con, spec, carrier, apart=two_pass)
            relation = "model_with_cursor"
            columns = describe(con, relation)
            if carrier == "_key" and not two_pass:
                repeats_in = "model"  # one cursor per _key: a key's rows all carry the same one
        con.execute(f"CREATE TEMP VIEW model_all AS SELECT * FROM {relation}")
        # As many rows as model_all, cheaper to count: the cursor join keeps the model's row count (one
        # newest cursor per key), and only the two-pass carry (repeated keys) is counted through it.
        counted = "model_all" if two_pass else "model"
        con.execute(f"CREATE TEMP VIEW model_count AS SELECT 1 AS one FROM {counted}")
        if pending is not None:
            con.execute(
                f"CREATE TEMP VIEW model_pending AS SELECT m.* FROM {relation} AS m SEMI JOIN _pending_keys AS p "
                f"ON CAST(m._key AS VARCHAR) = p._key UNION ALL BY NAME SELECT m.* FROM {relation} AS m WHERE m._key IS NULL"
            )
            relation = "model_pending"
            if repeats_in is not None:
                con.execute(
                    "CREATE TEMP VIEW model_keys_pending AS SELECT m._key FROM model AS m SEMI JOIN _pending_keys AS p "
                    "ON CAST(m._key AS VARCHAR) = p._key"
                )
                repeats_in = "model_keys_pending"
            if not pending:
                # Everything delivered: the payload SELECT still names its columns, but runs over nothing
                # (its joins and cursor lookups would otherwise still read the whole source).
                nothing = f"SELECT * FROM ({builder_for(spec).sql(relation, columns, repeats_in)}) AS nothing_pending LIMIT 0"
                return ModelRender(con, _one(nothing))
        partitions = render_partitions(source_rows if pending is None else pending)
        by_key = carrier != SOURCE_KEY and not two_pass and not spec.endpoint.rules_span_rows
        if partitions > 1 and "_key" in columns and by_key:
            parts = _partition_selects(con, spec, extract_path.parent / "model.parquet", partitions,
                                       pending_only=pending is not None,
                                       carried=bool(spec.source.cursor) and carrier == "_key")
            return ModelRender(con, parts, partitions)
    except duckdb.Error as exc:
        con.close()
        raise duckdb_failure(exc, str(spec.model_file), "(sql)",
                             "the model does not run" + _model_hint(spec, exc)) from None
    return ModelRender(con, _one(builder_for(spec).sql(relation, columns, repeats_in)))


def _key_number(idem_key: str, *, checked: bool = False) -> str:
    """SQL: a plain idempotency key (32 lowercase hex digits, :meth:`PayloadBuilder.key_hash`) as the
    128-bit number it spells, so an anti-join hashes and compares fixed-width numbers, not 32-character
    strings. ``checked``: NULL for any other text (a ``dup-``/``nokey-`` key, or anything a ledger holds
    that is not a plain key), which then matches no plain key, as its text would not have; the cast alone
    would also read upper case and ``_`` digit separators."""
    number = f"CAST(('0x' || {idem_key}) AS UHUGEINT)"
    if not checked:
        return number
    plain = f"strlen({idem_key}) = 32 AND NOT contains({idem_key}, '_') AND {idem_key} = lower({idem_key})"
    return f"CASE WHEN {plain} THEN TRY_{number} END"


def _pending_keys(con: duckdb.DuckDBPyConnection, spec: SyncSpec, delivered: Path | Callable[[], Path],
                  staged: Path, source_rows: int) -> int:
    """``_pending_keys``: the model's keys the destination does not have (``delivered``: the ledger's
    snapshot, or a call that waits for it); returns how many rows are to render (those keys and the rows
    without a key, which match no delivered key and stay, rejected).

    Found over the model's keys alone (the anti-join carries no payload columns), then the model's rows of
    those keys are taken. Measured at 10M delivered rows: the anti-join of whole model rows, which the
    payload SELECT reads twice, took 38 s and spilled 2 GB under the memory limit; this narrow one about
    11 s, and an empty key table makes DuckDB skip the model. The keys are hashed into ``staged`` (a
    Parquet file: a temporary table of 10M keys filled DuckDB's memory limit) before waiting for the
    snapshot, which a child process may still be writing. Both sides are compared as 128-bit numbers
    (:func:`_key_number`; the snapshot's delivered keys are converted once, into a file beside ``staged``):
    at 10M delivered keys the anti-join took 4.4 s instead of 10.5 s (plus 3.8 s converting), and its
    files a third of the bytes (2026-12-03, docs/performance.md). It runs in partitions of the key (:func:`render_partitions` of the larger
    side), so its hash table holds one partition's keys at a time."""
    key = builder_for(spec).key_hash("k._key")
    numbers = staged.with_name(f"{staged.stem}-delivered.parquet")
    options = f"(FORMAT parquet, ROW_GROUP_SIZE {ROW_GROUP_SIZE})"
    con.execute(
        f"COPY (SELECT k._key, {_key_number(key)} AS key_id FROM (SELECT CAST(_key AS VARCHAR) AS _key FROM model "
        f"WHERE _key IS NOT NULL) AS k) TO {quote_literal(str(staged))} {options}"
    )
    try:
        snapshot = delivered() if callable(delivered) else delivered
        con.execute(
            f"COPY (SELECT key_id FROM (SELECT {_key_number('idem_key', checked=True)} AS key_id FROM "
            f"read_parquet({quote_literal(str(snapshot))}) WHERE state = 'delivered') AS d WHERE key_id IS NOT NULL) "
            f"TO {quote_literal(str(numbers))} {options}"
        )
        partitions = render_partitions(max(source_rows, pq.ParquetFile(snapshot).metadata.num_rows))
        con.execute("CREATE TEMP TABLE _pending_keys (_key VARCHAR)")
        for part in range(partitions):
            mine = f" WHERE hash(key_id) % {partitions} = {part}" if partitions > 1 else ""
            con.execute(
                f"INSERT INTO _pending_keys SELECT k._key FROM (SELECT _key, key_id FROM "
                f"read_parquet({quote_literal(str(staged))}){mine}) AS k ANTI JOIN "
                f"(SELECT key_id FROM read_parquet({quote_literal(str(numbers))}){mine}) AS d ON k.key_id = d.key_id"
            )
    finally:
        staged.unlink(missing_ok=True)
        numbers.unlink(missing_ok=True)
    (pending,) = con.execute(
        "SELECT (SELECT count(*) FROM _pending_keys) + (SELECT count(*) FROM model WHERE _key IS NULL)"
    ).fetchone() or (0,)
    return int(pending)


def _partition_selects(con: duckdb.DuckDBPyConnection, spec: SyncSpec, staged: Path, partitions: int, *,
                       pending_only: bool, carried: bool) -> Generator[str, None, None]:
    """The payload SELECT of each key partition, for a render whose every step after the model is by
    ``_key`` (:func:`open_model`).

    The model runs once, over all of ``source`` (a model may aggregate or join across rows), into
    ``staged`` with each row's partition (:func:`_part_of` its ``_key``). Each partition then takes its
    rows, the newest source cursor of its keys (``carried``: a table, so DuckDB builds the join on it and
    not on the wide rows), finds its repeated keys and renders, as a render of that many rows does. A
    key's rows are all in one partition, so each result is the one-pass result's rows of those keys.
    ``pending_only``: only the rows of ``_pending_keys`` (and those without a key), as ``model_pending``.

    Measured at 10M rows, the render alone (``docs/performance.md``): 45 s and 478 MB peak RSS in one pass,
    which spilled; 36 s and 347 MB in ten partitions."""
    rows = "model"
    if pending_only:
        rows = ("(SELECT m.* FROM model AS m SEMI JOIN _pending_keys AS p ON CAST(m._key AS VARCHAR) = p._key "
                "UNION ALL BY NAME SELECT m.* FROM model AS m WHERE m._key IS NULL)")
    con.execute(
        f"COPY (SELECT r.*, {_part_of('r._key', partitions)} AS {PART_COLUMN} FROM {rows} AS r) "
        f"TO {quote_literal(str(staged))} (FORMAT parquet, ROW_GROUP_SIZE {ROW_GROUP_SIZE})"
    )
    builder = builder_for(spec)
    try:
        for part in range(partitions):
            con.execute(
                f"CREATE OR REPLACE TEMP VIEW model_part AS SELECT * EXCLUDE ({PART_COLUMN}) "
                f"FROM read_parquet({quote_literal(str(staged))}) WHERE {PART_COLUMN} = {part}"
            )
            relation, repeats_in = "model_part", None
            if carried:  # as _carry_cursor's one pass, over this partition's keys
                con.execute("DROP TABLE IF EXISTS _cursor_part")
                con.execute(
                    "CREATE TEMP TABLE _cursor_part AS SELECT _key, max(_cursor) AS _cursor FROM source "
                    f"WHERE _key IS NOT NULL AND {_part_of('_key', partitions)} = {part} GROUP BY _key"
                )
                con.execute(
                    "CREATE OR REPLACE TEMP VIEW model_part_with_cursor AS SELECT m.*, c._cursor FROM model_part AS m "
                    "LEFT JOIN _cursor_part AS c ON CAST(m._key AS VARCHAR) = c._key"
                )
                relation, repeats_in = "model_part_with_cursor", "model_part"
            yield builder.sql(relation, describe(con, relation), repeats_in)
    finally:
        staged.unlink(missing_ok=True)


def _over(model_sql: str, rows: str) -> str:
    """The model's SELECT with ``source`` meaning only ``rows`` (a CTE named source shadows the view; the
    model's own ``WITH`` CTEs, nested inside, still see it)."""
    return f"WITH source AS (SELECT * FROM {rows}) SELECT * FROM (\n{model_sql}\n) AS m"


def _keys_with_cursors_apart(con: duckdb.DuckDBPyConnection, partitions: int) -> bool:
    """True when some key of ``source`` has rows with different cursors (or a NULL cursor beside a time).

    Searched in ``partitions`` key partitions of ``source``, one after the other (:func:`_part_of`), so the
    aggregate holds one partition's keys at a time: at 10M keys, one pass took 1.6 s and 389 MB peak RSS,
    ten took 3.0 s and 249 MB."""
    for part in range(partitions):
        where = f" AND {_part_of('_key', partitions)} = {part}" if partitions > 1 else ""
        row = con.execute(
            # min <> max is count(DISTINCT) > 1 without a distinct set per key (measured 5.7 s -> 2.9 s at 10M rows).
            f"SELECT count(*) FROM (SELECT _key FROM source WHERE _key IS NOT NULL{where} GROUP BY _key "
            "HAVING min(_cursor) <> max(_cursor) OR (count(_cursor) > 0 AND count(_cursor) < count(*)))"
        ).fetchone()
        if row and row[0]:
            return True
    return False


def _carry_cursor(con: duckdb.DuckDBPyConnection, spec: SyncSpec, by: str = "_key", *, apart: bool) -> None:
    """``model_with_cursor``: the model's rows with the source cursor of the row each came from, for a
    model that does not select ``_cursor``. The ledger keeps it (reconciliation, "what was delivered for
    this window"), and the payload's duplicate check orders a repeated key's rows by it, so the newest
    row wins whatever the model selects.

    ``by`` is the model column holding the source row's key: ``_key``, or ``_source_key`` when the model
    emits several items per source row, each with its own ``_key`` (a fan-out: ``_key || ':' || kind``).

    A key's rows are told apart only by what the model keeps, and it keeps ``_key``, not the row: so when
    some key repeats with different cursors, the model runs twice, once over each key's newest rows and
    once over the older ones, and each pass takes its key's newest cursor within the pass. The older
    rows are then rejected as duplicates with their own cursor (with three or more rows of one key, the
    older ones share the newest older cursor). Without such keys (the usual case) it is one pass and a
    join on the key. ``apart``: some key repeats with different cursors (:func:`_keys_with_cursors_apart`),
    so two passes are made."""
    on = f"CAST(m.{quote_ident(by)} AS VARCHAR) = c._key"
    newest = "(SELECT _key, max(_cursor) AS _cursor FROM {rows} WHERE _key IS NOT NULL GROUP BY _key)"
    if not apart:
        con.execute(
            "CREATE TEMP VIEW model_with_cursor AS SELECT m.*, c._cursor FROM model AS m LEFT JOIN "
            f"{newest.format(rows='source')} AS c ON {on}"
        )
        return
    # The rows of each repeated key that are not its newest (NULL cursors lose to any cursor).
    con.execute(
        "CREATE TEMP VIEW _source_newest_cursor AS SELECT _key, max(_cursor) AS _newest FROM source "
        "WHERE _key IS NOT NULL GROUP BY _key HAVING count(*) > 1"
    )
    older = "s._cursor IS DISTINCT FROM n._newest AND n._newest IS NOT NULL"
    con.execute(
        "CREATE TEMP VIEW _source_newest AS SELECT s.* FROM source AS s LEFT JOIN _source_newest_cursor AS n "
        f"ON s._key = n._key WHERE n._key IS NULL OR NOT ({older})"
    )
    con.execute(
        "CREATE TEMP VIEW _source_older AS SELECT s.* FROM source AS s JOIN _source_newest_cursor AS n "
        f"ON s._key = n._key WHERE {older}"
    )
    passes = [
        f"SELECT m.*, c._cursor FROM ({_over(spec.model_sql, part)}) AS m LEFT JOIN "
        f"{newest.format(rows=part)} AS c ON {on}"
        for part in ("_source_newest", "_source_older")
    ]
    con.execute(f"CREATE TEMP VIEW model_with_cursor AS {passes[0]} UNION ALL BY NAME {passes[1]}")


@dataclass(frozen=True)
class Rendered:
    """What :func:`render_payloads` wrote. ``rows``: items rendered (``rejected`` of them with a reason);
    ``left_out``: items the destination has already (not rendered); ``items``: every item the model made
    (``rows + left_out``), which is not the number of source rows when the model filters rows or emits
    several items per row; ``uncarried``: items rendered without a cursor because their ``_key`` is not a
    source key and the model selects neither ``_cursor`` nor ``_source_key``."""

    path: Path
    rows: int
    rejected: int
    left_out: int = 0
    items: int = 0
    uncarried: int = 0

    def note(self, spec: SyncSpec, source_rows: int | None) -> str | None:
        """The run note about items vs source rows (and items left without a cursor), or None."""
        notes = []
        if source_rows is not None and self.items != source_rows:
            notes.append(f"the model made {self.items} items from {source_rows} source rows (counts are items)")
        if self.uncarried:
            notes.append(
                f"{self.uncarried} items have no {spec.source.cursor}: their _key is not a source key; select "
                f"the source row's key as {SOURCE_KEY} (or a _cursor) so the ledger places them in their window"
            )
        return "; ".join(notes) or None


def transform(spec: SyncSpec, extract_path: Path, out_dir: Path) -> tuple[Path, int, int]:
    """Render payloads to ``payloads.parquet``; returns (path, rows, rows with a reject reason)."""
    out, rows, rejected, _ = transform_pending(spec, extract_path, out_dir)
    return out, rows, rejected


def transform_pending(
    spec: SyncSpec, extract_path: Path, out_dir: Path, delivered: Path | Callable[[], Path] | None = None
) -> tuple[Path, int, int, int]:
    """Render the payloads a destination does not have yet (all, without ``delivered``); returns
    (path, rows rendered, rows with a reject reason, rows left out as already delivered)."""
    done = render_payloads(spec, extract_path, out_dir, delivered)
    return done.path, done.rows, done.rejected, done.left_out


def render_payloads(
    spec: SyncSpec, extract_path: Path, out_dir: Path, delivered: Path | Callable[[], Path] | None = None
) -> Rendered:
    """:func:`transform_pending`, with the counts of :class:`Rendered`. ``delivered`` may be a call that
    waits for the ledger's snapshot (written while the source was extracted)."""
    rendered = open_model(spec, extract_path, delivered)
    con = rendered.con
    out = out_dir / "payloads.parquet"
    if rendered.partitions > 1:  # a folder of part files, read as one (read_payloads_sql)
        out = out_dir / "payloads"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
    payloads = read_payloads_sql(out)
    uncarried = 0
    try:
        for part, select in enumerate(rendered.selects):
            target = out / f"part-{part:05d}.parquet" if rendered.partitions > 1 else out
            con.execute(f"COPY ({select}) TO {quote_literal(str(target))} (FORMAT parquet, ROW_GROUP_SIZE {ROW_GROUP_SIZE})")
        row = con.execute(f"SELECT count(*), count(reject_reason) FROM {payloads}").fetchone()
        (total,) = con.execute("SELECT count(*) FROM model_count").fetchone() if delivered else (None,)  # type: ignore[misc]
        if spec.source.cursor and cursor_carrier(describe(con, "model")) == "_key":
            # A fan-out without _source_key: its items' keys match no source row, so no cursor was carried.
            # One narrow pass first: usually no item lacks a cursor, and the key lookup is skipped.
            without = f"SELECT _key FROM {payloads} WHERE _cursor IS NULL AND _key IS NOT NULL"
            (some,) = con.execute(f"SELECT count(*) FROM ({without})").fetchone() or (0,)
            if some:
                (found,) = con.execute(
                    f"SELECT count(*) FROM ({without}) AS p ANTI JOIN source AS s ON p._key = s._key"
                ).fetchone() or (0,)
                uncarried = int(found)
    except duckdb.Error as exc:
        raise duckdb_failure(exc, str(spec.model_file), "(sql)", "rendering payloads failed") from None
    finally:
        rendered.selects.close()  # removes a partitioned render's materialized model rows
        con.close()
    assert row is not None
    rows = int(row[0])
    left_out = int(total) - rows if total is not None else 0
    return Rendered(out, rows, int(row[1]), left_out, rows + left_out, uncarried)
