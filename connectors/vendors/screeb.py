"""Screeb API (``docs/vendor-api/screeb.md``): events and releases.

``POST /1.0/event``: a JSON array of 1-100 typed items (identify, track, group.assign, group.unassign,
page, screen, copilot), ``Authorization: Bearer <api token>``, 50 requests/s per token (429 beyond),
200 ``{"count": n, "lag": ms|null}``, 400 on a validation error, 401 on a bad token.

``POST /1.0/release``: one JSON object per request (name, description, version, tags, released_at),
authenticated with a *separate* release token (``SCREEB_RELEASE_TOKEN``), Bearer as well.

Every documented rule is checked in SQL before sending, so a bad row is rejected with a reason a person
can read and never costs a request: the type-specific required fields, the copilot ``event_name`` values,
which copilot ids/texts each of them requires, and the length limits (ids <= 100, prompt/response
<= 10 000 characters). ``rating`` and ``rating_scale`` are strings: numbers in the warehouse are sent as
text.

Choices where the document is silent:
- ``user_alias`` may be omitted (Screeb then creates an anonymous user). A warehouse row without an alias
  is far more often a join that went wrong than a real anonymous visitor, and each one would create a
  stray user at Screeb, so such rows are *rejected* unless the sync opts in with
  ``destination.options.anonymous_users: true``. Either way a blank alias counts as missing (it is never
  sent as ``""``).
- A property set to ``null`` on identify deletes the trait. NULLs inside ``properties`` (and ``context``)
  are omitted by default, so a NULL in the warehouse never deletes anything by accident; a sync that means
  to mirror deletions sets ``keep_nulls: true`` (a sync-level setting), and then every NULL member of the
  objects is sent as ``null``. Use it on identify syncs only: what Screeb does with null properties on
  other event types is not documented.
- No request-size limit is documented: requests are capped at 1 MB (100 copilot events with 10 000-char
  prompts and responses would be ~2 MB, so such batches are split by bytes).
- The rate limit (50/s) is documented for ``/event`` only; ``/release`` gets no limiter (429 and
  ``Retry-After`` are still honoured there). The event limiter spaces requests at 93% of 50/s (46.5/s,
  one every 21.5 ms) per token, shared by every thread and process using the token. Not the engine's
  default 95%: the document does not say how Screeb counts, so assume a sliding one-second window over
  *arrival* times. Spaced sends arrive with jitter (measured against the sandbox: requests up to ~45 ms
  late, then arriving together), and a window holds 50 arrivals only while that jitter stays under
  50 x spacing - 1 s: 53 ms at 95% (the sandbox saw 50 in one second), 75 ms at 93%. A sync can still
  set ``delivery.rate_safety``.
- ``context`` members other than ``locale`` and ``timezone`` are passed through; those two must be strings.
- Fields that do not belong to an item's type (e.g. ``url`` on a track event) are sent as given; a
  UNION ALL model leaves them NULL, and NULL top-level fields are omitted.
- A 200 whose ``count`` differs from the number of items sent is still recorded as delivered (the request
  was accepted as a whole and there is no read API to find out which item was dropped), with a warning
  in the run's notes. A 400 refuses the whole batch: the engine bisects it to isolate the bad items.
- ``released_at`` is optional (Screeb defaults it to the send time); when given it is sent as ISO 8601
  with an offset. ``tags`` must be an array of strings. The release response body is undocumented: an
  ``id`` in it is kept as the vendor id when present.
- No timestamp field exists on events: they land at send time, so a backfill of an old partition shows
  up at Screeb as of the day it is sent.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from connectors.engine.endpoint import (
    BatchOutcome,
    Credential,
    Endpoint,
    Field,
    HttpResponse,
    Rate,
    Rule,
    Vendor,
)
from connectors.engine.payload import quote_literal

EVENT_TYPES = ("identify", "track", "group.assign", "group.unassign", "page", "screen", "copilot")
COPILOT_PROMPT = "screeb_copilot_user_prompt"
COPILOT_RESPONSE = "screeb_copilot_response"
COPILOT_CONVERSION = "screeb_copilot_conversion"
COPILOT_SATISFACTION = "screeb_copilot_satisfaction"
COPILOT_EVENTS = (COPILOT_PROMPT, COPILOT_RESPONSE, COPILOT_CONVERSION, COPILOT_SATISFACTION)
MAX_ID_CHARS = 100
MAX_TEXT_CHARS = 10_000

# Conditions are evaluated over the model's columns as selected (before normalization), so trim here the
# same way the engine trims required strings: ' track ' is a track event.
_TYPE = 'trim(CAST("type" AS VARCHAR))'
_EVENT = "trim(CAST(event_name AS VARCHAR))"


def _in(expr: str, values: Sequence[str]) -> str:
    return f"{expr} IN ({', '.join(quote_literal(v) for v in values)})"


def _copilot(*event_names: str) -> str:
    """SQL: the row is a copilot event whose event_name is one of ``event_names``."""
    return f"({_TYPE} = 'copilot' AND {_in(_EVENT, event_names)})"


def _user_alias(anonymous_users: bool) -> Field:
    if anonymous_users:
        # Never required, but declared with a condition so the engine still trims it and turns a blank
        # alias into "omitted" (an anonymous user) rather than sending "".
        return Field("user_alias", "string", required_when="FALSE")
    return Field(
        "user_alias",
        "string",
        required_when="TRUE",
        required_because=(
            "(without one Screeb would create an anonymous user; set destination.options.anonymous_users: "
            "true to send such rows)"
        ),
    )


def _event_fields(anonymous_users: bool) -> tuple[Field, ...]:
    ids_needed = _copilot(COPILOT_PROMPT, COPILOT_RESPONSE, COPILOT_SATISFACTION)
    return (
        _user_alias(anonymous_users),
        Field("type", "string", required=True, choices=EVENT_TYPES),
        Field("properties", "object"),
        Field("context", "object"),
        Field(
            "event_name",
            "string",
            required_when=_in(_TYPE, ("track", "copilot")),
            required_because="for track and copilot events",
        ),
        Field("group_type", "string"),
        Field(
            "group_name",
            "string",
            required_when=_in(_TYPE, ("group.assign", "group.unassign")),
            required_because="for group.assign and group.unassign events",
        ),
        Field("url", "string", required_when=f"{_TYPE} = 'page'", required_because="for page events"),
        Field("screen_name", "string", required_when=f"{_TYPE} = 'screen'", required_because="for screen events"),
        Field(
            "conversation_id",
            "string",
            required_when=ids_needed,
            required_because=f"for copilot events other than {COPILOT_CONVERSION}",
            max_length=MAX_ID_CHARS,
        ),
        Field(
            "copilot_session_id",
            "string",
            required_when=ids_needed,
            required_because=f"for copilot events other than {COPILOT_CONVERSION}",
            max_length=MAX_ID_CHARS,
        ),
        Field(
            "prompt",
            "string",
            required_when=_copilot(COPILOT_PROMPT),
            required_because=f"for {COPILOT_PROMPT} events",
            max_length=MAX_TEXT_CHARS,
        ),
        Field(
            "response",
            "string",
            required_when=_copilot(COPILOT_RESPONSE),
            required_because=f"for {COPILOT_RESPONSE} events",
            max_length=MAX_TEXT_CHARS,
        ),
        Field(
            "rating",
            "string",
            required_when=_copilot(COPILOT_SATISFACTION),
            required_because=f"for {COPILOT_SATISFACTION} events",
        ),
        Field(
            "rating_scale",
            "string",
            required_when=_copilot(COPILOT_SATISFACTION),
            required_because=f"for {COPILOT_SATISFACTION} events",
        ),
    )


def _member_is_string(column: str, member: str) -> Rule:
    """A member of an object column, when present and not null, must be a JSON string."""
    return Rule(
        when=f"json_type(TRY_CAST({column} AS JSON), '$.{member}') NOT IN ('VARCHAR', 'NULL')",
        reason=f"'{column}.{member} must be a string, got ' || json_extract(TRY_CAST({column} AS JSON), '$.{member}')",
    )


EVENT_RULES = (
    # A Field's choices apply to every row; the copilot names only bind copilot events.
    Rule(
        when=f"{_TYPE} = 'copilot' AND {_EVENT} <> '' AND NOT {_in(_EVENT, COPILOT_EVENTS)}",
        reason=(
            f"'event_name must be one of {', '.join(COPILOT_EVENTS)} for copilot events; got ' "
            f"|| left({_EVENT}, 60)"
        ),
    ),
    _member_is_string("context", "locale"),
    _member_is_string("context", "timezone"),
)

_TAGS_JSON = "TRY_CAST(tags AS JSON)"
RELEASE_RULES = (
    Rule(
        when=(
            f"CASE WHEN json_type({_TAGS_JSON}) = 'ARRAY' THEN list_bool_or(list_transform("
            f"CAST(json_extract({_TAGS_JSON}, '$[*]') AS JSON[]), lambda t: json_type(t) <> 'VARCHAR')) END"
        ),
        reason="'tags must be an array of strings, got ' || left(CAST(tags AS VARCHAR), 60)",
    ),
)


class ScreebEndpoint(Endpoint):
    """Both Screeb endpoints authenticate with ``Authorization: Bearer``, each with its own token."""

    def headers(self, credentials: Mapping[str, str]) -> dict[str, str]:
        return {"Authorization": f"Bearer {credentials[self.credential]}"}

    def error_reason(self, response: HttpResponse) -> str:
        """Screeb's 400 body is undocumented: read the usual shapes (details/errors lists, message, error)."""
        body = response.json()
        if response.status == 400 and isinstance(body, dict):
            parts: list[str] = []
            problems = body.get("details") or body.get("errors")
            if isinstance(problems, list):
                for problem in problems[:3]:
                    if isinstance(problem, dict):
                        where = problem.get("field") or problem.get("path") or problem.get("loc")
                        what = problem.get("message") or problem.get("msg") or ""
                        parts.append(f"{where}: {what}" if where else str(what))
                    elif isinstance(problem, str):
                        parts.append(problem)
            if not parts:
                for name in ("message", "error"):
                    if isinstance(body.get(name), str) and body[name]:
                        parts.append(body[name])
                        break
            if parts:
                return "Screeb refused the item (HTTP 400): " + "; ".join(parts)
        return super().error_reason(response)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScreebEventEndpoint(ScreebEndpoint):
    """``/1.0/event``. ``anonymous_users`` comes from ``destination.options`` (see the module notes)."""

    anonymous_users: bool = False
    OPTIONS: ClassVar[Mapping[str, str]] = {
        "anonymous_users": "true: send rows without user_alias (Screeb then creates anonymous users); default false",
    }

    def configure(self, options: Mapping[str, Any]) -> Endpoint:
        for name, value in options.items():
            if name != "anonymous_users":
                raise ValueError(f"{name}: unknown option for {self.qualified_name} (known: anonymous_users)")
            if not isinstance(value, bool):
                raise ValueError(f"anonymous_users: must be true or false, got {value!r}")
        anonymous = bool(options.get("anonymous_users", self.anonymous_users))
        return dataclasses.replace(self, anonymous_users=anonymous, fields=_event_fields(anonymous))

    def removal(self, payload: dict[str, Any]) -> dict[str, Any] | None:
        """A membership gone from a mirrored source: ``group.assign`` is undone by ``group.unassign`` of the
        same user and group (no properties). Other types have no undo (Screeb deletes no users or events)."""
        if payload.get("type") != "group.assign":
            return None
        kept = {k: payload[k] for k in ("user_alias", "group_type", "group_name") if payload.get(k) is not None}
        return {**kept, "type": "group.unassign"}

    def parse(self, response: HttpResponse, items: Sequence[bytes]) -> BatchOutcome:
        """All items are accepted on a 200; a ``count`` that disagrees with what was sent becomes a warning."""
        outcome = BatchOutcome(accepted=dict.fromkeys(range(len(items))))
        body = response.json()
        count = body.get("count") if isinstance(body, dict) else None
        sent = len(items)
        if isinstance(count, bool) or not isinstance(count, int | float):
            outcome.warnings.append(
                f"Screeb answered 200 without a numeric count for a request of {sent} events "
                "(recorded as delivered)"
            )
        elif count != sent:
            outcome.warnings.append(
                f"Screeb counted {count:g} of {sent} events in one request (HTTP 200; recorded as delivered, "
                "the answer does not say which events were dropped)"
            )
        return outcome


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScreebReleaseEndpoint(ScreebEndpoint):
    """``/1.0/release``: one JSON object per request, never an array."""

    def encode(self, items: Sequence[bytes], credentials: Mapping[str, str]) -> bytes:
        if len(items) != 1:
            raise ValueError(f"{self.qualified_name} sends exactly one release per request, got {len(items)}")
        return items[0]

    def envelope_bytes(self) -> int:
        return 0

    def parse(self, response: HttpResponse, items: Sequence[bytes]) -> BatchOutcome:
        body = response.json()
        release_id = body.get("id") if isinstance(body, dict) else None
        return BatchOutcome(accepted={0: str(release_id) if release_id is not None else None})


EVENT = ScreebEventEndpoint(
    vendor="screeb",
    name="event",
    path="/1.0/event",
    description="Typed user events: identify, track, group.assign/unassign, page, screen, copilot.",
    fields=_event_fields(anonymous_users=False),
    rules=EVENT_RULES,
    max_items=100,
    rate=Rate(50, 1.0, safety=0.93),  # see the module notes: margin for arrival jitter
    credential="api_token",
)

RELEASE = ScreebReleaseEndpoint(
    vendor="screeb",
    name="release",
    path="/1.0/release",
    description="Product releases (name, description, version, tags, released_at), one per request.",
    fields=(
        Field("name", "string", required=True),
        Field("description", "string"),
        Field("version", "string"),
        Field("tags", "array"),
        Field("released_at", "timestamp"),
    ),
    rules=RELEASE_RULES,
    max_items=1,
    credential="release_token",
)

VENDOR = Vendor(
    name="screeb",
    title="Screeb",
    env_prefix="SCREEB",
    default_base_url="https://api.screeb.app",
    credentials=(Credential("api_token", "SCREEB_API_TOKEN"), Credential("release_token", "SCREEB_RELEASE_TOKEN")),
    endpoints={e.name: e for e in (EVENT, RELEASE)},
)
