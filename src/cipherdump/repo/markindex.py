"""A lean index for marking blobs in use (``prune``): about 32 bytes a data blob.

:class:`~.memindex.MemoryIndex` keeps every blob's whole entry (a 32-byte id, offset,
lengths, flags) for writers that must never mistake one blob for another and read any
blob by its location.  Prune asks less.  Of a data blob it asks only "is it indexed,
in which pack, and how long is it sealed" (a pack it repacks is read whole, blobs
located by that pack's own header); only tree blobs, which it reads one by one while
marking, need offset, flags and plaintext length.  So a data blob costs a 16-byte id
prefix, a type byte, a pack number and a sealed length (25 bytes), plus its share of
the hash table, and the columns are allocated once from the entry count the caller
read from the index files (no growth by over-allocation, no rehash at the peak).

Ids are keyed BLAKE3 outputs, uniform and independent: among ten million blobs the
chance that two indexed blobs share a 16-byte prefix is below 10^-24, and the chance
that an absent blob matches a present one's prefix below 10^-25; the only harm the
latter could do is keep a blob that is not used.
"""

from __future__ import annotations

import sys
from array import array
from bisect import bisect_left
from collections.abc import Iterator

from cipherdump.repo.ids import BlobType, Id
from cipherdump.repo.pack import ENTRY_SIZE, PackEntry
from cipherdump.repo.packtable import PackTable

PREFIX = 16
_MIN_SLOTS = 1024
_BIG_ENDIAN = sys.byteorder == "big"


class MarkIndex(PackTable):
    def __init__(self, expected: int = 0) -> None:
        """``expected``: how many entries the packs to be added hold in all (duplicates
        included), so that the columns and the hash table are sized once.  More may be
        added; the columns then grow."""
        super().__init__()
        capacity = max(expected, 0)
        self._count = 0
        self._prefixes = bytearray(PREFIX * capacity)
        self._type = bytearray(capacity)
        self._pack = array("I", bytes(4 * capacity))
        self._length = array("I", bytes(4 * capacity))
        # Tree blobs only, by ascending row (rows are numbered as blobs are added).
        self._tree_rows = array("I")
        self._tree_offset = array("I")
        self._tree_raw_length = array("I")
        self._tree_flags = bytearray()
        size = _MIN_SLOTS
        while 5 * capacity > 3 * size:
            size *= 2
        self._slots = array("I", bytes(4 * size))
        self._mask = size - 1

    def __len__(self) -> int:
        return self._count

    def add_pack(self, pack_id: Id, size: int, raw_entries: bytes) -> None:
        """Add a pack's validated 48-byte entries; a blob already indexed keeps its
        first location."""
        number = self._pack_number(pack_id, size)
        count = len(raw_entries) // ENTRY_SIZE
        raw = bytes(raw_entries[: count * ENTRY_SIZE])
        self._reserve(self._count + count)
        words = array("I", raw)
        hashes = array("Q", raw)[2::6]
        if _BIG_ENDIAN:
            words.byteswap()
            hashes.byteswap()
        slots, mask, prefixes, types = self._slots, self._mask, self._prefixes, self._type
        tree = BlobType.TREE
        row = self._count
        for i, hashed in enumerate(hashes):
            at = i * ENTRY_SIZE
            prefix = raw[at + 16 : at + 16 + PREFIX]
            blob_type = raw[at]
            slot = hashed & mask
            while value := slots[slot]:
                start = (value - 1) * PREFIX
                if types[value - 1] == blob_type and prefixes[start : start + PREFIX] == prefix:
                    break
                slot = (slot + 1) & mask
            else:
                slots[slot] = row + 1
                prefixes[row * PREFIX : (row + 1) * PREFIX] = prefix
                types[row] = blob_type
                self._pack[row] = number
                self._length[row] = words[i * 12 + 2]
                if blob_type == tree:
                    self._tree_rows.append(row)
                    self._tree_offset.append(words[i * 12 + 1])
                    self._tree_raw_length.append(words[i * 12 + 3])
                    self._tree_flags.append(raw[at + 1])
                row += 1
        self._count = row

    def row(self, blob_type: BlobType, blob_id: Id) -> int:
        """The blob's row (rows number blobs densely from 0), or -1."""
        raw_id = blob_id.raw
        prefix = raw_id[:PREFIX]
        slots, prefixes, types = self._slots, self._prefixes, self._type
        slot = int.from_bytes(raw_id[:8], "little") & self._mask
        while value := slots[slot]:
            row = value - 1
            start = row * PREFIX
            if types[row] == blob_type and prefixes[start : start + PREFIX] == prefix:
                return row
            slot = (slot + 1) & self._mask
        return -1

    def tree_location(self, tree_id: Id) -> tuple[Id, PackEntry] | None:
        """Where the tree blob is: its pack and its entry there, or None."""
        row = self.row(BlobType.TREE, tree_id)
        if row < 0:
            return None
        at = bisect_left(self._tree_rows, row)
        entry = PackEntry(
            BlobType.TREE,
            self._tree_flags[at],
            self._tree_offset[at],
            self._length[row],
            self._tree_raw_length[at],
            tree_id,
        )
        return self._packs[self._pack[row]], entry

    def pack_number(self, row: int) -> int:
        """The number (in :meth:`iter_packs` order) of the pack the index uses for ``row``."""
        return self._pack[row]

    def iter_locations(self) -> Iterator[tuple[int, int, int]]:
        """(pack number, sealed length, row) of every indexed blob."""
        # range first: zip stops there, past the rows the columns keep spare.
        for row, number, length in zip(range(self._count), self._pack, self._length, strict=False):
            yield number, length, row

    def _reserve(self, n: int) -> None:
        if n > len(self._type):
            # More than announced: grow the columns (by half again, at least to n).
            grow = max(n, len(self._type) * 3 // 2) - len(self._type)
            self._prefixes += bytes(PREFIX * grow)
            self._type += bytes(grow)
            self._pack.frombytes(bytes(4 * grow))
            self._length.frombytes(bytes(4 * grow))
        # At most 0.6 full: 5 slots for every 3 blobs.
        if 5 * n <= 3 * len(self._slots):
            return
        size = len(self._slots)
        while 5 * n > 3 * size:
            size *= 2
        self._slots = array("I", bytes(4 * size))
        self._mask = size - 1
        slots, mask = self._slots, self._mask
        # A view, not a copy: at ten million blobs a copy of the prefixes would be
        # 160 MiB more at the peak.
        with memoryview(self._prefixes) as view, view.cast("Q") as words:
            for row, hashed in enumerate(words[: 2 * self._count : 2], 1):
                if _BIG_ENDIAN:
                    hashed = int.from_bytes(hashed.to_bytes(8, "big"), "little")
                slot = hashed & mask
                while slots[slot]:
                    slot = (slot + 1) & mask
                slots[slot] = row
