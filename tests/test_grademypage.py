"""GradeMyPage over real HTTP against the sandbox: /track batches, /server-events one by one, experiments.

Every assertion is about what arrived at the sandbox (records, request log, key log, counters) or what the
ledger says, never about timings.
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from connectors.errors import ConfigError, SynclineError
from connectors.ledger import open_ledger
from connectors.runner import run_sync
from connectors.sandbox import Fault
from connectors.sandbox.emulators.grademypage import PUBLIC_KEY, SECRET_KEY
from connectors.spec import load_sync_file
from pipelines.sample_data import grademypage as sample

REPO = Path(__file__).resolve().parent.parent
JUNE_1_MS = int(dt.datetime(2026, 6, 1, tzinfo=dt.UTC).timestamp() * 1000)

VIEWS = """
    CREATE TABLE analytics.views AS
    SELECT 'v' || lpad(i::VARCHAR, 4, '0') AS view_id,
           'pageview' AS event_type,
           '/p/' || (i % 10) AS pathname,
           'https://acme.example/p/' || (i % 10) AS full_url,
           'sess_' || (i // 5) AS session_id,
           'vid_' || (i % 13) AS visitor_id,
           TIMESTAMPTZ '2026-06-01 00:00:00+00' + i * INTERVAL 1 MINUTE + (i % 1000) * INTERVAL 1 MILLISECOND AS viewed_at,
           CASE WHEN i % 2 = 0 THEN 'newsletter' END AS utm_source
    FROM range({n}) t(i)
"""
VIEWS_SYNC = """
    source: {table: analytics.views, key: view_id, cursor: viewed_at}
    destination: {vendor: grademypage, endpoint: track}
"""
VIEWS_SQL = """
    SELECT _key, event_type AS eventType, pathname, full_url AS fullUrl, session_id AS sessionId,
           visitor_id AS visitorId, viewed_at AS timestamp, {'source': utm_source} AS utm
    FROM source
"""

CONVERSIONS = """
    CREATE TABLE analytics.conv AS
    SELECT 'c' || lpad(i::VARCHAR, 3, '0') AS conversion_id,
           (['signup', 'purchase'])[1 + i % 2] AS event_name,
           TIMESTAMPTZ '2026-06-02 09:00:00+00' + i * INTERVAL 7 MINUTE AS converted_at,
           'vid_' || i AS visitor_id,
           CASE WHEN i % 3 = 0 THEN 'exp_signup_cta' END AS experiment_id,
           CASE WHEN i % 3 = 0 THEN 'var_cta_green' END AS variant_id
    FROM range({n}) t(i)
"""
CONV_SYNC = """
    source: {table: analytics.conv, key: conversion_id, cursor: converted_at}
    destination: {vendor: grademypage, endpoint: server_events}
"""
CONV_SQL = """
    SELECT _key, 'conversion' AS eventType, event_name AS eventName, converted_at AS timestamp,
           {'id': visitor_id, 'userAgent': 'Mozilla/5.0'} AS visitor, '/signup' AS page,
           {'conversionId': _key} AS properties,
           experiment_id AS experimentId, variant_id AS variantId
    FROM source
"""
CONV_CHECKED_SYNC = CONV_SYNC.replace("endpoint: server_events}", "endpoint: server_events, "
                                     "options: {check_experiments: true}}")
FAST = "backoff_base: 0.01, backoff_cap: 0.05, max_retry_after: 5"


def _state(sandbox: Any) -> tuple[dict[str, int], list[dict[str, Any]]]:
    emulator = sandbox.emulator("grademypage")
    with emulator.lock:
        return dict(emulator.counters), list(emulator.key_log)


def _stats(sandbox: Any, endpoint: str) -> dict[str, Any]:
    return sandbox.stats()["grademypage"].get(endpoint, {"requests": 0, "max_items_per_request": 0})


def _reasons(sync: str) -> dict[str, str]:
    return {r["source_key"]: r["reason"] for r in open_ledger().items(sync, state="rejected")}


# --- /track -------------------------------------------------------------------------------------------------


def test_track_delivers_batches_once_with_epoch_ms_and_the_public_key_as_project_id(sandbox, warehouse, write_sync):
    """Epoch ms and the public key as projectId are documented; batches of 100 are a choice (no size is documented)."""
    warehouse(VIEWS.format(n=250))
    spec = write_sync("views", VIEWS_SYNC, VIEWS_SQL)

    run = run_sync(spec)

    assert run.status == "success" and run.delivered == 250 and run.rejected == 0
    received = sandbox.records("grademypage", "track")
    assert len(received) == 250
    assert all(isinstance(e["timestamp"], int) for e in received)
    row = {(e["sessionId"], e["pathname"]): e for e in received if e["sessionId"] == "sess_0"}  # rows 0-4
    assert row["sess_0", "/p/0"]["timestamp"] == JUNE_1_MS  # 2026-06-01T00:00:00.000Z
    assert row["sess_0", "/p/1"]["timestamp"] == JUNE_1_MS + 60_000 + 1  # one minute and one millisecond later
    assert row["sess_0", "/p/0"]["utm"] == {"source": "newsletter"}
    assert "utm" not in row["sess_0", "/p/1"]  # an object with only NULL members is omitted
    stats = _stats(sandbox, "track")
    assert stats["requests"] == 3 and stats["max_items_per_request"] == 100  # 100 + 100 + 50
    _, key_log = _state(sandbox)
    assert [e["projectId"] for e in key_log if e["endpoint"] == "track"] == [PUBLIC_KEY] * 3

    again = run_sync(spec)
    assert again.delivered == 0 and again.skipped == 250
    assert _stats(sandbox, "track")["requests"] == 3  # the rerun sent nothing
    assert len(sandbox.records("grademypage", "track")) == 250


def test_track_batch_size_follows_delivery_max_items_and_never_exceeds_100(sandbox, warehouse, write_sync):
    """Choice: the document names no batch size; syncline's ceiling is 100 events per request."""
    warehouse(VIEWS.format(n=100))
    spec = write_sync("views", VIEWS_SYNC + f"    delivery: {{max_items: 40, {FAST}}}\n", VIEWS_SQL)

    run = run_sync(spec)

    assert run.delivered == 100
    stats = _stats(sandbox, "track")
    assert stats["max_items_per_request"] == 40 and stats["requests"] == 3  # 40 + 40 + 20, measured at the sandbox
    with pytest.raises(ConfigError) as error:
        write_sync("too_big", VIEWS_SYNC + f"    delivery: {{max_items: 101, {FAST}}}\n", VIEWS_SQL)
    assert "delivery.max_items" in str(error.value) and "at most 100" in str(error.value)


TRACK_RULE_ROWS = """CREATE TABLE analytics.views AS SELECT * FROM (VALUES
            ('a_ok',      'pageview', '/pricing', 'https://acme.example/pricing', 's1', 'v1', '1780272000000', MAP {'source': 'ads'}, NULL),
            ('b_nopath',  'pageview', NULL,       'https://acme.example/',        's1', 'v1', '1780272000001', NULL, NULL),
            ('c_fullurl', 'pageview', 'https://acme.example/x', 'https://acme.example/x', 's1', 'v1', '1780272000002', NULL, NULL),
            ('d_relurl',  'pageview', '/x',       'acme.example/x',               's1', 'v1', '1780272000003', NULL, NULL),
            ('e_seconds', 'pageview', '/x',       'https://acme.example/x',       's1', 'v1', '1780272000',    NULL, NULL),
            ('f_garbage', 'pageview', '/x',       'https://acme.example/x',       's1', 'v1', 'yesterday',     NULL, NULL),
            ('g_utm',     'pageview', '/x',       'https://acme.example/x',       's1', 'v1', '1780272000006', MAP {'utm_source': 'ads'}, NULL),
            ('h_nosess',  'pageview', '/x',       'https://acme.example/x',       NULL, 'v1', '1780272000007', NULL, NULL),
            ('i_data',    'scroll',   '/x',       'https://acme.example/x',       's1', 'v1', '1780272000008', NULL, '[25, 50]'),
            ('j_first',   'pageview', '/dup',     'https://acme.example/dup',     's2', 'v2', '1780272009999', NULL, '{"depth": 1}'),
            ('k_again',   'pageview', '/dup',     'https://acme.example/dup?x',   's3', 'v2', '1780272009999', NULL, '{"depth": 2}'),
            ('l_other',   'scroll',   '/dup',     'https://acme.example/dup',     's2', 'v2', '1780272009999', NULL, NULL)
        ) t(id, event_type, pathname, full_url, session_id, visitor_id, ts, utm, event_data)"""
TRACK_RULE_SQL = """SELECT _key, event_type AS eventType, pathname, full_url AS fullUrl, session_id AS sessionId,
                  visitor_id AS visitorId, ts AS timestamp, utm, event_data AS eventData FROM source"""
TRACK_RULE_REASONS = {
    "b_nopath": "pathname is required",
    "e_seconds": "timestamp looks like seconds (under 100000000000, 1973-03-03 as milliseconds); the document "
                 "wants milliseconds, got 1780272000",
    "f_garbage": "timestamp must be epoch milliseconds, got yesterday",
    "h_nosess": "sessionId is required",
    "i_data": "eventData must be a JSON object, got [25, 50]",
    "k_again": (
        "same (visitorId, timestamp, eventType, pathname) as source row j_first: "
        "GradeMyPage keeps one event per tuple and would drop this one silently (rule same_event_tuple)"
    ),
}


def test_track_rules_reject_exactly_the_bad_rows_with_clear_reasons(sandbox, warehouse, write_sync):
    """Only what the document forbids is rejected by default; a full URL as pathname, a relative fullUrl and
    an undocumented utm member are sent as the model wrote them (the document says only `string`)."""
    warehouse(TRACK_RULE_ROWS)
    spec = write_sync("views", "source: {table: analytics.views, key: id}\n"
                      "destination: {vendor: grademypage, endpoint: track}\n", TRACK_RULE_SQL)

    run = run_sync(spec)

    assert _reasons("views") == TRACK_RULE_REASONS
    assert run.delivered == 6 and run.rejected == 6
    received = sandbox.records("grademypage", "track")
    assert sorted((e["pathname"], e["eventType"]) for e in received) == [
        ("/dup", "pageview"), ("/dup", "scroll"), ("/pricing", "pageview"), ("/x", "pageview"), ("/x", "pageview"),
        ("https://acme.example/x", "pageview"),
    ]
    assert next(e for e in received if e["pathname"] == "/dup" and e["eventType"] == "pageview")["eventData"] == {"depth": 1}
    assert {e["fullUrl"] for e in received if e["pathname"] == "/x"} == {"acme.example/x", "https://acme.example/x"}
    assert next(e for e in received if e.get("utm") == {"utm_source": "ads"})["timestamp"] == 1780272000006
    counters, _ = _state(sandbox)
    assert counters.get("track_duplicates_dropped", 0) == 0  # nothing was counted delivered that GMP dropped


def test_choice_strict_track_rules_are_opt_in(sandbox, warehouse, write_sync):
    """Choice: `strict: true` adds the checks the document does not make (pathname starting with /,
    an absolute http(s) fullUrl, only the documented utm members), each named in its reason."""
    warehouse(TRACK_RULE_ROWS)
    spec = write_sync("views", "source: {table: analytics.views, key: id}\n"
                      "destination: {vendor: grademypage, endpoint: track}\nstrict: true\n", TRACK_RULE_SQL)

    run = run_sync(spec)

    assert _reasons("views") == {
        **TRACK_RULE_REASONS,
        "c_fullurl": "pathname must start with /, got https://acme.example/x (rule pathname_starts_with_slash)",
        "d_relurl": "fullUrl must be an absolute http(s) URL, got acme.example/x (rule full_url_absolute_http)",
        "g_utm": "utm has unknown member(s) utm_source (allowed: source, medium, campaign, term, content) "
                 "(rule utm_known_members)",
    }
    assert run.delivered == 3 and run.rejected == 9


# --- /server-events -----------------------------------------------------------------------------------------


def test_server_events_one_per_request_with_iso_timestamps_and_the_ledger_idempotency_key(sandbox, warehouse, write_sync):
    warehouse(CONVERSIONS.format(n=20))
    spec = write_sync("conv", CONV_SYNC, CONV_SQL)

    run = run_sync(spec)

    assert run.status == "success" and run.delivered == 20
    stats = _stats(sandbox, "server_events")
    assert stats["requests"] == 20 and stats["max_items_per_request"] == 1
    received = {e["properties"]["conversionId"]: e for e in sandbox.records("grademypage", "server_events")}
    assert received["c000"]["timestamp"] == "2026-06-02T09:00:00.000+00:00"
    assert all(dt.datetime.fromisoformat(e["timestamp"]).tzinfo is not None for e in received.values())
    ledger_keys = {r["source_key"]: r["idem_key"] for r in open_ledger().items("conv", state="delivered")}
    assert len(ledger_keys) == 20
    assert {k: e["idempotencyKey"] for k, e in received.items()} == ledger_keys
    assert received["c003"]["experimentId"] == "exp_signup_cta" and received["c003"]["variantId"] == "var_cta_green"
    assert "experimentId" not in received["c001"]


def test_server_events_resends_are_deduplicated_by_idempotency_key(sandbox, warehouse, write_sync, syncline_home):
    warehouse(CONVERSIONS.format(n=6))
    spec = write_sync("conv", CONV_SYNC, CONV_SQL)
    # The sandbox stores the first event, then closes the connection without answering: the client cannot
    # know it landed and sends it again with the same idempotencyKey.
    sandbox.set_fault("grademypage", "server_events", Fault("drop_after", count=1))

    run = run_sync(spec)

    assert run.delivered == 6
    assert len(sandbox.records("grademypage", "server_events")) == 6
    counters, _ = _state(sandbox)
    assert counters["server_events_deduplicated"] == 1
    assert _stats(sandbox, "server_events")["requests"] == 7

    # A lost ledger (or a backfill from scratch) resends everything under the same keys: GradeMyPage dedups.
    for file in syncline_home.glob("ledger.sqlite*"):
        file.unlink()
    run_sync(spec)
    assert len(sandbox.records("grademypage", "server_events")) == 6
    counters, _ = _state(sandbox)
    assert counters["server_events_deduplicated"] == 1 + 6


def test_choice_check_experiments_rejects_unknown_experiments_and_variants_read_once_per_run(
    sandbox, warehouse, write_sync
):
    """Choice (``check_experiments: true``, off by default): the document has no rule against a conversion
    of an ended experiment; a sync may still ask for one. A blank variantId is a value (sent, then checked)."""
    warehouse(
        """CREATE TABLE analytics.conv AS SELECT * FROM (VALUES
            ('c1', 'exp_signup_cta', 'var_cta_large'),
            ('c2', 'exp_pricing_headline', 'var_pricing_value'),
            ('c3', 'exp_retired', 'var_a'),
            ('c4', 'exp_signup_cta', 'var_pricing_value'),
            ('c5', 'exp_signup_cta', NULL),
            ('c6', NULL, 'var_cta_green'),
            ('c7', NULL, NULL),
            ('c8', 'exp_pricing_headline', '  ')
        ) t(conversion_id, experiment_id, variant_id)"""
    )
    sql = """SELECT _key, 'conversion' AS eventType, 'signup' AS eventName,
                    TIMESTAMPTZ '2026-06-03 12:00:00+00' AS timestamp,
                    experiment_id AS experimentId, variant_id AS variantId FROM source"""
    spec = write_sync("conv", "source: {table: analytics.conv, key: conversion_id}\n"
                      "destination: {vendor: grademypage, endpoint: server_events, "
                      "options: {check_experiments: true}}\n", sql)

    run = run_sync(spec)

    assert _reasons("conv") == {
        "c3": "experimentId 'exp_retired' is not a running GradeMyPage experiment "
              "(running: exp_pricing_headline, exp_signup_cta)",
        "c4": "variantId 'var_pricing_value' is not a variant of experiment 'exp_signup_cta' "
              "(variants: var_cta_control, var_cta_green, var_cta_large)",
        "c5": "variantId is required when experimentId is set (give both or neither)",
        "c6": "experimentId is required when variantId is set (give both or neither)",
        "c8": "variantId '  ' is not a variant of experiment 'exp_pricing_headline' "
              "(variants: var_pricing_control, var_pricing_value)",
    }
    assert run.delivered == 3 and run.rejected == 5
    assert sorted(e.get("variantId", "-") for e in sandbox.records("grademypage", "server_events")) == [
        "-", "var_cta_large", "var_pricing_value"
    ]
    assert _stats(sandbox, "experiments_active")["requests"] == 1
    assert _stats(sandbox, "server_events")["by_status"] == {200: 3}  # the sandbox never had to refuse one

    again = run_sync(spec)  # rejected rows are re-checked (still bad); delivered ones are skipped
    assert again.delivered == 0 and again.rejected == 5 and again.skipped == 3
    assert _stats(sandbox, "experiments_active")["requests"] == 2  # once per run, cached within it
    _, key_log = _state(sandbox)
    lookups = [e for e in key_log if e["endpoint"] == "experiments_active"]
    assert [(e["projectId"], e["authorization"], e["keys_seen"]) for e in lookups] == [
        (PUBLIC_KEY, None, ["public_key"])
    ] * 2


def test_choice_unreadable_experiments_reject_only_attributed_conversions_until_the_next_run(
    sandbox, warehouse, write_sync
):
    """Choice (``check_experiments: true``): when the lookup fails, only conversions naming an experiment wait."""
    warehouse(CONVERSIONS.format(n=9))  # c000, c003, c006 name an experiment
    spec = write_sync("conv", CONV_CHECKED_SYNC, CONV_SQL)
    sandbox.set_fault("grademypage", "experiments_active", Fault("503", count=1000))

    run = run_sync(spec)

    assert run.delivered == 6 and run.rejected == 3
    reasons = _reasons("conv")
    assert sorted(reasons) == ["c000", "c003", "c006"]
    assert all("active experiments could not be read (HTTP 503" in r for r in reasons.values())

    sandbox.clear_faults()
    later = run_sync(spec)
    assert later.delivered == 3 and later.skipped == 6
    assert len(sandbox.records("grademypage", "server_events")) == 9


# --- keys and auth ------------------------------------------------------------------------------------------


def test_the_secret_never_reaches_public_endpoints_and_the_public_key_never_reaches_server_events(
    sandbox, warehouse, write_sync
):
    warehouse(VIEWS.format(n=120), CONVERSIONS.format(n=12))
    run_sync(write_sync("views", VIEWS_SYNC, VIEWS_SQL))
    run_sync(write_sync("conv", CONV_CHECKED_SYNC, CONV_SQL))  # the experiments lookup is public too

    counters, key_log = _state(sandbox)
    by_endpoint: dict[str, list[dict[str, Any]]] = {}
    for entry in key_log:
        by_endpoint.setdefault(entry["endpoint"], []).append(entry)
    assert {k: len(v) for k, v in by_endpoint.items()} == {"track": 2, "experiments_active": 1, "server_events": 12}
    for entry in by_endpoint["track"] + by_endpoint["experiments_active"]:
        assert entry["keys_seen"] == ["public_key"]  # headers, query and body scanned: no secret anywhere
        assert entry["authorization"] is None and entry["projectId"] == PUBLIC_KEY
    for entry in by_endpoint["server_events"]:
        assert entry["keys_seen"] == ["secret_key"]  # no public key in headers, query or body
        assert entry["authorization"] == f"Bearer {SECRET_KEY}" and entry["projectId"] is None
    assert counters.get("secret_key_refused", 0) == 0 and counters.get("public_key_refused", 0) == 0
    # The framework's own request log (auth headers only) agrees.
    emulator = sandbox.emulator("grademypage")
    assert all(not r["headers"] for r in emulator.request_log["track"] + emulator.request_log["experiments_active"])
    assert {r["headers"].get("authorization") for r in emulator.request_log["server_events"]} == {f"Bearer {SECRET_KEY}"}


def test_wrong_public_key_stops_track_with_nothing_delivered(sandbox, warehouse, write_sync, monkeypatch):
    """Choice: a 401/403 stops the sync rather than failing each item (the document does not describe error answers)."""
    warehouse(VIEWS.format(n=50))  # one request: a second one could already be in flight when the first fails
    spec = write_sync("views", VIEWS_SYNC, VIEWS_SQL)
    monkeypatch.setenv("GRADEMYPAGE_PUBLIC_KEY", "00000000-0000-0000-0000-00000000dead")

    run = run_sync(spec)

    assert run.status == "stopped" and "HTTP 403" in (run.error or "") and run.delivered == 0
    assert "00000000-0000-0000-0000-00000000dead" not in (run.error or "")
    assert _stats(sandbox, "track")["requests"] == 1  # never retried
    assert sandbox.records("grademypage", "track") == []
    counts = open_ledger().counts("views")
    assert counts["delivered"] == 0 and counts["failed"] == 50


def test_wrong_secret_key_stops_server_events_with_nothing_delivered(sandbox, warehouse, write_sync, monkeypatch):
    """Choice: a 401/403 stops the sync rather than failing each item (the document does not describe error answers)."""
    warehouse(CONVERSIONS.format(n=10))
    spec = write_sync("conv", CONV_SYNC, CONV_SQL)
    monkeypatch.setenv("GRADEMYPAGE_SECRET_KEY", "gmp_sk_revoked_000")

    run = run_sync(spec)

    assert run.status == "stopped" and "HTTP 401" in (run.error or "") and run.delivered == 0
    assert "gmp_sk_revoked_000" not in (run.error or "")
    assert sandbox.records("grademypage", "server_events") == []
    assert open_ledger().counts("conv")["delivered"] == 0


def test_choice_wrong_public_key_with_check_experiments_stops_before_any_event_is_sent(
    sandbox, warehouse, write_sync, monkeypatch
):
    """Choice (``check_experiments: true``): a wrong public key fails the lookup and stops the sync."""
    warehouse(CONVERSIONS.format(n=5))
    spec = write_sync("conv", CONV_CHECKED_SYNC, CONV_SQL)
    monkeypatch.setenv("GRADEMYPAGE_PUBLIC_KEY", "11111111-2222-3333-4444-555555555555")

    run = run_sync(spec)

    assert run.status == "stopped" and ("HTTP 403" in (run.error or "") or "HTTP 401" in (run.error or ""))
    assert run.delivered == 0
    assert _stats(sandbox, "experiments_active")["requests"] == 1
    assert _stats(sandbox, "server_events")["requests"] == 0


def test_missing_keys_are_named_before_anything_is_sent(sandbox, warehouse, write_sync, monkeypatch):
    warehouse(CONVERSIONS.format(n=3))
    spec = write_sync("conv", CONV_SYNC, CONV_SQL)
    checked = write_sync("conv_checked", CONV_CHECKED_SYNC, CONV_SQL)
    monkeypatch.delenv("GRADEMYPAGE_SECRET_KEY")
    with pytest.raises(SynclineError, match="GRADEMYPAGE_SECRET_KEY"):
        run_sync(spec)
    monkeypatch.setenv("GRADEMYPAGE_SECRET_KEY", SECRET_KEY)
    monkeypatch.delenv("GRADEMYPAGE_PUBLIC_KEY")
    with pytest.raises(SynclineError, match="GRADEMYPAGE_PUBLIC_KEY"):
        run_sync(checked)  # the experiments lookup needs the public key
    assert sandbox.stats()["grademypage"] == {}
    # Without check_experiments, server events need the secret key only.
    assert run_sync(spec).delivered == 3


def test_choice_authorization_option_changes_the_header_form(sandbox, warehouse, write_sync):
    """Choice: the document says only "with your project's secret key in the Authorization header"; syncline
    sends `Bearer <key>` by default and the bare key with `authorization: raw`. The sandbox takes both."""
    warehouse(CONVERSIONS.format(n=3))
    raw = CONV_SYNC.replace("endpoint: server_events}", "endpoint: server_events, options: {authorization: raw}}")
    run = run_sync(write_sync("conv", raw, CONV_SQL))
    assert run.status == "success" and run.delivered == 3
    assert {r["headers"]["authorization"] for r in sandbox.emulator("grademypage").request_log["server_events"]} == {
        SECRET_KEY
    }
    bad = CONV_SYNC.replace("endpoint: server_events}", "endpoint: server_events, options: {authorization: basic}}")
    with pytest.raises(ConfigError, match=r"destination\.options\.authorization"):
        write_sync("conv_bad", bad, CONV_SQL)


# --- the sandbox itself is strict (so the tests above can fail) ---------------------------------------------


def _call(url: str, method: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def test_sandbox_refuses_what_the_contract_forbids_and_accepts_what_it_leaves_open(sandbox):
    base = sandbox.base_url("grademypage") + "/api/analytics"
    event = {"eventType": "pageview", "pathname": "/", "fullUrl": "https://a.example/", "sessionId": "s",
             "visitorId": "v", "timestamp": JUNE_1_MS}
    track = f"{base}/track"
    assert _call(track, "POST", {"projectId": PUBLIC_KEY, "events": [event]})[0] == 200
    assert _call(track, "POST", {"projectId": PUBLIC_KEY, "events": [event]})[1]["stored"] == 0  # tuple dedup
    assert _call(track, "POST", {"projectId": PUBLIC_KEY, "events": [{**event, "timestamp": "2026-06-01T00:00:00Z"}]})[0] == 400
    # `number; // epoch ms` names no range: any number a JavaScript date takes as ms is stored (seconds and
    # microseconds too: the connector's plausible bounds are its own choice); what cannot be a date is refused.
    assert _call(track, "POST", {"projectId": PUBLIC_KEY, "events": [{**event, "timestamp": JUNE_1_MS * 1_000_000}]})[0] == 400
    assert _call(track, "POST", {"projectId": PUBLIC_KEY, "events": [{**event, "timestamp": JUNE_1_MS * 1000}]})[0] == 200
    assert _call(track, "POST", {"projectId": PUBLIC_KEY, "events": [{**event, "timestamp": JUNE_1_MS // 1000}]})[0] == 200
    assert _call(track, "POST", {"projectId": PUBLIC_KEY, "events": []})[0] == 200  # the document is silent
    assert _call(track, "POST", {"events": [event]})[0] == 401
    assert _call(track, "POST", {"projectId": PUBLIC_KEY, "events": [event]}, {"Authorization": f"Bearer {SECRET_KEY}"})[0] == 403
    server = f"{base}/server-events"
    conversion = {"eventType": "conversion", "eventName": "signup", "idempotencyKey": "k1",
                  "experimentId": "exp_signup_cta", "variantId": "var_cta_green"}
    assert _call(server, "POST", conversion, {"Authorization": f"Bearer {PUBLIC_KEY}"})[0] == 403
    assert _call(server, "POST", conversion)[0] == 401
    secret = {"Authorization": f"Bearer {SECRET_KEY}"}
    assert _call(server, "POST", [conversion], secret)[0] == 400
    assert _call(server, "POST", {**conversion, "timestamp": 1780272000000}, secret)[0] == 400
    assert _call(server, "POST", conversion, secret)[0] == 200
    assert _call(server, "POST", conversion, secret)[1] == {"success": True, "deduplicated": True}
    # Where the document is silent, every plausible variant is accepted: the bare key, an ended experiment,
    # a date-only or offset-less ISO 8601 timestamp, no timestamp at all, a lone experimentId (both are
    # optional: "Pass experimentId + variantId" is an instruction, the connector's reading of it is its own).
    lone = {**conversion, "idempotencyKey": "k0", "variantId": None}
    assert _call(server, "POST", lone, secret)[0] == 200
    ended = {**conversion, "idempotencyKey": "k2", "experimentId": "exp_old", "variantId": "var_x",
             "timestamp": "2026-06-01"}
    assert _call(server, "POST", ended, {"Authorization": SECRET_KEY})[0] == 200
    assert _call(server, "POST", {**ended, "idempotencyKey": "k3", "timestamp": "2026-06-01T10:00:00"}, secret)[0] == 200
    experiments = f"{base}/experiments/active"
    assert _call(experiments, "GET")[0] == 401
    assert _call(f"{experiments}?projectId={SECRET_KEY}", "GET")[0] == 403
    status, body = _call(f"{experiments}?projectId={PUBLIC_KEY}", "GET")
    assert status == 200 and {e["id"] for e in body["experiments"]} == {"exp_pricing_headline", "exp_signup_cta"}
    counters, _ = _state(sandbox)
    assert counters == {"track_duplicates_dropped": 1, "secret_key_refused": 2, "public_key_refused": 1,
                        "server_events_deduplicated": 1}
    assert len(sandbox.records("grademypage", "server_events")) == 4


# --- the packaged sample syncs --------------------------------------------------------------------------------


def test_sample_syncs_deliver_everything_but_the_planted_bad_rows(sandbox, sample_warehouse):
    sample_warehouse(sample)
    views = load_sync_file(REPO / "pipelines/syncs/page_views_to_grademypage.yaml")
    conversions = load_sync_file(REPO / "pipelines/syncs/conversions_to_grademypage.yaml")

    v = run_sync(views)
    c = run_sync(conversions)

    # Rejected: what the document forbids. Delivered as written: a full URL as pathname (pv_000388), a
    # stopped experiment (cv_000061), a variant the experiment does not list (cv_000093) and an undocumented
    # visitor member (cv_000178): the document has no rule against them (opt-in checks would catch them).
    assert sorted(_reasons(views.name)) == ["pv_000077", "pv_000211", "pv_000533"]
    assert sorted(_reasons(conversions.name)) == ["cv_000045", "cv_000130", "cv_000146"]
    assert (v.delivered, c.delivered) == (sample.PAGE_VIEWS - 3, sample.CONVERSIONS - 3)
    assert v.rejected / v.source_rows <= views.max_rejected_share
    assert c.rejected / c.source_rows <= conversions.max_rejected_share
    counters, _ = _state(sandbox)
    # No dedup drop, no key refused: the sandbox agreed with every item sent (cv_000178's user_agent is a
    # member the document does not list: accepted and counted).
    assert counters == {"unknown_members": 1}
