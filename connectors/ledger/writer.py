"""One writer thread per run: every ledger write of a delivery goes through it, group-committed.

Why: per-chunk synchronous transactions on the sending threads cost more than HTTP itself (measured).
Here senders hand finished chunks over and go on; the writer takes whatever has arrived, waits a few
milliseconds for more, and writes it all in one transaction. Claims and multi-step progress are
synchronous (the caller waits for the commit) because they must be durable before a request leaves; they
ride in the same group commits. An outcome lost in a crash leaves its items ``in_doubt`` (their claim),
which is safe: nothing is ever recorded delivered that was not.

Batch endpoints journal everything (claims, delivered requests, per-item rows, attempts) through a
connection of their own (:meth:`Ledger.open_journal`: for SQLite a file of its own, ``journal.py``). A
fold, which turns the journal into per-item state, runs on a thread and connection of its own
(:class:`_Folder`), so claims never wait for it: measured, waiting for claims behind folds was half of a
100 ms-sink run's delivery time when folds ran here.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from connectors.ledger.rows import AttemptRow, ItemRow, attempt_values
from connectors.ledger.store import Ledger, Store, journal_values

GROUP_WINDOW_S = 0.003  # how long the writer waits for more finished chunks before committing
FOLD_SLICE_ITEMS = 40_000  # claimed items between folds: each fold is a short transaction (a fraction of a second)
FOLD_EVERYTHING = 2**62  # a fold bound past every journal row


@dataclass
class Outcome:
    """What one finished chunk writes: a delivered key list (one statement), item rows, attempts."""

    destination: str
    run_id: str
    chunk_id: str
    delivered_keys_json: str | None = None  # every item of the request was accepted, no vendor ids
    delivered_count: int = 0
    rows: list[ItemRow] = field(default_factory=list)
    keep_delivered: bool = True
    attempts: list[AttemptRow] = field(default_factory=list)
    journaled: bool = True  # the items' claim is in the journal: outcomes go there too, in order
    sync: str = ""
    endpoint: str = ""
    group_done: bool = False  # the last answer of the claim group ``chunk_id``
    # ... and the group was delivered whole, every item for the first time here: its keys (JSON), item
    # count and cursor range go in a ``group`` journal row, and the fold keeps one ledger row for it.
    group_keys_json: str | None = None
    group_items: int = 0
    group_cursors: tuple[str | None, str | None] = (None, None)


class OutcomeWriter:
    """Owns a second connection to the ledger; ``start()`` it, ``close()`` it (which flushes)."""

    def __init__(self, ledger: Ledger, window_s: float = GROUP_WINDOW_S) -> None:
        self._ledger = ledger
        self._journal: Store = ledger.open_journal()
        self._folder = _Folder(ledger.open_another())
        self._window = window_s
        self._tasks: queue.Queue[tuple[str, Any, Future[Any] | None]] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="syncline-ledger-writer", daemon=True)
        self._error: BaseException | None = None
        self.commits = 0
        self._journaled = 0
        # Journaled claim groups not answered yet (claim id -> seq, in seq order): a fold stops before the
        # oldest, so each claim it folds has its outcomes, and a group delivered whole becomes one row.
        self._open_claims: dict[str, int] = {}
        self._fold_before = 0
        self._outcome_rows: list[tuple[Any, ...]] = []  # this batch's outcome journal rows, appended at its end

    def start(self) -> OutcomeWriter:
        self._thread.start()
        return self

    # -- the callers' side ----------------------------------------------------------------------------
    def _call(self, kind: str, payload: Any) -> Any:
        future: Future[Any] = Future()
        self._tasks.put((kind, payload, future))
        return future.result()

    def claim_journal(self, destination: str, sync: str, endpoint: str, run_id: str, claim_id: str, doc: str, *,
                      items: int, **kwargs: Any) -> Future[None]:
        """Journal a claim group (:meth:`Ledger.journal` kind ``claim``); resolves once committed."""
        future: Future[None] = Future()

        def write() -> None:
            seq = self._journal.journal("claim", destination, sync, endpoint, run_id, claim_id, doc, items, **kwargs)
            if kwargs.get("state", "in_doubt") == "in_doubt":  # (a stopped run's unsent items: no answer comes)
                self._open_claims.setdefault(claim_id, seq)
            self._journaled += items

        self._tasks.put(("call", write, future))
        return future

    def claim(self, *args: Any, **kwargs: Any) -> Future[list[str]]:
        """:meth:`Ledger.claim`; the future resolves once the claim is committed (the caller sends only then,
        and may claim the next group meanwhile)."""
        future: Future[list[str]] = Future()
        self._tasks.put(("call", lambda: self._ledger.claim(*args, **kwargs), future))
        return future

    def call(self, fn: Callable[[Ledger], Any]) -> Any:
        """Run ``fn(ledger)`` on the writer's connection and return its result once committed."""
        return self._call("call", lambda: fn(self._ledger))

    def record(self, outcome: Outcome) -> None:
        """Queue a finished chunk's outcome; it is committed within a few milliseconds."""
        if self._error is not None:
            raise RuntimeError(f"the ledger writer failed: {self._error}") from self._error
        self._tasks.put(("outcome", outcome, None))

    def flush(self) -> None:
        """Wait until everything queued so far is committed; raise what the writer hit, if anything."""
        self._call("call", lambda: None)
        if self._error is not None:
            raise RuntimeError(f"the ledger writer failed: {self._error}") from self._error

    def close(self) -> None:
        """Flush, stop the writer and the folder, then fold what is left (outside the writer's journal
        transaction: a SQLite fold deletes folded rows from the journal file)."""
        try:
            flushed = False
            if self._thread.is_alive():
                self.flush()
                flushed = True
        finally:
            self._tasks.put(("stop", None, None))
            self._thread.join(timeout=60)
            self._folder.close()
            try:
                if flushed:
                    self._ledger.fold()
            finally:
                self._journal.close()
                self._ledger.close()

    # -- the writer thread --------------------------------------------------------------------------------
    def _gather(self) -> list[tuple[str, Any, Future[Any] | None]]:
        batch = [self._tasks.get()]
        deadline = time.monotonic() + self._window
        while True:
            waiting_caller = any(f is not None for _, _, f in batch)
            try:
                if waiting_caller:
                    batch.append(self._tasks.get_nowait())
                else:
                    batch.append(self._tasks.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                return batch
            if len(batch) >= 512:
                return batch

    def _loop(self) -> None:
        while True:
            batch = self._gather()
            stop = any(kind == "stop" for kind, _, _ in batch)
            results: list[tuple[Future[Any], Any]] = []
            try:
                with self._journal.batch():
                    for kind, payload, future in batch:
                        if kind == "outcome":
                            self._write_outcome(payload)
                        elif kind == "call":
                            result = payload()
                            if future is not None:
                                results.append((future, result))
                    # After this batch's claims: no outcome here belongs to a claim of the same batch (a
                    # group's requests leave only once its claim is committed).
                    self._journal.journal_many(self._outcome_rows)
                    self._outcome_rows = []
                self.commits += 1
                if self._journaled >= FOLD_SLICE_ITEMS:
                    # Fold what is before the oldest claim still waiting for answers (committed above), on the
                    # folder's thread; everything when none is.
                    before = next(iter(self._open_claims.values()), FOLD_EVERYTHING)
                    if before > self._fold_before or before == FOLD_EVERYTHING:
                        self._folder.request(before)
                        self._fold_before = before
                        self._journaled = 0
            except BaseException as exc:  # the items stay in_doubt (claimed): safe; the run reports it
                self._outcome_rows = []
                self._error = exc
                for _, _, future in batch:
                    if future is not None and not future.done():
                        future.set_exception(exc)
            else:
                for future, result in results:
                    future.set_result(result)
            for _, _, future in batch:
                if future is not None and not future.done():
                    future.set_result(None)
            if stop:
                return

    def _write_outcome(self, outcome: Outcome) -> None:
        ledger, rows = self._ledger, self._outcome_rows
        where = (outcome.destination, outcome.sync, outcome.endpoint, outcome.run_id, outcome.chunk_id)
        if outcome.delivered_keys_json is not None:
            if outcome.journaled:
                rows.append(journal_values("delivered", *where, outcome.delivered_keys_json, outcome.delivered_count))
            else:
                ledger.mark_delivered(outcome.destination, outcome.run_id, outcome.chunk_id, outcome.delivered_keys_json)
        if outcome.rows and outcome.journaled:
            doc = json.dumps([[r.idem_key, r.source_key, r.payload_hash, r.state, r.reason, r.vendor_id, r.excerpt,
                               r.cursor, r.resent_unknown] for r in outcome.rows])
            rows.append(journal_values("rows", *where, doc, len(outcome.rows)))
        elif outcome.rows:
            delivered = [r for r in outcome.rows if r.state == "delivered"]
            others = [r for r in outcome.rows if r.state != "delivered"]
            ledger.write_items(delivered)
            ledger.write_items(others, keep_delivered=outcome.keep_delivered)
        if outcome.journaled and outcome.attempts:
            rows.append(journal_values("attempts", *where, json.dumps([attempt_values(a) for a in outcome.attempts]),
                                       len(outcome.attempts)))
        else:
            ledger.write_attempts(outcome.attempts)
        if outcome.group_keys_json is not None:
            low, high = outcome.group_cursors
            rows.append(journal_values("group", *where, outcome.group_keys_json, outcome.group_items,
                                       state=low, reason=high))
        if outcome.group_done:
            self._open_claims.pop(outcome.chunk_id, None)


class _Folder:
    """Folds the journal on a thread and a ledger connection of its own, when the writer asks: the newest
    request wins (a fold still running when several arrive catches up in one larger slice, which costs
    less per item). A failed fold loses nothing: the rows stay in the journal for the next fold, and the
    writer's last one, at close, raises the error if it persists (the run then reports the ledger failure)."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._wanted: int | None = None
        self._stopping = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="syncline-ledger-fold", daemon=True)
        self._thread.start()

    def request(self, before: int) -> None:
        with self._cond:
            self._wanted = before
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._wanted is None and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                before, self._wanted = self._wanted, None
            with contextlib.suppress(Exception):  # the rows stay in the journal; the final fold raises
                self._ledger.fold(before=before)

    def close(self) -> None:
        """Stop after the fold in progress (a pending request is left to the writer's final fold)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout=600)
        self._ledger.close()
