"""GradeMyPage analytics API (``docs/vendor-api/grademypage.md``).

Two keys per project, and they must never cross:

- ``POST /api/analytics/track`` (endpoint ``track``): a batch of page events in
  ``{"projectId": <public key>, "events": [...]}``. The public key is the only credential and it travels
  in the body; no ``Authorization`` header is ever sent (the secret key is not even read by this endpoint).
  Timestamps are epoch milliseconds. The vendor dedups on (visitorId, timestamp, eventType, pathname).
- ``POST /api/analytics/server-events`` (endpoint ``server_events``): ONE event per request, authenticated
  with the secret key in ``Authorization``. Timestamps are ISO 8601. ``idempotencyKey`` carries the
  ledger's idempotency key (the engine fills it in through ``idempotency_field``), so a resend after a lost
  answer is deduplicated by GradeMyPage itself.
- ``GET /api/analytics/experiments/active?projectId=<public key>``: read once per ``server_events`` run
  (no ``Authorization`` header: it is a public endpoint) to check ``experimentId``/``variantId``.

Choices where the document is silent (and why):

- Base URL ``https://grademypage.com`` (the host the tracking script is served from); override with
  ``GRADEMYPAGE_BASE_URL``.
- ``/track`` batch size is undocumented: at most 100 events and 500 kB per request (half the 1 MB body limit
  common to Node/Next.js API routes, with room for the envelope). A sync can lower the item count with
  ``delivery.max_items`` and the byte cap with ``delivery.max_body_bytes``.
- ``/server-events`` byte cap: the same 500 kB for its single event.
- The secret key goes in ``Authorization: Bearer <secret key>`` (the doc only says "in the Authorization
  header"). If your GradeMyPage deployment wants the bare key, set ``destination.options.authorization: raw``.
- ``/track`` dedup: rows of one run that share (visitorId, timestamp in ms, eventType, pathname) would be
  collapsed silently by GradeMyPage while the ledger counted them all delivered. So the row with the smallest
  source key is sent and the others are *rejected* with a reason naming that key (a rule, decided before
  anything is sent; rows already invalid for another reason do not count as the kept row). A row matching an
  event delivered in an *earlier* run cannot be seen here; GradeMyPage drops it and it counts delivered,
  which matches the vendor's own notion of "the same event". For the same reason ``mode: mirror`` cannot
  update a /track event whose tuple is unchanged.
- Client-side rules beyond the doc's types, because the vendor would accept the row and store garbage:
  ``pathname`` must start with ``/`` (a full URL there breaks page attribution and dedup); ``fullUrl`` must be
  an ``http(s)://`` URL; an integer ``timestamp`` below 10^11 is refused as "seconds, not milliseconds"
  (10^11 ms is 1973); ``utm`` and ``visitor`` may only hold the documented members, as strings (a typo such
  as ``user_agent`` would be ignored silently by the vendor).
- ``server_events.timestamp`` is optional in the doc ("defaults to ingestion time"); a warehouse sync sends
  past events, so the model must select it and rows without one are rejected rather than stamped with the
  send time. ``eventType`` and ``eventName`` are required, as documented.
- ``experimentId`` and ``variantId`` must come together. Both are checked against the active experiments
  read once per run (cached for the run only: experiments start and stop). A conversion naming an unknown or
  stopped experiment, or a variant not in it, is rejected with a reason; rejected rows are re-evaluated on
  the next run, so one that raced the vendor's 60 s edge cache goes through later. To send a conversion of a
  stopped experiment unattributed, drop the two columns for it in the model.
- If the experiments cannot be read (5xx or timeouts after retries), only conversions that name an
  experiment are rejected (with that reason, retried next run); the rest are delivered. A 401/403 on the
  lookup means the public key is wrong: the sync stops before sending anything.
- No rate limit is documented: none is applied; 429 and ``Retry-After`` are still honoured.
- Response bodies are undocumented: any 2xx means every item of the request was accepted.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
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
SECONDS_NOT_MS_BELOW = 100_000_000_000  # 10^11 ms = 1973-03-03; a "timestamp" below it is seconds


def _text(column: str) -> str:
    """SQL: the column as trimmed text, NULL when empty (whatever the column's type)."""
    return f"NULLIF(trim(CAST(\"{column}\" AS VARCHAR)), '')"


def _epoch_ms_any(column: str) -> str:
    """SQL: the column in epoch ms whatever its type (integer, numeric text, TIMESTAMP), like the engine does."""
    text = f'CAST("{column}" AS VARCHAR)'
    return f"coalesce(TRY_CAST({text} AS BIGINT), epoch_ms(TRY_CAST({text} AS TIMESTAMPTZ)))"


def _only_members(column: str, allowed: Sequence[str]) -> Rule:
    """Reject objects with members outside ``allowed`` (typos the vendor would ignore without a word)."""
    names = ", ".join(f"'{m}'" for m in allowed)
    extra = f"list_filter(json_keys(TRY_CAST(\"{column}\" AS JSON)), lambda k: k NOT IN ({names}))"
    return Rule(
        when=f"json_type(TRY_CAST(\"{column}\" AS JSON)) = 'OBJECT' AND len({extra}) > 0",
        reason=f"'{column} has unknown member(s) ' || array_to_string({extra}, ', ') || "
        f"' (allowed: {', '.join(allowed)})'",
    )


def _string_members(column: str, members: Sequence[str]) -> tuple[Rule, ...]:
    return tuple(
        Rule(
            when=f"json_type(TRY_CAST(\"{column}\" AS JSON), '$.{m}') NOT IN ('VARCHAR', 'NULL')",
            reason=f"'{column}.{m} must be a string, got ' || "
            f"coalesce(left(json_extract(TRY_CAST(\"{column}\" AS JSON), '$.{m}')::VARCHAR, 60), '')",
        )
        for m in members
    )


# --- /track -----------------------------------------------------------------------------------------------

_TRACK_REQUIRED = ("eventType", "pathname", "fullUrl", "sessionId", "visitorId", "timestamp")
_ALL_REQUIRED_PRESENT = " AND ".join(
    f"{_epoch_ms_any(c) if c == 'timestamp' else _text(c)} IS NOT NULL" for c in _TRACK_REQUIRED
)
_TUPLE = ", ".join(
    _epoch_ms_any(c) if c == "timestamp" else _text(c) for c in DEDUP_TUPLE
)
# The kept row of a dedup group: the smallest source key among rows that are otherwise complete.
_KEPT_KEY = (
    f"min(CASE WHEN {_ALL_REQUIRED_PRESENT} THEN CAST(_key AS VARCHAR) END) OVER (PARTITION BY {_TUPLE})"
)

TRACK_RULES: tuple[Rule, ...] = (
    Rule(
        when=f"{_ALL_REQUIRED_PRESENT} AND {_KEPT_KEY} < CAST(_key AS VARCHAR)",
        reason=(
            f"'same (visitorId, timestamp, eventType, pathname) as source row ' || {_KEPT_KEY} || "
            "': GradeMyPage keeps one event per tuple and would drop this one silently'"
        ),
    ),
    Rule(
        when=f"{_text('pathname')} IS NOT NULL AND NOT starts_with({_text('pathname')}, '/')",
        reason="'pathname must start with /, got ' || left(" + _text("pathname") + ", 60)",
    ),
    Rule(
        when=f"{_text('fullUrl')} IS NOT NULL AND NOT regexp_matches({_text('fullUrl')}, '^https?://[^/]+')",
        reason="'fullUrl must be an absolute http(s) URL, got ' || left(" + _text("fullUrl") + ", 60)",
    ),
    Rule(
        when=f"TRY_CAST(CAST(\"timestamp\" AS VARCHAR) AS BIGINT) BETWEEN 1 AND {SECONDS_NOT_MS_BELOW - 1}",
        reason="'timestamp looks like epoch seconds, GradeMyPage wants epoch milliseconds; got ' || "
        "CAST(\"timestamp\" AS VARCHAR)",
    ),
    _only_members("utm", UTM_MEMBERS),
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
        Field("eventType", "string", required=True),
        Field("eventName", "string"),
        Field("eventData", "object"),
        Field("pathname", "string", required=True),
        Field("fullUrl", "string", required=True),
        Field("referrer", "string"),
        Field("sessionId", "string", required=True),
        Field("visitorId", "string", required=True),
        Field("timestamp", "epoch_ms", required=True),
        Field("utm", "string_map"),
    ),
    rules=TRACK_RULES,
    max_items=TRACK_MAX_ITEMS,
    max_body_bytes=MAX_BODY_BYTES,
    credential="public_key",
    dedup="native",  # deduped server-side on (visitorId, timestamp, eventType, pathname), documented
)


# --- /server-events ---------------------------------------------------------------------------------------

AUTH_SCHEMES = {"bearer": "Bearer ", "raw": ""}


@dataclass(frozen=True, kw_only=True)
class ServerEventsEndpoint(Endpoint):
    """``/server-events``: one JSON object per request, secret key in ``Authorization``."""

    authorization: str = "bearer"  # destination.options.authorization: bearer | raw
    OPTIONS: ClassVar[Mapping[str, str]] = {
        "authorization": "how the secret key is sent: bearer (default, 'Authorization: Bearer <key>') or raw",
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
        unknown = sorted(set(options) - {"authorization"})
        if unknown:
            raise ValueError(f"{unknown[0]}: {self.qualified_name} takes only the option authorization")
        scheme = options.get("authorization", "bearer")
        if scheme not in AUTH_SCHEMES:
            raise ValueError(
                f"authorization: must be bearer (Authorization: Bearer <key>) or raw (Authorization: <key>), "
                f"got {scheme!r}"
            )
        return replace(self, authorization=scheme)

    def error_reason(self, response: HttpResponse) -> str:
        return _reason("event", response) or super().error_reason(response)

    def item_checker(self, ctx: Any) -> Callable[[dict[str, Any]], str | None] | None:
        """Read the active experiments once for this run and check every item's experimentId/variantId."""
        public_key = ctx.credentials.get("public_key")
        if not public_key:
            raise SynclineError(
                f"GradeMyPage: set {PUBLIC_KEY_ENV} in the environment (server_events checks experimentId and "
                "variantId against the project's active experiments, read with the public key)"
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


SERVER_EVENTS = ServerEventsEndpoint(
    vendor="grademypage",
    name="server_events",
    path="/api/analytics/server-events",
    description="Server-side events (conversions), one per request, deduplicated by idempotencyKey; "
    "optionally attributed to an A/B experiment variant.",
    fields=(
        Field("eventType", "string", required=True),
        Field("eventName", "string", required=True),
        Field("timestamp", "timestamp", required=True),
        Field("visitor", "object"),
        Field("page", "string"),
        Field("properties", "object"),
        Field("experimentId", "string", required_when=f"{_text('variantId')} IS NOT NULL",
              required_because="when variantId is set (give both or neither)"),
        Field("variantId", "string", required_when=f"{_text('experimentId')} IS NOT NULL",
              required_because="when experimentId is set (give both or neither)"),
    ),
    rules=(_only_members("visitor", VISITOR_MEMBERS), *_string_members("visitor", VISITOR_MEMBERS)),
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
