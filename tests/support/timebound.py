"""A wall-clock bound for a block of test code, by SIGALRM (main thread only)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


@contextmanager
def time_limit(seconds: float, error: type[BaseException], message: str) -> Iterator[None]:
    """Raise ``error(message)`` inside the block if it runs longer than ``seconds``."""

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise error(message)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
