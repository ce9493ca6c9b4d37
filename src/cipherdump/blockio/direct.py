"""``O_DIRECT`` reads with read-ahead of our own.

Reading around the page cache spares the host a second copy of everything a backup
reads, and what is read is what is on the device, not blocks its cache kept from
before.  But direct reads get no read-ahead from the kernel, so each one would wait
for the device.  :class:`DirectReader` therefore takes read-ahead hints and has the
hinted ranges read into rings of aligned memory, from which
:meth:`DirectReader.read_at` then copies what it is asked for; anything not hinted (or
no longer held) is read at once.

Hinted ranges are read in pieces of at most :data:`PIECE` bytes, allocated in a ring
in the order they are hinted and freed in the same order.  A piece read through to the
end of its hinted range is done with; the oldest pieces make room for new ones when
the ring is full, read or not, so hints that were never followed cost a wasted read,
never a stall.  There are two rings: one for the files of a directory
(:meth:`DirectReader.prefetch`), one for the chunks ahead of a big file's reads
(:meth:`DirectReader.prefetch_stream`), so that streaming a big file does not push
out the pieces of the small files after it before they are read.

The reads are queued with Linux native AIO (:mod:`cipherdump.blockio.aio`), so all of
them are in flight at once whatever the walk is doing; where that is not available, a
few threads make them instead (each needing the interpreter lock between two reads, so
fewer are in flight while the walk computes).
"""

from __future__ import annotations

import bisect
import collections
import errno
import itertools
import mmap
import os
import queue
import threading
import weakref

from cipherdump.blockio.aio import AioContext, address_of, open_context

# O_DIRECT needs buffers, offsets and lengths aligned to the logical sector size; 4 KiB
# covers every device we meet and keeps the arithmetic simple.
ALIGN = 4096
PIECE = 1 << 20
RING = 16 << 20  # for the files of a directory
STREAM_RING = 8 << 20  # ahead of a big file's reads
THREADS = 8
# Reads in flight at most with AIO (the kernel reserves room for twice as many events,
# out of fs.aio-max-nr for the whole system).
AIO_DEPTH = 512


def _down(n: int) -> int:
    return n - n % ALIGN


def _up(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


class _Piece:
    """Source bytes ``[start, end)`` (aligned), read into ``ring.memory[at : at + end -
    start]``; the hint wanted them up to ``wanted``."""

    __slots__ = ("at", "done", "end", "got", "ring", "start", "wanted")

    def __init__(self, start: int, end: int, wanted: int, ring: _Ring, at: int) -> None:
        self.start, self.end, self.wanted, self.ring, self.at = start, end, wanted, ring, at
        self.got = 0  # bytes read; -1 if the read failed
        self.done = False  # read (or failed)


class _Ring:
    """Aligned memory that pieces take in turn, the oldest giving way to the newest."""

    def __init__(self, size: int) -> None:
        # Anonymous mappings are page-aligned, as O_DIRECT needs; pages are only backed
        # once read into.
        self.memory = mmap.mmap(-1, size)
        self.address = address_of(self.memory)
        self.size = size
        self.fifo: collections.deque[_Piece] = collections.deque()  # allocation order
        self.head = 0  # where the next piece goes

    def place(self, n: int) -> int | None:
        """Where ``n`` bytes fit without dropping a piece, or None (the oldest must go)."""
        if not self.fifo:
            self.head = n
            return 0
        tail, head = self.fifo[0].at, self.head
        if head > tail:
            if n <= self.size - head:
                self.head = head + n
                return head
            if n <= tail:
                self.head = n
                return 0
        elif n <= tail - head:
            self.head = head + n
            return head
        return None


class DirectReader:
    """Direct reads of ``fd`` (opened with ``O_DIRECT``), ``size`` bytes long.

    :meth:`read_at` is for one thread (the walk's); :meth:`prefetch` and
    :meth:`prefetch_stream` may be called from another.  After a ``fork`` the child
    starts over with rings, an AIO context and threads of its own (its parent's are not
    its to use)."""

    def __init__(
        self,
        fd: int,
        size: int,
        *,
        ring: int = RING,
        stream_ring: int = STREAM_RING,
        threads: int = THREADS,
        aio: bool = True,
    ) -> None:
        """``threads`` read where native AIO is not available (or ``aio`` is False)."""
        if min(ring, stream_ring) < PIECE or ring % ALIGN or stream_ring % ALIGN:
            raise ValueError(f"a ring must hold a {PIECE}-byte piece in whole pages")
        self._fd = fd
        self._size = size
        self._ring_sizes = (ring, stream_ring)
        self._thread_count = threads
        self._use_aio = aio
        self._start_over()
        _LIVE.add(self)

    def _start_over(self) -> None:
        """Fresh state: at first, and in a forked child before any thread of its own
        runs (see :func:`_after_fork`)."""
        self._files, self._stream = (_Ring(size) for size in self._ring_sizes)
        self._bounce = mmap.mmap(-1, PIECE)
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._starts: list[int] = []  # of the pieces still to be read from, sorted
        self._by_start: dict[int, _Piece] = {}
        self._closed = False
        self._broken = False  # collecting AIO results failed: no more read-ahead
        # Native AIO: the context, the pieces in flight by tag, whether a thread is
        # collecting results (one at a time; the others wait to be told).
        depth = min(sum(self._ring_sizes) // ALIGN, AIO_DEPTH)
        self._aio: AioContext | None = open_context(depth) if self._use_aio else None
        self._tags = itertools.count(1)
        self._in_flight: dict[int, _Piece] = {}
        self._reaping = False
        # Or threads reading what is queued for them.
        self._todo: queue.SimpleQueue[_Piece | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    @property
    def uses_aio(self) -> bool:
        return self._aio is not None

    # -- the walk's side ---------------------------------------------------------------
    def read_at(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        end = min(offset + length, self._size)
        if end <= offset:
            return b""
        if self._by_start:
            data = self._from_pieces(offset, end)
            if data is not None:
                return data
        return self._read_now(offset, end)

    def _from_pieces(self, offset: int, end: int) -> bytes | None:
        """The bytes from read-ahead pieces that cover ``[offset, end)``, else None."""
        with self._lock:
            pieces = self._covering(offset, end)
            if not pieces:
                return None
            for piece in pieces:
                self._wait_for(piece)
                if piece.got < min(piece.end, self._size) - piece.start:
                    return None  # failed or short: read it now, and raise its error there
            # A piece dropped while we waited may hold other bytes now.
            if any(self._by_start.get(piece.start) is not piece for piece in pieces):
                return None
            parts = []
            pos = offset  # pieces hinted twice may overlap: each byte from one of them
            for piece in pieces:
                stop = min(end, piece.end)
                at = piece.at - piece.start
                parts.append(piece.ring.memory[pos + at : stop + at])
                pos = stop
            for piece in pieces:
                if end >= piece.wanted:
                    self._forget(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _wait_for(self, piece: _Piece) -> None:
        """Until ``piece`` is read (under the lock, which waiting releases)."""
        while not piece.done:
            if self._aio is None or self._reaping or not self._in_flight:
                # Threads read it, another thread collects results, or it is not
                # queued yet (its submitter waits for room): told when that changes.
                self._room.wait()
                continue
            self._reaping = True
            self._lock.release()
            try:
                finished = self._aio.reap(wait=True)
            except OSError:
                finished = None
            finally:
                self._lock.acquire()
                self._reaping = False
            if finished is None:
                self._give_up()
            else:
                for tag, result in finished:
                    done = self._in_flight.pop(tag, None)
                    if done is not None:
                        done.got, done.done = (result if result >= 0 else -1), True
            self._room.notify_all()

    def _give_up(self) -> None:
        """Collecting AIO results failed (it should not): every piece counts as failed,
        and no ring is written again, since the kernel may still read into them."""
        self._broken = True
        for piece in self._in_flight.values():
            piece.got, piece.done = -1, True
        self._in_flight.clear()

    def _covering(self, offset: int, end: int) -> list[_Piece]:
        """Pieces that together hold ``[offset, end)``, in order; empty if none do."""
        starts, by_start = self._starts, self._by_start
        i = bisect.bisect_right(starts, offset) - 1
        pieces: list[_Piece] = []
        covered = offset
        while covered < end:
            if i < 0 or i >= len(starts):
                return []
            piece = by_start[starts[i]]
            i += 1
            if piece.end <= covered:
                continue  # inside the one before (hinted twice)
            if piece.start > covered:
                return []
            pieces.append(piece)
            covered = piece.end
        return pieces

    def _read_now(self, offset: int, end: int) -> bytes:
        start = _down(offset)
        parts: list[bytes] = []
        pos = start
        bounce = self._bounce
        while pos < end:
            want = min(PIECE, _up(end - pos))
            view = memoryview(bounce)[:want]
            try:
                got = os.preadv(self._fd, [view], pos)
            finally:
                view.release()
            if got <= 0:
                break
            lo = max(offset, pos) - pos
            hi = min(end - pos, got)
            parts.append(bounce[lo:hi])
            pos += got
            if got < want:
                break
        return parts[0] if len(parts) == 1 else b"".join(parts)

    # -- hints ---------------------------------------------------------------------------
    @property
    def window(self) -> int:
        """Bytes worth hinting with :meth:`prefetch` at one time: half its ring, so that
        the pieces of one batch are not dropped for those of the next before they are
        read."""
        return self._files.size // 2

    @property
    def stream_window(self) -> int:
        """Bytes worth hinting ahead of a big file's reads (:meth:`prefetch_stream`)."""
        return self._stream.size // 2

    def prefetch(self, offset: int, length: int) -> None:
        """Read ``[offset, offset + length)`` ahead, in pieces; waits for room in the
        ring (read-ahead pieces being read) but never for the walk."""
        self._hint(offset, length, stream=False)

    def prefetch_stream(self, offset: int, length: int) -> None:
        """:meth:`prefetch` for the reads ahead of a big file's, into a ring of their own."""
        self._hint(offset, length, stream=True)

    def _hint(self, offset: int, length: int, *, stream: bool) -> None:
        if length <= 0 or offset < 0:
            return
        ring = self._stream if stream else self._files
        end = min(offset + length, self._size)
        pos = _down(offset)
        while pos < end:
            # Pieces end on PIECE boundaries of the source, so that the spans others
            # read (inode tables in aligned spans) never straddle two.
            piece_end = min(pos - pos % PIECE + PIECE, _up(end))
            self._add_piece(ring, pos, piece_end, min(end, piece_end))
            pos = piece_end

    def _add_piece(self, ring: _Ring, start: int, end: int, wanted: int) -> None:
        with self._lock:
            if self._closed or self._broken or self._covering(start, end):
                return
            at = self._allocate(ring, end - start)
            if self._closed or self._broken:  # while waiting for room
                return
            piece = _Piece(start, end, wanted, ring, at)
            ring.fifo.append(piece)
            if start not in self._by_start:  # else an older, shorter piece gives way
                bisect.insort(self._starts, start)
            self._by_start[start] = piece
            if self._aio is not None:
                self._submit(piece)
                return
            if not self._threads:
                self._start_threads()
        self._todo.put(piece)

    def _submit(self, piece: _Piece) -> None:
        """Queue the read of ``piece`` with AIO (under the lock); when the context is
        full, once the oldest read in flight is done."""
        assert self._aio is not None
        tag = next(self._tags)
        address = piece.ring.address + piece.at
        while True:
            try:
                self._aio.submit_read(self._fd, address, piece.end - piece.start, piece.start, tag)
            except OSError as exc:
                if exc.errno == errno.EAGAIN and self._in_flight and not self._broken:
                    self._wait_for(next(iter(self._in_flight.values())))
                    continue
                piece.got, piece.done = -1, True  # read again by the walk, if wanted
            else:
                self._in_flight[tag] = piece
            self._room.notify_all()
            return

    def _allocate(self, ring: _Ring, n: int) -> int:
        """Where ``n`` bytes go in ``ring``; drops its oldest pieces to make room (under
        the lock, which waiting for a piece still being read releases)."""
        while (at := ring.place(n)) is None:
            oldest = ring.fifo[0]
            self._wait_for(oldest)
            if ring.fifo and ring.fifo[0] is oldest:
                ring.fifo.popleft()
                self._forget(oldest)
        return at

    def _forget(self, piece: _Piece) -> None:
        """Stop serving reads from ``piece`` (its room is reused when it is the oldest)."""
        if self._by_start.get(piece.start) is piece:
            del self._by_start[piece.start]
            i = bisect.bisect_left(self._starts, piece.start)
            del self._starts[i]

    # -- the reading threads ---------------------------------------------------------------
    def _start_threads(self) -> None:
        for n in range(self._thread_count):
            thread = threading.Thread(target=self._run, name=f"direct-read-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _run(self) -> None:
        while (piece := self._todo.get()) is not None:
            view = memoryview(piece.ring.memory)[piece.at : piece.at + piece.end - piece.start]
            try:
                piece.got = os.preadv(self._fd, [view], piece.start)
            except Exception:  # the walk reads it again itself, and meets the error there
                piece.got = -1
            finally:
                view.release()
            with self._lock:
                piece.done = True
                self._room.notify_all()

    def close(self) -> None:
        """Stop reading ahead, once the reads in flight are done (the kernel would
        otherwise read into freed memory); the descriptor is the caller's."""
        _LIVE.discard(self)
        with self._lock:
            self._closed = True
            threads, self._threads = self._threads, []
            while self._in_flight and not self._broken:
                self._wait_for(next(iter(self._in_flight.values())))
        for _ in threads:
            self._todo.put(None)
        for thread in threads:
            thread.join()
        if self._aio is not None:
            self._aio.close()  # waits for anything still in flight
        if not self._broken:
            self._files.memory.close()
            self._stream.memory.close()
        self._bounce.close()


# Every reader not closed, to start over in a forked child (a backup worker) before its
# threads can use the parent's rings, AIO context or lock.
_LIVE: weakref.WeakSet[DirectReader] = weakref.WeakSet()


def _after_fork() -> None:
    for reader in list(_LIVE):
        reader._start_over()


os.register_at_fork(after_in_child=_after_fork)
