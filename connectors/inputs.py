"""What :func:`connectors.api.deliver` accepts, turned into Parquet the one pipeline path can read.

A sync file's source is a warehouse table, a query or a Parquet glob; a caller of the Python API holds a
pandas DataFrame, an Arrow table or stream, a DuckDB relation, or Parquet files. Everything in memory is
written once to ``<staging>/input/data.parquet`` (inside the run's staging folder, so it is removed with
the run's other staging files, and by the next run if this process dies); Parquet files are read where
they are. Then the run is an ordinary Parquet-sourced sync: extract, model, plan, send, ledger.

Data stays columnar throughout: a DataFrame becomes Arrow with ``pa.Table.from_pandas`` (pandas' missing
values ``None``/``NaN``/``NaT`` become NULLs, as pandas means them), streams are written batch by batch,
and nothing here loops over rows.

A choice: a NaN *inside* a dict or list of an object column (``{"amount": nan}``) is read as pandas reads
NaN, a missing value, so it becomes a NULL member (omitted from the payload unless ``keep_nulls``), where a
real NaN in Arrow, DuckDB or Parquet data is rejected with a reason. Being silent about it is not: such
values are counted (:func:`nested_nan_counts`, Arrow compute over the columns, no Python per row; it costs
nothing unless a nested float member is NULL) and the run says how many were read as missing.
"""

from __future__ import annotations

import glob as globbing
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from connectors.errors import SynclineError
from connectors.stage import ROW_GROUP_SIZE

if TYPE_CHECKING:
    import pandas as pd

# What deliver() takes: a DataFrame, an Arrow table / batch / stream, a DuckDB relation, a Parquet path or
# glob (a folder means every ``*.parquet`` below it), or a list of Parquet files.
DeliverInput = Union[
    "pd.DataFrame", pa.Table, pa.RecordBatch, pa.RecordBatchReader, duckdb.DuckDBPyRelation,
    str, os.PathLike[str], Sequence[str | os.PathLike[str]],
]
RESERVED_COLUMNS = ("_key", "_cursor")  # the extract adds these; an input carrying them would clash
STREAM_BATCH_ROWS = 65_536


@dataclass(frozen=True)
class StagedInput:
    """Where the run reads its rows: a Parquet glob (``parquet``), or exactly these files (``files``)."""

    kind: str  # "pandas", "arrow", "arrow stream", "duckdb relation", "parquet"
    parquet: str  # an absolute path or glob (for ``files`` too: the spec needs one; ``files`` wins)
    files: list[str] | None
    staged: bool  # True: written by us into the run's staging folder
    nested_nan: tuple[tuple[str, int], ...] = ()  # (column, NaN members read as missing), DataFrames only

    def nested_nan_note(self) -> str | None:
        """The run note for :attr:`nested_nan`: how many NaN inside objects or lists became missing."""
        total = sum(n for _, n in self.nested_nan)
        if not total:
            return None
        where = ", ".join(f"{column}: {n}" for column, n in self.nested_nan)
        return (f"{total} NaN value(s) inside objects or lists of the DataFrame ({where}) were read as missing, "
                "as pandas means NaN, and left out (sent as null with keep_nulls)")

    def relation_sql(self) -> str:
        """``read_parquet(...)`` over the input, for DuckDB."""
        from connectors.engine.payload import quote_literal

        if self.files is not None:
            return f"read_parquet([{', '.join(quote_literal(f) for f in self.files)}], union_by_name = true)"
        return f"read_parquet({quote_literal(self.parquet)}, union_by_name = true)"


def _is_pandas(data: object) -> bool:
    return type(data).__module__.split(".")[0] == "pandas" and hasattr(data, "to_numpy")


def _is_path(data: object) -> bool:
    return isinstance(data, str | os.PathLike)


def _absolute(path: str | os.PathLike[str]) -> str:
    """Relative paths are the caller's (the current directory), as every Python file API takes them."""
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


def stage_input(data: object, folder: Path) -> StagedInput:
    """Write ``data`` under ``folder/input`` (in-memory kinds) or point at it (Parquet); see the module doc."""
    if _is_path(data):
        return _parquet_input(_absolute(data))  # type: ignore[arg-type]
    if isinstance(data, list | tuple) and data and all(_is_path(p) for p in data):
        files = [_absolute(p) for p in data]
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise SynclineError(f"Parquet file not found: {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        return StagedInput("parquet", files[0], files, staged=False)
    out = folder / "input" / "data.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    if _is_pandas(data):
        table = _from_pandas(data)
        _write_table(table, out)
        return StagedInput("pandas", str(out), None, staged=True, nested_nan=nested_nan_counts(data, table))
    elif isinstance(data, pa.Table | pa.RecordBatch):
        kind = "arrow"
        _write_table(data if isinstance(data, pa.Table) else pa.Table.from_batches([data]), out)
    elif isinstance(data, pa.RecordBatchReader):
        kind = "arrow stream"
        _write_stream(data.schema, data, out)
    elif isinstance(data, duckdb.DuckDBPyRelation):
        kind = "duckdb relation"
        reader = data.to_arrow_reader(STREAM_BATCH_ROWS)  # streamed: the relation is never materialized
        _write_stream(reader.schema, reader, out)
    elif hasattr(data, "__arrow_c_stream__"):  # polars, another Arrow producer (PyCapsule interface)
        kind = "arrow stream"
        reader = pa.RecordBatchReader.from_stream(data)
        _write_stream(reader.schema, reader, out)
    else:
        raise SynclineError(
            f"cannot deliver a {type(data).__name__}: give a pandas DataFrame, a pyarrow Table or "
            "RecordBatchReader, a DuckDB relation, or a Parquet path or glob"
        )
    return StagedInput(kind, str(out), None, staged=True)


def _from_pandas(df: Any) -> pa.Table:
    """DataFrame -> Arrow, columnar. A column Arrow cannot type (mixed objects) is named in the error."""
    try:
        return pa.Table.from_pandas(df, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise SynclineError(f"the DataFrame cannot become an Arrow table: {exc}") from None


def nested_nan_counts(df: Any, table: pa.Table) -> tuple[tuple[str, int], ...]:
    """(column, how many NaN members) of ``df``'s object columns whose NaN inside dicts or lists
    ``from_pandas`` turned into NULLs. Vectorized: a column is looked at only when its Arrow type nests a
    float and a nested float is NULL (a NaN or a ``None``); only then is it converted once more, NaN kept
    (``from_pandas=False``, the top-level missing values masked), and its NaN counted by Arrow compute."""
    found = []
    for index, name in enumerate(table.schema.names):  # preserve_index=False: the DataFrame's column order
        column = table.column(index)
        if not _nests_float(column.type) or not any(_float_leaves(chunk, _null_count) for chunk in column.chunks):
            continue
        series = df.iloc[:, index]
        try:
            raw = pa.array(series, type=column.type, from_pandas=False, mask=series.isna().to_numpy(dtype=bool))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            continue  # not re-readable without pandas' reading: nothing to count that we can be sure of
        nans = _float_leaves(raw, _nan_count)
        if nans:
            found.append((name, nans))
    return tuple(found)


def _nests_float(kind: pa.DataType, nested: bool = False) -> bool:
    if pa.types.is_floating(kind):
        return nested
    if pa.types.is_struct(kind):
        return any(_nests_float(kind.field(i).type, True) for i in range(kind.num_fields))
    if pa.types.is_map(kind):
        return _nests_float(kind.key_type, True) or _nests_float(kind.item_type, True)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return _nests_float(kind.value_type, True)
    return False


def _null_count(values: pa.Array) -> int:
    return int(values.null_count)


def _nan_count(values: pa.Array) -> int:
    return int(pc.sum(pc.is_nan(values)).as_py() or 0)


def _float_leaves(values: pa.Array, count: Callable[[pa.Array], int], nested: bool = False) -> int:
    """``count`` summed over the float arrays nested in ``values`` (a parent's NULL hides its children)."""
    kind = values.type
    if pa.types.is_floating(kind):
        return int(count(values)) if nested else 0
    if pa.types.is_struct(kind):
        return sum(_float_leaves(child, count, True) for child in values.flatten())
    if pa.types.is_map(kind):  # the entries of NULL maps are empty: keys and items are the maps' own
        return _float_leaves(values.keys, count, True) + _float_leaves(values.items, count, True)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return _float_leaves(values.flatten(), count, True)
    return 0


def _write_table(table: pa.Table, out: Path) -> None:
    _check_columns(table.schema.names)
    # Nanosecond timestamps (pandas' only kind) are written as microseconds: what DuckDB and JSON carry.
    pq.write_table(table, out, row_group_size=ROW_GROUP_SIZE, coerce_timestamps="us",
                   allow_truncated_timestamps=True)


def _write_stream(schema: pa.Schema, batches: Iterable[pa.RecordBatch], out: Path) -> None:
    _check_columns(schema.names)
    with pq.ParquetWriter(out, schema, coerce_timestamps="us", allow_truncated_timestamps=True) as writer:
        for batch in batches:  # one call per batch, not per row
            if batch.num_rows:
                writer.write_batch(batch, row_group_size=ROW_GROUP_SIZE)


def _check_columns(names: Sequence[str]) -> None:
    taken = [n for n in names if n in RESERVED_COLUMNS]
    if taken:
        raise SynclineError(
            f"the input has a column named {taken[0]}: syncline adds _key (from key=) and _cursor (from "
            "cursor=) itself; rename it"
        )
    dupes = sorted({n for n in names if list(names).count(n) > 1})
    if dupes:
        raise SynclineError(f"the input has two columns named {dupes[0]}")


def _parquet_input(path: str) -> StagedInput:
    pattern = os.path.join(path, "**", "*.parquet") if os.path.isdir(path) else path
    if not globbing.glob(pattern, recursive=True):
        raise SynclineError(f"no Parquet file matches {pattern}")
    return StagedInput("parquet", pattern, None, staged=False)


def input_columns(con: duckdb.DuckDBPyConnection, staged: StagedInput) -> list[tuple[str, str]]:
    """(name, DuckDB type) of each input column, from the Parquet footers (no row is read)."""
    rows = con.execute(f"DESCRIBE SELECT * FROM {staged.relation_sql()}").fetchall()
    return [(str(r[0]), str(r[1])) for r in rows]


def input_rows(con: duckdb.DuckDBPyConnection, staged: StagedInput) -> int:
    """Rows of the input (Parquet footers: metadata only)."""
    row = con.execute(f"SELECT count(*) FROM {staged.relation_sql()}").fetchone()
    return int(row[0]) if row else 0
