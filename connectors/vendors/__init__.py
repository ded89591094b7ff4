"""Vendor registry. Every module in this package that defines ``VENDOR`` is a vendor; nothing to register."""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from connectors.engine.endpoint import Vendor


@cache
def vendors() -> dict[str, Vendor]:
    found: dict[str, Vendor] = {}
    for module_info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        vendor = getattr(module, "VENDOR", None)
        if isinstance(vendor, Vendor):
            found[vendor.name] = vendor
    return dict(sorted(found.items()))


def get_vendor(name: str) -> Vendor:
    return vendors()[name]
