"""GradeMyPage emulator: ``/api/analytics/track``, ``/server-events`` and ``/experiments/active``.

Strict where the vendor document is specific, lenient where it is silent (so a test of a connector choice
cannot agree with it by construction), plus the one rule the design notes insist on: a key never goes where
it does not belong. Bodies are parsed with :func:`~connectors.sandbox.base.strict_json` (NaN, Infinity,
duplicate keys, invalid UTF-8 are refused with 400 and counted in the endpoint's ``invalid_json``).

What it enforces, from the document:

- ``POST /track``: JSON ``{"projectId", "events"}``; ``projectId`` must be the public key (401 when missing,
  403 when it is anything else). The secret key anywhere in the request (headers, query, body) is refused
  with 403 and counted in ``counters["secret_key_refused"]``. ``events`` is an array of objects with
  ``eventType``, ``pathname``, ``fullUrl``, ``sessionId``, ``visitorId`` (strings) and ``timestamp`` (a
  number; which numbers: see the assumptions); optional members have their documented types
  (``eventName``/``referrer`` strings, ``eventData`` an object, ``utm`` an object of string values). Any
  problem refuses the whole batch with 400 and stores nothing. Stored events are deduplicated on (visitorId, timestamp, eventType,
  pathname), within and across requests; each drop is counted in ``counters["track_duplicates_dropped"]``
  and the answer says how many were stored.
- ``POST /server-events``: the secret key in ``Authorization`` (401 when missing or wrong; 403 and
  ``counters["public_key_refused"]`` when the public key is offered). One JSON object (an array is refused:
  "accepts one event at a time") with ``eventType`` and ``eventName`` strings; ``timestamp`` an ISO 8601
  string when given; ``idempotencyKey``, ``page``, ``experimentId``, ``variantId`` strings; ``visitor``
  members strings; ``properties`` an object. A repeated ``idempotencyKey`` ("stable key for retry dedup")
  answers 200 without storing the event again (``counters["server_events_deduplicated"]``).
- ``GET /experiments/active?projectId=<public key>``: the fixed :data:`EXPERIMENTS` (401 without projectId,
  403 for any other value, and 403 + ``secret_key_refused`` if the secret key shows up).

Assumptions where the document is silent (each accepts every plausible variant):

- Auth scheme: the document says "with your project's secret key in the Authorization header", so both
  ``Authorization: Bearer <secret key>`` (any case of ``Bearer``) and the bare ``Authorization: <secret key>``
  are accepted.
- Blank strings are strings: an empty ``pathname`` or ``eventName`` is accepted.
- ``timestamp`` (/track): ``number; // epoch ms`` names the unit but no range, so any number a JavaScript
  server can turn into a date as milliseconds is accepted: ``|timestamp| <= 8.64e15`` (ECMAScript's
  ``new Date(ms)`` range, :data:`JS_DATE_MS`; the vendor serves from Node/Next.js). Only a value that cannot be
  a date in milliseconds at all is refused with 400 (e.g. nanoseconds, ~1.8e18 today). So a value in seconds
  (1.8e9: January 1970 as ms) or in microseconds (1.8e15: year 58000 as ms) is *stored*: the connector's
  plausible-ms bounds (10^11..10^14, kind ``epoch_ms``) are its own choice, and a test of them cannot agree
  with the sandbox by construction. A fraction of a millisecond and a negative value (before 1970) are
  accepted (``number``).
- ``timestamp`` (/server-events): any ISO 8601 date or date-time, with or without an offset.
- Members the document does not list (a TrackEvent, ``utm`` or ``visitor`` member, a top-level
  ServerEventRequest member) are accepted and stored, and counted in ``counters["unknown_members"]``; JSON
  ``null`` for an optional member is accepted.
- An empty ``events`` array is accepted (200, nothing stored).
- ``experimentId``/``variantId`` naming an experiment that is not running (or not listed) is accepted and
  stored: the document has no rule against it.
- A lone ``experimentId`` or a lone ``variantId`` is accepted and stored: the document marks both optional
  (``experimentId?: string; variantId?: string;``) and "Pass experimentId + variantId when you want the
  conversion attributed" is an instruction to clients, not a stated refusal. (The connector rejects a lone one
  locally: that is its reading of the instruction, not something this server enforces.)
- ``idempotencyKey`` dedup has no window (a key is remembered until the emulator is reset) and compares
  keys exactly. The answer to a repeat is 200 ``{"success": true, "deduplicated": true}`` (the document
  shows no response bodies). A key reused with a *different* body: the document does not say; by default it
  is a repeat like any other (200, the first body stays stored), and the control ``key_reuse`` ``{"answer":
  "repeat" | "409" | "422"}`` makes it a conflict instead, as a Stripe-style server answers (409 or 422
  ``{"error", "details"}``, nothing stored; counted in ``counters["idempotency_key_conflicts"]``).
- Bodies over 1 MiB are refused with 413 (a typical Node framework's default; the document names no limit).

``key_log`` records, for every request that reaches the emulator, which sandbox keys appeared anywhere in it
(headers, query, body), the ``Authorization`` header and the ``projectId``, so tests can prove which key went
where. The control action ``state`` returns the counters and the key log to another process; ``key_reuse``
is described above.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections import defaultdict
from typing import Any

from connectors.sandbox.base import Emulator, Request, Response, Route

PUBLIC_KEY = "5b0e8a52-3c4f-4e7d-9a61-2f8c7d1e4b90"
SECRET_KEY = "gmp_sk_sandbox_7Qm2Xv9LpT4rW8kZ"
MAX_BODY_BYTES = 1_048_576  # a typical Node framework's default body limit (the doc names none)
PATHS = {
    "/api/analytics/track": "track",
    "/api/analytics/server-events": "server_events",
    "/api/analytics/experiments/active": "experiments_active",
}
UTM_MEMBERS = {"source", "medium", "campaign", "term", "content"}
VISITOR_MEMBERS = {"id", "ip", "userAgent"}


def _variant(vid: str, name: str, control: bool, weight: int, selector: str, value: str) -> dict[str, Any]:
    return {"id": vid, "name": name, "isControl": control, "weight": weight,
            "changes": [{"selector": selector, "changeType": "text", "value": value}]}


# The project's running experiments, shaped as the document's ActiveExperimentsResponse. The sample
# warehouse (pipelines/sample_data/grademypage.py) names these ids.
EXPERIMENTS: list[dict[str, Any]] = [
    {
        "id": "exp_pricing_headline", "name": "Pricing headline", "type": "copy",
        "targetUrl": "/pricing", "urlMatchType": "exact", "trafficPercentage": 100,
        "variants": [
            _variant("var_pricing_control", "Control", True, 50, "h1", "Simple pricing"),
            _variant("var_pricing_value", "Value first", False, 50, "h1", "Pay for results, not seats"),
        ],
    },
    {
        "id": "exp_signup_cta", "name": "Signup button", "type": "css",
        "targetUrl": "/signup", "urlMatchType": "starts_with", "trafficPercentage": 80,
        "variants": [
            _variant("var_cta_control", "Control", True, 34, "#cta", "Sign up"),
            _variant("var_cta_green", "Green", False, 33, "#cta", "Start free"),
            _variant("var_cta_large", "Large", False, 33, "#cta", "Get started"),
        ],
    },
]

TRACK_REQUIRED = ("eventType", "pathname", "fullUrl", "sessionId", "visitorId")
TRACK_OPTIONAL_STRINGS = ("eventName", "referrer")
TRACK_MEMBERS = {*TRACK_REQUIRED, *TRACK_OPTIONAL_STRINGS, "timestamp", "eventData", "utm"}
SERVER_EVENT_MEMBERS = {"eventType", "eventName", "timestamp", "idempotencyKey", "visitor", "page", "properties",
                        "experimentId", "variantId"}
JS_DATE_MS = 8.64e15  # ECMAScript's Date range in ms (±100,000,000 days): beyond it, surely not epoch ms
KEY_REUSE_ANSWERS = ("repeat", "409", "422")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _is_iso_8601(value: Any) -> bool:
    """Any ISO 8601 date or date-time, with or without an offset (the document says only "ISO 8601")."""
    if not isinstance(value, str):
        return False
    if _ISO_DATE.match(value):
        try:
            dt.date.fromisoformat(value)
        except ValueError:
            return False
        return True
    if len(value) < 13 or value[10] not in "Tt ":
        return False
    try:
        dt.datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return False
    return True


class GradeMyPageEmulator(Emulator):
    vendor = "grademypage"
    keys = {"public_key": PUBLIC_KEY, "secret_key": SECRET_KEY}

    def __init__(self, record_items: bool = True, base_url: str = "") -> None:
        super().__init__(record_items, base_url)
        self.reset_state()

    def reset_state(self) -> None:
        self.counters: dict[str, int] = defaultdict(int)
        self.key_log: list[dict[str, Any]] = []
        self._track_seen: set[tuple[Any, ...]] = set()
        self._idempotency_keys: dict[str, dict[str, Any]] = {}  # key -> the event first stored under it
        self.key_reuse = "repeat"  # what a key reused with a different body gets: repeat | 409 | 422

    def routes(self) -> list[Route]:
        return [
            Route("POST", "/api/analytics/track", self._track, "track"),
            Route("POST", "/api/analytics/server-events", self._server_event, "server_events"),
            Route("GET", "/api/analytics/experiments/active", self._experiments, "experiments_active"),
        ]

    def control(self, action: str, args: dict[str, Any]) -> Any:
        if action == "state":
            return {"counters": dict(self.counters), "key_log": list(self.key_log)}
        if action == "key_reuse":
            answer = str(args.get("answer", "repeat"))
            if answer not in KEY_REUSE_ANSWERS:
                raise ValueError(f"key_reuse answer must be one of {', '.join(KEY_REUSE_ANSWERS)}, got {answer!r}")
            with self.lock:
                self.key_reuse = answer
            return {"key_reuse": answer}
        return super().control(action, args)

    # -- which key went where -------------------------------------------------------------------------------
    def dispatch(self, request: Request) -> Response:
        raw = "\n".join([*request.headers.values(), json.dumps(request.query), request.body.decode("utf-8", "replace")])
        project = request.arg("projectId")
        if project is None and request.body:
            try:
                body = request.json()
            except ValueError:
                body = None
            if isinstance(body, dict) and isinstance(body.get("projectId"), str):
                project = body["projectId"]
        with self.lock:
            self.key_log.append({
                "endpoint": PATHS.get(request.path, request.path),
                "method": request.method,
                "keys_seen": sorted(name for name, value in self.keys.items() if value in raw),
                "authorization": request.headers.get("authorization"),
                "projectId": project,
            })
        return super().dispatch(request)

    def _count(self, name: str, n: int = 1) -> None:
        with self.lock:
            self.counters[name] += n

    def _public_auth(self, request: Request, project: Any) -> Response | None:
        """Public endpoints: the secret key must not appear anywhere; projectId must be the public key."""
        raw = b"\n".join([*(v.encode() for v in request.headers.values()), json.dumps(request.query).encode(), request.body])
        if SECRET_KEY.encode() in raw:
            self._count("secret_key_refused")
            return Response(403, {"error": "The secret key must never be sent to a public endpoint; rotate it"})
        if not project:
            return Response(401, {"error": "projectId is required"})
        if project != PUBLIC_KEY:
            return Response(403, {"error": "Unknown projectId"})
        return None

    # -- handlers --------------------------------------------------------------------------------------------
    def _track(self, request: Request) -> Response:
        if len(request.body) > MAX_BODY_BYTES:
            return Response(413, {"error": "Payload too large"})
        try:
            body = request.json()
        except ValueError:  # not JSON (NaN, Infinity...): 400, after the scan for a leaked secret key
            leaked = self._public_auth(request, PUBLIC_KEY)
            return leaked or self.validation_error("track", "body is not valid JSON")
        project = body.get("projectId") if isinstance(body, dict) else None
        refused = self._public_auth(request, project)
        if refused is not None:
            return refused
        assert isinstance(body, dict)
        events = body.get("events")
        if not isinstance(events, list):
            return self.validation_error("track", "events must be an array")
        self.note_batch("track", len(events))
        problems = [f"events[{i}]: {p}" for i, event in enumerate(events) for p in self._track_problems(event)]
        if problems:
            return Response(400, {"error": "Invalid events", "details": problems[:20]})
        stored = []
        with self.lock:
            for event in events:
                if unknown := self._unknown_members(event, TRACK_MEMBERS, "utm", UTM_MEMBERS):
                    self.counters["unknown_members"] += unknown
                key = (event["visitorId"], event["timestamp"], event["eventType"], event["pathname"])
                if key in self._track_seen:
                    self.counters["track_duplicates_dropped"] += 1
                    continue
                self._track_seen.add(key)
                stored.append(event)
        self.record("track", stored)
        return Response(200, {"success": True, "received": len(events), "stored": len(stored)})

    @staticmethod
    def _unknown_members(event: dict[str, Any], members: set[str], nested: str, nested_members: set[str]) -> int:
        inner = event.get(nested)
        extra = len(set(event) - members)
        return extra + (len(set(inner) - nested_members) if isinstance(inner, dict) else 0)

    @staticmethod
    def _track_problems(event: Any) -> list[str]:
        if not isinstance(event, dict):
            return ["must be an object"]
        problems = []
        for name in TRACK_REQUIRED:
            if not isinstance(event.get(name), str):
                problems.append(f"{name} is required (a string)")
        ts = event.get("timestamp")
        if not (isinstance(ts, int | float) and not isinstance(ts, bool) and abs(ts) <= JS_DATE_MS):
            problems.append(f"timestamp must be a number of epoch milliseconds, got {ts!r}")
        for name in TRACK_OPTIONAL_STRINGS:
            if event.get(name) is not None and not isinstance(event[name], str):
                problems.append(f"{name} must be a string")
        if event.get("eventData") is not None and not isinstance(event["eventData"], dict):
            problems.append("eventData must be an object")
        utm = event.get("utm")
        if utm is not None:
            if not isinstance(utm, dict):
                problems.append("utm must be an object")
            else:
                problems += [f"utm.{k} must be a string" for k, v in utm.items() if v is not None and not isinstance(v, str)]
        return problems

    def _server_event(self, request: Request) -> Response:
        auth = request.headers.get("authorization")
        if not auth:
            return Response(401, {"error": "Missing Authorization header"})
        # "with your project's secret key in the Authorization header": with or without a Bearer scheme.
        offered = request.bearer() if auth.lower().startswith("bearer ") else auth.strip()
        if PUBLIC_KEY in auth:
            self._count("public_key_refused")
            return Response(403, {"error": "The public key cannot authenticate server events; use the secret key"})
        if offered != SECRET_KEY:
            return Response(401, {"error": "Invalid secret key"})
        if len(request.body) > MAX_BODY_BYTES:
            return Response(413, {"error": "Payload too large"})
        try:
            event = request.json()
        except ValueError:
            return self.validation_error("server_events", "body is not valid JSON")
        if not isinstance(event, dict):
            return self.validation_error("server_events", "body must be one event object")
        self.note_batch("server_events", 1)
        problems = self._server_event_problems(event)
        if problems:
            return Response(400, {"error": "Invalid event", "details": problems})
        key = event.get("idempotencyKey")
        with self.lock:
            if unknown := self._unknown_members(event, SERVER_EVENT_MEMBERS, "visitor", VISITOR_MEMBERS):
                self.counters["unknown_members"] += unknown
            if key is not None and key in self._idempotency_keys:
                if self.key_reuse != "repeat" and self._idempotency_keys[key] != event:
                    self.counters["idempotency_key_conflicts"] += 1
                    return Response(int(self.key_reuse), {
                        "error": "idempotencyKey was already used with a different body",
                        "details": [f"idempotencyKey {key!r}"]})
                self.counters["server_events_deduplicated"] += 1
                return Response(200, {"success": True, "deduplicated": True})
            if key is not None:
                self._idempotency_keys[key] = event
        self.record("server_events", [event])
        return Response(200, {"success": True, "id": uuid.uuid4().hex})

    @staticmethod
    def _server_event_problems(event: dict[str, Any]) -> list[str]:
        problems = [f"{name} is required (a string)" for name in ("eventType", "eventName")
                    if not isinstance(event.get(name), str)]
        if event.get("timestamp") is not None and not _is_iso_8601(event["timestamp"]):
            problems.append(f"timestamp must be an ISO 8601 string, got {event['timestamp']!r}")
        for name in ("idempotencyKey", "page", "experimentId", "variantId"):
            if event.get(name) is not None and not isinstance(event[name], str):
                problems.append(f"{name} must be a string")
        if event.get("properties") is not None and not isinstance(event["properties"], dict):
            problems.append("properties must be an object")
        visitor = event.get("visitor")
        if visitor is not None:
            if not isinstance(visitor, dict):
                problems.append("visitor must be an object")
            else:
                problems += [f"visitor.{k} must be a string" for k, v in visitor.items()
                             if k in VISITOR_MEMBERS and v is not None and not isinstance(v, str)]
        return problems

    def _experiments(self, request: Request) -> Response:
        refused = self._public_auth(request, request.arg("projectId"))
        if refused is not None:
            return refused
        return Response(200, {"experiments": EXPERIMENTS}, {"Cache-Control": "public, s-maxage=60, stale-while-revalidate=30"})


EMULATOR = GradeMyPageEmulator
