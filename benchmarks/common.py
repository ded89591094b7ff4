"""What every benchmark here shares: a hard time bound, so a stuck run stops by itself, and one measured
``syncline run`` in a subprocess (its own peak RSS)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def run_cli(env: dict[str, str], timeout: float, sync: str = "bench") -> tuple[float, float, int, str]:
    """(wall seconds, peak RSS MB, exit code, last stderr line) of one ``syncline run <sync>``."""
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "run", sync], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=err, text=True)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("syncline run exceeded its time bound")
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        lines = err.read().strip().splitlines() or [""]
    return time.perf_counter() - started, usage.ru_maxrss / 1024, proc.returncode, lines[-1]


def _abort(signum: int, frame: Any) -> None:
    raise SystemExit("benchmark exceeded its time bound; aborted")


def time_bound(seconds: int) -> None:
    """Abort the process (SystemExit) if it is still running after ``seconds``."""
    signal.signal(signal.SIGALRM, _abort)
    signal.alarm(seconds)
