"""The HTTP transport's promises (``connectors/engine/http.py``), checked for both clients over real sockets.

Every server here is a thread on 127.0.0.1 (a JSON server, optionally behind TLS with a throwaway CA, a small
forwarding/CONNECT proxy, and raw sockets that misbehave on purpose), so the tests prove what the module doc
promises rather than what a mock was told to return:

- keep-alive: sequential requests from one thread reuse one TCP connection;
- TLS: verification is always on, and ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE`` name the CA bundle;
- proxies: ``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``NO_PROXY`` pick a proxy per URL the way requests does,
  HTTPS through a CONNECT tunnel;
- one TLS context per client, shared by the base URL and absolute (presigned) URLs;
- errors without an HTTP status are classified (``kind``, ``maybe_sent``) so the engine knows what may be resent.

The sandbox this runs in exports ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` and may export ``no_proxy``; an autouse
fixture clears all of them so each test states exactly the environment it relies on.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import select
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from connectors.engine import http as transport
from connectors.engine.http import HttpClient, StdlibClient, TransportError, make_client
from tests.local_http import SOCKET_TIMEOUT_S, LocalServer, QuietHandler, serving

# No test may hang the suite: each gets 30 s in all (pytest-timeout), and every socket has its own timeout.
pytestmark = pytest.mark.timeout(30)

KINDS = ["stdlib", "requests"]
PROXY_ENV = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")
CA_ENV = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")


# --------------------------------------------------------------------------------------------- environment


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy or CA-bundle variable leaks in from the machine (this sandbox sets several, incl. ``no_proxy``)."""
    for name in PROXY_ENV:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    for name in CA_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("REQUEST_METHOD", raising=False)  # would make urllib ignore HTTP_PROXY (CGI guard)


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    """Each promise holds for both transports."""
    return str(request.param)


@contextlib.contextmanager
def client_for(base_url: str, kind: str, timeout: float = SOCKET_TIMEOUT_S) -> Iterator[HttpClient]:
    """A client that is always closed, so kept-alive connections do not outlive the test."""
    client = make_client(base_url, timeout=timeout, pool_size=4, kind=kind)
    try:
        yield client
    finally:
        client.close()


# ------------------------------------------------------------------------------------------- certificates


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA and a server certificate it signed for 127.0.0.1 / localhost (SAN IP and DNS).

    Made with the ``openssl`` CLI (``cryptography`` is not installed here). The extensions are explicit and
    complete (CA basicConstraints/keyUsage, leaf SAN/EKU/AKI) so strict X.509 checking accepts them too."""
    folder = tmp_path_factory.mktemp("tls")
    ca_key, ca_pem = folder / "ca.key", folder / "ca.pem"
    key, csr, pem = folder / "server.key", folder / "server.csr", folder / "server.pem"
    ca_ext, leaf_ext = folder / "ca.ext", folder / "leaf.ext"
    ca_ext.write_text(
        "[req]\ndistinguished_name=dn\nx509_extensions=v3_ca\nprompt=no\n[dn]\nCN=syncline throwaway test CA\n"
        "[v3_ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"
        "subjectKeyIdentifier=hash\n"
    )
    leaf_ext.write_text(
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str | Path) -> None:
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True, timeout=20)

    run("req", "-x509", *ec, "-keyout", ca_key, "-out", ca_pem, "-days", "2", "-config", ca_ext)
    run("req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", csr, "-CA", ca_pem, "-CAkey", ca_key, "-set_serial", "4242", "-days", "2",
        "-out", pem, "-extfile", leaf_ext)
    return {"ca": ca_pem, "cert": pem, "key": key}


@pytest.fixture(scope="session")
def server_tls(certs: dict[str, Path]) -> ssl.SSLContext:
    """The TLS servers' own context (server side: presents the test certificate)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs["cert"], certs["key"])
    return ctx


# ------------------------------------------------------------------------------------------ local servers


class JsonHandler(QuietHandler):
    """Answers every GET/POST/PUT with a small JSON document and a Content-Length, so the connection can stay
    open (PUT is what presigned uploads use)."""

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def do_PUT(self) -> None:
        self._answer()

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with self.server.lock:
            self.server.seen.append({"method": self.command, "path": self.path, "body": body,
                                     "host": self.headers.get("Host"), "client": self.client_address})
        payload = json.dumps({"ok": True, "path": self.path, "port": self.server.server_port}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


HOP_BY_HOP = {"connection", "proxy-connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
              "proxy-authorization", "proxy-authenticate"}


class ProxyHandler(QuietHandler):
    """A minimal forward proxy: absolute-URI GET/POST for http:// targets, CONNECT tunnels for https://.

    Every proxied request or tunnel is recorded in ``server.seen`` so a test can tell it went through here."""

    def do_GET(self) -> None:
        self._forward()

    def do_POST(self) -> None:
        self._forward()

    def _forward(self) -> None:
        target = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        with self.server.lock:
            self.server.seen.append({"method": self.command, "target": self.path})
        if target.scheme != "http" or not target.hostname:
            self.send_error(400, "absolute http:// URI expected")
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        upstream = http.client.HTTPConnection(target.hostname, target.port or 80, timeout=SOCKET_TIMEOUT_S)
        try:
            upstream.request(self.command, (target.path or "/") + (f"?{target.query}" if target.query else ""),
                             body=body, headers=headers)
            resp = upstream.getresponse()
            data = resp.read()
        finally:
            upstream.close()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_CONNECT(self) -> None:
        host, _, port = self.path.rpartition(":")
        with self.server.lock:
            self.server.seen.append({"method": "CONNECT", "target": self.path})
        try:
            upstream = socket.create_connection((host, int(port)), timeout=SOCKET_TIMEOUT_S)
        except OSError:
            self.send_error(502, "cannot reach the tunnel's target")
            return
        self.send_response(200, "Connection established")
        self.end_headers()
        self.close_connection = True
        with upstream:
            relay(self.connection, upstream)


def relay(a: socket.socket, b: socket.socket, idle_s: float = SOCKET_TIMEOUT_S) -> None:
    """Copy bytes both ways until either side closes or nothing moves for ``idle_s``."""
    deadline = time.monotonic() + idle_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([a, b], [], [], 0.2)
        for src in ready:
            dst = b if src is a else a
            try:
                chunk = src.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            dst.sendall(chunk)
            deadline = time.monotonic() + idle_s


@pytest.fixture
def http_server() -> Iterator[LocalServer]:
    """Plain HTTP JSON server."""
    with serving(JsonHandler) as server:
        yield server


@pytest.fixture
def https_server(server_tls: ssl.SSLContext) -> Iterator[LocalServer]:
    """HTTPS JSON server presenting a certificate only the throwaway CA vouches for."""
    with serving(JsonHandler, server_tls) as server:
        yield server


@pytest.fixture
def proxy() -> Iterator[LocalServer]:
    """The local forward/CONNECT proxy."""
    with serving(ProxyHandler) as server:
        yield server


@contextlib.contextmanager
def raw_server(behaviour: Callable[[socket.socket, threading.Event], None]) -> Iterator[int]:
    """A bare TCP listener that reads one HTTP request per connection, then calls ``behaviour(conn, stop)``
    and closes the connection without ever writing a status line. ``stop`` is set when the test is over."""
    stop = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    port = listener.getsockname()[1]
    workers: list[threading.Thread] = []

    def handle(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(SOCKET_TIMEOUT_S)
            with contextlib.suppress(OSError):
                read_request(conn)
                behaviour(conn, stop)

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            worker = threading.Thread(target=handle, args=(conn,), daemon=True)
            workers.append(worker)
            worker.start()

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()
        for worker in workers:
            worker.join(timeout=5)


def read_request(conn: socket.socket) -> bytes:
    """Read one request (headers plus a Content-Length body) so the client has fully sent it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        rest += chunk
    return data


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------------------------ 1 keep-alive


def test_sequential_requests_reuse_one_connection(kind: str, http_server: LocalServer) -> None:
    """Keep-alive is the point of the stdlib default (and of a Session): five requests from one thread, GET and
    POST mixed, must be served over a single accepted TCP connection, not one handshake each."""
    with client_for(http_server.url, kind) as client:
        for i in range(5):
            if i % 2:
                resp = client.request("POST", f"/items/{i}", json.dumps({"i": i}).encode())
            else:
                resp = client.request("GET", f"/items/{i}")
            assert resp.status == 200
            assert json.loads(resp.body)["path"] == f"/items/{i}"
    assert len(http_server.seen) == 5
    assert http_server.connections == 1, "each request opened its own connection: keep-alive is broken"
    assert len({r["client"] for r in http_server.seen}) == 1


# ----------------------------------------------------------------------------------------------- 2 TLS / CA


def test_https_with_requests_ca_bundle(kind: str, https_server: LocalServer, certs: dict[str, Path],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """``REQUESTS_CA_BUNDLE`` naming our CA makes the private certificate trusted (hostname 127.0.0.1 via SAN IP)."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certs["ca"]))
    with client_for(https_server.url, kind) as client:
        resp = client.request("GET", "/secure")
    assert resp.status == 200
    assert json.loads(resp.body)["path"] == "/secure"


def test_https_with_curl_ca_bundle(kind: str, https_server: LocalServer, certs: dict[str, Path],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``CURL_CA_BUNDLE`` is the fallback name requests honours; the module doc promises it for both clients."""
    monkeypatch.setenv("CURL_CA_BUNDLE", str(certs["ca"]))
    with client_for(https_server.url, kind) as client:
        resp = client.request("GET", "/secure")
    assert resp.status == 200


def test_https_without_the_ca_is_refused(kind: str, https_server: LocalServer) -> None:
    """Verification is always on: with no bundle naming our CA the handshake fails, and the failure is a
    ``connect`` error that was never sent (safe to retry, nothing reached the vendor)."""
    with client_for(https_server.url, kind) as client, pytest.raises(TransportError) as err:
        client.request("POST", "/secure", b"{}")
    assert err.value.kind == "connect"
    assert err.value.maybe_sent is False
    assert https_server.seen == [], "the request must not have been delivered over an unverified connection"


# -------------------------------------------------------------------------------------------------- 3 proxies


def test_http_proxy_is_used_for_http(kind: str, http_server: LocalServer, proxy: LocalServer,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``HTTP_PROXY`` (uppercase, as requests users set it) routes http:// requests through the proxy as
    absolute-URI requests; the server still gets them and answers, and the kept-alive proxy connection is reused."""
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    with client_for(http_server.url, kind) as client:
        first = client.request("GET", "/x")
        second = client.request("POST", "/y", b'{"a": 1}')
    assert (first.status, second.status) == (200, 200)
    assert [r["target"] for r in proxy.seen] == [f"{http_server.url}/x", f"{http_server.url}/y"]
    assert [(r["method"], r["path"], r["body"]) for r in http_server.seen] == [("GET", "/x", b""),
                                                                               ("POST", "/y", b'{"a": 1}')]
    assert proxy.connections == 1


def test_no_proxy_bypasses_the_proxy(kind: str, http_server: LocalServer, proxy: LocalServer,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``NO_PROXY=127.0.0.1`` sends requests for that host direct, even with ``HTTP_PROXY`` set."""
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with client_for(http_server.url, kind) as client:
        assert client.request("GET", "/direct").status == 200
    assert proxy.seen == [] and proxy.connections == 0
    assert [r["path"] for r in http_server.seen] == ["/direct"]


def test_https_proxy_only_applies_to_https(kind: str, http_server: LocalServer, proxy: LocalServer,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The proxy is picked per URL scheme: ``HTTPS_PROXY`` alone leaves http:// requests direct."""
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    with client_for(http_server.url, kind) as client:
        assert client.request("GET", "/plain").status == 200
    assert proxy.seen == []


def test_https_proxy_tunnels_with_connect(kind: str, https_server: LocalServer, proxy: LocalServer,
                                          certs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """``HTTPS_PROXY`` makes https:// requests go through a CONNECT tunnel: the proxy sees only CONNECT
    host:port (never the path), TLS is end to end and still verified against the CA bundle, and the tunnel is
    kept alive for the next request."""
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certs["ca"]))
    with client_for(https_server.url, kind) as client:
        assert client.request("GET", "/tunnelled").status == 200
        assert client.request("POST", "/tunnelled/2", b"{}").status == 200
    assert proxy.seen == [{"method": "CONNECT", "target": f"127.0.0.1:{https_server.server_port}"}]
    assert [r["path"] for r in https_server.seen] == ["/tunnelled", "/tunnelled/2"]


def test_https_proxy_tunnel_still_verifies(kind: str, https_server: LocalServer, proxy: LocalServer,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Going through a tunnel does not switch verification off: without the CA it is a never-sent connect error."""
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    with client_for(https_server.url, kind) as client, pytest.raises(TransportError) as err:
        client.request("GET", "/tunnelled")
    assert (err.value.kind, err.value.maybe_sent) == ("connect", False)
    assert https_server.seen == []


# ------------------------------------------------------------------------------------- 4 one TLS context


def test_one_tls_context_for_base_and_absolute_urls(https_server: LocalServer, server_tls: ssl.SSLContext,
                                                    certs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading a CA bundle costs milliseconds, so the stdlib client builds one verified context and shares it
    across connections, including absolute (presigned upload) URLs on another host:port."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certs["ca"]))
    built: list[ssl.SSLContext] = []
    real = transport.tls_context

    def counting() -> ssl.SSLContext:
        ctx = real()
        built.append(ctx)
        return ctx

    monkeypatch.setattr(transport, "tls_context", counting)
    with serving(JsonHandler, server_tls) as uploads, client_for(https_server.url, "stdlib") as client:
        assert isinstance(client, StdlibClient)
        assert client.request("GET", "/api").status == 200
        assert client.request("PUT", "", b"blob", absolute_url=f"{uploads.url}/bucket/key?sig=1").status == 200
        assert client.request("GET", "/api/again").status == 200
        assert [r["path"] for r in uploads.seen] == ["/bucket/key?sig=1"]
        conns = list(client._local.pool.values())
        assert len(conns) == 2, "one kept-alive connection per host:port"
        assert all(c._context is client._tls for c in conns)
    assert len(built) == 1, f"{len(built)} TLS contexts built for one client"
    assert https_server.connections == 1


def test_the_requests_client_shares_one_tls_context_too(https_server: LocalServer, server_tls: ssl.SSLContext,
                                                       certs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """urllib3 would build a context per connection; the requests client hands its pools one."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certs["ca"]))
    built: list[ssl.SSLContext] = []
    real = transport.tls_context

    def counting() -> ssl.SSLContext:
        ctx = real()
        built.append(ctx)
        return ctx

    monkeypatch.setattr(transport, "tls_context", counting)
    with serving(JsonHandler, server_tls) as uploads, client_for(https_server.url, "requests") as client:
        assert client.request("GET", "/api").status == 200
        assert client.request("PUT", "", b"blob", absolute_url=f"{uploads.url}/bucket/key").status == 200
        assert client.request("GET", "/api/again").status == 200
    assert len(built) == 1, f"{len(built)} TLS contexts built for one client"


def test_absolute_urls_work_on_both_transports(kind: str, https_server: LocalServer, server_tls: ssl.SSLContext,
                                               certs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A presigned URL on another host:port is requested as given (path and query untouched), verified against
    the same CA bundle, without the JSON Content-Type the API calls get."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certs["ca"]))
    with serving(JsonHandler, server_tls) as uploads, client_for(https_server.url, kind) as client:
        assert client.request("PUT", "", b"blob", absolute_url=f"{uploads.url}/b/k?X-Sig=a%2Fb").status == 200
        assert client.request("GET", "/api").status == 200
    assert [(r["method"], r["path"], r["body"]) for r in uploads.seen] == [("PUT", "/b/k?X-Sig=a%2Fb", b"blob")]
    assert [r["path"] for r in https_server.seen] == ["/api"]


# --------------------------------------------------------------------------------- 5 error classification


def test_closed_port_is_a_never_sent_connect_error(kind: str) -> None:
    """Nothing listening: the request cannot have reached anyone, so it is safe to resend."""
    with client_for(f"http://127.0.0.1:{free_port()}", kind) as client, pytest.raises(TransportError) as err:
        client.request("POST", "/x", b"{}")
    assert (err.value.kind, err.value.maybe_sent) == ("connect", False)


def test_server_closing_after_reading_is_maybe_sent(kind: str) -> None:
    """The server read the whole request and hung up without a status line: the vendor may have stored it."""
    with (
        raw_server(lambda conn, stop: None) as port,
        client_for(f"http://127.0.0.1:{port}", kind) as client,
        pytest.raises(TransportError) as err,
    ):
        client.request("POST", "/x", b'{"a": 1}')
    assert err.value.maybe_sent is True
    assert err.value.kind == "dropped"


def test_server_never_answering_is_a_maybe_sent_timeout(kind: str) -> None:
    """The request went out and no answer came within the client's timeout: kind ``timeout``, maybe sent. The
    client must give up close to its 0.5 s timeout, not hang."""
    def hang(conn: socket.socket, stop: threading.Event) -> None:
        stop.wait(10)

    with raw_server(hang) as port, client_for(f"http://127.0.0.1:{port}", kind, timeout=0.5) as client:
        started = time.monotonic()
        with pytest.raises(TransportError) as err:
            client.request("POST", "/x", b'{"a": 1}')
        elapsed = time.monotonic() - started
    assert (err.value.kind, err.value.maybe_sent) == ("timeout", True)
    assert 0.4 <= elapsed < 3.0
