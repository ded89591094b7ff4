"""Brainzlab Flux emulator: event ingestion (batch and single) and the read API, strict to the document.

Routes (under ``/flux``): ``POST /api/v1/events/batch`` (endpoint ``events_batch``), ``POST /api/v1/events``
(``events``), and ``GET /api/v1/events``, ``/events/count``, ``/events/stats`` (all three counted as
``query``, which shares the documented query limit).

What the document says, enforced:
- ``Authorization: Bearer <key>`` (its examples) with the sandbox key ``sk_sandbox_flux``, else 401;
  requests with a wrong key never count against the key's rate.
- Rates per key, sliding 60 s windows, 429 with ``Retry-After`` beyond: batch 10/min, query 60/min.
- Batch body ``{"events": [...]}``, at most 500 events (``batch_too_large``).
- Each event (the Parameters table): ``name`` present, a string (``missing_name``); ``timestamp`` absent or
  an ISO 8601 string (``invalid_timestamp``); ``user_id`` a string; ``value`` a number; ``properties`` an
  object; ``tags`` an object whose values are all strings (``invalid_tags``: a ``null`` tag value too).
- Bodies are parsed with :func:`~connectors.sandbox.base.strict_json`, as a validating server would: NaN,
  Infinity, a number beyond a double, invalid UTF-8, a lone surrogate or a repeated key is a 400
  ``invalid_json`` (and counted ``invalid_json`` in the stats: a client bug).

Assumptions where the document is silent (each one accepts every plausible variant, so the sandbox never
agrees with syncline by construction; a test that relies on one says so):
- **Auth variants**: the scheme ``Bearer`` in any letter case and with any spacing (RFC 7235 schemes are
  case-insensitive). A bare key or another scheme is refused: the document shows ``Bearer``.
- **Single-event rate** ("Standard rate limit", no figure): **not limited** by default. A test may set one
  with the control ``single_rate`` (it then names the figure as its own assumption, e.g. syncline's 60/min).
- **Timestamps**: every ISO 8601 form is accepted (extended or basic; calendar, ordinal or week date;
  date-only; time to the hour, minute or second, decimal fractions with ``.`` or ``,``; ``24:00``; a leap
  second; ``Z``, ``±hh``, ``±hhmm``, ``±hh:mm``; no offset), and, as a lenient server would, RFC 3339's
  space or lower-case ``t``/``z``. Stored as sent. For filtering, a time without an offset is taken as UTC
  and a date alone as its midnight UTC.
- **Blank text**: an empty or blank ``name`` or ``user_id`` is a string and is accepted (the document
  requires a name, but does not say a blank one is missing). JSON ``null`` for any optional field, or as
  ``properties``/``tags``, is the field left out. No length limit: none is documented.
- **Body shape**: a bare JSON array of events is taken too (the open-source server does); an empty batch is
  a 400. Unknown top-level keys of an event are dropped (as the server does).
- **Error answers**: the document lists codes but no body or status. Default ``422 {"error": {"code",
  "message", "index"}}``; the control ``error_shape`` switches to another plausible one (``flat``
  ``{"error": "<code>"}``, ``message`` ``{"code", "message"}``, ``errors`` ``{"errors": [{"code",
  "message"}]}``, ``rails`` ``{"errors": {"<field>": ["<message>"]}}``, ``text`` (a plain-text body),
  ``empty``) and ``status`` (400 or 422), so a client is tested against each.
- **One invalid event fails the whole batch and nothing is stored**, as with the real server's single bulk
  INSERT (the original design notes), answered as a client error (not the 500 the open-source server may
  give: a 4xx lets syncline's bisection isolate a server-side-only refusal). A 500 is a fault,
  ``Fault("500")``. Per-row validation (the documented ``rejected`` count) is the ``silently_reject``
  control.
- Stored events get a random ``evt_`` id: a batch sent twice is stored twice (no dedup).
- Success: ``200 {"data": {"accepted", "rejected"}}`` (documented) or, after ``answer_shape``
  ``{"shape": "ingested"}``, ``201 {"ingested": N}`` (the open-source server's answer). Single events:
  ``201 {"data": {id, name, timestamp, user_id, value}}`` or ``201 {"id", "name"}``.
- Reads: ``GET /events`` filters ``name`` (exact, or prefix with ``*``), ``from``/``to`` (inclusive; ISO
  8601 as above), ``user_id``, ``tags[key]``, ``limit`` (1..1000, else 400), ``offset``, newest first;
  ``/count`` gives ``total`` plus ``series`` for ``interval`` (1m, 5m, 1h, 1d) or ``groups`` for
  ``group_by=tags.<key>``; ``/stats`` aggregates ``field`` (``value`` or ``properties.<key>``). An event is
  listed as soon as its POST is answered.

Test controls (``control(action, args)``, also ``POST /_sandbox/control``):
- ``drop_events`` ``{"count": n, "tags"?: {k: v}}``: delete the ``n`` most recently stored (matching)
  events, as if Flux lost or expired them (for reconcile tests); returns the ids.
- ``answer_shape`` ``{"shape": "data" | "ingested"}``: which success answer to give.
- ``silently_reject`` ``{"match": "<text>", "detail": bool}``: events whose JSON contains ``match`` are
  not stored and the answer counts them rejected (a per-row validating server, the documented ``rejected``
  count); with ``detail`` the answer lists ``errors: [{"index", "code", "message"}]``. ``match: ""`` ends it.
- ``single_rate`` ``{"per_minute": n | null}``: limit the single-event endpoint per key (null: no limit).
- ``error_shape`` ``{"shape": ..., "status"?: 400 | 422}``: the body and status of validation errors.
- ``events`` ``{}``: every stored event. ``bodies`` ``{"endpoint"?: name}``: the raw bodies (UTF-8 text)
  of the last 200 ingestion requests, as received, for byte-for-byte comparisons.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import uuid
from typing import Any

from connectors.sandbox.base import Emulator, RateRule, Request, Response, Route

KEY = "sk_sandbox_flux"
MAX_BATCH = 500
MAX_LIMIT = 1000
MAX_BODIES = 200
INTERVALS = {"1m": 60, "5m": 300, "1h": 3600, "1d": 86400}
ERROR_SHAPES = ("nested", "flat", "message", "errors", "rails", "text", "empty")
FIELD_OF_CODE = {"missing_name": "name", "invalid_timestamp": "timestamp", "invalid_tags": "tags",
                 "invalid_value": "value", "invalid_properties": "properties", "invalid_user_id": "user_id",
                 "batch_too_large": "events"}

# ISO 8601 (and RFC 3339's lenient variants): a complete date, then optionally a time and an offset.
_ISO = re.compile(
    r"(?P<y>\d{4})(?P<s>-?)(?:(?P<m>\d{2})(?P=s)(?P<d>\d{2})|(?P<o>\d{3})|W(?P<w>\d{2})(?P=s)(?P<wd>[1-7]))"
    r"(?:[Tt ](?P<H>\d{2})(?:(?P<c>:?)(?P<M>\d{2})(?:(?P=c)(?P<S>\d{2}))?)?(?:[.,](?P<f>\d+))?"
    r"(?P<z>[Zz]|[+-]\d{2}(?::?\d{2})?)?)?"
)


class Invalid(Exception):
    def __init__(self, code: str, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.index = code, message, index


def parse_iso8601(value: str) -> dt.datetime | None:
    """The moment an ISO 8601 date or date-time names (see the module docstring); None if it is not one.
    Written for the sandbox, independently of syncline's own check (``connectors/engine/iso8601.py``)."""
    match = _ISO.fullmatch(value)
    if match is None:
        return None
    g = match.groupdict()
    try:
        year = int(g["y"])
        if g["m"] is not None:
            day = dt.date(year, int(g["m"]), int(g["d"]))
        elif g["o"] is not None:
            ordinal = int(g["o"])
            day = dt.date(year, 1, 1) + dt.timedelta(days=ordinal - 1)
            if ordinal < 1 or day.year != year:
                return None
        else:
            day = dt.date.fromisocalendar(year, int(g["w"]), int(g["wd"]))
    except (ValueError, OverflowError):
        return None
    moment = dt.datetime.combine(day, dt.time())
    if g["H"] is not None:
        hours, minutes, seconds = int(g["H"]), int(g["M"] or 0), int(g["S"] or 0)
        fraction = float("0." + g["f"]) if g["f"] else 0.0
        if hours == 24 and (minutes or seconds or fraction):
            return None
        if hours > 24 or minutes > 59 or seconds > 60:
            return None
        unit = 1.0 if g["S"] is not None else 60.0 if g["M"] is not None else 3600.0
        moment += dt.timedelta(hours=hours, minutes=minutes, seconds=seconds + fraction * unit)
    zone = g["z"]
    if zone is None or zone in "Zz":
        return moment.replace(tzinfo=dt.UTC)
    digits = zone[1:].replace(":", "")
    offset_h, offset_m = int(digits[:2]), int(digits[2:] or 0)
    if offset_h > 23 or offset_m > 59:
        return None
    sign = 1 if zone[0] == "+" else -1
    return moment.replace(tzinfo=dt.timezone(sign * dt.timedelta(hours=offset_h, minutes=offset_m)))


def _utc(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _check_event(event: Any, index: int | None) -> None:
    if not isinstance(event, dict):
        raise Invalid("invalid_event", "Event must be an object", index)
    name = event.get("name")
    if name is None:
        raise Invalid("missing_name", "Event name is required", index)
    if not isinstance(name, str):
        raise Invalid("missing_name", "Event name must be a string", index)
    timestamp = event.get("timestamp")
    if timestamp is not None and (not isinstance(timestamp, str) or parse_iso8601(timestamp) is None):
        raise Invalid("invalid_timestamp", "Timestamp format invalid", index)
    if event.get("user_id") is not None and not isinstance(event["user_id"], str):
        raise Invalid("invalid_user_id", "user_id must be a string", index)
    value = event.get("value")
    if value is not None and (
        not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value)
    ):
        raise Invalid("invalid_value", "value must be a number", index)
    if event.get("properties") is not None and not isinstance(event["properties"], dict):
        raise Invalid("invalid_properties", "properties must be an object", index)
    tags = event.get("tags")
    if tags is not None and (not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values())):
        raise Invalid("invalid_tags", "Tags must be string values", index)


def _bearer(request: Request) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header, the scheme in any case, any spacing."""
    parts = request.headers.get("authorization", "").split()
    return parts[1] if len(parts) == 2 and parts[0].lower() == "bearer" else None


def key(request: Request) -> str | None:
    """The credential a rate limit counts against: only the sandbox key (wrong keys are never counted)."""
    return KEY if _bearer(request) == KEY else None


def _percentile(values: list[float], share: float) -> float:
    """Linear interpolation between closest ranks (values sorted)."""
    if len(values) == 1:
        return values[0]
    position = share * (len(values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (position - low)


class FluxEmulator(Emulator):
    vendor = "flux"
    keys = {"api_key": KEY}

    def __init__(self, record_items: bool = True, base_url: str = "") -> None:
        self._events: list[dict[str, Any]] = []
        self._bodies: list[tuple[str, str]] = []
        self._seq = 0
        self.answer_shape = "data"
        self.silent_match = ""
        self.silent_detail = False
        self.error_shape, self.error_status = "nested", 422
        super().__init__(record_items=record_items, base_url=base_url)

    # -- framework hooks -----------------------------------------------------------------------------------
    def routes(self) -> list[Route]:
        return [
            Route("POST", "/api/v1/events/batch", self._batch, "events_batch", RateRule(10, 60.0, key)),
            Route("POST", "/api/v1/events", self._single, "events", None),  # "standard": no figure
            Route("GET", "/api/v1/events", self._list, "query", RateRule(60, 60.0, key)),
            Route("GET", "/api/v1/events/count", self._count, "query", RateRule(60, 60.0, key)),
            Route("GET", "/api/v1/events/stats", self._stats, "query", RateRule(60, 60.0, key)),
        ]

    def validation_error(self, endpoint: str, message: str) -> Response:
        return self._error("invalid_event", message)

    def _error(self, code: str, message: str, index: int | None = None) -> Response:
        """A validation error in the configured shape (the document gives codes, no body: see the docstring)."""
        shape, status = self.error_shape, self.error_status
        if shape == "flat":
            return Response(status, {"error": code})
        if shape == "message":
            return Response(status, {"code": code, "message": message})
        if shape == "errors":
            return Response(status, {"errors": [{"code": code, "message": message}]})
        if shape == "rails":
            return Response(status, {"errors": {FIELD_OF_CODE.get(code, "event"): [message]}})
        if shape == "text":
            return Response(status, f"{code}: {message}".encode(), {"Content-Type": "text/plain"})
        if shape == "empty":
            return Response(status, b"")
        error: dict[str, Any] = {"code": code, "message": message}
        if index is not None:
            error["index"] = index
        return Response(status, {"error": error})

    def _set_single_rate(self, per_minute: int | None) -> None:
        for route in self._routes:
            if route.endpoint == "events":
                route.rate = RateRule(per_minute, 60.0, key) if per_minute else None

    def reset_state(self) -> None:
        self._events = []
        self._bodies = []
        self._seq = 0
        self.answer_shape = "data"
        self.silent_match = ""
        self.silent_detail = False
        self.error_shape, self.error_status = "nested", 422
        self._set_single_rate(None)

    def control(self, action: str, args: dict[str, Any]) -> Any:
        with self.lock:
            if action == "drop_events":
                count = int(args.get("count", 1))
                wanted = args.get("tags") or {}
                matching = [e for e in self._events if all(e["tags"].get(k) == v for k, v in wanted.items())]
                doomed = {id(e) for e in matching[-count:]} if count > 0 else set()
                dropped = [e["id"] for e in self._events if id(e) in doomed]
                self._events = [e for e in self._events if id(e) not in doomed]
                return {"dropped": len(dropped), "ids": dropped}
            if action == "answer_shape":
                shape = args.get("shape")
                if shape not in ("data", "ingested"):
                    raise ValueError(f"answer_shape: shape must be data or ingested, got {shape!r}")
                self.answer_shape = shape
                return {"shape": shape}
            if action == "silently_reject":
                self.silent_match = str(args.get("match") or "")
                self.silent_detail = bool(args.get("detail", False))
                return {"match": self.silent_match, "detail": self.silent_detail}
            if action == "single_rate":
                per_minute = args.get("per_minute")
                if per_minute is not None and (not isinstance(per_minute, int) or per_minute < 1):
                    raise ValueError(f"single_rate: per_minute must be a positive integer or null, got {per_minute!r}")
                self._set_single_rate(per_minute)
                return {"per_minute": per_minute}
            if action == "error_shape":
                shape, status = args.get("shape", "nested"), args.get("status", 422)
                if shape not in ERROR_SHAPES or status not in (400, 422):
                    raise ValueError(f"error_shape: shape one of {', '.join(ERROR_SHAPES)}, status 400 or 422")
                self.error_shape, self.error_status = shape, status
                return {"shape": shape, "status": status}
            if action == "events":
                return [self._public(e) for e in self._events]
            if action == "bodies":
                wanted = args.get("endpoint")
                return [body for endpoint, body in self._bodies if wanted in (None, endpoint)]
        return super().control(action, args)

    # -- ingestion ------------------------------------------------------------------------------------------
    def _authorized(self, request: Request) -> Response | None:
        if _bearer(request) is None:
            return Response(401, {"error": "Missing API key"})
        if _bearer(request) != KEY:
            return Response(401, {"error": "Invalid API key"})
        return None

    def _store(self, event: dict[str, Any], received: dt.datetime) -> dict[str, Any]:
        timestamp = event.get("timestamp")
        moment = parse_iso8601(timestamp) if isinstance(timestamp, str) else None
        self._seq += 1
        stored = {
            "id": f"evt_{uuid.uuid4().hex[:20]}",
            "name": event["name"],
            "timestamp": timestamp if moment is not None else _utc(received),
            "user_id": event.get("user_id"),
            "value": event.get("value"),
            "properties": dict(event.get("properties") or {}),
            "tags": dict(event.get("tags") or {}),
            "_at": (moment or received).timestamp(),
            "_seq": self._seq,
        }
        self._events.append(stored)
        return stored

    @staticmethod
    def _public(event: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in event.items() if not k.startswith("_")}

    def _authorized_json(self, request: Request, endpoint: str) -> tuple[Response | None, Any]:
        """Auth, then the JSON body: (an error answer, None) or (None, the body)."""
        denied = self._authorized(request)
        if denied:
            return denied, None
        with self.lock:
            self._bodies.append((endpoint, request.body.decode("utf-8", "replace")))
            del self._bodies[:-MAX_BODIES]
        try:
            return None, request.json()
        except ValueError:
            return Response(400, {"error": {"code": "invalid_json", "message": "Body is not valid JSON"}}), None

    def _batch(self, request: Request) -> Response:
        refused, body = self._authorized_json(request, "events_batch")
        if refused:
            return refused
        events = body.get("events") if isinstance(body, dict) else body
        if not isinstance(events, list):
            return Response(400, {"error": {"code": "invalid_request", "message": "events must be an array"}})
        self.note_batch("events_batch", len(events))
        if not events:
            return Response(400, {"error": {"code": "invalid_request", "message": "No events provided"}})
        if len(events) > MAX_BATCH:
            return self._error("batch_too_large", "Batch exceeds 500 events")
        try:
            for index, event in enumerate(events):
                _check_event(event, index)
        except Invalid as bad:
            return self._error(bad.code, bad.message, bad.index)
        received = dt.datetime.now(dt.UTC)
        with self.lock:
            stored, errors = [], []
            for index, event in enumerate(events):
                if self.silent_match and self.silent_match in json.dumps(event, separators=(",", ":")):
                    errors.append({"index": index, "code": "rejected", "message": "Event refused by a server rule"})
                    continue
                stored.append(self._public(self._store(event, received)))
            shape, detail = self.answer_shape, self.silent_detail
        self.record("events_batch", stored)
        if shape == "ingested":
            return Response(201, {"ingested": len(stored)})
        data: dict[str, Any] = {"accepted": len(stored), "rejected": len(errors)}
        if detail and errors:
            data["errors"] = errors
        return Response(200, {"data": data})

    def _single(self, request: Request) -> Response:
        refused, event = self._authorized_json(request, "events")
        if refused:
            return refused
        self.note_batch("events", 1)
        try:
            _check_event(event, None)
        except Invalid as bad:
            return self._error(bad.code, bad.message)
        with self.lock:
            if self.silent_match and self.silent_match in json.dumps(event, separators=(",", ":")):
                return self._error("rejected", "Event refused by a server rule")
            stored = self._public(self._store(event, dt.datetime.now(dt.UTC)))
            shape = self.answer_shape
        self.record("events", [stored])
        if shape == "ingested":
            return Response(201, {"id": stored["id"], "name": stored["name"]})
        return Response(201, {"data": {k: stored[k] for k in ("id", "name", "timestamp", "user_id", "value")}})

    # -- reads -----------------------------------------------------------------------------------------------
    def _filtered(self, request: Request, *, tags: bool) -> list[dict[str, Any]] | Response:
        bounds: list[float | None] = []
        for name in ("from", "to"):
            raw = request.arg(name)
            moment = parse_iso8601(raw) if raw else None
            if raw and moment is None:
                return Response(400, {"error": {"code": "invalid_timestamp", "message": f"{name} is not ISO 8601"}})
            bounds.append(moment.timestamp() if moment else None)
        start, end = bounds
        name_filter = request.arg("name")
        user_id = request.arg("user_id")
        tag_filters = {}
        if tags:
            for key, values in request.query.items():
                match = re.fullmatch(r"tags\[(.+)\]", key)
                if match:
                    tag_filters[match.group(1)] = values[0]
        with self.lock:
            events = list(self._events)
        out = []
        for e in events:
            if name_filter:
                if name_filter.endswith("*"):
                    if not e["name"].startswith(name_filter[:-1]):
                        continue
                elif e["name"] != name_filter:
                    continue
            if start is not None and e["_at"] < start:
                continue
            if end is not None and e["_at"] > end:
                continue
            if user_id and e["user_id"] != user_id:
                continue
            if any(e["tags"].get(k) != v for k, v in tag_filters.items()):
                continue
            out.append(e)
        return out

    def _list(self, request: Request) -> Response:
        denied = self._authorized(request)
        if denied:
            return denied
        try:
            limit = int(request.arg("limit") or 100)
            offset = int(request.arg("offset") or 0)
        except ValueError:
            return Response(400, {"error": {"code": "invalid_request", "message": "limit and offset are integers"}})
        if not 1 <= limit <= MAX_LIMIT or offset < 0:
            return Response(400, {"error": {"code": "invalid_limit", "message": f"limit must be 1..{MAX_LIMIT}"}})
        events = self._filtered(request, tags=True)
        if isinstance(events, Response):
            return events
        events.sort(key=lambda e: (e["_at"], e["_seq"]), reverse=True)
        page = [self._public(e) for e in events[offset : offset + limit]]
        return Response(200, {"data": page, "meta": {"total": len(events), "limit": limit, "offset": offset}})

    def _count(self, request: Request) -> Response:
        denied = self._authorized(request)
        if denied:
            return denied
        events = self._filtered(request, tags=False)
        if isinstance(events, Response):
            return events
        data: dict[str, Any] = {"total": len(events)}
        interval = request.arg("interval")
        if interval:
            if interval not in INTERVALS:
                return Response(400, {"error": {"code": "invalid_interval", "message": "interval: 1m, 5m, 1h or 1d"}})
            step = INTERVALS[interval]
            buckets: dict[int, int] = {}
            for e in events:
                bucket = int(e["_at"] // step * step)
                buckets[bucket] = buckets.get(bucket, 0) + 1
            data["series"] = [
                {"timestamp": dt.datetime.fromtimestamp(b, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "count": n}
                for b, n in sorted(buckets.items())
            ]
        group_by = request.arg("group_by")
        if group_by:
            key = group_by.removeprefix("tags.")
            groups: dict[str, int] = {}
            for e in events:
                value = e["tags"].get(key)
                if value is not None:
                    groups[value] = groups.get(value, 0) + 1
            data["groups"] = groups
        return Response(200, {"data": data})

    def _stats(self, request: Request) -> Response:
        denied = self._authorized(request)
        if denied:
            return denied
        events = self._filtered(request, tags=False)
        if isinstance(events, Response):
            return events
        field = request.arg("field") or "value"
        values: list[float] = []
        for e in events:
            raw = e["properties"].get(field.removeprefix("properties.")) if field.startswith("properties.") else e.get(field)
            if isinstance(raw, int | float) and not isinstance(raw, bool):
                values.append(float(raw))
        values.sort()
        if not values:
            return Response(200, {"data": {"count": 0, "sum": 0, "avg": None, "min": None, "max": None,
                                           "p50": None, "p95": None, "p99": None}})
        total = sum(values)
        return Response(200, {"data": {
            "count": len(values), "sum": round(total, 6), "avg": round(total / len(values), 6),
            "min": values[0], "max": values[-1], "p50": _percentile(values, 0.5),
            "p95": _percentile(values, 0.95), "p99": _percentile(values, 0.99),
        }})


EMULATOR = FluxEmulator
