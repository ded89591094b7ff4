"""Does a sync's model bind against its source? A check for ``syncline list``, without running anything.

:func:`check_model` binds the model SQL over a zero-row ``source`` of the right shape (DuckDB: the table,
query or Parquet files with ``LIMIT 0``; Postgres: the result schema of the query with ``LIMIT 0``), then
binds the payload SQL the engine would run (so a column that is not a field of the endpoint, or of the
wrong type, is found too). Nothing is rendered, nothing is staged, the ledger is not opened.
"""

from __future__ import annotations

import re

import duckdb

from connectors import settings
from connectors.engine.payload import describe, quote_ident
from connectors.errors import ConfigError, SynclineError
from connectors.spec import SyncSpec
from connectors.stage import (
    Window,
    _key_expr,
    _source_select,
    attaches_warehouse,
    builder_for,
    cursor_carrier,
    duckdb_cursor,
    model_connection,
)

_CARET = re.compile(r"^\s*\^+\s*$")


def one_line(message: str) -> str:
    """A DuckDB error on one line: its first line plus the binder's hints ("Candidate bindings: ...",
    "Did you mean ..."), without the echo of the SQL (``LINE 1: ...`` and the caret under it)."""
    kept = [
        line.strip() for line in message.splitlines()
        if line.strip() and not line.lstrip().startswith("LINE ") and not _CARET.match(line)
    ]
    return " ".join(kept)


def _source_view(con: duckdb.DuckDBPyConnection, spec: SyncSpec) -> None:
    if spec.source.warehouse == "postgres":
        con.register("_postgres_shape", _postgres_shape(spec))
        select = "SELECT * FROM _postgres_shape"
    else:
        select = _source_select(spec)
    found = duckdb_cursor(spec, con, select, Window())  # a number without cursor_unit on a daily sync: an error
    cursor = f"{found.time_sql()} AS _cursor" if found is not None else "NULL AS _cursor"
    con.execute(
        f"CREATE TEMP VIEW source AS SELECT *, {_key_expr(spec)} AS _key, {cursor} FROM ({select}) AS s LIMIT 0"
    )


def _postgres_shape(spec: SyncSpec) -> object:
    """An empty Arrow table with the columns the Postgres source has (a ``LIMIT 0`` query)."""
    import adbc_driver_postgresql.dbapi as adbc

    url = settings.warehouse_url()
    if not url:
        raise SynclineError(f"{spec.name} reads from Postgres: set SYNCLINE_WAREHOUSE_URL=postgresql://...")
    src = spec.source
    if src.table:
        base = "SELECT * FROM " + ".".join(quote_ident(part) for part in src.table.split("."))
    else:
        base = f"SELECT * FROM ({src.query}) AS q"
    try:
        with adbc.connect(url) as conn, conn.cursor() as cur:
            cur.execute(f"SELECT * FROM ({base}) AS s LIMIT 0")
            return cur.fetch_arrow_table()
    except adbc.Error as exc:
        raise SynclineError(f"reading the source from Postgres failed: {exc}") from None


def check_model(spec: SyncSpec) -> str | None:
    """None when the sync's model binds against its source and yields valid payload columns; otherwise a
    one-line error (DuckDB's, with its candidate columns when it gives them, or the engine's)."""
    if attaches_warehouse(spec) and not settings.warehouse_path().exists():
        return f"warehouse not found at {settings.warehouse_path()}"
    try:
        con = model_connection(spec, None)  # the warehouse the model may join (read-only), or its lookups
    except duckdb.Error as exc:
        return one_line(f"opening the warehouse failed: {exc}")
    except SynclineError as exc:
        return one_line(str(exc))
    try:
        try:
            _source_view(con, spec)
        except duckdb.Error as exc:
            return one_line(f"the source does not read: {exc}")
        except SynclineError as exc:
            return one_line(str(exc))
        try:
            con.execute(f"CREATE TEMP VIEW model AS SELECT * FROM (\n{spec.model_sql}\n) AS m LIMIT 0")
            columns = describe(con, "model")
        except duckdb.Error as exc:
            return one_line(str(exc))
        relation = "model"
        carrier = cursor_carrier(columns)  # _source_key (a fan-out) or _key
        if spec.source.cursor and carrier is not None:
            con.execute(
                "CREATE TEMP VIEW model_with_cursor AS SELECT m.*, c._cursor FROM model AS m LEFT JOIN "
                "(SELECT _key, max(_cursor) AS _cursor FROM source GROUP BY _key) AS c "
                f"ON CAST(m.{quote_ident(carrier)} AS VARCHAR) = c._key"
            )
            relation = "model_with_cursor"
            columns = describe(con, relation)
        try:
            payload_sql = builder_for(spec).sql(relation, columns)
        except ConfigError as exc:
            return one_line(f"{exc.field}: {exc.message}")
        try:
            con.sql(f"SELECT * FROM ({payload_sql}) AS p LIMIT 0").columns  # noqa: B018 - binds, runs nothing
        except duckdb.Error as exc:
            return one_line(f"the payload SQL does not bind: {exc}")
        return None
    finally:
        con.close()
