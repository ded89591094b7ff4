"""Errors a user can act on. Messages name the file and field, and never carry a secret."""

from __future__ import annotations


class SynclineError(Exception):
    """Base class for errors syncline reports to a person."""


class ConfigError(SynclineError):
    """A sync file, model or setting is wrong. Names the file and the field so it can be fixed."""

    def __init__(self, file: str, field: str, message: str) -> None:
        self.file = file
        self.field = field
        self.message = message
        super().__init__(f"{file}: {field}: {message}")


class SyncStopped(SynclineError):
    """Delivery stopped for a reason retrying cannot fix (bad credentials, wrong base URL)."""


class AuthError(SyncStopped):
    """The vendor refused the credential (401/403). Never retried: the key must be fixed first."""


class ResourceError(SynclineError):
    """The machine ran short (memory, disk): not the user's config. Says which setting to raise."""


class Interrupted(SyncStopped):
    """SIGINT or SIGTERM asked the run to stop: nothing new is claimed, in-flight answers are recorded."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
