"""Dagster resources: syncline's state (ledger) and one resource per vendor holding its base URL and keys.

Secrets are never config values: each credential field is an ``EnvVar`` when the variable is set where
the code location loads, and otherwise left empty so the connector reads the variable at run time and,
if it is missing there too, fails with an error naming the variable (never a value).
"""

from __future__ import annotations

import os
from typing import Any

import dagster as dg
from pydantic import Field as PydanticField

from connectors.engine.endpoint import Vendor
from connectors.ledger import Ledger, open_ledger


class SynclineResource(dg.ConfigurableResource):
    """Where syncline keeps its ledger; defaults to ``SYNCLINE_LEDGER_URL`` or ``$SYNCLINE_HOME/ledger.sqlite``."""

    ledger_url: str | None = PydanticField(default=None, description="postgresql://... or a SQLite path")

    def open_ledger(self) -> Ledger:
        return open_ledger(self.ledger_url)


class VendorResource(dg.ConfigurableResource):
    """Base URL and credentials of one vendor. Subclasses add one optional field per credential."""

    base_url: str | None = PydanticField(default=None, description="defaults to <PREFIX>_BASE_URL, then the vendor's public URL")

    def credentials(self) -> dict[str, str]:
        return {name: value for name, value in self.__dict__.items() if name != "base_url" and isinstance(value, str)}


def resource_key(vendor: Vendor) -> str:
    return f"{vendor.name}_api"


def vendor_resource_class(vendor: Vendor) -> type[VendorResource]:
    """A ``ConfigurableResource`` subclass for ``vendor`` (e.g. ``TrubricsResource`` with ``api_key``)."""
    annotations: dict[str, Any] = {c.name: str | None for c in vendor.credentials}
    namespace: dict[str, Any] = {
        "__annotations__": annotations,
        "__module__": __name__,
        "__doc__": f"{vendor.title} API: base URL and credentials ({', '.join(c.env for c in vendor.credentials)}).",
    }
    for cred in vendor.credentials:
        namespace[cred.name] = PydanticField(default=None, description=f"from {cred.env}")
    name = "".join(part.capitalize() for part in vendor.name.split("_")) + "Resource"
    return type(name, (VendorResource,), namespace)


def vendor_resource(vendor: Vendor) -> VendorResource:
    cls = vendor_resource_class(vendor)
    creds: dict[str, Any] = {c.name: dg.EnvVar(c.env) for c in vendor.credentials if os.environ.get(c.env)}
    return cls(**creds)
