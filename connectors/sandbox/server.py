"""The sandbox HTTP server: every vendor emulator behind one port on 127.0.0.1, under ``/<vendor>``.

``Sandbox(...).start()`` runs it in a background thread (tests, demo); ``syncline sandbox`` runs it in the
foreground. Control endpoints under ``/_sandbox`` let another process set faults and read what arrived:

- ``POST /_sandbox/faults``  ``{"vendor", "endpoint", "mode", "count", "after", "retry_after", "delay", "match"}``:
  the next ``count`` requests of the endpoint after ``after`` misbehave (``count: -1``: all of them); modes
  in :class:`~connectors.sandbox.base.Fault` (429s, 5xx, stored-then-5xx, drops, stored-then-drop, slow,
  timeout, hang, reject_matching)
- ``GET /_sandbox/faults`` the faults set, with how many requests each has seen;
  ``DELETE /_sandbox/faults`` clears them; ``POST /_sandbox/reset`` clears everything
- ``GET /_sandbox/records?vendor=&endpoint=`` items accepted; ``GET /_sandbox/stats`` per-endpoint counters
- ``GET /_sandbox/idle?timeout=`` waits (bounded) until no request is being handled: ``{"idle": bool}``
- ``POST /_sandbox/control`` ``{"vendor", "action", "args"}``: an emulator's own test controls

Keys: each emulator accepts its fixed sandbox keys (``Emulator.keys``), unless other values are given,
``Sandbox(keys={"trubrics": {"api_key": "..."}})`` or the same JSON in ``SYNCLINE_SANDBOX_KEYS``. Then the
given value is the only one accepted (the fixed one is refused like any wrong key) and :meth:`Sandbox.env`
hands it out; a test can plant recognisable credentials and search every output for them.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from connectors.sandbox.base import Drop, Emulator, Fault, Request, Response, parse_query
from connectors.sandbox.emulators import emulator_classes

__all__ = ["Fault", "Sandbox"]

KEYS_ENV = "SYNCLINE_SANDBOX_KEYS"  # JSON {vendor: {credential name: value}}: keys the sandbox accepts
_REVOKED = "revoked-fixed-sandbox-key"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
    sandbox: Sandbox

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up (timeouts in fault tests) is normal here; anything else is printed."""
        exc = sys.exc_info()[1]
        if not isinstance(exc, ConnectionError | TimeoutError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without NODELAY, Nagle + delayed ACK add ~40 ms each.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet by design
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            response = self.server.sandbox.handle(self.command, parts.path, parse_query(parts.query), headers, body)
        except Drop:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        payload = response.encoded()
        self.send_response(response.status)
        is_bytes = isinstance(response.body, bytes)
        content_type = response.headers.pop("Content-Type", "application/octet-stream" if is_bytes else "application/json")
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve


class Sandbox:
    """All emulators on one port. ``record_items=False`` keeps only counters (for million-event benchmarks)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, record_items: bool = True,
                 keys: dict[str, dict[str, str]] | None = None) -> None:
        classes = emulator_classes()
        if keys is None:
            raw = os.environ.get(KEYS_ENV, "").strip()
            keys = json.loads(raw) if raw else {}
        # vendor -> [(accepted value, the emulator's fixed value)], for the credentials given other values
        self._aliases: dict[str, list[tuple[str, str]]] = {}
        for vendor, given in (keys or {}).items():
            cls = classes.get(vendor)
            if cls is None:
                raise ValueError(f"{KEYS_ENV}: no emulator named {vendor!r} (have: {', '.join(classes)})")
            for cred, value in given.items():
                if cred not in cls.keys:
                    raise ValueError(f"{KEYS_ENV}: {vendor} has no credential {cred!r} (has: {', '.join(cls.keys)})")
                if not isinstance(value, str) or len(value) < 4 or value == cls.keys[cred]:
                    raise ValueError(f"{KEYS_ENV}: {vendor}.{cred} must be a new string of 4 characters or more")
                self._aliases.setdefault(vendor, []).append((value, cls.keys[cred]))
        self._server = _Server((host, port), _Handler)
        self._server.sandbox = self
        address = self._server.server_address
        self.host, self.port = str(address[0]), int(address[1])
        self.emulators: dict[str, Emulator] = {
            name: cls(record_items=record_items, base_url=self.base_url(name)) for name, cls in classes.items()
        }
        self._thread: threading.Thread | None = None

    def accepted_keys(self, vendor: str) -> dict[str, str]:
        """The credential values this sandbox accepts for ``vendor`` (by credential name)."""
        emulator = self.emulators[vendor]
        fixed_to_given = {fixed: given for given, fixed in self._aliases.get(vendor, [])}
        return {name: fixed_to_given.get(value, value) for name, value in emulator.keys.items()}

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def base_url(self, vendor: str) -> str:
        return f"{self.url}/{vendor}"

    def env(self) -> dict[str, str]:
        """Environment variables pointing every vendor at this sandbox, with the sandbox's keys."""
        from connectors.vendors import vendors

        env: dict[str, str] = {}
        for name, vendor in vendors().items():
            emulator = self.emulators.get(name)
            if emulator is None:
                continue
            env[vendor.base_url_env] = self.base_url(name)
            accepted = self.accepted_keys(name)
            for cred in vendor.credentials:
                if cred.name in accepted:
                    env[cred.env] = accepted[cred.name]
        return env

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> Sandbox:
        self._thread = threading.Thread(target=self._server.serve_forever, name="syncline-sandbox", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- in-process control (tests) ----------------------------------------------------------------------
    def emulator(self, vendor: str) -> Emulator:
        return self.emulators[vendor]

    def set_fault(self, vendor: str, endpoint: str, fault: Fault) -> None:
        emulator = self.emulators[vendor]
        with emulator.lock:
            emulator.faults[endpoint] = fault
            emulator._fault_seen[endpoint] = 0

    def clear_faults(self) -> None:
        for emulator in self.emulators.values():
            with emulator.lock:
                emulator.faults.clear()

    def faults(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Faults set, per vendor and endpoint, with ``seen``: requests counted since it was set."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for name, emulator in self.emulators.items():
            with emulator.lock:
                for endpoint, fault in emulator.faults.items():
                    out.setdefault(name, {})[endpoint] = {
                        "mode": fault.mode, "count": fault.count, "after": fault.after, "delay": fault.delay,
                        "retry_after": fault.retry_after, "match": fault.match,
                        "seen": emulator._fault_seen.get(endpoint, 0),
                    }
        return out

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until no request is being handled (a slow or timed-out request may still be sleeping in
        the sandbox after the client gave up); True if idle within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            busy = 0
            for emulator in self.emulators.values():
                with emulator.lock:
                    busy += emulator.active
            if not busy:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def records(self, vendor: str, endpoint: str) -> list[Any]:
        emulator = self.emulators[vendor]
        with emulator.lock:
            return list(emulator.records.get(endpoint, []))

    def bodies(self, vendor: str, endpoint: str, status: int | None = None) -> list[bytes]:
        """The request bodies of an endpoint as they arrived, byte for byte (only those answered ``status``,
        when given): what a test compares with what the model wrote."""
        emulator = self.emulators[vendor]
        with emulator.lock:
            return [body for answered, body in emulator.bodies.get(endpoint, []) if status in (None, answered)]

    def stats(self) -> dict[str, dict[str, dict[str, Any]]]:
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for name, emulator in self.emulators.items():
            with emulator.lock:
                out[name] = {ep: s.as_dict() for ep, s in emulator.stats.items()}
        return out

    def reset(self) -> None:
        for emulator in self.emulators.values():
            emulator.reset()

    # -- HTTP dispatch ----------------------------------------------------------------------------------------
    def handle(self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str], body: bytes) -> Response:
        segments = path.lstrip("/").split("/", 1)
        head, rest = segments[0], "/" + (segments[1] if len(segments) > 1 else "")
        if head == "_sandbox":
            return self._control(method, rest, query, body)
        emulator = self.emulators.get(head)
        if emulator is None:
            return Response(404, {"error": f"no emulator at /{head} (have: {', '.join(self.emulators)})"})
        aliases = self._aliases.get(head)
        if aliases:
            headers, query, body = self._translate(aliases, headers, query, body)
        return emulator.dispatch(Request(method, rest, query, headers, body))

    @staticmethod
    def _translate(
        aliases: list[tuple[str, str]], headers: dict[str, str], query: dict[str, list[str]], body: bytes
    ) -> tuple[dict[str, str], dict[str, list[str]], bytes]:
        """Where the sandbox accepts configured keys: the fixed value is refused (replaced by one no emulator
        accepts), then the configured value becomes the fixed one the emulator checks."""

        def text(value: str) -> str:
            for given, fixed in aliases:
                value = value.replace(fixed, _REVOKED).replace(given, fixed)
            return value

        for given, fixed in aliases:
            body = body.replace(fixed.encode(), _REVOKED.encode()).replace(given.encode(), fixed.encode())
        return ({k: text(v) for k, v in headers.items()}, {k: [text(v) for v in vs] for k, vs in query.items()}, body)

    def _control(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> Response:
        try:
            if path == "/faults" and method == "POST":
                spec = json.loads(body or b"{}")
                vendor, endpoint = spec.pop("vendor"), spec.pop("endpoint")
                self.set_fault(vendor, endpoint, Fault(**spec))
                return Response(200, {"ok": True})
            if path == "/faults" and method == "GET":
                return Response(200, self.faults())
            if path == "/idle" and method == "GET":
                wait = min(float((query.get("timeout") or ["30"])[0]), 120.0)
                return Response(200, {"idle": self.wait_idle(wait)})
            if path == "/faults" and method == "DELETE":
                self.clear_faults()
                return Response(200, {"ok": True})
            if path == "/reset" and method == "POST":
                self.reset()
                return Response(200, {"ok": True})
            if path == "/records" and method == "GET":
                vendor, endpoint = query["vendor"][0], query["endpoint"][0]
                return Response(200, {"items": self.records(vendor, endpoint)})
            if path == "/control" and method == "POST":
                spec = json.loads(body or b"{}")
                emulator = self.emulators[spec["vendor"]]
                with emulator.lock:
                    return Response(200, {"result": emulator.control(spec["action"], spec.get("args") or {})})
            if path == "/stats" and method == "GET":
                return Response(200, self.stats())
        except (KeyError, TypeError, ValueError) as exc:
            return Response(400, {"error": f"bad control request: {exc}"})
        return Response(404, {"error": "unknown control endpoint"})
