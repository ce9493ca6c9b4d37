"""--read-rate: rates as typed, and a source that keeps to its rate."""

from __future__ import annotations

import pytest

from cipherdump.blockio import MemorySource
from cipherdump.blockio.throttle import RateLimitedSource, parse_rate


def test_parse_rate() -> None:
    assert parse_rate("50M") == 50 << 20
    assert parse_rate("1.5G") == 3 << 29
    assert parse_rate("800k") == 800 << 10
    assert parse_rate("64MiB/s") == 64 << 20
    assert parse_rate("1048576") == 1 << 20
    for bad in ("fast", "-1M", "1T", "100"):
        with pytest.raises(ValueError):
            parse_rate(bad)


def test_reads_keep_to_the_rate_on_average() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    rate = 1 << 20
    src = RateLimitedSource(MemorySource(bytes(64 << 20)), rate, clock=lambda: now[0], sleep=sleep)
    total = 0
    for i in range(40):
        total += len(src.read_at(i << 20, 1 << 20))
    # The burst allowance (1 MiB here) is read at once; the rest at the rate.
    assert now[0] == pytest.approx((total - (1 << 20)) / rate, rel=0.01)
    assert src.slept_s == pytest.approx(now[0])
    # What is read is the inner source's bytes, and nothing else is hidden from callers
    # but the inner read-ahead.
    assert src.size == 64 << 20 and not hasattr(src, "prefetch")
