"""Extract a sync's window from PostgreSQL as Arrow batches (ADBC) straight into the extract Parquet file.

The ADBC PostgreSQL driver streams the result in Arrow record batches (COPY protocol under the hood), so
memory stays bounded by one batch whatever the table size. The same DuckDB model then runs on the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

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


def extract_postgres(spec: SyncSpec, window: Window, out: Path) -> tuple[Path, int | None]:
    """Stage the window's rows as Parquet; returns the path and, on a windowed run, the rows whose cursor
    is NULL (included in the window under ``null_cursor: include``, else left out and counted)."""
    import adbc_driver_postgresql.dbapi as adbc

    url = settings.warehouse_url()
    if not url:
        raise SynclineError(f"{spec.name} reads from Postgres: set SYNCLINE_WAREHOUSE_URL=postgresql://...")
    src = spec.source
    base = f"SELECT * FROM {_table_ref(src.table)}" if src.table else f"SELECT * FROM ({src.query}) AS q"
    if len(src.key) == 1:
        keys = f"CAST({_ident(src.key[0])} AS TEXT)"
    else:  # the same JSON-array form as DuckDB sources (compact separators), NULL if any part is NULL
        parts = ", ".join(f"CAST({_ident(k)} AS TEXT)" for k in src.key)
        nulls = " OR ".join(f"{_ident(k)} IS NULL" for k in src.key)
        keys = f"(CASE WHEN {nulls} THEN NULL ELSE replace(CAST(json_build_array({parts}) AS TEXT), '\", \"', '\",\"') END)"
    cursor_col = f"{_ident(src.cursor)} AS _cursor" if src.cursor else "NULL AS _cursor"
    clauses, params = [], []
    if src.cursor and window.start is not None:
        clauses.append(f"{_ident(src.cursor)} >= $1")
        params.append(window.start)
    if src.cursor and window.end is not None:
        clauses.append(f"{_ident(src.cursor)} < ${len(params) + 1}")
        params.append(window.end)
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    if clauses and src.cursor and getattr(src, "null_cursor", "exclude") == "include":
        where = f" WHERE ({' AND '.join(clauses)}) OR {_ident(src.cursor)} IS NULL"
    sql = f"SELECT s.*, {keys} AS _key, {cursor_col} FROM ({base}) AS s{where}"
    null_rows: int | None = None
    try:
        with adbc.connect(url) as conn, conn.cursor() as cur:
            cur.execute(sql, params or None)
            reader: pa.RecordBatchReader = cur.fetch_record_batch()
            with pq.ParquetWriter(out, reader.schema) as writer:
                for batch in reader:
                    writer.write_batch(batch)
            if clauses and src.cursor:
                cur.execute(f"SELECT count(*) FROM ({base}) AS s WHERE {_ident(src.cursor)} IS NULL")
                row = cur.fetchone()
                null_rows = int(row[0]) if row else 0
    except adbc.Error as exc:
        raise ConfigError(str(spec.file), "source", f"reading from Postgres failed: {exc}") from None
    return out, null_rows
