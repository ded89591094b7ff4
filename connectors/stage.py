"""Extract and transform: warehouse window -> extract Parquet -> payload Parquet.

Both steps are DuckDB (or ADBC for Postgres) streaming into Parquet files under
``$SYNCLINE_HOME/staging/<sync>/<window>/``. Files, not a shared DuckDB database, sit between the steps, so
parallel Dagster steps in separate processes never contend for a DuckDB write lock; the warehouse itself
is only ever opened read-only.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from connectors import settings
from connectors.engine.payload import PayloadBuilder, describe, quote_ident, quote_literal
from connectors.errors import ConfigError, ResourceError, SynclineError
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


def staging_path(spec: SyncSpec, window: Window, run_id: str) -> Path:
    safe = re.sub(r"[^0-9A-Za-z_.-]", "_", f"{window.label}-{run_id}")
    path = settings.staging_dir() / spec.name / safe
    path.mkdir(parents=True, exist_ok=True)
    return path


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


def _window_filter(spec: SyncSpec, window: Window, placeholder: str = "?") -> tuple[str, list[object]]:
    """The WHERE clause selecting ``window`` by the sync's cursor (rows with a NULL cursor too, when the
    sync says ``null_cursor: include``)."""
    if spec.source.cursor is None or not window.bounded:
        return "", []
    cursor = quote_ident(spec.source.cursor)
    clauses: list[str] = []
    params: list[object] = []
    if window.start is not None:
        clauses.append(f"{cursor} >= {placeholder}")
        params.append(window.start)
    if window.end is not None:
        clauses.append(f"{cursor} < {placeholder}")
        params.append(window.end)
    condition = " AND ".join(clauses)
    if spec.source.null_cursor == "include":
        condition = f"({condition}) OR {cursor} IS NULL"
    return " WHERE " + condition, params


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
    where, params = _window_filter(spec, window)
    cursor = f"{quote_ident(spec.source.cursor)} AS _cursor" if spec.source.cursor else "NULL AS _cursor"
    source = _source_select(spec, files)
    query = f"SELECT *, {_key_expr(spec)} AS _key, {cursor} FROM ({source}) AS s{where}"
    nulls: int | None = None
    try:
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
            assert spec.source.cursor is not None
            row = con.execute(
                f"SELECT count(*) FROM ({source}) AS s WHERE {quote_ident(spec.source.cursor)} IS NULL"
            ).fetchone()
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


def open_model(
    spec: SyncSpec, extract_path: Path, delivered: Path | None = None
) -> tuple[duckdb.DuckDBPyConnection, str]:
    """A DuckDB connection with ``source`` (the extract) and ``model`` views, and the payload SELECT.

    ``delivered`` (the ledger's view of this destination, append mode) drops the model rows whose key
    the destination already has before any payload is rendered: the filter is on ``_key``, so DuckDB
    pushes it below the model's expressions, and a rerun of a delivered sync renders almost nothing.
    The view ``model_all`` keeps every row, for counting."""
    con = _connect()
    con.execute(f"CREATE VIEW source AS SELECT * FROM read_parquet({quote_literal(str(extract_path))})")
    try:
        con.execute(f"CREATE VIEW model AS {spec.model_sql}")
        columns = describe(con, "model")
        relation = "model"
        if spec.source.cursor and "_cursor" not in columns and "_key" in columns:
            _carry_cursor(con, spec)
            relation = "model_with_cursor"
            columns = describe(con, relation)
        con.execute(f"CREATE VIEW model_all AS SELECT * FROM {relation}")
        if delivered is not None and "_key" in columns:
            key = builder_for(spec).key_hash("CAST(m._key AS VARCHAR)")
            con.execute(
                f"CREATE VIEW model_pending AS SELECT m.* FROM {relation} AS m ANTI JOIN "
                f"(SELECT idem_key FROM read_parquet({quote_literal(str(delivered))}) WHERE state = 'delivered') AS d "
                f"ON {key} = d.idem_key"
            )
            relation = "model_pending"
    except duckdb.Error as exc:
        con.close()
        raise duckdb_failure(exc, str(spec.model_file), "(sql)", "the model does not run") from None
    return con, builder_for(spec).sql(relation, columns)


def _over(model_sql: str, rows: str) -> str:
    """The model's SELECT with ``source`` meaning only ``rows`` (a CTE named source shadows the view)."""
    return f"WITH source AS (SELECT * FROM {rows}) SELECT * FROM (\n{model_sql}\n) AS m"


def _carry_cursor(con: duckdb.DuckDBPyConnection, spec: SyncSpec) -> None:
    """``model_with_cursor``: the model's rows with the source cursor of the row each came from, for a
    model that does not select ``_cursor``. The ledger keeps it (reconciliation, "what was delivered for
    this window"), and the payload's duplicate check orders a repeated key's rows by it, so the newest
    row wins whatever the model selects.

    A key's rows are told apart only by what the model keeps, and it keeps ``_key``, not the row: so when
    some key repeats with different cursors, the model runs twice, once over each key's newest rows and
    once over the older ones, and each pass takes its key's newest cursor within the pass. The older
    rows are then rejected as duplicates with their own cursor (with three or more rows of one key, the
    older ones share the newest older cursor). Without such keys (the usual case) it is one pass and a
    join on the key."""
    newest = "(SELECT _key, max(_cursor) AS _cursor FROM {rows} WHERE _key IS NOT NULL GROUP BY _key)"
    row = con.execute(
        "SELECT count(*) FROM (SELECT _key FROM source WHERE _key IS NOT NULL GROUP BY _key "
        "HAVING count(DISTINCT _cursor) > 1 OR (count(_cursor) > 0 AND count(_cursor) < count(*)))"
    ).fetchone()
    if not row or not row[0]:
        con.execute(
            "CREATE VIEW model_with_cursor AS SELECT m.*, c._cursor FROM model AS m LEFT JOIN "
            f"{newest.format(rows='source')} AS c ON CAST(m._key AS VARCHAR) = c._key"
        )
        return
    # The rows of each repeated key that are not its newest (NULL cursors lose to any cursor).
    con.execute(
        "CREATE VIEW _source_newest_cursor AS SELECT _key, max(_cursor) AS _newest FROM source "
        "WHERE _key IS NOT NULL GROUP BY _key HAVING count(*) > 1"
    )
    older = "s._cursor IS DISTINCT FROM n._newest AND n._newest IS NOT NULL"
    con.execute(
        "CREATE VIEW _source_newest AS SELECT s.* FROM source AS s LEFT JOIN _source_newest_cursor AS n "
        f"ON s._key = n._key WHERE n._key IS NULL OR NOT ({older})"
    )
    con.execute(
        "CREATE VIEW _source_older AS SELECT s.* FROM source AS s JOIN _source_newest_cursor AS n "
        f"ON s._key = n._key WHERE {older}"
    )
    passes = [
        f"SELECT m.*, c._cursor FROM ({_over(spec.model_sql, part)}) AS m LEFT JOIN "
        f"{newest.format(rows=part)} AS c ON CAST(m._key AS VARCHAR) = c._key"
        for part in ("_source_newest", "_source_older")
    ]
    con.execute(f"CREATE VIEW model_with_cursor AS {passes[0]} UNION ALL BY NAME {passes[1]}")


def transform(spec: SyncSpec, extract_path: Path, out_dir: Path) -> tuple[Path, int, int]:
    """Render payloads to ``payloads.parquet``; returns (path, rows, rows with a reject reason)."""
    out, rows, rejected, _ = transform_pending(spec, extract_path, out_dir)
    return out, rows, rejected


def transform_pending(
    spec: SyncSpec, extract_path: Path, out_dir: Path, delivered: Path | None = None
) -> tuple[Path, int, int, int]:
    """Render the payloads a destination does not have yet (all, without ``delivered``); returns
    (path, rows rendered, rows with a reject reason, rows left out as already delivered)."""
    out = out_dir / "payloads.parquet"
    con, select = open_model(spec, extract_path, delivered)
    try:
        con.execute(f"COPY ({select}) TO {quote_literal(str(out))} (FORMAT parquet, ROW_GROUP_SIZE {ROW_GROUP_SIZE})")
        row = con.execute(
            f"SELECT count(*), count(reject_reason) FROM read_parquet({quote_literal(str(out))})"
        ).fetchone()
        (total,) = con.execute("SELECT count(*) FROM model_all").fetchone() if delivered else (None,)  # type: ignore[misc]
    except duckdb.Error as exc:
        raise duckdb_failure(exc, str(spec.model_file), "(sql)", "rendering payloads failed") from None
    finally:
        con.close()
    assert row is not None
    skipped = int(total) - int(row[0]) if total is not None else 0
    return out, int(row[0]), int(row[1]), skipped
