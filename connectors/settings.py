"""Where syncline keeps its state, read from the environment once per call (never cached: tests change it).

The state folder (ledger, staging, limiter, sample warehouse) never depends on the current directory
alone: the same command run from another folder must find the same ledger, or it would send everything
again. It is, in order:
1. ``SYNCLINE_HOME``, when set (relative values are taken from the current directory once, and printed);
2. ``<folder of the first SYNCLINE_SYNCS_DIR>/.syncline``: the project that holds the sync files;
3. ``<project>/.syncline`` for the nearest folder at or above the current directory with a
   ``workspace.yaml`` (a Dagster project);
4. ``<checkout>/.syncline`` when syncline runs from a source checkout (its ``workspace.yaml``);
5. ``$XDG_DATA_HOME/syncline`` (default ``~/.local/share/syncline``) for an installed package.
"""

from __future__ import annotations

import os
from pathlib import Path

from connectors.errors import SynclineError

PACKAGE_SYNCS_DIR = Path(__file__).resolve().parent.parent / "pipelines" / "syncs"
CHECKOUT_ROOT = PACKAGE_SYNCS_DIR.parent.parent


def _project_home() -> tuple[Path, str]:
    explicit = os.environ.get("SYNCLINE_HOME")
    if explicit:
        return Path(explicit).expanduser().resolve(), "SYNCLINE_HOME"
    extra = [p for p in os.environ.get("SYNCLINE_SYNCS_DIR", "").split(os.pathsep) if p.strip()]
    if extra:
        return Path(extra[0]).expanduser().resolve() / ".syncline", "the folder of SYNCLINE_SYNCS_DIR"
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "workspace.yaml").is_file():
            return folder / ".syncline", f"the project at {folder} (workspace.yaml)"
    if (CHECKOUT_ROOT / "workspace.yaml").is_file():
        return CHECKOUT_ROOT / ".syncline", "the syncline checkout"
    data = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return data / "syncline", "the user data folder"


def home() -> Path:
    """The state folder: ledger, staging files, sample warehouse, limiter state (see the module doc)."""
    path, _ = _project_home()
    path.mkdir(parents=True, exist_ok=True)
    return path


def home_source() -> str:
    """Why :func:`home` is where it is, for the line every run prints."""
    return _project_home()[1]


def warehouse_path() -> Path:
    """``SYNCLINE_WAREHOUSE`` (default ``<home>/warehouse.duckdb``): the embedded DuckDB warehouse."""
    value = os.environ.get("SYNCLINE_WAREHOUSE")
    return Path(value).expanduser().resolve() if value else home() / "warehouse.duckdb"


def warehouse_url() -> str | None:
    """``SYNCLINE_WAREHOUSE_URL``: a ``postgresql://`` URL for syncs whose source says ``warehouse: postgres``."""
    return os.environ.get("SYNCLINE_WAREHOUSE_URL") or None


def ledger_url() -> str:
    """``SYNCLINE_LEDGER_URL``: ``postgresql://...`` or a SQLite file path (default ``<home>/ledger.sqlite``)."""
    value = os.environ.get("SYNCLINE_LEDGER_URL")
    if value and not value.startswith(("postgresql://", "postgres://")):
        return str(Path(value.removeprefix("sqlite:")).expanduser().resolve())
    return value or str(home() / "ledger.sqlite")


def duckdb_memory() -> str:
    """``SYNCLINE_DUCKDB_MEMORY``: DuckDB's memory limit per connection (it spills to disk past it)."""
    return os.environ.get("SYNCLINE_DUCKDB_MEMORY", DEFAULT_DUCKDB_MEMORY)


def duckdb_threads() -> int | None:
    value = os.environ.get("SYNCLINE_DUCKDB_THREADS")
    return int(value) if value else None


DEFAULT_DUCKDB_MEMORY = "256MB"


def render_partition_rows() -> int:
    """``SYNCLINE_RENDER_PARTITION_ROWS``: the most rows one pass of the payload render takes on. A larger
    render runs in key partitions of about this size (see :func:`connectors.stage.open_model`), so its
    joins stay in memory instead of spilling: at 10M rows the render alone took 45 s and 478 MB peak RSS in
    one pass, 36 s and 347 MB in partitions of 1M (``docs/performance.md``). At least 1."""
    value = os.environ.get("SYNCLINE_RENDER_PARTITION_ROWS", "").strip()
    if not value:
        return DEFAULT_RENDER_PARTITION_ROWS
    try:
        return max(1, int(value))
    except ValueError:
        raise SynclineError(f"SYNCLINE_RENDER_PARTITION_ROWS must be a whole number of rows, got {value!r}") from None


DEFAULT_RENDER_PARTITION_ROWS = 1_000_000


def syncs_dirs() -> list[Path]:
    """The packaged ``pipelines/syncs`` plus every folder in ``SYNCLINE_SYNCS_DIR`` (``os.pathsep``-separated)."""
    dirs = [PACKAGE_SYNCS_DIR]
    extra = os.environ.get("SYNCLINE_SYNCS_DIR", "")
    dirs += [Path(p).expanduser().resolve() for p in extra.split(os.pathsep) if p.strip()]
    return dirs


def staging_dir() -> Path:
    path = home() / "staging"
    path.mkdir(parents=True, exist_ok=True)
    return path
