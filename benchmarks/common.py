"""What every benchmark here shares: a hard time bound, so a stuck run stops by itself."""

from __future__ import annotations

import signal
from typing import Any


def _abort(signum: int, frame: Any) -> None:
    raise SystemExit("benchmark exceeded its time bound; aborted")


def time_bound(seconds: int) -> None:
    """Abort the process (SystemExit) if it is still running after ``seconds``."""
    signal.signal(signal.SIGALRM, _abort)
    signal.alarm(seconds)
