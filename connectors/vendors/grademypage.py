"""GradeMyPage analytics API (``docs/vendor-api/grademypage.md``).

Two keys per project, and they must never cross:

- ``POST /api/analytics/track`` (endpoint ``track``): a batch of page events in
  ``{"projectId": <public key>, "events": [...]}``. The public key is the only credential and it travels
  in the body; no ``Authorization`` header is ever sent (the secret key is not even read by this endpoint).
  Timestamps are epoch milliseconds. The vendor dedups on (visitorId, timestamp, eventType, pathname).
- ``POST /api/analytics/server-events`` (endpoint ``server_events``): ONE event per request, authenticated
  with the secret key in ``Authorization``. Timestamps are ISO 8601.
- ``GET /api/analytics/experiments/active?projectId=<public key>``: read once per ``server_events`` run only
  when the sync opts in with ``destination.options.check_experiments: true`` (no ``Authorization`` header:
  it is a public endpoint).

What is checked before sending, and where it comes from (every Field and Rule declares its ``basis``;
``docs/vendors.md`` lists them). Checked by default, because the document says so:

- ``track``: ``eventType``, ``pathname``, ``fullUrl``, ``sessionId``, ``visitorId`` and ``timestamp`` are
  required (no ``?`` in ``TrackEvent``); ``timestamp`` is epoch milliseconds (``timestamp: number; // epoch
  ms``: kind ``epoch_ms``, whose plausible-unit check rejects a value in seconds or microseconds with a
  reason naming the unit); ``eventData`` is an object (``Record<string, unknown>``); the documented members
  of ``utm`` are strings (rule ``utm_member_strings``; JSON ``null`` counts as absent). Rows of one run that
  share the documented dedup tuple (visitorId, timestamp, eventType, pathname) are all rejected but the one
  with the smallest source key (rule ``same_event_tuple``): GradeMyPage would keep one and drop the others
  silently while the ledger counted them delivered. A row matching an event delivered in an *earlier* run
  cannot be seen here; GradeMyPage drops it and it counts delivered, which matches the vendor's own notion
  of "the same event". For the same reason ``mode: mirror`` cannot update a /track event whose tuple is
  unchanged.
- ``server_events``: ``eventType`` and ``eventName`` are required; ``timestamp`` is optional ("defaults to
  ingestion time") and, when given, any ISO 8601 date or date-time (kind ``iso8601``: an offset is not
  required); the documented ``visitor`` members ``id``/``ip``/``userAgent`` are strings (rule
  ``visitor_member_strings``); ``properties`` is an object; ``experimentId`` and ``variantId`` go together
  ("Pass experimentId + variantId", "Grab both"): the connector's reading of an instruction, since the
  document marks both optional and states no refusal (the sandbox stores a lone one). A conversion of an
  experiment that has ended, or one GradeMyPage does not list, is delivered: the document has no rule
  against it (and a backfill after an experiment ends must deliver its conversions).

Native key (``idempotencyKey``, ``Endpoint.idempotency_field``), per endpoint:

- ``server_events``: the document's ``idempotencyKey?: string; // stable key for retry dedup (Stripe event
  ID, etc.)``. A model may select it from a column (an upstream event id, so an event replayed under a
  second source key is stored once by GradeMyPage); it is validated (non-empty, and its length) and sent as
  the model wrote it. Where the model leaves it out or NULL, syncline fills in the ledger's idempotency key
  (a hash of sync, endpoint and source key, stable across reruns), so a resend after a lost answer is
  deduplicated by GradeMyPage itself. The document gives no maximum length and no dedup window.
- ``track``: no key field; the vendor dedups on the tuple above (``dedup="native"``).

Choices where the document is silent (and why); checks marked *opt-in* run only when the sync sets
``strict: true`` or names them in ``strict: [...]``:

- Base URL ``https://grademypage.com`` (the host the tracking script is served from); override with
  ``GRADEMYPAGE_BASE_URL``.
- ``/track`` batch size is undocumented: at most 100 events and 500 kB per request (half the 1 MB body limit
  common to Node/Next.js API routes, with room for the envelope). A sync can lower the item count with
  ``delivery.max_items`` and the byte cap with ``delivery.max_body_bytes``.
- ``/server-events`` byte cap: the same 500 kB for its single event.
- The secret key goes in ``Authorization: Bearer <secret key>`` by default; the document only says "with
  your project's secret key in the Authorization header", so ``destination.options.authorization: raw``
  sends the bare key instead. Either is a choice, not a documented form.
- Opt-in ``pathname_starts_with_slash``: ``pathname`` must start with ``/`` (a full URL there breaks page
  attribution and dedup; the document only says ``pathname: string``).
- Opt-in ``full_url_absolute_http``: ``fullUrl`` must be an ``http(s)://`` URL (the document: ``string``).
- Opt-in ``utm_known_members`` / ``visitor_known_members``: only the documented members (a typo such as
  ``user_agent`` would be ignored silently by the vendor; the document does not say others are refused).
- Opt-in ``timestamp_required`` (``server_events``): a warehouse sync sends past events, and an event
  without a timestamp is stamped with the send time by GradeMyPage.
- Option ``check_experiments: true`` (default false): read the active experiments once per run (cached for
  the run only: experiments start and stop) and reject a conversion naming an experiment that is not running,
  or a variant not in it; rejected rows are re-evaluated on the next run, so one that raced the vendor's 60 s
  edge cache goes through later. It needs ``GRADEMYPAGE_PUBLIC_KEY``. If the experiments cannot be read (5xx
  or timeouts after retries), only conversions that name an experiment are rejected (retried next run); a
  401/403 on the lookup means the public key is wrong: the sync stops before sending anything.
- Text is sent as the model wrote it (never trimmed; a blank text is text).
- No rate limit is documented: none is applied; 429 and ``Retry-After`` are still honoured.
- Response bodies are undocumented: any 2xx means every item of the request was accepted.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from typing import Any, ClassVar
from urllib.parse import quote

from connectors.engine.endpoint import Credential, Endpoint, Field, HttpResponse, Rule, Vendor
from connectors.errors import SynclineError, SyncStopped

PUBLIC_KEY_ENV = "GRADEMYPAGE_PUBLIC_KEY"
SECRET_KEY_ENV = "GRADEMYPAGE_SECRET_KEY"
EXPERIMENTS_PATH = "/api/analytics/experiments/active"
TRACK_MAX_ITEMS = 100
MAX_BODY_BYTES = 500_000
# The /track envelope holds the public key, whose length the engine does not pass to ``envelope_bytes``.
# A project key is a UUID (36 characters); budget for up to 128 so byte-based chunking stays safe.
PROJECT_ID_ALLOWANCE = 128
_ENVELOPE = b'{"projectId":,"events":[]}'
DEDUP_TUPLE = ("visitorId", "timestamp", "eventType", "pathname")
UTM_MEMBERS = ("source", "medium", "campaign", "term", "content")
VISITOR_MEMBERS = ("id", "ip", "userAgent")


def _present(column: str) -> str:
    """SQL: the column holds a value (a blank text is a value: the document does not say otherwise)."""
    return f'"{column}" IS NOT NULL'


def _as_text(column: str) -> str:
    """SQL: the column as text, unaltered (the vendor's dedup compares the values it receives)."""
    return f'CAST("{column}" AS VARCHAR)'


def _epoch_ms_any(column: str) -> str:
    """SQL: the column in epoch ms whatever its type (integer, number, numeric text, TIMESTAMP), like the
    engine renders it."""
    text = f'CAST("{column}" AS VARCHAR)'
    return (f"coalesce(TRY_CAST({text} AS BIGINT), TRY_CAST(TRY_CAST({text} AS DOUBLE) AS BIGINT), "
            f"epoch_ms(TRY_CAST({text} AS TIMESTAMPTZ)))")


def _only_members(column: str, allowed: Sequence[str], quoted: str) -> Rule:
    """Opt-in: reject objects with members outside ``allowed`` (typos the vendor would ignore without a word).
    The document lists the members but does not say others are refused, hence a choice."""
    names = ", ".join(f"'{m}'" for m in allowed)
    extra = f"list_filter(json_keys(TRY_CAST(\"{column}\" AS JSON)), lambda k: k NOT IN ({names}))"
    return Rule(
        when=f"json_type(TRY_CAST(\"{column}\" AS JSON)) = 'OBJECT' AND len({extra}) > 0",
        reason=f"'{column} has unknown member(s) ' || array_to_string({extra}, ', ') || "
        f"' (allowed: {', '.join(allowed)})'",
        name=f"{column}_known_members",
        field=column,
        basis=f"choice: the document lists `{quoted}` and does not say other members are refused; a typo "
        "(user_agent) would be ignored silently by the vendor",
        opt_in=True,
    )


def _string_members(column: str, members: Sequence[str], quoted: str, section: str) -> Rule:
    """Reject objects whose documented members are not strings (JSON ``null`` counts as absent: accepted)."""
    obj = f'TRY_CAST("{column}" AS JSON)'
    names = ", ".join(f"'{m}'" for m in members)
    bad = f"list_filter([{names}], lambda m: json_type({obj}, '$.' || m) NOT IN ('VARCHAR', 'NULL'))"
    return Rule(
        when=f"json_type({obj}) = 'OBJECT' AND len({bad}) > 0",
        reason=f"'{column}.' || {bad}[1] || ' must be a string, got ' || "
        f"coalesce(left(json_extract({obj}, '$.' || {bad}[1])::VARCHAR, 60), '')",
        name=f"{column}_member_strings",
        field=column,
        basis=f"doc: {section}: `{quoted}`",
    )


# --- /track -----------------------------------------------------------------------------------------------

_TRACK_REQUIRED = ("eventType", "pathname", "fullUrl", "sessionId", "visitorId", "timestamp")
_ALL_REQUIRED_PRESENT = " AND ".join(
    f"{_epoch_ms_any(c)} IS NOT NULL" if c == "timestamp" else _present(c) for c in _TRACK_REQUIRED
)
_TUPLE = ", ".join(_epoch_ms_any(c) if c == "timestamp" else _as_text(c) for c in DEDUP_TUPLE)
# The kept row of a dedup group: the smallest source key among rows that are otherwise complete.
_KEPT_KEY = (
    f"min(CASE WHEN {_ALL_REQUIRED_PRESENT} THEN CAST(_key AS VARCHAR) END) OVER (PARTITION BY {_TUPLE})"
)
TRACK_DOC = "doc: Track event payload"
UTM_DOC = "utm?: { source?: string; medium?: string; campaign?: string; term?: string; content?: string; }"

TRACK_RULES: tuple[Rule, ...] = (
    Rule(
        when=f"{_ALL_REQUIRED_PRESENT} AND {_KEPT_KEY} < CAST(_key AS VARCHAR)",
        reason=(
            f"'same (visitorId, timestamp, eventType, pathname) as source row ' || {_KEPT_KEY} || "
            "': GradeMyPage keeps one event per tuple and would drop this one silently'"
        ),
        name="same_event_tuple",
        basis="doc: Track event payload: `Events are deduped server-side on (visitorId, timestamp, eventType, "
        "pathname).` The vendor would store one and drop the others while the ledger counted them delivered",
    ),
    Rule(
        when="\"pathname\" IS NOT NULL AND NOT starts_with(CAST(\"pathname\" AS VARCHAR), '/')",
        reason="'pathname must start with /, got ' || left(CAST(\"pathname\" AS VARCHAR), 60)",
        name="pathname_starts_with_slash",
        field="pathname",
        basis="choice: the document says only `pathname: string`; a full URL there breaks page attribution "
        "and the dedup tuple",
        opt_in=True,
    ),
    Rule(
        when="\"fullUrl\" IS NOT NULL AND NOT regexp_matches(CAST(\"fullUrl\" AS VARCHAR), '^https?://[^/]+')",
        reason="'fullUrl must be an absolute http(s) URL, got ' || left(CAST(\"fullUrl\" AS VARCHAR), 60)",
        name="full_url_absolute_http",
        field="fullUrl",
        basis="choice: the document says only `fullUrl: string`; a relative URL is stored but useless",
        opt_in=True,
    ),
    _string_members("utm", UTM_MEMBERS, UTM_DOC, "Track event payload"),
    _only_members("utm", UTM_MEMBERS, UTM_DOC),
)


class TrackEndpoint(Endpoint):
    """``/track``: the public key rides in the body; there is deliberately no auth header at all."""

    def headers(self, credentials: Mapping[str, str]) -> dict[str, str]:
        return {}

    def encode(self, items: Sequence[bytes], credentials: Mapping[str, str]) -> bytes:
        project = json.dumps(credentials["public_key"]).encode()
        return b'{"projectId":' + project + b',"events":[' + b",".join(items) + b"]}"

    def encode_joined(self, joined: bytes, count: int, credentials: Mapping[str, str]) -> bytes | None:
        project = json.dumps(credentials["public_key"]).encode()
        return b'{"projectId":' + project + b',"events":[' + joined + b"]}"

    def envelope_bytes(self) -> int:
        return len(_ENVELOPE) + PROJECT_ID_ALLOWANCE

    def error_reason(self, response: HttpResponse) -> str:
        return _reason("event", response) or super().error_reason(response)


TRACK = TrackEndpoint(
    vendor="grademypage",
    name="track",
    path="/api/analytics/track",
    description="Client-side page events (pageview, scroll, conversion...) in batches, keyed by the public key.",
    fields=(
        Field("eventType", "string", required=True,
              basis=f'{TRACK_DOC}: `eventType: "pageview" | "scroll" | "engagement" | "conversion" | '
              '"experiment_impression" | string;` (no `?`: required; `| string`: any text)'),
        Field("eventName", "string", basis=f'{TRACK_DOC}: `eventName?: string; // e.g. "signup", "purchase"`'),
        Field("eventData", "object", basis=f"{TRACK_DOC}: `eventData?: Record<string, unknown>;`"),
        Field("pathname", "string", required=True, basis=f"{TRACK_DOC}: `pathname: string;` (no `?`: required)"),
        Field("fullUrl", "string", required=True, basis=f"{TRACK_DOC}: `fullUrl: string;` (no `?`: required)"),
        Field("referrer", "string", basis=f"{TRACK_DOC}: `referrer?: string;`"),
        Field("sessionId", "string", required=True, basis=f"{TRACK_DOC}: `sessionId: string;` (no `?`: required)"),
        Field("visitorId", "string", required=True, basis=f"{TRACK_DOC}: `visitorId: string;` (no `?`: required)"),
        Field("timestamp", "epoch_ms", required=True,
              basis=f"{TRACK_DOC}: `timestamp: number; // epoch ms` (no `?`: required; a number in seconds or "
              "microseconds is not milliseconds: the plausible-unit check of kind epoch_ms)"),
        Field("utm", "object", basis=f"{TRACK_DOC}: `{UTM_DOC}` (an object; its members: rule utm_member_strings)"),
    ),
    rules=TRACK_RULES,
    max_items=TRACK_MAX_ITEMS,
    max_body_bytes=MAX_BODY_BYTES,
    credential="public_key",
    dedup="native",  # deduped server-side on (visitorId, timestamp, eventType, pathname), documented
)


# --- /server-events ---------------------------------------------------------------------------------------

AUTH_SCHEMES = {"bearer": "Bearer ", "raw": ""}
SERVER_OPTIONS = ("authorization", "check_experiments")


@dataclass(frozen=True, kw_only=True)
class ServerEventsEndpoint(Endpoint):
    """``/server-events``: one JSON object per request, secret key in ``Authorization``."""

    authorization: str = "bearer"  # destination.options.authorization: bearer | raw
    OPTIONS: ClassVar[Mapping[str, str]] = {
        "authorization": "how the secret key is sent (the document only says 'in the Authorization header'): "
        "bearer (default, 'Authorization: Bearer <key>') or raw ('Authorization: <key>')",
        "check_experiments": "true: reject conversions naming an experiment that is not running, or a variant "
        "not in it, read once per run from /experiments/active with the public key (a choice: the document "
        "has no such rule); default false",
    }

    def headers(self, credentials: Mapping[str, str]) -> dict[str, str]:
        return {"Authorization": AUTH_SCHEMES[self.authorization] + credentials["secret_key"]}

    def encode(self, items: Sequence[bytes], credentials: Mapping[str, str]) -> bytes:
        if len(items) != 1:  # max_items=1 guarantees it; a silent array would be refused by the vendor
            raise ValueError(f"{self.qualified_name} sends exactly one event per request, got {len(items)}")
        return items[0]

    def envelope_bytes(self) -> int:
        return 0

    def configure(self, options: Mapping[str, Any]) -> Endpoint:
        unknown = sorted(set(options) - set(SERVER_OPTIONS))
        if unknown:
            raise ValueError(f"{unknown[0]}: {self.qualified_name} takes only the options {', '.join(SERVER_OPTIONS)}")
        scheme = options.get("authorization", "bearer")
        if scheme not in AUTH_SCHEMES:
            raise ValueError(
                f"authorization: must be bearer (Authorization: Bearer <key>) or raw (Authorization: <key>), "
                f"got {scheme!r}"
            )
        check = options.get("check_experiments", False)
        if not isinstance(check, bool):
            raise ValueError(f"check_experiments: must be true or false, got {check!r}")
        # The experiment check lives on a subclass, so an endpoint without it has no item_checker at all
        # (a dry run then does not announce a run-time check that will not happen).
        cls = ExperimentCheckedServerEvents if check else ServerEventsEndpoint
        values = {f.name: getattr(self, f.name) for f in dataclass_fields(self) if f.init}
        values["authorization"] = scheme
        return cls(**values)

    def error_reason(self, response: HttpResponse) -> str:
        return _reason("event", response) or super().error_reason(response)


@dataclass(frozen=True, kw_only=True)
class ExperimentCheckedServerEvents(ServerEventsEndpoint):
    """``server_events`` with ``check_experiments: true``: experiment ids are checked against the running ones."""

    def item_checker(self, ctx: Any) -> Callable[[dict[str, Any]], str | None] | None:
        """Read the active experiments once for this run and check every item's experimentId/variantId."""
        public_key = ctx.credentials.get("public_key")
        if not public_key:
            raise SynclineError(
                f"GradeMyPage: set {PUBLIC_KEY_ENV} in the environment (check_experiments: true checks "
                "experimentId and variantId against the project's active experiments, read with the public key)"
            )
        experiments, unavailable = _active_experiments(ctx, public_key)
        return lambda item: _check_experiment(item, experiments, unavailable)


def _active_experiments(ctx: Any, public_key: str) -> tuple[dict[str, tuple[str, ...]], str | None]:
    """experiment id -> variant ids, or (empty, reason) when the lookup failed for a retryable reason.

    ``request_once`` sends no headers unless given: this public lookup never carries the secret key.
    401/403 raise :class:`AuthError` there (a wrong public key stops the sync before anything is sent).
    """
    from connectors.engine.sender import GiveUp

    path = f"{EXPERIMENTS_PATH}?projectId={quote(public_key, safe='')}"
    try:
        response = ctx.request_once("GET", path, label="experiments_active")
    except GiveUp as give_up:
        return {}, f"GradeMyPage active experiments could not be read ({give_up.reason}); retried next run"
    if not 200 <= response.status < 300:
        raise SyncStopped(
            f"grademypage.server_events: GET {EXPERIMENTS_PATH} answered HTTP {response.status}: check "
            f"GRADEMYPAGE_BASE_URL and {PUBLIC_KEY_ENV} ({response.excerpt(200)})"
        )
    body = response.json()
    listed = body.get("experiments") if isinstance(body, dict) else None
    if not isinstance(listed, list):
        raise SyncStopped(
            f"grademypage.server_events: GET {EXPERIMENTS_PATH} did not return {{\"experiments\": [...]}}: "
            f"{response.excerpt(200)}"
        )
    found: dict[str, tuple[str, ...]] = {}
    for experiment in listed:
        if isinstance(experiment, dict) and isinstance(experiment.get("id"), str):
            variants = experiment.get("variants") or []
            found[experiment["id"]] = tuple(
                v["id"] for v in variants if isinstance(v, dict) and isinstance(v.get("id"), str)
            )
    return found, None


def _check_experiment(
    item: Mapping[str, Any], experiments: Mapping[str, tuple[str, ...]], unavailable: str | None
) -> str | None:
    experiment, variant = item.get("experimentId"), item.get("variantId")
    if experiment is None and variant is None:
        return None
    if experiment is None or variant is None:  # the SQL rule catches this first; kept for safety
        return "experimentId and variantId go together: give both or neither"
    if unavailable:
        return unavailable
    if not experiments:
        return f"experimentId {experiment!r}: GradeMyPage reports no running experiments for this project"
    if experiment not in experiments:
        running = ", ".join(sorted(experiments))
        return f"experimentId {experiment!r} is not a running GradeMyPage experiment (running: {running})"
    if variant not in experiments[experiment]:
        variants = ", ".join(experiments[experiment]) or "none"
        return f"variantId {variant!r} is not a variant of experiment {experiment!r} (variants: {variants})"
    return None


def _reason(what: str, response: HttpResponse) -> str | None:
    """``{"error": ..., "details": [...]}`` bodies (shape undocumented: used only when present)."""
    body = response.json()
    if not isinstance(body, dict) or not isinstance(body.get("error"), str):
        return None
    details = body.get("details")
    extra = ""
    if isinstance(details, list) and details:
        extra = ": " + "; ".join(str(d) for d in details[:3])
    return f"GradeMyPage refused the {what} (HTTP {response.status}): {body['error']}{extra}"


SERVER_DOC = "doc: Server event payload"
VISITOR_DOC = ("visitor?: { id?: string; // any stable anonymous ID (user ID, gmp_vid, hashed email) ip?: string; "
               "userAgent?: string; }")

SERVER_EVENTS = ServerEventsEndpoint(
    vendor="grademypage",
    name="server_events",
    path="/api/analytics/server-events",
    description="Server-side events (conversions), one per request, deduplicated by idempotencyKey; "
    "optionally attributed to an A/B experiment variant.",
    fields=(
        Field("eventType", "string", required=True,
              basis=f'{SERVER_DOC}: `eventType: string; // e.g. "conversion"` (no `?`: required)'),
        Field("eventName", "string", required=True,
              basis=f'{SERVER_DOC}: `eventName: string; // e.g. "signup", "purchase"` (no `?`: required)'),
        Field("timestamp", "iso8601",
              basis=f"{SERVER_DOC}: `timestamp?: string; // ISO 8601 — defaults to ingestion time` (optional; "
              "any ISO 8601 date or date-time, with or without an offset)"),
        Field("idempotencyKey", "string",
              basis=f"{SERVER_DOC}: `idempotencyKey?: string; // stable key for retry dedup (Stripe event ID, "
              "etc.)` (no maximum length documented); filled in with the ledger's key when the model leaves "
              "it out or NULL"),
        Field("visitor", "object",
              basis=f"{SERVER_DOC}: `{VISITOR_DOC}` (an object; its members: rule visitor_member_strings)"),
        Field("page", "string", basis=f"{SERVER_DOC}: `page?: string; // pathname to attribute the event to`"),
        Field("properties", "object", basis=f"{SERVER_DOC}: `properties?: Record<string, unknown>;`"),
        Field("experimentId", "string", required_when='"variantId" IS NOT NULL',
              required_because="when variantId is set (give both or neither)",
              basis=f"{SERVER_DOC}: \"Pass experimentId + variantId when you want the conversion attributed to "
              "an A/B experiment variant\"; `experimentId?: string;` (\"Grab both from "
              "window.grademypage.getExperimentAssignments()\")"),
        Field("variantId", "string", required_when='"experimentId" IS NOT NULL',
              required_because="when experimentId is set (give both or neither)",
              basis=f"{SERVER_DOC}: \"Pass experimentId + variantId when you want the conversion attributed to "
              "an A/B experiment variant\"; `variantId?: string;`"),
    ),
    rules=(
        _string_members("visitor", VISITOR_MEMBERS, VISITOR_DOC, "Server event payload"),
        _only_members("visitor", VISITOR_MEMBERS, VISITOR_DOC),
        Rule(
            when='"timestamp" IS NULL',
            reason="'timestamp is missing: GradeMyPage would stamp the event with the time it is sent'",
            name="timestamp_required",
            field="timestamp",
            basis="choice: the document makes timestamp optional (\"defaults to ingestion time\"); a warehouse "
            "sync sends past events, and a backfill would land as of the day it is sent",
            opt_in=True,
        ),
    ),
    max_items=1,
    max_body_bytes=MAX_BODY_BYTES,
    credential="secret_key",
    idempotency_field="idempotencyKey",
    dedup="native",  # resent under the same idempotencyKey: GradeMyPage keeps one
)

VENDOR = Vendor(
    name="grademypage",
    title="GradeMyPage",
    env_prefix="GRADEMYPAGE",
    default_base_url="https://grademypage.com",
    credentials=(
        Credential("public_key", PUBLIC_KEY_ENV, secret=False),
        Credential("secret_key", SECRET_KEY_ENV),
    ),
    endpoints={e.name: e for e in (TRACK, SERVER_EVENTS)},
)
