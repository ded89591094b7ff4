"""How many requests may be in flight: fixed for rate-limited endpoints, adaptive for the rest.

Adaptive is TCP-like AIMD on the vendor's answers: start small, double per round of clean, fast answers
(slow start) up to a threshold, then grow by one per round; halve on a 429, a 5xx or no answer, and step
down by a tenth when latency rises well above the fastest seen (the vendor is queueing our requests).
"""

from __future__ import annotations

import threading
import time


class InFlightLimit:
    """The current cap on requests in flight, between 1 and ``maximum``."""

    def __init__(self, maximum: int, *, adaptive: bool, initial: int = 4) -> None:
        self.maximum = max(1, maximum)
        self.adaptive = adaptive
        self._value = float(min(initial, self.maximum) if adaptive else self.maximum)
        self._threshold = float(self.maximum)
        self._best_latency: float | None = None
        self._smoothed: float | None = None
        self._last_cut = 0.0
        self._lock = threading.Lock()
        self.peak = int(self._value)

    @property
    def current(self) -> int:
        return max(1, int(self._value))

    def observe(self, latency_s: float | None, *, clean: bool) -> None:
        """One answer: ``latency_s`` None means no answer (timeout, drop); ``clean`` False is 429/5xx."""
        if not self.adaptive:
            return
        with self._lock:
            now = time.monotonic()
            if not clean or latency_s is None:
                self._cut(now, 0.5)
                return
            self._best_latency = latency_s if self._best_latency is None else min(self._best_latency, latency_s)
            self._smoothed = latency_s if self._smoothed is None else 0.9 * self._smoothed + 0.1 * latency_s
            if self._smoothed > 2.0 * self._best_latency + 0.010:
                self._cut(now, 0.9)
                return
            if self._value < self._threshold:
                self._value += 1.0  # slow start: +1 per answer doubles the cap each round
            else:
                self._value += 1.0 / self._value
            self._value = min(self._value, float(self.maximum))
            self.peak = max(self.peak, self.current)

    def _cut(self, now: float, factor: float) -> None:
        # At most one cut per latency round (or 100 ms): the answers of one burst are one signal.
        if now - self._last_cut < max(0.1, self._best_latency or 0.0):
            return
        self._last_cut = now
        self._value = max(1.0, self._value * factor)
        self._threshold = max(2.0, self._value)
