"""Per-credential request spacing shared by threads and processes on one machine.

A GCRA (generic cell rate algorithm) whose single number of state, the theoretical arrival time of the
next request, lives in a small file under ``$SYNCLINE_HOME/ratelimit/`` guarded by ``flock``. Every
thread and every process that sends with the same credential therefore draws from one schedule, so two
Dagster runs sharing a key together stay under the vendor's limit. The file name is a hash of the vendor
and credential: the secret itself is never written. ``pause_until`` (from ``Retry-After``) pushes the
schedule back for everyone.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

_STATE = struct.Struct("<d")
PAUSE_CHECK_SECONDS = 0.05  # how stale an endpoint without a rate may see another process's pause


def credential_scope(vendor: str, credential_value: str) -> str:
    """A stable, non-reversible name for a credential, safe to log and to use as a file name."""
    return f"{vendor}-" + hashlib.sha256(f"{vendor}\x1f{credential_value}".encode()).hexdigest()[:16]


class RateLimiter:
    """Spaces calls to :meth:`acquire` at least ``interval`` seconds apart across processes.

    ``interval`` 0 (an endpoint with no documented rate) still shares ``pause_until``: a 429 with
    ``Retry-After`` pauses every thread and process using the credential. There nothing is reserved, so
    the file is only read, at most every :data:`PAUSE_CHECK_SECONDS` (a pause set in this process counts
    at once): opening and locking it for every request cost 3% of a 1M-event ``syncline run`` against
    the benchmark sink (10,000 requests: 8.86 s -> 8.6 s; 8.34 s with no limiter at all; 2026-12-03)."""

    def __init__(self, state_dir: Path, scope: str, interval: float) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / f"{scope}.gcra"
        self.interval = interval
        self._lock = threading.Lock()
        self.on_wait: Callable[[float], None] | None = None  # told of waits of a second or more (progress)
        self._paused_until = 0.0  # interval 0: the shared pause as last read (or set here)
        self._read_at = float("-inf")  # monotonic time of that read

    def _update(self, decide: Callable[[float], tuple[float, float]]) -> float:
        with self._lock:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                raw = os.pread(fd, _STATE.size, 0)
                tat = _STATE.unpack(raw)[0] if len(raw) == _STATE.size else 0.0
                new_tat, result = decide(tat)
                os.pwrite(fd, _STATE.pack(new_tat), 0)
                return result
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)

    def _shared_pause(self) -> float:
        """Interval 0: the pause every user of the credential honours, re-read at most every
        :data:`PAUSE_CHECK_SECONDS`."""
        with self._lock:
            if time.monotonic() - self._read_at >= PAUSE_CHECK_SECONDS:
                fd = os.open(self.path, os.O_RDONLY | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_SH)
                    raw = os.pread(fd, _STATE.size, 0)
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    os.close(fd)
                shared = _STATE.unpack(raw)[0] if len(raw) == _STATE.size else 0.0
                self._paused_until = max(self._paused_until, shared)
                self._read_at = time.monotonic()
            return self._paused_until

    def acquire(self, abort: threading.Event | None = None) -> float:
        """Reserve the next slot and sleep until it; returns the seconds waited. ``abort`` wakes the wait."""

        def decide(tat: float) -> tuple[float, float]:
            now = time.time()
            slot = max(now, tat)
            return slot + self.interval, slot - now

        wait = self._update(decide) if self.interval else max(0.0, self._shared_pause() - time.time())
        if wait >= 1.0 and self.on_wait is not None:
            self.on_wait(wait)
        if wait > 0:
            if abort is not None:
                abort.wait(wait)
            else:
                time.sleep(wait)
        return wait

    def pause_until(self, when: float) -> None:
        """No request on this credential before ``when`` (epoch seconds), from any thread or process."""
        self._update(lambda tat: (max(tat, when), 0.0))
        with self._lock:
            self._paused_until = max(self._paused_until, when)

