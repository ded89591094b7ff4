"""The HTTP transport: one ``requests.Session`` per run, its pool sized to the requests in flight.

Built on requests (the product brief's choice; docs/performance.md measures its cost against
``http.client``). What it brings users: ``HTTPS_PROXY``/``NO_PROXY``, ``REQUESTS_CA_BUNDLE`` and
``SSL_CERT_FILE`` work as they expect, TLS verification stays on, and one pool (so one TLS context and
kept-alive connections) serves the vendor's API and any presigned upload URL alike.

Retries are ours, not urllib3's (``max_retries=0``): the engine must tell "never sent" (safe to resend)
from "sent, answer lost" (the vendor may have stored it), which urllib3's ``Retry`` cannot, and it skips
POST anyway.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
import requests.adapters
from urllib3.exceptions import NewConnectionError

from connectors.engine.endpoint import HttpResponse

USER_AGENT = "syncline/0.2 (+reverse-etl)"


class TransportError(Exception):
    """No HTTP answer. ``maybe_sent`` is true when the vendor may have received and stored the request.
    ``kind`` is ``connect``, ``timeout`` or ``dropped``, for the run's stop reason."""

    def __init__(self, message: str, *, maybe_sent: bool, kind: str = "dropped") -> None:
        super().__init__(message)
        self.maybe_sent = maybe_sent
        self.kind = kind


def _never_connected(exc: requests.ConnectionError) -> bool:
    reason = exc.args[0] if exc.args else None
    reason = getattr(reason, "reason", reason)
    return isinstance(reason, NewConnectionError | ConnectionRefusedError)


class HttpClient:
    """Thread-safe: requests' pool hands each thread its own kept-alive connection."""

    def __init__(self, base_url: str, timeout: float = 30.0, pool_size: int = 64) -> None:
        parts = urlsplit(base_url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base URL must be http(s)://host[:port][/path], got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.host = parts.hostname
        self.timeout = timeout
        self.session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(
            pool_connections=4, pool_maxsize=max(pool_size, 1), max_retries=0, pool_block=False
        )
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update({"User-Agent": USER_AGENT, "Accept": "application/json"})
        self._env: dict[str, dict[str, Any]] = {}

    def close(self) -> None:
        self.session.close()

    def _settings(self, url: str) -> dict[str, Any]:
        """Proxies and CA bundle from the environment (``HTTPS_PROXY``, ``NO_PROXY``, ``REQUESTS_CA_BUNDLE``,
        ``CURL_CA_BUNDLE``), as ``Session.request`` would merge them, worked out once per host instead of on
        every request (that re-reads ``~/.netrc`` each time: measured as a tenth of delivery's CPU)."""
        origin = url.split("/", 3)[:3]
        key = "/".join(origin)
        found = self._env.get(key)
        if found is None:
            found = self.session.merge_environment_settings(url, {}, None, None, None)
            found = {k: found[k] for k in ("proxies", "verify", "cert", "stream")}
            self._env[key] = found
        return found

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        absolute_url: str | None = None,
    ) -> HttpResponse:
        """Send one request. Raises :class:`TransportError` when no HTTP status came back."""
        url = absolute_url or (self.base_url + path)
        all_headers = dict(headers or {})
        if body is not None and absolute_url is None:
            all_headers.setdefault("Content-Type", "application/json")
        started = time.perf_counter()
        try:
            prepared = self.session.prepare_request(requests.Request(method, url, data=body, headers=all_headers))
            resp = self.session.send(prepared, timeout=self.timeout, allow_redirects=False, **self._settings(url))
            data = resp.content
        except requests.ConnectTimeout:
            raise TransportError(f"cannot connect to {self.host}: no answer within {self.timeout:g}s",
                                 maybe_sent=False, kind="connect") from None
        except requests.Timeout:
            raise TransportError(f"no answer within {self.timeout:g}s", maybe_sent=True, kind="timeout") from None
        except requests.ConnectionError as exc:
            if _never_connected(exc):
                raise TransportError(f"cannot connect to {self.host}", maybe_sent=False, kind="connect") from None
            # Includes a kept-alive connection the server closed: retried by the caller like any drop.
            # After the request went out we cannot know whether the vendor stored it: maybe_sent.
            raise TransportError("connection dropped before the answer", maybe_sent=True) from None
        except (requests.exceptions.InvalidHeader, ValueError):
            # requests refuses header values with control characters; its message quotes the value,
            # which may be a credential, so it is not repeated here.
            raise TransportError("invalid request header value (a credential with a newline?)",
                                 maybe_sent=False, kind="connect") from None
        except requests.RequestException as exc:
            raise TransportError(f"connection failed: {exc.__class__.__name__}", maybe_sent=True) from None
        return HttpResponse(resp.status_code, {k.lower(): v for k, v in resp.headers.items()}, data,
                            time.perf_counter() - started)
