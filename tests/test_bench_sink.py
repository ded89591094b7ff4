"""The benchmark sink (``benchmarks/sink.py``) is the judge of every figure in docs/performance.md: a run
counts only when the sink's item count and checksum equal what the source file says. So it must refuse
what a strict ingestion server refuses, count only what it accepted, and agree with the harness's own
checksum formula. Driven over real HTTP on 127.0.0.1, the sink in its own process as the benchmark runs it.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.bench_compare import Sink
from benchmarks.sink import MASK, item_hash, timestamp_micros


@pytest.fixture
def sink_url(tmp_path: Path) -> Iterator[str]:
    """The sink as the harness starts it (``bench_compare.Sink``: its own process, a free port)."""
    sink = Sink(0, tmp_path / "sink.log")
    try:
        yield sink.url
    finally:
        sink.close()


def _call(url: str, method: str, path: str, body: bytes | None = None,
          headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url + path, method=method, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, dict(json.load(resp))
    except urllib.error.HTTPError as exc:
        return exc.code, dict(json.loads(exc.read() or b"{}"))


def _post(url: str, body: bytes, key: str | None = "k") -> int:
    headers = {"Content-Type": "application/json", **({"x-api-key": key} if key else {})}
    return _call(url, "POST", "/publish", body, headers)[0]


ITEMS: list[dict[str, Any]] = [
    {"user_id": "u1", "event": "open", "timestamp": "2026-06-01T00:00:00.000+00:00",
     "properties": {"$thread_id": "t1", "plan": "pro"}},
    {"user_id": "u2", "event": "close", "timestamp": "2026-06-01T02:00:00.123456+02:00"},
]


def test_sink_counts_and_checksums_what_it_accepts(sink_url: str) -> None:
    assert _post(sink_url, json.dumps(ITEMS).encode()) == 200
    _, stats = _call(sink_url, "GET", "/_stats")
    expected = sum(item_hash(i["user_id"], i["event"], timestamp_micros(i["timestamp"]),
                             i.get("properties", {}).get("$thread_id")) for i in ITEMS) & MASK
    assert (stats["items"], stats["requests"], stats["rejected_requests"]) == (2, 1, 0)
    assert stats["checksum"] == expected
    # The same instant spelled differently hashes the same: contenders format timestamps their own way.
    assert timestamp_micros("2026-06-01T00:00:00+00:00") == timestamp_micros("2026-05-31T22:00:00.000-02:00")
    assert stats["cpu_s"] >= 0.0
    assert _call(sink_url, "POST", "/_reset", b"")[0] == 200
    _, stats = _call(sink_url, "GET", "/_stats")
    assert (stats["items"], stats["checksum"], stats["requests"]) == (0, 0, 0)


@pytest.mark.parametrize("body, why", [
    (b'[{"user_id": "u", "event": "e", "timestamp": "2026-06-01T00:00:00+00:00", "properties": {"x": NaN}}]',
     "NaN is not JSON"),
    (b'[{"user_id": "u", "event": "e", "timestamp": "2026-06-01T00:00:00+00:00", "n": Infinity}]',
     "Infinity is not JSON"),
    (b'[{"user_id": "u", "event": "e", "timestamp": "2026-06-01T00:00:00"}]', "a timestamp without an offset"),
    (b'[{"user_id": "u", "timestamp": "2026-06-01T00:00:00+00:00"}]', "no event"),
    (b'{"user_id": "u", "event": "e", "timestamp": "2026-06-01T00:00:00+00:00"}', "an object, not an array"),
    (b"[]", "an empty array"),
    (json.dumps([ITEMS[1]] * 101).encode(), "101 items"),
    (b'[{"user_id": "u", "event": "e", "timestamp": "2026-06-01T00:00:00+00:00"}', "truncated JSON"),
])
def test_sink_refuses_what_a_strict_server_refuses(sink_url: str, body: bytes, why: str) -> None:
    assert _post(sink_url, body) == 422, why
    _, stats = _call(sink_url, "GET", "/_stats")
    assert (stats["items"], stats["checksum"], stats["rejected_requests"]) == (0, 0, 1), why


def test_sink_refuses_a_request_without_its_key(sink_url: str) -> None:
    assert _post(sink_url, json.dumps(ITEMS).encode(), key=None) == 401
    _, stats = _call(sink_url, "GET", "/_stats")
    assert (stats["items"], stats["rejected_requests"]) == (0, 1)
