"""The ledger's rows: items (their fate at one destination), HTTP attempts, and run summaries."""

from __future__ import annotations

import datetime as dt
import operator
from dataclasses import dataclass, field, fields

ITEM_STATES = ("delivered", "rejected", "in_doubt", "failed")
# The reason of items a stopped sync recorded failed before their request was ever tried (the rest of a
# claim group whose first requests were): ``syncline items`` shows them with 0 attempts, not the group's.
NEVER_SENT = "not sent, the sync stopped before its request"


def now_text() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


@dataclass
class ItemRow:
    destination: str
    idem_key: str
    sync: str
    endpoint: str
    source_key: str | None
    payload_hash: str | None
    state: str
    reason: str | None = None
    vendor_id: str | None = None
    run_id: str | None = None
    chunk_id: str | None = None
    excerpt: str | None = None
    cursor: str | None = None  # the source cursor value, for read-back reconciliation by window
    # Sends of this item after an earlier send's outcome was unknown (added to the stored count on upsert):
    # the vendor may hold up to this many extra copies of it (endpoints that can neither dedup nor read back).
    resent_unknown: int = 0


@dataclass
class AttemptRow:
    run_id: str
    sync: str
    endpoint: str
    chunk_id: str
    attempt: int
    items: int
    bytes: int
    status: int | None  # None: no HTTP status (timeout, connection error)
    latency_ms: float
    error: str | None = None
    at: str = field(default_factory=now_text)  # when the request was sent, not when it was recorded
    destination: str = ""


@dataclass
class RunRow:
    run_id: str
    sync: str
    endpoint: str
    span: str  # the cursor window, e.g. "2026-01-03" or "all"
    dry_run: bool = False
    status: str = "running"
    error: str | None = None
    source_rows: int = 0
    delivered: int = 0
    rejected: int = 0
    skipped: int = 0
    in_doubt: int = 0
    failed: int = 0
    requests: int = 0
    retries: int = 0
    http_429: int = 0
    bytes_sent: int = 0
    seconds: float = 0.0
    p95_latency_ms: float = 0.0
    notes: str | None = None  # vendor warnings, e.g. "Screeb counted 99 of 100 events"
    destination: str = ""
    # Items sent again after an unknown outcome (timeout, drop, 5xx after sending) on an endpoint that can
    # neither dedup nor be read back: the vendor may hold up to this many duplicates.
    resent_unknown: int = 0
    removed: int = 0  # mirror mode: items gone from the source whose removal (e.g. group.unassign) was delivered
    host: str = ""  # where the run's process runs, with ``pid``: a dead process shows the run as crashed
    pid: int = 0
    staging: str = ""  # the run's staging folder (raw source rows), removed by the next run if this one died
    ledger: str = ""  # where the ledger is (a path or a redacted URL), for summaries
    stop_signal: int = 0  # SIGINT/SIGTERM that stopped the run (exit code 128 + signal); not stored


ITEM_COLUMNS = [f.name for f in fields(ItemRow)]
ATTEMPT_COLUMNS = [f.name for f in fields(AttemptRow)]
RUN_STATES = ("running", "success", "partial", "stopped", "error", "interrupted", "crashed", "dry_run")
RUN_COLUMNS = [f.name for f in fields(RunRow) if f.name not in ("ledger", "stop_signal")]
# attrgetter, not dataclasses.astuple: astuple deep-copies every field and dominated delivery's CPU.
item_values = operator.attrgetter(*ITEM_COLUMNS)
attempt_values = operator.attrgetter(*ATTEMPT_COLUMNS)
run_values = operator.attrgetter(*RUN_COLUMNS)
