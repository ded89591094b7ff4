"""Turn a sync's model (a DuckDB relation) into payload JSON, idempotency keys and rejection reasons.

Everything here generates SQL: DuckDB normalizes each field to the endpoint's declared kind, checks the
rules, and serializes the JSON text of each item, so no Python touches a row. Rows keep flowing even when
they are bad: a row that breaks a rule gets a ``reject_reason`` a person can read, and is split off later.

Conventions for a model (the ``SELECT`` over ``source`` in the sync's ``.sql`` file):
- ``_key`` (required) is the source's primary key, already present on ``source``; ``_cursor`` likewise.
  A model that does not select ``_cursor`` gets the source cursor of each row carried to it
  (``connectors.stage``), so a key repeated within one run keeps its newest row by the sync's cursor
  either way; the older rows are rejected as duplicates (docs/sync-files.md).
- A row gets at most one reason per field (the first rule of that field it breaks), plus one per
  row-level rule of the endpoint.
- Every other column not starting with ``_`` is a top-level payload field and must be one the endpoint
  declares (a typo is a config error naming the SQL file, not a silently dropped field).
- A NULL top-level field is omitted. NULLs inside objects are omitted too, unless the sync sets
  ``keep_nulls: true`` (Screeb identify uses that to delete a trait).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
from duckdb.sqltypes import DuckDBPyType

from connectors.engine.endpoint import Endpoint, Field
from connectors.errors import ConfigError

ISO_8601_WITH_OFFSET = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}(:?\d{2})?)$"
UTC_ISO_FORMAT = "%Y-%m-%dT%H:%M:%S.%g+00:00"
NUMERIC_IDS = {
    "tinyint", "smallint", "integer", "bigint", "hugeint", "utinyint", "usmallint", "uinteger",
    "ubigint", "uhugeint", "float", "double", "decimal",
}
INTEGER_IDS = {"tinyint", "smallint", "integer", "bigint", "hugeint", "utinyint", "usmallint", "uinteger", "ubigint"}
TIMESTAMP_IDS = {"timestamp", "timestamp with time zone", "timestamp_ms", "timestamp_ns", "timestamp_s", "date"}


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _is_json(dtype: DuckDBPyType) -> bool:
    return str(dtype) == "JSON"


def _iso_from_timestamp(expr: str, dtype_id: str) -> str:
    if dtype_id == "timestamp with time zone":
        return f"strftime(timezone('UTC', {expr}), '{UTC_ISO_FORMAT}')"
    # Naive timestamps and dates are taken as UTC (documented in docs/sync-files.md).
    return f"strftime(CAST({expr} AS TIMESTAMP), '{UTC_ISO_FORMAT}')"


def json_of(expr: str, dtype: DuckDBPyType, keep_nulls: bool) -> str:
    """SQL for the JSON text of ``expr``; objects drop NULL members unless ``keep_nulls``."""
    if dtype.id == "struct":
        members = []
        for child_name, child_type in _struct_children(dtype):
            child = f"struct_extract({expr}, {quote_literal(child_name)})"
            label = quote_literal(_json_string(child_name) + ":")
            value = json_of(child, child_type, keep_nulls)
            if keep_nulls:
                members.append(f"{label} || coalesce({value}, 'null')")
            else:
                members.append(f"CASE WHEN {child} IS NULL THEN NULL ELSE {label} || {value} END")
        obj = "('{' || concat_ws(','" + "".join(", " + m for m in members) + ") || '}')"
        # An object whose members are all NULL is absent, not "{}" (unless NULLs are kept on purpose).
        return obj if keep_nulls else f"NULLIF({obj}, '{{}}')"
    if dtype.id in TIMESTAMP_IDS:
        return f"CAST(to_json({_iso_from_timestamp(expr, dtype.id)}) AS VARCHAR)"
    if _is_json(dtype):
        return f"CAST({expr} AS VARCHAR)"
    return f"CAST(to_json({expr}) AS VARCHAR)"


def _struct_children(dtype: DuckDBPyType) -> list[tuple[str, DuckDBPyType]]:
    return [(str(name), child) for name, child in dtype.children if isinstance(child, DuckDBPyType)]


def _json_string(text: str) -> str:
    import json

    return json.dumps(text, ensure_ascii=False)


@dataclass
class _FieldSql:
    value: str  # normalized value expression (NULL when absent or invalid)
    dtype: DuckDBPyType  # type of the normalized value, for serialization
    reasons: list[tuple[str, str]]  # (condition, reason expression)


class PayloadBuilder:
    """Builds the SQL that maps a model relation to (key, idempotency key, payload, reject reason) rows."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        sync_name: str,
        model_file: str,
        keep_nulls: bool = False,
        max_body_bytes: int | None = None,
        strict: frozenset[str] = frozenset(),
    ) -> None:
        self.endpoint = endpoint
        self.strict = strict
        self.sync_name = sync_name
        self.model_file = model_file
        self.keep_nulls = keep_nulls
        self.max_body_bytes = max_body_bytes or endpoint.max_body_bytes

    def key_hash(self, key_text: str) -> str:
        """SQL for the idempotency key of a row with this (text) source key: stable across runs."""
        scope = quote_literal(f"{self.sync_name}\x1f{self.endpoint.name}\x1f")
        return f"substr(sha256({scope} || {key_text}), 1, 32)"

    def _fail(self, field: str, message: str) -> ConfigError:
        return ConfigError(self.model_file, field, message)

    def _check_columns(self, columns: dict[str, DuckDBPyType]) -> None:
        if "_key" not in columns:
            raise self._fail("_key", "the model must select _key (the source's primary key, a column of `source`)")
        declared = {f.name for f in self.endpoint.fields}
        for name in columns:
            if not name.startswith("_") and name not in declared:
                raise self._fail(
                    name,
                    f"not a field of {self.endpoint.qualified_name} (fields: {', '.join(sorted(declared))}); "
                    "prefix helper columns with _ to keep them out of the payload",
                )
        for f in self.endpoint.fields:
            if f.required and f.required_when is None and f.name not in columns:
                raise self._fail(f.name, f"{self.endpoint.qualified_name} requires this field; the model lacks it")

    def _field_sql(self, f: Field, dtype: DuckDBPyType) -> _FieldSql:
        col = quote_ident(f.name)
        shown = f"coalesce(left(CAST({col} AS VARCHAR), 60), '')"
        tid = dtype.id
        reasons: list[tuple[str, str]] = []
        value = col
        out_type = dtype
        varchar = duckdb.sqltype("VARCHAR")
        if f.kind == "string":
            if tid in ("struct", "list", "map") or _is_json(dtype):
                raise self._fail(f.name, f"must be text for {self.endpoint.qualified_name}, the column is {dtype}")
            if tid != "varchar":
                value, out_type = f"CAST({col} AS VARCHAR)", varchar
            # Text goes out as the model wrote it: never trimmed, and a blank text is text (the opt-in
            # rule ``not_blank`` rejects it where a sync wants that; ``min_length`` where the document does).
        elif f.kind in ("number", "integer"):
            # NaN and ±Infinity are not JSON: they fail the row like any other non-number.
            if tid in INTEGER_IDS:
                pass
            elif tid in NUMERIC_IDS and f.kind == "number":
                value = f"CASE WHEN isfinite(CAST({col} AS DOUBLE)) THEN {col} END"
            elif tid in NUMERIC_IDS:  # a float where an integer is wanted
                value = (
                    f"CASE WHEN isfinite(CAST({col} AS DOUBLE)) AND {col} = round({col}) "
                    f"THEN TRY_CAST({col} AS BIGINT) END"
                )
                out_type = duckdb.sqltype("BIGINT")
            elif tid == "varchar" and not _is_json(dtype):
                if f.kind == "integer":
                    value, out_type = f"TRY_CAST({col} AS BIGINT)", duckdb.sqltype("BIGINT")
                else:
                    as_double = f"TRY_CAST({col} AS DOUBLE)"
                    value, out_type = f"CASE WHEN isfinite({as_double}) THEN {as_double} END", duckdb.sqltype("DOUBLE")
            else:
                raise self._fail(f.name, f"must be a {f.kind}, the column is {dtype}")
            kind_word = "a whole number" if f.kind == "integer" else "a number"
            reasons.append((f"{col} IS NOT NULL AND {value} IS NULL", f"'{f.name} must be {kind_word}, got ' || {shown}"))
            if f.min_value is not None:
                reasons.append((f"{value} < {f.min_value}", f"'{f.name} must be at least {f.min_value:g}, got ' || {shown}"))
            if f.max_value is not None:
                reasons.append((f"{value} > {f.max_value}", f"'{f.name} must be at most {f.max_value:g}, got ' || {shown}"))
        elif f.kind == "boolean":
            if tid != "boolean":
                value, out_type = f"TRY_CAST({col} AS BOOLEAN)", duckdb.sqltype("BOOLEAN")
                reasons.append((f"{col} IS NOT NULL AND {value} IS NULL", f"'{f.name} must be true or false, got ' || {shown}"))
        elif f.kind == "timestamp":
            if tid in TIMESTAMP_IDS:
                value, out_type = _iso_from_timestamp(col, tid), varchar
            elif tid == "varchar":
                value = (
                    f"CASE WHEN regexp_full_match({col}, '{ISO_8601_WITH_OFFSET}') "
                    f"AND TRY_CAST({col} AS TIMESTAMPTZ) IS NOT NULL THEN {col} END"
                )
                reasons.append(
                    (
                        f"{col} IS NOT NULL AND {value} IS NULL",
                        f"'{f.name} must be an ISO 8601 timestamp with an offset "
                        f"(e.g. 2026-06-20T12:00:00+00:00), got ' || {shown}",
                    )
                )
            else:
                raise self._fail(f.name, f"must be a timestamp, the column is {dtype}")
        elif f.kind == "epoch_ms":
            if tid in TIMESTAMP_IDS:
                value, out_type = f"epoch_ms(CAST({col} AS TIMESTAMPTZ))", duckdb.sqltype("BIGINT")
            elif tid in INTEGER_IDS:
                pass
            elif tid == "varchar" or tid in NUMERIC_IDS:
                value = f"coalesce(TRY_CAST({col} AS BIGINT), epoch_ms(TRY_CAST({col} AS TIMESTAMPTZ)))"
                out_type = duckdb.sqltype("BIGINT")
                reasons.append((f"{col} IS NOT NULL AND {value} IS NULL", f"'{f.name} must be epoch milliseconds, got ' || {shown}"))
            else:
                raise self._fail(f.name, f"must be epoch milliseconds or a timestamp, the column is {dtype}")
            reasons.append((f"{value} <= 0", f"'{f.name} must be a positive epoch-millisecond time, got ' || {shown}"))
        elif f.kind in ("object", "string_map"):
            if tid == "struct":
                if f.kind == "string_map":
                    for child_name, child_type in _struct_children(dtype):
                        if child_type.id != "varchar" or _is_json(child_type):
                            raise self._fail(
                                f"{f.name}.{child_name}",
                                f"{self.endpoint.qualified_name} wants string values here, the column is "
                                f"{child_type}: cast it to VARCHAR in the model",
                            )
            elif tid == "map":
                if f.kind == "string_map" and str(dtype).upper() != "MAP(VARCHAR, VARCHAR)":
                    raise self._fail(f.name, f"{self.endpoint.qualified_name} wants string values, the map is {dtype}")
            elif tid == "varchar":
                is_object = f"(json_valid({col}) AND json_type(CAST({col} AS JSON)) = 'OBJECT')"
                if f.kind == "string_map":
                    is_object += (
                        f" AND list_bool_and(list_transform(map_values(json_transform({col}, '\"MAP(VARCHAR, JSON)\"')),"
                        " lambda v: json_type(v) = 'VARCHAR')) IS NOT FALSE"
                    )
                value, out_type = f"CASE WHEN {is_object} THEN CAST({col} AS JSON) END", duckdb.sqltype("JSON")
                what = "an object of string values" if f.kind == "string_map" else "a JSON object"
                reasons.append((f"{col} IS NOT NULL AND {value} IS NULL", f"'{f.name} must be {what}, got ' || {shown}"))
            else:
                raise self._fail(f.name, f"must be an object (STRUCT, MAP or JSON), the column is {dtype}")
        elif f.kind == "array":
            if tid == "varchar":
                value = f"CASE WHEN json_valid({col}) AND json_type(CAST({col} AS JSON)) = 'ARRAY' THEN CAST({col} AS JSON) END"
                out_type = duckdb.sqltype("JSON")
                reasons.append((f"{col} IS NOT NULL AND {value} IS NULL", f"'{f.name} must be a JSON array, got ' || {shown}"))
            elif tid != "list":
                raise self._fail(f.name, f"must be a list, the column is {dtype}")

        if f.min_length is not None:
            too_short = f"'{f.name} must not be empty'" if f.min_length == 1 else (
                f"'{f.name} is ' || length(CAST({value} AS VARCHAR)) || ' characters, under the minimum of {f.min_length}'"
            )
            reasons.append((f"length(CAST({value} AS VARCHAR)) < {f.min_length}", too_short))
        if f.max_length is not None:
            reasons.append(
                (
                    f"length(CAST({value} AS VARCHAR)) > {f.max_length}",
                    f"'{f.name} is ' || length(CAST({value} AS VARCHAR)) || ' characters, over the limit of {f.max_length}'",
                )
            )
        if f.choices:
            allowed = ", ".join(quote_literal(c) for c in f.choices)
            reasons.append(
                (
                    f"{value} NOT IN ({allowed})",
                    f"'{f.name} must be one of {', '.join(f.choices)}; got ' || {shown}",
                )
            )
        # Last: a value that is there but unusable ("must be a number, got fast") also normalizes to NULL,
        # and the row gets that reason, not "is required" as well (one reason per field: see sql()).
        if f.required and f.required_when is None:
            reasons.append((f"{value} IS NULL", f"'{f.name} is required'"))
        elif f.required_when:
            because = f" {f.required_because}" if f.required_because else ""
            reasons.append((f"({f.required_when}) AND {value} IS NULL", quote_literal(f"{f.name} is required{because}")))
        return _FieldSql(value, out_type, reasons)

    def sql(self, relation: str, columns: dict[str, DuckDBPyType]) -> str:
        """A SELECT over ``relation`` giving _key, _cursor, idem_key, payload, payload_hash, reject_reason."""
        self._check_columns(columns)
        declared = [f for f in self.endpoint.fields]
        fill = [f"NULL AS {quote_ident(f.name)}" for f in declared if f.name not in columns]
        base = f"SELECT *{''.join(', ' + x for x in fill)} FROM {relation}"
        if "_cursor" not in columns:
            base = f"SELECT *, NULL AS _cursor FROM ({base})"

        selects: list[str] = []
        pieces: list[str] = []
        strict: list[tuple[int, str]] = []  # (piece, field) of nested values: checked for non-JSON numbers
        texts: list[tuple[str, str]] = []  # (column, field) of JSON given as text: checked for repeated keys
        reasons: list[str] = []
        for i, f in enumerate(declared):
            dtype = columns.get(f.name, duckdb.sqltype("VARCHAR"))
            fs = self._field_sql(f, dtype)
            alias = f"_f{i}"
            selects.append(f"{fs.value} AS {alias}")
            label = quote_literal(_json_string(f.name) + ":")
            pieces.append(f"CASE WHEN {alias} IS NULL THEN NULL ELSE {label} || {json_of(alias, fs.dtype, self.keep_nulls)} END")
            if f.kind in ("object", "array", "any"):
                strict.append((len(pieces) - 1, f.name))
                if _is_json(fs.dtype) or fs.dtype.id == "varchar":
                    texts.append((alias, f.name))
            if fs.reasons:
                # One reason per field: the first rule it breaks, in the order _field_sql lists them.
                reasons.append("CASE " + " ".join(f"WHEN {cond} THEN {reason}" for cond, reason in fs.reasons) + " END")
        for rule in self.endpoint.active_rules(self.strict):
            # A named rule says so in the reason: "... (rule trubrics.thread_id_string)".
            said = f"{rule.reason} || {quote_literal(f' (rule {rule.name})')}" if rule.name else rule.reason
            reasons.append(f"CASE WHEN {rule.when} THEN {said} END")

        reason_sql = "NULLIF(concat_ws('; '" + "".join(", " + r for r in reasons) + "), '')"
        # Duplicate keys: the newest row by cursor wins (NULL cursors lose). A narrow pass finds the keys
        # that repeat and their newest cursor; the wide pass joins that small set back. A window over the
        # wide rows instead ran out of memory at DuckDB's limit on a 1M-row model that merges JSON.
        # Rows tied on the newest cursor all rank 1 and get one idempotency key: the delivery sends one
        # of them (the planner drops repeated keys) and counts the others skipped.
        inner = (
            f"SELECT CAST(b._key AS VARCHAR) AS _key, b._cursor, {', '.join(selects)}, {reason_sql} AS _reason, "
            "CASE WHEN d._k IS NULL OR b._cursor IS NOT DISTINCT FROM d._maxc THEN 1 ELSE 2 END AS _dup, "
            "d._k IS NOT NULL AND b._cursor IS NOT DISTINCT FROM d._maxc AS _maybe_tie "
            f"FROM ({base}) AS b LEFT JOIN ("
            f"SELECT CAST(_key AS VARCHAR) AS _k, max(_cursor) AS _maxc FROM ({base}) AS n "
            "WHERE _key IS NOT NULL GROUP BY 1 HAVING count(*) > 1"
            ") AS d ON CAST(b._key AS VARCHAR) = d._k"
        )
        scope = quote_literal(f"{self.sync_name}\x1f{self.endpoint.name}\x1f")
        if self.endpoint.idempotency_field:
            # The vendor dedups natively: send the ledger's idempotency key in the named field.
            label = quote_literal(_json_string(self.endpoint.idempotency_field) + ":")
            pieces.append(
                f"CASE WHEN _key IS NULL OR _dup > 1 THEN NULL "
                f"ELSE {label} || to_json(substr(sha256({scope} || _key), 1, 32)) END"
            )
        payload = "'{' || concat_ws(','" + "".join(f", _p{n}" for n in range(len(pieces))) + ") || '}'"
        piece_columns = "".join(f", {p} AS _p{n}" for n, p in enumerate(pieces))
        not_json = "".join(
            f", CASE WHEN {non_json_number(f'_p{n}')} THEN "
            f"{quote_literal(name + ' holds NaN, Infinity or a number out of range, which JSON cannot carry')} END"
            for n, name in strict
        ) + "".join(
            f", CASE WHEN json_type({col}) = 'OBJECT' AND len(list_distinct(json_keys({col}))) < len(json_keys({col})) "
            f"THEN {quote_literal(name + ' has the same key twice (JSON text); a vendor keeps either one')} END"
            for col, name in texts
        )
        overhead = self.endpoint.envelope_bytes()
        limit = self.max_body_bytes - overhead
        return f"""
            WITH shaped AS ({inner}),
            pieced AS (SELECT *{piece_columns} FROM shaped),
            rendered AS (SELECT _key, _cursor, concat_ws('; ', _reason{not_json}) AS _reason, _dup, _maybe_tie,
                                {payload} AS payload FROM pieced)
            SELECT
                _key,
                _cursor,
                {cursor_text_sql(columns.get("_cursor"))} AS cursor_text,
                CASE
                    WHEN _key IS NULL THEN 'nokey-' || substr(sha256({scope} || payload), 1, 26)
                    WHEN _dup > 1 THEN 'dup-' || substr(sha256({scope} || _key || '\x1f' || coalesce(CAST(_cursor AS VARCHAR), '')), 1, 28)
                    ELSE {self.key_hash("_key")}
                END AS idem_key,
                payload,
                md5(payload) AS payload_hash,
                _maybe_tie,
                NULLIF(concat_ws('; ',
                    CASE WHEN _key IS NULL THEN 'the source key is NULL, so the row cannot be tracked' END,
                    CASE WHEN _dup > 1 THEN 'duplicate source key ' || _key || ': a newer row with this key is in the same run' END,
                    NULLIF(_reason, ''),
                    CASE WHEN strlen(payload) > {limit}
                         THEN 'item is ' || strlen(payload) || ' bytes, over the {limit}-byte request limit' END
                ), '') AS reject_reason
            FROM rendered
        """


def non_json_number(text: str) -> str:
    """SQL: ``text`` (a rendered JSON fragment) holds ``NaN``/``Infinity`` (DuckDB's ``to_json`` writes them
    for DOUBLE values, and JSON text columns may carry them) or a number that overflows a double. A cheap
    substring test first; only suspects have their string literals stripped and their tokens checked."""
    stripped = f"regexp_replace({text}, '\"(?:[^\"\\\\]|\\\\.)*\"', '\"\"', 'g')"
    tokens = f"regexp_replace({stripped}, '-?[0-9]+(\\.[0-9]+)?([eE][+-]?[0-9]+)?|true|false|null', '', 'g')"
    return (
        f"({text} IS NOT NULL AND regexp_matches({text}, 'NaN|Infinity|nan|inf|[eE]\\+?[0-9]{{3}}') AND "
        f"(regexp_matches({tokens}, '[A-Za-z]') OR "
        f"regexp_matches({stripped}, '[0-9][eE]\\+?(309|3[1-9][0-9]|[4-9][0-9][0-9]|[0-9]{{4,}})')))"
    )


CURSOR_TEXT_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # UTC, fixed width: the ledger compares these as text


def cursor_text_sql(dtype: DuckDBPyType | None) -> str:
    """The cursor as the ledger stores it: time cursors as fixed-width UTC ISO text (so a window is a
    text range query), anything else as plain text."""
    if dtype is None:
        return "CAST(NULL AS VARCHAR)"
    if dtype.id == "timestamp with time zone":
        return f"strftime(timezone('UTC', _cursor), '{CURSOR_TEXT_FORMAT}')"
    if dtype.id in TIMESTAMP_IDS:
        return f"strftime(CAST(_cursor AS TIMESTAMP), '{CURSOR_TEXT_FORMAT}')"
    return "CAST(_cursor AS VARCHAR)"


def describe(con: duckdb.DuckDBPyConnection, relation: str) -> dict[str, DuckDBPyType]:
    rel = con.sql(f"SELECT * FROM {relation} LIMIT 0")
    return dict(zip(rel.columns, rel.dtypes, strict=True))


def field_names(fields: Sequence[Field]) -> list[str]:
    return [f.name for f in fields]
