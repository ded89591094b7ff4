"""What the engine sends and refuses, whatever the vendor (issue 10): the payload SQL run directly on small
DuckDB relations, a declarative audit of every vendor's checks, and one run over real HTTP.

- Never invalid JSON: NaN and ±Infinity (and numbers a double cannot hold) at any depth of any nested
  kind reject that row with a reason naming the field; every payload the engine lets through parses
  with the sandbox's strict parser.
- Document-backed generic checks: epoch milliseconds given in seconds or microseconds, the value kinds of
  object members (string-only maps).
- The vendor's own dedup key may come from the model; syncline fills it in only where the model gives none.
- Values go out as the model wrote them (JSON text byte for byte, blank strings, ``{}``), JSON ``null``
  in an optional object or array is absent, and a bad value in one row rejects that row only, for map
  and JSON columns too.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import duckdb
import pytest

from connectors import docgen
from connectors.engine.endpoint import Endpoint, Field
from connectors.engine.payload import PayloadBuilder, describe
from connectors.errors import ConfigError
from connectors.ledger import open_ledger
from connectors.runner import run_sync
from connectors.sandbox.base import strict_json
from connectors.vendors import vendors

FIELDS = (
    Field("s", "string"),
    Field("n", "number"),
    Field("i", "integer"),
    Field("b", "boolean"),
    Field("ts", "timestamp"),
    Field("ms", "epoch_ms"),
    Field("o", "object"),
    Field("sm", "string_map"),
    Field("a", "array"),
    Field("x", "any"),
)
EP = Endpoint(vendor="test", name="items", path="/items", fields=FIELDS)


def build(select: str, endpoint: Endpoint = EP, **options: Any) -> dict[str, tuple[str, str | None]]:
    """Run the engine's payload SQL over ``select`` (a model: must give ``_key``): key -> (payload, reason)."""
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute(f"CREATE TABLE model AS {select}")
        builder = PayloadBuilder(endpoint, sync_name="t", model_file="t.sql", **options)
        sql = builder.sql("model", describe(con, "model"))
        rows = con.sql(f"SELECT _key, payload, reject_reason FROM ({sql}) ORDER BY _key").fetchall()
    finally:
        con.close()
    return {key: (payload, reason) for key, payload, reason in rows}


def rows(*values: tuple[str, str], column: str) -> str:
    """A model of one column: (key, SQL expression) per row."""
    return " UNION ALL ".join(f"SELECT '{key}' AS _key, {expr} AS {column}" for key, expr in values)


def delivered(out: dict[str, tuple[str, str | None]], key: str) -> Any:
    payload, reason = out[key]
    assert reason is None, f"{key} rejected: {reason}"
    return strict_json(payload.encode())


# --- never invalid JSON ----------------------------------------------------------------------------------------
NAN = "'NaN'::DOUBLE"
INF = "'Infinity'::DOUBLE"
# (field, a value carrying a non-JSON number somewhere inside, a value of the same type that is fine)
NON_JSON_NUMBERS: list[tuple[str, str, str]] = [
    ("o", f"{{'a': {{'b': {{'c': {NAN}}}}}}}", "{'a': {'b': {'c': 1.5::DOUBLE}}}"),  # deep STRUCT
    ("o", f"{{'a': [{{'b': -{INF}}}]}}", "{'a': [{'b': 2.5::DOUBLE}]}"),  # STRUCT > LIST > STRUCT
    ("o", f"MAP {{'a': {INF}}}", "MAP {'a': 1.5::DOUBLE}"),  # MAP(VARCHAR, DOUBLE)
    ("o", f"MAP {{'a': [{NAN}]}}", "MAP {'a': [1.5::DOUBLE]}"),  # MAP(VARCHAR, DOUBLE[])
    ("o", """'{"a": {"b": [1, NaN]}}'""", """'{"a": {"b": [1, 1.5]}}'"""),  # JSON text
    ("o", """'{"a": -Infinity}'::JSON""", """'{"a": -1}'::JSON"""),  # JSON column
    ("o", """'{"a": 1e400}'""", """'{"a": 1e300}'"""),  # overflows a double
    ("o", """'{"a": [1.8e308]}'""", """'{"a": [1.7e308]}'"""),  # overflows too, exponent under 309
    ("o", "{'j': '{\"deep\": [Infinity]}'::JSON}", "{'j': '{\"deep\": [1]}'::JSON}"),  # STRUCT > JSON
    ("o", "MAP {'a': '[1, NaN]'::JSON}", "MAP {'a': '[1, 2]'::JSON}"),  # MAP(VARCHAR, JSON)
    ("sm", "MAP {'a': 'NaN'::JSON}", """MAP {'a': '"x"'::JSON}"""),
    ("sm", """'{"a": "x", "b": NaN}'""", """'{"a": "x", "b": "NaN"}'"""),
    ("a", f"[{NAN}]", "[1.5::DOUBLE]"),
    ("a", f"[[1.0::DOUBLE, {INF}]]", "[[1.0::DOUBLE, 2.0::DOUBLE]]"),
    ("a", f"[{{'x': {NAN}}}]", "[{'x': 1.5::DOUBLE}]"),
    ("a", "'[1, Infinity]'", "'[1, 2]'"),
    ("a", """'[{"a": NaN}]'::JSON""", """'[{"a": 1}]'::JSON"""),
    ("x", NAN, "1.5::DOUBLE"),
    ("x", f"[{INF}]", "[1.5::DOUBLE]"),
    ("x", f"{{'a': {NAN}}}", "{'a': 1.5::DOUBLE}"),
    ("x", """'{"a": NaN}'::JSON""", """'{"a": 1}'::JSON"""),
    ("n", NAN, "1.5::DOUBLE"),
    ("n", INF, "1.5::DOUBLE"),
    ("n", f"-{INF}", "-1.5::DOUBLE"),
    ("n", "'NaN'", "'1.5'"),
    ("n", "'-Infinity'", "'-1.5'"),
    ("n", "'1e400'", "'1e300'"),
    ("i", NAN, "2.0::DOUBLE"),
    ("i", INF, "2.0::DOUBLE"),
    ("i", "'NaN'", "'2'"),
    ("ms", NAN, "1780272000000.0::DOUBLE"),
    ("ms", INF, "1780272000000.0::DOUBLE"),
]


@pytest.mark.parametrize(("field", "bad", "ok"), NON_JSON_NUMBERS)
def test_a_non_json_number_at_any_depth_rejects_its_row_only_with_the_field_named(field, bad, ok):
    out = build(f"SELECT '1bad' AS _key, {bad} AS {field} UNION ALL SELECT '2ok', {ok}")
    reason = out["1bad"][1]
    assert reason and reason.startswith(f"{field} "), reason
    assert re.search(r"NaN|number|string values|epoch", reason), reason
    assert field in delivered(out, "2ok")  # the good row beside it goes out, as strict JSON


def test_every_payload_the_engine_lets_through_is_strict_json():
    """A grab-bag of hostile values in every field kind at once: whatever is not rejected parses strictly."""
    values = {
        "s": ["NULL", "''", "'\u2028'", "chr(0)", NAN, "1e308::DOUBLE", "'😀'"],
        "n": ["NULL", "1e308::DOUBLE", "5e-324::DOUBLE", "-0.0::DOUBLE", "'1e3'", "12345678901234567890.5::DECIMAL(38,1)"],
        "o": ["NULL", "'{}'", "'null'", """'{"s": "\\ud800"}'""", """'{"d": 1, "d": 2}'""", """'{"a": {"b": 1e-400}}'""",
              """'{"u": 18446744073709551615, "h": -170141183460469231731687303715884105727}'"""],
        "a": ["NULL", "'[]'", "'null'", "'[null]'", "'[1e308]'"],
        "x": ["NULL", "'text'", "'1e400'", "1e308::DOUBLE"],
    }
    selects = []
    for n, (field, exprs) in enumerate(values.items()):
        for m, expr in enumerate(exprs):
            cells = ", ".join(f"{expr if f == field else 'NULL'} AS {f}" for f in values)
            selects.append(f"SELECT 'k{n}_{m}' AS _key, {cells}")
    endpoint = Endpoint(vendor="test", name="items", path="/items",
                        fields=tuple(f for f in FIELDS if f.name in values))
    out = build(" UNION ALL ".join(selects), endpoint)
    for payload, reason in out.values():
        if reason is None:
            strict_json(payload.encode())  # raises on NaN, Infinity, 1e400, lone surrogates, repeated keys
    assert out["k2_3"][1] and out["k2_4"][1]  # a lone surrogate escape, a key given twice
    assert out["k2_5"] == ('{"o":{"a": {"b": 1e-400}}}', None)  # underflow is a number: kept as written
    assert out["k4_2"] == ('{"x":"1e400"}', None)  # text is text
    assert delivered(out, "k2_6") == {"o": {"u": 18446744073709551615, "h": -170141183460469231731687303715884105727}}


# --- epoch milliseconds ----------------------------------------------------------------------------------------
def test_epoch_ms_in_seconds_or_microseconds_is_rejected_naming_the_unit():
    out = build(rows(
        ("ms_ok", "1780272000000"), ("ms_low_edge", "100000000000"), ("ms_high_edge", "99999999999999"),
        ("seconds", "1780272000"), ("seconds_text", "'1780272000'"), ("seconds_double", "1780272000.0::DOUBLE"),
        ("micro", "1780272000000000"), ("nano", "1780272000000000000"), ("zero", "0"), ("negative", "-5"),
        ("iso_text", "'2026-06-01T00:00:00Z'"),
        column="ms"), Endpoint(vendor="t", name="e", path="/e", fields=(Field("ms", "epoch_ms"),)))
    assert delivered(out, "ms_ok") == {"ms": 1780272000000}
    assert delivered(out, "ms_low_edge") == {"ms": 100000000000}
    assert delivered(out, "ms_high_edge") == {"ms": 99999999999999}
    for key in ("seconds", "seconds_text", "seconds_double", "zero", "negative"):
        reason = out[key][1]
        assert reason and reason.startswith("ms looks like seconds") and "the document wants milliseconds" in reason, reason
    for key in ("micro", "nano"):
        reason = out[key][1]
        assert reason and "ms looks like microseconds or nanoseconds" in reason and "wants milliseconds" in reason
    assert delivered(out, "iso_text")["ms"] == 1780272000000


def test_epoch_ms_from_a_timestamp_column_is_exact_and_not_range_checked():
    out = build(rows(("t1971", "TIMESTAMPTZ '1971-06-01 00:00:00+00'"), ("t2026", "TIMESTAMP '2026-06-01 00:00:00.123456'"),
                     column="ms"), Endpoint(vendor="t", name="e", path="/e", fields=(Field("ms", "epoch_ms"),)))
    assert delivered(out, "t1971")["ms"] == 44582400000  # under 10^11, yet no unit can be wrong here
    assert delivered(out, "t2026")["ms"] == 1780272000123


def test_the_plausible_range_is_declared_per_field():
    wide = Endpoint(vendor="t", name="e", path="/e", fields=(Field("ms", "epoch_ms", plausible_ms=(0, 10**18)),))
    off = Endpoint(vendor="t", name="e", path="/e", fields=(Field("ms", "epoch_ms", plausible_ms=None),))
    model = rows(("seconds", "1780272000"), ("negative", "-5"), column="ms")
    assert delivered(build(model, wide), "seconds") == {"ms": 1780272000}
    assert "looks like seconds" in (build(model, wide)["negative"][1] or "")
    assert delivered(build(model, off), "negative") == {"ms": -5}


# --- member kinds ----------------------------------------------------------------------------------------------
SM = Endpoint(vendor="t", name="e", path="/e", fields=(Field("sm", "string_map"),))


def test_string_maps_take_strings_only_per_row_whatever_the_column_type():
    out = build(rows(
        ("json_ok", """'{"a": "x", "b": ""}'"""), ("json_null", """'{"a": null}'"""), ("json_number", """'{"a": 3}'"""),
        ("json_nested", """'{"a": {"b": "c"}}'"""), ("json_broken", "'{\"a\": '"), ("json_array", "'[\"a\"]'"),
        column="sm"), SM)
    assert delivered(out, "json_ok") == {"sm": {"a": "x", "b": ""}}
    for key in ("json_null", "json_number", "json_nested", "json_broken", "json_array"):
        reason = out[key][1]
        assert reason and reason.startswith("sm must be an object of string values, got "), (key, reason)

    maps = build(rows(
        ("m_ok", "MAP {'a': '\"x\"'::JSON}"), ("m_null", "MAP {'a': 'null'::JSON}"), ("m_sql_null", "MAP {'a': NULL::JSON}"),
        ("m_number", "MAP {'a': '3'::JSON}"), ("m_empty", "MAP {'a': '\"\"'::JSON}"), column="sm"), SM)
    assert delivered(maps, "m_ok") == {"sm": {"a": "x"}} and delivered(maps, "m_empty") == {"sm": {"a": ""}}
    for key in ("m_null", "m_sql_null", "m_number"):
        assert (maps[key][1] or "").startswith("sm must be an object of string values"), key

    text_maps = build(rows(("v_ok", "MAP {'a': 'x'}"), ("v_null", "MAP {'a': NULL::VARCHAR}"), column="sm"), SM)
    assert delivered(text_maps, "v_ok") == {"sm": {"a": "x"}}
    assert (text_maps["v_null"][1] or "").startswith("sm must be an object of string values")

    structs = build(rows(("s_ok", "{'a': 'x', 'b': NULL::VARCHAR}"), column="sm"), SM)
    assert delivered(structs, "s_ok") == {"sm": {"a": "x"}}  # a NULL member of a STRUCT is omitted, not null


def test_a_map_or_struct_type_that_can_never_hold_a_string_is_a_config_error_naming_the_field():
    with pytest.raises(ConfigError, match=r"sm: test\.e wants string values here, the map is MAP\(VARCHAR, INTEGER\)"):
        build("SELECT 'k' AS _key, MAP {'a': 1} AS sm", Endpoint(vendor="test", name="e", path="/e", fields=SM.fields))
    with pytest.raises(ConfigError, match=r"sm\.tier: .* wants string values here, the column is INTEGER"):
        build("SELECT 'k' AS _key, {'plan': 'x', 'tier': 3} AS sm", SM)


def test_declared_member_kinds_are_checked_per_row():
    ep = Endpoint(vendor="t", name="e", path="/e",
                  fields=(Field("o", "object", member_kinds=("string", "number")),))
    out = build(rows(("ok", """'{"a": "x", "b": 1.5, "c": 2}'"""), ("bool", """'{"a": true}'"""),
                     ("null", """'{"a": null}'"""), column="o"), ep)
    assert delivered(out, "ok") == {"o": {"a": "x", "b": 1.5, "c": 2}}
    assert delivered(build("SELECT 'k' AS _key, {'a': 'x', 'b': 2} AS o", ep), "k") == {"o": {"a": "x", "b": 2}}
    for key in ("bool", "null"):
        assert (out[key][1] or "").startswith("o must be an object of string or number values, got "), key
    with pytest.raises(ValueError, match="member_kinds"):
        Field("s", "string", member_kinds=("string",))
    with pytest.raises(ValueError, match="member_kinds"):
        Field("o", "object", member_kinds=("text",))  # type: ignore[arg-type]


# --- a bad value rejects its row only --------------------------------------------------------------------------
def test_bad_values_in_json_and_map_columns_reject_their_rows_and_never_fail_the_sync():
    out = build(rows(
        ("a_ok", """MAP {'plan': '"team"'::JSON}"""), ("b_number", """MAP {'plan': '3'::JSON}"""),
        ("c_null", """MAP {'plan': 'null'::JSON}"""), ("d_object", """MAP {'plan': '{"x": "y"}'::JSON}"""),
        ("e_nan", """MAP {'plan': 'NaN'::JSON}"""), column="sm"), SM)
    assert set(out) == {"a_ok", "b_number", "c_null", "d_object", "e_nan"}
    assert delivered(out, "a_ok") == {"sm": {"plan": "team"}}
    assert all(out[k][1] for k in ("b_number", "c_null", "d_object", "e_nan"))
    objects = build(rows(("ok", """'{"a": 1}'"""), ("not_json", "'not json'"), ("truncated", "'{\"a\": [1,'"),
                         ("surrogate", """'{"s": "\\ud800"}'"""), ("array", "'[1]'"), column="o"),
                    Endpoint(vendor="t", name="e", path="/e", fields=(Field("o", "object"),)))
    assert delivered(objects, "ok") == {"o": {"a": 1}}
    for key in ("not_json", "truncated", "surrogate", "array"):
        assert (objects[key][1] or "").startswith("o must be a JSON object, got "), key


# --- values go out as the model wrote them ---------------------------------------------------------------------
OPTIONAL = Endpoint(vendor="t", name="e", path="/e",
                    fields=(Field("s", "string"), Field("o", "object"), Field("a", "array")))


def test_values_go_out_as_written_json_text_byte_for_byte_and_blank_strings_kept():
    spaced = '{ "a" :  "" ,\n "b": {}, "c": [ ], "d": "  x  ", "e": "\\u00e9" }'
    out = build(
        f"SELECT 'k1' AS _key, ' padded ' AS s, '{spaced}' AS o, '[ 1,2 ]' AS a "
        "UNION ALL SELECT 'k2', '', '{}', '[]' "
        "UNION ALL SELECT 'k3', '   ', NULL, NULL",
        OPTIONAL,
    )
    assert out["k1"] == ('{"s":" padded ","o":' + spaced + ',"a":[ 1,2 ]}', None)
    assert out["k2"] == ('{"s":"","o":{},"a":[]}', None)
    assert out["k3"] == ('{"s":"   "}', None)
    structs = build("SELECT 'k' AS _key, {'blank': '', 'space': ' ', 'none': NULL::VARCHAR, 'empty': MAP {}::MAP(VARCHAR, VARCHAR)} AS o",
                    OPTIONAL)
    assert structs["k"] == ('{"o":{"blank":"","space":" ","empty":{}}}', None)


def test_json_null_in_an_optional_object_or_array_is_absent_and_in_a_required_one_is_missing():
    out = build("SELECT 'k' AS _key, 'x' AS s, 'null' AS o, 'null'::JSON AS a", OPTIONAL)
    assert out["k"] == ('{"s":"x"}', None)
    required = Endpoint(vendor="t", name="e", path="/e", fields=(Field("o", "object", required=True),))
    out = build(rows(("json_null", "'null'"), ("ok", "'{}'"), column="o"), required)
    assert out["json_null"][1] == "o is required"
    assert out["ok"] == ('{"o":{}}', None)
    out = build(rows(("all_null", "{'a': NULL::VARCHAR}"), ("ok", "{'a': ''}"), column="o"), required)
    assert out["all_null"][1] == "o is required; every member of the object is NULL"
    assert out["ok"] == ('{"o":{"a":""}}', None)


# --- the vendor's own dedup key from the model -----------------------------------------------------------------
NATIVE = Endpoint(vendor="t", name="e", path="/e", idempotency_field="dedupKey",
                  fields=(Field("name", "string"), Field("dedupKey", "string", max_length=10)))


def test_a_native_key_from_the_model_is_validated_and_sent_as_given_else_syncline_fills_it_in():
    out = build(
        "SELECT * FROM (VALUES ('r1', 'e', 'evt_1'), ('r2', 'e', 'evt_1'), ('r3', 'e', NULL), ('r4', 'e', ''), "
        "('r5', 'e', 'x' || repeat('y', 10)), ('r6', 'e', ' ')) t(_key, name, dedupKey)",
        NATIVE,
    )
    assert delivered(out, "r1") == delivered(out, "r2") == {"name": "e", "dedupKey": "evt_1"}
    assert re.fullmatch(r"[0-9a-f]{32}", delivered(out, "r3")["dedupKey"])
    assert out["r4"][1] == "dedupKey must not be empty: it is the vendor's dedup key"
    assert out["r5"][1] == "dedupKey is 11 characters, over the limit of 10"
    assert delivered(out, "r6")["dedupKey"] == " "  # a key is a key: sent as given
    # syncline's own key, where the model gives none: the ledger's idempotency key of the row
    assert delivered(out, "r3")["dedupKey"] == hashlib.sha256(b"t\x1fe\x1fr3").hexdigest()[:32]
    without = build("SELECT 'r1' AS _key, 'e' AS name", NATIVE)  # the column left out altogether
    assert delivered(without, "r1")["dedupKey"] == hashlib.sha256(b"t\x1fe\x1fr1").hexdigest()[:32]


def test_an_engine_filled_key_field_cannot_come_from_the_model():
    engine_only = Endpoint(vendor="t", name="e", path="/e", idempotency_field="syncline_key", fields=(Field("name"),))
    assert "syncline_key" in delivered(build("SELECT 'k' AS _key, 'e' AS name", engine_only), "k")
    with pytest.raises(ConfigError, match="syncline_key: t.e fills this in itself"):
        build("SELECT 'k' AS _key, 'e' AS name, 'mine' AS syncline_key", engine_only)


# --- audit: every vendor check has a basis; choices are opt-in ---------------------------------------------------
@functools.cache
def _rendered() -> str:
    return docgen.render()


def _endpoints() -> list[Endpoint]:
    return [e for vendor in vendors().values() for e in docgen.documented_endpoints(vendor)]


@pytest.mark.parametrize("endpoint", _endpoints(), ids=lambda e: e.qualified_name)
def test_audit_every_rule_and_checked_field_has_a_basis_and_every_choice_is_opt_in(endpoint):
    """Declarative audit of the vendors' declarations (issue 10, item 1): a Rule has a name (an identifier),
    names its field (a declared one), and a basis that quotes the document ("doc: ...") or says it is a
    choice ("choice: ..."); a rule without documentary basis is opt-in. Every Field the engine checks
    (required, lengths, choices, range, kind, member kinds) quotes the document in its basis."""
    problems: list[str] = []
    declared = {f.name for f in endpoint.fields}
    names = [r.name for r in endpoint.rules]
    for rule in endpoint.rules:
        label = f"rule {rule.name or rule.reason[:40]!r}"
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", rule.name or ""):
            problems.append(f"{label}: no name (an identifier: named in reasons and in strict: [...])")
        if rule.field is not None and rule.field not in declared:
            problems.append(f"{label}: field {rule.field!r} is not a declared field")
        if not rule.basis.startswith(("doc:", "choice:")):
            problems.append(f"{label}: basis must start with 'doc:' or 'choice:', got {rule.basis!r}")
        if not rule.basis.startswith("doc:") and not rule.opt_in:
            problems.append(f"{label}: no documentary basis, so it must be opt_in")
        if len(rule.basis.split(":", 1)[-1].strip()) < 10:
            problems.append(f"{label}: basis says too little")
    if len(set(names)) != len(names):
        problems.append(f"rule names repeat: {names}")
    for field in endpoint.fields:
        if field.checks() and not field.basis.startswith("doc:"):
            problems.append(f"field {field.name}: checked ({', '.join(docgen._field_checks(field, endpoint))}) "
                            f"but its basis does not quote the document: {field.basis!r}")
    assert not problems, f"{endpoint.qualified_name}:\n  " + "\n  ".join(problems)
    section = _rendered()
    for rule in endpoint.rules:
        assert f"rule `{rule.name}`" in section and docgen._cell(rule.basis) in section


VENDOR_DOCS = Path(__file__).resolve().parents[1] / "docs" / "vendor-api"


def _normalized(text: str) -> str:
    return " ".join(text.split())


def _quotes(basis: str) -> list[str]:
    """The document's words a basis quotes: every backticked fragment, and (in a ``doc:`` basis) every
    double-quoted span outside backticks."""
    quoted = re.findall(r"`([^`]+)`", basis)
    if basis.startswith("doc:"):
        quoted += [q for q in re.findall(r'"([^"]+)"', re.sub(r"`[^`]*`", "`", basis)) if q.strip()]
    return quoted


def _in_document(quote: str, document: str) -> bool:
    """Whether ``quote`` appears word for word in the (whitespace-normalized) document. A table row may be
    quoted with `` | `` between its cells: the capture of some documents (Flux, Screeb) flattened their
    tables, so there the cells abut (``namestringYesEvent name``)."""
    wanted = _normalized(quote)
    return wanted in document or wanted.replace(" | ", "") in document


@functools.cache
def _document(vendor: str) -> str:
    return _normalized((VENDOR_DOCS / f"{vendor}.md").read_text(encoding="utf-8"))


def _basis_quote_problems(endpoint: Endpoint) -> list[str]:
    document = _document(endpoint.vendor)
    problems: list[str] = []
    for what, basis in [*((f"field {f.name}", f.basis) for f in endpoint.fields if f.basis),
                        *((f"rule {r.name}", r.basis) for r in endpoint.rules)]:
        quotes = _quotes(basis)
        if basis.startswith("doc:") and not re.search(r"`[^`]+`", basis):
            problems.append(f"{what}: a doc: basis quotes the document's words in backticks, got {basis!r}")
        for quote in quotes:
            if not _in_document(quote, document):
                problems.append(f"{what}: {quote!r} is not in docs/vendor-api/{endpoint.vendor}.md")
    return problems


@pytest.mark.parametrize("endpoint", _endpoints(), ids=lambda e: e.qualified_name)
def test_audit_every_quote_in_a_basis_is_the_documents_words(endpoint):
    """Issue 10 review, item 10: a basis's quotes are checked against the vendor's document, not trusted.
    Every backticked fragment of every basis (and every double-quoted span of a ``doc:`` basis) must appear
    word for word in docs/vendor-api/<vendor>.md, whitespace normalized; a ``doc:`` basis must quote at
    least one fragment (a section's title, in backticks, counts). Every mismatch is listed."""
    problems = _basis_quote_problems(endpoint)
    assert not problems, f"{endpoint.qualified_name}:\n  " + "\n  ".join(problems)


def test_the_quote_audit_catches_words_that_are_not_the_documents():
    def problems(basis: str) -> list[str]:
        return _basis_quote_problems(Endpoint(vendor="flux", name="e", path="/e",
                                              fields=(Field("name", "string", required=True, basis=basis),)))

    assert problems("doc: Track Event, Parameters: `name | string | Yes | Event name (e.g., user.signup)`") == []
    assert problems("doc: `Errors`: `missing_name | Event name is required`") == []
    assert problems("doc: `Batch:   10 requests/minute,\n up to 500 events per request`") == []  # whitespace
    assert problems("doc: `name | string | Yes | Event name (e.g. user.signup)`") == [
        "field name: 'name | string | Yes | Event name (e.g. user.signup)' is not in docs/vendor-api/flux.md"]
    assert problems('doc: Parameters: "a name is mandatory"') == [
        "field name: a doc: basis quotes the document's words in backticks, got 'doc: Parameters: \"a name is mandatory\"'",
        "field name: 'a name is mandatory' is not in docs/vendor-api/flux.md"]
    assert len(problems("doc: `Event name` and `events are deduped` and `name: required`")) == 2


def test_docs_list_every_check_with_its_basis_the_normalizations_and_the_native_key():
    text = docgen.render({"t": _fake_vendor()})
    assert "| `dedupKey` | non-empty (the vendor's dedup key) | on | doc: the key |" in text
    assert "| `dedupKey` | max_length 10 | on | doc: the key |" in text
    assert "| `ms` | a number from 100,000,000,000 to 100,000,000,000,000 ms" in text
    assert "| `sm` | member values: string | on | doc: tags |" in text
    assert "| `n` | rule `n_small`: n is …, too big | opt-in (`strict`) | choice: a guess |" in text
    assert "idempotency field: `dedupKey` (the vendor's own dedup key): the model may set it" in text
    assert "- `ms` (`epoch_ms`): integers as written" in text
    assert "## How values are sent" in text and "never trimmed" in text


def _fake_vendor() -> Any:
    from connectors.engine.endpoint import Credential, Rule, Vendor

    endpoint = Endpoint(
        vendor="t", name="e", path="/e", idempotency_field="dedupKey",
        fields=(Field("dedupKey", "string", max_length=10, basis="doc: the key"),
                Field("ms", "epoch_ms", basis="doc: epoch ms"), Field("sm", "string_map", basis="doc: tags"),
                Field("n", "integer", basis="doc: n")),
        rules=(Rule(when="n > 5", reason="'n is ' || n || ', too big'", name="n_small", field="n",
                    basis="choice: a guess", opt_in=True),),
    )
    return Vendor(name="t", title="T", env_prefix="T", default_base_url="https://t.example",
                  credentials=(Credential("api_key", "T_API_KEY"),), endpoints={"e": endpoint})


# --- over real HTTP ----------------------------------------------------------------------------------------------
def test_nan_rows_never_reach_the_sandbox_and_edge_rows_arrive_byte_identical(sandbox, warehouse, write_sync):
    spaced = '{ "plan" : "" ,  "nested": {"list": [ ], "obj": {}}, "s": "  x  ", "n": -0.0, "big": 1e308 }'
    warehouse(f"""CREATE TABLE analytics.ev AS SELECT * FROM (VALUES
        ('a_edge', 'u1', 'signed up', '{spaced}', NULL),
        ('b_empty', 'u2', '', '{{}}', NULL),
        ('c_blank_user', ' ', '  e  ', NULL, NULL),
        ('d_json_null', 'u4', 'e', 'null', NULL),
        ('e_nan_text', 'u5', 'e', '{{"a": [1, NaN]}}', NULL),
        ('f_inf_text', 'u6', 'e', '{{"a": {{"b": -Infinity}}}}', NULL),
        ('g_overflow', 'u7', 'e', '{{"a": 1e400}}', NULL),
        ('h_nan_struct', 'u8', 'e', NULL, 'NaN'::DOUBLE),
        ('i_inf_struct', 'u9', 'e', NULL, 'Infinity'::DOUBLE)
    ) t(id, user_id, event, props, x)""")
    spec = write_sync("fid", """
        source: {table: analytics.ev, key: id}
        destination: {vendor: trubrics, endpoint: publish_events}
    """, "SELECT _key, user_id, event, TIMESTAMPTZ '2026-06-01 00:00:00+00' AS timestamp, "
         "CASE WHEN x IS NULL THEN props::JSON ELSE json_object('x', to_json({'deep': [x]})) END AS properties FROM source")

    run = run_sync(spec)

    assert sandbox.wait_idle(30)
    stats = sandbox.stats()["trubrics"]["publish_events"]
    assert stats["invalid_json"] == 0, sandbox.emulator("trubrics").invalid_bodies[:2]
    assert (run.delivered, run.rejected) == (4, 5), run
    reasons = {r["source_key"]: r["reason"] for r in open_ledger().items("fid", state="rejected")}
    assert set(reasons) == {"e_nan_text", "f_inf_text", "g_overflow", "h_nan_struct", "i_inf_struct"}
    assert all(r.startswith("properties holds NaN, Infinity or a number out of range") for r in reasons.values()), reasons
    bodies = sandbox.bodies("trubrics", "publish_events")
    assert all(b"NaN" not in body and b"Infinity" not in body and b"1e400" not in body for body in bodies)
    wire = b"".join(bodies).decode("utf-8")
    # the model's JSON text and strings, byte for byte as written
    assert f'"user_id":"u1","event":"signed up","timestamp":"2026-06-01T00:00:00.000+00:00","properties":{spaced}}}' in wire
    assert '"user_id":"u2","event":"","timestamp":"2026-06-01T00:00:00.000+00:00","properties":{}}' in wire
    assert '"user_id":" ","event":"  e  ","timestamp":"2026-06-01T00:00:00.000+00:00"}' in wire
    assert '"user_id":"u4","event":"e","timestamp":"2026-06-01T00:00:00.000+00:00"}' in wire  # JSON null: omitted
    stored = {e["user_id"]: e for e in sandbox.records("trubrics", "publish_events")}
    assert stored["u1"]["properties"] == json.loads(spaced) and stored["u2"]["properties"] == {}
    assert stored[" "]["event"] == "  e  " and "properties" not in stored["u4"]
