"""The benchmark's repeated rounds (``bench_compare.py --repeat``): which run a row reports, its ratio,
and that a run whose sink check failed keeps the row from reading "ok"."""

from __future__ import annotations

from benchmarks.bench_compare import BASE, Result, median_of, set_ratios


def _round(syncline: float, other: float, *, other_ok: bool = True) -> list[Result]:
    runs = [Result("A", BASE, events_per_s=syncline, check_ok=True, check="ok"),
            Result("A", "pandas", events_per_s=other, check_ok=other_ok, check="ok" if other_ok else "FAILED")]
    set_ratios(runs)
    return runs


def test_the_row_is_the_median_run_and_its_ratio_the_median_of_each_rounds_ratio() -> None:
    # The host ran slow in round 2: both contenders' rates fell there, their ratio within the round held.
    rounds = [_round(60_000, 20_000), _round(30_000, 13_500), _round(66_000, 24_000)]
    pandas = median_of([r[1] for r in rounds])
    assert pandas.events_per_s == 20_000  # the median run
    # The median of 1/3, 0.45 and 4/11, not the median run over syncline's median run (1/3).
    assert pandas.ratio == 24_000 / 66_000
    assert pandas.check_ok and pandas.check == "ok"
    assert "median of 3 runs, 13,500-24,000 ev/s" in pandas.note
    assert median_of([r[0] for r in rounds]).ratio == 1.0


def test_a_run_that_failed_its_sink_check_marks_the_row_and_is_left_out() -> None:
    rounds = [_round(60_000, 90_000, other_ok=False), _round(60_000, 20_000), _round(60_000, 30_000)]
    pandas = median_of([r[1] for r in rounds])
    assert pandas.events_per_s == 20_000  # lower median of the two valid runs; the failed 90,000 never counts
    assert not pandas.check_ok and pandas.check == "FAILED in 1 of 3 runs"


def test_no_valid_run_reports_the_last_as_it_was() -> None:
    runs = [Result("A", "x", check="FAILED"), Result("A", "x", check="FAILED", error="timeout")]
    assert median_of(runs) is runs[-1]


def test_no_ratio_is_taken_against_a_syncline_run_that_failed_its_sink_check() -> None:
    runs = [Result("A", BASE, events_per_s=90_000, check="FAILED"),
            Result("A", "pandas", events_per_s=20_000, check_ok=True, check="ok")]
    set_ratios(runs)
    assert runs[1].ratio is None and runs[0].ratio is None
