"""Progress reporting on real streams: a pseudo-terminal for the live line, StringIO for plain lines.

Throttling is checked with a hand-driven clock (the implementations take ``clock=``), so the assertions are
about counts, never about how long anything took."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from connectors.progress import (
    NoProgress,
    PlainProgress,
    Progress,
    TerminalProgress,
    for_stream,
    format_duration,
)

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Terminal:
    """A pty pair: the slave end as a text stream for the code under test, the master end read back."""

    def __init__(self) -> None:
        self.master, slave = pty.openpty()
        self.stream = os.fdopen(slave, "w", encoding="utf-8")
        self.raw = b""

    def drain(self, until: str | None = None, timeout: float = 5.0) -> str:
        """Everything written so far (waiting up to ``timeout`` for ``until`` to show up, if given)."""
        deadline = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:
                    chunk = b""
                if chunk:
                    self.raw += chunk
                    continue
            text = self.raw.decode("utf-8", "replace")
            if until is None or until in ANSI.sub("", text) or time.monotonic() > deadline:
                return text

    def close(self) -> None:
        self.stream.close()
        os.close(self.master)


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> Iterator[Terminal]:
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("COLUMNS", "160")
    monkeypatch.delenv("NO_COLOR", raising=False)
    term = Terminal()
    yield term
    term.close()


def _feed(progress: Progress, clock: Clock, total: int, steps: int, *, per_step: float) -> None:
    begin = clock.now
    for n in range(1, steps + 1):
        clock.now = begin + round(n * per_step, 6)  # no drift from adding floats
        done = total * n // steps
        progress.update(done, 4, delivered=done, rejected=0, pending=total - done)


# -- terminal --------------------------------------------------------------------------------------------
def test_terminal_draws_a_live_line_with_rate_eta_in_flight_and_waiting_then_removes_it(terminal):
    clock = Clock()
    progress = TerminalProgress(terminal.stream, clock=clock, ticker=False)
    progress.start("usage_events_to_flux", "events_batch", 10_000)
    clock.advance(10)
    progress.update(2_000, 3, delivered=1_990, rejected=10, pending=8_000)
    text = ANSI.sub("", terminal.drain(until="in flight"))
    assert "usage_events_to_flux" in text
    assert "2,000/10,000" in text and "20%" in text
    assert "200 items/s" in text  # 2,000 in 10 s
    assert "ETA 40 s" in text  # 8,000 left at 200/s
    assert "3 in flight" in text and "10 rejected" in text

    clock.advance(1)
    progress.waiting(13.2, "flux")
    text = ANSI.sub("", terminal.drain(until="rate limit"))
    assert "waiting 13 s for flux's rate limit" in text

    clock.advance(14)  # the wait is over: the notice goes away
    progress.update(4_000, 1, delivered=3_990, rejected=10, pending=6_000)
    before = len(terminal.drain(until="4,000/10,000"))
    progress.finish()
    raw = terminal.drain()
    tail = raw[before:]
    last_draw = raw[:before].rsplit("\r", 1)[-1]
    assert "4,000/10,000" in ANSI.sub("", last_draw) and "waiting" not in last_draw
    # Cleaned up: the cursor is shown again and the line erased, no progress text left after it.
    assert "\x1b[?25h" in tail
    assert "\x1b[2K" in tail
    assert ANSI.sub("", tail).strip() == ""


def test_terminal_redraws_are_throttled_however_many_updates(terminal):
    clock = Clock()
    progress = TerminalProgress(terminal.stream, interval=0.25, clock=clock, ticker=False)
    progress.start("s", "e", 100_000)
    # 100,000 updates over 10 simulated seconds (0.1 ms apart): at most one redraw per 0.25 s.
    _feed(progress, clock, 100_000, 100_000, per_step=0.0001)
    progress.finish()
    assert progress._tracker.renders <= 10 / 0.25 + 2
    text = ANSI.sub("", terminal.drain())
    assert text.count("items/s") <= 10 / 0.25 + 2
    assert "100,000/100,000" not in text or text.count("100,000/100,000") <= 1


def test_terminal_ticker_keeps_a_long_wait_visible_without_updates(terminal):
    progress = TerminalProgress(terminal.stream, interval=0.05)
    progress.start("s", "e", 500)
    progress.update(100, 1, delivered=100, rejected=0, pending=400)
    progress.waiting(0.5, "screeb")  # ordinary spacing: not news
    progress.waiting(60, "flux")
    try:
        text = ANSI.sub("", terminal.drain(until="for flux's rate limit"))
    finally:
        progress.finish()
    assert "waiting 60 s for flux's rate limit" in text or "waiting 59 s for flux's rate limit" in text
    assert "screeb" not in text


def test_terminal_updates_from_many_threads(terminal):
    progress = TerminalProgress(terminal.stream, interval=0.01)
    progress.start("s", "e", 40_000)
    counter = iter(range(1, 40_001))
    lock = threading.Lock()

    def work() -> None:
        for _ in range(10_000):
            with lock:
                done = next(counter)
            progress.update(done, 8, delivered=done, rejected=0, pending=40_000 - done)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    snapshot = progress._tracker._snapshot(progress._tracker.clock())
    progress.finish()
    assert snapshot.done == 40_000 and snapshot.pending == 0  # a late, older report never wins


# -- plain -----------------------------------------------------------------------------------------------
def test_plain_lines_are_periodic_and_carry_the_numbers():
    clock = Clock()
    out = io.StringIO()
    progress = PlainProgress(lambda line: out.write(line + "\n"), every=10, clock=clock)
    progress.start("users_to_screeb", "event", 60_000)
    # 60,000 updates over 60 simulated seconds: the start line, one line per 10 s, the finish line.
    _feed(progress, clock, 60_000, 60_000, per_step=0.001)
    progress.finish()
    lines = out.getvalue().splitlines()
    assert lines[0] == "users_to_screeb: sending 60,000 items to event"
    periodic = lines[1:-1]
    assert 5 <= len(periodic) <= 6
    assert periodic[0].startswith("users_to_screeb: 10,000/60,000 sent (17%), 1,000 items/s, ETA 50 s, 4 in flight")
    assert "10,000 delivered, 0 rejected, 0 in doubt or failed, 50,000 left to send" in periodic[0]
    assert lines[-1] == ("users_to_screeb: 60,000/60,000 sent in 1m 00s (1,000 items/s); "
                         "60,000 delivered, 0 rejected, 0 in doubt or failed, 0 left to send")


def test_plain_waiting_notice_long_at_once_short_on_the_next_line():
    clock = Clock()
    out = io.StringIO()
    progress = PlainProgress(lambda line: out.write(line + "\n"), every=10, clock=clock)
    progress.start("usage_events_to_flux", "events_batch", 5_000)
    clock.advance(3)
    progress.update(500, 1, delivered=500, rejected=0, pending=4_500)  # inside the interval: no line
    assert len(out.getvalue().splitlines()) == 1

    progress.waiting(0.3, "flux")  # spacing, not news
    progress.waiting(9.0, "flux")  # shorter than the interval: rides on the next line (2 s left then)
    assert len(out.getvalue().splitlines()) == 1
    clock.advance(7)
    progress.update(1_000, 1, delivered=1_000, rejected=0, pending=4_000)
    line = out.getvalue().splitlines()[-1]
    assert line.endswith("; waiting 2 s for flux's rate limit")
    assert "1,000/5,000 sent (20%)" in line

    clock.advance(1)
    progress.waiting(42, "flux")  # a Retry-After longer than the interval: said at once
    assert out.getvalue().splitlines()[-1] == "usage_events_to_flux: waiting 42 s for flux's rate limit"
    progress.finish()
    assert "waiting" not in out.getvalue().splitlines()[-1]


def test_plain_nothing_to_send_writes_nothing():
    out = io.StringIO()
    progress = PlainProgress(lambda line: out.write(line + "\n"))
    progress.start("s", "e", 0)
    progress.update(0, 0, delivered=0, rejected=0, pending=0)
    progress.waiting(30, "flux")
    progress.finish()
    assert out.getvalue() == ""


def test_no_progress_accepts_every_call():
    progress: Progress = NoProgress()
    progress.start("s", "e", 1)
    progress.update(1, 0, delivered=1, rejected=0, pending=0)
    progress.waiting(5, "v")
    progress.finish()


# -- choosing --------------------------------------------------------------------------------------------
def test_for_stream_picks_terminal_on_a_tty_and_plain_elsewhere(terminal, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    assert isinstance(for_stream(terminal.stream), TerminalProgress)
    monkeypatch.setenv("CI", "true")
    assert isinstance(for_stream(terminal.stream), PlainProgress)
    monkeypatch.delenv("CI")

    out = io.StringIO()
    progress = for_stream(out)
    assert isinstance(progress, PlainProgress)
    progress.start("s", "e", 10)
    progress.update(10, 0, delivered=10, rejected=0, pending=0)
    progress.finish()
    assert out.getvalue().splitlines()[0] == "s: sending 10 items to e"
    assert "\x1b" not in out.getvalue()  # no escape codes in a log


def test_terminal_on_stderr_keeps_other_prints_above_the_line(terminal, monkeypatch):
    monkeypatch.setattr(sys, "stderr", terminal.stream)
    progress = TerminalProgress(sys.stderr, ticker=False)
    progress.start("s", "e", 10)
    print("another message", file=sys.stderr)
    progress.finish()
    assert sys.stderr is terminal.stream  # redirection undone at finish
    assert "another message" in ANSI.sub("", terminal.drain(until="another message"))


def test_format_duration():
    assert [format_duration(s) for s in (0, 59.4, 60, 754, 3600, 7322)] == [
        "0 s", "59 s", "1m 00s", "12m 34s", "1h 00m", "2h 02m"]
