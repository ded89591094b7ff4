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
- A NULL top-level field is omitted, and so is JSON ``null`` given for an object or array field. NULL
  members of a STRUCT are omitted too, unless the sync sets ``keep_nulls: true`` (Screeb identify uses
  that to delete a trait); MAP values, list elements and JSON text go out as given (``null`` included).
- Values go out as the model wrote them: text untrimmed, JSON text byte for byte. The conversions a
  column type needs are listed per field kind in docs/vendors.md ("How values are sent", from
  ``connectors.docgen.NORMALIZATIONS``: keep the two in step).
- A bad value rejects its row only (a reason naming the field); only a column type no row could send is
  a ConfigError. Nested values are checked on their rendered JSON (:meth:`PayloadBuilder._rendered_checks`):
  NaN/Infinity at any depth, member kinds (``string_map``, ``Field.member_kinds``), repeated keys.
- The endpoint's ``idempotency_field``, when it is a declared Field, may come from the model (non-empty,
  the Field's limits); syncline fills in the ledger's key where the model gives none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
from duckdb.sqltypes import DuckDBPyType

from connectors.engine.endpoint import Endpoint, Field
from connectors.errors import ConfigError

ISO_8601_WITH_OFFSET = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}(:?\d{2})?)$"
UTC_ISO_FORMAT = "%Y-%m-%dT%H:%M:%S.%g+00:00"
UTC_ISO_FORMAT_US = "%Y-%m-%dT%H:%M:%S.%f+00:00"  # when the value has sub-millisecond digits: none are cut
NUMERIC_IDS = {
    "tinyint", "smallint", "integer", "bigint", "hugeint", "utinyint", "usmallint", "uinteger",
    "ubigint", "uhugeint", "float", "double", "decimal",
}
INTEGER_IDS = {"tinyint", "smallint", "integer", "bigint", "hugeint", "utinyint", "usmallint", "uinteger", "ubigint"}
TIMESTAMP_IDS = {"timestamp", "timestamp with time zone", "timestamptz_ns", "timestamp_ms", "timestamp_ns", "timestamp_s",
                 "date"}
TZ_IDS = {"timestamp with time zone", "timestamptz_ns"}  # instants: formatted in UTC whatever the session zone
# (pandas writes TIMESTAMP_NS / TIMESTAMPTZ_NS: their nanoseconds are rounded to microseconds, documented)


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def read_payloads_sql(path: Path) -> str:
    """``read_parquet`` over a rendered payload file, or over every part file of a payload folder (a
    render that ran in key partitions, :func:`connectors.stage.open_model`)."""
    target = path / "*.parquet" if path.is_dir() else path
    return f"read_parquet({quote_literal(str(target))})"


def _is_json(dtype: DuckDBPyType) -> bool:
    return str(dtype) == "JSON"


def _iso_from_timestamp(expr: str, dtype_id: str) -> str:
    """ISO 8601 in UTC with milliseconds, or microseconds when the value has them (values go out whole)."""
    # Naive timestamps and dates are taken as UTC (documented in docs/sync-files.md).
    utc = f"timezone('UTC', {expr})" if dtype_id in TZ_IDS else f"CAST({expr} AS TIMESTAMP)"
    return (f"CASE WHEN microsecond({utc}) % 1000 = 0 THEN strftime({utc}, '{UTC_ISO_FORMAT}') "
            f"ELSE strftime({utc}, '{UTC_ISO_FORMAT_US}') END")


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


def _map_value_type(dtype: DuckDBPyType) -> DuckDBPyType:
    return dict(_struct_children(dtype))["value"]


def _contains_json(dtype: DuckDBPyType) -> bool:
    """Whether a value of this type can hold JSON text (which DuckDB may not have validated)."""
    if _is_json(dtype):
        return True
    if dtype.id in ("struct", "map", "list", "array", "union"):
        return any(_contains_json(child) for _, child in _struct_children(dtype))
    return False


# DuckDB's json_type() names for each member kind of Field.member_kinds.
JSON_TYPES_OF_KIND: dict[str, tuple[str, ...]] = {
    "string": ("VARCHAR",),
    "integer": ("BIGINT", "UBIGINT"),
    "number": ("BIGINT", "UBIGINT", "DOUBLE"),
    "boolean": ("BOOLEAN",),
    "object": ("OBJECT",),
    "array": ("ARRAY",),
    "null": ("NULL",),
}


def _allowed_json_types(kinds: Sequence[str]) -> set[str]:
    return {t for kind in kinds for t in JSON_TYPES_OF_KIND[kind]}


def _json_kinds(dtype: DuckDBPyType) -> set[str] | None:
    """The json_type() names a non-NULL value of this SQL type renders as (to_json); None: any (JSON)."""
    tid = dtype.id
    if _is_json(dtype) or tid == "union":
        return None
    if tid in ("struct", "map"):
        return {"OBJECT"}
    if tid in ("list", "array"):
        return {"ARRAY"}
    if tid == "boolean":
        return {"BOOLEAN"}
    if tid in INTEGER_IDS or tid == "uhugeint":
        return {"BIGINT", "UBIGINT", "DOUBLE"} if "hugeint" in tid else {"BIGINT", "UBIGINT"}
    if tid == "decimal":
        return {"BIGINT", "UBIGINT", "DOUBLE"}
    if tid in ("float", "double"):
        return {"DOUBLE"}
    return {"VARCHAR"}  # text, timestamps, dates, UUIDs, enums...: JSON strings


def _member_kinds_possible(dtype: DuckDBPyType, keep_nulls: bool) -> set[str] | None:
    """The json_type() names the members of an object of this type can have as sent; None: any."""
    if dtype.id == "struct":
        found: set[str] = {"NULL"} if keep_nulls else set()
        for _, child in _struct_children(dtype):
            kinds = _json_kinds(child)
            if kinds is None:
                return None
            found |= kinds
        return found
    if dtype.id == "map":  # to_json keeps a NULL map value as null
        kinds = _json_kinds(_map_value_type(dtype))
        return None if kinds is None else kinds | {"NULL"}
    return None


def _json_type_sql(col: str) -> str:
    """SQL: json_type() of text that may not be JSON (NULL then). json_type on invalid JSON raises, and
    DuckDB evaluates both sides of an AND in a SELECT list, so the guard is a TRY_CAST, the same as
    ``CASE WHEN json_valid(x) THEN json_type(x) END`` on every input tried (tests/test_render_memory.py).
    That CASE is one JSON call more, and over a model's ``json_merge_patch`` output it ran out of memory at
    the 256 MB default at once (DuckDB 2.0.1, 1 KB items): DuckDB's JSON calls each keep a per-thread
    arena for a vector of rows, which grows with the item size, not with the row count."""
    return f"json_type(TRY_CAST({col} AS JSON))"


def _ms_date(ms: float) -> str:
    import datetime as dt

    try:
        return (dt.datetime(1970, 1, 1) + dt.timedelta(milliseconds=ms)).date().isoformat()
    except OverflowError:
        return "year 9999" if ms > 0 else "year 1"


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
            if name == self.endpoint.idempotency_field and name not in declared:
                raise self._fail(
                    name,
                    f"{self.endpoint.qualified_name} fills this in itself (the ledger's idempotency key); "
                    "the model cannot set it",
                )
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
        elif f.kind == "iso8601":  # a document that says only "ISO 8601": every form of it, text as written
            if tid in TIMESTAMP_IDS:
                value, out_type = _iso_from_timestamp(col, tid), varchar
            elif tid == "varchar" and not _is_json(dtype):
                from connectors.engine.iso8601 import valid_sql

                value = f"CASE WHEN {valid_sql(col)} THEN {col} END"
                reasons.append((
                    f"{col} IS NOT NULL AND {value} IS NULL",
                    f"'{f.name} must be an ISO 8601 date or date-time (e.g. 2026-06-20, 2026-06-20T12:00:00 "
                    f"or 2026-06-20T12:00:00+02:00), got ' || {shown}",
                ))
            else:
                raise self._fail(f.name, f"must be a timestamp or ISO 8601 text, the column is {dtype}")
        elif f.kind == "epoch_ms":
            number = None  # the value when it was given as a number: the only case with a unit to check
            if tid in TIMESTAMP_IDS:
                # The unit is known: converted exactly (sub-millisecond digits dropped), no range check.
                value, out_type = f"epoch_ms(CAST({col} AS TIMESTAMPTZ))", duckdb.sqltype("BIGINT")
            elif tid in INTEGER_IDS:
                number = col
            elif tid in NUMERIC_IDS:  # rounded to whole milliseconds; NaN and Infinity are not times
                number = f"CASE WHEN isfinite(CAST({col} AS DOUBLE)) THEN TRY_CAST({col} AS BIGINT) END"
                value, out_type = number, duckdb.sqltype("BIGINT")
            elif tid == "varchar" and not _is_json(dtype):
                # Numeric text is a number of milliseconds; ISO 8601 text is converted like a TIMESTAMPTZ.
                number = f"TRY_CAST({col} AS BIGINT)"
                value = f"coalesce({number}, epoch_ms(TRY_CAST({col} AS TIMESTAMPTZ)))"
                out_type = duckdb.sqltype("BIGINT")
            else:
                raise self._fail(f.name, f"must be epoch milliseconds or a timestamp, the column is {dtype}")
            if value != col:
                reasons.append((f"{col} IS NOT NULL AND {value} IS NULL", f"'{f.name} must be epoch milliseconds, got ' || {shown}"))
            if number is not None and f.plausible_ms is not None:
                low, high = f.plausible_ms
                reasons.append((
                    f"{number} < {int(low)}",
                    quote_literal(f"{f.name} looks like seconds (under {int(low)}, {_ms_date(low)} as milliseconds); "
                                  "the document wants milliseconds, got ") + f" || {shown}",
                ))
                reasons.append((
                    f"{number} >= {int(high)}",
                    quote_literal(f"{f.name} looks like microseconds or nanoseconds ({int(high)} or more, after "
                                  f"{_ms_date(high)} as milliseconds); the document wants milliseconds, got ")
                    + f" || {shown}",
                ))
        elif f.kind in ("object", "string_map"):
            kinds = f.allowed_member_kinds
            if tid in ("struct", "map"):
                # A member type that can never render as an allowed kind is a config error (every row with
                # that member would fail); members that may (JSON, VARCHAR...) are checked per row.
                members = _struct_children(dtype) if tid == "struct" else [("<value>", _map_value_type(dtype))]
                for child_name, child_type in members:
                    possible = _json_kinds(child_type)
                    if kinds and possible is not None and not possible & _allowed_json_types(kinds):
                        where = f"{f.name}.{child_name}" if tid == "struct" else f.name
                        wants = "string values" if kinds == ("string",) else f"{'/'.join(kinds)} values"
                        what = f"the column is {child_type}" if tid == "struct" else f"the map is {dtype}"
                        fix = ": cast it to VARCHAR in the model" if kinds == ("string",) else ""
                        raise self._fail(where, f"{self.endpoint.qualified_name} wants {wants} here, {what}{fix}")
            elif tid == "varchar":
                # JSON text (or a JSON column) as the model wrote it; JSON null is an absent object.
                kind_of = _json_type_sql(col)
                value, out_type = f"CASE WHEN {kind_of} = 'OBJECT' THEN CAST({col} AS JSON) END", duckdb.sqltype("JSON")
                what = "an object of string values" if f.kind == "string_map" else "a JSON object"
                reasons.append((
                    f"{col} IS NOT NULL AND coalesce({kind_of}, '') NOT IN ('OBJECT', 'NULL')",
                    f"'{f.name} must be {what}, got ' || {shown}",
                ))
            else:
                raise self._fail(f.name, f"must be an object (STRUCT, MAP or JSON), the column is {dtype}")
        elif f.kind == "array":
            if tid == "varchar":
                kind_of = _json_type_sql(col)
                value = f"CASE WHEN {kind_of} = 'ARRAY' THEN CAST({col} AS JSON) END"
                out_type = duckdb.sqltype("JSON")
                reasons.append((
                    f"{col} IS NOT NULL AND coalesce({kind_of}, '') NOT IN ('ARRAY', 'NULL')",
                    f"'{f.name} must be a JSON array, got ' || {shown}",
                ))
            elif tid not in ("list", "array"):
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

    def _rendered_checks(self, f: Field, dtype: DuckDBPyType, text: str) -> list[tuple[str, str]]:
        """Checks on a nested value's JSON as rendered (``text``, not NULL), in order; one reason per field.

        Done on the JSON text itself, so they hold at any depth and for every column type: NaN/Infinity
        (which DuckDB's ``to_json`` writes and its JSON type accepts), JSON values DuckDB never validated,
        the kinds of an object's members, and (JSON text) a key given twice."""
        if f.kind not in ("object", "string_map", "array", "any"):
            return []
        checks: list[tuple[str, str]] = []
        if _contains_json(dtype):
            checks.append((f"NOT json_valid({text})", quote_literal(f"{f.name} is not valid JSON") + f" || ', got ' || left({text}, 60)"))
        checks.append((non_json_number(text), quote_literal(
            f"{f.name} holds NaN, Infinity or a number out of range, which JSON cannot carry")))
        kinds = f.allowed_member_kinds
        if kinds:
            allowed = _allowed_json_types(kinds)
            possible = _member_kinds_possible(dtype, self.keep_nulls)
            if possible is None or not possible <= allowed:
                listed = ", ".join(quote_literal(t) for t in sorted(allowed))
                members = f"map_values(json_transform({text}, '\"MAP(VARCHAR, JSON)\"'))"
                every = f"list_bool_and(list_transform({members}, lambda v: coalesce(json_type(v), 'NULL') IN ({listed})))"
                what = "an object of string values" if kinds == ("string",) else (
                    "an object of " + " or ".join(kinds) + " values")
                checks.append((
                    f"(CASE WHEN json_type({text}) = 'OBJECT' THEN NOT coalesce({every}, true) END)",
                    quote_literal(f"{f.name} must be {what}, got ") + f" || left({text}, 60)",
                ))
        if _is_json(dtype):
            checks.append((
                f"(CASE WHEN json_type({text}) = 'OBJECT' THEN len(list_distinct(json_keys({text}))) < len(json_keys({text})) END)",
                quote_literal(f"{f.name} has the same key twice (JSON text); a vendor keeps either one"),
            ))
        return checks

    def sql(self, relation: str, columns: dict[str, DuckDBPyType], repeats_in: str | None = None) -> str:
        """A SELECT over ``relation`` giving _key, _cursor, idem_key, payload, payload_hash, reject_reason.

        ``repeats_in``: a relation with the same rows' ``_key`` (and nothing else needed), given when every
        row of a key carries the same cursor (:func:`connectors.stage.open_model` carried it by ``_key``):
        repeated keys are found there, so the join that carries the cursor runs once, over the wide rows,
        and not a second time for the narrow pass. Run twice, the two joins' hash tables ran out of memory
        at DuckDB's default limit on a 1M-row model with 400-byte items."""
        self._check_columns(columns)
        declared = [f for f in self.endpoint.fields]
        fill = [f"NULL AS {quote_ident(f.name)}" for f in declared if f.name not in columns]
        base = f"SELECT *{''.join(', ' + x for x in fill)} FROM {relation}"
        if "_cursor" not in columns:
            base = f"SELECT *, NULL AS _cursor FROM ({base})"

        selects: list[str] = []
        rendered: list[str] = []  # the JSON text of each field's value (NULL: omitted), over the shaped row
        pieces: list[str] = []  # '"name":' || that JSON
        late: list[str] = []  # reasons found on the JSON as rendered (NaN at any depth, member kinds...)
        reasons: list[str] = []
        native = self.endpoint.native_key_field
        scope = quote_literal(f"{self.sync_name}\x1f{self.endpoint.name}\x1f")
        own_key = f"to_json(substr(sha256({scope} || _key), 1, 32))"
        for i, f in enumerate(declared):
            dtype = columns.get(f.name, duckdb.sqltype("VARCHAR"))
            fs = self._field_sql(f, dtype)
            alias, text = f"_f{i}", f"_j{i}"
            if f is native:
                # The vendor's dedup key as the model gives it: a key, so never empty (the document's
                # limits are the Field's own); syncline's key stands in only where the model gives none.
                fs.reasons.insert(0, (f"length(CAST({fs.value} AS VARCHAR)) = 0",
                                      f"'{f.name} must not be empty: it is the vendor''s dedup key'"))
            selects.append(f"{fs.value} AS {alias}")
            rendered.append(f"CASE WHEN {alias} IS NULL THEN NULL ELSE {json_of(alias, fs.dtype, self.keep_nulls)} END AS {text}")
            label = quote_literal(_json_string(f.name) + ":")
            if f is native:
                pieces.append(f"CASE WHEN {text} IS NOT NULL THEN {label} || {text} "
                              f"WHEN _key IS NULL OR _dup > 1 THEN NULL ELSE {label} || {own_key} END")
            else:
                pieces.append(f"CASE WHEN {text} IS NULL THEN NULL ELSE {label} || {text} END")
            if fs.reasons:
                # One reason per field: the first rule it breaks, in the order _field_sql lists them.
                reasons.append("CASE " + " ".join(f"WHEN {cond} THEN {reason}" for cond, reason in fs.reasons) + " END")
            checks = self._rendered_checks(f, fs.dtype, text)
            if checks:
                late.append("CASE WHEN " + text + " IS NULL THEN NULL "
                            + " ".join(f"WHEN {cond} THEN {reason}" for cond, reason in checks) + " END")
            if (f.required and f.required_when is None and fs.dtype.id == "struct" and not self.keep_nulls):
                # An all-NULL STRUCT is an absent object (see json_of): absent, yet required.
                late.append(f"CASE WHEN {alias} IS NOT NULL AND {text} IS NULL "
                            f"THEN {quote_literal(f.name + ' is required; every member of the object is NULL')} END")
        for rule in self.endpoint.active_rules(self.strict):
            # A named rule says so in the reason: "... (rule trubrics.thread_id_string)".
            said = f"{rule.reason} || {quote_literal(f' (rule {rule.name})')}" if rule.name else rule.reason
            reasons.append(f"CASE WHEN {rule.when} THEN {said} END")

        reason_sql = ("NULLIF(concat_ws('; '" + "".join(", " + r for r in reasons) + "), '')") if reasons else "CAST(NULL AS VARCHAR)"
        # Duplicate keys: the newest row by cursor wins (NULL cursors lose). A narrow pass finds the keys
        # that repeat and their newest cursor; the wide pass joins that small set back. A window over the
        # wide rows instead ran out of memory at DuckDB's limit on a 1M-row model that merges JSON.
        # Rows tied on the newest cursor all rank 1 and get one idempotency key: the delivery sends one
        # of them (the planner drops repeated keys) and counts the others skipped.
        if repeats_in is None:
            repeated = (f"SELECT CAST(_key AS VARCHAR) AS _k, max(_cursor) AS _maxc FROM ({base}) AS n "
                        "WHERE _key IS NOT NULL GROUP BY 1 HAVING count(*) > 1")
            newest = "b._cursor IS NOT DISTINCT FROM d._maxc"
        else:  # a key's rows all carry its newest cursor: every row of a repeated key ties on it
            repeated = (f"SELECT CAST(_key AS VARCHAR) AS _k FROM {repeats_in} "
                        "WHERE _key IS NOT NULL GROUP BY 1 HAVING count(*) > 1")
            newest = "TRUE"
        inner = (
            f"SELECT CAST(b._key AS VARCHAR) AS _key, b._cursor, {', '.join(selects)}, {reason_sql} AS _reason, "
            f"CASE WHEN d._k IS NULL OR {newest} THEN 1 ELSE 2 END AS _dup, "
            f"d._k IS NOT NULL AND {newest} AS _maybe_tie "
            f"FROM ({base}) AS b LEFT JOIN ({repeated}) AS d ON CAST(b._key AS VARCHAR) = d._k"
        )
        if self.endpoint.idempotency_field and native is None:
            # Not a field the model can set: syncline sends the ledger's idempotency key in it.
            label = quote_literal(_json_string(self.endpoint.idempotency_field) + ":")
            pieces.append(f"CASE WHEN _key IS NULL OR _dup > 1 THEN NULL ELSE {label} || {own_key} END")
        payload = "'{' || concat_ws(','" + "".join(f", _p{n}" for n in range(len(pieces))) + ") || '}'"
        json_columns = "".join(f", {r}" for r in rendered)
        piece_columns = "".join(f", {p} AS _p{n}" for n, p in enumerate(pieces))
        not_json = "".join(", " + r for r in late)
        overhead = self.endpoint.envelope_bytes()
        limit = self.max_body_bytes - overhead
        return f"""
            WITH shaped AS ({inner}),
            jsoned AS (SELECT *{json_columns} FROM shaped),
            pieced AS (SELECT *{piece_columns} FROM jsoned),
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
    for DOUBLE values, and its JSON type accepts them in text) or a number too large for a double
    (``1e400``, ``1.8e308``: a strict parser refuses it or reads Infinity). A cheap substring test first;
    only suspects have their string literals stripped, then any bare word left is not JSON, and every
    number with a fraction or an exponent must be a finite double."""
    stripped = f"regexp_replace({text}, '\"(?:[^\"\\\\]|\\\\.)*\"', '\"\"', 'g')"
    tokens = f"regexp_replace({stripped}, '-?[0-9]+(\\.[0-9]+)?([eE][+-]?[0-9]+)?|true|false|null', '', 'g')"
    floats = f"regexp_extract_all({stripped}, '-?[0-9]+(\\.[0-9]+([eE][+-]?[0-9]+)?|[eE][+-]?[0-9]+)')"
    overflow = f"list_bool_or(list_transform({floats}, lambda t: NOT coalesce(isfinite(TRY_CAST(t AS DOUBLE)), false)))"
    return (
        f"({text} IS NOT NULL AND regexp_matches({text}, 'NaN|Infinity|nan|inf|[eE][+-]?[0-9]{{3}}|[0-9]{{300}}') AND "
        f"(regexp_matches({tokens}, '[A-Za-z]') OR coalesce({overflow}, false)))"
    )


CURSOR_TEXT_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"  # UTC, fixed width: the ledger compares these as text


def cursor_text_sql(dtype: DuckDBPyType | None) -> str:
    """The cursor as the ledger stores it: time cursors as fixed-width UTC ISO text (so a window is a
    text range query), anything else as plain text."""
    if dtype is None:
        return "CAST(NULL AS VARCHAR)"
    if dtype.id in TZ_IDS:
        return f"strftime(timezone('UTC', _cursor), '{CURSOR_TEXT_FORMAT}')"
    if dtype.id in TIMESTAMP_IDS:
        return f"strftime(CAST(_cursor AS TIMESTAMP), '{CURSOR_TEXT_FORMAT}')"
    return "CAST(_cursor AS VARCHAR)"


def describe(con: duckdb.DuckDBPyConnection, relation: str) -> dict[str, DuckDBPyType]:
    rel = con.sql(f"SELECT * FROM {relation} LIMIT 0")
    return dict(zip(rel.columns, rel.dtypes, strict=True))


def field_names(fields: Sequence[Field]) -> list[str]:
    return [f.name for f in fields]
