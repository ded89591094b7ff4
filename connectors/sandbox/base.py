"""The emulator framework: routes, strict auth, documented rate limits, fault injection and records.

An emulator declares routes; the framework applies, in order: the endpoint's fault (if one is set), its
documented rate limit (sliding window per credential, 429 when exceeded), then the handler. Every request
is counted per endpoint, with the largest batch seen and the most requests seen in any rate window, so a
test can assert that syncline stayed inside the documented limits, measured at the server.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs


@dataclass
class Request:
    method: str
    path: str  # below the emulator's prefix, e.g. "/publish_events"
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes
    params: dict[str, str] = field(default_factory=dict)  # named groups of the route pattern

    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))

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
    regex: re.Pattern[str] = field(init=False)

    def __post_init__(self) -> None:
        self.regex = re.compile(f"^{self.pattern}$")


@dataclass
class Fault:
    """Misbehave on the next ``count`` requests of an endpoint (after letting ``after`` through).

    modes: ``429`` (Retry-After seconds), ``429_date`` (Retry-After HTTP-date), ``429_bare`` (no header),
    ``500``, ``503``, ``slow`` (sleep ``delay`` then answer normally), ``drop`` (close before handling),
    ``drop_after`` (handle, record, then close without answering: the client cannot know it landed),
    ``reject_matching`` (answer the endpoint's validation error if the body contains ``match``).
    """

    mode: str
    count: int = 1
    after: int = 0
    retry_after: float = 1.0
    delay: float = 0.0
    match: str = ""

    MODES = ("429", "429_date", "429_bare", "500", "503", "slow", "drop", "drop_after", "reject_matching")

    def __post_init__(self) -> None:
        if self.mode not in self.MODES:
            raise ValueError(f"unknown fault mode {self.mode!r} (known: {', '.join(self.MODES)})")


@dataclass
class EndpointStats:
    requests: int = 0
    by_status: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    max_items_per_request: int = 0
    items_accepted: int = 0
    rate_limited: int = 0  # 429s the documented limit caused (not injected faults)
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
            "max_in_window": self.max_in_window,
            "first_at": self.first_at,
            "last_at": self.last_at,
        }


class Emulator:
    """Base class. Subclasses set ``vendor`` and ``keys`` and return their routes from :meth:`routes`."""

    vendor: str = ""
    keys: dict[str, str] = {}  # credential name -> the sandbox's accepted value

    def __init__(self, record_items: bool = True, base_url: str = "") -> None:
        self.record_items = record_items
        self.base_url = base_url  # set by the server once the port is known
        self.lock = threading.RLock()
        self.records: dict[str, list[Any]] = defaultdict(list)
        self.request_log: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.stats: dict[str, EndpointStats] = defaultdict(EndpointStats)
        self.faults: dict[str, Fault] = {}
        self._fault_seen: dict[str, int] = defaultdict(int)
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
            self.reset_state()

    def reset_state(self) -> None:
        """Clear vendor-specific state (stored feedback, uploads...)."""

    def control(self, action: str, args: dict[str, Any]) -> Any:
        """Vendor-specific test controls (e.g. Flux ``drop_events``), reachable over HTTP at
        ``POST /_sandbox/control {"vendor", "action", "args"}``. Return something JSON-able."""
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

    def _handle(self, route: Route, request: Request) -> Response:
        now = time.time()
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
                if fault.after <= seen < fault.after + fault.count:
                    active = fault
        response = self._apply_fault(active, route, request) if active else None
        if response is None:
            response = self._rate_check(route, request, now) or route.handler(request)
        with self.lock:
            stats.by_status[response.status] += 1
        return response

    def _apply_fault(self, fault: Fault, route: Route, request: Request) -> Response | None:
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
        if mode == "slow":
            time.sleep(fault.delay)
            return None
        if mode == "drop":
            raise Drop()
        if mode == "drop_after":
            route.handler(request)
            raise Drop()
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
