"""The deterministic sample warehouse used by ``syncline demo`` (and as realistic test data).

Each vendor's tables come from one module here defining ``build(con, home)``; the builder runs them all
into a fresh DuckDB file (written beside, then renamed into place, so readers never see half a build).
All data falls in the week ``SAMPLE_START`` .. ``SAMPLE_START + 6 days`` and includes a few bad rows of
each kind, so the demo shows its rejection paths.
"""

from __future__ import annotations

import datetime as dt
import importlib
import os
import pkgutil
from pathlib import Path

import duckdb

SAMPLE_START = dt.date(2026, 6, 1)
SAMPLE_DAYS = 7


def builders() -> list[tuple[str, object]]:
    found = []
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "build"):
            found.append((info.name, module.build))
    return sorted(found, key=lambda pair: pair[0])


def build_warehouse(path: Path, home: Path) -> dict[str, int]:
    """Build the sample warehouse at ``path`` (Parquet files under ``home/parquet``); returns table row counts."""
    tmp = path.with_suffix(".building.duckdb")
    for stale in (tmp, Path(str(tmp) + ".wal")):
        stale.unlink(missing_ok=True)
    con = duckdb.connect(str(tmp))
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute("CREATE SCHEMA IF NOT EXISTS analytics")
        for _name, build in builders():
            build(con, home)  # type: ignore[operator]
        tables = con.execute(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables ORDER BY 1"
        ).fetchall()
        counts = {t: int(con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for (t,) in tables}  # type: ignore[index]
        con.execute("CHECKPOINT")
    finally:
        con.close()
    os.replace(tmp, path)
    return counts


def day(offset: int) -> str:
    """SQL literal of the sample week's day ``offset`` at midnight UTC."""
    return f"TIMESTAMPTZ '{(SAMPLE_START + dt.timedelta(days=offset)).isoformat()} 00:00:00+00'"
