"""The in-memory index: blob (type, id) -> pack location, compact enough for millions.

A dict of Python objects costs ~250 bytes a blob; this table keeps each blob in flat
arrays (32 bytes of id, four u32 fields, two bytes of type/flags) plus a u32 slot in
an open-addressing hash table at load factor <= 1/2: about 66 bytes a blob, so a
million blobs take ~70 MiB.  Blob ids are uniformly random (keyed BLAKE3), so their
first eight bytes are the hash.
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterator

from cipherdump.repo.ids import ID_SIZE, BlobType, Id
from cipherdump.repo.pack import ENTRY_SIZE, PackEntry
from cipherdump.repo.packtable import PackTable

_MIN_SLOTS = 1024
_BIG_ENDIAN = sys.byteorder == "big"


class MemoryIndex(PackTable):
    def __init__(self) -> None:
        super().__init__()
        self._ids = bytearray()
        self._type = bytearray()
        self._flags = bytearray()
        self._pack = array("I")
        self._offset = array("I")
        self._length = array("I")
        self._raw_length = array("I")
        self._slots = array("I", bytes(4 * _MIN_SLOTS))
        self._mask = _MIN_SLOTS - 1

    def __len__(self) -> int:
        return len(self._type)

    def count(self, blob_type: BlobType) -> int:
        """How many blobs of ``blob_type`` are indexed."""
        return self._type.count(blob_type.value)

    def add_pack(self, pack_id: Id, size: int, raw_entries: bytes) -> int:
        """Add a pack's 48-byte entries (already validated); returns how many were new.

        A blob already indexed in another pack keeps its first location.  Every
        incremental backup loads the whole index first, so only the hashing is done
        entry by entry; the columns are filled by slicing the entries as arrays.
        """
        number = self._pack_number(pack_id, size)
        count = len(raw_entries) // ENTRY_SIZE
        raw = bytes(raw_entries[: count * ENTRY_SIZE])
        self._reserve(len(self) + count)
        # An entry is 12 u32 words: type|flags|reserved, offset, length, raw length, id.
        words = array("I", raw)
        if _BIG_ENDIAN:
            words.byteswap()
        slots, mask, ids, types = self._slots, self._mask, self._ids, self._type
        row = len(types)
        new: list[int] = []
        hashes = array("Q", raw)[2::6]  # the ids' first eight bytes
        if _BIG_ENDIAN:
            hashes.byteswap()
        for i, hashed in enumerate(hashes):
            slot = hashed & mask
            at = i * ENTRY_SIZE
            while value := slots[slot]:
                start = (value - 1) * ID_SIZE
                if (
                    types[value - 1] == raw[at]
                    and ids[start : start + ID_SIZE] == raw[at + 16 : at + 48]
                ):
                    break  # indexed already (here or in this very pack)
                slot = (slot + 1) & mask
            else:
                row += 1
                slots[slot] = row
                ids += raw[at + 16 : at + 48]
                types.append(raw[at])
                new.append(i)
        if len(new) == count:
            self._flags += raw[1::ENTRY_SIZE]
            self._offset.extend(words[1::12])
            self._length.extend(words[2::12])
            self._raw_length.extend(words[3::12])
        else:
            self._flags += bytes(raw[i * ENTRY_SIZE + 1] for i in new)
            self._offset.extend(words[i * 12 + 1] for i in new)
            self._length.extend(words[i * 12 + 2] for i in new)
            self._raw_length.extend(words[i * 12 + 3] for i in new)
        self._pack.extend(array("I", [number]) * len(new))
        return len(new)

    def row(self, blob_type: BlobType, blob_id: Id) -> int:
        """The blob's row number, or -1.  Rows number blobs densely from 0."""
        return self._slots[self._find_slot(blob_type, blob_id.raw)] - 1

    def has(self, blob_type: BlobType, blob_id: Id) -> bool:
        return self.row(blob_type, blob_id) >= 0

    def lookup(self, blob_type: BlobType, blob_id: Id) -> tuple[Id, PackEntry] | None:
        row = self.row(blob_type, blob_id)
        if row < 0:
            return None
        return self._packs[self._pack[row]], self._entry(row)

    def iter_rows(self) -> Iterator[tuple[int, Id, PackEntry]]:
        """(row, pack id, entry) for every indexed blob."""
        for row in range(len(self)):
            yield row, self._packs[self._pack[row]], self._entry(row)

    def _entry(self, row: int) -> PackEntry:
        return PackEntry(
            BlobType(self._type[row]),
            self._flags[row],
            self._offset[row],
            self._length[row],
            self._raw_length[row],
            Id(bytes(self._ids[row * ID_SIZE : (row + 1) * ID_SIZE])),
        )

    def _find_slot(self, type_: int, raw_id: bytes) -> int:
        """The slot holding (type, id), or the empty slot where it would go."""
        mask = self._mask
        slot = int.from_bytes(raw_id[:8], "little") & mask
        slots, ids, types = self._slots, self._ids, self._type
        while True:
            value = slots[slot]
            if value == 0:
                return slot
            row = value - 1
            start = row * ID_SIZE
            if types[row] == type_ and ids[start : start + ID_SIZE] == raw_id:
                return slot
            slot = (slot + 1) & mask

    def _reserve(self, n: int) -> None:
        if 2 * n <= len(self._slots):
            return
        size = len(self._slots)
        while 2 * n > size:
            size *= 2
        self._slots = array("I", bytes(4 * size))
        self._mask = size - 1
        slots, mask = self._slots, self._mask
        hashes = array("Q", bytes(self._ids))[::4]
        if _BIG_ENDIAN:
            hashes.byteswap()
        for row, hashed in enumerate(hashes, 1):
            slot = hashed & mask
            while slots[slot]:
                slot = (slot + 1) & mask
            slots[slot] = row

    def sizes(self, row: int) -> tuple[int, int]:
        """(sealed length, plaintext length) of the blob in ``row``."""
        return self._length[row], self._raw_length[row]

    def iter_locations(self) -> Iterator[tuple[int, int, int]]:
        """(pack number, sealed length, row) of every indexed blob, without making an
        entry object for each; pack numbers count :meth:`iter_packs` from 0."""
        yield from zip(self._pack, self._length, range(len(self)), strict=True)

    def rows_per_pack(self) -> dict[Id, int]:
        """How many indexed blobs each pack holds."""
        counts = [0] * len(self._packs)
        for number in self._pack:
            counts[number] += 1
        return dict(zip(self._packs, counts, strict=True))
