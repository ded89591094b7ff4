"""Where syncline keeps its state, read from the environment once per call (never cached: tests change it)."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_SYNCS_DIR = Path(__file__).resolve().parent.parent / "pipelines" / "syncs"


def home() -> Path:
    """``SYNCLINE_HOME`` (default ``./.syncline``): ledger, staging files, sample warehouse, limiter state."""
    path = Path(os.environ.get("SYNCLINE_HOME", ".syncline")).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def warehouse_path() -> Path:
    """``SYNCLINE_WAREHOUSE`` (default ``$SYNCLINE_HOME/warehouse.duckdb``): the embedded DuckDB warehouse."""
    value = os.environ.get("SYNCLINE_WAREHOUSE")
    return Path(value).expanduser().resolve() if value else home() / "warehouse.duckdb"


def warehouse_url() -> str | None:
    """``SYNCLINE_WAREHOUSE_URL``: a ``postgresql://`` URL for syncs whose source says ``warehouse: postgres``."""
    return os.environ.get("SYNCLINE_WAREHOUSE_URL") or None


def ledger_url() -> str:
    """``SYNCLINE_LEDGER_URL``: ``postgresql://...`` or a SQLite file path (default ``$SYNCLINE_HOME/ledger.sqlite``)."""
    return os.environ.get("SYNCLINE_LEDGER_URL") or str(home() / "ledger.sqlite")


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
