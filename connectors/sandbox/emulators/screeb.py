"""Screeb emulator: ``POST /1.0/event`` and ``POST /1.0/release``, strict to ``docs/vendor-api/screeb.md``.

- Auth: ``Authorization: Bearer`` must carry the right token *for the endpoint*: the event token is refused
  on ``/release`` and the release token on ``/event`` (401 ``{"error": "Unauthorized"}``).
- ``/event``: a JSON array of 1-100 objects; each needs a known ``type`` and that type's required fields,
  copilot items a documented ``event_name`` and the ids/texts it requires; ids <= 100 and prompt/response
  <= 10 000 characters; documented fields have their documented JSON types (``rating`` and
  ``rating_scale`` are strings); ``user_alias`` may be omitted (an anonymous user). Any problem refuses the
  whole batch with 400 ``{"error", "message", "details": [{"index", "field", "message"}]}`` and stores
  nothing. Success: 200 ``{"count": n, "lag": null}``.
- 50 requests/s per token on ``/event`` (sliding one-second window, 429 with ``Retry-After``).
- ``/release``: one JSON object with a non-empty ``name``; 200 with the stored release and an ``id``.

Stricter than the document where it is silent, so client mistakes show up here rather than in production:
unknown top-level fields, ``null`` or empty strings where a string is expected, are refused.

Test control (``control(action, args)``, also ``POST /_sandbox/control``): ``undercount`` with
``{"by": 1, "requests": 1}`` makes the next ``requests`` event answers report ``count`` ``by`` lower than
the number of items received (everything is still stored), like a server that silently dropped events.
"""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

from connectors.sandbox.base import Emulator, RateRule, Request, Response, Route, is_iso_datetime

MAX_ITEMS = 100
EVENT_TYPES = ("identify", "track", "group.assign", "group.unassign", "page", "screen", "copilot")
STRING_FIELDS = (
    "user_alias", "type", "event_name", "group_type", "group_name", "url", "screen_name", "conversation_id",
    "copilot_session_id", "prompt", "response", "rating", "rating_scale",
)
OBJECT_FIELDS = ("properties", "context")
REQUIRED_BY_TYPE: dict[str, tuple[str, ...]] = {
    "identify": (),
    "track": ("event_name",),
    "group.assign": ("group_name",),
    "group.unassign": ("group_name",),
    "page": ("url",),
    "screen": ("screen_name",),
    "copilot": ("event_name",),
}
_IDS = ("conversation_id", "copilot_session_id")
REQUIRED_BY_COPILOT_EVENT: dict[str, tuple[str, ...]] = {
    "screeb_copilot_user_prompt": (*_IDS, "prompt"),
    "screeb_copilot_response": (*_IDS, "response"),
    "screeb_copilot_conversion": (),
    "screeb_copilot_satisfaction": (*_IDS, "rating", "rating_scale"),
}
MAX_CHARS = {"conversation_id": 100, "copilot_session_id": 100, "prompt": 10_000, "response": 10_000}
RELEASE_FIELDS = ("name", "description", "version", "tags", "released_at")


def _problem(index: int | None, field: str, message: str) -> dict[str, Any]:
    return {"index": index, "field": field, "message": message}


def _present(item: dict[str, Any], name: str) -> bool:
    return name in item


def _check_event(index: int, item: Any) -> list[dict[str, Any]]:
    """Every problem with one event item (empty when it is valid)."""
    if not isinstance(item, dict):
        return [_problem(index, "", "each event must be a JSON object")]
    problems = []
    for name in item:
        if name not in STRING_FIELDS and name not in OBJECT_FIELDS:
            problems.append(_problem(index, name, "unknown field"))
    for name in STRING_FIELDS:
        if _present(item, name):
            value = item[name]
            if not isinstance(value, str):
                problems.append(_problem(index, name, f"must be a string, got {type(value).__name__}"))
            elif not value.strip():
                problems.append(_problem(index, name, "must not be empty"))
            elif name in MAX_CHARS and len(value) > MAX_CHARS[name]:
                problems.append(_problem(index, name, f"must be at most {MAX_CHARS[name]} characters, got {len(value)}"))
    for name in OBJECT_FIELDS:
        if _present(item, name) and not isinstance(item[name], dict):
            problems.append(_problem(index, name, "must be an object"))
    context = item.get("context")
    if isinstance(context, dict):
        for member in ("locale", "timezone"):
            value = context.get(member)
            if value is not None and not isinstance(value, str):
                problems.append(_problem(index, f"context.{member}", "must be a string"))
    kind = item.get("type")
    if not _present(item, "type"):
        return [*problems, _problem(index, "type", "is required")]
    if kind not in EVENT_TYPES:
        return [*problems, _problem(index, "type", f"must be one of {', '.join(EVENT_TYPES)}")]
    required = list(REQUIRED_BY_TYPE[kind])
    if kind == "copilot":
        event_name = item.get("event_name")
        if isinstance(event_name, str) and event_name in REQUIRED_BY_COPILOT_EVENT:
            required += REQUIRED_BY_COPILOT_EVENT[event_name]
        elif _present(item, "event_name"):
            problems.append(
                _problem(index, "event_name", f"must be one of {', '.join(REQUIRED_BY_COPILOT_EVENT)} for copilot")
            )
    for name in required:
        if not _present(item, name):
            problems.append(_problem(index, name, f"is required for {kind} events"))
    return problems


def _check_release(body: Any) -> list[dict[str, Any]]:
    if not isinstance(body, dict):
        return [_problem(None, "", "the body must be one JSON object (a release), not an array")]
    problems = [_problem(None, name, "unknown field") for name in body if name not in RELEASE_FIELDS]
    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        problems.append(_problem(None, "name", "is required (a non-empty string)"))
    for field in ("description", "version"):
        if field in body and not isinstance(body[field], str):
            problems.append(_problem(None, field, "must be a string"))
    if "tags" in body and not (isinstance(body["tags"], list) and all(isinstance(t, str) for t in body["tags"])):
        problems.append(_problem(None, "tags", "must be an array of strings"))
    if "released_at" in body and not is_iso_datetime(body["released_at"]):
        problems.append(_problem(None, "released_at", "must be an ISO 8601 date-time with an offset"))
    return problems


def _bad_request(problems: list[dict[str, Any]]) -> Response:
    first = problems[0]
    where = f"[{first['index']}]" if first["index"] is not None else ""
    path = f"{where}.{first['field']}" if first["field"] and where else where or first["field"]
    return Response(
        400, {"error": "validation_error", "message": f"{path}: {first['message']}".lstrip(": "), "details": problems}
    )


class ScreebEmulator(Emulator):
    vendor = "screeb"
    keys = {"api_token": "sandbox-screeb-api-token", "release_token": "sandbox-screeb-release-token"}

    def __init__(self, record_items: bool = True, base_url: str = "") -> None:
        self._undercount_by = 0
        self._undercount_left = 0
        self._release_ids = itertools.count(1)
        super().__init__(record_items=record_items, base_url=base_url)

    def routes(self) -> list[Route]:
        return [
            Route("POST", "/1.0/event", self._event, "event", rate=RateRule(50, 1.0, key=lambda r: r.bearer())),
            Route("POST", "/1.0/release", self._release, "release"),
        ]

    def validation_error(self, endpoint: str, message: str) -> Response:
        return _bad_request([_problem(None, "", message)])

    def reset_state(self) -> None:
        self._undercount_by = 0
        self._undercount_left = 0
        self._release_ids = itertools.count(1)

    def control(self, action: str, args: dict[str, Any]) -> Any:
        if action == "undercount":
            with self.lock:
                self._undercount_by = int(args.get("by", 1))
                self._undercount_left = int(args.get("requests", 1))
            return {"undercount_by": self._undercount_by, "requests": self._undercount_left}
        return super().control(action, args)

    def _authorized(self, request: Request, credential: str) -> bool:
        return request.bearer() == self.keys[credential]

    def _event(self, request: Request) -> Response:
        if not self._authorized(request, "api_token"):
            return Response(401, {"error": "Unauthorized"})
        try:
            body = request.json()
        except ValueError:
            return _bad_request([_problem(None, "", "the body is not valid JSON")])
        if not isinstance(body, list):
            return _bad_request([_problem(None, "", "the body must be a JSON array of events")])
        self.note_batch("event", len(body))
        if not 1 <= len(body) <= MAX_ITEMS:
            return _bad_request([_problem(None, "", f"send between 1 and {MAX_ITEMS} events, got {len(body)}")])
        problems = [p for index, item in enumerate(body) for p in _check_event(index, item)]
        if problems:
            return _bad_request(problems)
        self.record("event", body)
        count = len(body)
        with self.lock:
            if self._undercount_left > 0:
                self._undercount_left -= 1
                count = max(0, count - self._undercount_by)
        return Response(200, {"count": count, "lag": None})

    def _release(self, request: Request) -> Response:
        if not self._authorized(request, "release_token"):
            return Response(401, {"error": "Unauthorized"})
        try:
            body = request.json()
        except ValueError:
            return _bad_request([_problem(None, "", "the body is not valid JSON")])
        self.note_batch("release", len(body) if isinstance(body, list) else 1)
        problems = _check_release(body)
        if problems:
            return _bad_request(problems)
        with self.lock:
            release_id = f"rel_{next(self._release_ids)}"
        stored = {"id": release_id, **body}
        stored.setdefault("released_at", dt.datetime.now(dt.UTC).isoformat())
        self.record("release", [body])
        return Response(200, stored)


EMULATOR = ScreebEmulator
