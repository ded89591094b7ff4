"""syncline connectors: sync files, the delivery engine, the ledger, vendor clients and the sandbox.

Nothing in this package imports Dagster: the same code runs from the ``syncline`` CLI and from Dagster assets.
``from connectors import deliver`` is the Python API (:mod:`connectors.api`), imported on first use so that
``import connectors.<module>`` stays as light as it was.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from connectors.api import deliver

__all__ = ["deliver"]


def __getattr__(name: str) -> Any:
    if name == "deliver":
        from connectors.api import deliver

        return deliver
    raise AttributeError(f"module 'connectors' has no attribute {name!r}")
