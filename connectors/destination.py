"""Where items go: a destination's identity, so the ledger never confuses two places.

By default a destination is the vendor, the base URL and a fingerprint of the credential that
authenticates the endpoint (a salted SHA-256, never the key): on a SaaS vendor, staging and production
projects often differ only by key, and a fresh sandbox differs by URL. A sync may instead name its
destination (``destination: {vendor: trubrics, name: prod}``); then the name is the identity and rotating
the key or moving the URL resends nothing. See docs/delivery.md, "Destinations".
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

LEGACY = ""  # items recorded before destinations existed (ledger schema 1); adopted on first use


def _short(vendor: str, identity: str) -> str:
    return f"{vendor}-" + hashlib.sha256(identity.encode()).hexdigest()[:12]


def credential_fingerprint(vendor: str, value: str) -> str:
    """A short, non-reversible name for a credential value, safe to store and print."""
    return hashlib.sha256(f"syncline-destination\x1f{vendor}\x1f{value}".encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Destination:
    vendor: str
    base_url: str
    fingerprint: str
    name: str | None = None

    @property
    def identity(self) -> str:
        """What makes this destination itself, in words: ``vendor:name`` or ``vendor:url#key-fingerprint``."""
        if self.name:
            return f"{self.vendor}:{self.name}"
        return f"{self.vendor}:{self.base_url}#{self.fingerprint}"

    @property
    def id(self) -> str:
        """The ledger's short key for this destination (stored on every item row)."""
        return _short(self.vendor, self.identity)

    @property
    def unnamed_id(self) -> str:
        """The key this destination would have without a name (to adopt its history when one is given)."""
        return _short(self.vendor, f"{self.vendor}:{self.base_url}#{self.fingerprint}")

    def describe(self) -> str:
        what = f"{self.base_url}, key {self.fingerprint}"
        return f"{self.vendor} '{self.name}' ({what})" if self.name else f"{self.vendor} at {what}"


def resolve_destination(
    vendor: str, base_url: str, credentials: Mapping[str, str], credential: str, name: str | None = None
) -> Destination:
    """The destination a run delivers to, from the vendor, its base URL and the endpoint's credential."""
    return Destination(vendor, base_url.rstrip("/"), credential_fingerprint(vendor, credentials.get(credential, "")), name)
