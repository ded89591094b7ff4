"""Operators' tools over the ledger: list items, group rejections by rule, queue retries, record verdicts.

The CLI commands ``syncline items``, ``rejects``, ``retry``, ``resolve`` and ``reconcile --apply`` call
these. Everything reads and writes the ledger's tables through its connection (``Ledger._query`` and
``Ledger._write``), in SQL both dialects (SQLite, Postgres) accept.

Reasons are free text built by the engine (``connectors/engine/payload.py``: ``"<field> is required"``,
``"<field> must be a number, got fast"``, several joined by ``"; "``) and by the vendor modules (``"Flux
rejected the event: name is required (missing_name)"``, ``"Trubrics refused the item (422): user_id: field
required"``). :func:`parse_reason` splits each into a *rule* (the text with no row's value in it, so rows
group by it), the *field* it is about, and the *value* the row had.
"""

from __future__ import annotations

import csv
import datetime as dt
import getpass
import io
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from connectors.errors import SynclineError
from connectors.ledger import Ledger
from connectors.ledger.rows import ITEM_STATES, NEVER_SENT, now_text

# --- reasons ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reason:
    """One problem of one row: ``rule`` holds no row's value, so rows group by (rule, field)."""

    rule: str
    field: str | None = None
    value: str | None = None


_F = r"(?P<field>[A-Za-z_$][\w$.\-\[\]]*)"
_VENDOR = r"(?:Flux|Trubrics|Screeb|StreamBack|GradeMyPage)"
_PATTERNS: list[tuple[re.Pattern[str], Any]] = []


def _pattern(regex: str) -> Any:
    def register(fn: Any) -> Any:
        _PATTERNS.append((re.compile(regex, re.S), fn))
        return fn

    return register


@_pattern(r"^the source key is NULL(?P<rest>.*)$")
def _null_key(m: re.Match[str]) -> Reason:
    return Reason("the source key is NULL" + m["rest"], "_key")


@_pattern(r"^duplicate source key (?P<value>.*?): (?P<rest>a newer row .*)$")
def _duplicate(m: re.Match[str]) -> Reason:
    return Reason("duplicate source key: " + m["rest"], "_key", m["value"])


@_pattern(r"^item is (?P<n>\d+) bytes, over the (?P<limit>\d+)-byte request limit$")
def _too_big(m: re.Match[str]) -> Reason:
    return Reason(f"item over the {m['limit']}-byte request limit", None, f"{m['n']} bytes")


@_pattern(r"^same \((?P<tuple>[^)]*)\) as source row (?P<value>.*?): (?P<rest>.*)$")
def _same_tuple(m: re.Match[str]) -> Reason:
    return Reason(f"same ({m['tuple']}) as another source row: {m['rest']}", m["tuple"], m["value"])


@_pattern(r"^(?P<what>retry requested|resolved not delivered) (?P<value>by .*? at [^ ]+?)(?P<rest>: .*)?$")
def _operator(m: re.Match[str]) -> Reason:
    return Reason(m["what"] + (m["rest"] or ""), None, m["value"])


@_pattern(r"^claimed by run (?P<value>\w+): (?P<rest>.*)$")
def _claimed(m: re.Match[str]) -> Reason:
    return Reason("claimed by a run: " + m["rest"], None, m["value"])


@_pattern(r"^HTTP (?P<status>\d{3}) after (?P<n>\d+) attempt\(s\):? ?(?P<value>.*)$")
def _http(m: re.Match[str]) -> Reason:
    rest = m["value"]
    rule = f"HTTP {m['status']} after retries"
    if rest.endswith("; not resent (the vendor may have stored it)"):
        rest = rest.removesuffix("; not resent (the vendor may have stored it)")
        rule += "; not resent (the vendor may have stored it)"
    return Reason(rule, None, readable_error(rest) or None)


@_pattern(rf"^{_F} is (?P<n>\d+) characters, over the limit of (?P<limit>\d+)$")
def _too_long(m: re.Match[str]) -> Reason:
    return Reason(f"is over the limit of {m['limit']} characters", m["field"], f"{m['n']} characters")


@_pattern(rf"^{_F} has unknown member\(s\) (?P<value>.*?) \((?P<allowed>allowed: .*)\)$")
def _unknown_members(m: re.Match[str]) -> Reason:
    return Reason(f"has unknown member(s) ({m['allowed']})", m["field"], m["value"])


@_pattern(rf"^{_F} (?P<rule>(?:must|looks like|is not) .*?)[;,] got (?P<value>.*)$")
def _got(m: re.Match[str]) -> Reason:
    return Reason(m["rule"], m["field"], m["value"])


@_pattern(rf"^{_F} (?P<rule>is required.*)$")
def _required(m: re.Match[str]) -> Reason:
    return Reason(m["rule"], m["field"])


@_pattern(rf"^{_F} file (?P<rule>not found|is empty): (?P<value>.*)$")
def _file(m: re.Match[str]) -> Reason:
    return Reason(f"file {m['rule']}", m["field"], m["value"])


@_pattern(rf"^{_F} (?P<value>\S+) is outside the files root .*$")
def _outside(m: re.Match[str]) -> Reason:
    return Reason("is outside the files root (set destination.options.files_root to allow it)", m["field"], m["value"])


@_pattern(rf"^{_F} '(?P<value>[^']*)'(?P<rest>.*)$")
def _quoted(m: re.Match[str]) -> Reason:
    return Reason(strip_values(m["rest"].lstrip(": ")), m["field"], m["value"])


@_pattern(rf"^{_F} (?P<rule>must .*)$")
def _must(m: re.Match[str]) -> Reason:
    return Reason(m["rule"], m["field"])


_VENDOR_PREFIX = re.compile(
    rf"^(?P<prefix>{_VENDOR} (?:rejected|refused) (?:the [\w ]+?|step \w+)(?: \((?P<paren>[^)]*)\))?)(?:: (?P<inner>.*))?$",
    re.S,
)
_TRAILING_CODE = re.compile(r"^(?P<body>.*?) \((?P<code>[a-z][a-z0-9_]*|HTTP \d{3}[^)]*)\)$", re.S)


def _vendor(text: str) -> Reason | None:
    """``<Vendor> rejected|refused the <thing>[ (HTTP n)]: <problem>[ (code)]``."""
    m = _VENDOR_PREFIX.match(text)
    if not m:
        return None
    prefix, inner = m["prefix"], m["inner"]
    if inner is None:
        paren = m["paren"] or ""
        if ": " in paren:  # StreamBack: "refused the feedback (VALIDATION_ERROR: message)"
            code, message = paren.split(": ", 1)
            head = prefix[: prefix.rindex(" (")]
            sub = parse_one(message)
            said = f"{sub.field} {sub.rule}" if sub.field else sub.rule
            return Reason(f"{head}: {said} ({code})", sub.field, sub.value)
        return Reason(strip_values(text))
    code = ""
    trailing = _TRAILING_CODE.match(inner)
    if trailing:
        inner, code = trailing["body"], trailing["code"]
    parts = [p for p in inner.split("; ") if p]
    subs = []
    for part in parts or [inner]:
        sub = parse_one(part)
        if sub.field is None and ": " in part and sub.rule == strip_values(part):
            where, what = part.split(": ", 1)  # Trubrics/Screeb: "loc: message"
            if re.fullmatch(r"[\w$.\[\]\-]+", where):
                sub = Reason(what, where)
        subs.append(sub)
    first = subs[0]
    # The vendor's sentence stays whole in the rule (its field is part of it, not a row's value).
    rule = f"{prefix}: " + "; ".join(f"{s.field} {s.rule}" if s.field and not s.rule.startswith(s.field) else s.rule
                                     for s in subs) + (f" ({code})" if code else "")
    fields = [s.field for s in subs if s.field]
    values = [s.value for s in subs if s.value]
    return Reason(rule, ", ".join(dict.fromkeys(fields)) or first.field, "; ".join(values) or None)


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_NUMBER = re.compile(r"(?<![\w.])(?<!HTTP )\d+(?:\.\d+)?(?![\w.])")
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}[T ][\d:.]+(?:Z|[+-]\d{2}:?\d{2})?")
_HEXISH = re.compile(r"\b[0-9a-f]{12,}\b")


def strip_values(text: str) -> str:
    """The text without embedded values: quoted strings, ids and numbers become placeholders."""
    text = text.strip()
    for opener in ("{", "["):
        at = text.find(opener)
        if at > 0:
            text = text[:at].rstrip(" :") + " …"
            break
    text = _QUOTED.sub("'…'", text)
    text = _TIMESTAMP.sub("…", text)
    text = _HEXISH.sub("…", text)
    return _NUMBER.sub("N", text)


_NAMED_RULE = re.compile(r"^(?P<body>.*) \(rule (?P<name>[a-z][a-z0-9_]*)\)$", re.S)
_FIELD_FIRST = re.compile(rf"^{_F} (?P<rule>.*)$", re.S)


def parse_one(text: str) -> Reason:
    text = text.strip()
    named = _NAMED_RULE.match(text)
    if named:  # an endpoint rule: "<field> <says what> (rule <name>)" (payload.py appends the name)
        inner = parse_one(named["body"])
        if inner.field is None and (lead := _FIELD_FIRST.match(named["body"])):
            inner = Reason(strip_values(lead["rule"]), lead["field"])
        return Reason(f"{inner.rule} (rule {named['name']})", inner.field, inner.value)
    vendor = _vendor(text)
    if vendor is not None:
        return vendor
    for pattern, build in _PATTERNS:
        m = pattern.match(text)
        if m:
            reason: Reason = build(m)
            return reason
    return Reason(strip_values(text))


def split_reasons(text: str) -> list[str]:
    """The engine joins a row's problems with ``"; "``; a rule's own ``"; got ..."`` stays with its rule,
    and a vendor's reason (which may list problems itself) is kept whole."""
    if _VENDOR_PREFIX.match(text) or text.startswith("claimed by run "):
        return [text]
    parts: list[str] = []
    for piece in text.split("; "):
        inside = bool(parts) and parts[-1].count("(") > parts[-1].count(")")  # "; " within parentheses
        if parts and (inside or piece.startswith("got ")):
            parts[-1] += "; " + piece
        else:
            parts.append(piece)
    return [p for p in parts if p.strip()]


def parse_reason(text: str | None) -> list[Reason]:
    """Every problem in a reason text, each split into rule, field and value."""
    if not text:
        return []
    return [parse_one(part) for part in split_reasons(text)]


def readable_error(text: str | None) -> str:
    """A vendor's error excerpt for people: JSON bodies become ``key: value`` text; anything else as is."""
    if not text:
        return ""
    start = min([i for i in (text.find("{"), text.find("[")) if i >= 0], default=-1)
    if start < 0:
        return text
    head, body = text[:start], text[start:]
    try:
        doc = json.loads(body)
    except ValueError:
        return text
    return (head + _flatten(doc)).strip()


def _flatten(doc: Any, prefix: str = "") -> str:
    if isinstance(doc, dict):
        parts = []
        for key, value in doc.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            parts.append(_flatten(value, name) if isinstance(value, dict | list) else f"{name}: {value}")
        return ", ".join(p for p in parts if p)
    if isinstance(doc, list):
        return "; ".join(_flatten(v, prefix) if isinstance(v, dict | list) else (f"{prefix}: {v}" if prefix else str(v))
                         for v in doc[:5]) + ("; …" if len(doc) > 5 else "")
    return f"{prefix}: {doc}" if prefix else str(doc)


# --- filters and item rows ------------------------------------------------------------------------------------


@dataclass
class Filters:
    states: Sequence[str] = ()
    reason: str | None = None  # substring, case-insensitive
    since: dt.date | None = None  # updated_at on or after this UTC day
    until: dt.date | None = None  # updated_at on or before this UTC day
    destination: str | None = None  # a destination id, identity or name
    limit: int | None = None
    keys: Sequence[str] = field(default_factory=tuple)  # idempotency keys or source keys


ITEM_OUTPUT = ["key", "source_key", "state", "rule", "field", "value", "reason", "attempts", "resent_unknown",
               "destination", "run_id", "updated_at", "resolved_by", "resolved_at"]


def destination_ids(ledger: Ledger, sync: str, wanted: str | None) -> list[str] | None:
    """The destination ids ``wanted`` names (an id, identity or name); None: every destination."""
    if not wanted:
        return None
    known = ledger.destinations()
    found = [d for d, info in known.items() if wanted in (d, info.get("identity"), info.get("name"))]
    if not found:
        used = {r[0] for r in ledger._query("SELECT DISTINCT destination FROM syncline_items WHERE sync = ? UNION "
                                            "SELECT DISTINCT destination FROM syncline_groups WHERE sync = ?", (sync, sync))}
        if wanted in used:
            return [wanted]
        names = ", ".join(f"{d} ({known[d]['identity']})" if d in known else (d or "''") for d in sorted(used)) or "none"
        raise SynclineError(f"no destination {wanted!r} for {sync} (its destinations: {names})")
    return found


def _like(text: str) -> str:
    return "%" + text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _days_and_destinations(ledger: Ledger, sync: str, filters: Filters, at: str,
                           destination: str) -> tuple[list[str], list[Any]]:
    """SQL conditions (on columns ``at`` and ``destination``) for the filters' days and destinations."""
    clauses: list[str] = []
    params: list[Any] = []
    if filters.since:
        clauses.append(f"{at} >= ?")
        params.append(filters.since.isoformat())
    if filters.until:
        clauses.append(f"{at} < ?")
        params.append((filters.until + dt.timedelta(days=1)).isoformat())
    dests = destination_ids(ledger, sync, filters.destination)
    if dests is not None:
        clauses.append(f"{destination} IN ({', '.join('?' * len(dests))})")
        params += dests
    return clauses, params


def _where(ledger: Ledger, sync: str, filters: Filters) -> tuple[str, list[Any]]:
    clauses, params = ["sync = ?"], [sync]
    if filters.states:
        bad = sorted(set(filters.states) - set(ITEM_STATES))
        if bad:
            raise SynclineError(f"unknown state(s) {', '.join(bad)} (states: {', '.join(ITEM_STATES)})")
        clauses.append(f"state IN ({', '.join('?' * len(filters.states))})")
        params += list(filters.states)
    if filters.reason:
        clauses.append("lower(reason) LIKE ? ESCAPE '\\'")
        params.append(_like(filters.reason))
    more, more_params = _days_and_destinations(ledger, sync, filters, "updated_at", "destination")
    clauses += more
    params += more_params
    if filters.keys:
        keys = list(dict.fromkeys(filters.keys))
        marks = ", ".join("?" * len(keys))
        clauses.append(f"(idem_key IN ({marks}) OR source_key IN ({marks}))")
        params += keys + keys
    return " AND ".join(clauses), params


_ITEM_COLUMNS = ["destination", "idem_key", "source_key", "state", "reason", "run_id", "chunk_id", "resent_unknown",
                 "updated_at", "resolved_by", "resolved_at", "vendor_id", "cursor", "excerpt"]


def _with_groups(ledger: Ledger, sync: str, filters: Filters) -> tuple[str, list[Any]]:
    """The items relation with the delivered groups' items too (one ledger row per group delivered whole),
    unnested only for the groups that can match: the sync's, in the days and destinations asked for, and,
    without a key filter, only the newest groups that can hold the newest ``limit`` items."""
    more, params = _days_and_destinations(ledger, sync, filters, "g.at", "g.destination")
    clauses = ["g.sync = ?", *more]
    params = [sync, *params]
    if filters.limit and not filters.keys:
        clauses.append(ledger.newest_groups(" AND ".join(clauses), filters.limit))
        params += list(params)
    return f"({ledger.all_items(' AND '.join(clauses))}) AS i", params


def query_items(ledger: Ledger, sync: str, filters: Filters) -> list[dict[str, Any]]:
    """The sync's items matching ``filters``, newest first, each with its reason parsed and its attempts."""
    where, params = _where(ledger, sync, filters)
    limit = f" LIMIT {int(filters.limit)}" if filters.limit else ""
    source: str = "syncline_items"
    source_params: list[Any] = []
    if (not filters.states or "delivered" in filters.states) and not filters.reason:
        source, source_params = _with_groups(ledger, sync, filters)
    rows = ledger._query(
        f"SELECT {', '.join(_ITEM_COLUMNS)} FROM {source} WHERE {where} ORDER BY updated_at DESC, idem_key{limit}",
        [*source_params, *params],
    )
    items = [dict(zip(_ITEM_COLUMNS, r, strict=True)) for r in rows]
    attempts = _attempts_by_group(ledger, {i["run_id"] for i in items if i["run_id"]})
    identities = {d: info["identity"] for d, info in ledger.destinations().items()}
    out = []
    for item in items:
        reasons = parse_reason(item["reason"]) if item["state"] != "delivered" else []
        run = item["run_id"]
        tried = max(attempts.get((run, item["chunk_id"]), 0), attempts.get((run, (item["idem_key"] or "")[:16]), 0))
        if str(item["reason"] or "").startswith(NEVER_SENT):
            tried = 0  # its claim group's other requests were tried, not this item's
        out.append({
            "key": item["idem_key"],
            "source_key": item["source_key"],
            "state": item["state"],
            "rule": "; ".join(r.rule for r in reasons) or None,
            "field": ", ".join(dict.fromkeys(r.field for r in reasons if r.field)) or None,
            "value": "; ".join(r.value for r in reasons if r.value) or None,
            "reason": item["reason"],
            "reasons": [asdict(r) for r in reasons],
            "attempts": tried,
            "resent_unknown": int(item["resent_unknown"] or 0),
            "destination": identities.get(item["destination"]) or item["destination"] or "-",
            "destination_id": item["destination"],
            "run_id": run,
            "updated_at": item["updated_at"],
            "resolved_by": item["resolved_by"],
            "resolved_at": item["resolved_at"],
            "vendor_id": item["vendor_id"],
            "cursor": item["cursor"],
        })
    return out


def _attempts_by_group(ledger: Ledger, runs: Iterable[str]) -> dict[tuple[str, str], int]:
    """Highest attempt number per (run, claim group or multi-step item): a batch request's chunk id is
    ``<claim group>.<n>``, a multi-step item's is the first 16 characters of its key. Items of one claim
    group share the count (the ledger does not record which request of the group carried an item), except
    those a stopped sync never tried (``NEVER_SENT``), which :func:`query_items` shows with 0."""
    found: dict[tuple[str, str], int] = {}
    run_list = sorted(runs)
    for i in range(0, len(run_list), 200):
        part = run_list[i : i + 200]
        rows = ledger._query(
            f"SELECT run_id, chunk_id, max(attempt) FROM syncline_attempts WHERE run_id IN ({', '.join('?' * len(part))}) "
            "GROUP BY run_id, chunk_id",
            part,
        )
        for run, chunk, attempt in rows:
            if chunk is None:
                continue
            group = str(chunk).split(".", 1)[0]
            key = (str(run), group)
            found[key] = max(found.get(key, 0), int(attempt or 0))
    return found


# --- rejects grouped by rule ----------------------------------------------------------------------------------


def group_rejects(items: Sequence[dict[str, Any]], samples: int = 3) -> list[dict[str, Any]]:
    """Rejected items grouped by (rule, field): a row with two problems counts in both groups."""
    groups: dict[tuple[str, str | None], dict[str, Any]] = {}
    for item in items:
        for reason in item["reasons"] or [{"rule": item["reason"] or "(no reason)", "field": None, "value": None}]:
            group = groups.setdefault((reason["rule"], reason["field"]), {
                "rule": reason["rule"], "field": reason["field"], "count": 0, "sample_keys": [], "sample_values": []})
            group["count"] += 1
            if len(group["sample_keys"]) < samples:
                group["sample_keys"].append(item["source_key"] or item["key"])
            value = reason["value"]
            if value is not None and value not in group["sample_values"] and len(group["sample_values"]) < samples:
                group["sample_values"].append(value)
    return sorted(groups.values(), key=lambda g: (-g["count"], g["rule"], g["field"] or ""))


def reason_groups(ledger: Ledger, sync: str | None, limit: int = 10) -> list[tuple[str, str | None, int, str | None]]:
    """(rule, field, count, a sample value) of rejected items, grouped by rule rather than by exact text."""
    where, params = ("AND sync = ? ", [sync]) if sync else ("", [])
    rows = ledger._query(
        f"SELECT reason, count(*) FROM syncline_items WHERE state = 'rejected' {where}GROUP BY reason", params
    )
    groups: dict[tuple[str, str | None], list[Any]] = {}
    for text, n in rows:
        for reason in parse_reason(text) or [Reason("(no reason)")]:
            entry = groups.setdefault((reason.rule, reason.field), [0, reason.value])
            entry[0] += int(n)
    ordered = sorted(groups.items(), key=lambda kv: (-kv[1][0], kv[0][0]))
    return [(rule, fld, n, sample) for (rule, fld), (n, sample) in ordered[:limit]]


# --- output ---------------------------------------------------------------------------------------------------

FORMATS = ("table", "csv", "json", "parquet")


def truncate(value: Any, width: int) -> str:
    text = "" if value is None else str(value)
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def write_rows(rows: Sequence[dict[str, Any]], columns: Sequence[str], fmt: str, out: Path | None,
               stream: IO[str], *, table_widths: dict[str, int] | None = None) -> None:
    """``rows`` as a table, CSV, JSON (one array) or Parquet, to ``out`` or ``stream`` (not Parquet)."""
    if fmt not in FORMATS:
        raise SynclineError(f"unknown format {fmt!r} (formats: {', '.join(FORMATS)})")
    if fmt == "parquet":
        if out is None:
            raise SynclineError("--format parquet needs --out FILE")
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({c: pa.array([_plain(r.get(c)) for r in rows], type=_arrow_type(rows, c)) for c in columns})
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, out)
        return
    target: IO[str] = out.open("w", newline="", encoding="utf-8") if out is not None else stream
    try:
        if fmt == "json":
            json.dump([{c: r.get(c) for c in columns} for r in rows], target, indent=2, default=str, ensure_ascii=False)
            target.write("\n")
        elif fmt == "csv":
            writer = csv.writer(target)
            writer.writerow(columns)
            for r in rows:
                writer.writerow([_plain(r.get(c)) for c in columns])
        else:
            widths = table_widths or {}
            target.write(format_table(columns, [[truncate(r.get(c), widths.get(c, 60)) for c in columns] for r in rows]))
    finally:
        if out is not None:
            target.close()


def _plain(value: Any) -> Any:
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False, default=str)
    return value


def _arrow_type(rows: Sequence[dict[str, Any]], column: str) -> Any:
    import pyarrow as pa

    values = [r.get(column) for r in rows if r.get(column) is not None]
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return pa.int64()
    return pa.string()


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    buf = io.StringIO()
    for n, row in enumerate(cells):
        line = "  ".join(c.ljust(w) if i == 0 or not c.replace(".", "").isdigit() else c.rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        buf.write(line.rstrip() + "\n")
        if n == 0:
            buf.write("  ".join("-" * w for w in widths) + "\n")
    return buf.getvalue()


# --- actions: retry, resolve --------------------------------------------------------------------------------------


def operator() -> str:
    """Who is acting: the login name, or ``$USER``."""
    try:
        return getpass.getuser()
    except Exception:  # no login name (containers without a passwd entry)
        return os.environ.get("USER") or "unknown"


def mark_for_retry(ledger: Ledger, sync: str, filters: Filters, by: str) -> list[dict[str, Any]]:
    """Set the chosen items (never delivered ones) ``failed`` with a reason naming who asked and when, so the
    next run sends them again (re-rendered: a row that still breaks a rule is rejected again). Returns the
    items queued, as they were before."""
    chosen = [i for i in query_items(ledger, sync, filters) if i["state"] != "delivered"]
    if not chosen:
        return []
    at = now_text()
    why = f"retry requested by {by} at {at}"
    with ledger._write() as cur:
        for item in chosen:
            cur.execute(
                ledger._sql("UPDATE syncline_items SET state = 'failed', reason = ?, updated_at = ? "
                            "WHERE destination = ? AND idem_key = ? AND state = ?"),
                (why, at, item["destination_id"], item["key"], item["state"]),
            )
    return chosen


def resolve_items(ledger: Ledger, sync: str, filters: Filters, *, delivered: bool, by: str,
                  why: str | None = None) -> list[dict[str, Any]]:
    """A verdict on in-doubt items: delivered (never resent) or not delivered (``failed``: resent next run).
    Records who decided and when. Returns the items changed, as they were before."""
    chosen = query_items(ledger, sync, Filters(**{**asdict(filters), "states": ("in_doubt",)}))
    if not chosen:
        return []
    at = now_text()
    state = "delivered" if delivered else "failed"
    reason = None if delivered else (why or f"resolved not delivered by {by} at {at}: resent by the next run")
    with ledger._write() as cur:
        for item in chosen:
            cur.execute(
                ledger._sql("UPDATE syncline_items SET state = ?, reason = ?, resolved_by = ?, resolved_at = ?, "
                            "updated_at = ? WHERE destination = ? AND idem_key = ? AND state = 'in_doubt'"),
                (state, reason, by, at, at, item["destination_id"], item["key"]),
            )
    return chosen


# --- reconcile --apply: verdicts from the vendor's read API -------------------------------------------------------


def reconcile_apply(spec: Any, ledger: Ledger, window: Any, *, by: str) -> dict[str, Any]:
    """Settle in-doubt items from what the vendor's read API can say item by item; leave the rest.

    - Flux: every event syncline sends carries its idempotency key (``properties.syncline_key``) and the
      sync's tag, so listing the sync's events tells, key by key, which in-doubt items Flux holds
      (delivered) and which it does not (failed: resent next run).
    - StreamBack: an in-doubt item whose feedback id the ledger has and that StreamBack reports finalized is
      delivered; one without a feedback id cannot be looked up (StreamBack has no search by our key).
    - Other vendors have no read API: use ``syncline resolve``.
    """
    from connectors.runner import (
        destination_for,
        make_sender,
        new_run_id,
        resolve_base_url,
        resolve_credentials,
    )

    base = resolve_base_url(spec.vendor, None)
    creds = resolve_credentials(spec.vendor, None)
    dest = destination_for(spec, base, creds)
    doubtful = [i for i in query_items(ledger, spec.name, Filters(states=("in_doubt",)))
                if i["destination_id"] == dest.id and _in_window(i.get("cursor"), window)]
    report: dict[str, Any] = {"destination": dest.identity, "in_doubt": len(doubtful), "delivered": 0,
                              "not_delivered": 0, "undecided": 0}
    if not doubtful:
        report["explanation"] = "no items in doubt at this destination in the window: nothing to settle"
        return report
    sender = make_sender(spec, creds, base, new_run_id(), ledger, destination=dest.id)
    try:
        if spec.vendor.name == "flux":
            found, present = _flux_present(sender, spec.name)
        elif spec.vendor.name == "streamback":
            found, present = _streamback_present(sender, doubtful)
        else:
            raise SynclineError(
                f"{spec.endpoint.qualified_name} has no read API to tell which items arrived: record a verdict with "
                f"`syncline resolve {spec.name} --delivered|--not-delivered --keys ...`")
    finally:
        sender.client.close()
    yes = [i for i in doubtful if present(i) is True]
    no = [i for i in doubtful if present(i) is False]
    undecided = len(doubtful) - len(yes) - len(no)
    keys_yes = [i["key"] for i in yes]
    keys_no = [i["key"] for i in no]
    method = found
    if keys_yes:
        resolve_items(ledger, spec.name, Filters(keys=keys_yes, destination=dest.id), delivered=True,
                      by=f"{by} (reconcile)")
    if keys_no:
        resolve_items(ledger, spec.name, Filters(keys=keys_no, destination=dest.id), delivered=False,
                      by=f"{by} (reconcile)",
                      why=f"reconcile: {spec.vendor.title} does not hold it ({method}); resent by the next run")
    report.update(delivered=len(keys_yes), not_delivered=len(keys_no), undecided=undecided, method=method)
    if undecided:
        report["explanation"] = (f"{undecided} item(s) left in doubt: {spec.vendor.title}'s read API cannot say whether "
                                 "they arrived; decide with `syncline resolve`")
    return report


def _in_window(cursor: str | None, window: Any) -> bool:
    if window is None or (window.start is None and window.end is None):
        return True
    if cursor is None:
        return False
    fmt = "%Y-%m-%dT%H:%M:%S.%fZ"
    if window.start is not None and cursor < window.start.astimezone(dt.UTC).strftime(fmt):
        return False
    return not (window.end is not None and cursor >= window.end.astimezone(dt.UTC).strftime(fmt))


def _flux_present(sender: Any, sync: str) -> tuple[str, Any]:
    from connectors.vendors import flux

    keys: set[str] = set()
    try:
        for event in flux.iter_events(sender, tags={flux.SYNC_TAG: sync}):
            props = event.get("properties")
            if isinstance(props, dict) and props.get(flux.KEY_FIELD) is not None:
                keys.add(str(props[flux.KEY_FIELD]))
    except flux.FluxError as exc:
        raise SynclineError(f"cannot list this sync's events at Flux, so nothing was changed: {exc}") from None
    return (f"GET /api/v1/events?tags[{flux.SYNC_TAG}]={sync}: {len(keys)} events listed by key",
            lambda item: item["key"] in keys)


def _streamback_present(sender: Any, items: Sequence[dict[str, Any]]) -> tuple[str, Any]:
    from connectors.vendors import streamback

    ids = {i["key"]: i["vendor_id"] for i in items if i.get("vendor_id")}
    status = streamback.verify_feedback(sender, ids.values())

    def present(item: dict[str, Any]) -> bool | None:
        fid = ids.get(item["key"])
        if fid is None:
            return None
        found = status.get(fid)
        if found is not None and found.get("finalized") is True:
            return True
        return None  # unknown, or not finalized: the next run resumes its steps

    return f"GET /v1/sdk/feedback/:id/status for {len(ids)} feedback id(s)", present
