"""Brainzlab Flux emulator: event ingestion (batch and single) and the read API, strict to the document.

Routes (under ``/flux``): ``POST /api/v1/events/batch`` (endpoint ``events_batch``), ``POST /api/v1/events``
(``events``), and ``GET /api/v1/events``, ``/events/count``, ``/events/stats`` (all three counted as
``query``, which shares the documented query limit).

Strictness:
- ``Authorization: Bearer sk_sandbox_flux`` or 401 ``{"error": "Invalid API key"}``; requests with a wrong
  key never count against the key's rate.
- Rates per key, sliding 60 s windows, 429 with ``Retry-After`` beyond: batch 10/min (documented), query
  60/min (documented), single 60/min (the document says "standard": the sandbox enforces the same figure
  syncline assumes, so a client faster than its own assumption is caught).
- Batch body ``{"events": [...]}`` or a bare JSON array (the real server takes both); 1..500 events, else
  400 (empty) or 422 ``batch_too_large``.
- Each event: ``name`` a non-empty string (``missing_name``); ``timestamp`` absent or an ISO 8601 date-time
  (``invalid_timestamp``; without an offset it is taken as UTC); ``user_id`` a string; ``value`` a number
  (``invalid_value``); ``properties`` an object; ``tags`` an object of string values (``invalid_tags``).
- **One invalid event fails the whole batch and nothing is stored**, as with the real server's single bulk
  INSERT. The sandbox answers that with **422** ``{"error": {"code", "message", "index"}}``, not with the
  500 the open-source server may give: the document lists error codes, i.e. a client error, and a 422 lets
  syncline's bisection isolate a server-side-only refusal. (A 500 is available as a fault, ``Fault("500")``,
  for the retry/in_doubt paths.)
- Stored events get a random ``evt_`` id: a batch sent twice is stored twice.
- Success: ``200 {"data": {"accepted", "rejected"}}`` (documented) or, after ``answer_shape``
  ``{"shape": "ingested"}``, ``201 {"ingested": N}`` (the open-source server's answer). Single events:
  ``201 {"data": {id, name, timestamp, user_id, value}}`` or ``201 {"id", "name"}``.
- Reads: ``GET /events`` filters ``name`` (exact, or prefix with ``*``), ``from``/``to`` (inclusive),
  ``user_id``, ``tags[key]``, ``limit`` (1..1000, else 400), ``offset``, newest first; ``/count`` gives
  ``total`` plus ``series`` for ``interval`` (1m, 5m, 1h, 1d) or ``groups`` for ``group_by=tags.<key>``;
  ``/stats`` aggregates ``field`` (``value`` or ``properties.<key>``).

Test controls (``control(action, args)``, also ``POST /_sandbox/control``):
- ``drop_events`` ``{"count": n, "tags"?: {k: v}}``: delete the ``n`` most recently stored (matching)
  events, as if Flux lost or expired them (for reconcile tests); returns the ids.
- ``answer_shape`` ``{"shape": "data" | "ingested"}``: which success answer to give.
- ``silently_reject`` ``{"match": "<text>", "detail": bool}``: events whose JSON contains ``match`` are
  not stored and the answer counts them rejected (a per-row validating server, the documented ``rejected``
  count); with ``detail`` the answer lists ``errors: [{"index", "code", "message"}]``. ``match: ""`` ends it.
- ``events`` ``{}``: every stored event.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import uuid
from typing import Any

from connectors.sandbox.base import Emulator, RateRule, Request, Response, Route, is_iso_datetime

KEY = "sk_sandbox_flux"
MAX_BATCH = 500
MAX_LIMIT = 1000
ISO_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?([Zz]|[+-]\d{2}(:?\d{2})?)?$")
INTERVALS = {"1m": 60, "5m": 300, "1h": 3600, "1d": 86400}


class Invalid(Exception):
    def __init__(self, code: str, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.index = code, message, index


def _parse_time(value: str) -> dt.datetime | None:
    """An ISO 8601 date-time (or, for query bounds, a date); naive values are UTC. None if not parseable."""
    text = value.strip()
    if not ISO_DATETIME.match(text) and not re.match(r"^\d{4}-\d{2}-\d{2}$", text):
        return None
    try:
        moment = dt.datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def _utc(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _check_event(event: Any, index: int | None) -> None:
    if not isinstance(event, dict):
        raise Invalid("invalid_event", "Event must be an object", index)
    name = event.get("name")
    if not isinstance(name, str) or not name.strip():
        raise Invalid("missing_name", "Event name is required", index)
    timestamp = event.get("timestamp")
    if timestamp is not None and not is_iso_datetime(timestamp, require_offset=False):
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
        self._seq = 0
        self.answer_shape = "data"
        self.silent_match = ""
        self.silent_detail = False
        super().__init__(record_items=record_items, base_url=base_url)

    # -- framework hooks -----------------------------------------------------------------------------------
    def routes(self) -> list[Route]:
        def key(request: Request) -> str | None:
            return request.bearer() if request.bearer() == KEY else None

        return [
            Route("POST", "/api/v1/events/batch", self._batch, "events_batch", RateRule(10, 60.0, key)),
            Route("POST", "/api/v1/events", self._single, "events", RateRule(60, 60.0, key)),
            Route("GET", "/api/v1/events", self._list, "query", RateRule(60, 60.0, key)),
            Route("GET", "/api/v1/events/count", self._count, "query", RateRule(60, 60.0, key)),
            Route("GET", "/api/v1/events/stats", self._stats, "query", RateRule(60, 60.0, key)),
        ]

    def validation_error(self, endpoint: str, message: str) -> Response:
        return Response(422, {"error": {"code": "invalid_event", "message": message}})

    def reset_state(self) -> None:
        self._events = []
        self._seq = 0
        self.answer_shape = "data"
        self.silent_match = ""
        self.silent_detail = False

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
            if action == "events":
                return [self._public(e) for e in self._events]
        return super().control(action, args)

    # -- ingestion ------------------------------------------------------------------------------------------
    def _authorized(self, request: Request) -> Response | None:
        if request.bearer() is None:
            return Response(401, {"error": "Missing API key"})
        if request.bearer() != KEY:
            return Response(401, {"error": "Invalid API key"})
        return None

    def _store(self, event: dict[str, Any], received: dt.datetime) -> dict[str, Any]:
        timestamp = event.get("timestamp")
        moment = _parse_time(timestamp) if isinstance(timestamp, str) else None
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

    def _authorized_json(self, request: Request) -> tuple[Response | None, Any]:
        """Auth, then the JSON body: (an error answer, None) or (None, the body)."""
        denied = self._authorized(request)
        if denied:
            return denied, None
        try:
            return None, request.json()
        except ValueError:
            return Response(400, {"error": {"code": "invalid_json", "message": "Body is not valid JSON"}}), None

    def _batch(self, request: Request) -> Response:
        refused, body = self._authorized_json(request)
        if refused:
            return refused
        events = body.get("events") if isinstance(body, dict) else body
        if not isinstance(events, list):
            return Response(400, {"error": {"code": "invalid_request", "message": "events must be an array"}})
        self.note_batch("events_batch", len(events))
        if not events:
            return Response(400, {"error": {"code": "invalid_request", "message": "No events provided"}})
        if len(events) > MAX_BATCH:
            return Response(422, {"error": {"code": "batch_too_large", "message": "Batch exceeds 500 events"}})
        try:
            for index, event in enumerate(events):
                _check_event(event, index)
        except Invalid as bad:
            return Response(422, {"error": {"code": bad.code, "message": bad.message, "index": bad.index}})
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
        refused, event = self._authorized_json(request)
        if refused:
            return refused
        self.note_batch("events", 1)
        try:
            _check_event(event, None)
        except Invalid as bad:
            return Response(422, {"error": {"code": bad.code, "message": bad.message}})
        with self.lock:
            if self.silent_match and self.silent_match in json.dumps(event, separators=(",", ":")):
                return Response(422, {"error": {"code": "rejected", "message": "Event refused by a server rule"}})
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
            moment = _parse_time(raw) if raw else None
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
