"""A fast counting sink for ``bench_compare.py``: a Trubrics-shaped ingestion endpoint on 127.0.0.1.

    .venv/bin/python benchmarks/sink.py --port 8799 [--delay-ms 100]

Why not the project's sandbox or ``http.server``: the comparison needs a sink that is never the
bottleneck (64+ keep-alive connections, thousands of requests/s on one core) and that can *prove* what
arrived. So this is an ``asyncio.Protocol`` with just enough HTTP/1.1 (request line, headers,
Content-Length bodies, keep-alive, pipelining) and, per item, an order-independent checksum:

    sum over items of item_hash(user_id, event, timestamp, $thread_id)  mod 2**64

The timestamp is hashed as the instant it names (microseconds since the epoch), not its spelling, so
``...00.000+00:00`` and ``...00+00:00`` agree; a timestamp without an offset is refused. The harness
computes the same sum from the source Parquet file (``item_hash`` is imported from here) and marks a
run invalid when count or checksum differ.

Endpoints: ``POST <any path>`` ingests (200 ``{"status":"success"}``, 422 if the body is not a strict
JSON array of 1-100 objects with user_id/event/timestamp, 401 without ``x-api-key``);
``GET /_stats`` returns counters (and ``cpu_s``, the sink's own CPU seconds since the last reset);
``POST /_reset`` zeroes them.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import json
import signal
import time
from typing import Any

MASK = 2**64 - 1
MAX_ITEMS = 100
MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 8 * 1024 * 1024
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def timestamp_micros(value: str) -> int:
    """Microseconds since the epoch of an ISO 8601 timestamp that carries an offset (else ValueError)."""
    parsed = dt.datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError("timestamp has no UTC offset")
    return (parsed - _EPOCH) // dt.timedelta(microseconds=1)


def item_hash(user_id: str, event: str, micros: int, thread_id: str | None) -> int:
    """64-bit hash of one item's identity; shared with the harness so both sides use one formula."""
    text = f"{user_id}|{event}|{micros}|{thread_id if thread_id is not None else ''}"
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def check_body(body: bytes) -> tuple[int, int]:
    """(items, checksum contribution) of a valid request body; ValueError with a reason otherwise."""
    data = json.loads(body, parse_constant=_no_constants)
    if not isinstance(data, list) or not data:
        raise ValueError("body must be a non-empty JSON array")
    if len(data) > MAX_ITEMS:
        raise ValueError(f"at most {MAX_ITEMS} items per request, got {len(data)}")
    total = 0
    for item in data:
        if not isinstance(item, dict):
            raise ValueError("every item must be an object")
        user_id, event, timestamp = item.get("user_id"), item.get("event"), item.get("timestamp")
        if not isinstance(user_id, str) or not isinstance(event, str) or not isinstance(timestamp, str):
            raise ValueError("user_id, event and timestamp are required strings")
        properties = item.get("properties")
        thread_id = properties.get("$thread_id") if isinstance(properties, dict) else None
        total += item_hash(user_id, event, timestamp_micros(timestamp), thread_id)
    return len(data), total & MASK


class Stats:
    """Counters shared by every connection (one event loop, so no locking)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.items = 0
        self.checksum = 0
        self.requests = 0
        self.rejected_requests = 0
        self.connections = 0
        self.max_in_flight = 0
        self.in_flight = 0
        self.cpu_at_reset = time.process_time()

    def as_json(self) -> bytes:
        # cpu_s: this process's CPU since the reset. The sink shares the machine's cores with the
        # contender, so a contender's events/s is bounded by both CPU figures (see docs/performance.md).
        return json.dumps({
            "items": self.items, "checksum": self.checksum, "requests": self.requests,
            "rejected_requests": self.rejected_requests, "connections": self.connections,
            "max_in_flight": self.max_in_flight, "cpu_s": round(time.process_time() - self.cpu_at_reset, 3),
        }).encode()


def _response(status: int, reason: str, body: bytes, keep_alive: bool) -> bytes:
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{'' if keep_alive else 'Connection: close' + chr(13) + chr(10)}\r\n")
    return head.encode() + body


OK_BODY = b'{"status":"success"}'


class SinkProtocol(asyncio.Protocol):
    """One connection: parse requests off the buffer in order; answer them in order (pipelining-safe)."""

    def __init__(self, stats: Stats, delay: float) -> None:
        self.stats = stats
        self.delay = delay
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.queue: asyncio.Queue[tuple[float, bytes, bool]] | None = None
        self.writer_task: asyncio.Task[None] | None = None
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.stats.connections += 1
        if self.delay:
            self.queue = asyncio.Queue()
            self.writer_task = asyncio.get_running_loop().create_task(self._delayed_writer())

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self.writer_task is not None:
            self.writer_task.cancel()

    async def _delayed_writer(self) -> None:
        """Answers in request order, each ``delay`` after it arrived (arrivals overlap, so no pile-up)."""
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        while True:
            due, response, keep_alive = await self.queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self.stats.in_flight -= 1
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(response)
                if not keep_alive:
                    self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while not self.closing:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEADER_BYTES:
                    self._send(_response(431, "Request Header Fields Too Large", b"{}", False), False)
                return
            head = bytes(self.buffer[:end]).decode("latin-1")
            lines = head.split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3:
                self._send(_response(400, "Bad Request", b'{"error":"bad request line"}', False), False)
                return
            method, target, version = parts
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self._send(_response(411, "Length Required", b'{"error":"send Content-Length"}', False), False)
                return
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                length = -1
            if length < 0 or length > MAX_BODY_BYTES:
                self._send(_response(413, "Content Too Large", b'{"error":"bad Content-Length"}', False), False)
                return
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4:end + 4 + length])
            del self.buffer[:end + 4 + length]
            connection = headers.get("connection", "").lower()
            keep_alive = connection != "close" and (version == "HTTP/1.1" or connection == "keep-alive")
            self._handle(method, target.split("?", 1)[0], headers, body, keep_alive)

    def _handle(self, method: str, path: str, headers: dict[str, str], body: bytes, keep_alive: bool) -> None:
        stats = self.stats
        if path == "/_stats" and method == "GET":
            self._send(_response(200, "OK", stats.as_json(), keep_alive), keep_alive)
            return
        if path == "/_reset" and method == "POST":
            stats.reset()
            self._send(_response(200, "OK", b'{"reset":true}', keep_alive), keep_alive)
            return
        if method != "POST":
            self._send(_response(405, "Method Not Allowed", b'{"error":"POST only"}', keep_alive), keep_alive)
            return
        stats.requests += 1
        if not headers.get("x-api-key"):
            stats.rejected_requests += 1
            response = _response(401, "Unauthorized", b'{"error":"missing x-api-key"}', keep_alive)
        else:
            try:
                items, checksum = check_body(body)
            except (ValueError, RecursionError) as exc:
                stats.rejected_requests += 1
                reason = json.dumps({"error": str(exc)[:200]}).encode()
                response = _response(422, "Unprocessable Entity", reason, keep_alive)
            else:
                stats.items += items
                stats.checksum = (stats.checksum + checksum) & MASK
                response = _response(200, "OK", OK_BODY, keep_alive)
        if self.queue is not None:
            stats.in_flight += 1
            stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
            due = asyncio.get_running_loop().time() + self.delay
            self.queue.put_nowait((due, response, keep_alive))
        else:
            self._send(response, keep_alive)

    def _send(self, response: bytes, keep_alive: bool) -> None:
        if self.queue is not None:
            # Keep answers in order behind any delayed ones on this connection.
            self.stats.in_flight += 1
            self.queue.put_nowait((0.0, response, keep_alive))
        elif self.transport is not None:
            self.transport.write(response)
            if not keep_alive:
                self.transport.close()
        if not keep_alive:
            self.closing = True


async def serve(port: int, delay_ms: float) -> None:
    loop = asyncio.get_running_loop()
    stats = Stats()
    server = await loop.create_server(
        lambda: SinkProtocol(stats, delay_ms / 1000.0), "127.0.0.1", port, backlog=1024, reuse_address=True,
    )
    stop = loop.create_future()
    def request_stop() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop)
    print(f"sink listening on 127.0.0.1:{port} delay_ms={delay_ms}", flush=True)
    async with server:
        await stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="answer each request after this delay")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.delay_ms))


if __name__ == "__main__":
    main()
