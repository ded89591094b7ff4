"""Brainzlab Flux events API (``docs/vendor-api/flux.md``): batch and single event ingestion, read API.

``POST /api/v1/events/batch``: ``{"events": [...]}`` with at most 500 events, 10 requests/minute per key.
``POST /api/v1/events``: one event object per request, "standard" rate limit. Both authenticate with
``Authorization: Bearer <key>``. Events: ``name`` (required), ``timestamp`` (ISO 8601, defaults to now),
``user_id``, ``value`` (number), ``properties`` (object), ``tags`` (object of strings, indexed). Read API:
``GET /api/v1/events`` (filters, paging), ``/events/count`` (total, interval series, group by tag) and
``/events/stats`` (aggregates of ``value``), 60 requests/minute. Documented error codes: ``missing_name``,
``invalid_timestamp``, ``batch_too_large``, ``invalid_tags``.

Facts beyond the document (the original design notes, and the open-source server): a batch is one bulk INSERT, so one bad
row fails the whole batch (possibly as a 500); the server accepts a bare JSON array too and may answer
``201 {"ingested": N}`` instead of the documented ``{"data": {"accepted", "rejected"}}``; unknown top-level
keys are dropped; every stored row gets a random id, so a batch sent twice is stored twice (no dedup).

Choices where the document is silent (``destination.options`` in brackets):

- **Rates.** Batch: 10/min, spaced by the shared limiter at 95% (one request every 6.32 s per key, across
  threads and processes). Single: "standard" is undocumented; we assume **60/min** (the only per-request
  figure the document gives for this API, its query limit, and the conservative choice: a higher real
  limit only costs tail latency) [``single_rate_per_minute``]. This is a guess: the sandbox enforces no
  single-event limit unless a test sets one (and says it is an assumption); 429 and ``Retry-After`` are
  honoured whatever the real figure is.
- **Tail through the single endpoint** [``single_below``, default derived from both rates]: a chunk of
  ``k`` events sent one by one takes ``k`` single slots (1.05 s each at 95% of 60/min); as a batch it waits
  for the next batch slot (6.32 s). ``k * 1.05 < 6.32`` for ``k <= 5``, so chunks of fewer than **6**
  events (a run's tail, or a whole small run) go one by one. They also leave the scarce batch budget
  (shared by every sync on the key) untouched. Setting ``single_rate_per_minute`` re-derives the threshold;
  ``single_below: 0`` turns the path off.
- **Byte cap**: 1 MB per request (none documented; nginx's default body limit in front of a Rails app).
  An event that alone exceeds it is rejected locally with a reason (the engine's byte check, the one
  rejection here without a documentary basis; raise it with ``delivery.max_body_bytes`` if your Flux
  takes more).
  ``envelope_bytes`` reserves room for the markers below (200 bytes per event), so byte chunking stays
  honest after ``encode`` adds them.
- **Validation before sending: exactly the document's rules** (a bad row must never fail a batch of 500
  good ones at the server; anything the document does not forbid is sent, as the model wrote it). Each
  Field's ``basis`` quotes its line of the document: ``name`` required, a string; ``timestamp`` a string in
  **any ISO 8601 form** (date-only ``2024-01-15``, a local time without offset, basic format, ordinal and
  week dates, reduced to the hour or minute, comma fractions, ``24:00``, a leap second; see
  ``connectors/engine/iso8601.py``), sent as written: the document asks for no offset and no time of day;
  ``user_id`` a string; ``value`` a number (NaN and ±Infinity are not JSON); ``properties`` an object
  (anything inside, NaN/Infinity at any depth excepted); ``tags`` an object of **string** values
  (``invalid_tags``: a JSON ``null``, number, boolean, object or array as a tag value rejects that row
  only, with a reason; a typed STRUCT/MAP column whose values can never be VARCHAR is a config error naming
  the model field). No length limit, no value range and no format for ``name`` is documented, so none is
  checked: an empty ``name`` or ``user_id``, a 100,000-character name, any Unicode go out unchanged.
  Conversions the engine makes (docs/vendors.md, "How values are sent"): TIMESTAMP columns go out as UTC ISO
  8601 with ``+00:00``; numeric ``name``/``user_id`` columns as text; numeric text in ``value`` as a number.
- **Opt-in checks** (``strict: true``, or ``strict: [<rule>]`` in the sync file), which the document does
  not make: ``name_not_blank`` and ``user_id_not_blank`` (empty or whitespace-only text), and
  ``timestamp_has_offset`` (a text timestamp without ``Z`` or an offset, date-only included: the document
  does not say which zone Flux gives it, so a careful sync may insist on one).
- **Markers** added by ``encode`` to every event (the keys ``syncline_*`` below are reserved: a model's own
  member of that name is replaced; every other byte of the event goes out as the engine rendered it, the
  markers inserted before the closing brace of ``tags`` and ``properties``):
  ``tags.syncline_sync = <sync name>`` (indexed: the per-sync count for reconciliation is one
  ``/count?group_by=tags.syncline_sync`` request); ``tags.syncline_batch = <16 hex>`` (one per request, so
  the events one request stored can be read back in one ``GET /events?tags[syncline_batch]=``);
  ``properties.syncline_key = <ledger idempotency key>`` (not indexed: identifies each read-back event).
  The key reaches ``encode`` through ``idempotency_field`` (Flux has no dedup field, and drops unknown
  top-level keys, so ``encode`` moves it into ``properties``).
- **Success answers**: both shapes are parsed. All events counted accepted: delivered (no ids: the batch
  answer carries none; the single endpoint's ``id`` is kept). Per-event detail in the answer
  (``data.errors: [{"index", "code", "message"}]``) is used as is when it accounts for every rejected
  event. Otherwise we **never guess** which events were refused: the batch is read back by its
  ``syncline_batch`` tag (one query) and, only when the number of distinct events found equals the count
  Flux reported accepted, found events are delivered and the rest rejected with a reason. If the
  read-back is off, fails, or is disabled [``read_back: false``], the unaccounted events stay ``in_doubt``
  and the run's notes name the batch tag. No bisection: events of a partial answer may be stored, and
  resending stored events duplicates them.
- **Refusals**: a 4xx refuses the whole batch; the engine bisects to isolate the bad event and the error
  code becomes a readable reason (``missing_name`` -> "name is required", ...). The document gives the
  codes but no error body: every plausible shape is read (``{"error": {"code", "message"}}``, ``{"error":
  "<code or message>"}``, ``{"error": [...]}``, ``{"code", "message"}``, ``{"errors": [...]}``, Rails'
  ``{"errors": {"<field>": [...]}}``); any other body, text or empty, is quoted in the reason.
- **Unknown outcomes are read back, never resent blindly** (``dedup="read_back"``; Flux has no dedup): after
  a 5xx, a dropped answer or a timeout (the bulk insert is atomic, but the server does more work after it,
  so a 500 may follow a stored batch) the request's events are read back by their ``syncline_batch`` tag;
  those found are delivered and only the missing ones are sent again (at most three rounds). A run that
  died mid-request leaves its items ``in_doubt``; the next run reads them back by
  ``tags.syncline_claim = <claim group>`` (the ledger's ``chunk_id``, a tag on every event) before planning.
  If a read-back fails the items stay ``in_doubt``. Assumption (the document is silent): an event is
  listed by ``GET /events`` as soon as its POST is answered (or lost); a Flux that indexes later could
  make a read-back miss an event that landed, so a resend could duplicate it.
- **Reconcile** counts ``tags.syncline_sync`` per window: ``from`` = window start, ``to`` = window end
  minus 1 microsecond (the document's example treats ``to`` as inclusive; the ledger's windows are
  half-open). It assumes the model sends the source cursor as ``timestamp`` (as the sample sync does);
  events without a timestamp land "now" at Flux and fall outside their window.

How the sync name reaches ``encode``: the engine calls ``Endpoint.bind(RunContext)`` once per Sender, and
these endpoints keep the run's context (sync name, run id, the Sender for read-backs) on a per-run copy.
Nothing is shared between runs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar
from urllib.parse import urlencode

from connectors import settings
from connectors.engine import iso8601
from connectors.engine.endpoint import (
    BatchOutcome,
    Credential,
    Endpoint,
    Field,
    HttpResponse,
    Rate,
    Rule,
    RunContext,
    Vendor,
    not_blank,
)
from connectors.engine.ratelimit import RateLimiter, credential_scope
from connectors.engine.sender import CLAIM_PREFIX, current_claim
from connectors.errors import SynclineError

EVENTS_PATH = "/api/v1/events"
BATCH_PATH = "/api/v1/events/batch"
COUNT_PATH = "/api/v1/events/count"
STATS_PATH = "/api/v1/events/stats"

MAX_BATCH = 500
MAX_PAGE = 1000
BATCH_RATE = Rate(10, 60.0)
DEFAULT_SINGLE_PER_MINUTE = 60.0
QUERY_RATE = Rate(60, 60.0)

SYNC_TAG = "syncline_sync"
BATCH_TAG = "syncline_batch"
CLAIM_TAG = "syncline_claim"
KEY_FIELD = "syncline_key"  # engine-filled (idempotency_field), moved into properties by encode
MARKER_BYTES_PER_EVENT = 260  # upper bound of what encode adds to one event (see _mark)
BATCH_ENVELOPE = b'{"events":[]}'

ERROR_CODES = {
    "missing_name": "name is required",
    "invalid_timestamp": "timestamp is not a valid ISO 8601 time",
    "batch_too_large": f"the batch has more than {MAX_BATCH} events",
    "invalid_tags": "tags must be an object of string values",
    # Not in the document's table; the sandbox (and, as a 500, the real server) refuses these too.
    "invalid_value": "value must be a number",
    "invalid_properties": "properties must be an object",
    "invalid_user_id": "user_id must be a string",
}
# The document's own descriptions of its codes: repeating them after our reason adds nothing.
DOCUMENTED_MESSAGES = {"event name is required", "timestamp format invalid", "batch exceeds 500 events",
                       "tags must be string values"}


class FluxError(SynclineError):
    """A read API call failed (after retries) or answered something we cannot interpret."""





def tail_threshold(batch: Rate, single: Rate) -> int:
    """Smallest chunk size that is no faster one by one than waiting for one batch slot.

    Chunks of ``k`` events go through the single endpoint when ``k * single_interval < batch_interval``.
    """
    return max(1, math.ceil(batch.interval / single.interval - 1e-9))


# --- endpoints ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, kw_only=True)
class FluxEventEndpoint(Endpoint):
    """``POST /api/v1/events``: one event per request (also the batch endpoint's tail path)."""

    run: RunContext | None = dataclasses.field(default=None, compare=False, hash=False, repr=False)
    OPTIONS: ClassVar[Mapping[str, str]] = {
        "rate_per_minute": "requests per minute this endpoint may send (the document names no number; default 60)",
    }

    def headers(self, credentials: Mapping[str, str]) -> dict[str, str]:
        return {"Authorization": f"Bearer {credentials['api_key']}"}

    def bind(self, run: RunContext) -> FluxEventEndpoint:
        return dataclasses.replace(self, run=run)

    def encode(self, items: Sequence[bytes], credentials: Mapping[str, str]) -> bytes:
        (item,) = items
        return _mark(item, self.run.sync if self.run else None, self.batch_id(items), current_claim()).encode()

    def batch_id(self, items: Sequence[bytes]) -> str:
        """Deterministic per request and run: ``parse`` recomputes it from the same items; another run
        sending the same events gets another id, so a read-back never mixes up two sends."""
        digest = hashlib.sha256((self.run.run_id if self.run else "").encode() + b"\x1f")
        for item in items:
            digest.update(item)
            digest.update(b"\n")
        return digest.hexdigest()[:16]

    def resolve_unknown(self, items: Sequence[bytes]) -> BatchOutcome | None:
        """The events of one request whose answer was lost, read back by its batch tag: found ones are
        accepted (with Flux's ids), the rest surely not stored. None when no run is bound to read with."""
        if self.run is None:
            return None
        found = read_back_batch(self.run.sender, self.batch_id(items), sync=self.run.sync,
                                limit=max(2 * len(items), 1))
        index_of = {key: i for i, item in enumerate(items) if (key := _item_key(item)) is not None}
        if len(index_of) != len(items):
            return None  # an event without its key cannot be told apart
        accepted: dict[int, str | None] = {}
        for event in found:
            props = event.get("properties")
            index = index_of.get(str(props.get(KEY_FIELD))) if isinstance(props, dict) else None
            if index is not None and index not in accepted:
                accepted[index] = str(event["id"]) if event.get("id") is not None else None
        return BatchOutcome(accepted=accepted)

    def resolve_in_doubt(
        self, ctx: Any, items: Sequence[Mapping[str, Any]]
    ) -> tuple[dict[str, str | None], set[str]] | None:
        """Items earlier runs left in doubt, read back claim group by claim group (``tags.syncline_claim``).
        Only claim groups tagged so are settled (the engine names them ``r...``); others stay in doubt."""
        sync = self.run.sync if self.run else None
        groups: dict[str, list[str]] = {}
        for item in items:
            claim = item.get("chunk_id")
            if isinstance(claim, str) and claim.startswith(CLAIM_PREFIX):
                groups.setdefault(claim, []).append(str(item["idem_key"]))
        if not groups:
            return None
        stored: dict[str, str | None] = {}
        checked: set[str] = set()
        for claim, keys in groups.items():
            tags = {CLAIM_TAG: claim, **({SYNC_TAG: sync} if sync else {})}
            found = {
                str(e["properties"][KEY_FIELD]): (str(e["id"]) if e.get("id") is not None else None)
                for e in iter_events(ctx, tags=tags)
                if isinstance(e.get("properties"), dict) and e["properties"].get(KEY_FIELD) is not None
            }
            checked.update(keys)
            stored.update({key: found[key] for key in keys if key in found})
        return stored, checked

    def envelope_bytes(self) -> int:
        return MARKER_BYTES_PER_EVENT

    def parse(self, response: HttpResponse, items: Sequence[bytes]) -> BatchOutcome:
        body = response.json()
        data = body.get("data") if isinstance(body, dict) and isinstance(body.get("data"), dict) else body
        if isinstance(data, dict) and (data.get("id") is not None or data.get("name") is not None):
            event_id = data.get("id")
            return BatchOutcome(accepted={0: str(event_id) if event_id is not None else None})
        return BatchOutcome(
            warnings=[f"Flux answered HTTP {response.status} with an unrecognised body: {response.excerpt(120)}"]
        )

    def error_reason(self, response: HttpResponse) -> str:
        return flux_error_reason(response)

    def configure(self, options: Mapping[str, Any]) -> Endpoint:
        unknown = sorted(set(options) - {"rate_per_minute"})
        if unknown:
            raise ValueError(f"{unknown[0]}: {self.qualified_name} takes only the option rate_per_minute")
        if "rate_per_minute" not in options:
            return self
        return dataclasses.replace(self, rate=Rate(_positive("rate_per_minute", options["rate_per_minute"]), 60.0))

    def reconcile(
        self, ctx: Any, *, sync: str, window_start: str | None, window_end: str | None, delivered: int
    ) -> dict[str, Any]:
        """Flux's count of this sync's events (``tags.syncline_sync``) in the window vs the ledger's.

        ``difference`` is ``ledger_count - vendor_count``: positive means events missing at Flux (deleted,
        expired, or sent with a timestamp outside the window), negative means extra copies at Flux (a
        resent batch stored twice: Flux has no dedup).
        """
        start, end = _parse_time(window_start), _parse_time(window_end)
        to = end - dt.timedelta(microseconds=1) if end is not None else None
        group_by = f"tags.{SYNC_TAG}"
        answer = count_events(ctx, from_=start, to=to, group_by=group_by)
        query = {"from": _iso(start), "to": _iso(to), "group_by": group_by}
        groups = answer.get("groups")
        if not isinstance(groups, dict):
            return {
                "vendor_count": None, "ledger_count": delivered, "difference": None, "matches": False,
                "query": query,
                "explanation": "Flux's count answer has no per-tag groups (the server ignored group_by), so "
                               "this sync's events cannot be counted apart from others' events",
            }
        vendor = int(groups.get(sync) or 0)
        difference = delivered - vendor
        if difference > 0:
            explanation = (f"Flux holds {difference} fewer events than the ledger marks delivered: deleted or "
                           "expired at Flux, or sent with a timestamp outside the window")
        elif difference < 0:
            explanation = (f"Flux holds {-difference} more events than the ledger marks delivered: a resent "
                           "request stored twice (Flux has no dedup), or events tagged with this sync's name "
                           "by another sender")
        else:
            explanation = "Flux holds exactly the events the ledger marks delivered"
        return {
            "vendor_count": vendor,
            "ledger_count": delivered,
            "difference": difference,
            "matches": difference == 0,
            "missing_at_vendor": max(0, difference),
            "extra_at_vendor": max(0, -difference),
            "flux_total_in_window": answer.get("total"),
            "query": query,
            "method": f"GET {COUNT_PATH}?group_by={group_by} (every event syncline sends carries this tag)",
            "explanation": explanation,
        }


@dataclasses.dataclass(frozen=True, kw_only=True)
class FluxBatchEndpoint(FluxEventEndpoint):
    """``POST /api/v1/events/batch``: up to 500 events per request; small chunks go through ``single``."""

    read_back: bool = True
    OPTIONS: ClassVar[Mapping[str, str]] = {
        "single_rate_per_minute": "the single-event endpoint's rate for small tails (default 60/min, assumed)",
        "single_below": "chunks smaller than this go event by event through the single endpoint",
        "read_back": "read a partly accepted batch back by its tag to learn which events landed (default true)",
    }

    def bind(self, run: RunContext) -> FluxEventEndpoint:
        single = self.single.bind(run) if isinstance(self.single, FluxEventEndpoint) else self.single
        return dataclasses.replace(self, run=run, single=single)

    def encode(self, items: Sequence[bytes], credentials: Mapping[str, str]) -> bytes:
        sync = self.run.sync if self.run else None
        batch = self.batch_id(items)
        claim = current_claim()
        return ('{"events":[' + ",".join(_mark(item, sync, batch, claim) for item in items) + "]}").encode()

    def envelope_bytes(self) -> int:
        return len(BATCH_ENVELOPE) + MARKER_BYTES_PER_EVENT * self.max_items

    def parse(self, response: HttpResponse, items: Sequence[bytes]) -> BatchOutcome:
        n = len(items)
        counts = _batch_counts(response.json(), n)
        if counts is None:
            return BatchOutcome(warnings=[
                f"Flux answered HTTP {response.status} to a batch of {n} with an unrecognised body "
                f"({response.excerpt(120)}); its events are in_doubt"
            ])
        accepted, rejected, detail = counts
        if accepted == n and not detail:
            return BatchOutcome(accepted=dict.fromkeys(range(n)))
        if detail is not None and len(detail) == n - accepted and all(0 <= i < n for i in detail):
            return BatchOutcome(
                accepted=dict.fromkeys(i for i in range(n) if i not in detail), rejected=dict(detail)
            )
        return self._resolve_partial(items, accepted, rejected)

    def _resolve_partial(self, items: Sequence[bytes], accepted: int, rejected: int) -> BatchOutcome:
        """Flux stored ``accepted`` of the batch without saying which: read the batch back, or leave it in doubt."""
        n = len(items)
        batch = self.batch_id(items)
        said = f"Flux accepted {accepted} and rejected {rejected} of a batch of {n} without naming them"
        if not self.read_back or self.run is None:
            why = "read_back is off" if not self.read_back else "no run is bound for a read-back"
            return BatchOutcome(warnings=[
                f"{said}; {why}, so all {n} are in_doubt (find them with tags[{BATCH_TAG}]={batch})"
            ])
        keys = [_item_key(item) for item in items]
        try:
            found = read_back_batch(self.run.sender, batch, sync=self.run.sync, limit=max(n * 2, 1))
        except Exception as exc:  # a failing read-back must not lose the batch's outcome: stay in doubt
            return BatchOutcome(warnings=[
                f"{said}; the read-back of tags[{BATCH_TAG}]={batch} failed ({exc}), so all {n} are in_doubt"
            ])
        index_of = {key: i for i, key in enumerate(keys) if key is not None}
        copies: dict[int, list[str | None]] = {}
        for event in found:
            props = event.get("properties")
            index = index_of.get(str(props.get(KEY_FIELD))) if isinstance(props, dict) else None
            if index is not None:
                copies.setdefault(index, []).append(str(event["id"]) if event.get("id") is not None else None)
        if len(copies) != accepted or None in keys:
            return BatchOutcome(warnings=[
                f"{said}; the read-back of tags[{BATCH_TAG}]={batch} found {len(copies)} of them, which does "
                f"not match, so all {n} are in_doubt"
            ])
        reason = (f"Flux counted this event among the {rejected} rejected of its batch of {n} and gave no "
                  f"reason; a read-back of the batch (tags[{BATCH_TAG}]={batch}) did not find it")
        outcome = BatchOutcome(
            accepted={i: ids[0] for i, ids in copies.items()},
            rejected={i: reason for i in range(n) if i not in copies},
        )
        twice = sum(1 for ids in copies.values() if len(ids) > 1)
        if twice:
            outcome.warnings.append(f"Flux holds more than one copy of {twice} events of batch {batch}")
        return outcome

    def configure(self, options: Mapping[str, Any]) -> Endpoint:
        allowed = {"single_rate_per_minute", "single_below", "read_back"}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise ValueError(f"{unknown[0]}: {self.qualified_name} takes the options {', '.join(sorted(allowed))}")
        changes: dict[str, Any] = {}
        single = self.single
        if "single_rate_per_minute" in options and isinstance(single, FluxEventEndpoint):
            per_minute = _positive("single_rate_per_minute", options["single_rate_per_minute"])
            single = dataclasses.replace(single, rate=Rate(per_minute, 60.0))
            changes["single"] = single
            if single.rate is not None and self.rate is not None:
                changes["single_below"] = tail_threshold(self.rate, single.rate)
        if "single_below" in options:
            value = options["single_below"]
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= self.max_items:
                raise ValueError(f"single_below: a whole number from 0 (off) to {self.max_items}, got {value!r}")
            changes["single_below"] = value
        if "read_back" in options:
            if not isinstance(options["read_back"], bool):
                raise ValueError(f"read_back: true or false, got {options['read_back']!r}")
            changes["read_back"] = options["read_back"]
        return dataclasses.replace(self, **changes) if changes else self


# --- payload helpers ---------------------------------------------------------------------------------------
_DECODER = json.JSONDecoder()
_SPACE = " \t\n\r"


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i] in _SPACE:
        i += 1
    return i


def _members(text: str) -> list[tuple[str, str, str]] | None:
    """The members of a JSON object text as (key, key text, value text), each text exactly as written;
    None when ``text`` is not one JSON object."""
    i = _skip(text, 0)
    if text[i : i + 1] != "{":
        return None
    members: list[tuple[str, str, str]] = []
    i = _skip(text, i + 1)
    if text[i : i + 1] == "}":
        return members if _skip(text, i + 1) == len(text) else None
    while True:
        key, after_key = _DECODER.raw_decode(text, i)
        if not isinstance(key, str):
            return None
        colon = _skip(text, after_key)
        if text[colon : colon + 1] != ":":
            return None
        start = _skip(text, colon + 1)
        _, end = _DECODER.raw_decode(text, start)
        members.append((key, text[i:after_key], text[start:end]))
        i = _skip(text, end)
        if text[i : i + 1] == ",":
            i = _skip(text, i + 1)
            continue
        return members if text[i : i + 1] == "}" and _skip(text, i + 1) == len(text) else None


def _with_members(text: str | None, added: Sequence[tuple[str, str]]) -> str:
    """The object ``text`` (JSON, as the model wrote it) with ``added`` (key, JSON value text) members:
    byte for byte as written when it holds none of those keys (they go before its closing brace); else
    its own members of those keys are left out (they are syncline's markers: see the module docstring)."""
    extra = ",".join(f"{json.dumps(key)}:{value}" for key, value in added)
    members = _members(text) if text is not None else None
    if text is None or members is None:
        return "{" + extra + "}"
    reserved = {key for key, _ in added}
    if any(key in reserved for key, _, _ in members):
        kept = [f"{key_text}:{value}" for key, key_text, value in members if key not in reserved]
        return "{" + ",".join([*kept, extra]) + "}"
    body = text.rstrip(_SPACE)
    head = body[:-1].rstrip(_SPACE)
    return body[:-1] + extra + "}" if head.endswith("{") else body[:-1] + "," + extra + "}"


def _mark(item: bytes, sync: str | None, batch: str | None, claim: str | None = None) -> str:
    """One event's JSON text with syncline's markers (see the module docstring), at most
    MARKER_BYTES_PER_EVENT longer. Everything else goes out byte for byte as the engine rendered the model's
    values: nothing is parsed into Python numbers and written back (which would round a long decimal)."""
    text = item.decode("utf-8")
    members = _members(text)
    if members is None:  # not an object: the engine never renders one; sent as is
        return text
    key = next((value for name, _, value in members if name == KEY_FIELD), None)
    tags = [(name, json.dumps(value, ensure_ascii=False))
            for name, value in ((SYNC_TAG, sync), (BATCH_TAG, batch), (CLAIM_TAG, claim)) if value]
    out: list[str] = []
    seen: set[str] = set()
    for name, key_text, value in members:
        if name == KEY_FIELD:
            continue
        if name == "properties" and key is not None:
            value = _with_members(value, [(KEY_FIELD, key)])
        elif name == "tags" and tags:
            value = _with_members(value, tags)
        seen.add(name)
        out.append(f"{key_text}:{value}")
    if key is not None and "properties" not in seen:
        out.append(f'"properties":{_with_members(None, [(KEY_FIELD, key)])}')
    if tags and "tags" not in seen:
        out.append(f'"tags":{_with_members(None, tags)}')
    return "{" + ",".join(out) + "}"


def _item_key(item: bytes) -> str | None:
    try:
        value = json.loads(item).get(KEY_FIELD)
    except (ValueError, AttributeError):
        return None
    return str(value) if value is not None else None


def _batch_counts(body: Any, n: int) -> tuple[int, int, dict[int, str] | None] | None:
    """(accepted, rejected, per-index reasons or None) from either answer shape; None if unrecognised."""
    if not isinstance(body, dict):
        return None
    data = body.get("data")
    if isinstance(data, dict) and isinstance(data.get("accepted"), int):
        accepted: int = data["accepted"]
        rejected: int = data["rejected"] if isinstance(data.get("rejected"), int) else n - accepted
        detail: dict[int, str] | None = None
        listed = data.get("errors") if isinstance(data.get("errors"), list) else data.get("rejected_events")
        if isinstance(listed, list):
            detail = {}
            for problem in listed:
                if isinstance(problem, dict) and isinstance(problem.get("index"), int):
                    detail[problem["index"]] = _problem_reason(problem)
        return accepted, rejected, detail
    for name in ("ingested", "events_ingested"):  # the open-source server's 201 answers
        if isinstance(body.get(name), int):
            return body[name], n - body[name], None
    return None


def _problem_reason(problem: Mapping[str, Any]) -> str:
    code = str(problem.get("code") or "")
    message = str(problem.get("message") or "")
    readable = ERROR_CODES.get(code, message or code or "no reason given")
    extra = f": {message}" if _adds(message, code, readable) else ""
    return f"Flux rejected the event: {readable}{extra}" + (f" ({code})" if code else "")


def flux_error_reason(response: HttpResponse) -> str:
    """A readable reason from a Flux error answer, whatever its shape.

    The document lists codes but no body. Read: ``{"error": {"code", "message", "index"}}``, ``{"error":
    "<code or message>"}`` (the open-source server), ``{"error": [...]}``, ``{"code", "message"}``,
    ``{"errors": [...]}`` and Rails' ``{"errors": {"<field>": ["<message>"]}}``; anything else (another
    shape, a text or empty body) is quoted.
    """
    body = response.json()
    code = message = ""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            code, message = str(error.get("code") or ""), str(error.get("message") or "")
        elif isinstance(error, str):
            code, message = (error, "") if error in ERROR_CODES else ("", error)
        elif isinstance(error, list) and error:
            message = "; ".join(str(e) for e in error[:3])
        elif isinstance(body.get("errors"), list) and body["errors"]:
            first = body["errors"][0]
            if isinstance(first, dict):
                code, message = str(first.get("code") or ""), str(first.get("message") or "")
            else:
                message = "; ".join(str(e) for e in body["errors"][:3])
        elif isinstance(body.get("errors"), dict) and body["errors"]:  # Rails: {"errors": {"name": ["..."]}}
            message = "; ".join(
                f"{name} {'; '.join(map(str, said)) if isinstance(said, list) else said}"
                for name, said in list(body["errors"].items())[:3]
            )
        else:
            code, message = str(body.get("code") or ""), str(body.get("message") or "")
    if not code and not message:
        return f"Flux refused the request (HTTP {response.status}): {response.excerpt(200)}"
    readable = ERROR_CODES.get(code, message or code)
    detail = f"; {message}" if _adds(message, code, readable) else ""
    label = f"HTTP {response.status}, {code}" if code else f"HTTP {response.status}"
    return f"Flux refused the event: {readable}{detail} ({label})"


def _adds(message: str, code: str, readable: str) -> bool:
    """Whether the server's message says more than our reason for a known code."""
    return bool(message) and code in ERROR_CODES and message != readable and (
        message.strip().rstrip(".").lower() not in DOCUMENTED_MESSAGES
    )


def _positive(option: str, value: Any) -> int:
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{option}: a positive number of requests per minute, got {value!r}")
    if value != int(value):
        raise ValueError(f"{option}: a whole number of requests per minute, got {value!r}")
    return int(value)


# --- read API wrappers -------------------------------------------------------------------------------------
TimeArg = str | dt.datetime | dt.date | None


def api_headers(sender: Any) -> dict[str, str]:
    """``request_once`` sends no credential unless told: the Bearer header of the sender's key."""
    return {"Authorization": f"Bearer {sender.credentials['api_key']}"}


def _query_limiter(sender: Any) -> RateLimiter:
    """The documented 60 queries/minute, per key, shared by every process (a separate budget from ingestion)."""
    scope = credential_scope("flux_query", sender.credentials["api_key"])
    return RateLimiter(settings.home() / "ratelimit", scope, QUERY_RATE.interval)


def _get(sender: Any, path: str, params: Mapping[str, Any], label: str) -> dict[str, Any]:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    _query_limiter(sender).acquire()
    response: HttpResponse = sender.request_once(
        "GET", f"{path}?{query}" if query else path, label=label, headers=api_headers(sender)
    )
    if not 200 <= response.status < 300:
        raise FluxError(f"Flux GET {path} failed: {flux_error_reason(response)}")
    body = response.json()
    if not isinstance(body, dict):
        raise FluxError(f"Flux GET {path} answered something that is not a JSON object: {response.excerpt(120)}")
    return body


def list_events(
    sender: Any,
    *,
    name: str | None = None,
    from_: TimeArg = None,
    to: TimeArg = None,
    user_id: str | None = None,
    tags: Mapping[str, str] | None = None,
    limit: int = 100,
    offset: int = 0,
) -> dict[str, Any]:
    """``GET /api/v1/events``: ``{"data": [events], "meta": {"total", "limit", "offset"}}``.

    ``name`` matches exactly, or as a prefix when it ends with ``*``; ``tags`` filters by tag values;
    ``to`` is inclusive. ``limit`` is at most 1000.
    """
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be 1..{MAX_PAGE}, got {limit}")
    params: dict[str, Any] = {"name": name, "from": _iso(from_), "to": _iso(to), "user_id": user_id,
                              "limit": limit, "offset": offset or None}
    params.update({f"tags[{k}]": v for k, v in (tags or {}).items()})
    body = _get(sender, EVENTS_PATH, params, "flux:list_events")
    events = body.get("data") if isinstance(body.get("data"), list) else body.get("events")
    if not isinstance(events, list):
        raise FluxError(f"Flux GET {EVENTS_PATH} answered without a list of events")
    meta = body.get("meta") if isinstance(body.get("meta"), dict) else {"total": body.get("total")}
    return {"data": [e for e in events if isinstance(e, dict)], "meta": meta}


def iter_events(sender: Any, *, page_size: int = MAX_PAGE, max_pages: int = 100, **filters: Any) -> Iterator[dict[str, Any]]:
    """Every event matching ``filters`` (as :func:`list_events`), page by page at the query rate."""
    for page in range(max_pages):
        events = list_events(sender, limit=page_size, offset=page * page_size, **filters)["data"]
        yield from events
        if len(events) < page_size:
            return
    raise FluxError(f"more than {max_pages * page_size} events match; narrow the filters")


def count_events(
    sender: Any,
    *,
    name: str | None = None,
    from_: TimeArg = None,
    to: TimeArg = None,
    interval: str | None = None,
    group_by: str | None = None,
) -> dict[str, Any]:
    """``GET /api/v1/events/count``: ``{"total", "series"?: [{"timestamp", "count"}], "groups"?: {value: n}}``.

    ``interval`` is one of 1m, 5m, 1h, 1d; ``group_by`` a tag key as ``tags.<key>``.
    """
    if interval is not None and interval not in ("1m", "5m", "1h", "1d"):
        raise ValueError(f"interval must be 1m, 5m, 1h or 1d, got {interval!r}")
    params = {"name": name, "from": _iso(from_), "to": _iso(to), "interval": interval, "group_by": group_by}
    body = _get(sender, COUNT_PATH, params, "flux:count_events")
    data = body.get("data")
    if isinstance(data, dict):
        return data
    if isinstance(body.get("count"), int):  # the open-source server's shape
        return {"total": body["count"]}
    raise FluxError(f"Flux GET {COUNT_PATH} answered without a count")


def event_stats(
    sender: Any, *, name: str | None = None, field: str | None = None, from_: TimeArg = None, to: TimeArg = None
) -> dict[str, Any]:
    """``GET /api/v1/events/stats``: ``{"count", "sum", "avg", "min", "max", "p50", "p95", "p99"}`` of ``field``
    (default ``value``) over the matching events."""
    params = {"name": name, "field": field, "from": _iso(from_), "to": _iso(to)}
    body = _get(sender, STATS_PATH, params, "flux:event_stats")
    data = body.get("data")
    if not isinstance(data, dict):
        raise FluxError(f"Flux GET {STATS_PATH} answered without statistics")
    return data


def read_back_batch(sender: Any, batch: str, *, sync: str | None = None, limit: int = MAX_PAGE) -> list[dict[str, Any]]:
    """The events Flux holds from one request, found by its ``syncline_batch`` tag (at most ``limit``)."""
    tags = {BATCH_TAG: batch, **({SYNC_TAG: sync} if sync else {})}
    page = list_events(sender, tags=tags, limit=min(max(limit, 1), MAX_PAGE))
    total = page["meta"].get("total")
    if isinstance(total, int) and total > len(page["data"]):
        raise FluxError(f"{total} events carry tags[{BATCH_TAG}]={batch}, more than one page")
    return page["data"]


# --- time helpers ------------------------------------------------------------------------------------------
def _parse_time(value: TimeArg) -> dt.datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, dt.date):
        moment = dt.datetime.combine(value, dt.time())
    else:
        moment = dt.datetime.fromisoformat(str(value).strip())
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)


def _iso(value: TimeArg) -> str | None:
    """ISO 8601 in UTC with microseconds and ``Z``; naive times are taken as UTC."""
    moment = _parse_time(value)
    if moment is None:
        return None
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# --- declarations --------------------------------------------------------------------------------------------
# Every check below is the document's (docs/vendor-api/flux.md, "Track Event" > "Parameters" and "Errors");
# the opt-in RULES are checks it does not make (a sync turns them on with ``strict``).
FIELDS = (
    Field("name", "string", required=True,
          basis="doc: Track Event, Parameters: `name | string | Yes | Event name (e.g., user.signup)`; "
                "Errors: `missing_name | Event name is required`"),
    Field("timestamp", "iso8601",
          basis="doc: Track Event, Parameters: `timestamp | string | No | ISO8601 timestamp (defaults to now)`; "
                "Errors: `invalid_timestamp | Timestamp format invalid`. Any ISO 8601 date or date-time: the "
                "document asks for no offset and no time of day"),
    Field("user_id", "string",
          basis="doc: Track Event, Parameters: `user_id | string | No | Associated user identifier`"),
    Field("value", "number",
          basis="doc: Track Event, Parameters: `value | number | No | Numeric value for aggregations`"),
    Field("properties", "object",
          basis="doc: Track Event, Parameters: `properties | object | No | Arbitrary event data`"),
    Field("tags", "string_map",
          basis="doc: Track Event, Parameters: `tags | object | No | Indexed metadata for filtering`; "
                "Errors: `invalid_tags | Tags must be string values`"),
)
RULES: tuple[Rule, ...] = (
    not_blank("name", basis="choice: the document requires a name (missing_name) without saying whether an "
                            "empty or blank one counts as missing; a server validating presence refuses it"),
    not_blank("user_id", basis="choice: the document allows any string; an empty user_id is usually a broken "
                               "join, and Flux would group such events under one empty user"),
    Rule(
        when=f"""typeof("timestamp") = 'VARCHAR' AND regexp_matches(CAST("timestamp" AS VARCHAR), '^[0-9]{{4}}')
                 AND NOT {iso8601.has_offset_sql('CAST("timestamp" AS VARCHAR)')}""",
        reason="""'timestamp has no UTC offset (a date alone or a local time), and Flux''s time zone for it '
                  || 'is not documented; got ' || CAST("timestamp" AS VARCHAR)""",
        name="timestamp_has_offset",
        field="timestamp",
        basis="choice: the document allows any ISO 8601 form, but does not say which zone Flux gives a time "
              "without an offset (a TIMESTAMP column always goes out with one)",
        opt_in=True,
    ),
)  # NaN and Infinity (in value, or anywhere in properties) are refused by the engine: JSON cannot carry them

EVENTS = FluxEventEndpoint(
    vendor="flux",
    name="events",
    path=EVENTS_PATH,
    description="Track one event per request (the batch endpoint's path for small tails).",
    fields=FIELDS,
    rules=RULES,
    max_items=1,
    rate=Rate(int(DEFAULT_SINGLE_PER_MINUTE), 60.0),
    idempotency_field=KEY_FIELD,
    dedup="read_back",
)

EVENTS_BATCH = FluxBatchEndpoint(
    vendor="flux",
    name="events_batch",
    path=BATCH_PATH,
    description="Track up to 500 events per request (10 requests/minute); small tails go one by one.",
    fields=FIELDS,
    rules=RULES,
    max_items=MAX_BATCH,
    rate=BATCH_RATE,
    idempotency_field=KEY_FIELD,
    dedup="read_back",
    single=EVENTS,
    single_below=tail_threshold(BATCH_RATE, Rate(int(DEFAULT_SINGLE_PER_MINUTE), 60.0)),
)

VENDOR = Vendor(
    name="flux",
    title="Brainzlab Flux",
    env_prefix="FLUX",
    default_base_url="https://flux.brainzlab.ai",
    credentials=(Credential("api_key", "FLUX_API_KEY"),),
    endpoints={e.name: e for e in (EVENTS_BATCH, EVENTS)},
)
