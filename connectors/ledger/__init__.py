"""The ledger: every item's fate per destination, every HTTP attempt, every run (see ``store.py``)."""

from __future__ import annotations

from pathlib import Path

from connectors.ledger.rows import ITEM_STATES, AttemptRow, ItemRow, RunRow
from connectors.ledger.store import Ledger, PostgresLedger, SqliteLedger
from connectors.ledger.writer import OutcomeWriter

__all__ = [
    "ITEM_STATES", "AttemptRow", "ItemRow", "Ledger", "OutcomeWriter", "PostgresLedger", "RunRow", "SqliteLedger",
    "open_ledger",
]


def open_ledger(url: str | None = None) -> Ledger:
    """The ledger at ``url`` (default ``SYNCLINE_LEDGER_URL`` or ``<home>/ledger.sqlite``)."""
    from connectors import settings

    target = url or settings.ledger_url()
    ledger: Ledger
    if target.startswith(("postgresql://", "postgres://")):
        ledger = PostgresLedger(target)
    else:
        ledger = SqliteLedger(Path(target.removeprefix("sqlite:")))
    ledger.fold()  # what a run journaled and did not fold (it crashed, or is still running) becomes visible
    return ledger
