"""Export a query over a SQLite ledger to a Parquet file, in its own process.

Why a process: the ADBC SQLite driver links its own copy of SQLite. Two SQLite libraries in one process
break each other's POSIX locks on the same file (closing one's descriptor drops the other's locks), which
corrupts a WAL database in use; measured here as "file is not a database". A child process has its own
locks. DuckDB then reads the file from disk, so the rows never become Python objects nor sit in memory.

    python -m connectors.ledger.export LEDGER.sqlite OUT.parquet "SELECT ..." PARAM...
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

BATCH_ROWS = 65_536


def main(argv: list[str]) -> int:
    import adbc_driver_sqlite.dbapi as adbc

    path, out, statement, *params = argv
    with adbc.connect(path) as conn, conn.cursor() as cur:
        # The driver's default is 1,024 rows a batch: 10M rows made 9,766 Parquet row groups and as many
        # rounds of Python here (measured: 5 s of a 15 s snapshot).
        cur.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": str(BATCH_ROWS)})
        if statement == "--parts":
            # One file from several statements: each part is {"sql", "params", "fill"}; ``fill`` gives
            # columns the part does not read, as a constant (or null) the child writes itself: a text
            # column costs ADBC about 2 s per 10M rows, a constant column costs nothing.
            columns, parts = json.loads(params[0])
            write_parquet(_parts(cur, columns, parts), out)
        else:
            cur.execute(statement, tuple(params))
            write_parquet(cur.fetch_record_batch(), out)
    return 0


# A delivered group's row holds 2,000 items: fewer rows a batch keep a batch's items near BATCH_ROWS.
GROUP_BATCH_ROWS = 32
UNNEST = {
    # ``keys``: a JSON array of idempotency keys; ``doc``: the claim record, [[idem_key, source_key, hash, cursor]].
    "keys": "SELECT unnest(from_json(keys, '[\"VARCHAR\"]')) AS idem_key FROM g",
    "doc": "SELECT e[1] AS idem_key, e[3] AS payload_hash FROM (SELECT unnest(from_json(doc, '[[\"VARCHAR\"]]')) AS e FROM g)",
}


def _parts(cur: Any, columns: list[str], parts: list[dict[str, Any]]) -> Iterator[Any]:
    import pyarrow as pa

    unnester = None
    for part in parts:
        unnest = part.get("unnest")
        rows = GROUP_BATCH_ROWS if unnest else BATCH_ROWS
        cur.adbc_statement.set_options(**{"adbc.sqlite.query.batch_rows": str(rows)})
        cur.execute(part["sql"], tuple(part["params"]))
        fill = part.get("fill", {})
        for batch in cur.fetch_record_batch():
            if unnest:
                if unnester is None:
                    import duckdb

                    unnester = duckdb.connect()
                    unnester.execute("SET memory_limit = '128MB'")
                    unnester.execute("SET threads = 1")
                unnester.register("g", pa.Table.from_batches([batch]))
                table: Any = unnester.execute(UNNEST[unnest]).to_arrow_table()
                unnester.unregister("g")
                read = {name: table.column(name).combine_chunks() for name in table.column_names}
                size = table.num_rows
            else:
                read = dict(zip(batch.schema.names, batch.columns, strict=True))
                size = batch.num_rows
            yield pa.record_batch([read[c] if c in read else _constant(fill[c], size) for c in columns],
                                  names=columns)


def _constant(value: str | None, rows: int) -> Any:
    """A text column of ``rows`` copies of ``value`` (nulls for None), built in Arrow, not per row."""
    import numpy as np
    import pyarrow as pa

    if value is None:
        return pa.nulls(rows, pa.string())
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, np.int32)), pa.array([value])).cast(pa.string())


def write_parquet(reader: object, out: str) -> int:
    """Stream Arrow batches to Parquet with every column as text (SQLite's ADBC types an empty result
    as int64). Returns the row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = 0
    writer: pq.ParquetWriter | None = None
    schema: pa.Schema | None = None
    try:
        for batch in reader:  # type: ignore[attr-defined]
            if schema is None:
                schema = pa.schema([(f.name, pa.string()) for f in batch.schema])
                writer = pq.ParquetWriter(out, schema, compression="none")
            assert writer is not None
            writer.write_batch(pa.record_batch([c.cast(pa.string()) for c in batch.columns], schema=schema))
            rows += batch.num_rows
    finally:
        if writer is not None:
            writer.close()
    return rows


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
