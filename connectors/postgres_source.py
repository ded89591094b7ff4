"""Extract a sync's window from PostgreSQL as Arrow batches (ADBC) straight into the extract Parquet file.

The ADBC PostgreSQL driver streams the result in Arrow record batches (COPY protocol under the hood), so
memory stays bounded by one batch whatever the table size. The same DuckDB model then runs on the file,
with the tables the sync declares in ``source.lookups`` staged beside it (DuckDB cannot reach Postgres:
its postgres extension is not bundled, and a run must not download one).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from connectors import settings
from connectors.errors import ConfigError, SynclineError

if TYPE_CHECKING:
    from connectors.spec import SyncSpec
    from connectors.stage import Window


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _table_ref(table: str) -> str:
    return ".".join(_ident(part) for part in table.split("."))


# Postgres types (``POSTGRESQL:type`` in ADBC's Arrow field metadata) as the DuckDB type ids the cursor
# rules of :func:`connectors.stage.cursor_of` take.
_PG_TYPES = {
    "timestamptz": "timestamp with time zone", "timestamp": "timestamp", "date": "date",
    "int2": "smallint", "int4": "integer", "int8": "bigint", "float4": "float", "float8": "double",
    "numeric": "decimal",
}


def lookup_path(out_dir: Path, index: int) -> Path:
    """Where the run stages ``source.lookups[index]`` (one Parquet file per lookup, beside the extract)."""
    return out_dir / f"lookup-{index}.parquet"


def _connect(spec: SyncSpec) -> Any:
    import adbc_driver_postgresql.dbapi as adbc

    url = settings.warehouse_url()
    if not url:
        raise SynclineError(f"{spec.name} reads from Postgres: set SYNCLINE_WAREHOUSE_URL=postgresql://...")
    return adbc.connect(url)


def _begin(cur: Any) -> None:
    """One snapshot for the window, its NULL-cursor count and the lookups; naive timestamps are UTC."""
    cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    cur.execute("SET TIME ZONE 'UTC'")


def _base(spec: SyncSpec) -> str:
    src = spec.source
    return f"SELECT * FROM {_table_ref(src.table)}" if src.table else f"SELECT * FROM ({src.query}) AS q"


def _cursor(spec: SyncSpec, cur: Any, base: str, window: Window) -> Any:
    """The sync's :class:`~connectors.stage.Cursor`, from the column's Postgres type (a ``LIMIT 0`` query)."""
    from connectors.stage import cursor_of, require_unit

    assert spec.source.cursor is not None
    cur.execute(f"SELECT {_ident(spec.source.cursor)} FROM ({base}) AS s LIMIT 0")
    field = cur.fetch_arrow_table().schema.field(0)
    pg_type = (field.metadata or {}).get(b"POSTGRESQL:type", b"").decode() or str(field.type)
    cursor = cursor_of(spec, _PG_TYPES.get(pg_type, pg_type), pg_type)
    require_unit(spec, cursor, window)
    return cursor


def _copy(cur: Any, sql: str, params: list[object] | None, out: Path) -> None:
    cur.execute(sql, params or None)
    reader: pa.RecordBatchReader = cur.fetch_record_batch()
    with pq.ParquetWriter(out, reader.schema) as writer:
        for batch in reader:
            writer.write_batch(batch)


def extract_postgres(spec: SyncSpec, window: Window, out: Path) -> tuple[Path, int | None]:
    """Stage the window's rows as Parquet; returns the path and, on a windowed run, the rows whose cursor
    is NULL (included in the window under ``null_cursor: include``, else left out and counted).

    The sync's ``source.lookups`` are staged beside it (:func:`lookup_path`), read in the same
    REPEATABLE READ transaction, so the model joins the tables as they were when the window was read."""
    import adbc_driver_postgresql.dbapi as adbc

    src = spec.source
    base = _base(spec)
    if len(src.key) == 1:
        keys = f"CAST({_ident(src.key[0])} AS TEXT)"
    else:  # the same JSON-array form as DuckDB sources (compact separators), NULL if any part is NULL
        parts = ", ".join(f"CAST({_ident(k)} AS TEXT)" for k in src.key)
        nulls = " OR ".join(f"{_ident(k)} IS NULL" for k in src.key)
        keys = f"(CASE WHEN {nulls} THEN NULL ELSE replace(CAST(json_build_array({parts}) AS TEXT), '\", \"', '\",\"') END)"
    null_rows: int | None = None
    try:
        with _connect(spec) as conn, conn.cursor() as cur:
            _begin(cur)
            cursor = _cursor(spec, cur, base, window) if src.cursor else None
            where, params = cursor.window_filter(spec, window, "$") if cursor is not None else ("", [])
            cursor_col = f"{cursor.time_sql('postgres')} AS _cursor" if cursor is not None else "NULL AS _cursor"
            _copy(cur, f"SELECT s.*, {keys} AS _key, {cursor_col} FROM ({base}) AS s{where}", params, out)
            if where and cursor is not None:
                cur.execute(f"SELECT count(*) FROM ({base}) AS s WHERE {cursor.missing()}")
                row = cur.fetchone()
                null_rows = int(row[0]) if row else 0
            for index, name in enumerate(src.lookups):
                _copy(cur, f"SELECT * FROM {_table_ref(name)}", None, lookup_path(out.parent, index))
    except adbc.Error as exc:
        raise ConfigError(str(spec.file), "source", f"reading from Postgres failed: {exc}") from None
    return out, null_rows


def lookup_shapes(spec: SyncSpec) -> list[pa.Table]:
    """Zero-row tables shaped like each of ``source.lookups`` (for binding a model without running it)."""
    import adbc_driver_postgresql.dbapi as adbc

    shapes = []
    try:
        with _connect(spec) as conn, conn.cursor() as cur:
            for name in spec.source.lookups:
                cur.execute(f"SELECT * FROM {_table_ref(name)} LIMIT 0")
                shapes.append(cur.fetch_arrow_table())
    except adbc.Error as exc:
        raise ConfigError(str(spec.file), "source.lookups", f"reading from Postgres failed: {exc}") from None
    return shapes
