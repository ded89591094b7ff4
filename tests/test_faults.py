"""The fault matrix: every vendor endpoint the packaged syncs use x every way a request can go wrong.

Each case builds a small sync to one endpoint, injects one fault at the sandbox on the first request(s),
runs ``syncline run`` (in process, through ``pipelines.cli.main``) and reruns until it exits 0 (at most
:data:`MAX_RUNS` runs). Then, measured at the sandbox (over real HTTP) and in the ledger:

- nothing is lost: every source row is stored at the vendor at least once (or rejected with a reason);
- endpoints that dedup or can be read back (GradeMyPage's idempotency key and its own dedup tuple, Flux's
  batch read-back by tag, StreamBack's user-history lookup) hold no extra copy, and report no resend;
- endpoints that can do neither (Trubrics, Screeb) under ``in_doubt: resend`` report every item send that
  followed an unknown outcome in ``resent_unknown`` (runs table and items table); the extra copies the
  sandbox holds are exactly the reported ones whose first send had landed (``timeout``, ``store_500``,
  ``store_drop``: the request landed and the answer was lost; ``500``/``503``/``drop`` never stored, so the
  reported resends are only possible copies and the sandbox holds none);
- under ``in_doubt: hold`` those endpoints get no extra copy: the items stay ``in_doubt``, the run exits 3,
  and a rerun does not send them either.

Then bounded failure: a vendor that is down (a closed port) and one slower than ``delivery.timeout`` stop
within the run's ``delivery.deadline`` / ``delivery.breaker_failures``, exit non-zero with a one-line cause
on stderr, and never send an item twice to an endpoint that cannot dedup.

Flux allows 10 batch requests a minute (the limiter spaces them 6.3 s apart), so each Flux case costs a
few seconds; CI runs the unknown-outcome modes on Flux, ``SYNCLINE_LONG_TESTS=1`` runs all of them.
"""

from __future__ import annotations

import os
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from connectors.ledger import open_ledger
from connectors.sandbox import Fault, Sandbox
from pipelines.cli import main as cli_main

LONG = bool(os.environ.get("SYNCLINE_LONG_TESTS"))
MAX_RUNS = 4
TIMEOUT_S = 1.0  # delivery.timeout of every case: the `timeout` fault answers after TIMEOUT_S * 2
FAST = "backoff_base: 0.01, backoff_cap: 0.05, max_retry_after: 5"

# modes -> (the outcome is unknown to the client, the faulted request was stored)
MODES: dict[str, tuple[bool, bool]] = {
    "429": (False, False),
    "429_bare": (False, False),
    "429_date": (False, False),
    "500": (True, False),
    "503": (True, False),
    "drop": (True, False),
    "timeout": (True, True),
    "store_500": (True, True),
    "store_drop": (True, True),
}
UNKNOWN_MODES = [m for m, (unknown, _) in MODES.items() if unknown]

SOURCE = """
    CREATE OR REPLACE TABLE analytics.src AS
    SELECT 'k' || lpad(i::VARCHAR, 5, '0') AS id, 'u' || (i % 9) AS user_id,
           TIMESTAMPTZ '2026-06-01 00:00:00+00' + i * INTERVAL 1 MINUTE AS ts,
           'v_' || lpad(i::VARCHAR, 5, '0') AS visitor
    FROM range({n}) t(i)
"""


@dataclass(frozen=True)
class Case:
    """One endpoint: its model, where the sandbox keeps what it stored, and how to find a row's key there."""

    id: str
    vendor: str
    endpoint: str  # destination.endpoint of the sync
    fault_on: str  # the sandbox endpoint name that gets the fault
    model: str
    stored: Callable[[Sandbox], list[str]]  # the source key of every stored copy
    rows: int
    max_items: int | None  # rows is a multiple of it, so every request carries the same number of items
    dedup: bool  # the engine can dedup or read back: no extra copy, nothing counted
    options: str = ""

    @property
    def per_request(self) -> int:
        return self.max_items or 1


def _records(vendor: str, endpoint: str, key: Callable[[dict[str, Any]], str]) -> Callable[[Sandbox], list[str]]:
    return lambda sandbox: [key(r) for r in sandbox.records(vendor, endpoint)]


def _flux_stored(sandbox: Sandbox) -> list[str]:
    return [e["properties"]["k"] for e in sandbox.emulator("flux").control("events", {})]


def _streamback_stored(sandbox: Sandbox) -> list[str]:
    return [f["body"]["message"] for f in sandbox.emulator("streamback").control("feedback", {})]


CASES = [
    Case("trubrics.publish_events", "trubrics", "publish_events", "publish_events",
         "SELECT _key, user_id, 'Signed up' AS event, ts AS timestamp, {'k': _key} AS properties FROM source",
         _records("trubrics", "publish_events", lambda r: r["properties"]["k"]), 120, 40, dedup=False),
    Case("trubrics.publish_llm_events", "trubrics", "publish_llm_events", "publish_llm_events",
         "SELECT _key, user_id, 'q ' || _key AS prompt, 'an answer' AS generation, ts AS timestamp, "
         "0.5 AS latency, {'k': _key} AS properties FROM source",
         _records("trubrics", "publish_llm_events", lambda r: r["properties"]["k"]), 120, 40, dedup=False),
    Case("screeb.event", "screeb", "event", "event",
         "SELECT _key, user_id AS user_alias, 'track' AS type, 'signed_up' AS event_name, {'k': _key} AS properties "
         "FROM source",
         _records("screeb", "event", lambda r: r["properties"]["k"]), 120, 40, dedup=False),
    Case("screeb.release", "screeb", "release", "release",
         "SELECT _key, 'release ' || _key AS name, '1.0' AS version, ts AS released_at FROM source",
         _records("screeb", "release", lambda r: r["name"].removeprefix("release ")), 20, None, dedup=False),
    Case("streamback.feedback", "streamback", "feedback", "feedback",
         # one end user per row, with id and email: the engine can look the user's history up
         "SELECT _key, _key AS message, 'bug' AS type, {'id': 'user_' || _key, 'email': _key || '@example.com'} "
         "AS \"user\" FROM source",
         _streamback_stored, 20, None, dedup=True),
    Case("grademypage.server_events", "grademypage", "server_events", "server_events",
         "SELECT _key, 'conversion' AS eventType, 'signup' AS eventName, ts AS timestamp, {'k': _key} AS properties "
         "FROM source",
         _records("grademypage", "server_events", lambda r: r["properties"]["k"]), 20, None, dedup=True),
    Case("grademypage.track", "grademypage", "track", "track",
         "SELECT _key, 'pageview' AS eventType, '/p/' || _key AS pathname, 'https://example.com/p/' || _key AS fullUrl, "
         "'s_' || user_id AS sessionId, visitor AS visitorId, ts AS timestamp FROM source",
         _records("grademypage", "track", lambda r: r["pathname"].removeprefix("/p/")), 120, 40, dedup=True),
    Case("flux.events_batch", "flux", "events_batch", "events_batch",
         "SELECT _key, _cursor, 'usage.tick' AS name, ts AS timestamp, user_id, 1.5 AS value, {'k': _key} AS properties, "
         "{'plan': 'team'} AS tags FROM source",
         _flux_stored, 40, None, dedup=True, options="single_below: 0"),
]
CASE_BY_ID = {c.id: c for c in CASES}
NO_DEDUP = [c for c in CASES if not c.dedup]
CI_429 = ("trubrics.publish_events", "screeb.event", "streamback.feedback")


def _matrix() -> list[Any]:
    params = []
    for case in CASES:
        for mode in MODES:
            marks = []
            if case.vendor == "flux" and mode not in ("500", "timeout", "store_500", "store_drop"):
                marks = [pytest.mark.slow, pytest.mark.skipif(not LONG, reason="Flux's 10/min limit: SYNCLINE_LONG_TESTS=1")]
            elif mode in ("429", "429_date") and case.id not in CI_429:
                # each waits out a 1 s Retry-After; the 429 path is shared, so CI covers it on two vendors
                marks = [pytest.mark.slow, pytest.mark.skipif(not LONG, reason="SYNCLINE_LONG_TESTS=1")]
            params.append(pytest.param(case.id, mode, id=f"{case.id}-{mode}", marks=marks))
    return params


# --- helpers --------------------------------------------------------------------------------------------------
def make_sync(warehouse: Any, write_sync: Any, monkeypatch: pytest.MonkeyPatch, case: Case, *,
              in_doubt: str = "resend", rows: int | None = None, delivery: str = "", name: str | None = None,
              max_items: int | None = None, timeout: float = TIMEOUT_S) -> str:
    """Write the case's sync (fast backoff, a short timeout) and point ``syncline run`` at its folder."""
    warehouse(SOURCE.format(n=rows or case.rows))
    name = name or "f_" + case.id.replace(".", "_")
    options = f", options: {{{case.options}}}" if case.options else ""
    knobs = [FAST, f"timeout: {timeout}", f"in_doubt: {in_doubt}"]
    if max_items or case.max_items:
        knobs.append(f"max_items: {max_items or case.max_items}")
    if delivery:
        knobs.append(delivery)
    write_sync(
        name,
        f"""
        source: {{table: analytics.src, key: id, cursor: ts}}
        destination: {{vendor: {case.vendor}, endpoint: {case.endpoint}{options}}}
        delivery: {{{', '.join(knobs)}}}
        """,
        case.model,
    )
    monkeypatch.setenv("SYNCLINE_SYNCS_DIR", str(write_sync.folder))
    return name


def fault_for(mode: str, count: int = 1) -> Fault:
    if mode == "timeout":
        return Fault("timeout", count=count, delay=TIMEOUT_S * 2)
    return Fault(mode, count=count, retry_after=1.0)


def run(name: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli_main(["run", name])
    out = capsys.readouterr()
    return code, out.out, out.err


@dataclass
class LedgerView:
    runs: list[dict[str, Any]]
    counts: dict[str, int]
    items: list[dict[str, Any]]

    @property
    def resent_runs(self) -> int:
        return sum(int(r["resent_unknown"] or 0) for r in self.runs)

    @property
    def resent_items(self) -> int:
        return sum(int(i["resent_unknown"] or 0) for i in self.items)

    def keys(self, state: str) -> set[str]:
        return {i["source_key"] for i in self.items if i["state"] == state}


def ledger_view(name: str) -> LedgerView:
    ledger = open_ledger()
    try:
        return LedgerView(ledger.runs(name, limit=100), ledger.counts(name), ledger.items(name, limit=100_000))
    finally:
        ledger.close()


def source_keys(n: int) -> set[str]:
    return {f"k{i:05d}" for i in range(n)}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the matrix -----------------------------------------------------------------------------------------------
@pytest.mark.timeout(120)
@pytest.mark.parametrize(("case_id", "mode"), _matrix())
def test_fault_then_reruns_lose_nothing_and_count_every_possible_copy(
    sandbox, warehouse, write_sync, monkeypatch, capsys, case_id, mode
):
    case = CASE_BY_ID[case_id]
    unknown, stores = MODES[mode]
    name = make_sync(warehouse, write_sync, monkeypatch, case)
    sandbox.set_fault(case.vendor, case.fault_on, fault_for(mode))

    codes = []
    for _ in range(MAX_RUNS):
        code, _out, err = run(name, capsys)
        codes.append(code)
        sandbox.clear_faults()
        if code == 0:
            break
        assert code == 3, f"run {len(codes)} exited {code}: {err[-2000:]}"
    assert sandbox.wait_idle(30)
    assert codes[-1] == 0, f"never exited 0 in {MAX_RUNS} runs: {codes}"

    view = ledger_view(name)
    stored = case.stored(sandbox)
    copies = Counter(stored)
    lost = source_keys(case.rows) - set(copies) - view.keys("rejected")
    assert not lost, f"lost {len(lost)} rows, e.g. {sorted(lost)[:5]}"
    assert not view.keys("rejected"), "valid rows were rejected"
    assert view.counts["delivered"] == case.rows and view.counts["in_doubt"] == view.counts["failed"] == 0
    extra = len(stored) - len(copies)
    if case.dedup:
        assert extra == 0, f"{extra} extra copies at {case.id} after {mode}: {copies.most_common(3)}"
        assert view.resent_runs == 0 and view.resent_items == 0
    else:
        # One request of `per_request` items met the fault: its items were sent again exactly once.
        expected_resent = case.per_request if unknown else 0
        assert view.resent_runs == expected_resent, f"runs report {view.resent_runs} resends, expected {expected_resent}"
        assert view.resent_items == expected_resent
        assert extra == (expected_resent if stores else 0), (
            f"{extra} extra copies at {case.id} after {mode}, {view.resent_runs} reported"
        )
        assert extra <= view.resent_runs


def _hold_params() -> list[Any]:
    params = []
    for case in NO_DEDUP:
        for mode in UNKNOWN_MODES:
            # the hold path is the planner's, shared by every endpoint: CI runs it on two of them
            marks = [] if case.id in ("trubrics.publish_events", "screeb.event") else [
                pytest.mark.slow, pytest.mark.skipif(not LONG, reason="SYNCLINE_LONG_TESTS=1")]
            params.append(pytest.param(case.id, mode, id=f"{case.id}-{mode}", marks=marks))
    return params


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("case_id", "mode"), _hold_params())
def test_hold_sends_no_extra_copy_and_leaves_the_items_in_doubt(
    sandbox, warehouse, write_sync, monkeypatch, capsys, case_id, mode
):
    case = CASE_BY_ID[case_id]
    _, stores = MODES[mode]
    name = make_sync(warehouse, write_sync, monkeypatch, case, in_doubt="hold")
    sandbox.set_fault(case.vendor, case.fault_on, fault_for(mode))

    first, _, err = run(name, capsys)
    sandbox.clear_faults()
    assert sandbox.wait_idle(30)
    assert first == 3, err[-2000:]
    assert "rerun" in err or "pending" in err or "in doubt" in err
    requests_after_first = sandbox.stats()[case.vendor][case.fault_on]["requests"]

    second, _, err = run(name, capsys)
    assert sandbox.wait_idle(30)
    assert second == 3, err[-2000:]
    # held items are not resent, in the run or later
    assert sandbox.stats()[case.vendor][case.fault_on]["requests"] == requests_after_first

    view = ledger_view(name)
    stored = case.stored(sandbox)
    copies = Counter(stored)
    assert len(stored) == len(copies), f"extra copies under hold: {copies.most_common(3)}"
    held = view.keys("in_doubt")
    assert len(held) == case.per_request and view.counts["in_doubt"] == case.per_request
    assert view.resent_runs == 0 and view.resent_items == 0
    assert view.counts["delivered"] == case.rows - case.per_request
    lost = source_keys(case.rows) - set(copies) - held
    assert not lost
    if stores:
        assert held <= set(copies)  # they did land: a person resolves them; the engine never guesses
    else:
        assert not held & set(copies)


# --- bounded failure --------------------------------------------------------------------------------------------
def _cause_line(err: str, name: str) -> list[str]:
    words = ("breaker", "deadline", "no answer", "refused", "unreachable", "timed out", "timeout", "down")
    return [line for line in err.splitlines() if name in line and any(w in line.lower() for w in words)]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("case_id", ["trubrics.publish_events", "screeb.event"])
def test_a_vendor_that_is_down_stops_the_sync_with_the_cause_on_one_line(
    sandbox, warehouse, write_sync, monkeypatch, capsys, case_id
):
    case = CASE_BY_ID[case_id]
    name = make_sync(warehouse, write_sync, monkeypatch, case, rows=400,
                     delivery="breaker_failures: 3, deadline: 20, max_attempts: 3")
    env = {"trubrics": "TRUBRICS_BASE_URL", "screeb": "SCREEB_BASE_URL"}[case.vendor]
    monkeypatch.setenv(env, f"http://127.0.0.1:{closed_port()}/{case.vendor}")

    code, _, err = run(name, capsys)

    assert code in (1, 3), err[-2000:]
    assert _cause_line(err, name), f"no one-line cause naming {name} on stderr:\n{err[-2000:]}"
    view = ledger_view(name)
    # nothing reached a vendor, so nothing may be in doubt or counted as a possible copy
    assert view.counts["delivered"] == 0 and view.counts["in_doubt"] == 0 and view.resent_runs == 0
    assert view.runs[0]["status"] in ("stopped", "error", "partial")
    assert sandbox.stats()[case.vendor].get(case.fault_on, {"requests": 0})["requests"] == 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case_id", ["trubrics.publish_events", "screeb.event"])
@pytest.mark.parametrize("bound", ["breaker", "deadline"])
def test_a_vendor_slower_than_the_timeout_stops_the_run_and_sends_each_item_at_most_once(
    sandbox, warehouse, write_sync, monkeypatch, capsys, case_id, bound
):
    case = CASE_BY_ID[case_id]
    knobs = ("breaker_failures: 3, deadline: 60" if bound == "breaker"
             else "breaker_failures: 1000, deadline: 3, concurrency: 1")
    name = make_sync(warehouse, write_sync, monkeypatch, case, rows=400, delivery=knobs)
    # every request is handled after 2.5 s (stored then), by when the client (timeout 1 s) has given up
    sandbox.set_fault(case.vendor, case.fault_on, Fault("slow", count=-1, delay=TIMEOUT_S * 2.5))

    code, _, err = run(name, capsys)
    sandbox.clear_faults()
    assert sandbox.wait_idle(30)

    assert code in (1, 3), err[-2000:]
    assert _cause_line(err, name), f"no one-line cause naming {name} on stderr:\n{err[-2000:]}"
    stored = case.stored(sandbox)
    copies = Counter(stored)
    assert copies and copies.most_common(1)[0][1] == 1, f"an item was sent twice: {copies.most_common(3)}"
    requests = sandbox.stats()[case.vendor][case.fault_on]["requests"]
    assert requests < 400 // case.per_request  # stopped before sending everything
    view = ledger_view(name)
    assert view.counts["delivered"] == 0
    assert view.counts["in_doubt"] == len(copies)  # every item that may have landed is in doubt, none resent
    assert view.resent_runs == 0


# --- the strict parser sees every JSON body -----------------------------------------------------------------
NAN_BODY = b'{"events": [{"value": NaN}], "n": Infinity}'


def _send(sandbox: Sandbox, method: str, path: str, body: bytes, headers: dict[str, str] | None = None) -> int | None:
    """One raw request to the sandbox: the status, or None when the connection closed without an answer."""
    import http.client

    conn = http.client.HTTPConnection(sandbox.host, sandbox.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        return conn.getresponse().status
    except (ConnectionError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def _json_routes(sandbox: Sandbox) -> list[tuple[str, str, str, str]]:
    """(vendor, endpoint, method, a concrete path) of every JSON route that takes a body."""
    out = []
    for vendor, emulator in sandbox.emulators.items():
        for route in emulator._routes:
            if route.json_body and route.method in ("POST", "PUT", "PATCH"):
                path = route.pattern.replace("(?P<id>[^/]+)", "fb_missing")
                out.append((vendor, route.endpoint, route.method, f"/{vendor}{path}"))
    return out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["503", "500", "429", "429_bare", "drop", "hang", "echo_400", "reject_matching", None])
def test_a_body_that_is_not_strict_json_is_counted_whatever_answers_it(sandbox: Sandbox, mode: str | None) -> None:
    """Issue 10 ("checked by a strict parser at every emulator"): a NaN body is counted in ``invalid_json``
    (and kept in ``invalid_bodies``) at every JSON route of every emulator, whether a fault answers it
    (nothing else runs), or, with no fault (``None``), the auth check refuses it (no credentials are sent),
    and the answer is the fault's own."""
    routes = _json_routes(sandbox)
    assert {v for v, *_ in routes} == set(sandbox.emulators)
    expected = {"503": 503, "500": 500, "429": 429, "429_bare": 429, "drop": None, "hang": None, "echo_400": 400}
    for vendor, endpoint, method, path in routes:
        if mode is not None:
            sandbox.set_fault(vendor, endpoint, Fault(mode, count=1, match="NaN", delay=0.05 if mode == "hang" else 0))
        status = _send(sandbox, method, path, NAN_BODY)
        if mode == "reject_matching":  # the vendor's own validation error
            assert status == sandbox.emulator(vendor).validation_error(endpoint, "").status, (vendor, endpoint)
        elif mode is not None:
            assert status == expected[mode], (vendor, endpoint, mode)
        else:
            assert status in (400, 401, 403), (vendor, endpoint, status)
        stats = sandbox.stats()[vendor][endpoint]
        assert stats["invalid_json"] == 1, (vendor, endpoint, mode, stats)
        emulator = sandbox.emulator(vendor)
        assert any(b["endpoint"] == endpoint and b["body"] == NAN_BODY for b in emulator.invalid_bodies)
        assert stats["dropped"] == (1 if mode in ("drop", "hang") else 0)


def test_a_body_refused_by_the_documented_rate_limit_is_still_parsed(sandbox: Sandbox) -> None:
    """Screeb's 50 requests a second per token: a NaN body answered 429 by the limiter is counted."""
    import time

    token = "any-token"
    emulator = sandbox.emulator("screeb")
    with emulator.lock:
        emulator._windows[("event", token)].extend([time.time()] * 50)  # the window is full
    status = _send(sandbox, "POST", "/screeb/1.0/event", NAN_BODY, {"Authorization": f"Bearer {token}"})
    stats = sandbox.stats()["screeb"]["event"]
    assert (status, stats["rate_limited"], stats["invalid_json"]) == (429, 1, 1)


def test_presigned_uploads_are_not_json_and_a_json_claim_on_a_get_is(sandbox: Sandbox) -> None:
    """Presigned storage takes a file's bytes: ``NaN`` there is data, not a client bug (never counted).
    A GET whose Content-Type claims a JSON body is parsed like any other JSON body."""
    assert _send(sandbox, "PUT", "/streamback/_storage/screenshots/x.png?token=t", b"NaN") == 403
    assert sandbox.stats()["streamback"]["storage"]["invalid_json"] == 0
    _send(sandbox, "GET", "/flux/api/v1/events", NAN_BODY)
    assert sandbox.stats()["flux"]["query"]["invalid_json"] == 1
