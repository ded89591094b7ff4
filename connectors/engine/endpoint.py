"""How a vendor endpoint is declared: its fields, limits, auth and response shape.

A vendor module builds :class:`Endpoint` objects; the engine turns the field list into DuckDB SQL that
normalizes, validates and serializes every payload (columnar, no Python per row), and uses the limits for
chunking and rate limiting. Vendor-specific behaviour lives in the small overridable methods at the bottom.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

FieldKind = Literal[
    "string",  # JSON string; numbers are cast to text
    "number",  # JSON number (float or int)
    "integer",  # JSON integer
    "boolean",
    "timestamp",  # ISO 8601 with an offset; TIMESTAMP columns are formatted in UTC (+00:00)
    "iso8601",  # any ISO 8601 date or date-time text, offset optional, sent as written (engine/iso8601.py);
    #            TIMESTAMP columns as for "timestamp"
    "epoch_ms",  # integer milliseconds since the epoch; TIMESTAMP columns are converted
    "object",  # JSON object: STRUCT, MAP, JSON or a VARCHAR holding a JSON object
    "string_map",  # JSON object whose values are all strings (e.g. indexed tags)
    "array",  # JSON array: LIST or JSON
    "any",  # whatever DuckDB's to_json makes of it
]

# The JSON kinds a member of an object may have (``Field.member_kinds``): "integer" is a number without a
# fraction or exponent, "number" any JSON number, "null" a JSON ``null``.
MemberKind = Literal["string", "number", "integer", "boolean", "object", "array", "null"]
MEMBER_KINDS: tuple[str, ...] = ("string", "number", "integer", "boolean", "object", "array", "null")

# The plausible range of an ``epoch_ms`` value given as a number (``Field.plausible_ms``): below 10^11 ms
# (1973-03-03) a value is almost surely seconds, from 10^14 ms (year 5138) on, micro- or nanoseconds.
EPOCH_MS_PLAUSIBLE: tuple[int, int] = (100_000_000_000, 100_000_000_000_000)

# What a vendor can do about a request whose outcome is unknown (timeout, dropped answer, 5xx after sending):
# ``native``: it dedups on a key or tuple we send, so a resend is safe (exactly once);
# ``read_back``: we can ask what it stored (``resolve_unknown`` / ``resolve_in_doubt``) and resend the rest;
# ``none``: neither; the sync's ``delivery.in_doubt`` decides (resend and count, or hold for a person).
Dedup = Literal["native", "read_back", "none"]


@dataclass(frozen=True)
class Field:
    """One top-level payload field. ``required_when`` is a SQL condition over the model's columns."""

    name: str
    kind: FieldKind = "string"
    required: bool = False
    required_when: str | None = None
    required_because: str | None = None  # appended to the reason, e.g. "for copilot events"
    max_length: int | None = None
    min_length: int | None = None  # only where the document says so ("non-empty"): a blank text is text
    choices: tuple[str, ...] | None = None
    min_value: float | None = None
    max_value: float | None = None
    # ``object`` fields: the JSON kinds every member value must have, checked per row on the JSON as sent
    # (a STRUCT's NULL members are omitted, so they never count; a JSON ``null`` is kind "null"). Kind
    # ``string_map`` is ``object`` with ``member_kinds=("string",)``. None: any member value.
    member_kinds: tuple[MemberKind, ...] | None = None
    # ``epoch_ms`` fields given as numbers (or numeric text): the plausible range [low, high) in ms. A value
    # under ``low`` is rejected as "looks like seconds", one at or over ``high`` as "looks like microseconds
    # or nanoseconds". TIMESTAMP columns are converted exactly and not range-checked. None: no range check.
    plausible_ms: tuple[int, int] | None = EPOCH_MS_PLAUSIBLE
    # Where the field's constraints come from: "doc: <section or quoted line of docs/vendor-api/<vendor>.md>".
    # Every constraint declared on a Field must be documented; a check the document does not make is an
    # opt-in :class:`Rule` instead (issue 10: reject exactly what the vendor forbids, send the rest).
    basis: str = ""

    def __post_init__(self) -> None:
        if self.member_kinds is not None:
            unknown = [k for k in self.member_kinds if k not in MEMBER_KINDS]
            if unknown or not self.member_kinds:
                raise ValueError(f"Field {self.name}: member_kinds must be some of {', '.join(MEMBER_KINDS)}")
            if self.kind not in ("object", "string_map"):
                raise ValueError(f"Field {self.name}: member_kinds is for object fields, the kind is {self.kind}")

    @property
    def allowed_member_kinds(self) -> tuple[str, ...] | None:
        """The member kinds checked for this field: ``member_kinds``, or ("string",) for ``string_map``."""
        if self.member_kinds is not None:
            return tuple(self.member_kinds)
        return ("string",) if self.kind == "string_map" else None

    def checks(self) -> bool:
        """Whether the engine rejects anything for this field (beyond rendering it): then its ``basis``
        must say where the check comes from (tests/test_payload_fidelity.py audits every vendor)."""
        return bool(
            self.required or self.required_when or self.max_length is not None or self.min_length is not None
            or self.choices or self.min_value is not None or self.max_value is not None
            or self.member_kinds or self.kind not in ("string", "any")
        )


@dataclass(frozen=True)
class Rule:
    """A row-level check in SQL: rows where ``when`` is true are rejected with ``reason`` (a SQL string expr).

    ``name`` is the rule's stable id (named in the reject reason, in ``strict: [name]`` and in
    docs/vendors.md); ``field`` the payload field it is about; ``basis`` where it comes from ("doc: ..."
    quoting the vendor document, or "choice: ..." saying why a careful integrator checks it). A rule with
    no documentary basis is ``opt_in``: checked only when the sync sets ``strict: true`` or names it in
    ``strict: [...]``, so a valid row is never rejected by default on a guess."""

    when: str
    reason: str
    name: str = ""
    field: str | None = None
    basis: str = ""
    opt_in: bool = False


def not_blank(field: str, *, basis: str = "", opt_in: bool = True) -> Rule:
    """A rule rejecting an empty or whitespace-only text in ``field``. Opt-in unless the document forbids
    blank values (then pass ``opt_in=False`` and quote it in ``basis``): a blank string is a string."""
    col = '"' + field.replace('"', '""') + '"'
    return Rule(
        when=f"{col} IS NOT NULL AND trim(CAST({col} AS VARCHAR)) = ''",
        reason=f"'{field} is blank'",
        name=f"{field}_not_blank",
        field=field,
        basis=basis or "choice: the document does not forbid an empty string; some teams treat one as missing data",
        opt_in=opt_in,
    )


@dataclass(frozen=True)
class Rate:
    """A documented request rate: ``requests`` per ``per_seconds`` for one credential.

    The limiter spaces requests at ``safety`` of the documented rate, so a sliding-window counter at the
    vendor never sees more than the limit (the documents do not say which window they count in).
    """

    requests: int
    per_seconds: float
    safety: float = 0.95

    @property
    def interval(self) -> float:
        return self.per_seconds / (self.requests * self.safety)


@dataclass(frozen=True)
class Credential:
    """A secret (or public key) the vendor needs. ``env`` names the environment variable holding it."""

    name: str
    env: str
    secret: bool = True


@dataclass
class HttpResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes
    latency_s: float

    def json(self) -> object:
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            return None

    def excerpt(self, limit: int = 300) -> str:
        return self.body[:limit].decode("utf-8", "replace")


@dataclass
class BatchOutcome:
    """What a 2xx response said about each item of the request, by index into the request's items."""

    accepted: dict[int, str | None] = field(default_factory=dict)  # index -> vendor-assigned id (or None)
    all_accepted: bool = False  # every item accepted, no vendor ids: recorded with one statement
    rejected: dict[int, str] = field(default_factory=dict)  # index -> reason
    warnings: list[str] = field(default_factory=list)  # e.g. "vendor counted 99 of 100 items"


@dataclass(frozen=True)
class RunContext:
    """What an endpoint may know about the run it serves: given to :meth:`Endpoint.bind` once per Sender."""

    sync: str
    run_id: str
    sender: Any  # the run's Sender: its retrying ``request_once`` serves lookups and read-backs


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    """A vendor ingestion endpoint. Subclass and override the methods below for vendor-specific shapes."""

    vendor: str
    name: str
    path: str
    method: str = "POST"
    fields: tuple[Field, ...] = ()
    rules: tuple[Rule, ...] = ()
    max_items: int = 100
    max_body_bytes: int = 1_000_000
    rate: Rate | None = None
    credential: str = "api_key"  # which credential authenticates (and scopes the rate limit)
    description: str = ""
    # The vendor's own dedup field (GradeMyPage ``idempotencyKey``): when it is also a declared Field, the
    # model may set it from a column (validated: non-empty, the Field's limits; sent as given) and syncline
    # fills in the ledger's idempotency key only where the model leaves it out or NULL. When it is not a
    # declared Field, the engine always fills it in (Flux ``syncline_key``, moved by the vendor's encode).
    idempotency_field: str | None = None
    steps: bool = False  # multi-step items: the engine calls deliver_item() for each item
    never_sent: tuple[str, ...] = ()  # declared fields that drive deliver_item() and are not in the body
    single: Endpoint | None = None  # a single-item sibling used for chunks smaller than single_below
    single_below: int = 0
    dedup: Dedup = "none"

    # --- vendor-specific hooks -------------------------------------------------------------------------
    def headers(self, credentials: Mapping[str, str]) -> dict[str, str]:
        """Auth and content headers. Default: none beyond JSON; vendors override."""
        return {}

    def encode(self, items: Sequence[bytes], credentials: Mapping[str, str]) -> bytes:
        """The request body for a chunk of serialized items. Default: a JSON array (one item: still an array)."""
        return b"[" + b",".join(items) + b"]"

    def encode_joined(self, joined: bytes, count: int, credentials: Mapping[str, str]) -> bytes | None:
        """The request body from the items already joined by commas (a slice of DuckDB's output buffer).

        The fast path: no Python per item. Default: a JSON array, when ``encode`` is not overridden;
        ``None`` means "build it with ``encode`` from the separate items" (endpoints that rewrite items)."""
        if type(self).encode is Endpoint.encode:
            return b"[" + joined + b"]"
        return None

    def envelope_bytes(self) -> int:
        """Bytes the body adds around the items (for byte-based chunking). Override with ``encode``."""
        return 2

    def parse(self, response: HttpResponse, items: Sequence[bytes]) -> BatchOutcome:
        """Interpret a 2xx response to a request carrying ``items``. Default: all accepted, no vendor ids."""
        return BatchOutcome(all_accepted=True)

    def bind(self, run: RunContext) -> Endpoint:
        """A copy of the endpoint for one run (e.g. to tag events with the sync name in ``encode``).
        Called once per Sender; the declared endpoint itself is shared and never mutated. Default: self."""
        return self

    def configure(self, options: Mapping[str, Any]) -> Endpoint:
        """Apply a sync's ``destination.options`` (e.g. Screeb ``anonymous_users``); return the endpoint to use.

        Raise ``ValueError("<option>: <what is wrong>")`` for a bad option; the loader turns it into a
        ConfigError naming the sync file and ``destination.options.<option>``. Default: no options.
        """
        if options:
            raise ValueError(f"{next(iter(options))}: {self.qualified_name} takes no options")
        return self

    def error_reason(self, response: HttpResponse) -> str:
        """A short human-readable reason from an error response body."""
        return f"HTTP {response.status}: {response.excerpt()}"

    def deliver_item(self, ctx: Any) -> str | None:
        """Multi-step endpoints (``steps=True``): deliver ``ctx.payload`` through ``ctx.call``; return the
        vendor id. Raise ``ItemRejected`` for a refusal. ``ctx`` is an :class:`~connectors.engine.sender.ItemContext`."""
        raise NotImplementedError(f"{self.qualified_name} is not a multi-step endpoint")

    def resolve_unknown(self, items: Sequence[bytes]) -> BatchOutcome | None:
        """``dedup="read_back"``: what the vendor stored of one request whose answer was lost (read back
        within the run). ``accepted`` holds the indexes stored; every other index is surely not stored and
        is resent. ``None``: the read-back could not tell (the items stay ``in_doubt``)."""
        return None

    def resolve_in_doubt(
        self, ctx: Any, items: Sequence[Mapping[str, Any]]
    ) -> tuple[dict[str, str | None], set[str]] | None:
        """``dedup="read_back"``: which ledger items left ``in_doubt`` by earlier runs the vendor holds.

        ``items`` are ledger rows (``idem_key``, ``chunk_id``, ``run_id``, ``cursor`` ...); returns
        ``({idem_key: vendor id or None} of those found, keys checked)``: a key checked and not found is
        surely not stored; keys not checked stay in doubt. ``None``: cannot tell. ``ctx``: the run's Sender."""
        return None

    def removal(self, payload: dict[str, Any]) -> dict[str, Any] | None:
        """Mirror mode: the item that undoes ``payload`` (delivered before, now gone from the source), e.g.
        Screeb's ``group.unassign`` for a ``group.assign``. None (default): nothing to undo at the vendor."""
        return None

    def item_checker(self, ctx: Any) -> Callable[[dict[str, Any]], str | None] | None:
        """Optional per-run check of each item (parsed JSON) before sending; may read from the vendor
        once through ``ctx.call`` (``ctx`` is the run's Sender). Returns a reason to reject, or None."""
        return None

    def reconcile(
        self, ctx: Any, *, sync: str, window_start: str | None, window_end: str | None, delivered: int
    ) -> dict[str, Any]:
        """Optional read-back: what the vendor holds for the sync's window vs the ledger's ``delivered`` count.

        ``ctx`` is a Sender (use ``ctx.request_once``). Return at least ``{"vendor_count", "ledger_count",
        "difference", "matches"}`` plus anything that explains a difference.
        """
        raise NotImplementedError(f"{self.qualified_name} has no read API to reconcile against")

    @property
    def rules_span_rows(self) -> bool:
        """A rule that compares rows (a window) must see every row of the run, delivered ones included:
        then already-delivered rows are not left out before rendering (GradeMyPage's dedup tuple)."""
        return any(" OVER " in f" {rule.when} ".upper().replace("\n", " ") or " OVER(" in rule.when.upper()
                   for rule in self.rules)

    @property
    def native_key_field(self) -> Field | None:
        """The declared Field a model may set as the vendor's dedup key (``idempotency_field``), if any."""
        if not self.idempotency_field:
            return None
        return next((f for f in self.fields if f.name == self.idempotency_field), None)

    @property
    def qualified_name(self) -> str:
        return f"{self.vendor}.{self.name}"

    def opt_in_rules(self) -> tuple[Rule, ...]:
        """The rules a sync may turn on with ``strict`` (checks the vendor's document does not make)."""
        return tuple(rule for rule in self.rules if rule.opt_in)

    def active_rules(self, strict: frozenset[str] = frozenset()) -> tuple[Rule, ...]:
        """The rules a sync with ``strict`` checks: every documented rule, plus the opt-in ones it names
        (``"*"``: all of them, from ``strict: true``)."""
        every = "*" in strict
        return tuple(rule for rule in self.rules if not rule.opt_in or every or rule.name in strict)


@dataclass(frozen=True)
class Vendor:
    """A vendor: its endpoints, credentials and default public base URL (overridden by ``<PREFIX>_BASE_URL``)."""

    name: str
    title: str
    env_prefix: str
    default_base_url: str
    credentials: tuple[Credential, ...]
    endpoints: Mapping[str, Endpoint]

    @property
    def base_url_env(self) -> str:
        return f"{self.env_prefix}_BASE_URL"
