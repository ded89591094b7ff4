"""Screeb API (``docs/vendor-api/screeb.md``): events and releases.

``POST /1.0/event``: a JSON array of 1-100 typed items (identify, track, group.assign, group.unassign,
page, screen, copilot), ``Authorization: Bearer <api token>``, 50 requests/s per token (429 beyond),
200 ``{"count": n, "lag": ms|null}``, 400 on a validation error, 401 on a bad token.

``POST /1.0/release``: one JSON object per request (name, description, version, tags, released_at),
authenticated with a *separate* release token (``SCREEB_RELEASE_TOKEN``), Bearer as well.

Every documented rule is checked in SQL before sending, so a bad row is rejected with a reason naming the
field (and the rule) and never costs a request: ``type`` one of the seven documented types, the
type-specific required fields, the copilot ``event_name`` values, which copilot ids/texts each of them
requires, the length limits (ids <= 100, prompt/response <= 10 000 characters), ``context.locale`` and
``context.timezone`` strings, and the release's ``name`` and ``version``, a JSON array as ``tags`` and
an ISO 8601 ``released_at`` (the example's shapes: see below). Each Field's and Rule's
``basis`` quotes the document. Nothing else is refused by default: a blank string is a string (``""`` is
sent as ``""``), a row without ``user_alias`` is sent without one (the document: "If omitted, an
anonymous user is created automatically server-side"). Values go out as the model wrote them; the only
conversion is numbers to text for string fields (``rating`` and ``rating_scale`` are strings at Screeb).

Opt-in rules (``strict: true`` or ``strict: [name, ...]`` in the sync file):
- ``user_alias_required``: reject rows without ``user_alias``. A warehouse row without an alias is more
  often a join that went wrong than a real anonymous visitor, and each one creates a stray user at Screeb.
  ``destination.options.anonymous_users: false`` turns this rule on too (the option predates ``strict``).
- ``<field>_not_blank`` for ``user_alias``, ``event_name``, ``group_name``, ``url``, ``screen_name``:
  reject an empty or whitespace-only text (the document sets no minimum length).
- Release ``description_required`` and ``tags_required``: the document's only statement about release
  fields is "The released_at field is optional"; name and version are required (a release is a name and a
  version), while a release without a description or tags is sent unless the sync opts in.
- Release ``tags_strings`` (every tag a JSON string) and ``released_at_has_offset`` (a text ``released_at``
  carries ``Z`` or an offset): the document describes both fields only by its example body
  (``"tags": ["API", "V1"]``, ``"released_at": "2023-03-22T15:22:41+00:00"``), so by default any array
  and any ISO 8601 form (a date alone, a local time) go out as the model wrote them.

Choices where the document is silent:
- A property set to ``null`` on identify deletes the trait. NULLs inside ``properties`` (and ``context``)
  are omitted by default, so a NULL in the warehouse never deletes anything by accident; a sync that means
  to mirror deletions sets ``keep_nulls: true`` (a sync-level setting), and then every NULL member of the
  objects is sent as ``null``. Use it on identify syncs only: what Screeb does with null properties on
  other event types is not documented.
- No request-size limit is documented: requests are capped at 1 MB (100 copilot events with 10 000-char
  prompts and responses would be ~2 MB, so such batches are split by bytes).
- The rate limit (50/s) is documented for ``/event`` only; ``/release`` gets no limiter (429 and
  ``Retry-After`` are still honoured there). The event limiter spaces requests at 96% of 50/s (48/s,
  one every 20.8 ms) per token, shared by every thread and process using the token. Not the engine's
  default 95% but not 100% either: the document does not say how Screeb counts, so assume the strictest
  reading, a sliding one-second window over *arrival* times. A window then holds at most 50 arrivals as
  long as arrival jitter stays under 50 x spacing - 1 s = 42 ms. Measured against the sandbox in its own
  process (``benchmarks/bench_screeb_rate.py``): 48.0 requests/s, at most 49 in any second, 0 x 429, also
  with three CPU-bound processes competing for the 2 cores. A sync on a jittery link can
  set ``delivery.rate_safety`` lower.
- ``context`` members other than ``locale`` and ``timezone`` are passed through.
- Fields that do not belong to an item's type (e.g. ``url`` on a track event) are sent as given; a
  UNION ALL model leaves them NULL, and NULL top-level fields are omitted.
- A 200 whose ``count`` differs from the number of items sent is still recorded as delivered (the request
  was accepted as a whole and there is no read API to find out which item was dropped), with a warning
  in the run's notes. A 400 refuses the whole batch: the engine bisects it to isolate the bad items.
- The 400 body is undocumented: any JSON body is read for a message (lists of problems under ``details``,
  ``errors``, ``detail``...; ``message``/``error`` strings or objects; a bare string or list), and a body
  that is not JSON, or JSON with nothing recognizable, is quoted as it came. Either way the bad item is
  rejected with a readable reason.
- ``released_at`` is optional (Screeb defaults it to the send time); when given it is an ISO 8601 date or
  date-time (the example's format, the only description; kind ``iso8601``): text as written, TIMESTAMP
  columns in UTC with ``+00:00``. ``tags`` is a JSON array (the example's shape: a LIST column, or JSON
  text), members as written. The release response body is undocumented: an ``id`` in it is kept as the
  vendor id when present, anything else is ignored.
- No timestamp field exists on events: they land at send time, so a backfill of an old partition shows
  up at Screeb as of the day it is sent.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from connectors.engine import iso8601
from connectors.engine.endpoint import (
    BatchOutcome,
    Credential,
    Endpoint,
    Field,
    HttpResponse,
    Rate,
    Rule,
    Vendor,
    not_blank,
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

# Conditions are evaluated over the model's columns as selected. No trim: ' track ' is not a documented
# type (the engine sends text as written, and the ``type`` choices reject it).
_TYPE = 'CAST("type" AS VARCHAR)'
_EVENT = "CAST(event_name AS VARCHAR)"

_COPILOT_TABLE = "doc: Type-specific fields, `copilot` table"


def _in(expr: str, values: Sequence[str]) -> str:
    return f"{expr} IN ({', '.join(quote_literal(v) for v in values)})"


def _copilot(*event_names: str) -> str:
    """SQL: the row is a copilot event whose event_name is one of ``event_names``."""
    return f"({_TYPE} = 'copilot' AND {_in(_EVENT, event_names)})"


def _event_fields() -> tuple[Field, ...]:
    ids_needed = _copilot(COPILOT_PROMPT, COPILOT_RESPONSE, COPILOT_SATISFACTION)
    def ids_basis(name: str, what: str) -> str:
        return (f"{_COPILOT_TABLE}: `{name} | string | yes (except when event_name is {COPILOT_CONVERSION}) | "
                f"Unique identifier for the {what} (max 100 chars)`")

    return (
        Field(
            "user_alias",
            "string",
            basis="doc: Common fields: `user_alias | string | no | An alias to identify the user. If omitted, an "
            "anonymous user is created automatically server-side`",
        ),
        Field(
            "type",
            "string",
            required=True,
            choices=EVENT_TYPES,
            basis="doc: Request body: `Each item in the array must contain at least type.`; Common fields: "
            "`type | string | yes | The event type (see table above)`; the `Event types` table lists seven: "
            "`identify | Set or update properties on a user`, `track | Track a custom event`, `group.assign | "
            "Assign a user to a group`, `group.unassign | Unassign a user from a group`, `page | Track a page "
            "view`, `screen | Track a screen view (mobile)`, `copilot | Track a Screeb Copilot interaction`",
        ),
        Field("properties", "object",
              basis="doc: Common fields: `properties | object | no | Key-value pairs attached to the event`"),
        Field("context", "object",
              basis="doc: Common fields: `context | object | no | Optional context (see below)`; `Context object`"),
        Field(
            "event_name",
            "string",
            required_when=_in(_TYPE, ("track", "copilot")),
            required_because="for track and copilot events",
            basis="doc: `track` table: `event_name | string | yes | Name of the event`; `copilot` table: "
            "`event_name | string | yes | One of`",
        ),
        Field("group_type", "string",
              basis="doc: `group.assign / group.unassign` table: `group_type | string | no | Type/category of the group`"),
        Field(
            "group_name",
            "string",
            required_when=_in(_TYPE, ("group.assign", "group.unassign")),
            required_because="for group.assign and group.unassign events",
            basis="doc: `group.assign / group.unassign` table: `group_name | string | yes | Name of the group`",
        ),
        Field(
            "url", "string", required_when=f"{_TYPE} = 'page'", required_because="for page events",
            basis="doc: `page` table: `url | string | yes | The page URL`",
        ),
        Field(
            "screen_name", "string", required_when=f"{_TYPE} = 'screen'", required_because="for screen events",
            basis="doc: `screen` table: `screen_name | string | yes | The screen name`",
        ),
        Field(
            "conversation_id",
            "string",
            required_when=ids_needed,
            required_because=f"for copilot events other than {COPILOT_CONVERSION}",
            max_length=MAX_ID_CHARS,
            basis=ids_basis("conversation_id", "conversation"),
        ),
        Field(
            "copilot_session_id",
            "string",
            required_when=ids_needed,
            required_because=f"for copilot events other than {COPILOT_CONVERSION}",
            max_length=MAX_ID_CHARS,
            basis=ids_basis("copilot_session_id", "copilot session"),
        ),
        Field(
            "prompt",
            "string",
            required_when=_copilot(COPILOT_PROMPT),
            required_because=f"for {COPILOT_PROMPT} events",
            max_length=MAX_TEXT_CHARS,
            basis=f"{_COPILOT_TABLE}: `prompt | string | yes (when event_name is {COPILOT_PROMPT}) | The user's "
            "prompt text (max 10 000 chars)`",
        ),
        Field(
            "response",
            "string",
            required_when=_copilot(COPILOT_RESPONSE),
            required_because=f"for {COPILOT_RESPONSE} events",
            max_length=MAX_TEXT_CHARS,
            basis=f"{_COPILOT_TABLE}: `response | string | yes (when event_name is {COPILOT_RESPONSE}) | The "
            "copilot's response text (max 10 000 chars)`",
        ),
        Field(
            "rating",
            "string",
            required_when=_copilot(COPILOT_SATISFACTION),
            required_because=f"for {COPILOT_SATISFACTION} events",
            basis=f"{_COPILOT_TABLE}: `rating | string | yes (when event_name is {COPILOT_SATISFACTION}) | The "
            "satisfaction rating value`",
        ),
        Field(
            "rating_scale",
            "string",
            required_when=_copilot(COPILOT_SATISFACTION),
            required_because=f"for {COPILOT_SATISFACTION} events",
            basis=f"{_COPILOT_TABLE}: `rating_scale | string | yes (when event_name is {COPILOT_SATISFACTION}) | "
            "The scale used for the rating`",
        ),
    )


def _member_is_string(column: str, member: str, row: str) -> Rule:
    """A member of an object column, when present and not null, must be a JSON string."""
    return Rule(
        when=f"json_type(TRY_CAST({column} AS JSON), '$.{member}') NOT IN ('VARCHAR', 'NULL')",
        reason=f"'{column}.{member} must be a string, got ' || json_extract(TRY_CAST({column} AS JSON), '$.{member}')",
        name=f"{column}_{member}_string",
        field=column,
        basis=f"doc: `Context object` table: `{row}`",
    )


USER_ALIAS_REQUIRED = Rule(
    when="user_alias IS NULL",
    reason=(
        "'user_alias is missing: Screeb would create an anonymous user (the sync asks for an alias on every "
        "row)'"
    ),
    name="user_alias_required",
    field="user_alias",
    basis=(
        "choice: the document makes user_alias optional (`If omitted, an anonymous user is created "
        "automatically server-side`); a missing alias in a warehouse is usually a broken join"
    ),
    opt_in=True,
)

EVENT_RULES = (
    # A Field's choices apply to every row; the copilot names only bind copilot events.
    Rule(
        when=f"{_TYPE} = 'copilot' AND {_EVENT} IS NOT NULL AND NOT {_in(_EVENT, COPILOT_EVENTS)}",
        reason=(
            f"'event_name must be one of {', '.join(COPILOT_EVENTS)} for copilot events; got ' "
            f"|| left({_EVENT}, 60)"
        ),
        name="copilot_event_name",
        field="event_name",
        basis=f"{_COPILOT_TABLE}: `event_name | string | yes | One of {', '.join(COPILOT_EVENTS)}`",
    ),
    _member_is_string("context", "locale", "locale | string | User locale (e.g. en-US)"),
    _member_is_string("context", "timezone", "timezone | string | User timezone (e.g. Europe/Paris)"),
    USER_ALIAS_REQUIRED,
    *(
        not_blank(name, basis=f"choice: the document types {name} as a string (`{name} | string`) and sets no "
                              "minimum length")
        for name in ("user_alias", "event_name", "group_name", "url", "screen_name")
    ),
)

_RELEASE_DOC = "doc: Releases API: `The released_at field is optional and will default to the current date.`"
_TAGS_JSON = "TRY_CAST(tags AS JSON)"
_RELEASED_AT = 'CAST("released_at" AS VARCHAR)'
RELEASE_RULES = (
    Rule(
        when=(
            f"CASE WHEN json_type({_TAGS_JSON}) = 'ARRAY' THEN list_bool_or(list_transform("
            f"CAST(json_extract({_TAGS_JSON}, '$[*]') AS JSON[]), lambda t: json_type(t) <> 'VARCHAR')) END"
        ),
        reason="'tags must be an array of strings, got ' || left(CAST(tags AS VARCHAR), 60)",
        name="tags_strings",
        field="tags",
        basis=(
            'choice: the document describes tags only by its example (`"tags": ["API", "V1"]`), strings; it '
            "never says other members are refused"
        ),
        opt_in=True,
    ),
    Rule(
        when=(
            f"typeof(\"released_at\") = 'VARCHAR' AND regexp_matches({_RELEASED_AT}, '^[0-9]{{4}}') "
            f"AND NOT {iso8601.has_offset_sql(_RELEASED_AT)}"
        ),
        reason=(
            "'released_at has no UTC offset (a date alone or a local time), and Screeb''s time zone for it is "
            "not documented; got ' || " + _RELEASED_AT
        ),
        name="released_at_has_offset",
        field="released_at",
        basis=(
            'choice: the document\'s only released_at is its example (`"released_at": '
            '"2023-03-22T15:22:41+00:00"`), with an offset, but it never says one is required, nor which zone '
            "Screeb gives a time without one (a TIMESTAMP column always goes out with one)"
        ),
        opt_in=True,
    ),
    Rule(
        when="description IS NULL",
        reason="'description is missing (the sync asks for one on every release)'",
        name="description_required",
        field="description",
        basis=(
            "choice: the document's example carries a description and says only released_at is optional, "
            "but never says a release without one is refused"
        ),
        opt_in=True,
    ),
    Rule(
        when="tags IS NULL",
        reason="'tags are missing (the sync asks for them on every release)'",
        name="tags_required",
        field="tags",
        basis=(
            "choice: the document's example carries tags and says only released_at is optional, "
            "but never says a release without them is refused"
        ),
        opt_in=True,
    ),
)


def _error_parts(body: Any, depth: int = 0) -> list[str]:
    """Readable messages from an error body of any JSON shape (Screeb documents none)."""
    if depth > 3 or body is None:
        return []
    if isinstance(body, str):
        return [body] if body.strip() else []
    if isinstance(body, int | float | bool):
        return []
    if isinstance(body, list):
        parts: list[str] = []
        for problem in body[:3]:
            if isinstance(problem, dict):
                where = next((problem[k] for k in ("field", "path", "loc", "pointer", "property", "param", "name")
                              if problem.get(k) not in (None, "", [])), None)
                if isinstance(where, list):
                    where = ".".join(str(p) for p in where)
                if problem.get("index") is not None and where is not None:
                    where = f"[{problem['index']}].{where}"
                what = next((problem[k] for k in ("message", "msg", "detail", "description", "error", "reason")
                             if isinstance(problem.get(k), str) and problem[k]), None)
                if what is None:
                    what = json.dumps(problem, ensure_ascii=False)[:120]
                parts.append(f"{where}: {what}" if where is not None else what)
            else:
                parts += _error_parts(problem, depth + 1)
        return parts
    if isinstance(body, dict):
        for name in ("details", "errors", "detail", "issues", "problems", "violations"):
            found = _error_parts(body.get(name), depth + 1) if isinstance(body.get(name), list | dict) else []
            if found:
                return found
        for name in ("message", "error", "detail", "description", "title", "reason", "msg"):
            found = _error_parts(body.get(name), depth + 1)
            if found:
                return found[:1]
    return []


class ScreebEndpoint(Endpoint):
    """Both Screeb endpoints authenticate with ``Authorization: Bearer``, each with its own token."""

    def headers(self, credentials: Mapping[str, str]) -> dict[str, str]:
        return {"Authorization": f"Bearer {credentials[self.credential]}"}

    def error_reason(self, response: HttpResponse) -> str:
        """A readable reason from an error answer of any shape: Screeb documents the 400 status, not its body.

        Messages are read from whatever JSON came back (see :func:`_error_parts`); a body that is not JSON,
        or JSON without a recognizable message, is quoted (whitespace collapsed; the reason is cut at 500
        characters)."""
        parts = [" ".join(p.split()) for p in _error_parts(response.json())]
        text = "; ".join(p for p in parts if p) or " ".join(response.excerpt().split()) or "(empty body)"
        if response.status in (400, 413, 422):
            return f"Screeb refused the item (HTTP {response.status}): {text[:500]}"
        return f"HTTP {response.status}: {text[:500]}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScreebEventEndpoint(ScreebEndpoint):
    """``/1.0/event``. ``anonymous_users`` comes from ``destination.options`` (see the module notes)."""

    anonymous_users: bool = True
    OPTIONS: ClassVar[Mapping[str, str]] = {
        "anonymous_users": (
            "default true: rows without user_alias are sent (Screeb creates anonymous users, as documented); "
            "false: they are rejected (the rule user_alias_required, always on: the same as "
            "strict: [user_alias_required], so give one or the other)"
        ),
    }

    def configure(self, options: Mapping[str, Any]) -> Endpoint:
        for name, value in options.items():
            if name != "anonymous_users":
                raise ValueError(f"{name}: unknown option for {self.qualified_name} (known: anonymous_users)")
            if not isinstance(value, bool):
                raise ValueError(f"anonymous_users: must be true or false, got {value!r}")
        anonymous = bool(options.get("anonymous_users", self.anonymous_users))
        if anonymous:
            return dataclasses.replace(self, anonymous_users=True)
        # The sync opted in through the option: the rule is checked whatever ``strict`` says.
        rules = tuple(
            dataclasses.replace(rule, opt_in=False) if rule.name == USER_ALIAS_REQUIRED.name else rule
            for rule in self.rules
        )
        return dataclasses.replace(self, anonymous_users=False, rules=rules)

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
    fields=_event_fields(),
    rules=EVENT_RULES,
    max_items=100,
    rate=Rate(50, 1.0, safety=0.96),  # see the module notes: margin for arrival jitter
    credential="api_token",
)

RELEASE = ScreebReleaseEndpoint(
    vendor="screeb",
    name="release",
    path="/1.0/release",
    description="Product releases (name, description, version, tags, released_at), one per request.",
    fields=(
        Field("name", "string", required=True,
              basis=f'{_RELEASE_DOC}; the example\'s `"name": "My release name"` (a release is a name and a version)'),
        Field("description", "string", basis=f'{_RELEASE_DOC}; example `"description": "My release description"`'),
        Field("version", "string", required=True,
              basis=f'{_RELEASE_DOC}; the example\'s `"version": "1.0"` (a release is a name and a version)'),
        Field("tags", "array",
              basis=f'{_RELEASE_DOC}; example `"tags": ["API", "V1"]` (a JSON array: the document\'s only '
                    "description of tags; its members are checked only by the opt-in rule tags_strings)"),
        Field("released_at", "iso8601",
              basis=f'{_RELEASE_DOC}; example `"released_at": "2023-03-22T15:22:41+00:00"` (an ISO 8601 '
                    "date-time, the only description; any ISO 8601 form is sent as written, the offset is the "
                    "opt-in rule released_at_has_offset)"),
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
