"""A lean index for marking blobs in use (``prune``): about 42 bytes a blob.

:class:`~.memindex.MemoryIndex` keeps every blob's whole id (32 bytes) for writers that
must never mistake one blob for another.  Prune only asks "is this blob indexed, and
where", so it keeps the first 16 bytes of each id.  Ids are keyed BLAKE3 outputs,
uniform and independent: among ten million blobs the chance that an absent blob shares
its 16-byte prefix with a present one is below 10^-25, and the only harm it could do
is to keep a blob that is not used (never to drop one that is).  With the hash table
filled to at most 0.6 (linear probing stays short), ten million blobs take about 420
MiB where the writers' index takes 660.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterator

from cipherdump.repo.ids import BlobType, Id
from cipherdump.repo.pack import ENTRY_SIZE, PackEntry

PREFIX = 16
_MIN_SLOTS = 1024
_BIG_ENDIAN = sys.byteorder == "big"


class MarkIndex:
    def __init__(self) -> None:
        self._prefixes = bytearray()
        self._type = bytearray()
        self._flags = bytearray()
        self._pack = array("I")
        self._offset = array("I")
        self._length = array("I")
        self._raw_length = array("I")
        self._slots = array("I", bytes(4 * _MIN_SLOTS))
        self._mask = _MIN_SLOTS - 1
        self._packs: list[Id] = []
        self._pack_sizes: list[int] = []
        self._pack_numbers: dict[Id, int] = {}

    def __len__(self) -> int:
        return len(self._type)

    @property
    def pack_count(self) -> int:
        return len(self._packs)

    def iter_packs(self) -> Iterator[tuple[Id, int]]:
        yield from zip(self._packs, self._pack_sizes, strict=True)

    def add_pack(self, pack_id: Id, size: int, raw_entries: bytes) -> None:
        """Add a pack's validated 48-byte entries; a blob already indexed keeps its
        first location."""
        number = self._pack_numbers.get(pack_id)
        if number is None:
            number = len(self._packs)
            self._packs.append(pack_id)
            self._pack_sizes.append(size)
            self._pack_numbers[pack_id] = number
        count = len(raw_entries) // ENTRY_SIZE
        raw = bytes(raw_entries[: count * ENTRY_SIZE])
        self._reserve(len(self) + count)
        words = array("I", raw)
        hashes = array("Q", raw)[2::6]
        if _BIG_ENDIAN:
            words.byteswap()
            hashes.byteswap()
        slots, mask, prefixes, types = self._slots, self._mask, self._prefixes, self._type
        for i, hashed in enumerate(hashes):
            at = i * ENTRY_SIZE
            prefix = raw[at + 16 : at + 16 + PREFIX]
            slot = hashed & mask
            while value := slots[slot]:
                start = (value - 1) * PREFIX
                if types[value - 1] == raw[at] and prefixes[start : start + PREFIX] == prefix:
                    break
                slot = (slot + 1) & mask
            else:
                slots[slot] = len(types) + 1
                prefixes += prefix
                types.append(raw[at])
                self._flags.append(raw[at + 1])
                self._pack.append(number)
                self._offset.append(words[i * 12 + 1])
                self._length.append(words[i * 12 + 2])
                self._raw_length.append(words[i * 12 + 3])

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

    def lookup(self, blob_type: BlobType, blob_id: Id) -> tuple[Id, PackEntry] | None:
        row = self.row(blob_type, blob_id)
        if row < 0:
            return None
        entry = PackEntry(
            blob_type,
            self._flags[row],
            self._offset[row],
            self._length[row],
            self._raw_length[row],
            blob_id,
        )
        return self._packs[self._pack[row]], entry

    def sizes(self, row: int) -> tuple[int, int]:
        """(sealed length, plaintext length) of the blob in ``row``."""
        return self._length[row], self._raw_length[row]

    def iter_locations(self) -> Iterator[tuple[int, int, int]]:
        """(pack number, sealed length, row) of every indexed blob."""
        yield from zip(self._pack, self._length, range(len(self)), strict=True)

    def _reserve(self, n: int) -> None:
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
            for row, hashed in enumerate(words[::2], 1):
                if _BIG_ENDIAN:
                    hashed = int.from_bytes(hashed.to_bytes(8, "big"), "little")
                slot = hashed & mask
                while slots[slot]:
                    slot = (slot + 1) & mask
                slots[slot] = row
