"""Screeb emulator: ``POST /1.0/event`` and ``POST /1.0/release``, strict to ``docs/vendor-api/screeb.md``.

What the document says, enforced:
- Auth: ``Authorization: Bearer`` must carry the right token *for the endpoint*: the event token is refused
  on ``/release`` and the release token on ``/event`` (401 ``{"error": "Unauthorized"}``).
- ``/event``: a JSON array of 1-100 objects; each needs a known ``type`` and that type's required fields,
  copilot items a documented ``event_name`` and the ids/texts it requires; ids <= 100 and prompt/response
  <= 10 000 characters; documented fields have their documented JSON types (``rating`` and
  ``rating_scale`` are strings, ``context.locale``/``timezone`` strings); ``user_alias`` may be omitted (an
  anonymous user). Any problem refuses the whole batch with 400 and stores nothing. Success: 200
  ``{"count": n, "lag": null}``.
- 50 requests/s per token on ``/event`` (sliding one-second window, 429 with ``Retry-After``).
- Bodies are parsed strictly (:func:`connectors.sandbox.base.strict_json`: no NaN/Infinity, no duplicate
  keys...); a body that is not strict JSON is a 400 and is counted in ``invalid_json``.

Where the document is silent, every plausible variant is accepted (a client must not depend on a guess):
- empty or blank strings (``"user_alias": ""``, ``"event_name": " "``) are strings: accepted;
- any JSON inside ``properties`` and any extra ``context`` member; fields of another type (``url`` on a
  track event) are accepted and stored;
- ``/release``: ``name`` and ``version`` are required strings (empty allowed); ``description``, ``tags``
  and ``released_at`` may be omitted (the document only says "The released_at field is optional", and
  this emulator does not read that as requiring description and tags). ``tags`` and ``released_at`` are
  described by nothing but the example (``["API", "V1"]``, ``2023-03-22T15:22:41+00:00``), so any JSON
  value is accepted for them: tags that are not all strings (or not an array), a ``released_at`` without
  an offset, a date alone, any text, a number. The connector's checks of them beyond what its Field kinds
  need are opt-in choices (``tags_strings``, ``released_at_has_offset``). 200 with the stored release and
  an ``id`` (the real answer is undocumented).

Assumptions (stricter than the document, named so a test relying on them says so):
- an unknown top-level field, or JSON ``null`` where a documented field wants a string/object, is refused;
  the connector omits NULL fields and sends only declared ones, so it never depends on this;
- the 400 body is undocumented: by default ``{"error", "message", "details": [{"index", "field",
  "message"}]}``. ``control("error_shape", {"shape": ...})`` switches it to any of :data:`ERROR_SHAPES`
  (including plain text and an empty body), so a test can prove the connector copes with any of them.

Test control (``control(action, args)``, also ``POST /_sandbox/control``): ``undercount`` with
``{"by": 1, "requests": 1}`` makes the next ``requests`` event answers report ``count`` ``by`` lower than
the number of items received (everything is still stored), like a server that silently dropped events;
``error_shape`` as above (reset to ``details`` by ``reset``).
"""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

from connectors.sandbox.base import Emulator, RateRule, Request, Response, Route

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
# Shapes a 400 body may take here (the document gives none): see ``_bad_request``.
ERROR_SHAPES = ("details", "errors", "message", "nested", "array", "text", "html", "empty", "unrelated")


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
    for field in ("name", "version"):
        if not isinstance(body.get(field), str):
            problems.append(_problem(None, field, "is required (a string)"))
    if "description" in body and not isinstance(body["description"], str):
        problems.append(_problem(None, "description", "must be a string"))
    # tags and released_at: any JSON value (the document describes them only by its example).
    return problems


def _where(problem: dict[str, Any]) -> str:
    where = f"[{problem['index']}]" if problem["index"] is not None else ""
    return f"{where}.{problem['field']}" if problem["field"] and where else where or problem["field"]


def _bad_request(problems: list[dict[str, Any]], shape: str = "details") -> Response:
    """A 400 in one of :data:`ERROR_SHAPES`; each names the first problem's place and message somewhere."""
    first = problems[0]
    message = f"{_where(first)}: {first['message']}".lstrip(": ")
    if shape == "errors":
        return Response(400, {"errors": [f"{_where(p)}: {p['message']}".lstrip(": ") for p in problems]})
    if shape == "message":
        return Response(400, {"message": message})
    if shape == "nested":
        return Response(400, {"error": {"code": "VALIDATION_FAILED", "message": message}})
    if shape == "array":
        return Response(400, [{"path": [p["index"], p["field"]], "msg": p["message"]} for p in problems])
    if shape == "text":
        return Response(400, f"Bad Request: {message}".encode(), {"Content-Type": "text/plain"})
    if shape == "html":
        return Response(400, f"<html><body><h1>400 Bad Request</h1><p>{message}</p></body></html>".encode(),
                        {"Content-Type": "text/html"})
    if shape == "empty":
        return Response(400, b"", {"Content-Type": "text/plain"})
    if shape == "unrelated":
        return Response(400, {"ok": False, "code": 4001})
    return Response(400, {"error": "validation_error", "message": message, "details": problems})


class ScreebEmulator(Emulator):
    vendor = "screeb"
    keys = {"api_token": "sandbox-screeb-api-token", "release_token": "sandbox-screeb-release-token"}
    error_shapes = ERROR_SHAPES

    def __init__(self, record_items: bool = True, base_url: str = "") -> None:
        self._undercount_by = 0
        self._undercount_left = 0
        self._release_ids = itertools.count(1)
        self.error_shape = "details"
        super().__init__(record_items=record_items, base_url=base_url)

    def routes(self) -> list[Route]:
        return [
            Route("POST", "/1.0/event", self._event, "event", rate=RateRule(50, 1.0, key=lambda r: r.bearer())),
            Route("POST", "/1.0/release", self._release, "release"),
        ]

    def validation_error(self, endpoint: str, message: str) -> Response:
        return self._bad_request([_problem(None, "", message)])

    def _bad_request(self, problems: list[dict[str, Any]]) -> Response:
        return _bad_request(problems, self.error_shape)

    def reset_state(self) -> None:
        self.error_shape = "details"
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
            return self._bad_request([_problem(None, "", "the body is not valid JSON")])
        if not isinstance(body, list):
            return self._bad_request([_problem(None, "", "the body must be a JSON array of events")])
        self.note_batch("event", len(body))
        if not 1 <= len(body) <= MAX_ITEMS:
            return self._bad_request([_problem(None, "", f"send between 1 and {MAX_ITEMS} events, got {len(body)}")])
        problems = [p for index, item in enumerate(body) for p in _check_event(index, item)]
        if problems:
            return self._bad_request(problems)
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
            return self._bad_request([_problem(None, "", "the body is not valid JSON")])
        self.note_batch("release", len(body) if isinstance(body, list) else 1)
        problems = _check_release(body)
        if problems:
            return self._bad_request(problems)
        with self.lock:
            release_id = f"rel_{next(self._release_ids)}"
        stored = {"id": release_id, **body}
        stored.setdefault("released_at", dt.datetime.now(dt.UTC).isoformat())
        self.record("release", [body])
        return Response(200, stored)


EMULATOR = ScreebEmulator
