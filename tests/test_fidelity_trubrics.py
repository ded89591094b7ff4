"""Trubrics fidelity: hostile rows built from the document (docs/vendor-api/trubrics.md), not from the
connector's code, through real syncs over HTTP to the sandbox.

What the OpenAPI document states, and so what is rejected locally (with the field named, never at the
emulator, which must see no refusal at all):
- ``Event.required: [user_id, event, timestamp]``, ``LLMEvent.required: [user_id, prompt, generation]``;
- ``timestamp: format: date-time`` (RFC 3339: a date, a time and an offset); ``latency: type: number``;
  ``properties: type: object``;
- ``maxItems: 100`` per request; JSON bodies (so no NaN/Infinity anywhere).

What it does not say, and so is delivered exactly as the model wrote it (compared byte for byte with the
request bodies the sandbox received, see :func:`assert_sent_as_written`, and value for value with what it
stored): empty and blank strings, a negative latency, a ``$thread_id`` that is not a string,
very long strings, any Unicode, nested objects, timestamps from year 1 to 9999 with any offset.

The checks the document does not make are opt-in rules (``strict``); the tests of them say "choice".
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pytest
import requests

from connectors.errors import ConfigError
from connectors.runner import run_sync
from connectors.sandbox import Fault, Sandbox
from connectors.sandbox.emulators.trubrics import ERROR_SHAPES, TrubricsEmulator
from connectors.vendors.trubrics import PUBLISH_EVENTS, PUBLISH_LLM_EVENTS
from tests.conftest import assert_nothing_refused_at_the_vendor, rejection_reasons

EVENT_COLUMNS = {"id": "VARCHAR", "user_id": "VARCHAR", "event": "VARCHAR", "ts": "VARCHAR", "props": "VARCHAR"}
EVENTS_SYNC = """
    source: {table: analytics.rows, key: id}
    destination: {vendor: trubrics, endpoint: publish_events}
"""
EVENTS_SQL = "SELECT _key, user_id, event, ts AS timestamp, props AS properties FROM source"

LLM_COLUMNS = {
    "id": "VARCHAR", "user_id": "VARCHAR", "prompt": "VARCHAR", "generation": "VARCHAR", "assistant_id": "VARCHAR",
    "ts": "VARCHAR", "latency": "DOUBLE", "prompt_event_name": "VARCHAR", "generation_event_name": "VARCHAR",
    "props": "VARCHAR",
}
LLM_SYNC = """
    source: {table: analytics.rows, key: id}
    destination: {vendor: trubrics, endpoint: publish_llm_events}
"""
LLM_SQL = (
    "SELECT _key, user_id, prompt, generation, assistant_id, ts AS timestamp, latency, prompt_event_name, "
    "generation_event_name, props AS properties FROM source"
)
T = "2026-06-20T12:00:00Z"
RENAME = {"ts": "timestamp", "props": "properties"}


def load(warehouse: Callable[..., Path], columns: dict[str, str], rows: Sequence[Sequence[Any]],
         table: str = "rows") -> None:
    """analytics.<table> with these column types, rows inserted as parameters (no SQL quoting of the values)."""
    path = warehouse()
    con = duckdb.connect(str(path))
    try:
        con.execute(f"CREATE TABLE analytics.{table} (" + ", ".join(f"{n} {t}" for n, t in columns.items()) + ")")
        con.executemany(f"INSERT INTO analytics.{table} VALUES ({', '.join('?' for _ in columns)})", [list(r) for r in rows])
    finally:
        con.close()


def expected_item(row: Sequence[Any], columns: dict[str, str], rename: dict[str, str]) -> dict[str, Any]:
    """The payload the model produced for a row: every non-NULL column under its field name, JSON text parsed."""
    item: dict[str, Any] = {}
    for (column, _), value in zip(columns.items(), row, strict=True):
        if column == "id" or value is None:
            continue
        item[rename.get(column, column)] = json.loads(value) if column == "props" else value
    return item


def canonical(items: Sequence[Any]) -> list[str]:
    return sorted(json.dumps(item, sort_keys=True, ensure_ascii=False) for item in items)


def wire_pattern(row: Sequence[Any], columns: dict[str, str], rename: dict[str, str], endpoint: str) -> re.Pattern[str]:
    """The exact JSON text of the item a row must become, as a pattern: fields in the endpoint's declared
    order, JSON text (``props``) byte for byte as the model wrote it (JSON ``null`` omitted, like NULL),
    strings JSON-encoded (UTF-8 as is, only what JSON requires escaped), nothing added. A DOUBLE column has
    no text of its own: its number is captured, and compared exactly by :func:`assert_sent_as_written`."""
    given = {rename.get(c, c): (v, t) for (c, t), v in zip(columns.items(), row, strict=True) if c != "id"}
    order = [f.name for f in (PUBLISH_EVENTS if endpoint == "publish_events" else PUBLISH_LLM_EVENTS).fields]
    parts = []
    for name in order:
        value, sql_type = given.get(name, (None, None))
        if value is None or (name == "properties" and value.strip() == "null"):
            continue
        if sql_type == "DOUBLE":
            text = "(-?[0-9][0-9.eE+-]*)"
        else:
            text = re.escape(value if name == "properties" else json.dumps(value, ensure_ascii=False))
        parts.append(re.escape(json.dumps(name) + ":") + text)
    return re.compile(re.escape("{") + re.escape(",").join(parts) + re.escape("}"))


def assert_sent_as_written(sandbox: Sandbox, endpoint: str, rows: Sequence[Sequence[Any]],
                           columns: dict[str, str], rename: dict[str, str]) -> None:
    """Review item 8: every row's item appears byte for byte in a request body the sandbox received (its
    DOUBLE values as the same doubles)."""
    wire = b"\n".join(sandbox.bodies("trubrics", endpoint, status=200)).decode("utf-8")
    missing = []
    for row in rows:
        found = wire_pattern(row, columns, rename, endpoint).search(wire)
        doubles = [v for (c, t), v in zip(columns.items(), row, strict=True) if t == "DOUBLE" and v is not None]
        if found is None or [float(g) for g in found.groups()] != doubles:
            missing.append(row[0])
    assert not missing, (missing, wire[:2000])





EVENT_BAD_ROWS: dict[str, tuple[tuple[Any, ...], str]] = {
    # key -> ((user_id, event, ts, props), the field the reason must start with)
    "no_user_id": ((None, "Signed up", T, None), "user_id is required"),
    "no_event": (("u1", None, T, None), "event is required"),
    "no_timestamp": (("u1", "Signed up", None, None), "timestamp is required"),
    "ts_without_offset": (("u1", "Signed up", "2026-06-20T12:00:00", None), "timestamp must be"),
    "ts_date_only": (("u1", "Signed up", "2026-06-20", None), "timestamp must be"),
    "ts_not_a_time": (("u1", "Signed up", "yesterday", None), "timestamp must be"),
    "properties_array": (("u1", "Signed up", T, "[1, 2]"), "properties must be"),
    "properties_string": (("u1", "Signed up", T, '"text"'), "properties must be"),
    "properties_number": (("u1", "Signed up", T, "3"), "properties must be"),
    "properties_not_json": (("u1", "Signed up", T, "{oops"), "properties must be"),
    "properties_nan": (("u1", "Signed up", T, '{"a": NaN}'), "properties"),
    "properties_deep_infinity": (("u1", "Signed up", T, '{"a": {"b": [1, -Infinity]}}'), "properties"),
}
EVENT_EDGE_ROWS: list[tuple[Any, ...]] = [
    # (id, user_id, event, ts, props): all valid by the document, each at an edge
    ("blank_strings", "", "   ", T, None),
    ("whitespace_only", "\t\n", "\u2028", T, None),
    ("unicode", "ユーザー😀", "e\u0301 مرحبا 👩‍👩‍👧", T, '{"emoji": "🇫🇷", "ctl": "\\u0001\\u001f", "rtl": "שלום"}'),
    ("long_text", "u" * 100_000, "é" * 50_000, T, None),
    ("nested", "u1", "Nested", T,
     '{"a": {"b": [1, 2.5, {"c": null}], "d": true}, "big": 9007199254740993, "tiny": 5e-324, "": "empty key"}'),
    ("thread_id_number", "u1", "Thread", T, '{"$thread_id": 42}'),
    ("thread_id_object", "u1", "Thread", T, '{"$thread_id": {"id": "t1"}, "country": "US"}'),
    ("empty_object", "u1", "Empty", T, "{}"),
    ("year_1", "u1", "Old", "0001-01-01T00:00:00+00:00", None),
    ("epoch", "u1", "Epoch", "1970-01-01T00:00:00Z", None),
    ("year_9999", "u1", "Late", "9999-12-31T23:59:59.999999+14:00", None),
    ("west_offset", "u1", "West", "2026-06-20T00:00:00.5-12:00", None),
    ("space_separator", "u1", "Space", "2026-06-20 12:00:00+02:00", None),
]


def test_publish_events_rows_breaking_a_documented_rule_are_rejected_locally_naming_the_field(
    sandbox, warehouse, write_sync
):
    good = ("good", "u1", "Signed up", T, '{"country": "US"}')
    load(warehouse, EVENT_COLUMNS, [good, *[(key, *values) for key, (values, _) in EVENT_BAD_ROWS.items()]])
    run = run_sync(write_sync("bad_events", EVENTS_SYNC, EVENTS_SQL))

    found = rejection_reasons("bad_events")
    assert set(found) == set(EVENT_BAD_ROWS)
    for key, (_, reason) in EVENT_BAD_ROWS.items():
        assert found[key].startswith(reason), (key, found[key])
    assert run.delivered == 1
    assert sandbox.records("trubrics", "publish_events") == [
        {"user_id": "u1", "event": "Signed up", "timestamp": T, "properties": {"country": "US"}}]
    assert_nothing_refused_at_the_vendor(sandbox, "trubrics", "publish_events")


def test_publish_events_edge_rows_are_delivered_exactly_as_the_model_wrote_them(sandbox, warehouse, write_sync):
    load(warehouse, EVENT_COLUMNS, EVENT_EDGE_ROWS)
    run = run_sync(write_sync("edge_events", EVENTS_SYNC, EVENTS_SQL))

    assert rejection_reasons("edge_events") == {}
    assert run.delivered == len(EVENT_EDGE_ROWS)
    assert_sent_as_written(sandbox, "publish_events", EVENT_EDGE_ROWS, EVENT_COLUMNS, RENAME)
    expected = [expected_item(r, EVENT_COLUMNS, RENAME) for r in EVENT_EDGE_ROWS]
    assert canonical(sandbox.records("trubrics", "publish_events")) == canonical(expected)  # and stored as sent
    assert_nothing_refused_at_the_vendor(sandbox, "trubrics", "publish_events")


def test_json_null_properties_are_omitted_not_rejected(sandbox, warehouse, write_sync):
    """``properties`` is optional: a JSON ``null`` there means "no properties", like a NULL column."""
    load(warehouse, EVENT_COLUMNS, [("json_null", "u1", "E", T, "null"), ("sql_null", "u2", "E", T, None)])
    run = run_sync(write_sync("null_props", EVENTS_SYNC, EVENTS_SQL))
    assert rejection_reasons("null_props") == {} and run.delivered == 2
    assert canonical(sandbox.records("trubrics", "publish_events")) == canonical(
        [{"user_id": "u1", "event": "E", "timestamp": T}, {"user_id": "u2", "event": "E", "timestamp": T}])


def test_timestamptz_columns_go_out_as_utc_with_an_offset(sandbox, warehouse, write_sync):
    """A TIMESTAMPTZ is an instant: sent in UTC with +00:00 (the documented normalization), same instant."""
    warehouse("""CREATE TABLE analytics.rows AS SELECT * FROM (VALUES
        ('epoch', TIMESTAMPTZ '1970-01-01 00:00:00+00'),
        ('tz', TIMESTAMPTZ '2026-06-20 23:30:00.125-05:00'),
        ('late', TIMESTAMPTZ '2200-12-31 23:59:59.999+00')) t(id, ts)""")
    spec = write_sync("tstz", EVENTS_SYNC, "SELECT _key, 'u' AS user_id, _key AS event, ts AS timestamp FROM source")
    assert run_sync(spec).delivered == 3
    got = {item["event"]: item["timestamp"] for item in sandbox.records("trubrics", "publish_events")}
    assert got == {"epoch": "1970-01-01T00:00:00.000+00:00", "tz": "2026-06-21T04:30:00.125+00:00",
                   "late": "2200-12-31T23:59:59.999+00:00"}


def test_nan_and_infinity_at_any_depth_are_rejected_locally_and_never_reach_the_wire(sandbox, warehouse, write_sync):
    warehouse("""CREATE TABLE analytics.rows AS SELECT * FROM (VALUES
        ('nan', {'x': 'NaN'::DOUBLE, 'inner': {'l': [1.0]}}),
        ('inf', {'x': 1.0, 'inner': {'l': ['Infinity'::DOUBLE]}}),
        ('minus_inf', {'x': '-Infinity'::DOUBLE, 'inner': {'l': [2.0]}}),
        ('ok', {'x': 1.5, 'inner': {'l': [2.0, -0.5]}})) t(id, props)""")
    spec = write_sync("nan", EVENTS_SYNC, f"SELECT _key, 'u' AS user_id, 'e' AS event, '{T}' AS timestamp, props AS properties FROM source")
    run = run_sync(spec)

    found = rejection_reasons("nan")
    assert set(found) == {"nan", "inf", "minus_inf"} and all("properties" in r for r in found.values())
    assert run.delivered == 1
    assert sandbox.records("trubrics", "publish_events")[0]["properties"] == {"x": 1.5, "inner": {"l": [2.0, -0.5]}}
    assert_nothing_refused_at_the_vendor(sandbox, "trubrics", "publish_events")


def test_at_most_100_events_per_request(sandbox, warehouse, write_sync):
    load(warehouse, EVENT_COLUMNS, [(f"e{i}", f"u{i}", "E", T, None) for i in range(205)])
    assert run_sync(write_sync("many", EVENTS_SYNC, EVENTS_SQL)).delivered == 205
    stats = sandbox.stats()["trubrics"]["publish_events"]
    assert stats["max_items_per_request"] == 100 and stats["requests"] == 3


LLM_BAD_ROWS: dict[str, tuple[tuple[Any, ...], str]] = {
    # key -> ((user_id, prompt, generation, assistant_id, ts, latency, prompt_event_name,
    #          generation_event_name, props), the start of the reason)
    "no_user_id": ((None, "p", "g", None, None, None, None, None, None), "user_id is required"),
    "no_prompt": (("u", None, "g", None, None, None, None, None, None), "prompt is required"),
    "no_generation": (("u", "p", None, None, None, None, None, None, None), "generation is required"),
    "latency_nan": (("u", "p", "g", None, None, float("nan"), None, None, None), "latency must be a number"),
    "latency_infinite": (("u", "p", "g", None, None, float("inf"), None, None, None), "latency must be a number"),
    "ts_without_offset": (("u", "p", "g", None, "2026-06-20 12:00", None, None, None, None), "timestamp must be"),
    "properties_array": (("u", "p", "g", None, None, None, None, None, "[]"), "properties must be"),
}
LLM_EDGE_ROWS: list[tuple[Any, ...]] = [
    # (id, user_id, prompt, generation, assistant_id, ts, latency, prompt_event_name, generation_event_name, props)
    ("blank", "", "", " ", "", None, None, "", "", None),
    ("negative_latency", "u1", "p", "g", "gpt-4o", T, -1.5, None, None, '{"$thread_id": "t1"}'),
    ("zero_latency", "u1", "p", "g", None, T, 0.0, None, None, None),
    ("tiny_and_huge", "u1", "p", "g", None, None, 1e-9, None, None, '{"huge": 1e300}'),
    ("huge_latency", "u1", "p", "g", None, None, 1e300, None, None, None),
    ("long_prompt", "u1", "é" * 200_000, "😀" * 50_000, None, None, 1.42, "User prompt", "AI generation", None),
    ("unicode", "用户", "¿Qué?\n\t", "Réponse « ici »", "модель", "2026-06-20T12:00:00+05:30", 2.0, "提示", "生成",
     '{"$thread_id": 7, "nested": {"list": [null, true, "x"]}}'),
]


def test_llm_events_rows_breaking_a_documented_rule_are_rejected_locally_naming_the_field(sandbox, warehouse, write_sync):
    good = ("good", "u", "p", "g", None, None, None, None, None, None)
    load(warehouse, LLM_COLUMNS, [good, *[(key, *values) for key, (values, _) in LLM_BAD_ROWS.items()]])
    run = run_sync(write_sync("bad_llm", LLM_SYNC, LLM_SQL))

    found = rejection_reasons("bad_llm")
    assert set(found) == set(LLM_BAD_ROWS)
    for key, (_, reason) in LLM_BAD_ROWS.items():
        assert found[key].startswith(reason), (key, found[key])
    assert run.delivered == 1
    assert sandbox.records("trubrics", "publish_llm_events") == [{"user_id": "u", "prompt": "p", "generation": "g"}]
    assert_nothing_refused_at_the_vendor(sandbox, "trubrics", "publish_llm_events")


def test_llm_edge_rows_are_delivered_exactly_as_the_model_wrote_them(sandbox, warehouse, write_sync):
    load(warehouse, LLM_COLUMNS, LLM_EDGE_ROWS)
    run = run_sync(write_sync("edge_llm", LLM_SYNC, LLM_SQL))

    assert rejection_reasons("edge_llm") == {}
    assert run.delivered == len(LLM_EDGE_ROWS)
    assert_sent_as_written(sandbox, "publish_llm_events", LLM_EDGE_ROWS, LLM_COLUMNS, RENAME)
    expected = [expected_item(r, LLM_COLUMNS, RENAME) for r in LLM_EDGE_ROWS]
    assert canonical(sandbox.records("trubrics", "publish_llm_events")) == canonical(expected)  # and stored as sent
    assert_nothing_refused_at_the_vendor(sandbox, "trubrics", "publish_llm_events")


@pytest.mark.parametrize(
    ("endpoint", "sql", "field"),
    [
        ("publish_events", "SELECT _key, 'u' AS user_id, 'e' AS event FROM source", "timestamp"),
        ("publish_llm_events", "SELECT _key, 'u' AS user_id, 'p' AS prompt FROM source", "generation"),
    ],
)
def test_a_model_without_a_required_field_is_a_config_error_and_nothing_is_sent(
    sandbox, warehouse, write_sync, endpoint, sql, field
):
    warehouse("CREATE TABLE analytics.rows AS SELECT 'r1' AS id")
    spec = write_sync("missing", f"""
        source: {{table: analytics.rows, key: id}}
        destination: {{vendor: trubrics, endpoint: {endpoint}}}
    """, sql)
    with pytest.raises(ConfigError) as error:
        run_sync(spec)
    assert error.value.field == field and "requires this field" in error.value.message
    assert sandbox.stats()["trubrics"].get(endpoint, {}).get("requests", 0) == 0


# --- choices: opt-in rules ---------------------------------------------------------------------------------
def test_choice_strict_rejects_blank_texts_negative_latency_and_non_string_thread_ids(sandbox, warehouse, write_sync):
    """Choices, not documented rules: each opt-in rule rejects only when the sync names it (or ``strict: true``)."""
    load(warehouse, LLM_COLUMNS, LLM_EDGE_ROWS)
    run = run_sync(write_sync("strict_llm", LLM_SYNC + "    strict: true\n", LLM_SQL))
    found = rejection_reasons("strict_llm")
    assert found == {
        "blank": "user_id is blank (rule user_id_not_blank); prompt is blank (rule prompt_not_blank); "
                 "generation is blank (rule generation_not_blank)",
        "negative_latency": "latency must be at least 0 seconds, got -1.5 (rule latency_not_negative)",
        "unicode": "properties.$thread_id must be a string, got 7 (rule thread_id_string)",
    }
    assert run.delivered == len(LLM_EDGE_ROWS) - 3

    sandbox.reset()
    events = [("blank", "", "e", T, None), ("thread", "u", "e", T, '{"$thread_id": 42}'), ("ok", "u", "e", T, None)]
    load(warehouse, EVENT_COLUMNS, events, table="events")
    only_thread = write_sync(
        "thread_only", EVENTS_SYNC.replace("analytics.rows", "analytics.events") + "    strict: [thread_id_string]\n",
        EVENTS_SQL)
    run = run_sync(only_thread)
    assert rejection_reasons("thread_only") == {"thread": "properties.$thread_id must be a string, got 42 (rule thread_id_string)"}
    assert run.delivered == 2  # the blank user_id is not checked: that rule was not named


def test_choice_unknown_strict_rule_names_are_config_errors(sandbox, write_sync):
    with pytest.raises(ConfigError) as error:
        write_sync("typo", EVENTS_SYNC + "    strict: [latency_not_negative]\n", EVENTS_SQL)
    assert error.value.field == "strict" and "not an opt-in rule of trubrics.publish_events" in error.value.message


# --- the emulator must not copy the connector's guesses --------------------------------------------------------
@pytest.mark.parametrize("shape", ERROR_SHAPES)
def test_any_422_body_still_rejects_the_right_item_with_a_readable_reason(sandbox, warehouse, write_sync, shape):
    """The 422 body is undocumented: whatever its shape (FastAPI's, a message, plain text, nothing), bisection
    isolates the refused item and its reason says what the server said (or at least the status)."""
    load(warehouse, EVENT_COLUMNS, [(f"e{i:03d}", f"u{i}", "E", T, None) for i in range(100)])
    sandbox.emulator("trubrics").control("error_shape", {"shape": shape})
    sandbox.set_fault("trubrics", "publish_events", Fault("reject_matching", count=1000, match='"u42"'))

    run = run_sync(write_sync("shapes", EVENTS_SYNC, EVENTS_SQL))

    assert run.delivered == 99 and run.rejected == 1
    (reason,) = rejection_reasons("shapes").values()
    assert list(rejection_reasons("shapes")) == ["e042"]
    assert "422" in reason
    if shape != "empty":
        assert "item refused by server-side rule" in reason, reason
    assert len({item["user_id"] for item in sandbox.records("trubrics", "publish_events")}) == 99


def test_the_emulator_accepts_what_the_document_allows_and_refuses_what_it_forbids(sandbox):
    base = sandbox.base_url("trubrics")
    key = {"x-api-key": TrubricsEmulator.keys["api_key"], "Content-Type": "application/json"}

    def post(path: str, body: bytes) -> requests.Response:
        return requests.post(base + path, data=body, headers=key, timeout=5)

    allowed = [
        {"user_id": "", "event": " ", "timestamp": T},
        {"user_id": "u", "event": "e", "timestamp": "0001-01-01T00:00:00+00:00", "properties": {"$thread_id": 1}},
        {"user_id": "u", "event": "e", "timestamp": T, "extra": "ignored", "properties": None},
    ]
    assert post("/publish_events", json.dumps(allowed).encode()).status_code == 200
    llm = [{"user_id": "", "prompt": "", "generation": "", "latency": -3, "properties": {"$thread_id": [1]}}]
    assert post("/publish_llm_events", json.dumps(llm).encode()).status_code == 200
    assert post("/publish_events", b"[]").status_code == 200  # no minItems in the document

    forbidden = [
        [{"event": "e", "timestamp": T}],
        [{"user_id": "u", "event": "e"}],
        [{"user_id": 1, "event": "e", "timestamp": T}],
        [{"user_id": "u", "event": "e", "timestamp": "2026-06-20T12:00:00"}],
        [{"user_id": "u", "event": "e", "timestamp": T, "properties": []}],
        [{"user_id": "u", "event": "e", "timestamp": T}] * 101,
    ]
    for body in forbidden:
        assert post("/publish_events", json.dumps(body).encode()).status_code == 422, body
    assert post("/publish_llm_events", json.dumps([{"user_id": "u", "prompt": "p", "generation": "g",
                                                      "latency": "1.5"}]).encode()).status_code == 422
    before = sandbox.stats()["trubrics"]["publish_events"]["invalid_json"]
    nan = b'[{"user_id": "u", "event": "e", "timestamp": "' + T.encode() + b'", "properties": {"a": NaN}}]'
    assert post("/publish_events", nan).status_code == 422
    assert sandbox.stats()["trubrics"]["publish_events"]["invalid_json"] == before + 1
    assert len(sandbox.records("trubrics", "publish_events")) == len(allowed)
