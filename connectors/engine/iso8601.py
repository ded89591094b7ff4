"""SQL that tells whether a text is an ISO 8601 date or date-time, for documents that say only "ISO 8601".

Field kind ``iso8601`` (``connectors.engine.payload``) uses :func:`valid_sql`. What is accepted, each form
in ISO 8601's extended (``2024-01-15T10:30:00``) or basic (``20240115T103000``) format:

- a complete date: calendar ``2024-01-15``, ordinal ``2024-015`` or week date ``2024-W03-1`` (checked
  against the calendar: no 2023-02-29, 2023-366 or 2021-W53-1);
- optionally ``T`` and a time of day, to the hour, minute or second (``10``, ``10:30``, ``10:30:00``),
  with a decimal fraction of its last part (``.`` or ``,``); ``24:00:00`` (end of day) and a leap second
  ``:60`` are ISO 8601 too;
- optionally, after a time, ``Z`` or an offset ``±hh``, ``±hh:mm`` or ``±hhmm`` (the last two are
  accepted with either format: mixing them is common and unambiguous).

Not accepted (not ISO 8601): a space or a lower-case ``t`` between date and time (RFC 3339 allows them,
ISO 8601 does not), lower-case ``z``, a date reduced to a month or a year, an offset after a date alone,
expanded years (``+012024``), epoch numbers. The text is never rewritten: what passes is sent as written.
"""

from __future__ import annotations

_TIME_EXT = r"T\d{2}(:\d{2}(:\d{2})?)?([.,]\d+)?(Z|[+-]\d{2}(:?\d{2})?)?"
_TIME_BASIC = r"T\d{2}(\d{2}(\d{2})?)?([.,]\d+)?(Z|[+-]\d{2}(:?\d{2})?)?"
EXTENDED = r"\d{4}-(\d{2}-\d{2}|\d{3}|W\d{2}-[1-7])(" + _TIME_EXT + ")?"
BASIC = r"\d{4}(\d{4}|\d{3}|W\d{2}[1-7])(" + _TIME_BASIC + ")?"
# The common form, in ranges no calendar can make invalid (days are checked by DuckDB's own cast): a
# fast path that spares most rows the full check.
COMMON = (r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])(T([01]\d|2[0-3]):[0-5]\d(:[0-5]\d(\.\d{1,9})?)?"
          r"(Z|[+-]([01]\d|2[0-3])(:?[0-5]\d)?)?)?")
# A time followed by an explicit offset (``Z`` or ``±hh[[:]mm]``), for a rule that wants one.
WITH_OFFSET = r"T[0-9:.,]+(Z|[+-][0-9]{2}(:?[0-9]{2})?)$"


def _int(expr: str, start: int) -> str:
    """The two digits at ``start`` (1-based) of ``expr`` as an integer, 0 when absent."""
    return f"coalesce(TRY_CAST(NULLIF(substr({expr}, {start}, 2), '') AS INTEGER), 0)"


def valid_sql(text: str) -> str:
    """SQL: ``text`` (a VARCHAR expression, not NULL) is an ISO 8601 date or date-time as described above."""
    day = f"replace(split_part({text}, 'T', 1), '-', '')"  # 20240115, 2024015 or 2024W031
    week = f"substr({day}, 1, 4) || '-W' || substr({day}, 6, 2) || '-' || substr({day}, 8, 1)"
    date_ok = (
        f"CASE WHEN contains({day}, 'W') THEN strftime(try_strptime({week}, '%G-W%V-%u'), '%G-W%V-%u') = {week} "
        f"WHEN length({day}) = 7 THEN strftime(try_strptime({day}, '%Y%j'), '%Y%j') = {day} "
        f"ELSE strftime(try_strptime({day}, '%Y%m%d'), '%Y%m%d') = {day} END"
    )
    clock_part = f"split_part({text}, 'T', 2)"
    clock = f"regexp_replace({clock_part}, '(Z|[+-].*)$', '')"
    digits = f"replace(regexp_replace({clock}, '[.,].*$', ''), ':', '')"
    fraction = f"regexp_extract({clock}, '[.,]([0-9]+)$', 1)"
    hh, mm, ss = _int(digits, 1), _int(digits, 3), _int(digits, 5)
    time_ok = (
        f"({clock_part} = '' OR ({hh} <= 23 AND {mm} <= 59 AND {ss} <= 60) "
        f"OR ({hh} = 24 AND {mm} = 0 AND {ss} = 0 AND NOT regexp_matches({fraction}, '[1-9]')))"
    )
    offset = f"replace(regexp_extract({clock_part}, '[+-].*$'), ':', '')"
    offset_ok = f"({offset} = '' OR ({_int(offset, 2)} <= 23 AND {_int(offset, 4)} <= 59))"
    shape = f"(regexp_full_match({text}, '{EXTENDED}') OR regexp_full_match({text}, '{BASIC}'))"
    common = f"regexp_full_match({text}, '{COMMON}') AND TRY_CAST({text} AS TIMESTAMPTZ) IS NOT NULL"
    return (f"(CASE WHEN {common} THEN true "
            f"WHEN {shape} THEN coalesce({date_ok} AND {time_ok} AND {offset_ok}, false) ELSE false END)")


def has_offset_sql(text: str) -> str:
    """SQL: ``text`` (VARCHAR) ends with a time of day and an explicit offset (``Z``, ``±hh[[:]mm]``)."""
    return f"regexp_matches({text}, '{WITH_OFFSET}')"
