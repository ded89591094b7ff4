"""Local emulators of the vendors' ingestion APIs, strict to ``docs/vendor-api/``, for demo and tests."""

from connectors.sandbox.server import Fault, Sandbox

__all__ = ["Fault", "Sandbox"]
