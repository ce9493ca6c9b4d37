"""A backup's index: about 10 bytes of memory a blob, the entries themselves on disk.

A backup asks the index three things: "is this (type, id) stored?" for every chunk
and tree it makes (deduplication), the same of a parent's chunks when the index was
repaired, and where a tree blob is (reading the parent snapshot's trees).  It must
never answer "stored" for a blob that is not: the snapshot would name data that is
nowhere.  :class:`~.memindex.MemoryIndex` answers from 66 bytes a blob kept in memory
(660 MB at ten million blobs); this index keeps in memory only what finds a
candidate, and confirms a candidate against the full entry on disk.

* The entries, 48 bytes each as the index files hold them (type, flags, offset,
  lengths, the 32-byte id), are appended to an unnamed temporary file, row after row
  (``O_TMPFILE`` in ``TMPDIR``: 480 MB of disk at ten million blobs, gone when the
  process ends however it ends).  The page cache, not the process,
  holds what of it is read again.
* In memory: a 4-byte fingerprint per row (the id's bytes 8..12), and an
  open-addressing table (linear probing, at most 0.8 full, sized to 0.7 when built)
  of u32 row numbers, placed by the id's first eight bytes.  About 4 + 4/0.7 = 9.7
  bytes a blob: 93 MiB at ten million (measured, with what loading leaves: 99 MiB
  over a process that loaded nothing; ``bench/bench_index_memory.py``).
* A lookup walks the table from the id's slot; a row whose fingerprint matches is
  read from the file (one ``pread`` of 48 bytes) and taken only if its type and all
  32 bytes of its id are equal.  A blob that is stored costs one read (a few
  microseconds, against the hundreds that hashing a chunk costs); one that is not
  costs a read only when another blob's fingerprint matches, about once in 10^8
  lookups.  So no prefix, however long, is ever trusted: two ids that share their
  first twelve bytes are told apart by the rest.

Ids are keyed BLAKE3 outputs, uniform: the first eight bytes spread the slots, the
next four are independent of them.  Data and tree blobs share the table (a type is
confirmed on disk with the id).  Every entry of an index file, the data blobs'
included, keeps its full location, so :meth:`lookup` answers for any blob, from disk.

Loading: each index file is decrypted, its entries written to the file, and dropped
(only one index file is in memory at a time); when all are staged, the table is
built once, at its final size, from the rows of the packs in use (not superseded,
present in the backend), read back in order.  A blob in two packs keeps its first
location, as in :class:`~.memindex.MemoryIndex`.  Packs added later (this run's) are
appended and inserted at once; past 0.8 full, the table is rebuilt larger, its rows
read back from the file.

After a fork (a backup's workers), each process appends to a file of its own: rows
already written are shared, read-only; a worker's new rows would otherwise be written
over the coordinator's.
"""

from __future__ import annotations

import os
import sys
import tempfile
import weakref
from array import array
from bisect import bisect_right
from collections.abc import Iterable

from cipherdump.errors import BackendError
from cipherdump.repo.ids import ID_SIZE, BlobType, Id
from cipherdump.repo.pack import ENTRY_SIZE, PackEntry
from cipherdump.repo.packtable import PackTable

_MIN_SLOTS = 1024
_BUILD_LOAD = 0.7
_MAX_LOAD = 0.8
_READ_ROWS = 65536
_BIG_ENDIAN = sys.byteorder == "big"


class _Rows:
    """The entries file: rows of 48 bytes, appended, read back by row number.

    A forked process that appends starts a file of its own for its new rows.  The
    files are bare descriptors, closed when this object goes (or by :meth:`close`)."""

    def __init__(self, directory: str | None) -> None:
        self._directory = directory or tempfile.gettempdir()
        self._pid = os.getpid()
        # The first row of each segment, and its file; the last is this process's.
        self._starts: list[int] = [0]
        self._fds: list[int] = []
        self._closer = weakref.finalize(self, _close_all, self._fds)
        self._fds.append(self._new_file())
        self.count = 0

    def _new_file(self) -> int:
        flags = os.O_RDWR | os.O_CLOEXEC
        tmpfile = getattr(os, "O_TMPFILE", 0)
        if tmpfile:
            try:
                return os.open(self._directory, flags | tmpfile, 0o600)
            except OSError:
                pass  # a filesystem without O_TMPFILE: a named file, removed at once
        try:
            fd, name = tempfile.mkstemp(dir=self._directory, prefix="cipherdump-index-")
        except OSError as exc:
            raise self._error(exc) from None
        os.unlink(name)
        return fd

    def _error(self, exc: OSError) -> BackendError:
        """A full or failing temporary directory: one line that says where and why
        (as a pack spooled there would be), not a traceback."""
        return BackendError(
            f"the index's temporary file in {self._directory} failed: "
            f"{exc.strerror or exc} (it takes 48 bytes a blob; TMPDIR says where it goes)"
        )

    def append(self, raw: bytes) -> int:
        """Write whole entries; returns the first one's row."""
        if os.getpid() != self._pid:
            # A fork: the rows from here on are this process's alone.
            self._pid = os.getpid()
            self._starts.append(self.count)
            self._fds.append(self._new_file())
        first = self.count
        at = (first - self._starts[-1]) * ENTRY_SIZE
        fd = self._fds[-1]
        view = memoryview(raw)
        try:
            while view:
                written = os.pwrite(fd, view, at)
                view, at = view[written:], at + written
        except OSError as exc:
            raise self._error(exc) from None
        self.count += len(raw) // ENTRY_SIZE
        return first

    def read(self, row: int, rows: int = 1) -> bytes:
        """``rows`` entries from ``row`` on (within one segment: callers read the
        rows of one append at most)."""
        segment = bisect_right(self._starts, row) - 1
        fd = self._fds[segment]
        at = (row - self._starts[segment]) * ENTRY_SIZE
        size = rows * ENTRY_SIZE
        try:
            data = os.pread(fd, size, at)
            while len(data) < size:  # (a regular file reads short only at its end)
                more = os.pread(fd, size - len(data), at + len(data))
                if not more:
                    raise OSError(f"it ends before row {row + rows}")
                data += more
        except OSError as exc:
            raise self._error(exc) from None
        return data

    def close(self) -> None:
        self._closer()


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)
    fds.clear()


class LeanIndex(PackTable):
    def __init__(self, directory: str | None = None) -> None:
        """``directory``: where the entries file goes (None: ``TMPDIR``)."""
        super().__init__()
        self._rows = _Rows(directory)
        self._fps = array("I")  # by row: the id's bytes 8..12
        self._slots = array("I", [0]) * _MIN_SLOTS
        self._count = 0
        # Rows in the table: (first row, row count, pack number) of each pack inserted.
        self._range_start = array("Q")
        self._range_count = array("I")
        self._range_pack = array("I")

    def __len__(self) -> int:
        """Entries in the table: a blob in several packs counts once for each."""
        return self._count

    def close(self) -> None:
        """Remove the entries file (the index cannot be used after)."""
        self._rows.close()

    # Loading ---------------------------------------------------------------------------

    def stage(self, raw_entries: bytes) -> int:
        """Write a pack's validated entries to the file, not yet findable; returns the
        first row (for :meth:`build`)."""
        count = len(raw_entries) // ENTRY_SIZE
        raw = bytes(raw_entries[: count * ENTRY_SIZE])
        first = self._rows.append(raw)
        fps = array("I", raw)[6::12]
        if _BIG_ENDIAN:
            fps.byteswap()
        self._fps.extend(fps)
        return first

    def build(self, packs: Iterable[tuple[Id, int, int, int]]) -> None:
        """Make the staged packs findable: ``(pack id, size, first row, count)``, in
        the order they were staged, which is the order of precedence (a blob in two
        packs is found in the first).  Sizes
        the table once for all of them."""
        packs = list(packs)
        total = self._count + sum(p[3] for p in packs)
        if total > _MAX_LOAD * len(self._slots):
            self._rebuild(total)
        for pack_id, size, first, count in packs:
            self._insert_pack(pack_id, size, first, count)

    def add_pack(self, pack_id: Id, size: int, raw_entries: bytes) -> None:
        """Add a pack's validated entries (a pack this process just saved, or a
        worker's); a blob indexed already keeps its first location."""
        count = len(raw_entries) // ENTRY_SIZE
        first = self.stage(raw_entries)
        if self._count + count > _MAX_LOAD * len(self._slots):
            # Growing as a backup adds blobs: room for a third more, so that a backup
            # into a new repository rebuilds the table a few times, not at every pack.
            self._rebuild((self._count + count) * 4 // 3)
        self._insert_pack(pack_id, size, first, count)

    def _insert_pack(self, pack_id: Id, size: int, first: int, count: int) -> None:
        if self._range_start and first < self._range_start[-1]:
            # (lookup finds a row's pack by bisecting the ranges' first rows)
            raise ValueError("packs must be inserted in the order they were staged")
        number = self._pack_number(pack_id, size)
        self._range_start.append(first)
        self._range_count.append(count)
        self._range_pack.append(number)
        self._insert_rows(first, count)

    def _insert_rows(self, first: int, count: int) -> None:
        """Put rows in the table.  A blob indexed already (in an earlier pack) is put
        in too, without looking: a lookup walks from the blob's slot in the order
        rows were put in, so it meets the earlier row first, and that location wins,
        as in a MemoryIndex.  Not looking halves the time to load the index (a
        duplicate costs a slot; only crashed or concurrent writers make them)."""
        slots, read = self._slots, self._rows.read
        size = len(slots)
        for start in range(first, first + count, _READ_ROWS):
            n = min(_READ_ROWS, first + count - start)
            hashes = array("Q", read(start, n))[2::6]  # the ids' first eight bytes
            if _BIG_ENDIAN:
                hashes.byteswap()
            for value, hashed in zip(range(start + 1, start + n + 1), hashes, strict=True):
                slot = hashed % size
                while slots[slot]:
                    slot += 1
                    if slot == size:
                        slot = 0
                slots[slot] = value  # (a row's number plus one: 0 is empty)
        self._count += count

    def _rebuild(self, n: int) -> None:
        """Make the table big enough for ``n`` blobs at the build load, and insert
        again every pack inserted so far, in order (so the same blobs win)."""
        size = max(_MIN_SLOTS, int(n / _BUILD_LOAD) + 1)  # (slots are taken modulo size)
        self._slots = array("I")  # (freed before the new one is made)
        self._slots = array("I", [0]) * size
        self._count = 0
        for first, count in zip(self._range_start, self._range_count, strict=True):
            self._insert_rows(first, count)

    # Lookups ---------------------------------------------------------------------------

    def _find(self, blob_type: int, raw_id: bytes) -> tuple[int, bytes] | None:
        """The blob's row and its entry as stored, or None."""
        slots, fps = self._slots, self._fps
        size = len(slots)
        slot = int.from_bytes(raw_id[:8], "little") % size
        fp = int.from_bytes(raw_id[8:12], "little")
        while value := slots[slot]:
            if fps[value - 1] == fp:
                entry = self._rows.read(value - 1)
                if entry[0] == blob_type and entry[16:48] == raw_id:
                    return value - 1, entry
            slot += 1
            if slot == size:
                slot = 0
        return None

    def has(self, blob_type: BlobType, blob_id: Id) -> bool:
        return self._find(blob_type, blob_id.raw) is not None

    def lookup(self, blob_type: BlobType, blob_id: Id) -> tuple[Id, PackEntry] | None:
        found = self._find(blob_type, blob_id.raw)
        if found is None:
            return None
        row, entry = found
        number = self._range_pack[bisect_right(self._range_start, row) - 1]
        return self._packs[number], PackEntry.decode(entry, 0, "the index's temporary file")


assert ID_SIZE == 32 and ENTRY_SIZE == 48  # the offsets above
