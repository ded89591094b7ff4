"""The window of a run from ``--partition`` / ``--from`` / ``--to`` (the CLI's options), checked.

Rules (docs/sync-files.md):

- nothing given: the whole source (``Window()``);
- ``--partition D``: the UTC day D; it cannot be combined with ``--from``/``--to``;
- ``--from A --to B``: the days A..B inclusive; B before A is an error;
- ``--from A`` alone: A..today (UTC); A after today is an error;
- ``--to B`` alone: the sync's partition start..B;
- any of them on a sync without daily partitions is an error;
- a window that ends before the sync's partition start, or starts before it, is allowed but comes with a
  warning: there are no partitions (and, for a source that starts there, no rows) before the start;
- dates from year 1 to 9999-12-31 are accepted (a window ending on 9999-12-31 ends at the last
  representable instant); anything else is a :class:`SynclineError`, never a traceback.
"""

from __future__ import annotations

import datetime as dt

from connectors.errors import SynclineError
from connectors.spec import SyncSpec
from connectors.stage import Window

DayArg = dt.date | str | None


def _day(value: DayArg, option: str) -> dt.date | None:
    if value is None or (isinstance(value, dt.date) and not isinstance(value, dt.datetime)):
        return value
    if isinstance(value, dt.datetime):
        return value.date()
    try:
        return dt.date.fromisoformat(value.strip())
    except ValueError:
        raise SynclineError(
            f"{option} {value!r} is not a date: give YYYY-MM-DD between 0001-01-01 and 9999-12-31"
        ) from None


def resolve_window(
    spec: SyncSpec,
    *,
    partition: DayArg = None,
    from_day: DayArg = None,
    to_day: DayArg = None,
    today: dt.date | None = None,
) -> tuple[Window, list[str]]:
    """The run's :class:`Window` and the warnings to show (see the module docstring)."""
    day = _day(partition, "--partition")
    first = _day(from_day, "--from")
    last = _day(to_day, "--to")
    if day is None and first is None and last is None:
        return Window(), []
    given = "--partition" if day is not None else "--from/--to"
    if not spec.partitioned:
        raise SynclineError(f"{spec.name} has no daily partitions; run it without --partition/--from/--to")
    assert spec.partition_start is not None
    start = spec.partition_start
    if day is not None:
        if first is not None or last is not None:
            raise SynclineError("--partition is one day: give it alone, or use --from/--to for a range")
        first = last = day
    elif last is None:
        assert first is not None
        last = today or dt.datetime.now(dt.UTC).date()
        if last < first:
            raise SynclineError(
                f"--from {first} is after today ({last}): give --to as well to run days that have not come yet"
            )
    elif first is None:
        first = start
        if last < first:
            raise SynclineError(
                f"--to {last} is before the sync's start {start} (--to alone runs from the start): "
                f"give --from as well"
            )
    if last < first:
        raise SynclineError(f"--to {last} is before --from {first}")
    try:
        window = Window.days(first, last)
    except (OverflowError, ValueError) as exc:  # defensive: Window.days handles date.min and date.max
        raise SynclineError(f"{given}: {first}..{last} is out of the range of dates syncline handles ({exc})") from None
    warnings: list[str] = []
    shown = first.isoformat() if first == last else f"{first}..{last}"
    if last < start:
        warnings.append(f"{shown} is before the sync's start {start}: it has no rows")
    elif first < start:
        warnings.append(f"{shown} starts before the sync's start {start}: the days before it have no rows")
    return window, warnings
