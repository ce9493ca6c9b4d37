"""Read-ahead hints for a backup's source, passed on by a thread of their own.

A source read through the page cache (an image) is hinted with ``posix_fadvise`` and
the kernel reads ahead; a source that reads ahead itself (a block device, see
:mod:`cipherdump.blockio.direct`) holds what it reads in a window of its own, so it is
hinted less at a time, in the order the walk reads, and apart for big files' chunks.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

# Bytes of a directory's files hinted at once, for the page cache.
PREFETCH_BYTES = 64 << 20
# Read ahead of a big file's reads, for a source without the kernel's read-ahead.
STREAM_AHEAD = 4 << 20
# Ranges to read ahead this close together are read as one (the gap with them), by the
# kernel, or by a source reading ahead itself into a window of its own.
PREFETCH_GAP = 256 << 10
DIRECT_GAP = 32 << 10


def merge_ranges(ranges: list[tuple[int, int]], gap: int) -> list[tuple[int, int]]:
    """``(offset, length)`` ranges sorted and merged where at most ``gap`` bytes apart:
    one hint (and one read by the kernel) for a directory's files, which lie close
    together on disk but are listed in hash order."""
    return merge_in_order(sorted(ranges), gap)


def merge_in_order(ranges: list[tuple[int, int]], gap: int) -> list[tuple[int, int]]:
    """``(offset, length)`` ranges in their order, each merged into the one before it
    where it starts at most ``gap`` bytes after that one's end (and not before its
    start): the files of a directory in the order the walk reads them."""
    out: list[tuple[int, int]] = []
    start = end = -1
    for offset, length in ranges:
        if length <= 0:
            continue
        if start >= 0 and start <= offset <= end + gap:
            end = max(end, offset + length)
            continue
        if start >= 0:
            out.append((start, end - start))
        start, end = offset, offset + length
    if start >= 0:
        out.append((start, end - start))
    return out


class Prefetcher:
    """Passes read-ahead hints to the source from a thread of its own: the hint system
    call costs tens of microseconds a file, and the walk need not wait for it.

    ``stream_hint`` takes the hints ahead of a big file's reads, if the source keeps
    them apart (see :mod:`cipherdump.blockio.direct`)."""

    def __init__(
        self, hint: Callable[[int, int], None], stream_hint: Callable[[int, int], None]
    ) -> None:
        self._hints = (hint, stream_hint)
        self._queue: queue.SimpleQueue[tuple[list[tuple[int, int]], bool] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._run, name="prefetch", daemon=True)
        self._thread.start()

    def put(self, ranges: list[tuple[int, int]]) -> None:
        if ranges:
            self._queue.put((ranges, False))

    def put_stream(self, ranges: list[tuple[int, int]]) -> None:
        if ranges:
            self._queue.put((ranges, True))

    def close(self) -> None:
        """Stop after the hints already queued; returns once the thread is gone."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            ranges, stream = item
            hint = self._hints[stream]
            for offset, length in ranges:
                hint(offset, length)
