"""One module per vendor emulator; each defines ``EMULATOR`` (a subclass of :class:`Emulator`)."""

from __future__ import annotations

import importlib
import pkgutil

from connectors.sandbox.base import Emulator


def emulator_classes() -> dict[str, type[Emulator]]:
    found: dict[str, type[Emulator]] = {}
    for module_info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        cls = getattr(module, "EMULATOR", None)
        if isinstance(cls, type) and issubclass(cls, Emulator):
            found[cls.vendor] = cls
    return dict(sorted(found.items()))
