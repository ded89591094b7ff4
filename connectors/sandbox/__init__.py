"""Local emulators of the vendors' ingestion APIs, strict to ``../shared/vendor-docs``, for demo and tests."""

from connectors.sandbox.server import Fault, Sandbox

__all__ = ["Fault", "Sandbox"]
