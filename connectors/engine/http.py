"""A small keep-alive HTTP client on the standard library's ``http.client``.

Why not requests: on this workload (many small JSON POSTs) requests/urllib3 costs about twice the CPU per
request, and we need our own retry classification anyway (urllib3's ``Retry`` skips POST and cannot tell
"never sent" from "sent, answer lost"). Each thread keeps one persistent connection per host; TLS uses the
default verified context; every request has a timeout.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from urllib.parse import urlsplit

from connectors.engine.endpoint import HttpResponse

USER_AGENT = "syncline/0.1 (+reverse-etl)"


class TransportError(Exception):
    """No HTTP answer. ``maybe_sent`` is true when the vendor may have received and stored the request."""

    def __init__(self, message: str, *, maybe_sent: bool) -> None:
        super().__init__(message)
        self.maybe_sent = maybe_sent


class HttpClient:
    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        parts = urlsplit(base_url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base URL must be http(s)://host[:port][/path], got {base_url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port
        self.prefix = parts.path
        self.timeout = timeout
        self._local = threading.local()
        self._ssl = ssl.create_default_context() if self.scheme == "https" else None

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._ssl is not None:
                conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self._ssl)
            else:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

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
        if absolute_url is not None:
            return self._absolute(method, absolute_url, body, headers)
        all_headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if body is not None:
            all_headers["Content-Type"] = "application/json"
        all_headers.update(headers or {})
        started = time.perf_counter()
        sent = False
        conn = self._connection()
        try:
            conn.request(method, self.prefix + path, body=body, headers=all_headers)
            sent = True
            resp = conn.getresponse()
            data = resp.read()
        except TimeoutError:
            self._drop()
            raise TransportError(f"no answer within {self.timeout:g}s", maybe_sent=sent) from None
        except (ConnectionRefusedError, socket.gaierror) as exc:
            self._drop()
            raise TransportError(f"cannot connect to {self.host}: {exc.__class__.__name__}", maybe_sent=False) from None
        except ValueError:
            # http.client refuses header values with control characters; its message quotes the value,
            # which may be a credential, so it is not repeated here.
            self._drop()
            raise TransportError("invalid request header value (a credential with a newline?)", maybe_sent=False) from None
        except (OSError, http.client.HTTPException) as exc:
            # Includes a kept-alive connection the server closed: retried by the caller like any drop.
            # After the request went out we cannot know whether the vendor stored it: maybe_sent.
            self._drop()
            raise TransportError(f"connection dropped: {exc.__class__.__name__}", maybe_sent=sent) from None
        if resp.getheader("Connection", "").lower() == "close":
            self._drop()
        return HttpResponse(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data, time.perf_counter() - started)

    def _absolute(
        self, method: str, url: str, body: bytes | None, headers: Mapping[str, str] | None
    ) -> HttpResponse:
        """A one-off request to another host (e.g. a presigned upload URL); no connection reuse."""
        parts = urlsplit(url)
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(
                parts.hostname or "", parts.port, timeout=self.timeout, context=ssl.create_default_context()
            )
        else:
            conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=self.timeout)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        started = time.perf_counter()
        sent = False
        try:
            conn.request(method, target, body=body, headers={"User-Agent": USER_AGENT, **(headers or {})})
            sent = True
            resp = conn.getresponse()
            data = resp.read()
            return HttpResponse(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data,
                                time.perf_counter() - started)
        except (OSError, http.client.HTTPException) as exc:
            raise TransportError(f"{exc.__class__.__name__} on {parts.hostname}", maybe_sent=sent) from None
        finally:
            conn.close()
