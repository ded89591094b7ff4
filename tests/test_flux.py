"""Brainzlab Flux over real HTTP against the sandbox: batches of 500 under 10 requests/minute, the single
endpoint for small tails, validation, both answer shapes, partial answers, auth, read API and reconcile.

Every batch request after the first waits ~6.3 s for the rate limiter, so each test sends at most three.
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from connectors.engine.endpoint import HttpResponse
from connectors.errors import ConfigError
from connectors.ledger import open_ledger
from connectors.runner import make_sender, resolve_base_url, resolve_credentials, run_sync
from connectors.sandbox import Fault, Sandbox
from connectors.vendors.flux import (
    BATCH_TAG,
    EVENTS_BATCH,
    KEY_FIELD,
    SYNC_TAG,
    count_events,
    event_stats,
    flux_error_reason,
    list_events,
)

USAGE = """
    CREATE TABLE analytics.usage AS
    SELECT 'u' || lpad(i::VARCHAR, 5, '0') AS id,
           (['api.requests', 'storage.gb_hours'])[1 + i % 2] AS name,
           TIMESTAMPTZ '2026-06-01 00:00:00+00' + i * INTERVAL {step} AS occurred_at,
           'acct_' || (i % 7) AS account,
           (i % 13) * 1.5 AS qty,
           (['free', 'team'])[1 + i % 2] AS plan
    FROM range({n}) t(i)
"""
SYNC = """
    source: {{table: analytics.{table}, key: id, cursor: occurred_at}}
    destination: {{vendor: flux, endpoint: events_batch{options}}}
"""
SQL = """
    SELECT _key, _cursor, name, occurred_at AS timestamp, account AS user_id, qty AS value,
           {'account': account} AS properties, {'plan': plan} AS tags
    FROM source
"""


def usage_sync(warehouse, write_sync, n: int, *, name: str = "usage", table: str = "usage",
               step: str = "1 MINUTE", options: str = "") -> Any:
    warehouse(USAGE.replace("analytics.usage", f"analytics.{table}").format(n=n, step=step))
    opts = f", options: {{{options}}}" if options else ""
    return write_sync(name, SYNC.format(table=table, options=opts), SQL)


def flux(sandbox: Sandbox) -> Any:
    return sandbox.emulator("flux")


def stats(sandbox: Sandbox, endpoint: str) -> dict[str, Any]:
    return sandbox.stats()["flux"].get(endpoint, {"requests": 0, "rate_limited": 0})


def stored(sandbox: Sandbox) -> list[dict[str, Any]]:
    return flux(sandbox).control("events", {})


def raw_post(sandbox: Sandbox, path: str, body: Any, key: str | None = "sk_sandbox_flux") -> tuple[int, Any]:
    """A hand-made request, to check the emulator itself (no syncline code in between)."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(sandbox.base_url("flux") + path, json.dumps(body).encode(), headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def reader(spec: Any) -> Any:
    return make_sender(spec, resolve_credentials(spec.vendor), resolve_base_url(spec.vendor), "test", open_ledger())


# --- delivery -------------------------------------------------------------------------------------------------
def test_batches_of_500_under_the_rate_limit_with_the_tail_through_the_single_endpoint(sandbox, warehouse, write_sync):
    """Documented: at most 500 events a batch, 10 batch requests a minute. Choice: the tail of fewer
    than 6 events goes one by one through the single endpoint instead of waiting for a batch slot, paced
    at the assumed 60/min, which the sandbox is told to enforce here (the document gives no figure)."""
    flux(sandbox).control("single_rate", {"per_minute": 60})  # assumption: syncline's own guess
    spec = usage_sync(warehouse, write_sync, 1503)

    run = run_sync(spec)

    assert (run.status, run.delivered, run.rejected, run.in_doubt) == ("success", 1503, 0, 0)
    batch, single = stats(sandbox, "events_batch"), stats(sandbox, "events")
    # 500 + 500 + 500 as batches; the 3-event tail goes one by one instead of waiting ~6.3 s for a slot.
    assert batch["requests"] == 3 and batch["max_items_per_request"] == 500
    assert single["requests"] == 3 and single["max_items_per_request"] == 1
    assert batch["rate_limited"] == 0 and single["rate_limited"] == 0 and batch["max_in_window"] <= 10
    # Measured at the sandbox: consecutive batch requests are at least 60/10 s apart, so no 60 s window
    # can ever hold more than 10 of them (a lower bound the limiter guarantees, not a speed assertion).
    arrivals = [r["at"] for r in flux(sandbox).request_log["events_batch"]]
    assert min(b - a for a, b in zip(arrivals, arrivals[1:], strict=False)) >= 6.0

    events = stored(sandbox)
    keys = [e["properties"][KEY_FIELD] for e in events]
    assert len(events) == 1503 and len(set(keys)) == 1503  # every event exactly once
    assert all(e["tags"][SYNC_TAG] == "usage" and e["tags"]["plan"] in ("free", "team") for e in events)
    assert {e["timestamp"][-6:] for e in events} == {"+00:00"}
    tail_ids = {i["vendor_id"] for i in open_ledger().items("usage", "delivered", limit=5000) if i["vendor_id"]}
    assert len(tail_ids) == 3 and all(i.startswith("evt_") for i in tail_ids)  # the single answers carry ids

    again = run_sync(spec)
    assert again.delivered == 0 and again.skipped == 1503
    assert stats(sandbox, "events_batch")["requests"] == 3 and len(stored(sandbox)) == 1503


def test_rows_breaking_flux_rules_are_rejected_with_reasons_and_the_rest_delivered(sandbox, warehouse, write_sync):
    """Only the document's rules reject by default: a blank name and a timestamp without an offset are
    not forbidden by it, so they go out as written (tests/test_fidelity_flux.py covers every rule)."""
    warehouse(
        """CREATE TABLE analytics.raw AS SELECT * FROM (VALUES
            ('ok1', 'api.requests', '2026-06-01T10:00:00Z', '1.5', '{"plan": "team"}'),
            ('ok2', 'api.requests', '2026-06-01T10:01:00+02:00', '2', NULL),
            ('ok3', 'api.requests', '2026-06-01T10:02:00Z', NULL, '{}'),
            ('ok4', 'seats.active', '2026-06-01T10:03:00Z', '-4', '{"plan": "free"}'),
            ('ok5', 'seats.active', NULL, '0', NULL),
            ('ok6', 'seats.active', '2026-06-01T10:05:00Z', '1e3', NULL),
            ('blank_name', '   ', '2026-06-01T10:07:00Z', '1', NULL),
            ('no_offset', 'api.requests', '2026-06-01T10:08:00', '1', NULL),
            ('no_name', NULL, '2026-06-01T10:06:00Z', '1', NULL),
            ('bad_time', 'api.requests', 'yesterday', '1', NULL),
            ('bad_value', 'api.requests', '2026-06-01T10:09:00Z', 'lots', NULL),
            ('inf_value', 'api.requests', '2026-06-01T10:10:00Z', 'inf', NULL),
            ('int_tag', 'api.requests', '2026-06-01T10:11:00Z', '1', '{"plan": 3}')
        ) t(id, name, ts, value, tags)"""
    )
    spec = write_sync(
        "raw",
        """
        source: {table: analytics.raw, key: id}
        destination: {vendor: flux, endpoint: events_batch}
        """,
        "SELECT _key, name, ts AS timestamp, value, tags FROM source",
    )

    run = run_sync(spec)

    assert (run.delivered, run.rejected) == (8, 5)
    reasons = {r["source_key"]: r["reason"] for r in open_ledger().items("raw", state="rejected")}
    assert reasons == {
        "no_name": "name is required",
        "bad_time": "timestamp must be an ISO 8601 date or date-time (e.g. 2026-06-20, 2026-06-20T12:00:00 or "
                    "2026-06-20T12:00:00+02:00), got yesterday",
        "bad_value": "value must be a number, got lots",
        "inf_value": "value must be a number, got inf",
        "int_tag": 'tags must be an object of string values, got {"plan": 3}',  # doc: invalid_tags
    }
    assert stats(sandbox, "events_batch")["requests"] == 1  # the 8 good rows: one batch, nothing refused
    by_key = {e["properties"][KEY_FIELD]: e for e in stored(sandbox)}
    assert len(by_key) == 8
    values = sorted(float(e["value"]) for e in by_key.values() if e.get("value") is not None)
    assert values == [-4.0, 0.0, 1.0, 1.0, 1.5, 2.0, 1000.0]
    assert all(isinstance(v, str) for e in by_key.values() for v in e["tags"].values())
    assert {e["name"] for e in by_key.values()} >= {"   "}  # as written, not trimmed
    assert "2026-06-01T10:08:00" in {e.get("timestamp") for e in by_key.values()}


def test_choice_opt_in_rules_reject_blank_text_and_offsetless_times_only_with_strict(sandbox, warehouse, write_sync):
    """Choice: ``strict: true`` turns on the checks the document does not make (name_not_blank,
    user_id_not_blank, timestamp_has_offset); each reason names its rule."""
    warehouse(
        """CREATE TABLE analytics.loose AS SELECT * FROM (VALUES
            ('ok', 'api.requests', 'acct_1', '2026-06-01T10:00:00Z'),
            ('blank_name', '  ', 'acct_1', '2026-06-01T10:00:00Z'),
            ('blank_user', 'api.requests', '', '2026-06-01T10:00:00Z'),
            ('no_offset', 'api.requests', 'acct_1', '2026-06-01T10:08:00'),
            ('date_only', 'api.requests', 'acct_1', '2026-06-01')
        ) t(id, name, account, ts)"""
    )
    sql = "SELECT _key, name, account AS user_id, ts AS timestamp FROM source"
    strict = write_sync("loose", """
        source: {table: analytics.loose, key: id}
        destination: {vendor: flux, endpoint: events_batch}
        strict: true
    """, sql)
    assert {r.name for r in strict.endpoint.opt_in_rules()} == {"name_not_blank", "user_id_not_blank",
                                                                "timestamp_has_offset"}

    run = run_sync(strict)

    assert (run.delivered, run.rejected) == (1, 4)
    reasons = {r["source_key"]: r["reason"] for r in open_ledger().items("loose", state="rejected")}
    assert reasons["blank_name"] == "name is blank (rule name_not_blank)"
    assert reasons["blank_user"] == "user_id is blank (rule user_id_not_blank)"
    assert reasons["no_offset"].endswith("got 2026-06-01T10:08:00 (rule timestamp_has_offset)")
    assert reasons["date_only"].endswith("got 2026-06-01 (rule timestamp_has_offset)")

    only = write_sync("loose_one", """
        source: {table: analytics.loose, key: id}
        destination: {vendor: flux, endpoint: events_batch}
        strict: [timestamp_has_offset]
    """, sql)
    run = run_sync(only)
    assert (run.delivered, run.rejected) == (3, 2)  # the blank texts go out: only the named rule is checked
    assert {e["name"] for e in stored(sandbox) if e["tags"][SYNC_TAG] == "loose_one"} == {"api.requests", "  "}


def test_options_are_checked_when_the_sync_loads_and_the_tail_threshold_follows_the_rates(warehouse, write_sync):
    """Choice: the options and the tail threshold derived from both rates (the single rate is a guess)."""
    usage_sync(warehouse, write_sync, 3)

    def endpoint(options: str) -> Any:
        return write_sync("opts", SYNC.format(table="usage", options=f", options: {{{options}}}"), SQL).endpoint

    assert EVENTS_BATCH.single_below == 6  # 5 events one by one (5 x 1.05 s) beat one 6.32 s batch slot
    faster = endpoint("single_rate_per_minute: 120")
    assert faster.single.rate.requests == 120 and faster.single_below == 12
    off = endpoint("single_below: 0, read_back: false")
    assert (off.single_below, off.read_back) == (0, False)
    for bad in ("single_below: 501", "single_rate_per_minute: fast", "read_back: maybe", "dedup: true"):
        with pytest.raises(ConfigError) as error:
            endpoint(bad)
        assert f"destination.options.{bad.split(':')[0]}" in str(error.value)


def test_typed_tags_that_are_not_strings_are_a_config_error_naming_the_field(sandbox, warehouse, write_sync):
    """Documented: tags are string values. Choice: a column type that can never be a string is a config
    error before anything is sent, not a rejection of every row."""
    usage_sync(warehouse, write_sync, 3)
    bad = write_sync("bad_tags", SYNC.format(table="usage", options=""),
                     "SELECT _key, name, {'plan': plan, 'tier': 3} AS tags FROM source")
    with pytest.raises(ConfigError) as error:
        run_sync(bad)
    assert str(bad.model_file) in str(error.value) and "tags.tier" in str(error.value)
    assert stats(sandbox, "events_batch")["requests"] == 0


@pytest.mark.parametrize("shape", ["data", "ingested"])
def test_both_success_answer_shapes_are_understood(sandbox, warehouse, write_sync, shape):
    """Documented: ``{"data": {"accepted", "rejected"}}``. Choice: the open-source server's ``201
    {"ingested": N}`` is read too."""
    flux(sandbox).control("answer_shape", {"shape": shape})
    spec = usage_sync(warehouse, write_sync, 10)

    run = run_sync(spec)

    assert (run.status, run.delivered, run.in_doubt, run.notes) == ("success", 10, 0, None)
    assert stats(sandbox, "events_batch")["by_status"] == {200 if shape == "data" else 201: 1}


def test_partial_answer_with_per_event_detail_rejects_exactly_those_events(sandbox, warehouse, write_sync):
    """Choice: per-event detail (``data.errors``, not in the document) is used when it accounts for every
    rejected event."""
    flux(sandbox).control("silently_reject", {"match": '"acct_3"', "detail": True})
    spec = usage_sync(warehouse, write_sync, 20)  # acct_3: rows 3, 10, 17

    run = run_sync(spec)

    assert (run.delivered, run.rejected, run.in_doubt) == (17, 3, 0)
    rejected = open_ledger().items("usage", state="rejected")
    assert sorted(r["source_key"] for r in rejected) == ["u00003", "u00010", "u00017"]
    assert all(r["reason"] == "Flux rejected the event: Event refused by a server rule (rejected)" for r in rejected)
    assert stats(sandbox, "query")["requests"] == 0  # the answer said which: no read-back needed


@pytest.mark.parametrize("shape", ["data", "ingested"])
def test_partial_answer_without_detail_is_resolved_by_reading_the_batch_back(sandbox, warehouse, write_sync, shape):
    """Choice: a partly rejected batch without detail is read back by its ``syncline_batch`` tag."""
    flux(sandbox).control("answer_shape", {"shape": shape})
    flux(sandbox).control("silently_reject", {"match": '"acct_3"'})
    spec = usage_sync(warehouse, write_sync, 20)

    run = run_sync(spec)

    assert (run.delivered, run.rejected, run.in_doubt) == (17, 3, 0)
    rejected = open_ledger().items("usage", state="rejected")
    assert sorted(r["source_key"] for r in rejected) == ["u00003", "u00010", "u00017"]
    assert all("gave no reason; a read-back of the batch" in r["reason"] for r in rejected)
    delivered = open_ledger().items("usage", state="delivered")
    assert {d["vendor_id"] for d in delivered} == {e["id"] for e in stored(sandbox)}  # ids from the read-back
    (lookup,) = flux(sandbox).request_log["query"]
    assert lookup["path"] == "/api/v1/events" and f"tags[{BATCH_TAG}]" in lookup["query"]
    assert lookup["headers"]["authorization"] == "Bearer sk_sandbox_flux"


def test_partial_answer_is_never_guessed_without_a_read_back(sandbox, warehouse, write_sync):
    """Choice: without a read-back, the events of a partial answer stay in_doubt (never guessed)."""
    flux(sandbox).control("silently_reject", {"match": '"acct_3"'})
    spec = usage_sync(warehouse, write_sync, 20, options="read_back: false")

    run = run_sync(spec)

    assert (run.delivered, run.rejected, run.in_doubt, run.status) == (0, 0, 20, "partial")
    assert "Flux accepted 17 and rejected 3 of a batch of 20 without naming them" in (run.notes or "")
    assert f"tags[{BATCH_TAG}]=" in (run.notes or "")
    assert stats(sandbox, "query")["requests"] == 0


def test_the_single_endpoint_as_a_destination_and_its_refusals_become_reasons(sandbox, warehouse, write_sync):
    """Choice: a refusal's code and message become the rejected item's reason."""
    flux(sandbox).control("silently_reject", {"match": '"acct_1"'})  # a server-side rule syncline cannot know
    warehouse(USAGE.format(n=4, step="1 MINUTE"))
    spec = write_sync("one", SYNC.format(table="usage", options="").replace("events_batch", "events"), SQL)

    run = run_sync(spec)

    assert (run.delivered, run.rejected) == (3, 1)
    assert stats(sandbox, "events")["requests"] == 4 and stats(sandbox, "events_batch")["requests"] == 0
    (refused,) = open_ledger().items("one", state="rejected")
    assert refused["source_key"] == "u00001"
    assert refused["reason"] == "Flux refused the event: Event refused by a server rule (HTTP 422, rejected)"
    assert all(e["tags"][SYNC_TAG] == "one" and KEY_FIELD in e["properties"] for e in stored(sandbox))
    assert all(i["vendor_id"].startswith("evt_") for i in open_ledger().items("one", state="delivered"))


@pytest.mark.parametrize("n, endpoint", [(40, "events_batch"), (3, "events")])
def test_auth_failure_stops_the_sync_with_nothing_delivered(sandbox, warehouse, write_sync, monkeypatch, n, endpoint):
    """Choice: a 401 stops the sync at once and is never retried."""
    spec = usage_sync(warehouse, write_sync, n)
    monkeypatch.setenv("FLUX_API_KEY", "sk_live_wrong_key")

    run = run_sync(spec)

    assert run.status == "stopped" and "HTTP 401" in (run.error or "")
    assert "sk_live_wrong_key" not in (run.error or "")
    assert run.delivered == 0 and stored(sandbox) == []
    assert stats(sandbox, endpoint)["requests"] == 1  # never retried
    counts = open_ledger().counts("usage")
    assert counts["delivered"] == 0 and counts["failed"] == n


# --- reads and reconciliation -----------------------------------------------------------------------------------
def test_reconcile_counts_each_sync_apart_and_reports_dropped_events(sandbox, warehouse, write_sync):
    """Choice: reconcile counts this sync's events by its ``tags.syncline_sync`` marker per window."""
    # 9 events 3 hours apart from 2026-06-01 00:00: eight on June 1, the ninth exactly at June 2 00:00.
    a = usage_sync(warehouse, write_sync, 9, name="usage_a", table="usage_a", step="3 HOUR")
    b = usage_sync(warehouse, write_sync, 3, name="usage_b", table="usage_b")  # 3 events: single endpoint
    assert run_sync(a).delivered == 9 and run_sync(b).delivered == 3
    assert stats(sandbox, "events_batch")["requests"] == 1 and stats(sandbox, "events")["requests"] == 3
    ledger = open_ledger()
    day = dt.datetime(2026, 6, 1, tzinfo=dt.UTC), dt.datetime(2026, 6, 2, tzinfo=dt.UTC)

    def reconcile(spec: Any, window: tuple[dt.datetime, dt.datetime] | None = None) -> dict[str, Any]:
        start, end = window or (None, None)
        return spec.endpoint.reconcile(
            reader(spec), sync=spec.name, window_start=start.isoformat() if start else None,
            window_end=end.isoformat() if end else None, delivered=ledger.delivered_in_window(spec.name, start, end),
        )

    report = reconcile(a, day)
    assert (report["vendor_count"], report["ledger_count"], report["difference"], report["matches"]) == (8, 8, 0, True)
    whole = reconcile(a)
    assert whole["matches"] is True and whole["vendor_count"] == 9
    assert reconcile(b, day)["vendor_count"] == 3  # the other sync's 3 events are counted apart

    flux(sandbox).control("drop_events", {"count": 2, "tags": {SYNC_TAG: "usage_a"}})
    report = reconcile(a)
    assert (report["vendor_count"], report["ledger_count"], report["difference"], report["matches"]) == (7, 9, 2, False)
    assert report["missing_at_vendor"] == 2 and "fewer events" in report["explanation"]
    assert reconcile(b)["matches"] is True


@pytest.mark.parametrize("mode", ["drop_after", "drop", "500"])
def test_a_lost_answer_is_read_back_and_only_missing_events_are_resent(sandbox, warehouse, write_sync, mode):
    """Choice: an unknown outcome is settled by a read-back (Flux has no dedup), never a blind resend."""
    # drop_after: Flux stored the batch, then the connection dropped before the answer. drop / 500: it did
    # not store it. Either way the engine cannot know from the answer: it reads the batch back by its tag
    # and resends only what is missing, so Flux (no dedup) never holds a copy twice.
    sandbox.set_fault("flux", "events_batch", Fault(mode, count=1))
    spec = usage_sync(warehouse, write_sync, 7)

    run = run_sync(spec)

    assert run.delivered == 7 and run.resent_unknown == 0 and run.status == "success"
    assert stats(sandbox, "events_batch")["requests"] == (1 if mode == "drop_after" else 2)
    assert len(stored(sandbox)) == 7 and len({e["properties"]["syncline_key"] for e in stored(sandbox)}) == 7
    reads = [a for a in open_ledger().attempts(sync="usage") if a["endpoint"] == "flux:list_events"]
    assert reads, "the batch was read back"
    report = spec.endpoint.reconcile(reader(spec), sync="usage", window_start=None, window_end=None, delivered=7)
    assert report["matches"] is True


def test_read_api_wrappers_filter_count_and_aggregate(sandbox, warehouse, write_sync):
    spec = usage_sync(warehouse, write_sync, 30, step="1 HOUR")  # 30 events, hourly from June 1 00:00
    run_sync(spec)
    sender = reader(spec)

    page = list_events(sender, name="api.*", tags={"plan": "free"}, limit=5, offset=5)
    assert page["meta"] == {"total": 15, "limit": 5, "offset": 5}
    assert len(page["data"]) == 5 and all(e["name"] == "api.requests" for e in page["data"])
    evening = list_events(sender, from_="2026-06-01T20:00:00Z", to=dt.datetime(2026, 6, 1, 23, tzinfo=dt.UTC),
                          user_id="acct_0")
    assert [e["timestamp"] for e in evening["data"]] == ["2026-06-01T21:00:00.000+00:00"]

    counted = count_events(sender, name="storage.gb_hours", interval="1d", group_by="tags.plan")
    assert counted["total"] == 15 and counted["groups"] == {"team": 15}
    assert counted["series"] == [{"timestamp": "2026-06-01T00:00:00Z", "count": 12},
                                 {"timestamp": "2026-06-02T00:00:00Z", "count": 3}]

    summary = event_stats(sender, name="api.requests", from_="2026-06-01", to="2026-06-01T05:00:00Z")
    # api.requests at hours 0, 2, 4: qty (i % 13) * 1.5 = 0, 3, 6
    assert (summary["count"], summary["sum"], summary["min"], summary["max"], summary["p50"]) == (3, 9.0, 0.0, 6.0, 3.0)
    assert stats(sandbox, "query")["rate_limited"] == 0


def test_emulator_is_strict_to_the_document(sandbox):
    ok = {"name": "api.requests", "timestamp": "2026-06-01T10:00:00Z", "value": 1, "tags": {"plan": "team"}}
    assert raw_post(sandbox, "/api/v1/events/batch", {"events": [ok]}, key=None)[0] == 401
    assert raw_post(sandbox, "/api/v1/events/batch", {"events": [ok]}, key="sk_live_other")[0] == 401

    status, body = raw_post(sandbox, "/api/v1/events/batch", {"events": [ok] * 501})
    assert (status, body["error"]["code"]) == (422, "batch_too_large")
    for bad, code in [
        ({"value": 1}, "missing_name"),
        ({"name": "x", "timestamp": "2026-06-31T25:00:00Z"}, "invalid_timestamp"),
        ({"name": "x", "tags": {"plan": 3}}, "invalid_tags"),
        ({"name": "x", "tags": {"plan": None}}, "invalid_tags"),
        ({"name": "x", "value": "12"}, "invalid_value"),
    ]:
        status, body = raw_post(sandbox, "/api/v1/events/batch", {"events": [ok, ok, bad, ok]})
        assert (status, body["error"]["code"], body["error"]["index"]) == (422, code, 2)
    assert stored(sandbox) == []  # one bad event fails the whole batch: nothing stored

    # The documented codes, as the sandbox answers them, read as reasons a person understands.
    status, body = raw_post(sandbox, "/api/v1/events", {"name": "x", "tags": {"plan": 3}})
    answer = HttpResponse(status, {}, json.dumps(body).encode(), 0.0)
    assert flux_error_reason(answer) == "Flux refused the event: tags must be an object of string values (HTTP 422, invalid_tags)"
    # The open-source server's own shape: {"error": "<message>"}.
    server = HttpResponse(400, {}, b'{"error": "Name can\'t be blank"}', 0.0)
    assert flux_error_reason(server) == "Flux refused the event: Name can't be blank (HTTP 400)"

    status, body = raw_post(sandbox, "/api/v1/events/batch", [ok, ok])  # a bare array, as the server takes
    assert (status, body) == (200, {"data": {"accepted": 2, "rejected": 0}})
    status, body = raw_post(sandbox, "/api/v1/events", ok)
    assert status == 201 and body["data"]["id"].startswith("evt_")
    assert len({e["id"] for e in stored(sandbox)}) == 3
    assert stats(sandbox, "events_batch")["rate_limited"] == 0  # 8 authorized batch requests: under 10/min


def raw_request(sandbox: Sandbox, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    request = urllib.request.Request(sandbox.base_url("flux") + path, body, {"Content-Type": "application/json",
                                                                             **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_emulator_accepts_what_the_document_leaves_open(sandbox):
    """The emulator's assumptions (its docstring): where the document is silent it accepts every plausible
    variant, so no test agrees with a connector guess by construction."""
    event = json.dumps({"name": "x"}).encode()
    for auth in ("Bearer sk_sandbox_flux", "bearer sk_sandbox_flux", "BEARER   sk_sandbox_flux"):
        assert raw_request(sandbox, "/api/v1/events", event, {"Authorization": auth})[0] == 201, auth
    for auth in ("sk_sandbox_flux", "Token sk_sandbox_flux", "Basic sk_sandbox_flux"):  # the document shows Bearer
        assert raw_request(sandbox, "/api/v1/events", event, {"Authorization": auth})[0] == 401, auth
    for edge in [{"name": ""}, {"name": "   ", "user_id": ""}, {"name": "x", "timestamp": "2026-06-01"},
                 {"name": "x", "timestamp": "2026-06-01T10:00:00"}, {"name": "x", "timestamp": "20260601T1000"},
                 {"name": "x", "timestamp": "2026-W23-1T10:00:00,5+0200"}, {"name": "x", "timestamp": "2026-152"},
                 {"name": "x", "timestamp": "2026-06-01 10:00:00"}, {"name": "x", "properties": None, "tags": None},
                 {"name": "x", "tags": {"": ""}}, {"name": "n" * 100_000}]:
        assert raw_post(sandbox, "/api/v1/events", edge)[0] == 201, edge

    # "Standard rate limit" has no figure: no limit unless a test sets one (naming it as its assumption).
    for _ in range(70):
        assert raw_post(sandbox, "/api/v1/events", {"name": "burst"})[0] == 201
    assert stats(sandbox, "events")["rate_limited"] == 0
    flux(sandbox).control("single_rate", {"per_minute": 2})
    assert [raw_post(sandbox, "/api/v1/events", {"name": "y"})[0] for _ in range(3)] == [201, 201, 429]

    # Not JSON as a strict server reads it: refused and counted, never stored.
    for body in (b'{"name": "x", "value": NaN}', b'{"name": "x", "properties": {"a": Infinity}}',
                 b'{"name": "x", "value": 1e400}', b'{"name": "x", "name": "y"}'):
        assert raw_request(sandbox, "/api/v1/events/batch", b'{"events": [' + body + b"]}",
                           {"Authorization": "Bearer sk_sandbox_flux"})[0] == 400
    assert stats(sandbox, "events_batch")["invalid_json"] == 4


@pytest.mark.parametrize("shape, status", [("nested", 422), ("flat", 400), ("message", 422), ("errors", 400),
                                           ("rails", 422), ("text", 422), ("empty", 400)])
def test_choice_every_plausible_error_body_becomes_a_readable_reason(sandbox, shape, status):
    """Choice: the document gives error codes but no body or status; the connector reads each shape the
    emulator can answer (its assumption list) into a reason naming what was wrong, or quotes the body."""
    flux(sandbox).control("error_shape", {"shape": shape, "status": status})
    code, body = raw_request(sandbox, "/api/v1/events", json.dumps({"name": "x", "tags": {"plan": None}}).encode(),
                             {"Authorization": "Bearer sk_sandbox_flux"})
    reason = flux_error_reason(HttpResponse(code, {}, body, 0.0))
    assert code == status and f"HTTP {status}" in reason
    if shape == "empty":
        assert reason == f"Flux refused the request (HTTP {status}): "
    elif shape == "rails":
        assert reason == f"Flux refused the event: tags Tags must be string values (HTTP {status})"
    elif shape == "text":
        assert reason == f"Flux refused the request (HTTP {status}): invalid_tags: Tags must be string values"
    else:
        assert reason.startswith("Flux refused the event: tags must be an object of string values")
