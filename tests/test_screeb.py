"""Screeb over real HTTP against the sandbox: events (every documented rule), options, releases, auth, rate."""

from __future__ import annotations

import json

import pytest
import requests

from connectors.errors import ConfigError, SynclineError
from connectors.ledger import open_ledger
from connectors.runner import run_sync
from connectors.sandbox import Fault
from connectors.sandbox.emulators.screeb import ScreebEmulator

TRACK = """
    CREATE TABLE analytics.tracked AS
    SELECT 'e' || lpad(i::VARCHAR, 5, '0') AS event_id,
           'user-' || (i % 37) AS user_alias,
           (['Signed up', 'Viewed pricing', 'Exported report'])[1 + i % 3] AS event_name,
           (['pro', 'free'])[1 + i % 2] AS plan,
           TIMESTAMPTZ '2026-06-01 00:00:00+00' + i * INTERVAL 1 SECOND AS occurred_at
    FROM range({n}) t(i)
"""
TRACK_SYNC = """
    source: {table: analytics.tracked, key: event_id, cursor: occurred_at}
    destination: {vendor: screeb, endpoint: event}
"""
TRACK_SQL = """
    SELECT _key, user_alias, 'track' AS type, event_name,
           {'plan': plan} AS properties, {'locale': 'en-US', 'timezone': 'Europe/Paris'} AS context
    FROM source
"""


def _rejections(sync: str) -> dict[str, str]:
    return {r["source_key"]: r["reason"] for r in open_ledger().items(sync, state="rejected")}


def test_valid_batch_is_delivered_once_in_requests_of_at_most_100(sandbox, warehouse, write_sync):
    warehouse(TRACK.format(n=250))
    spec = write_sync("track", TRACK_SYNC, TRACK_SQL)

    run = run_sync(spec)

    assert run.status == "success" and run.delivered == 250 and run.rejected == 0
    received = sandbox.records("screeb", "event")
    assert len(received) == 250
    # Delivery order is not part of the contract: find the first source row's event by its content.
    (first,) = [r for r in received if r["user_alias"] == "user-0" and r["event_name"] == "Signed up"
                and r["properties"] == {"plan": "pro"}][:1]
    assert first == {
        "user_alias": "user-0",
        "type": "track",
        "properties": {"plan": "pro"},
        "context": {"locale": "en-US", "timezone": "Europe/Paris"},
        "event_name": "Signed up",
    }
    stats = sandbox.stats()["screeb"]["event"]
    assert stats["requests"] == 3 and stats["max_items_per_request"] == 100  # 100 + 100 + 50
    log = sandbox.emulator("screeb").request_log["event"]
    assert {entry["headers"]["authorization"] for entry in log} == {f"Bearer {ScreebEmulator.keys['api_token']}"}

    again = run_sync(spec)
    assert again.delivered == 0 and again.skipped == 250 and again.requests == 0
    assert len(sandbox.records("screeb", "event")) == 250


RULES_TABLE = """
    CREATE TABLE analytics.mixed (
        id VARCHAR, user_alias VARCHAR, type VARCHAR, event_name VARCHAR, group_type VARCHAR,
        group_name VARCHAR, url VARCHAR, screen_name VARCHAR, conversation_id VARCHAR,
        copilot_session_id VARCHAR, prompt VARCHAR, response VARCHAR, rating INTEGER, rating_scale INTEGER,
        context VARCHAR, properties VARCHAR
    )
"""
C = "conv-1"
S = "sess-1"
# (id, user_alias, type, event_name, group_type, group_name, url, screen_name, conversation_id,
#  copilot_session_id, prompt, response, rating, rating_scale, context, properties)
GOOD_ROWS: list[tuple[object, ...]] = [
    ("ok_identify", "u1", "identify", None, None, None, None, None, None, None, None, None, None, None,
     '{"locale": "fr-FR"}', '{"plan": "pro", "seats": 3}'),
    ("ok_track", "u1", "track", "Exported report", None, None, None, None, None, None, None, None, None, None, None, None),
    ("ok_assign", "u1", "group.assign", None, "company", "Acme Inc", None, None, None, None, None, None, None, None, None,
     '{"industry": "SaaS"}'),
    ("ok_unassign", "u1", "group.unassign", None, None, "Beta Corp", None, None, None, None, None, None, None, None, None, None),
    ("ok_page", "u2", "page", None, None, None, "https://example.com/pricing", None, None, None, None, None, None, None, None, None),
    ("ok_screen", "u2", "screen", None, None, None, None, "DashboardScreen", None, None, None, None, None, None, None, None),
    ("ok_prompt", "u3", "copilot", "screeb_copilot_user_prompt", None, None, None, None, C, S, "p" * 10_000, None, None, None, None, None),
    ("ok_response", "u3", "copilot", "screeb_copilot_response", None, None, None, None, C, S, None, "r" * 10_000, None, None, None, None),
    ("ok_conversion", "u3", "copilot", "screeb_copilot_conversion", None, None, None, None, None, None, None, None, None, None, None, None),
    ("ok_satisfaction", "u3", "copilot", "screeb_copilot_satisfaction", None, None, None, None, C, S, None, None, 5, 10, None, None),
    ("ok_ids_at_limit", "u3", "copilot", "screeb_copilot_user_prompt", None, None, None, None, "c" * 100, "s" * 100, "hi", None, None, None, None, None),
    # user_alias is optional ("If omitted, an anonymous user is created"), and a blank text is a string.
    ("ok_anonymous", None, "track", "Signed up", None, None, None, None, None, None, None, None, None, None, None, None),
    ("ok_blank_name", "u4", "track", " ", None, None, None, None, None, None, None, None, None, None, None, None),
]
BAD_ROWS: dict[str, tuple[tuple[object, ...], str]] = {
    "bad_no_type": (
        ("u1", None, "Signed up", None, None, None, None, None, None, None, None, None, None, None, None),
        "type is required",
    ),
    "bad_type": (
        ("u1", "alias", None, None, None, None, None, None, None, None, None, None, None, None, None),
        "type must be one of identify, track, group.assign, group.unassign, page, screen, copilot; got alias",
    ),
    "bad_track": (
        ("u1", "track", None, None, None, None, None, None, None, None, None, None, None, None, None),
        "event_name is required for track and copilot events",
    ),
    "bad_group": (
        ("u1", "group.unassign", None, "company", None, None, None, None, None, None, None, None, None, None, None),
        "group_name is required for group.assign and group.unassign events",
    ),
    "bad_page": (
        ("u1", "page", None, None, None, None, None, None, None, None, None, None, None, None, None),
        "url is required for page events",
    ),
    "bad_screen": (
        ("u1", "screen", None, None, None, None, None, None, None, None, None, None, None, None, None),
        "screen_name is required for screen events",
    ),
    "bad_copilot_no_name": (
        ("u1", "copilot", None, None, None, None, None, C, S, "hi", None, None, None, None, None),
        "event_name is required for track and copilot events",
    ),
    "bad_copilot_name": (
        ("u1", "copilot", "screeb_copilot_click", None, None, None, None, C, S, None, None, None, None, None, None),
        "event_name must be one of screeb_copilot_user_prompt, screeb_copilot_response, "
        "screeb_copilot_conversion, screeb_copilot_satisfaction for copilot events; got screeb_copilot_click "
        "(rule copilot_event_name)",
    ),
    "bad_prompt_no_conversation": (
        ("u1", "copilot", "screeb_copilot_user_prompt", None, None, None, None, None, S, "hi", None, None, None, None, None),
        "conversation_id is required for copilot events other than screeb_copilot_conversion",
    ),
    "bad_response_no_session": (
        ("u1", "copilot", "screeb_copilot_response", None, None, None, None, C, None, None, "ok", None, None, None, None),
        "copilot_session_id is required for copilot events other than screeb_copilot_conversion",
    ),
    "bad_satisfaction_no_ids": (
        ("u1", "copilot", "screeb_copilot_satisfaction", None, None, None, None, None, None, None, None, 4, 5, None, None),
        "conversation_id is required for copilot events other than screeb_copilot_conversion; "
        "copilot_session_id is required for copilot events other than screeb_copilot_conversion",
    ),
    "bad_prompt_missing": (
        ("u1", "copilot", "screeb_copilot_user_prompt", None, None, None, None, C, S, None, "an answer", None, None, None, None),
        "prompt is required for screeb_copilot_user_prompt events",
    ),
    "bad_prompt_too_long": (
        ("u1", "copilot", "screeb_copilot_user_prompt", None, None, None, None, C, S, "p" * 10_001, None, None, None, None, None),
        "prompt is 10001 characters, over the limit of 10000",
    ),
    "bad_response_missing": (
        ("u1", "copilot", "screeb_copilot_response", None, None, None, None, C, S, "a question", None, None, None, None, None),
        "response is required for screeb_copilot_response events",
    ),
    "bad_response_too_long": (
        ("u1", "copilot", "screeb_copilot_response", None, None, None, None, C, S, None, "r" * 12_000, None, None, None, None),
        "response is 12000 characters, over the limit of 10000",
    ),
    "bad_satisfaction_no_rating": (
        ("u1", "copilot", "screeb_copilot_satisfaction", None, None, None, None, C, S, None, None, None, 10, None, None),
        "rating is required for screeb_copilot_satisfaction events",
    ),
    "bad_satisfaction_no_scale": (
        ("u1", "copilot", "screeb_copilot_satisfaction", None, None, None, None, C, S, None, None, 3, None, None, None),
        "rating_scale is required for screeb_copilot_satisfaction events",
    ),
    "bad_conversation_too_long": (
        ("u1", "copilot", "screeb_copilot_response", None, None, None, None, "c" * 101, S, None, "ok", None, None, None, None),
        "conversation_id is 101 characters, over the limit of 100",
    ),
    "bad_session_too_long": (
        ("u1", "copilot", "screeb_copilot_user_prompt", None, None, None, None, C, "s" * 150, "hi", None, None, None, None, None),
        "copilot_session_id is 150 characters, over the limit of 100",
    ),
    "bad_context_locale": (
        ("u1", "identify", None, None, None, None, None, None, None, None, None, None, None, '{"locale": 5}', None),
        "context.locale must be a string, got 5 (rule context_locale_string)",
    ),
    "bad_properties": (
        ("u1", "identify", None, None, None, None, None, None, None, None, None, None, None, None, "[1, 2]"),
        "properties must be a JSON object, got [1, 2]",
    ),
}


def _insert(rows: list[tuple[object, ...]]) -> str:
    def lit(value: object) -> str:
        if value is None:
            return "NULL"
        if isinstance(value, int):
            return str(value)
        return "'" + str(value).replace("'", "''") + "'"

    return "INSERT INTO analytics.mixed VALUES " + ", ".join("(" + ", ".join(lit(v) for v in row) + ")" for row in rows)


def test_every_documented_rule_rejects_the_right_rows_and_the_rest_are_delivered(sandbox, warehouse, write_sync):
    bad: list[tuple[object, ...]] = [(key, *values) for key, (values, _) in BAD_ROWS.items()]
    warehouse(RULES_TABLE, _insert(GOOD_ROWS + bad))
    spec = write_sync(
        "mixed",
        """
        source: {table: analytics.mixed, key: id}
        destination: {vendor: screeb, endpoint: event}
        """,
        "SELECT * EXCLUDE (id) FROM source",
    )

    run = run_sync(spec)

    assert _rejections("mixed") == {key: reason for key, (_, reason) in BAD_ROWS.items()}
    assert run.rejected == len(BAD_ROWS) and run.delivered == len(GOOD_ROWS)
    received = {json.dumps(item, sort_keys=True) for item in sandbox.records("screeb", "event")}
    assert len(received) == len(GOOD_ROWS)
    by_type: dict[str, dict[str, object]] = {}
    for raw in received:
        item = json.loads(raw)
        by_type[item.get("event_name") or item["type"]] = item
    assert by_type[" "] == {"user_alias": "u4", "type": "track", "event_name": " "}  # sent as written
    assert by_type["Signed up"] == {"type": "track", "event_name": "Signed up"}  # no alias: none sent
    # rating and rating_scale are integers in the warehouse and strings at Screeb.
    assert by_type["screeb_copilot_satisfaction"]["rating"] == "5"
    assert by_type["screeb_copilot_satisfaction"]["rating_scale"] == "10"
    # A conversion needs no ids; NULL fields are omitted, not sent as null.
    assert by_type["screeb_copilot_conversion"] == {
        "user_alias": "u3", "type": "copilot", "event_name": "screeb_copilot_conversion"
    }
    assert by_type["identify"]["context"] == {"locale": "fr-FR"}
    assert by_type["identify"]["properties"] == {"plan": "pro", "seats": 3}
    assert by_type["group.assign"]["group_type"] == "company"


def test_choice_rows_without_alias_are_rejected_only_when_the_sync_opts_in(sandbox, warehouse, write_sync):
    """A choice: the document makes user_alias optional, so by default a NULL alias is omitted (Screeb
    creates an anonymous user) and a blank one is sent as written. ``strict: [user_alias_required]`` or
    ``options: {anonymous_users: false}`` reject the rows without one; ``user_alias_not_blank`` the blank."""
    warehouse(
        TRACK.format(n=30).replace("'user-' || (i % 37)", "CASE WHEN i % 10 = 0 THEN NULL WHEN i % 10 = 1 THEN '' ELSE 'user-' || i END")
    )
    default = write_sync("default", TRACK_SYNC, TRACK_SQL)
    run = run_sync(default)
    assert run.delivered == 30 and run.rejected == 0
    received = sandbox.records("screeb", "event")
    assert sum("user_alias" not in item for item in received) == 3  # NULL: omitted
    assert sum(item.get("user_alias") == "" for item in received) == 3  # blank: sent as the model wrote it

    missing = "user_alias is missing: Screeb would create an anonymous user (the sync asks for an alias on every row)"
    for name, extra in [
        ("by_rule", "    strict: [user_alias_required]\n"),
        ("by_option", None),
    ]:
        sandbox.reset()
        sync = TRACK_SYNC + extra if extra else TRACK_SYNC.replace(
            "endpoint: event}", "endpoint: event, options: {anonymous_users: false}}")
        run = run_sync(write_sync(name, sync, TRACK_SQL))
        assert run.delivered == 27 and run.rejected == 3, name
        assert set(_rejections(name).values()) == {f"{missing} (rule user_alias_required)"}
        assert all("user_alias" in item for item in sandbox.records("screeb", "event"))

    sandbox.reset()
    run = run_sync(write_sync("strict", TRACK_SYNC + "    strict: true\n", TRACK_SQL))
    assert run.delivered == 24 and run.rejected == 6
    assert set(_rejections("strict").values()) == {
        f"{missing} (rule user_alias_required)", "user_alias is blank (rule user_alias_not_blank)"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ("{anonymous_users: yes please}", "must be true or false"),
        ("{anonymous: true}", "unknown option"),
    ],
)
def test_bad_options_are_config_errors_naming_the_option(sandbox, write_sync, options, message):
    with pytest.raises(ConfigError) as error:
        write_sync("opts", TRACK_SYNC.replace("endpoint: event}", f"endpoint: event, options: {options}}}"), TRACK_SQL)
    assert error.value.field.startswith("destination.options.anonymous")
    assert message in error.value.message


USERS = """
    CREATE TABLE analytics.people AS SELECT * FROM (VALUES
        ('u1', 'ada@example.com', 'pro', TIMESTAMPTZ '2026-06-01 09:00:00+00'),
        ('u2', 'bob@example.com', NULL, TIMESTAMPTZ '2026-06-01 10:00:00+00')
    ) t(user_id, email, plan, updated_at)
"""
USERS_SQL = """
    SELECT _key, user_id AS user_alias, 'identify' AS type, {'email': email, 'plan': plan} AS properties
    FROM source
"""


@pytest.mark.parametrize("keep_nulls", [False, True])
def test_identify_null_traits_are_omitted_unless_keep_nulls(sandbox, warehouse, write_sync, keep_nulls):
    warehouse(USERS)
    spec = write_sync(
        "people",
        f"""
        source: {{table: analytics.people, key: user_id, cursor: updated_at}}
        destination: {{vendor: screeb, endpoint: event}}
        keep_nulls: {str(keep_nulls).lower()}
        """,
        USERS_SQL,
    )
    run = run_sync(spec)
    assert run.delivered == 2
    bob = next(item for item in sandbox.records("screeb", "event") if item["user_alias"] == "u2")
    if keep_nulls:
        assert bob["properties"] == {"email": "bob@example.com", "plan": None}  # null deletes the trait at Screeb
    else:
        assert bob["properties"] == {"email": "bob@example.com"}


def test_count_lower_than_sent_is_a_warning_in_the_run_notes(sandbox, warehouse, write_sync):
    warehouse(TRACK.format(n=50))
    spec = write_sync("track", TRACK_SYNC, TRACK_SQL)
    sandbox.emulator("screeb").control("undercount", {"by": 1, "requests": 1})

    run = run_sync(spec)

    assert run.status == "success" and run.delivered == 50  # still accepted: a 200 covers the request
    assert run.notes is not None and "Screeb counted 49 of 50 events" in run.notes
    (stored,) = open_ledger().runs("track")
    assert "Screeb counted 49 of 50 events" in stored["notes"]

    sandbox.reset()
    clean = write_sync("track2", TRACK_SYNC, TRACK_SQL)
    assert run_sync(clean).notes is None  # a matching count leaves no note


def test_server_side_400_is_bisected_to_the_bad_event_with_screebs_reason(sandbox, warehouse, write_sync):
    warehouse(TRACK.format(n=100).replace("'user-' || (i % 37)", "'user-' || i"))
    spec = write_sync("track", TRACK_SYNC, TRACK_SQL)
    sandbox.set_fault("screeb", "event", Fault("reject_matching", count=1000, match='"user-42"'))

    run = run_sync(spec)

    assert run.delivered == 99 and run.rejected == 1
    assert len({item["user_alias"] for item in sandbox.records("screeb", "event")}) == 99
    assert _rejections("track") == {
        "e00042": "Screeb refused the item (HTTP 400): item refused by server-side rule ('\"user-42\"')"
    }


@pytest.mark.parametrize("token", ["wrong-token-123", ScreebEmulator.keys["release_token"]])
def test_auth_failure_stops_the_sync_with_nothing_delivered(sandbox, warehouse, write_sync, monkeypatch, token):
    warehouse(TRACK.format(n=150))
    spec = write_sync("track", TRACK_SYNC, TRACK_SQL)
    monkeypatch.setenv("SCREEB_API_TOKEN", token)

    run = run_sync(spec)

    assert run.status == "stopped" and "HTTP 401" in (run.error or "")
    assert token not in (run.error or "")
    assert run.delivered == 0 and sandbox.records("screeb", "event") == []
    assert open_ledger().counts("track")["delivered"] == 0
    assert sandbox.stats()["screeb"]["event"]["by_status"] == {401: sandbox.stats()["screeb"]["event"]["requests"]}


RELEASES = """
    CREATE TABLE analytics.rel AS SELECT * FROM (VALUES
        ('r1', 'Spring release', 'Faster exports', '2.4.0', ['exports', 'performance'], TIMESTAMPTZ '2026-06-02 15:22:41+00'),
        ('r2', 'Hotfix', NULL, '2.4.1', NULL, NULL),
        ('r3', NULL, 'No name given', '2.5.0', ['oops'], TIMESTAMPTZ '2026-06-03 09:00:00+00')
    ) t(release_id, name, description, version, tags, released_at)
"""
RELEASES_SYNC = """
    source: {table: analytics.rel, key: release_id}
    destination: {vendor: screeb, endpoint: release}
"""
RELEASES_SQL = "SELECT _key, name, description, version, tags, released_at FROM source"


def test_releases_go_one_object_per_request_with_the_release_token(sandbox, warehouse, write_sync):
    warehouse(RELEASES)
    spec = write_sync("rel", RELEASES_SYNC, RELEASES_SQL)

    run = run_sync(spec)

    assert run.delivered == 2 and run.rejected == 1
    assert _rejections("rel") == {"r3": "name is required"}
    spring, hotfix = sorted(sandbox.records("screeb", "release"), key=lambda r: r["name"], reverse=True)
    assert spring == {
        "name": "Spring release",
        "description": "Faster exports",
        "version": "2.4.0",
        "tags": ["exports", "performance"],
        "released_at": "2026-06-02T15:22:41.000+00:00",
    }
    assert hotfix == {"name": "Hotfix", "version": "2.4.1"}  # released_at omitted: Screeb defaults it
    stats = sandbox.stats()["screeb"]["release"]
    assert stats["requests"] == 2 and stats["max_items_per_request"] == 1
    log = sandbox.emulator("screeb").request_log["release"]
    assert {e["headers"]["authorization"] for e in log} == {f"Bearer {ScreebEmulator.keys['release_token']}"}
    vendor_ids = {i["vendor_id"] for i in open_ledger().items("rel", state="delivered")}
    assert vendor_ids == {"rel_1", "rel_2"}


def test_choice_release_tags_must_be_strings_only_when_the_sync_opts_in(sandbox, warehouse, write_sync):
    """A choice: the document shows string tags in its example and says nothing else about them, so a list
    of numbers is sent as written unless the sync names ``tags_strings`` in ``strict``."""
    warehouse("CREATE TABLE analytics.rel AS SELECT 'r1' AS release_id, 'Beta' AS name, '1.0' AS version, [1, 2] AS tags")
    sql = "SELECT _key, name, version, tags FROM source"
    assert run_sync(write_sync("rel", RELEASES_SYNC, sql)).delivered == 1
    assert sandbox.records("screeb", "release") == [{"name": "Beta", "version": "1.0", "tags": [1, 2]}]

    run = run_sync(write_sync("rel_strict", RELEASES_SYNC + "    strict: [tags_strings]\n", sql))
    assert run.rejected == 1
    assert _rejections("rel_strict") == {"r1": "tags must be an array of strings, got [1, 2] (rule tags_strings)"}


def test_the_event_token_is_refused_on_release(sandbox, warehouse, write_sync, monkeypatch):
    warehouse(RELEASES)
    spec = write_sync("rel", RELEASES_SYNC, RELEASES_SQL)
    monkeypatch.setenv("SCREEB_RELEASE_TOKEN", ScreebEmulator.keys["api_token"])

    run = run_sync(spec)

    assert run.status == "stopped" and "HTTP 401" in (run.error or "")
    assert run.delivered == 0 and sandbox.records("screeb", "release") == []

    monkeypatch.delenv("SCREEB_RELEASE_TOKEN")
    with pytest.raises(SynclineError, match="SCREEB_RELEASE_TOKEN"):
        run_sync(spec)


def test_the_emulator_is_strict_to_the_document(sandbox):
    """Delivered only means something if the sandbox refuses what Screeb would refuse. Every refusal below
    is a documented rule except the release checks' reading of the document (name and version required)."""
    base = sandbox.base_url("screeb")
    event_auth = {"Authorization": f"Bearer {ScreebEmulator.keys['api_token']}"}
    release_auth = {"Authorization": f"Bearer {ScreebEmulator.keys['release_token']}"}
    good = {"user_alias": "u1", "type": "track", "event_name": "Signed up"}

    def post(path: str, body: object, headers: dict[str, str]) -> requests.Response:
        return requests.post(base + path, json=body, headers=headers, timeout=5)

    assert post("/1.0/event", [good], {}).status_code == 401
    assert post("/1.0/event", [good], release_auth).status_code == 401
    assert post("/1.0/release", {"name": "x"}, event_auth).status_code == 401
    assert post("/1.0/event", good, event_auth).status_code == 400  # an object, not an array
    assert post("/1.0/event", [], event_auth).status_code == 400
    assert post("/1.0/event", [good] * 101, event_auth).status_code == 400
    assert post("/1.0/release", [{"name": "x"}], release_auth).status_code == 400  # one object, not an array
    assert post("/1.0/release", {"description": "no name"}, release_auth).status_code == 400

    bad_prompt = {"type": "copilot", "event_name": "screeb_copilot_user_prompt", "conversation_id": "c",
                  "copilot_session_id": "s"}
    numeric_rating = {"type": "copilot", "event_name": "screeb_copilot_satisfaction", "conversation_id": "c",
                      "copilot_session_id": "s", "rating": 5, "rating_scale": "10"}
    refused = post("/1.0/event", [good, bad_prompt, numeric_rating], event_auth)
    assert refused.status_code == 400
    details = [(d["index"], d["field"]) for d in refused.json()["details"]]
    assert details == [(1, "prompt"), (2, "rating")]
    assert refused.json()["message"] == "[1].prompt: is required for copilot events"
    assert sandbox.records("screeb", "event") == []  # a refused batch stores nothing

    accepted = post("/1.0/event", [good, {"type": "copilot", "event_name": "screeb_copilot_conversion"}], event_auth)
    assert accepted.status_code == 200 and accepted.json() == {"count": 2, "lag": None}


def test_items_per_request_and_rate_stay_inside_the_documented_limits(sandbox_process, warehouse, write_sync):
    # 1,300 events in requests of 10: 130 requests, ~3 s at the limiter's 48/s. Without the limiter four
    # worker threads on localhost would far exceed 50/s and the sandbox would answer 429. The sandbox runs in
    # a process of its own, as a vendor does: in this one, its threads would wait for the GIL behind the
    # run's and time arrivals late and bunched.
    warehouse(TRACK.format(n=1300))
    spec = write_sync(
        "track",
        TRACK_SYNC + "    delivery: {max_items: 10, concurrency: 4, backoff_base: 0.01, backoff_cap: 0.05}\n",
        TRACK_SQL,
    )

    run = run_sync(spec)

    assert run.delivered == 1300 and run.http_429 == 0
    stats = sandbox_process.stats()["screeb"]["event"]
    assert stats["requests"] == 130
    assert stats["max_items_per_request"] <= 100
    assert stats["rate_limited"] == 0
    assert stats["max_in_window"] <= 50
