"""Export a query over a SQLite ledger to a Parquet file, in its own process.

Why a process: the ADBC SQLite driver links its own copy of SQLite. Two SQLite libraries in one process
break each other's POSIX locks on the same file (closing one's descriptor drops the other's locks), which
corrupts a WAL database in use; measured here as "file is not a database". A child process has its own
locks. DuckDB then reads the file from disk, so the rows never become Python objects nor sit in memory.

    python -m connectors.ledger.export LEDGER.sqlite OUT.parquet "SELECT ..." PARAM...
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    import adbc_driver_sqlite.dbapi as adbc

    path, out, statement, *params = argv
    with adbc.connect(path) as conn, conn.cursor() as cur:
        cur.execute(statement, tuple(params))
        write_parquet(cur.fetch_record_batch(), out)
    return 0


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
