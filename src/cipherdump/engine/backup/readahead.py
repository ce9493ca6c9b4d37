"""Read-ahead hints for the filesystem's byte source, passed on by a thread of their own.

A source read through the page cache (an image) is hinted with ``posix_fadvise`` and
the kernel reads ahead; a source that reads ahead itself (a block device, see
:mod:`cipherdump.blockio.direct`) holds what it reads in a window of its own, so it is
hinted less at a time, in the order the walk reads, and apart for big files' chunks.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable

from cipherdump.engine.views.image import ImageNode
from cipherdump.errors import CipherdumpError
from cipherdump.ext4 import Filesystem, Inode

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


class ReadAhead:
    """The read-ahead of one process of a backup: what to hint, and how much at once.

    Inert unless :meth:`start` finds that the filesystem's byte source takes hints
    (it has ``prefetch``).  A byte source that reads ahead into memory of its own says
    how much it holds (``readahead_window``, ``stream_window``); the kernel's page
    cache holds what it is told to.
    """

    def __init__(self, fs: Filesystem) -> None:
        self._fs = fs
        self._prefetcher: Prefetcher | None = None
        # How much to hint at once for a directory's files, and ahead of a big file's
        # reads (0: the kernel reads ahead in those).
        self._window = PREFETCH_BYTES
        self.stream_ahead = 0

    def start(self) -> None:
        byte_source = self._fs.source
        hint: Callable[[int, int], None] | None = getattr(byte_source, "prefetch", None)
        if hint is None:
            return
        stream_hint: Callable[[int, int], None] = getattr(byte_source, "prefetch_stream", hint)
        self._prefetcher = Prefetcher(hint, stream_hint)
        window: int | None = getattr(byte_source, "readahead_window", None)
        stream: int | None = getattr(byte_source, "stream_window", window)
        self._window = PREFETCH_BYTES if window is None else window
        self.stream_ahead = 0 if stream is None else min(stream, STREAM_AHEAD)

    def stop(self) -> None:
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None

    def stream_hint(self) -> Callable[[list[tuple[int, int]]], None] | None:
        """Where :func:`~cipherdump.engine.chunker.iter_chunks` sends the hints ahead of
        a big file's reads, if the byte source wants them."""
        if self._prefetcher is None or not self.stream_ahead:
            return None
        return self._prefetcher.put_stream

    def hint_inode_tables(self) -> None:
        """Every inode is read (those of unchanged files too): have the kernel read the
        inode tables ahead of the walk.  (Not into a byte source's own read-ahead
        memory, which they would fill: the walk reads them in aligned 64 KiB spans,
        about 4,000 reads per million inodes.)"""
        if self._prefetcher is not None and self.stream_ahead == 0:
            self._prefetcher.put(self._fs.inode_table_ranges())

    def hint_files(self, kids: Iterable[object], known: Callable[[Inode], bool]) -> None:
        """Have the kernel start reading the data a directory's files will need, so
        that reading it overlaps describing, hashing and sealing what comes before.

        Only files that will be read (not ``known``: new to the parent snapshot), and
        at most the byte source's window per directory (:data:`PREFETCH_BYTES` for the
        page cache).  Big files are read sequentially and get the kernel's own
        readahead, or, from a byte source that reads ahead itself, hints ahead of their
        reads (see :meth:`stream_hint`): of those only the start is hinted here, so
        that one big file does not take the window of all the small ones after it.
        """
        if self._prefetcher is None:
            return
        wanted: list[tuple[int, int]] = []
        bs = self._fs.block_size
        budget = self._window
        for kid in kids:
            if not isinstance(kid, ImageNode):
                continue  # a problem, or a reused node
            child = kid.inode
            if not child.is_file or child.has_inline_data or known(child):
                continue
            try:
                runs = child.runs
            except CipherdumpError:
                continue  # reported when the file is read
            start = self.stream_ahead or budget  # of this file
            for run in runs:
                if run.pblk is None or run.unwritten:
                    continue
                length = min(run.length * bs, budget, start)
                wanted.append((run.pblk * bs, length))
                budget -= length
                start -= length
                if budget <= 0 or start <= 0:
                    break
            if budget <= 0:
                break
        if self.stream_ahead:
            # A byte source reading ahead itself keeps what it read in the order it was
            # hinted, and makes room by dropping the oldest: hints in the walk's order,
            # merged only where the bytes between are few (it reads what it is told).
            self._prefetcher.put(merge_in_order(wanted, DIRECT_GAP))
        else:
            self._prefetcher.put(merge_ranges(wanted, PREFETCH_GAP))
