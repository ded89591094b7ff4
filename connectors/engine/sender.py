"""Send one chunk: rate limit, HTTP, classify, retry with backoff, bisect refused batches.

The outcome of every item of the chunk is decided here and returned to the caller, which writes it to
the ledger. Classification (see docs/delivery.md):
- 2xx: the endpoint's ``parse`` says which items were accepted (and may reject some individually).
- 429: pause the whole credential until ``Retry-After`` (seconds or HTTP-date) or a backoff, then retry.
- 5xx, timeout, dropped connection: backoff and retry; if it never succeeds the items are ``in_doubt``
  when the vendor may have stored them, ``failed`` (safe to resend) when it surely did not.
- 400/413/422: split the batch in halves until the bad items stand alone; those are ``rejected``.
- 401/403: stop the sync (:class:`AuthError`); nothing in the request is marked delivered.
- anything else: stop the sync. A redirect, 404, 405 or 410 almost always means a wrong base URL and
  says so; any other status (409, 412, ...) is named as an answer the endpoint does not document.

Three general mechanisms serve endpoints that are not "a JSON batch per request":
- multi-step items (``Endpoint.steps``): the endpoint's ``deliver_item`` drives several calls through an
  :class:`ItemContext`, which persists progress after each step so a rerun resumes where it stopped;
- a single-item sibling endpoint (``Endpoint.single`` / ``single_below``) for small tails of a batch;
- per-run item checks (``Endpoint.item_checker``) that may read from the vendor once per run.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from connectors.engine.endpoint import BatchOutcome, Endpoint, HttpResponse, RunContext
from connectors.engine.http import HttpClient, TransportError
from connectors.engine.ratelimit import RateLimiter
from connectors.engine.retry import Backoff, parse_retry_after
from connectors.errors import AuthError, SyncStopped
from connectors.ledger.rows import NEVER_SENT, AttemptRow, now_text

CRASH_STEP_ENV = "SYNCLINE_CRASH_BEFORE_STEP"  # test-only fault hook: hard exit before a named step
CLAIM_PREFIX = "r"  # claim group ids start so since ledger v3: vendors read back by them (earlier: untagged)
READ_BACK_ROUNDS = 3  # read back and resend what is missing at most this often per request
_current = threading.local()


def current_claim() -> str | None:
    """The claim group (the ledger's ``chunk_id``) of the request this thread is building: a vendor that
    can be read back tags events with it, so a later run can find what an earlier one stored."""
    return getattr(_current, "claim_id", None)


# Statuses that mean the request reached something other than the endpoint: a wrong base URL or path.
WRONG_PLACE = frozenset({404, 405, 410})


def unexpected_answer(endpoint: str, vendor: str, status: int, request: str, error: str | None) -> str:
    """Why the sync stopped on an answer the engine has no rule for: a redirect, 404, 405 or 410 points
    at ``<VENDOR>_BASE_URL``; any other (a 409, 412, ...) came from the endpoint itself, so blaming the
    base URL would send the reader the wrong way."""
    said = f" ({error})" if error else ""
    if 300 <= status < 400 or status in WRONG_PLACE:
        return f"{endpoint} answered HTTP {status} on {request}: check {vendor.upper()}_BASE_URL{said}"
    return (f"{endpoint} answered HTTP {status} on {request}, an answer its API reference does not list for "
            f"this request; the sync stopped so nothing more is sent until it is understood{said}")


@dataclass
class Item:
    idem_key: str
    source_key: str | None
    payload_hash: str
    payload: bytes
    cursor: str | None = None


class Chunk:
    """One request's worth of items. The fast path never builds :class:`Item` objects: ``joined`` is the
    items' JSON joined by commas and ``keys_json`` their idempotency keys, both slices of DuckDB's output.
    ``items`` materializes them only when needed (multi-step items, bisection, vendors that rewrite items)."""

    def __init__(
        self,
        chunk_id: str,
        items: list[Item] | None = None,
        *,
        count: int | None = None,
        joined: bytes | None = None,
        keys_json: str | None = None,
        load: Callable[[], list[Item]] | None = None,
        claim_id: str | None = None,
    ) -> None:
        self.chunk_id = chunk_id
        self.claim_id = claim_id or chunk_id  # the ledger's chunk_id: the claim group the items belong to
        self._items = items
        self._load = load
        self.count = len(items) if items is not None else int(count or 0)
        self.joined = joined
        self.keys_json = keys_json
        self.resends: list[str] = []  # keys an earlier run left in doubt: counted when sent again

    @property
    def items(self) -> list[Item]:
        if self._items is None:
            self._items = self._load() if self._load is not None else []
        return self._items

    @property
    def size(self) -> int:
        """Bytes of the items' JSON (with separators): the request body less its envelope."""
        if self.joined is not None:
            return len(self.joined)
        return sum(len(i.payload) + 1 for i in self.items) - 1 if self.count else 0


@dataclass
class ChunkResult:
    chunk: Chunk
    delivered: dict[str, str | None] = field(default_factory=dict)  # idem_key -> vendor id
    rejected: dict[str, str] = field(default_factory=dict)
    in_doubt: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    attempts: list[AttemptRow] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    stop: SyncStopped | None = None
    all_delivered: bool = False  # every item accepted with no vendor id: the per-item dicts stay empty
    # Sends of an item after an earlier send's outcome was unknown, at an endpoint that cannot dedup or
    # read back: the vendor may hold this many extra copies of it.
    resent_unknown: dict[str, int] = field(default_factory=dict)
    unknown_rounds: int = 0  # ``Sender.call`` counts its resends after an unknown outcome here
    gave_up: bool = False  # some request ended without an answer (no HTTP status, or 5xx) after retries

    @property
    def requests(self) -> int:
        return len(self.attempts)

    def count_resends(self, keys: Sequence[str], times: int = 1) -> None:
        """Count ``times`` risky resends for ``keys``; the outcome is then recorded item by item."""
        if not keys or times <= 0:
            return
        for key in keys:
            self.resent_unknown[key] = self.resent_unknown.get(key, 0) + times
        if self.all_delivered:
            self.all_delivered = False
            self.delivered.update(dict.fromkeys(i.idem_key for i in self.chunk.items))


@dataclass(frozen=True)
class SendPolicy:
    max_attempts: int = 6
    backoff: Backoff = Backoff()
    max_retry_after: float = 300.0


class ProgressStore(Protocol):
    def progress(self, idem_keys: Sequence[str]) -> dict[str, tuple[str | None, str | None]]: ...

    def set_progress(self, idem_key: str, progress: str, vendor_id: str | None = None) -> None: ...


def redact(text: str, secrets: Mapping[str, str]) -> str:
    for value in secrets.values():
        if value and len(value) >= 4:
            text = text.replace(value, "[redacted]")
    return text


def redact_response(response: HttpResponse, secrets: Mapping[str, str]) -> HttpResponse:
    """Blank any credential a vendor echoes back, before anything (reasons, excerpts, logs) reads the body.
    Done on the whole body, so a truncated excerpt can never keep part of a key."""
    for value in secrets.values():
        if value and len(value) >= 4 and value.encode() in response.body:
            response.body = response.body.replace(value.encode(), b"[redacted]")
    return response


class GiveUp(Exception):
    """Retries exhausted (or the vendor asked for too long a pause)."""

    def __init__(self, reason: str, maybe_sent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.maybe_sent = maybe_sent


class ItemRejected(Exception):
    """Raised by a multi-step ``deliver_item`` when the vendor refuses the item for good."""


class Sender:
    """Thread-safe: one instance serves every worker thread of a run."""

    def __init__(
        self,
        endpoint: Endpoint,
        credentials: Mapping[str, str],
        client: HttpClient,
        limiter: RateLimiter,
        policy: SendPolicy,
        *,
        run_id: str,
        sync: str,
        sleep: Callable[[float], None] = time.sleep,
        progress_store: ProgressStore | None = None,
        single: Sender | None = None,
        destination: str = "",
        in_doubt: str = "resend",
    ) -> None:
        self.destination = destination
        self.in_doubt = in_doubt  # resend | hold: what an unknown outcome means where the vendor cannot dedup
        # Set to stop every retry loop at its next step (circuit open, deadline, SIGINT/SIGTERM); a request
        # already on the wire finishes and its answer is recorded.
        self.abort = threading.Event()
        self.abort_reason = ""
        self.endpoint = endpoint.bind(RunContext(sync, run_id, self))
        self.credentials = dict(credentials)
        self.client = client
        self.limiter = limiter
        self.policy = policy
        self.run_id = run_id
        self.sync = sync
        self.sleep = sleep
        self.progress_store = progress_store
        self.single = single
        self.headers = self.endpoint.headers(self.credentials)
        self.side_attempts: list[AttemptRow] = []
        self._rng = random.Random()

    def stop_retrying(self, reason: str) -> None:
        self.abort_reason = self.abort_reason or reason
        self.abort.set()
        if self.single is not None:
            self.single.stop_retrying(reason)

    def _pause(self, seconds: float) -> None:
        """Back off; an abort wakes the wait at once."""
        if self.sleep is time.sleep:
            self.abort.wait(seconds)
        else:
            self.sleep(seconds)

    def _unknown_policy(self, idempotent: bool | None) -> tuple[bool, bool, bool]:
        """(resend after a 5xx or drop, resend after a timeout, count those resends) for one call.

        ``native`` dedup: resend freely. ``read_back``: never resend blindly; the caller reads back first.
        ``none``: under ``in_doubt: resend``, resend after a 5xx or a drop and count it (at-least-once, the
        count is what the vendor may hold twice); never after a timeout, which says the vendor is slow, and
        resending only adds load and copies (the item is ``in_doubt``, resent by the next run). Under
        ``hold``, never. An explicit ``idempotent`` (multi-step items) decides for itself."""
        if idempotent is not None:
            return idempotent, idempotent, False
        dedup = self.endpoint.dedup
        if dedup == "native":
            return True, True, False
        if dedup == "read_back" or self.in_doubt == "hold":
            return False, False, False
        return True, False, True

    # -- the one retrying call everything goes through ---------------------------------------------------
    def call(
        self,
        method: str,
        path: str,
        body: bytes | None,
        *,
        result: ChunkResult,
        chunk_id: str,
        items: int,
        headers: Mapping[str, str] | None = None,
        absolute_url: str | None = None,
        passthrough_4xx: bool = False,
        limited: bool = True,
        label: str | None = None,
        idempotent: bool | None = None,
    ) -> HttpResponse:
        """Send with limiter and retries. Returns 2xx and refusals (400/413/422, or any 4xx if
        ``passthrough_4xx``); raises :class:`GiveUp` after retries and :class:`SyncStopped` to stop.

        Once an attempt may have reached the vendor (timeout or drop after sending, 5xx) its outcome is
        unknown; whether to send it again is decided by :meth:`_unknown_policy` (``idempotent`` overrides:
        ``False`` for a create with no dedup key, ``True`` for a safe step). When not resent, the call gives
        up ``in_doubt``. 429s and failures to connect are always retried: the vendor surely did not act."""
        maybe_sent = False
        reason = "no attempt made"
        send_headers = dict(self.headers if headers is None else headers)
        resend_unknown, resend_timeout, counting = self._unknown_policy(idempotent)
        for attempt in range(1, self.policy.max_attempts + 1):
            if self.abort.is_set():
                if maybe_sent:
                    raise GiveUp(f"{reason}; not resent: {self.abort_reason}", True)
                # No request of this chunk left at all (e.g. waiting on the limiter when the sync stopped):
                # the same reason as the chunks never dispatched, so ``syncline items`` shows 0 attempts.
                never = not result.attempts
                raise GiveUp(f"{NEVER_SENT if never else 'not sent'}: {self.abort_reason}", False)
            if limited:
                self.limiter.acquire(self.abort)
                if self.abort.is_set():
                    continue
            if maybe_sent and counting:
                result.unknown_rounds += 1
            sent_at = now_text()
            try:
                response = self.client.request(method, path, body, send_headers, absolute_url=absolute_url)
            except TransportError as exc:
                maybe_sent = maybe_sent or exc.maybe_sent
                reason = str(exc)
                self._log(result, chunk_id, attempt, items, len(body or b""), None, 0.0, reason, label, sent_at)
                resend = resend_timeout if exc.kind == "timeout" else resend_unknown
                if exc.maybe_sent and not resend:
                    result.gave_up = True
                    raise GiveUp(f"{reason}; not resent (the vendor may have stored it)", True) from None
                if attempt < self.policy.max_attempts:
                    self._pause(self.policy.backoff.delay(attempt, self._rng))
                continue
            response = redact_response(response, self.credentials)
            status = response.status
            error = None if status < 400 else response.excerpt(200)
            self._log(result, chunk_id, attempt, items, len(body or b""), status, response.latency_s, error, label,
                      sent_at)
            if 200 <= status < 300 or status in (400, 413, 422):
                return response
            if status in (401, 403) and absolute_url is not None and passthrough_4xx:
                return response  # e.g. an expired presigned upload URL: not our credential, the step decides
            if status in (401, 403):
                raise AuthError(
                    f"{self.endpoint.qualified_name} refused the credential (HTTP {status}): check the "
                    f"{self.endpoint.vendor.upper()} credentials in the environment; the sync stopped and "
                    "nothing in this request was marked delivered"
                )
            if status == 429 or status >= 500:
                if status >= 500:
                    maybe_sent = True
                reason = f"HTTP {status} after {attempt} attempt(s): {error or ''}".strip()
                if status >= 500 and not resend_unknown:
                    result.gave_up = True
                    raise GiveUp(f"{reason}; not resent (the vendor may have stored it)", True)
                wait = parse_retry_after(response.headers.get("retry-after"))
                if wait is not None and wait > self.policy.max_retry_after:
                    raise GiveUp(
                        f"HTTP {status}: the vendor asked to wait {wait:.0f}s (over max_retry_after); left pending",
                        maybe_sent,
                    )
                if attempt >= self.policy.max_attempts:
                    break
                if wait is None:
                    wait = self.policy.backoff.delay(attempt, self._rng)
                if status == 429:
                    # A 429 pauses the whole credential (every thread and process), not just this request.
                    self.limiter.pause_until(time.time() + wait)
                    if not limited:
                        if self.limiter.on_wait is not None and wait >= 1:
                            self.limiter.on_wait(wait)
                        self._pause(wait)
                else:
                    self._pause(wait)
                continue
            if passthrough_4xx and status < 500:
                return response
            raise SyncStopped(unexpected_answer(self.endpoint.qualified_name, self.endpoint.vendor, status,
                                                f"{method} {path}", error))
        result.gave_up = True
        raise GiveUp(reason, maybe_sent)

    def request_once(
        self,
        method: str,
        path: str,
        *,
        label: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        limited: bool = False,
    ) -> HttpResponse:
        """A side request (a lookup, a read-back) with the usual retries; any non-auth 4xx is returned.

        ``headers`` defaults to none at all: a lookup never carries the endpoint's credential unless the
        caller passes it. Its attempts are kept in ``side_attempts`` for the run log.
        """
        result = ChunkResult(Chunk("side", []))
        try:
            return self.call(
                method, path, body, result=result, chunk_id="side", items=0, headers=headers or {},
                passthrough_4xx=True, limited=limited, label=label,
            )
        finally:
            self.side_attempts += result.attempts

    # -- chunks ---------------------------------------------------------------------------------------------
    def send_chunk(self, chunk: Chunk) -> ChunkResult:
        """Decide every item of ``chunk``. Never raises: an unexpected error (a vendor hook failing on an
        odd answer, a file that cannot be read) leaves the undecided items ``in_doubt`` with its name."""
        result = ChunkResult(chunk)
        _current.claim_id = chunk.claim_id
        try:
            self._send_chunk(chunk, result)
        except Exception as exc:
            reason = redact(f"unexpected {exc.__class__.__name__}: {exc}", self.credentials)[:300]
            self._undecided_to(result, result.in_doubt, reason)
            result.warnings.append(reason)
        finally:
            # Not left for the thread's next body built outside a chunk (docgen's example bodies showed a
            # mirror run's "removal" claim after tests/test_mirror.py had run in the same process).
            _current.claim_id = None
        return result

    @staticmethod
    def _undecided_to(result: ChunkResult, target: dict[str, str], reason: str) -> None:
        if result.all_delivered:
            return
        decided = result.delivered.keys() | result.rejected.keys() | result.in_doubt.keys() | result.failed.keys()
        for item in result.chunk.items:
            if item.idem_key not in decided:
                target[item.idem_key] = reason

    def _send_chunk(self, chunk: Chunk, result: ChunkResult) -> ChunkResult:
        endpoint = self.endpoint
        if endpoint.steps:
            for item in chunk.items:
                self._deliver_steps(item, result)
                if result.stop:
                    break
            self._fail_rest(result)
            return result
        if self.single is not None and chunk.count < endpoint.single_below:
            for item in chunk.items:
                self.single._send_parts([[item]], chunk.chunk_id, result)
                if result.stop:
                    break
            self._fail_rest(result)
            return result
        self._send_whole(chunk, result)
        return result

    def _send_whole(self, chunk: Chunk, result: ChunkResult) -> None:
        """The fast path: the body DuckDB built, one call; per-item work only if the answer needs it."""
        endpoint = self.endpoint
        body = endpoint.encode_joined(chunk.joined, chunk.count, self.credentials) if chunk.joined is not None else None
        if body is None:
            self._send_parts([chunk.items], chunk.chunk_id, result)
            return
        rounds = result.unknown_rounds
        try:
            response = self.call(endpoint.method, endpoint.path, body, result=result, chunk_id=chunk.chunk_id,
                                 items=chunk.count)
        except GiveUp as give_up:
            self._count_rounds(result, rounds, chunk.items)
            if give_up.maybe_sent and endpoint.dedup == "read_back":
                self._send_parts([], chunk.chunk_id, result, unknown=[(chunk.items, give_up.reason)])
                return
            target = result.in_doubt if give_up.maybe_sent else result.failed
            for item in chunk.items:
                target[item.idem_key] = give_up.reason
            return
        except SyncStopped as stop:
            result.stop = stop
            for item in chunk.items:
                result.failed[item.idem_key] = f"not delivered: {stop}"
            return
        if result.unknown_rounds > rounds:
            result.count_resends([i.idem_key for i in chunk.items], result.unknown_rounds - rounds)
        if 200 <= response.status < 300:
            outcome = endpoint.parse(response, _LazyPayloads(chunk))
            if outcome.all_accepted:
                result.warnings += outcome.warnings
                result.all_delivered = True
                return
            self._apply_outcome(outcome, chunk.items, result)
        elif chunk.count == 1:
            result.rejected[chunk.items[0].idem_key] = redact(endpoint.error_reason(response), self.credentials)
        else:
            items = chunk.items
            middle = len(items) // 2
            self._send_parts([items[middle:], items[:middle]], chunk.chunk_id, result)

    def _apply_outcome(self, outcome: BatchOutcome, part: Sequence[Item], result: ChunkResult) -> None:
        result.warnings += outcome.warnings
        for index, item in enumerate(part):
            if index in outcome.rejected:
                result.rejected[item.idem_key] = redact(outcome.rejected[index], self.credentials)
            elif outcome.all_accepted or index in outcome.accepted:
                result.delivered[item.idem_key] = outcome.accepted.get(index)
            else:
                result.in_doubt[item.idem_key] = "the vendor's answer did not account for this item"

    def _fail_rest(self, result: ChunkResult) -> None:
        if result.stop is not None:
            self._undecided_to(result, result.failed, f"not delivered: {result.stop}")

    @staticmethod
    def _count_rounds(result: ChunkResult, before: int, part: Sequence[Item]) -> None:
        if result.unknown_rounds > before:
            result.count_resends([i.idem_key for i in part], result.unknown_rounds - before)

    def _read_back(self, part: list[Item], reason: str, result: ChunkResult) -> list[Item] | None:
        """After an unknown outcome at a ``read_back`` endpoint: record what the vendor stored as delivered
        and return the items it surely does not hold (to resend); None when it cannot tell."""
        try:
            outcome = self.endpoint.resolve_unknown([i.payload for i in part])
        except Exception as exc:  # a failing read-back leaves the items in doubt, never lost
            outcome = None
            result.warnings.append(redact(f"read-back failed: {exc.__class__.__name__}: {exc}", self.credentials)[:300])
        if outcome is None:
            for item in part:
                result.in_doubt[item.idem_key] = f"{reason}; the read-back could not tell whether it was stored"
            return None
        result.warnings += outcome.warnings
        missing: list[Item] = []
        for index, item in enumerate(part):
            if index in outcome.accepted:
                result.delivered[item.idem_key] = outcome.accepted[index]
            else:
                missing.append(item)
        return missing

    def _send_parts(self, stack: list[list[Item]], chunk_id: str, result: ChunkResult,
                    unknown: list[tuple[list[Item], str]] | None = None) -> None:
        """Send parts (halving refused ones). ``unknown``: parts whose answer was lost, read back first."""
        endpoint = self.endpoint
        read_backs = 0
        pending_unknown = list(unknown or [])
        while stack or pending_unknown:
            if pending_unknown:
                lost, why = pending_unknown.pop()
                read_backs += 1
                missing = self._read_back(lost, why, result)
                if not missing:
                    continue
                if read_backs > READ_BACK_ROUNDS or self.abort.is_set():
                    note = self.abort_reason if self.abort.is_set() else f"{READ_BACK_ROUNDS} read-backs"
                    for item in missing:  # read back: surely not stored, so safe to send next run
                        result.failed[item.idem_key] = f"{why}; not stored (read back), not resent: {note}"
                    continue
                stack.append(missing)
                continue
            part = stack.pop()
            body = endpoint.encode([i.payload for i in part], self.credentials)
            rounds = result.unknown_rounds
            try:
                response = self.call(endpoint.method, endpoint.path, body, result=result, chunk_id=chunk_id, items=len(part))
            except GiveUp as give_up:
                self._count_rounds(result, rounds, part)
                if give_up.maybe_sent and endpoint.dedup == "read_back":
                    pending_unknown.append((part, give_up.reason))
                    continue
                target = result.in_doubt if give_up.maybe_sent else result.failed
                for item in part:
                    target[item.idem_key] = give_up.reason
                continue
            except SyncStopped as stop:
                result.stop = stop
                for item in [i for p in [part, *stack] for i in p]:
                    result.failed[item.idem_key] = f"not delivered: {stop}"
                return
            self._count_rounds(result, rounds, part)
            if 200 <= response.status < 300:
                self._apply_outcome(endpoint.parse(response, [i.payload for i in part]), part, result)
            elif len(part) == 1:
                result.rejected[part[0].idem_key] = redact(endpoint.error_reason(response), self.credentials)
            else:
                middle = len(part) // 2
                stack += [part[middle:], part[:middle]]  # left half first

    def _deliver_steps(self, item: Item, result: ChunkResult) -> None:
        progress: dict[str, Any] = {}
        if self.progress_store is not None:
            stored, _ = self.progress_store.progress([item.idem_key]).get(item.idem_key, (None, None))
            progress = json.loads(stored) if stored else {}
        ctx = ItemContext(self, item, result, progress)
        try:
            vendor_id = self.endpoint.deliver_item(ctx)
        except ItemRejected as rejected:
            result.rejected[item.idem_key] = redact(str(rejected), self.credentials)
        except GiveUp as give_up:
            target = result.in_doubt if give_up.maybe_sent else result.failed
            target[item.idem_key] = f"{give_up.reason} (at step {ctx.current_step or 'start'})"
        except SyncStopped as stop:
            result.stop = stop
            result.failed[item.idem_key] = f"not delivered: {stop}"
        except Exception as exc:  # one item's surprise must not decide its neighbours' fate
            reason = redact(f"unexpected {exc.__class__.__name__} at step {ctx.current_step or 'start'}: {exc}",
                            self.credentials)[:300]
            result.in_doubt[item.idem_key] = reason
        else:
            result.delivered[item.idem_key] = vendor_id

    def _log(
        self, result: ChunkResult, chunk_id: str, attempt: int, items: int, size: int,
        status: int | None, latency_s: float, error: str | None, label: str | None = None, at: str | None = None,
    ) -> None:
        result.attempts.append(
            AttemptRow(self.run_id, self.sync, label or self.endpoint.name, chunk_id, attempt, items, size, status,
                       round(latency_s * 1000, 3), error, at or now_text(), self.destination)
        )


class _LazyPayloads(Sequence[bytes]):
    """The items' payloads for ``Endpoint.parse``: its length costs nothing, an element builds the items."""

    def __init__(self, chunk: Chunk) -> None:
        self._chunk = chunk

    def __len__(self) -> int:
        return self._chunk.count

    def __getitem__(self, index: Any) -> Any:
        items = self._chunk.items
        if isinstance(index, slice):
            return [i.payload for i in items[index]]
        return items[index].payload


class ItemContext:
    """What a multi-step ``deliver_item`` works with: the payload, saved progress, and a retrying ``call``.

    ``progress`` is a JSON-able dict persisted with :meth:`save` straight to the ledger, so an item whose
    run crashes resumes at the step that did not finish (never creating the vendor object twice).
    """

    def __init__(self, sender: Sender, item: Item, result: ChunkResult, progress: dict[str, Any]) -> None:
        self.sender = sender
        self.item = item
        self.result = result
        self.progress = progress
        self.current_step: str | None = None
        self.payload: dict[str, Any] = json.loads(item.payload)

    def call(
        self,
        method: str,
        path: str,
        *,
        step: str,
        json_body: Any = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        absolute_url: str | None = None,
        limited: bool = True,
        idempotent: bool = True,
    ) -> HttpResponse:
        """One step's request (retried like any other). Any 4xx other than 401/403/429 is returned.

        Pass ``idempotent=False`` for a step that creates something the vendor cannot dedup."""
        self.current_step = step
        if os.environ.get(CRASH_STEP_ENV) == step:
            os._exit(70)
        if json_body is not None:
            body = json.dumps(json_body).encode()
        return self.sender.call(
            method, path, body, result=self.result, chunk_id=self.item.idem_key[:16], items=1,
            headers=headers, absolute_url=absolute_url, passthrough_4xx=True, limited=limited,
            label=f"{self.sender.endpoint.name}:{step}", idempotent=idempotent,
        )

    def save(self, vendor_id: str | None = None) -> None:
        if self.sender.progress_store is not None:
            self.sender.progress_store.set_progress(self.item.idem_key, json.dumps(self.progress), vendor_id)

    def done(self, step: str) -> bool:
        return bool(self.progress.get(step))

    def count_resend(self) -> None:
        """The step about to run sends again what an unknown outcome may have stored: count it."""
        self.result.count_resends([self.item.idem_key])
