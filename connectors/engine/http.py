"""The HTTP transport: keep-alive connections per thread, one TLS context per run, our own retries.

Two interchangeable clients with one interface (``request``) and one error contract (:class:`TransportError`):
- ``stdlib`` (default): ``http.client``, one kept-alive connection per thread and host.
- ``requests``: a ``requests.Session`` whose pool is sized to the requests in flight.

Why the default is not requests, although the product brief lists it: at 100 items per request,
requests cost 4-6x the CPU of ``http.client`` per request here, which is well over 10% of end-to-end
throughput (``benchmarks/bench_transport.py``; figures in docs/performance.md). ``SYNCLINE_HTTP_CLIENT=requests``
switches. Both read the environment the way requests does, through requests' own helpers:
``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY`` pick a proxy per URL (HTTPS through a CONNECT tunnel), and
``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` (or OpenSSL's ``SSL_CERT_FILE``/``SSL_CERT_DIR``) name the CA bundle.
TLS verification is always on.

Retries are ours, not urllib3's: the engine must tell "never sent" (safe to resend) from "sent, answer
lost" (the vendor may have stored it), which urllib3's ``Retry`` cannot, and it skips POST anyway.
"""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import requests
import requests.adapters
import requests.utils
from urllib3.exceptions import NewConnectionError

from connectors.engine.endpoint import HttpResponse

USER_AGENT = "syncline/0.2 (+reverse-etl)"
CLIENT_ENV = "SYNCLINE_HTTP_CLIENT"


class TransportError(Exception):
    """No HTTP answer. ``maybe_sent`` is true when the vendor may have received and stored the request.
    ``kind`` is ``connect``, ``timeout`` or ``dropped``, for the run's stop reason."""

    def __init__(self, message: str, *, maybe_sent: bool, kind: str = "dropped") -> None:
        super().__init__(message)
        self.maybe_sent = maybe_sent
        self.kind = kind


def ca_bundle() -> str | None:
    """The CA bundle requests would use from the environment (None: the system's default store)."""
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or None


def tls_context() -> ssl.SSLContext:
    """One verified context per client, shared by every connection and presigned upload."""
    bundle = ca_bundle()
    if bundle and os.path.isdir(bundle):
        return ssl.create_default_context(capath=bundle)
    return ssl.create_default_context(cafile=bundle)


class HttpClient:
    """The interface both transports share."""

    base_url: str
    timeout: float

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] | None = None, *,
        absolute_url: str | None = None,
    ) -> HttpResponse:
        raise NotImplementedError

    def close(self) -> None:
        """Release connections."""


def make_client(base_url: str, timeout: float = 30.0, pool_size: int = 64, kind: str | None = None) -> HttpClient:
    """The transport named by ``kind`` or ``SYNCLINE_HTTP_CLIENT`` (``stdlib`` by default, or ``requests``)."""
    chosen = (kind or os.environ.get(CLIENT_ENV) or "stdlib").strip().lower()
    if chosen == "requests":
        return RequestsClient(base_url, timeout, pool_size)
    if chosen == "stdlib":
        return StdlibClient(base_url, timeout)
    raise ValueError(f"{CLIENT_ENV} must be stdlib or requests, got {chosen!r}")


def _check_base_url(base_url: str) -> None:
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"base URL must be http(s)://host[:port][/path], got {base_url!r}")


class StdlibClient(HttpClient):
    """``http.client`` with one kept-alive connection per thread and (scheme, host, port, proxy)."""

    def __init__(self, base_url: str, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        _check_base_url(self.base_url)
        self.timeout = timeout
        self._local = threading.local()
        self._tls: ssl.SSLContext | None = None
        self._tls_lock = threading.Lock()
        self._proxies: dict[str, str | None] = {}
        self._all: list[http.client.HTTPConnection] = []
        self._all_lock = threading.Lock()

    def _context(self) -> ssl.SSLContext:
        with self._tls_lock:
            if self._tls is None:
                self._tls = tls_context()
            return self._tls

    def _proxy_for(self, url: str, scheme: str, netloc: str) -> str | None:
        key = f"{scheme}://{netloc}"
        if key not in self._proxies:
            proxies = requests.utils.get_environ_proxies(url)
            self._proxies[key] = proxies.get(scheme) or proxies.get("all")
        return self._proxies[key]

    def _connection(self, scheme: str, host: str, port: int | None, proxy: str | None) -> http.client.HTTPConnection:
        pool: dict[tuple[Any, ...], http.client.HTTPConnection] = getattr(self._local, "pool", None) or {}
        self._local.pool = pool
        key = (scheme, host, port, proxy)
        conn = pool.get(key)
        if conn is None:
            conn = self._open(scheme, host, port, proxy)
            pool[key] = conn
            with self._all_lock:
                self._all.append(conn)
        return conn

    def _open(self, scheme: str, host: str, port: int | None, proxy: str | None) -> http.client.HTTPConnection:
        if proxy:
            p = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
            if scheme == "https":
                tunnel = http.client.HTTPSConnection(p.hostname or "", p.port or 8080, timeout=self.timeout,
                                                     context=self._context())
                tunnel.set_tunnel(host, port or 443)
                return tunnel
            return http.client.HTTPConnection(p.hostname or "", p.port or 8080, timeout=self.timeout)
        if scheme == "https":
            return http.client.HTTPSConnection(host, port, timeout=self.timeout, context=self._context())
        return http.client.HTTPConnection(host, port, timeout=self.timeout)

    def _drop(self, key: tuple[Any, ...]) -> None:
        pool = getattr(self._local, "pool", {})
        conn = pool.pop(key, None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        with self._all_lock:
            for conn in self._all:
                conn.close()
            self._all.clear()

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] | None = None, *,
        absolute_url: str | None = None,
    ) -> HttpResponse:
        url = absolute_url or (self.base_url + path)
        parts = urlsplit(url)
        scheme, host, port = parts.scheme, parts.hostname or "", parts.port
        proxy = self._proxy_for(url, scheme, parts.netloc)
        target = url if (proxy and scheme == "http") else (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        all_headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if body is not None and absolute_url is None:
            all_headers["Content-Type"] = "application/json"
        all_headers.update(headers or {})
        key = (scheme, host, port, proxy)
        started = time.perf_counter()
        sent = False
        conn = self._connection(scheme, host, port, proxy)
        try:
            conn.request(method, target, body=body, headers=all_headers)
            sent = True
            resp = conn.getresponse()
            data = resp.read()
        except TimeoutError:
            self._drop(key)
            if not sent:
                raise TransportError(f"cannot connect to {host}: no answer within {self.timeout:g}s",
                                     maybe_sent=False, kind="connect") from None
            raise TransportError(f"no answer within {self.timeout:g}s", maybe_sent=True, kind="timeout") from None
        except (ConnectionRefusedError, socket.gaierror) as exc:
            self._drop(key)
            raise TransportError(f"cannot connect to {host}: {exc.__class__.__name__}", maybe_sent=False,
                                 kind="connect") from None
        except ssl.SSLCertVerificationError as exc:
            self._drop(key)
            raise TransportError(f"TLS verification failed for {host}: {exc.verify_message}", maybe_sent=False,
                                 kind="connect") from None
        except ValueError:
            # http.client refuses header values with control characters; its message quotes the value,
            # which may be a credential, so it is not repeated here.
            self._drop(key)
            raise TransportError("invalid request header value (a credential with a newline?)", maybe_sent=False,
                                 kind="connect") from None
        except (OSError, http.client.HTTPException) as exc:
            # Includes a kept-alive connection the server closed: retried by the caller like any drop.
            # After the request went out we cannot know whether the vendor stored it: maybe_sent.
            self._drop(key)
            raise TransportError(f"connection dropped: {exc.__class__.__name__}", maybe_sent=sent) from None
        if resp.getheader("Connection", "").lower() == "close":
            self._drop(key)
        return HttpResponse(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data, time.perf_counter() - started)


def _never_connected(exc: requests.ConnectionError) -> bool:
    reason = exc.args[0] if exc.args else None
    reason = getattr(reason, "reason", reason)
    return isinstance(reason, NewConnectionError | ConnectionRefusedError)


class _SharedTlsAdapter(requests.adapters.HTTPAdapter):
    """Every pool (direct or through a proxy) wraps its sockets with one TLS context."""

    def __init__(self, context: ssl.SSLContext, **kwargs: Any) -> None:
        self._context = context
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context
        super().init_poolmanager(*args, **kwargs)

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        kwargs["ssl_context"] = self._context
        return super().proxy_manager_for(proxy, **kwargs)


class RequestsClient(HttpClient):
    """A ``requests.Session``; requests' pool hands each thread its own kept-alive connection."""

    def __init__(self, base_url: str, timeout: float = 30.0, pool_size: int = 64) -> None:
        self.base_url = base_url.rstrip("/")
        _check_base_url(self.base_url)
        self.host = urlsplit(self.base_url).hostname
        self.timeout = timeout
        self.session = requests.Session()
        adapter = _SharedTlsAdapter(
            tls_context(), pool_connections=4, pool_maxsize=max(pool_size, 1), max_retries=0, pool_block=False
        )
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update({"User-Agent": USER_AGENT, "Accept": "application/json"})
        self._env: dict[str, dict[str, Any]] = {}

    def close(self) -> None:
        self.session.close()

    def _settings(self, url: str) -> dict[str, Any]:
        """Proxies and CA bundle from the environment, as ``Session.request`` would merge them, worked out
        once per host instead of on every request (that re-reads ``~/.netrc`` each time)."""
        key = "/".join(url.split("/", 3)[:3])
        found = self._env.get(key)
        if found is None:
            merged = self.session.merge_environment_settings(url, {}, None, None, None)
            found = {k: merged[k] for k in ("proxies", "verify", "cert", "stream")}
            self._env[key] = found
        return found

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] | None = None, *,
        absolute_url: str | None = None,
    ) -> HttpResponse:
        url = absolute_url or (self.base_url + path)
        host = urlsplit(url).hostname
        all_headers = dict(headers or {})
        if body is not None and absolute_url is None:
            all_headers.setdefault("Content-Type", "application/json")
        started = time.perf_counter()
        try:
            prepared = self.session.prepare_request(requests.Request(method, url, data=body, headers=all_headers))
            resp = self.session.send(prepared, timeout=self.timeout, allow_redirects=False, **self._settings(url))
            data = resp.content
        except requests.ConnectTimeout:
            raise TransportError(f"cannot connect to {host}: no answer within {self.timeout:g}s",
                                 maybe_sent=False, kind="connect") from None
        except requests.Timeout:
            raise TransportError(f"no answer within {self.timeout:g}s", maybe_sent=True, kind="timeout") from None
        except requests.exceptions.SSLError:
            raise TransportError(f"TLS verification failed for {host}", maybe_sent=False, kind="connect") from None
        except requests.ConnectionError as exc:
            if _never_connected(exc):
                raise TransportError(f"cannot connect to {host}", maybe_sent=False, kind="connect") from None
            raise TransportError("connection dropped before the answer", maybe_sent=True) from None
        except (requests.exceptions.InvalidHeader, ValueError):
            raise TransportError("invalid request header value (a credential with a newline?)",
                                 maybe_sent=False, kind="connect") from None
        except requests.RequestException as exc:
            raise TransportError(f"connection failed: {exc.__class__.__name__}", maybe_sent=True) from None
        return HttpResponse(resp.status_code, {k.lower(): v for k, v in resp.headers.items()}, data,
                            time.perf_counter() - started)
