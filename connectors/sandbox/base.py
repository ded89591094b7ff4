"""The emulator framework: routes, strict auth, documented rate limits, fault injection and records.

An emulator declares routes; the framework applies, in order: the strict JSON parse of the body (JSON
routes: counted in ``invalid_json`` whatever the answer), the endpoint's fault (if one is set), its
documented rate limit (sliding window per credential, 429 when exceeded), then the handler. Every request
is counted per endpoint, with the largest batch seen and the most requests seen in any rate window, so a
test can assert that syncline stayed inside the documented limits, measured at the server.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import re
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

_UNPARSED: Any = object()  # Request._parsed before the body was parsed


@dataclass
class Request:
    method: str
    path: str  # below the emulator's prefix, e.g. "/publish_events"
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes
    params: dict[str, str] = field(default_factory=dict)  # named groups of the route pattern
    invalid_json: str | None = None  # why the body did not parse, once :meth:`json` refused it
    _parsed: Any = field(default=_UNPARSED, repr=False)  # the body's value, once parsed
    _refusal: ValueError | None = field(default=None, repr=False)  # why it did not parse, once tried

    def json(self) -> Any:
        """The body parsed strictly, as a validating server would: see :func:`strict_json`. Parsed once:
        a later call returns the same value (or raises the same error)."""
        if self._refusal is not None:
            raise self._refusal
        if self._parsed is not _UNPARSED:
            return self._parsed
        try:
            self._parsed = strict_json(self.body)
        except ValueError as exc:
            self.invalid_json = f"{exc.__class__.__name__}: {exc}"
            self._refusal = exc
            raise
        return self._parsed

    def claims_json(self) -> bool:
        """Whether the ``Content-Type`` says the body is JSON (``application/json``, ``*/*+json``...)."""
        return "json" in self.headers.get("content-type", "").lower()

    def arg(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def bearer(self) -> str | None:
        auth = self.headers.get("authorization", "")
        return auth[7:] if auth.lower().startswith("bearer ") else None


@dataclass
class Response:
    status: int
    body: Any = None  # JSON-able, or bytes sent as is
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        return json.dumps(self.body).encode()


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ValueError(f"duplicate object key {dup!r}")
    return found


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _check_surrogates(value: Any) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            item.encode("utf-8")  # UnicodeEncodeError (a ValueError) on a lone surrogate
        elif isinstance(item, dict):
            for key, member in item.items():
                key.encode("utf-8")
                stack.append(member)
        elif isinstance(item, list):
            stack.extend(item)


def strict_json(body: bytes) -> Any:
    """Parse a request body as a strict server does, raising ``ValueError`` on anything that is not JSON
    (RFC 8259) in UTF-8: ``NaN``/``Infinity``/``-Infinity`` (Python's json accepts them), invalid UTF-8,
    a lone surrogate escape such as ``"\\ud800"`` (a Postgres ``jsonb`` or Go service refuses it), a number
    too large for a double such as ``1e400`` (Python would read Infinity; serde_json and Go refuse it), and
    an object with the same key twice (which key wins differs between parsers, so a careful server refuses)."""
    text = body.decode("utf-8")  # UnicodeDecodeError is a ValueError
    value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite, object_pairs_hook=_unique_keys)
    if _SURROGATE_ESCAPE.search(body):
        _check_surrogates(value)
    return value


class Drop(Exception):
    """Raised by the fault layer to close the connection without an answer."""


@dataclass(frozen=True)
class RateRule:
    requests: int
    per_seconds: float
    key: Callable[[Request], str | None]  # which credential the limit is counted against


@dataclass
class Route:
    method: str
    pattern: str  # regex over Request.path, with named groups
    handler: Callable[[Request], Response]
    endpoint: str  # a stable name for records, faults and stats, e.g. "publish_events"
    rate: RateRule | None = None
    # Whether the route takes JSON bodies: then every non-empty body of a POST/PUT/PATCH, and any body whose
    # Content-Type claims JSON, is parsed strictly before faults, rate limits and auth decide the answer
    # (see ``Emulator._handle``). False for routes whose bodies are not JSON (presigned binary uploads).
    json_body: bool = True
    regex: re.Pattern[str] = field(init=False)

    def __post_init__(self) -> None:
        self.regex = re.compile(f"^{self.pattern}$")


@dataclass
class Fault:
    """Misbehave on the next ``count`` requests of an endpoint (after letting ``after`` through).

    modes:

    - ``429`` (Retry-After seconds), ``429_date`` (Retry-After HTTP-date), ``429_bare`` (no header);
    - ``500``, ``503``: answer the error without handling (nothing stored);
    - ``store_500``, ``store_503``: handle and store, then answer the error instead of the real answer
      (the client sees a 5xx for a request that landed);
    - ``slow``: sleep ``delay``, then handle and answer normally (stored *after* the sleep);
    - ``timeout``: handle and store at once, then sleep ``delay`` before answering; with ``delay`` over the
      client's timeout the client gives up on a request that landed (the answer goes nowhere);
    - ``hang``: sleep ``delay``, then close without handling (a vendor that never answers, nothing stored);
    - ``drop``: close the connection before handling (nothing stored);
    - ``drop_after`` (alias ``store_drop``): handle and store, then close without answering;
    - ``reject_matching``: answer the endpoint's validation error if the body contains ``match``;
    - ``echo_500``, ``echo_400``: answer 500 / 400 with the request's headers, query and body echoed back
      (a vendor whose error page quotes the request, credentials included: tests the client's redaction).

    ``count`` requests are affected after letting ``after`` through (counted per endpoint from when the
    fault is set); ``count=-1`` affects every request from then on. Sleeps are bounded by ``delay``
    (at most :data:`MAX_DELAY` seconds) so a test can never hang on the sandbox.
    """

    mode: str
    count: int = 1
    after: int = 0
    retry_after: float = 1.0
    delay: float = 0.0
    match: str = ""

    MODES = ("429", "429_date", "429_bare", "500", "503", "store_500", "store_503", "slow", "timeout", "hang",
             "drop", "drop_after", "store_drop", "reject_matching", "echo_500", "echo_400")
    MAX_DELAY = 120.0

    def __post_init__(self) -> None:
        if self.mode not in self.MODES:
            raise ValueError(f"unknown fault mode {self.mode!r} (known: {', '.join(self.MODES)})")
        if self.count < -1 or self.after < 0:
            raise ValueError("fault count must be >= -1 (-1: every request) and after >= 0")
        if not 0 <= self.delay <= self.MAX_DELAY:
            raise ValueError(f"fault delay must be between 0 and {self.MAX_DELAY:g} seconds")
        if self.mode in ("timeout", "hang") and self.delay <= 0:
            raise ValueError(f"fault mode {self.mode} needs a delay (seconds, over the client's timeout)")

    def applies(self, seen: int) -> bool:
        """Whether the request numbered ``seen`` (0-based, since the fault was set) misbehaves."""
        return seen >= self.after and (self.count == -1 or seen < self.after + self.count)


@dataclass
class EndpointStats:
    requests: int = 0
    by_status: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    max_items_per_request: int = 0
    items_accepted: int = 0
    rate_limited: int = 0  # 429s the documented limit caused (not injected faults)
    dropped: int = 0  # connections closed without an answer (drop faults)
    invalid_json: int = 0  # request bodies that are not strict JSON (see strict_json): a client bug
    max_in_window: int = 0  # most requests one credential sent within any rate window
    first_at: float = 0.0
    last_at: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "by_status": dict(self.by_status),
            "max_items_per_request": self.max_items_per_request,
            "items_accepted": self.items_accepted,
            "rate_limited": self.rate_limited,
            "dropped": self.dropped,
            "invalid_json": self.invalid_json,
            "max_in_window": self.max_in_window,
            "first_at": self.first_at,
            "last_at": self.last_at,
        }


class Emulator:
    """Base class. Subclasses set ``vendor`` and ``keys`` and return their routes from :meth:`routes`."""

    vendor: str = ""
    keys: dict[str, str] = {}  # credential name -> the sandbox's accepted value
    BODY_BUDGET = 64_000_000  # bytes of request bodies kept for tests (see ``bodies``)

    def __init__(self, record_items: bool = True, base_url: str = "") -> None:
        self.record_items = record_items
        self.base_url = base_url  # set by the server once the port is known
        self.lock = threading.RLock()
        self.records: dict[str, list[Any]] = defaultdict(list)
        self.request_log: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.stats: dict[str, EndpointStats] = defaultdict(EndpointStats)
        self.faults: dict[str, Fault] = {}
        self._fault_seen: dict[str, int] = defaultdict(int)
        self.active = 0  # requests being handled right now (a test waits for 0 before counting what landed)
        self.invalid_bodies: list[dict[str, Any]] = []  # the first bodies that were not strict JSON, and why
        # Every request body as it arrived, with the status answered (``record_items`` only, up to
        # BODY_BUDGET bytes in all): a test compares bytes on the wire with what the model wrote.
        self.bodies: dict[str, list[tuple[int, bytes]]] = defaultdict(list)
        self._body_bytes = 0
        self._windows: dict[tuple[str, str], deque[float]] = defaultdict(deque)
        self._routes = self.routes()

    # -- for subclasses ------------------------------------------------------------------------------------
    def routes(self) -> list[Route]:
        raise NotImplementedError

    def validation_error(self, endpoint: str, message: str) -> Response:
        """The vendor's documented validation-error answer (used by ``reject_matching`` faults too)."""
        return Response(400, {"error": message})

    def record(self, endpoint: str, items: list[Any]) -> None:
        with self.lock:
            stats = self.stats[endpoint]
            stats.items_accepted += len(items)
            if self.record_items:
                self.records[endpoint].extend(items)

    def reset(self) -> None:
        with self.lock:
            self.records.clear()
            self.request_log.clear()
            self.stats.clear()
            self.faults.clear()
            self._fault_seen.clear()
            self._windows.clear()
            self.invalid_bodies.clear()
            self.bodies.clear()
            self._body_bytes = 0
            self.reset_state()

    def reset_state(self) -> None:
        """Clear vendor-specific state (stored feedback, uploads...)."""

    # The bodies a validation error may take where the document does not show one: the first is the
    # default, and the control ``error_shape {"shape": ...}`` picks another, so a test shows the connector
    # reads any of them (set ``self.error_shape`` in ``reset_state``).
    error_shapes: tuple[str, ...] = ()
    error_shape: str = ""

    def control(self, action: str, args: dict[str, Any]) -> Any:
        """Vendor-specific test controls (e.g. Flux ``drop_events``), reachable over HTTP at
        ``POST /_sandbox/control {"vendor", "action", "args"}``. Return something JSON-able."""
        if action == "error_shape" and self.error_shapes:
            shape = str(args.get("shape", self.error_shapes[0]))
            if shape not in self.error_shapes:
                raise ValueError(f"unknown error shape {shape!r} (known: {', '.join(self.error_shapes)})")
            with self.lock:
                self.error_shape = shape
            return {"error_shape": shape}
        raise ValueError(f"{self.vendor} emulator has no control action {action!r}")

    # -- dispatch --------------------------------------------------------------------------------------------
    def dispatch(self, request: Request) -> Response:
        for route in self._routes:
            match = route.regex.match(request.path)
            if match and route.method == request.method:
                request.params = match.groupdict()
                return self._handle(route, request)
        known = any(r.regex.match(request.path) for r in self._routes)
        return Response(405 if known else 404, {"error": "method not allowed" if known else "not found"})

    @staticmethod
    def _parse_body(route: Route, request: Request) -> None:
        """Parse a JSON body strictly before anything decides the answer, so a body that is not strict JSON
        is counted in ``invalid_json`` whatever the answer (a fault, a 429, an auth refusal, a drop): a
        client that retries or is refused still must never send NaN. The answer is not changed here; the
        handler, if it runs, gets the parsed value (or the same error) from ``request.json()``."""
        if not route.json_body or not request.body:
            return
        if request.method in ("POST", "PUT", "PATCH") or request.claims_json():
            with contextlib.suppress(ValueError):
                request.json()

    def _handle(self, route: Route, request: Request) -> Response:
        now = time.time()  # the arrival, for rate windows
        name = route.endpoint
        with self.lock:
            stats = self.stats[name]
            stats.requests += 1
            stats.first_at = stats.first_at or now
            stats.last_at = now
            self.request_log[name].append(
                {"at": now, "method": request.method, "path": request.path, "query": request.query,
                 "headers": {k: v for k, v in request.headers.items() if k in ("authorization", "x-api-key")},
                 "bytes": len(request.body)}
            )
            fault = self.faults.get(name)
            active = None
            if fault is not None:
                seen = self._fault_seen[name]
                self._fault_seen[name] = seen + 1
                if fault.applies(seen):
                    active = fault
            self.active += 1
        try:
            response = self._apply_fault(active, route, request, now) if active else None
            if response is None:
                response = self._rate_check(route, request, now) or route.handler(request)
        except Drop:
            with self.lock:
                stats.dropped += 1
            raise
        finally:
            # Parsed after the answer (a handler that ran has parsed it already: cached), so the strict
            # check counts bodies a fault, a 429 or an auth refusal answered without adding time before them.
            self._parse_body(route, request)
            with self.lock:
                self.active -= 1
                if request.invalid_json is not None:
                    stats.invalid_json += 1
                    if len(self.invalid_bodies) < 20:
                        self.invalid_bodies.append(
                            {"endpoint": name, "why": request.invalid_json, "body": request.body[:4000]})
        with self.lock:
            stats.by_status[response.status] += 1
            if self.record_items and self._body_bytes + len(request.body) <= self.BODY_BUDGET:
                self._body_bytes += len(request.body)
                self.bodies[name].append((response.status, request.body))
        return response

    def _apply_fault(self, fault: Fault, route: Route, request: Request, now: float) -> Response | None:
        mode = fault.mode
        if mode == "429":
            return Response(429, {"error": "rate limited"}, {"Retry-After": f"{fault.retry_after:g}"})
        if mode == "429_date":
            from email.utils import formatdate

            return Response(429, {"error": "rate limited"}, {"Retry-After": formatdate(time.time() + fault.retry_after, usegmt=True)})
        if mode == "429_bare":
            return Response(429, {"error": "rate limited"})
        if mode in ("500", "503"):
            return Response(int(mode), {"error": "internal error"})
        if mode in ("store_500", "store_503"):
            self._rate_check(route, request, now) or route.handler(request)
            return Response(int(mode[-3:]), {"error": "internal error"})
        if mode == "slow":
            time.sleep(fault.delay)
            return None
        if mode == "timeout":
            response = self._rate_check(route, request, now) or route.handler(request)
            time.sleep(fault.delay)
            return response
        if mode == "hang":
            time.sleep(fault.delay)
            raise Drop()
        if mode == "drop":
            raise Drop()
        if mode in ("drop_after", "store_drop"):
            self._rate_check(route, request, now) or route.handler(request)
            raise Drop()
        if mode in ("echo_500", "echo_400"):
            return Response(int(mode[-3:]), {
                "error": "request refused", "headers": request.headers, "query": request.query,
                "body": request.body.decode("utf-8", "replace")[:2000],
            })
        if mode == "reject_matching" and fault.match and fault.match.encode() in request.body:
            return self.validation_error(route.endpoint, f"item refused by server-side rule ({fault.match!r})")
        return None

    def _rate_check(self, route: Route, request: Request, now: float) -> Response | None:
        rule = route.rate
        if rule is None:
            return None
        key = rule.key(request)
        if key is None:
            return None
        with self.lock:
            window = self._windows[(route.endpoint, key)]
            while window and window[0] <= now - rule.per_seconds:
                window.popleft()
            if len(window) >= rule.requests:
                self.stats[route.endpoint].rate_limited += 1
                retry = max(0.0, window[0] + rule.per_seconds - now)
                return self.rate_limited(route.endpoint, retry)
            window.append(now)
            stats = self.stats[route.endpoint]
            stats.max_in_window = max(stats.max_in_window, len(window))
        return None

    def rate_limited(self, endpoint: str, retry_after: float) -> Response:
        return Response(429, {"error": "Too Many Requests"}, {"Retry-After": str(max(1, round(retry_after + 0.5)))})

    def note_batch(self, endpoint: str, items: int) -> None:
        with self.lock:
            stats = self.stats[endpoint]
            stats.max_items_per_request = max(stats.max_items_per_request, items)


def is_iso_datetime(value: Any, *, require_offset: bool = True) -> bool:
    """An ISO 8601 / RFC 3339 date-time string (``T`` or space between date and time, ``Z`` or ``±hh:mm``)."""
    if not isinstance(value, str) or len(value) < 16 or value[10] not in "Tt ":
        return False
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return False
    return parsed.tzinfo is not None or not require_offset


def parse_query(raw: str) -> dict[str, list[str]]:
    return parse_qs(raw, keep_blank_values=True)
