"""The sandbox HTTP server: every vendor emulator behind one port on 127.0.0.1, under ``/<vendor>``.

``Sandbox(...).start()`` runs it in a background thread (tests, demo); ``syncline sandbox`` runs it in the
foreground. Control endpoints under ``/_sandbox`` let another process set faults and read what arrived:

- ``POST /_sandbox/faults``  ``{"vendor", "endpoint", "mode", "count", "after", "retry_after", "delay", "match"}``
- ``DELETE /_sandbox/faults`` clears them; ``POST /_sandbox/reset`` clears everything
- ``GET /_sandbox/records?vendor=&endpoint=`` items accepted; ``GET /_sandbox/stats`` per-endpoint counters
- ``POST /_sandbox/control`` ``{"vendor", "action", "args"}``: an emulator's own test controls
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from connectors.sandbox.base import Drop, Emulator, Fault, Request, Response, parse_query
from connectors.sandbox.emulators import emulator_classes

__all__ = ["Fault", "Sandbox"]


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

    def __init__(self, host: str = "127.0.0.1", port: int = 0, record_items: bool = True) -> None:
        self._server = _Server((host, port), _Handler)
        self._server.sandbox = self
        address = self._server.server_address
        self.host, self.port = str(address[0]), int(address[1])
        self.emulators: dict[str, Emulator] = {
            name: cls(record_items=record_items, base_url=self.base_url(name)) for name, cls in emulator_classes().items()
        }
        self._thread: threading.Thread | None = None

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
            for cred in vendor.credentials:
                if cred.name in emulator.keys:
                    env[cred.env] = emulator.keys[cred.name]
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

    def records(self, vendor: str, endpoint: str) -> list[Any]:
        emulator = self.emulators[vendor]
        with emulator.lock:
            return list(emulator.records.get(endpoint, []))

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
        return emulator.dispatch(Request(method, rest, query, headers, body))

    def _control(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> Response:
        try:
            if path == "/faults" and method == "POST":
                spec = json.loads(body or b"{}")
                vendor, endpoint = spec.pop("vendor"), spec.pop("endpoint")
                self.set_fault(vendor, endpoint, Fault(**spec))
                return Response(200, {"ok": True})
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
