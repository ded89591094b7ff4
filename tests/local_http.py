"""A local HTTP(S) server for tests: a threaded HTTP/1.1 server on 127.0.0.1 (a free port) that counts
connections and requests, a quiet keep-alive handler base, and ``serving`` to run one for a ``with``
block. Shared by the transport tests and the tests of how the engine reads unexpected answers."""

from __future__ import annotations

import contextlib
import socketserver
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

SOCKET_TIMEOUT_S = 5.0


class LocalServer(ThreadingHTTPServer):
    """A threaded HTTP/1.1 server on 127.0.0.1 that counts accepted TCP connections and requests seen."""

    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler], tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.lock = threading.Lock()
        self.connections = 0
        self.seen: list[dict[str, Any]] = []
        super().__init__(("127.0.0.1", 0), handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the FQDN of 127.0.0.1, which can be slow; nothing here needs it.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.lock:
            self.connections += 1
        super().process_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet: failed TLS handshakes are expected in the no-CA tests."""

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.server_port}"


class QuietHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 (keep-alive) handler base: TLS is wrapped in the handler thread, never in the accept loop."""

    protocol_version = "HTTP/1.1"
    timeout = SOCKET_TIMEOUT_S
    server: LocalServer

    def setup(self) -> None:
        if self.server.tls is not None:
            self.request.settimeout(SOCKET_TIMEOUT_S)
            self.request = self.server.tls.wrap_socket(self.request, server_side=True)
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serving(handler: type[BaseHTTPRequestHandler], tls: ssl.SSLContext | None = None) -> Iterator[LocalServer]:
    """Run a LocalServer in a daemon thread; always shut down and closed afterwards."""
    server = LocalServer(handler, tls)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
