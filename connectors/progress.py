"""Progress of one delivery, for a person watching a terminal or reading a log.

The engine reports through the :class:`Progress` protocol and does not care where it goes:

- ``start(sync, endpoint, total)``: ``total`` items are about to be sent;
- ``update(done, in_flight, delivered=, rejected=, pending=)``: called after every finished request,
  possibly from several threads: it only stores the numbers under a lock and, at most once per interval,
  renders them (so a million updates cost a million lock round trips, not a million lines);
- ``waiting(seconds, vendor)``: a rate limiter or a ``Retry-After`` is about to sleep; shown as
  "waiting 13 s for flux's rate limit" while the wait lasts (sub-second spacing waits are not shown);
- ``finish()``: the delivery ended; the live line is removed, the log gets a last line.

Implementations: :class:`TerminalProgress` (a live line drawn with rich on a TTY), :class:`PlainProgress`
(a plain line every ``every`` seconds, for CI logs and Dagster's ``context.log.info``) and
:class:`NoProgress`. :func:`for_stream` picks one for a stream.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

WAIT_NOTICE_MIN = 1.0  # seconds: shorter sleeps (Screeb's 21 ms spacing) are the normal pace, not news
RATE_WINDOW = 30.0  # seconds of recent history the items/s figure is computed over
TERMINAL_INTERVAL = 0.25  # seconds between redraws of the live line
PLAIN_EVERY = 10.0  # seconds between log lines


class Progress(Protocol):
    def start(self, sync: str, endpoint: str, total: int) -> None: ...

    def update(self, done: int, in_flight: int, *, delivered: int, rejected: int, pending: int) -> None: ...

    def waiting(self, seconds: float, vendor: str) -> None: ...

    def finish(self) -> None: ...


class NoProgress:
    """Reports nothing (tests, dry runs, callers that print their own summary)."""

    def start(self, sync: str, endpoint: str, total: int) -> None:
        pass

    def update(self, done: int, in_flight: int, *, delivered: int, rejected: int, pending: int) -> None:
        pass

    def waiting(self, seconds: float, vendor: str) -> None:
        pass

    def finish(self) -> None:
        pass


@dataclass
class Snapshot:
    """What one rendering shows; computed under the lock, rendered outside it."""

    sync: str
    endpoint: str
    total: int
    done: int
    in_flight: int
    delivered: int
    rejected: int
    pending: int
    elapsed: float
    rate: float | None  # items/s over the recent window; None before there is anything to measure
    eta: float | None  # seconds
    wait_left: float | None  # seconds left of the current notable wait
    wait_vendor: str = ""

    @property
    def percent(self) -> float:
        return 100.0 * self.done / self.total if self.total else 100.0


@dataclass
class _State:
    sync: str = ""
    endpoint: str = ""
    total: int = 0
    done: int = 0
    in_flight: int = 0
    delivered: int = 0
    rejected: int = 0
    pending: int = 0
    started: float = 0.0
    wait_until: float = 0.0
    wait_vendor: str = ""
    samples: deque[tuple[float, int]] = field(default_factory=deque)


class _Tracker:
    """The numbers and the throttle shared by the implementations. Thread-safe; ``update`` is cheap."""

    def __init__(self, interval: float, clock: Callable[[], float]) -> None:
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        self._emit_lock = threading.Lock()  # one rendering at a time, in order
        self._state = _State()
        self._next_render = 0.0
        self.active = False
        self.renders = 0

    # -- the protocol's bookkeeping --------------------------------------------------------------------
    def _start(self, sync: str, endpoint: str, total: int) -> None:
        now = self.clock()
        with self._lock:
            self._state = _State(sync=sync, endpoint=endpoint, total=max(0, total), pending=max(0, total),
                                 started=now)
            self._state.samples.append((now, 0))
            self._next_render = now  # the first update renders at once
            self.active = True

    def _update(self, done: int, in_flight: int, delivered: int, rejected: int, pending: int) -> Snapshot | None:
        """Store the numbers; a snapshot to render when the interval has passed, else None."""
        now = self.clock()
        with self._lock:
            state = self._state
            # Several threads may report; a late report with an older count must not move the line back.
            if done >= state.done:
                state.done, state.in_flight = done, in_flight
                state.delivered, state.rejected, state.pending = delivered, rejected, pending
            if not self.active or now < self._next_render:
                return None
            return self._due(now)

    def _waiting(self, seconds: float, vendor: str) -> tuple[bool, Snapshot | None]:
        """(whether the wait is notable, a snapshot if it should be shown now)."""
        if seconds < WAIT_NOTICE_MIN:
            return False, None
        now = self.clock()
        with self._lock:
            state = self._state
            if now + seconds > state.wait_until:
                state.wait_until, state.wait_vendor = now + seconds, vendor
            if not self.active:
                return True, None
            return True, (self._due(now) if now >= self._next_render else None)

    def _tick(self) -> Snapshot | None:
        now = self.clock()
        with self._lock:
            if not self.active or now < self._next_render:
                return None
            return self._due(now)

    def _stop(self) -> Snapshot | None:
        now = self.clock()
        with self._lock:
            if not self.active:
                return None
            self.active = False
            self._state.wait_until = 0.0
            return self._snapshot(now)

    # -- under the lock --------------------------------------------------------------------------------
    def _due(self, now: float) -> Snapshot:
        self._next_render = now + self.interval
        self.renders += 1
        return self._snapshot(now)

    def _snapshot(self, now: float) -> Snapshot:
        state = self._state
        samples = state.samples
        if samples[-1][0] < now:
            samples.append((now, state.done))
        while len(samples) > 2 and samples[1][0] <= now - RATE_WINDOW:
            samples.popleft()
        since, then = samples[0]
        span = now - since
        rate = (state.done - then) / span if span > 0 and state.done > 0 else None
        left = max(0, state.total - state.done)
        eta = left / rate if rate else (0.0 if not left else None)
        wait_left = state.wait_until - now if state.wait_until > now else None
        return Snapshot(state.sync, state.endpoint, state.total, state.done, state.in_flight, state.delivered,
                        state.rejected, state.pending, now - state.started, rate, eta, wait_left, state.wait_vendor)


# -- formatting -------------------------------------------------------------------------------------------
def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def format_rate(rate: float | None) -> str:
    if rate is None:
        return "– items/s"
    return f"{rate:,.0f} items/s" if rate >= 10 else f"{rate:.1f} items/s"


def wait_notice(seconds: float, vendor: str) -> str:
    return f"waiting {max(1, int(round(seconds)))} s for {vendor}'s rate limit"


def outcome_counts(s: Snapshot) -> str:
    """"N delivered, N rejected, N in doubt or failed, N left to send": ``pending`` here is what has not
    finished yet, which is not the summary's "pending" (in doubt or failed, rerun to resume): a finished
    request whose items are in doubt counts as neither delivered nor left."""
    unsettled = max(0, s.done - s.delivered - s.rejected)
    return (f"{s.delivered:,} delivered, {s.rejected:,} rejected, {unsettled:,} in doubt or failed, "
            f"{s.pending:,} left to send")


def plain_line(s: Snapshot) -> str:
    parts = [
        f"{s.sync}: {s.done:,}/{s.total:,} sent ({s.percent:.0f}%)",
        format_rate(s.rate),
        f"ETA {format_duration(s.eta)}" if s.eta is not None else "ETA –",
        f"{s.in_flight} in flight",
        outcome_counts(s),
    ]
    line = ", ".join(parts)
    if s.wait_left is not None:
        line += f"; {wait_notice(s.wait_left, s.wait_vendor)}"
    return line


# -- implementations --------------------------------------------------------------------------------------
class PlainProgress:
    """A plain line at most every ``every`` seconds (and one at start and finish), through ``write``.

    For logs: CI, a redirected stderr, Dagster (``write=context.log.info``). A wait at least as long as
    ``every`` is written at once (otherwise the log would fall silent for longer than it promises); shorter
    ones ride on the next periodic line."""

    def __init__(self, write: Callable[[str], None], every: float = PLAIN_EVERY, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.write = write
        self.every = every
        self._tracker = _Tracker(every, clock)
        self._quiet = False

    def _emit(self, text: str) -> None:
        with self._tracker._emit_lock:
            self.write(text)

    def start(self, sync: str, endpoint: str, total: int) -> None:
        self._quiet = total <= 0  # nothing to send: no lines at all
        self._tracker._start(sync, endpoint, total)
        # The first periodic line comes one interval in: the start line already said where we are.
        self._tracker._next_render = self._tracker.clock() + self.every
        if not self._quiet:
            self._emit(f"{sync}: sending {total:,} items to {endpoint}")

    def update(self, done: int, in_flight: int, *, delivered: int, rejected: int, pending: int) -> None:
        snapshot = self._tracker._update(done, in_flight, delivered, rejected, pending)
        if snapshot is not None and not self._quiet:
            self._emit(plain_line(snapshot))

    def waiting(self, seconds: float, vendor: str) -> None:
        notable, snapshot = self._tracker._waiting(seconds, vendor)
        if not notable or self._quiet:
            return
        if snapshot is not None:
            self._emit(plain_line(snapshot))
        elif seconds >= self.every:
            self._emit(f"{self._tracker._state.sync}: {wait_notice(seconds, vendor)}")

    def finish(self) -> None:
        snapshot = self._tracker._stop()
        if snapshot is None or self._quiet:
            return
        rate = snapshot.done / snapshot.elapsed if snapshot.elapsed > 0 else None
        self._emit(
            f"{snapshot.sync}: {snapshot.done:,}/{snapshot.total:,} sent in {format_duration(snapshot.elapsed)} "
            f"({format_rate(rate)}); {outcome_counts(snapshot)}"
        )


class TerminalProgress:
    """A live line on a terminal, drawn with rich: bar, items/s, ETA, in flight, the waiting notice.

    Redrawn at most every ``interval`` seconds, from ``update`` or, while updates stall (a long wait for
    a rate limit), from a small ticker thread, so the countdown and ETA stay live. Removed at finish.
    When the line is on ``sys.stderr`` or ``sys.stdout``, prints to those go above it (rich's redirection)."""

    def __init__(self, stream: IO[str], *, interval: float = TERMINAL_INTERVAL,
                 clock: Callable[[], float] = time.monotonic, ticker: bool = True) -> None:
        from rich.console import Console

        self.stream = stream
        self.console = Console(file=stream, force_terminal=True, highlight=False, soft_wrap=False)
        self._tracker = _Tracker(interval, clock)
        self._ticker_on = ticker
        self._live: Any = None
        self._stop_ticker = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, sync: str, endpoint: str, total: int) -> None:
        from rich.live import Live

        if self._live is not None:
            self.finish()
        self._tracker._start(sync, endpoint, total)
        ours = self.stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
        self._live = Live(console=self.console, auto_refresh=False, transient=True,
                          redirect_stdout=ours, redirect_stderr=ours)
        self._live.start(refresh=False)
        snapshot = self._tracker._tick()
        if snapshot is not None:
            self._draw(snapshot)
        if self._ticker_on:
            self._stop_ticker.clear()
            self._thread = threading.Thread(target=self._tick_loop, name="syncline-progress", daemon=True)
            self._thread.start()

    def update(self, done: int, in_flight: int, *, delivered: int, rejected: int, pending: int) -> None:
        snapshot = self._tracker._update(done, in_flight, delivered, rejected, pending)
        if snapshot is not None:
            self._draw(snapshot)

    def waiting(self, seconds: float, vendor: str) -> None:
        _, snapshot = self._tracker._waiting(seconds, vendor)
        if snapshot is not None:
            self._draw(snapshot)

    def finish(self) -> None:
        self._stop_ticker.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._tracker._stop()
        live, self._live = self._live, None
        if live is not None:
            with self._tracker._emit_lock:
                live.update("", refresh=False)
                live.stop()  # transient: the line is erased and the cursor shown again

    def _tick_loop(self) -> None:
        while not self._stop_ticker.wait(self._tracker.interval):
            snapshot = self._tracker._tick()
            if snapshot is not None:
                self._draw(snapshot)

    def _draw(self, snapshot: Snapshot) -> None:
        with self._tracker._emit_lock:
            live = self._live
            if live is not None and self._tracker.active:
                live.update(self.render(snapshot), refresh=True)

    @staticmethod
    def render(s: Snapshot) -> Any:
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        grid = Table.grid(padding=(0, 1))
        grid.add_column(no_wrap=True, min_width=len(s.sync))  # the name never shrinks; the numbers do
        grid.add_column(width=24, no_wrap=True)
        grid.add_column(no_wrap=True, overflow="ellipsis")
        stats = Text()
        stats.append(f"{s.done:,}/{s.total:,}", style="bold")
        stats.append(f" {s.percent:3.0f}%")
        if s.wait_left is not None:  # the news first: a narrow terminal cuts the end of the line
            stats.append(f"  {wait_notice(s.wait_left, s.wait_vendor)}", style="cyan")
        stats.append(f"  {format_rate(s.rate)}  ")
        stats.append(f"ETA {format_duration(s.eta)}" if s.eta is not None else "ETA –")
        stats.append(f"  {s.in_flight} in flight")
        if s.rejected:
            stats.append(f"  {s.rejected:,} rejected", style="yellow")
        unsettled = max(0, s.done - s.delivered - s.rejected)
        if unsettled:
            stats.append(f"  {unsettled:,} in doubt or failed", style="red")
        grid.add_row(Text(s.sync, style="bold"), ProgressBar(total=max(1, s.total), completed=s.done, width=24), stats)
        return grid


def ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def for_stream(stream: IO[str]) -> Progress:
    """A live line when ``stream`` is a terminal (and not under CI=true), else plain lines to it."""
    isatty = getattr(stream, "isatty", None)
    try:
        tty = bool(isatty()) if callable(isatty) else False
    except (ValueError, OSError):  # a closed stream
        tty = False
    if tty and not ci():
        return TerminalProgress(stream)

    def write(line: str) -> None:
        print(line, file=stream, flush=True)

    return PlainProgress(write)
