"""``--read-rate``: a source that reads no faster than a given number of bytes a second.

A backup of a production machine must not starve its users of disk bandwidth.  Every
read goes through :meth:`RateLimitedSource.read_at`, which sleeps as long as needed to
keep the average at the rate (a token bucket holding at most a quarter second of reads,
so a burst after a pause stays short).  The inner source's read-ahead (``prefetch``)
is hidden: reads made ahead in threads would not be counted, and a throttled backup
does not need them to keep up with a disk it deliberately leaves idle.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable

from cipherdump.blockio.source import ByteSource, Closable

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_rate(text: str) -> int:
    """Bytes a second from ``"50M"``, ``"1.5G"``, ``"800K"`` or plain ``"1048576"``
    (binary units; a trailing ``B``, ``iB`` or ``/s`` is allowed).  ValueError if not."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)(?:i?B)?(?:/s)?\s*", text, re.IGNORECASE)
    if m is None:
        raise ValueError(f"not a rate: {text!r} (say 50M for 50 MiB a second)")
    rate = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if rate < 4096:
        raise ValueError(f"{text!r}: a rate under 4 KiB a second would never finish")
    return rate


class RateLimitedSource(Closable):
    """``inner``, read at most ``rate`` bytes a second on average."""

    def __init__(
        self,
        inner: ByteSource,
        rate: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._inner = inner
        self._rate = rate
        self._clock = clock
        self._sleep = sleep
        self._burst = max(rate / 4, 1 << 20)
        self._tokens = self._burst
        self._last = clock()
        self._lock = threading.Lock()
        self.slept_s = 0.0  # time spent waiting, for reports and tests

    @property
    def size(self) -> int:
        return self._inner.size

    @property
    def name(self) -> str:
        return self._inner.name

    @property
    def rate(self) -> int:
        return self._rate

    def _take(self, n: int) -> None:
        with self._lock:
            now = self._clock()
            self._tokens = min(self._tokens + (now - self._last) * self._rate, self._burst)
            self._last = now
            self._tokens -= n
            wait = -self._tokens / self._rate if self._tokens < 0 else 0.0
        if wait > 0:
            self.slept_s += wait
            self._sleep(wait)

    def read_at(self, offset: int, length: int) -> bytes:
        self._take(length)
        return self._inner.read_at(offset, length)

    def reopen(self) -> None:
        reopen: Callable[[], None] | None = getattr(self._inner, "reopen", None)
        if reopen is not None:
            reopen()

    def close(self) -> None:
        self._inner.close()
