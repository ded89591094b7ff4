"""Screeb fidelity: hostile rows built from the document (docs/vendor-api/screeb.md), not from the
connector's code, through real syncs over HTTP to the sandbox.

What the document states, and so what is rejected locally (with the field or rule named, never at the
emulator, which must see no refusal at all):
- every item needs ``type``, one of the seven in the "Event types" table;
- the type-specific "Required: yes" fields: ``event_name`` (track, copilot), ``group_name``
  (group.assign/unassign), ``url`` (page), ``screen_name`` (screen); for copilot, ``event_name`` one of the
  four names, ``conversation_id``/``copilot_session_id`` except for a conversion, ``prompt``, ``response``,
  ``rating``/``rating_scale`` for their event names; "max 100 chars" ids and "max 10 000 chars" texts;
- ``context.locale``/``context.timezone`` strings; ``properties``/``context`` objects; JSON bodies (no NaN);
- releases: ``name`` and ``version`` (the connector's reading: the document marks only ``released_at``
  optional). ``tags`` a JSON array and ``released_at`` an ISO 8601 date or date-time are the shapes of the
  document's example body, its only description of them: the connector's reading of the example (a
  choice), which the emulator does not share (it accepts any value there).

What it does not say, and so is delivered exactly as the model wrote it (compared byte for byte with the
request bodies the sandbox received, see :func:`assert_sent_as_written`): a missing ``user_alias`` (an
anonymous user, as documented), empty and blank strings, texts and ids at their maximum length, any
Unicode, nested objects, extra context members, a field of another type (``url`` on a track event), a
release without description or tags, tags that are not strings, a ``released_at`` without an offset.

The checks the document does not make are opt-in rules (``strict``); the tests of them say "choice".
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pytest
import requests

from connectors.engine.endpoint import HttpResponse
from connectors.runner import run_sync
from connectors.sandbox import Fault, Sandbox
from connectors.sandbox.emulators.screeb import ERROR_SHAPES, ScreebEmulator
from connectors.vendors.screeb import EVENT, RELEASE
from tests.conftest import assert_nothing_refused_at_the_vendor, rejection_reasons

FIELDS = ("user_alias", "type", "event_name", "group_type", "group_name", "url", "screen_name", "conversation_id",
          "copilot_session_id", "prompt", "response", "rating", "rating_scale", "context", "properties")
OBJECTS = ("context", "properties")
EVENT_SYNC = """
    source: {table: analytics.rows, key: id}
    destination: {vendor: screeb, endpoint: event}
"""
EVENT_SQL = "SELECT * EXCLUDE (id) FROM source"
C, S = "conv-1", "sess-1"
P, R, CONV, SAT = ("screeb_copilot_user_prompt", "screeb_copilot_response", "screeb_copilot_conversion",
                   "screeb_copilot_satisfaction")


def row(key: str, **values: Any) -> tuple[Any, ...]:
    unknown = set(values) - set(FIELDS)
    assert not unknown, unknown
    return (key, *(values.get(name) for name in FIELDS))


def load(warehouse: Callable[..., Path], columns: Sequence[str], rows: Sequence[Sequence[Any]], table: str = "rows") -> None:
    """analytics.<table>, every column VARCHAR, rows inserted as parameters (no SQL quoting of the values)."""
    con = duckdb.connect(str(warehouse()))
    try:
        con.execute(f"CREATE TABLE analytics.{table} (id VARCHAR, " + ", ".join(f"{c} VARCHAR" for c in columns) + ")")
        con.executemany(f"INSERT INTO analytics.{table} VALUES (?{', ?' * len(columns)})", [list(r) for r in rows])
    finally:
        con.close()


def expected_item(values: Sequence[Any], columns: Sequence[str], objects: Sequence[str]) -> dict[str, Any]:
    """The payload the model produced: every non-NULL column (the key aside), JSON text parsed."""
    return {name: json.loads(v) if name in objects else v
            for name, v in zip(columns, values[1:], strict=True) if v is not None}


def canonical(items: Sequence[Any]) -> list[str]:
    return sorted(json.dumps(item, sort_keys=True, ensure_ascii=False) for item in items)


def wire_text(values: Sequence[Any], columns: Sequence[str], objects: Sequence[str], order: Sequence[str]) -> str:
    """The exact JSON text of the item a row must become: fields in the endpoint's declared order, JSON text
    columns byte for byte as the model wrote them (JSON ``null`` omitted, like NULL), strings JSON-encoded
    (UTF-8 as is, only what JSON requires escaped), nothing added."""
    given = dict(zip(columns, values[1:], strict=True))
    parts = []
    for name in order:
        value = given.get(name)
        if value is None or (name in objects and value.strip() == "null"):
            continue
        parts.append(json.dumps(name) + ":" + (value if name in objects else json.dumps(value, ensure_ascii=False)))
    return "{" + ",".join(parts) + "}"


def assert_sent_as_written(sandbox: Sandbox, endpoint: str, rows: Sequence[Sequence[Any]],
                           columns: Sequence[str], objects: Sequence[str]) -> None:
    """Item 8 of the review: every row's item appears, byte for byte, in a request body the sandbox received."""
    order = [f.name for f in (EVENT if endpoint == "event" else RELEASE).fields]
    wire = b"\n".join(sandbox.bodies("screeb", endpoint, status=200)).decode("utf-8")
    missing = [r[0] for r in rows if wire_text(r, columns, objects, order) not in wire]
    assert not missing, (missing, wire[:2000])





# key -> (row values, what the reason must contain: the field and, for a named rule, the rule)
EVENT_BAD: dict[str, tuple[dict[str, Any], str]] = {
    "no_type": ({"user_alias": "u", "event_name": "x"}, "type is required"),
    "unknown_type": ({"user_alias": "u", "type": "alias"}, "type must be one of"),
    "padded_type": ({"user_alias": "u", "type": " track ", "event_name": "x"}, "type must be one of"),
    "capital_type": ({"user_alias": "u", "type": "Track", "event_name": "x"}, "type must be one of"),
    "track_no_name": ({"user_alias": "u", "type": "track"}, "event_name is required for track"),
    "copilot_no_name": ({"type": "copilot", "conversation_id": C, "copilot_session_id": S, "prompt": "hi"},
                        "event_name is required for track and copilot"),
    "copilot_unknown_name": ({"type": "copilot", "event_name": "screeb_copilot_click"}, "(rule copilot_event_name)"),
    "copilot_blank_name": ({"type": "copilot", "event_name": ""}, "(rule copilot_event_name)"),
    "assign_no_group": ({"user_alias": "u", "type": "group.assign", "group_type": "company"}, "group_name is required"),
    "unassign_no_group": ({"user_alias": "u", "type": "group.unassign"}, "group_name is required"),
    "page_no_url": ({"type": "page"}, "url is required for page events"),
    "screen_no_name": ({"type": "screen"}, "screen_name is required for screen events"),
    "prompt_no_conversation": ({"type": "copilot", "event_name": P, "copilot_session_id": S, "prompt": "hi"},
                               "conversation_id is required"),
    "response_no_session": ({"type": "copilot", "event_name": R, "conversation_id": C, "response": "ok"},
                            "copilot_session_id is required"),
    "satisfaction_no_ids": ({"type": "copilot", "event_name": SAT, "rating": "4", "rating_scale": "5"},
                            "conversation_id is required"),
    "prompt_missing": ({"type": "copilot", "event_name": P, "conversation_id": C, "copilot_session_id": S},
                       "prompt is required"),
    "response_missing": ({"type": "copilot", "event_name": R, "conversation_id": C, "copilot_session_id": S},
                         "response is required"),
    "rating_missing": ({"type": "copilot", "event_name": SAT, "conversation_id": C, "copilot_session_id": S,
                        "rating_scale": "10"}, "rating is required"),
    "scale_missing": ({"type": "copilot", "event_name": SAT, "conversation_id": C, "copilot_session_id": S,
                       "rating": "3"}, "rating_scale is required"),
    "conversation_101": ({"type": "copilot", "event_name": R, "conversation_id": "c" * 101, "copilot_session_id": S,
                          "response": "ok"}, "conversation_id is 101 characters, over the limit of 100"),
    "session_101": ({"type": "copilot", "event_name": P, "conversation_id": C, "copilot_session_id": "é" * 101,
                     "prompt": "hi"}, "copilot_session_id is 101 characters, over the limit of 100"),
    "prompt_10001": ({"type": "copilot", "event_name": P, "conversation_id": C, "copilot_session_id": S,
                      "prompt": "é" * 10_001}, "prompt is 10001 characters, over the limit of 10000"),
    "response_10001": ({"type": "copilot", "event_name": R, "conversation_id": C, "copilot_session_id": S,
                        "response": "r" * 10_001}, "response is 10001 characters, over the limit of 10000"),
    "locale_number": ({"type": "identify", "context": '{"locale": 5}'}, "context.locale must be a string"),
    "timezone_object": ({"type": "identify", "context": '{"timezone": {"name": "UTC"}}'},
                        "context.timezone must be a string"),
    "context_array": ({"type": "identify", "context": '["en-US"]'}, "context must be"),
    "properties_array": ({"type": "identify", "properties": "[1, 2]"}, "properties must be"),
    "properties_text": ({"type": "identify", "properties": "plan=pro"}, "properties must be"),
    "properties_nan": ({"type": "identify", "properties": '{"score": NaN}'}, "properties"),
    "context_infinity": ({"type": "identify", "context": '{"x": [-Infinity]}'}, "context"),
}
EVENT_EDGE: dict[str, dict[str, Any]] = {
    "anonymous_identify": {"type": "identify", "properties": '{"plan": "pro"}'},
    "blank_alias": {"user_alias": "", "type": "track", "event_name": "Signed up"},
    "space_alias": {"user_alias": " ", "type": "identify"},
    "blank_event_name": {"user_alias": "u", "type": "track", "event_name": ""},
    "blank_group": {"user_alias": "u", "type": "group.assign", "group_name": ""},
    "unassign_with_type": {"user_alias": "u", "type": "group.unassign", "group_type": "team", "group_name": "Ops"},
    "blank_url": {"type": "page", "url": ""},
    "blank_screen": {"type": "screen", "screen_name": " "},
    "prompt_at_limit": {"user_alias": "u", "type": "copilot", "event_name": P, "conversation_id": "c" * 100,
                        "copilot_session_id": "é" * 100, "prompt": "é" * 10_000},
    "response_at_limit": {"user_alias": "u", "type": "copilot", "event_name": R, "conversation_id": C,
                          "copilot_session_id": S, "response": "r" * 10_000},
    "conversion_bare": {"type": "copilot", "event_name": CONV},
    "satisfaction_blank_rating": {"type": "copilot", "event_name": SAT, "conversation_id": C,
                                  "copilot_session_id": S, "rating": "", "rating_scale": "0"},
    "unicode": {"user_alias": "ユーザー😀", "type": "track", "event_name": "e\u0301 مرحبا 👩‍👩‍👧\t\n",
                "properties": '{"emoji": "🇫🇷", "ctl": "\\u0001\\u001f", "line_sep": "\\u2028"}'},
    "nested": {"user_alias": "u", "type": "identify",
               "properties": '{"a": {"b": [1, 2.5, {"c": null}], "d": true}, "big": 9007199254740993, "": "k"}',
               "context": '{"locale": "", "timezone": null, "app": {"version": "4.2"}}'},
    "url_on_track": {"user_alias": "u", "type": "track", "event_name": "x", "url": "https://example.com/"},
    "empty_objects": {"user_alias": "u", "type": "identify", "properties": "{}", "context": "{}"},
    "long_alias": {"user_alias": "a" * 50_000, "type": "identify"},
}


def test_events_breaking_a_documented_rule_are_rejected_locally_naming_the_field(sandbox, warehouse, write_sync):
    good = row("good", user_alias="u1", type="track", event_name="Signed up")
    load(warehouse, FIELDS, [good, *[row(key, **values) for key, (values, _) in EVENT_BAD.items()]])
    run = run_sync(write_sync("bad_events", EVENT_SYNC, EVENT_SQL))

    found = rejection_reasons("bad_events")
    assert set(found) == set(EVENT_BAD)
    for key, (_, reason) in EVENT_BAD.items():
        assert reason in found[key], (key, found[key])
    assert run.delivered == 1
    assert sandbox.records("screeb", "event") == [{"user_alias": "u1", "type": "track", "event_name": "Signed up"}]
    assert_nothing_refused_at_the_vendor(sandbox, "screeb", "event")


def test_edge_events_are_delivered_exactly_as_the_model_wrote_them(sandbox, warehouse, write_sync):
    rows = [row(key, **values) for key, values in EVENT_EDGE.items()]
    load(warehouse, FIELDS, rows)
    run = run_sync(write_sync("edge_events", EVENT_SYNC, EVENT_SQL))

    assert rejection_reasons("edge_events") == {}
    assert run.delivered == len(EVENT_EDGE)
    assert_sent_as_written(sandbox, "event", rows, FIELDS, OBJECTS)
    expected = [expected_item(r, FIELDS, OBJECTS) for r in rows]
    assert canonical(sandbox.records("screeb", "event")) == canonical(expected)  # and stored as sent
    assert_nothing_refused_at_the_vendor(sandbox, "screeb", "event")
    assert sandbox.stats()["screeb"]["event"]["max_items_per_request"] <= 100


def test_numbers_in_string_fields_are_sent_as_their_text(sandbox, warehouse, write_sync):
    """The one documented conversion: ``rating``/``rating_scale`` are strings at Screeb, integers here."""
    warehouse("CREATE TABLE analytics.rows AS SELECT 'r1' AS id, 5 AS rating, 10 AS rating_scale, 2.5 AS half")
    sql = (f"SELECT _key, 'copilot' AS type, '{SAT}' AS event_name, '{C}' AS conversation_id, "
           f"'{S}' AS copilot_session_id, rating, rating_scale, {{'half': half}} AS properties FROM source")
    assert run_sync(write_sync("numbers", EVENT_SYNC, sql)).delivered == 1
    (item,) = sandbox.records("screeb", "event")
    assert item["rating"] == "5" and item["rating_scale"] == "10" and item["properties"] == {"half": 2.5}


def test_json_null_objects_are_omitted_not_rejected(sandbox, warehouse, write_sync):
    """``properties`` and ``context`` are optional: a JSON ``null`` there means "none", like a NULL column."""
    load(warehouse, FIELDS, [row("nulls", user_alias="u", type="identify", properties="null", context="null")])
    run = run_sync(write_sync("null_objects", EVENT_SYNC, EVENT_SQL))
    assert rejection_reasons("null_objects") == {} and run.delivered == 1
    assert sandbox.records("screeb", "event") == [{"user_alias": "u", "type": "identify"}]


def test_nan_and_infinity_in_structs_are_rejected_locally_and_never_reach_the_wire(sandbox, warehouse, write_sync):
    warehouse("""CREATE TABLE analytics.rows AS SELECT * FROM (VALUES
        ('nan', {'score': 'NaN'::DOUBLE, 'deep': {'l': [1.0]}}),
        ('inf', {'score': 1.0, 'deep': {'l': ['Infinity'::DOUBLE]}}),
        ('ok', {'score': 0.5, 'deep': {'l': [-1.0]}})) t(id, props)""")
    spec = write_sync("nan", EVENT_SYNC, "SELECT _key, 'u' AS user_alias, 'identify' AS type, props AS properties FROM source")
    run = run_sync(spec)
    found = rejection_reasons("nan")
    assert set(found) == {"nan", "inf"} and all("properties" in reason for reason in found.values())
    assert run.delivered == 1
    assert sandbox.records("screeb", "event")[0]["properties"] == {"score": 0.5, "deep": {"l": [-1.0]}}
    assert_nothing_refused_at_the_vendor(sandbox, "screeb", "event")


# --- releases ------------------------------------------------------------------------------------------
RELEASE_COLUMNS = ("name", "description", "version", "tags", "released_at")
RELEASE_SYNC = """
    source: {table: analytics.releases, key: id}
    destination: {vendor: screeb, endpoint: release}
"""
RELEASE_SQL = "SELECT _key, name, description, version, CAST(tags AS JSON) AS tags, released_at FROM source"
RELEASE_BAD: dict[str, tuple[tuple[Any, ...], str]] = {
    "no_name": ((None, "d", "1.0", None, None), "name is required"),
    "no_version": (("Spring", "d", None, '["a"]', None), "version is required"),
    # The example's shapes (the connector's reading of the example body, its only description of these):
    "tags_not_array": (("Spring", None, "1.0", '"API"', None), "tags must be a JSON array"),
    "released_not_a_time": (("Spring", None, "1.0", None, "next week"), "released_at must be an ISO 8601"),
}
RELEASE_EDGE: list[tuple[Any, ...]] = [
    ("blank_name_and_version", "", None, "", None, None),
    ("bare", "Hotfix", None, "2.4.1", None, None),
    ("empty_tags", "Dark mode", "", "3.10", "[]", None),
    ("unicode", "Version « été » 🚀", "Notes\nwith lines\tand tabs", "v2.0.0-β+build.5", '["é", "", "日本"]',
     "1970-01-01T00:00:00+00:00"),
    ("example", "My release name", "My release description", "1.0", '["API", "V1"]', "2023-03-22T15:22:41+00:00"),
    ("long", "n" * 20_000, "d" * 100_000, "1" * 1_000, json.dumps(["t"] * 500), "9999-12-31T23:59:59.999+14:00"),
    # Not forbidden by the document (it shows one example body): sent as written unless the sync opts in.
    ("number_tags", "Spring", None, "1.0", "[1, 2.50, true, null]", None),
    ("nested_tags", "Spring", None, "1.0", '[["a"], {"b": "c"}]', None),
    ("released_without_offset", "Spring", None, "1.0", None, "2023-03-22T15:22:41"),
    ("released_date_only", "Spring", None, "1.0", None, "2023-03-22"),
    ("released_basic_format", "Spring", None, "1.0", None, "20230322T152241Z"),
]


def test_releases_breaking_the_document_are_rejected_locally(sandbox, warehouse, write_sync):
    good = ("good", "Spring", None, "2.4.0", None, None)
    load(warehouse, RELEASE_COLUMNS, [good, *[(key, *values) for key, (values, _) in RELEASE_BAD.items()]],
         table="releases")
    run = run_sync(write_sync("bad_releases", RELEASE_SYNC, RELEASE_SQL))

    found = rejection_reasons("bad_releases")
    assert set(found) == set(RELEASE_BAD)
    for key, (_, reason) in RELEASE_BAD.items():
        assert reason in found[key], (key, found[key])
    assert run.delivered == 1
    assert sandbox.records("screeb", "release") == [{"name": "Spring", "version": "2.4.0"}]
    assert_nothing_refused_at_the_vendor(sandbox, "screeb", "release")


def test_edge_releases_are_delivered_exactly_as_the_model_wrote_them(sandbox, warehouse, write_sync):
    load(warehouse, RELEASE_COLUMNS, RELEASE_EDGE, table="releases")
    run = run_sync(write_sync("edge_releases", RELEASE_SYNC, RELEASE_SQL))

    assert rejection_reasons("edge_releases") == {}
    assert run.delivered == len(RELEASE_EDGE)
    assert_sent_as_written(sandbox, "release", RELEASE_EDGE, RELEASE_COLUMNS, ("tags",))
    expected = [expected_item(r, RELEASE_COLUMNS, ("tags",)) for r in RELEASE_EDGE]
    assert canonical(sandbox.records("screeb", "release")) == canonical(expected)  # and stored as sent
    assert_nothing_refused_at_the_vendor(sandbox, "screeb", "release")


# --- choices: opt-in rules ------------------------------------------------------------------------------
def test_choice_strict_rejects_blank_texts_and_rows_without_alias(sandbox, warehouse, write_sync):
    """Choices, not documented rules: with ``strict: true`` blank identity/name texts and rows without an
    alias are rejected, each reason naming its rule; the rest of the edge rows still go out."""
    rows = [row(key, **values) for key, values in EVENT_EDGE.items()]
    load(warehouse, FIELDS, rows)
    run = run_sync(write_sync("strict_events", EVENT_SYNC + "    strict: true\n", EVENT_SQL))
    found = rejection_reasons("strict_events")
    no_alias = "(rule user_alias_required)"
    assert {key for key, reason in found.items() if no_alias in reason} == {
        "anonymous_identify", "blank_url", "blank_screen", "conversion_bare", "satisfaction_blank_rating"}
    assert "(rule user_alias_not_blank)" in found["blank_alias"] and "(rule user_alias_not_blank)" in found["space_alias"]
    assert found["blank_event_name"] == "event_name is blank (rule event_name_not_blank)"
    assert found["blank_group"] == "group_name is blank (rule group_name_not_blank)"
    assert "url is blank (rule url_not_blank)" in found["blank_url"]
    assert "screen_name is blank (rule screen_name_not_blank)" in found["blank_screen"]
    assert run.delivered == len(EVENT_EDGE) - len(found)
    assert_nothing_refused_at_the_vendor(sandbox, "screeb", "event")


def test_choice_releases_without_description_or_tags_are_rejected_only_when_named(sandbox, warehouse, write_sync):
    """A choice: the document does not say a release needs a description or tags (opt-in rules)."""
    load(warehouse, RELEASE_COLUMNS, RELEASE_EDGE, table="releases")
    spec = write_sync("strict_releases", RELEASE_SYNC + "    strict: [description_required, tags_required]\n", RELEASE_SQL)
    run = run_sync(spec)
    missing = ("description is missing (the sync asks for one on every release) (rule description_required); "
               "tags are missing (the sync asks for them on every release) (rule tags_required)")
    without_description = "description is missing (the sync asks for one on every release) (rule description_required)"
    assert rejection_reasons("strict_releases") == {
        "number_tags": without_description,
        "nested_tags": without_description,
        "released_without_offset": missing,
        "released_date_only": missing,
        "released_basic_format": missing,
        "blank_name_and_version": "description is missing (the sync asks for one on every release) "
                                  "(rule description_required); tags are missing (the sync asks for them on every "
                                  "release) (rule tags_required)",
        "bare": "description is missing (the sync asks for one on every release) (rule description_required); "
                "tags are missing (the sync asks for them on every release) (rule tags_required)",
    }
    assert run.delivered == len(RELEASE_EDGE) - 7


def test_choice_release_tags_strings_and_released_at_offset_only_when_opted_in(sandbox, warehouse, write_sync):
    """Choices (review item 5): the document shows tags as strings and released_at with an offset in its
    one example body, and says no more. ``strict: [tags_strings, released_at_has_offset]`` rejects the
    others, each reason naming its rule; by default they are delivered (see the edge releases test)."""
    load(warehouse, RELEASE_COLUMNS, RELEASE_EDGE, table="releases")
    spec = write_sync("opt_in_releases", RELEASE_SYNC + "    strict: [tags_strings, released_at_has_offset]\n",
                      RELEASE_SQL)
    run = run_sync(spec)
    assert rejection_reasons("opt_in_releases") == {
        "number_tags": "tags must be an array of strings, got [1, 2.50, true, null] (rule tags_strings)",
        "nested_tags": 'tags must be an array of strings, got [["a"], {"b": "c"}] (rule tags_strings)',
        "released_without_offset": "released_at has no UTC offset (a date alone or a local time), and Screeb's "
                                   "time zone for it is not documented; got 2023-03-22T15:22:41 "
                                   "(rule released_at_has_offset)",
        "released_date_only": "released_at has no UTC offset (a date alone or a local time), and Screeb's time "
                              "zone for it is not documented; got 2023-03-22 (rule released_at_has_offset)",
    }
    assert run.delivered == len(RELEASE_EDGE) - 4  # 20230322T152241Z has its offset (Z)
    assert_nothing_refused_at_the_vendor(sandbox, "screeb", "release")


# --- the emulator must not copy the connector's guesses ------------------------------------------------------
@pytest.mark.parametrize("shape", ERROR_SHAPES)
def test_any_400_body_still_rejects_the_right_item_with_a_readable_reason(sandbox, warehouse, write_sync, shape):
    """The 400 body is undocumented: whatever its shape (details, a list of strings, a nested error, a bare
    array, plain text, HTML, nothing, JSON without a message), bisection isolates the refused item and its
    reason quotes what the server said (or at least the status)."""
    load(warehouse, FIELDS, [row(f"e{i:03d}", user_alias=f"user-{i}", type="track", event_name="E") for i in range(100)])
    sandbox.emulator("screeb").control("error_shape", {"shape": shape})
    sandbox.set_fault("screeb", "event", Fault("reject_matching", count=1000, match='"user-42"'))

    run = run_sync(write_sync("shapes", EVENT_SYNC, EVENT_SQL))

    assert run.delivered == 99 and run.rejected == 1
    found = rejection_reasons("shapes")
    assert list(found) == ["e042"]
    reason = found["e042"]
    assert reason.startswith("Screeb refused the item (HTTP 400): "), reason
    if shape == "empty":
        assert reason.endswith("(empty body)")
    elif shape == "unrelated":
        assert '"code": 4001' in reason
    else:
        assert "item refused by server-side rule" in reason, reason
    assert len({item["user_alias"] for item in sandbox.records("screeb", "event")}) == 99


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (400, b'{"errors": [{"path": ["0", "user_alias"], "message": "bad alias"}]}',
         "Screeb refused the item (HTTP 400): 0.user_alias: bad alias"),
        (400, b'{"error": {"message": "nope", "code": 12}}', "Screeb refused the item (HTTP 400): nope"),
        (400, b'"just a string"', "Screeb refused the item (HTTP 400): just a string"),
        (400, b'[{"msg": "first"}, "second"]', "Screeb refused the item (HTTP 400): first; second"),
        (400, b"<html>\n  <b>Bad</b>\n</html>", "Screeb refused the item (HTTP 400): <html> <b>Bad</b> </html>"),
        (400, b"null", "Screeb refused the item (HTTP 400): null"),
        (422, b'{"detail": [{"loc": ["body", 0, "type"], "msg": "bad type"}]}',
         "Screeb refused the item (HTTP 422): body.0.type: bad type"),
        (500, b'{"message": "boom"}', "HTTP 500: boom"),
    ],
)
def test_error_reasons_read_any_body(status, body, reason):
    assert EVENT.error_reason(HttpResponse(status, {}, body, 0.01)) == reason


def test_the_emulator_accepts_what_the_document_allows(sandbox):
    """Where the document is silent the emulator accepts every plausible variant; the two refusals at the end
    are named assumptions (unknown fields, null strings) the connector never relies on."""
    base = sandbox.base_url("screeb")
    events = {"Authorization": f"Bearer {ScreebEmulator.keys['api_token']}", "Content-Type": "application/json"}
    releases = {"Authorization": f"Bearer {ScreebEmulator.keys['release_token']}", "Content-Type": "application/json"}

    def post(path: str, body: bytes, headers: dict[str, str]) -> requests.Response:
        return requests.post(base + path, data=body, headers=headers, timeout=5)

    allowed = [
        {"type": "identify"},
        {"user_alias": "", "type": "track", "event_name": ""},
        {"user_alias": " ", "type": "group.assign", "group_name": ""},
        {"type": "page", "url": "", "screen_name": "also here"},
        {"type": "screen", "screen_name": ""},
        {"type": "copilot", "event_name": SAT, "conversation_id": "", "copilot_session_id": "", "rating": "",
         "rating_scale": ""},
        {"type": "identify", "context": {"locale": "", "timezone": None, "extra": [1]}, "properties": {"a": {"b": None}}},
    ]
    assert post("/1.0/event", json.dumps(allowed).encode(), events).status_code == 200
    for release in ({"name": "", "version": ""}, {"name": "x", "version": "1", "tags": []},
                    # tags and released_at: the document gives only an example, so any value is accepted
                    {"name": "x", "version": "1", "tags": [1, None, ["a"]], "released_at": "2023-03-22T15:22:41"},
                    {"name": "x", "version": "1", "tags": "API, V1", "released_at": "2023-03-22"},
                    {"name": "x", "version": "1", "tags": {"a": 1}, "released_at": 1679498561},
                    {"name": "x", "version": "1", "tags": None, "released_at": "next week"}):
        assert post("/1.0/release", json.dumps(release).encode(), releases).status_code == 200, release
    assert post("/1.0/release", json.dumps({"name": "x", "description": "no version"}).encode(), releases).status_code == 400

    before = sandbox.stats()["screeb"]["event"]["invalid_json"]
    assert post("/1.0/event", b'[{"type": "identify", "properties": {"a": NaN}}]', events).status_code == 400
    assert sandbox.stats()["screeb"]["event"]["invalid_json"] == before + 1

    # Assumptions (stricter than the document): unknown fields and null strings are refused.
    assert post("/1.0/event", b'[{"type": "identify", "userId": "u"}]', events).status_code == 400
    assert post("/1.0/event", b'[{"type": "identify", "user_alias": null}]', events).status_code == 400
    assert len(sandbox.records("screeb", "event")) == len(allowed)
