"""Dagster resources: syncline's state (ledger) and one resource per vendor: its base URL and keys, and
one delivery method per endpoint that users call from their own assets.

Secrets are never config values: each credential field is an ``EnvVar`` when the variable is set where
the code location loads, and otherwise left empty so the connector reads the variable at run time and,
if it is missing there too, fails with an error naming the variable (never a value).

The vendor classes (``TrubricsResource`` with ``publish_events(...)``, ...) are generated from the endpoint
declarations into :mod:`pipelines.vendor_resources` (``python -m pipelines.resourcegen``; a test keeps it
current), so they are real classes with real methods for type checkers and IDEs. Each method is
:meth:`VendorResource.deliver` for its endpoint: see docs/resources.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import dagster as dg
from pydantic import Field as PydanticField

from connectors.engine.endpoint import Vendor
from connectors.ledger import Ledger, open_ledger
from connectors.spec import CursorUnit, Mode, NullCursor
from connectors.vendors import get_vendor, vendors

if TYPE_CHECKING:
    from connectors.api import Delivery, DeliveryResult, Key, WindowLike
    from connectors.inputs import DeliverInput


class SynclineResource(dg.ConfigurableResource):
    """Where syncline keeps its ledger; defaults to ``SYNCLINE_LEDGER_URL`` or ``$SYNCLINE_HOME/ledger.sqlite``."""

    ledger_url: str | None = PydanticField(default=None, description="postgresql://... or a SQLite path")

    def open_ledger(self) -> Ledger:
        return open_ledger(self.ledger_url)


class VendorResource(dg.ConfigurableResource):
    """Base URL and credentials of one vendor, and delivery to its endpoints. Subclasses (one per vendor)
    set ``vendor_name`` and add one optional field per credential and one method per endpoint."""

    vendor_name: ClassVar[str] = ""
    base_url: str | None = PydanticField(default=None, description="defaults to <PREFIX>_BASE_URL, then the vendor's public URL")
    ledger_url: str | None = PydanticField(
        default=None, description="the ledger of deliveries made through this resource's methods (postgresql://... "
        "or a SQLite path); default SYNCLINE_LEDGER_URL, then $SYNCLINE_HOME/ledger.sqlite")

    @classmethod
    def vendor(cls) -> Vendor:
        return get_vendor(cls.vendor_name)

    def credentials(self) -> dict[str, str]:
        """The credentials given (by name); the ones left empty are read from the environment at run time.

        An ``EnvVar`` field is its variable's value: Dagster resolves it when it initializes the resource
        for a run, and here too for a resource used as is (a script calling ``publish_events`` on
        ``TrubricsResource(api_key=dg.EnvVar(...))``), never the variable's name."""
        found: dict[str, str] = {}
        for cred in self.vendor().credentials:
            value = getattr(self, cred.name, None)
            if isinstance(value, dg.EnvVar):
                value = value.get_value()
            if isinstance(value, str):
                found[cred.name] = value
        return found

    def deliver(
        self,
        endpoint: str,
        data: DeliverInput,
        *,
        key: Key,
        name: str | None = None,
        cursor: str | None = None,
        model: str | None = None,
        mode: Mode = "append",
        window: WindowLike = None,
        delivery: Delivery = None,
        options: Mapping[str, Any] | None = None,
        destination_name: str | None = None,
        keep_nulls: bool = False,
        null_cursor: NullCursor = "exclude",
        cursor_unit: CursorUnit | None = None,
        strict: bool | Sequence[str] = False,
        context: dg.AssetExecutionContext | None = None,
        dry_run: bool = False,
    ) -> DeliveryResult:
        """Deliver ``data`` (a DataFrame, Arrow table or stream, DuckDB relation, or Parquet path/glob) to
        ``endpoint``, through the same pipeline, ledger and run log as a sync file.

        ``key``: the row's key column(s). ``name``: the ledger's name (default, inside an asset:
        ``<asset>_to_<vendor>_<endpoint>``; required outside one). ``cursor``: the column placing rows in
        time; inside a time-partitioned asset the partition's window then selects rows by it and is
        recorded in the ledger. ``model``: a DuckDB SELECT over ``source``, as in a sync file (default:
        ``_key`` and every column named like an endpoint field). ``mode``, ``delivery``, ``options``,
        ``destination_name``, ``keep_nulls``, ``null_cursor``, ``cursor_unit``, ``strict``: as in a sync file. ``context``: the asset's
        context (found automatically inside an asset). Returns a :class:`~connectors.api.DeliveryResult`
        (``.metadata`` for ``dg.MaterializeResult``); a run that stops (bad key, wrong URL) fails the step
        with ``dg.Failure``, as a generated sync asset does. See docs/resources.md."""
        # Imported here: pipelines.delivery needs pipelines.factory, which imports this module.
        from pipelines.delivery import deliver_from

        return deliver_from(
            self, endpoint, data, key=key, name=name, cursor=cursor, model=model, mode=mode, window=window,
            delivery=delivery, options=options, destination_name=destination_name, keep_nulls=keep_nulls,
            null_cursor=null_cursor, cursor_unit=cursor_unit, strict=strict, context=context, dry_run=dry_run,
        )


def resource_key(vendor: Vendor) -> str:
    return f"{vendor.name}_api"


def resource_class_name(vendor: Vendor) -> str:
    return "".join(part.capitalize() for part in vendor.name.split("_")) + "Resource"


def vendor_resource_class(vendor: Vendor) -> type[VendorResource]:
    """The ``ConfigurableResource`` subclass for ``vendor`` (e.g. ``TrubricsResource`` with ``api_key``):
    the generated class when there is one, else one made now (base URL, credentials and ``deliver``)."""
    from pipelines import vendor_resources

    generated = getattr(vendor_resources, resource_class_name(vendor), None)
    if isinstance(generated, type) and issubclass(generated, VendorResource) and generated.vendor_name == vendor.name:
        return generated
    annotations: dict[str, Any] = {"vendor_name": ClassVar[str], **{c.name: str | None for c in vendor.credentials}}
    namespace: dict[str, Any] = {
        "__annotations__": annotations,
        "__module__": __name__,
        "__doc__": f"{vendor.title} API: base URL and credentials ({', '.join(c.env for c in vendor.credentials)}).",
        "vendor_name": vendor.name,
    }
    for cred in vendor.credentials:
        namespace[cred.name] = PydanticField(default=None, description=f"from {cred.env}")
    return type(resource_class_name(vendor), (VendorResource,), namespace)


def vendor_resource(vendor: Vendor) -> VendorResource:
    cls = vendor_resource_class(vendor)
    creds: dict[str, Any] = {c.name: dg.EnvVar(c.env) for c in vendor.credentials if os.environ.get(c.env)}
    return cls(**creds)


if TYPE_CHECKING:
    from pipelines.vendor_resources import *  # noqa: F403 - the generated vendor classes, for type checkers


def __getattr__(name: str) -> Any:
    """``from pipelines.resources import TrubricsResource``: the generated classes, imported on first use
    (:mod:`pipelines.vendor_resources` imports this module, so it cannot be imported at the top)."""
    if name.endswith("Resource") and name in {resource_class_name(v) for v in vendors().values()}:
        from pipelines import vendor_resources

        return getattr(vendor_resources, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
