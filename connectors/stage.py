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


@dataclass(frozen=True)
class Window:
    """A half-open cursor window [start, end) in UTC; ``None`` on both ends means the whole source."""

    start: dt.datetime | None = None
    end: dt.datetime | None = None

    @classmethod
    def days(cls, first: dt.date, last: dt.date) -> Window:
        """Daily partitions ``first``..``last`` inclusive."""
        start = dt.datetime.combine(first, dt.time(), tzinfo=dt.UTC)
        end = dt.datetime.combine(last + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
        return cls(start, end)

    def day_labels(self) -> list[str] | None:
        """The UTC days the window covers (None: the whole source, no bounds)."""
        if self.start is None or self.end is None:
            return None
        first, last = self.start.date(), (self.end - dt.timedelta(microseconds=1)).date()
        return [(first + dt.timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]

    @property
    def label(self) -> str:
        if self.start is None and self.end is None:
            return "all"
        first = self.start.date().isoformat() if self.start else "start"
        last = (self.end - dt.timedelta(days=1)).date().isoformat() if self.end else "end"
        return first if first == last else f"{first}..{last}"


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
    return expand_path(spec.source.parquet, settings.home())


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
    if spec.source.cursor is None or (window.start is None and window.end is None):
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
    return " WHERE " + " AND ".join(clauses), params


def extract(spec: SyncSpec, window: Window, out_dir: Path, files: list[str] | None = None) -> tuple[Path, int]:
    """Copy the source rows of ``window`` to ``extract.parquet``, adding ``_key`` and ``_cursor``.

    ``files`` limits a Parquet source to those files (the sensor's new file set)."""
    out = out_dir / "extract.parquet"
    if spec.source.warehouse == "postgres":
        from connectors.postgres_source import extract_postgres

        return extract_postgres(spec, window, out), pq.ParquetFile(out).metadata.num_rows
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
    query = f"SELECT *, {_key_expr(spec)} AS _key, {cursor} FROM ({_source_select(spec, files)}) AS s{where}"
    try:
        con.execute(
            f"COPY ({query}) TO {quote_literal(str(out))} (FORMAT parquet, ROW_GROUP_SIZE {ROW_GROUP_SIZE})",
            params,
        )
    except duckdb.Error as exc:
        raise duckdb_failure(exc, str(spec.file), "source", "reading the source failed") from None
    finally:
        con.close()
    return out, pq.ParquetFile(out).metadata.num_rows


def builder_for(spec: SyncSpec) -> PayloadBuilder:
    return PayloadBuilder(
        spec.endpoint,
        sync_name=spec.name,
        model_file=str(spec.model_file),
        keep_nulls=spec.keep_nulls,
        max_body_bytes=spec.delivery.max_body_bytes,
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
            # Carry the source cursor to each item by key, so the ledger can answer "what was delivered
            # for this window" (reconciliation) without every model having to select _cursor.
            con.execute(
                "CREATE VIEW model_with_cursor AS SELECT m.*, c._cursor FROM model AS m LEFT JOIN "
                "(SELECT _key, max(_cursor) AS _cursor FROM source WHERE _key IS NOT NULL GROUP BY _key) AS c "
                "ON CAST(m._key AS VARCHAR) = c._key"
            )
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
