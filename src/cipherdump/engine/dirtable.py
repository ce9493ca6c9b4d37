"""A snapshot's directory table, held packed: a few bytes a directory, not objects.

Every snapshot keeps, per directory, the record an incremental backup needs to take
the directory over unchanged (see :mod:`cipherdump.engine.parent`).  A filesystem of
millions of inodes has hundreds of thousands of directories, and a record as a Python
object (a dataclass, two bytes objects, an ``Id``, a census tuple) costs about 350
bytes; held twice (the parent's table and the one being written) that alone would
take most of a backup's memory.  So both are kept as the snapshot stores them: 100
bytes a record in one ``bytearray``, sorted by inode number when read, looked up by
bisecting an array of the numbers; a :class:`DirRecord` is made only when asked for.

The census of a directory (its encrypted inodes per policy, see
:mod:`cipherdump.engine.policies`) has few distinct keys over a whole filesystem, so
it is packed too: each key once, then per directory (key number, count) pairs.

On disk nothing changes: ``dirs`` is the packed table, ``dir_census`` a list of
``[ino, [[key, count], ...]]`` for the directories that have a census.
"""

from __future__ import annotations

import struct
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import pairwise

from cipherdump.repo import Id
from cipherdump.repo.codec import Value

# ino, generation, files, own fingerprint, entries key, tree id
_DIR = struct.Struct("<III16s16s32s")
_INO = struct.Struct("<I")
_INO_OF_RECORD = struct.Struct(f"<I{_DIR.size - 4}x")
_INO_FILES_OF_RECORD = struct.Struct(f"<I4xI{_DIR.size - 12}x")
# One census pair: key number, count.
_PAIR = struct.Struct("<HQ")
_NO_CENSUS = 0xFFFFFFFF

CensusPairs = tuple[tuple[bytes | str, int], ...]
# The snapshot attrs that hold the table: what a listing of snapshots leaves out.
TABLE_ATTRS = frozenset({"dirs", "dir_census"})


@dataclass(frozen=True, slots=True)
class DirRecord:
    ino: int
    generation: int
    files: int
    fingerprint: bytes
    key: bytes
    tree: Id
    census: CensusPairs = ()


class DirTable:
    """Directory records, packed; appended to while a backup walks, or read from a
    snapshot and looked up by inode number (:meth:`get`)."""

    __slots__ = ("_census", "_census_at", "_inos", "_key_numbers", "_keys", "_packed")

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        # A snapshot's table is kept as the bytes it came in (not copied) until appended to.
        self._packed: bytes | bytearray = bytearray()
        # Census: distinct keys; per record the offset of its pairs in _census (or
        # _NO_CENSUS), the pairs prefixed by their count.
        self._keys: list[bytes | str] = []
        self._key_numbers: dict[bytes | str, int] = {}
        self._census = bytearray()
        self._census_at = array("I")
        self._inos: array[int] | None = None  # sorted, once looked up

    @classmethod
    def of(cls, records: Iterable[DirRecord]) -> DirTable:
        table = cls()
        for rec in records:
            table.append(rec)
        return table

    # -- writing ------------------------------------------------------------------------
    def append(self, rec: DirRecord) -> None:
        self._inos = None
        if isinstance(self._packed, bytes):
            self._packed = bytearray(self._packed)
        self._packed += _DIR.pack(
            rec.ino, rec.generation & 0xFFFFFFFF, rec.files, rec.fingerprint, rec.key, rec.tree.raw
        )
        self._census_at.append(self._pack_census(rec.census))

    def _pack_census(self, pairs: CensusPairs) -> int:
        if not pairs:
            return _NO_CENSUS
        at = len(self._census)
        self._census += _INO.pack(len(pairs))
        for key, n in pairs:
            number = self._key_numbers.get(key)
            if number is None:
                number = self._key_numbers[key] = len(self._keys)
                self._keys.append(key)
            self._census += _PAIR.pack(number, n)
        return at

    def extend(self, other: DirTable) -> None:
        """Add ``other``'s records (a worker's, see :mod:`.backup.tally`)."""
        for rec in other:
            self.append(rec)

    # -- reading ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._census_at)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DirTable) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __iter__(self) -> Iterator[DirRecord]:
        for i in range(len(self)):
            yield self._record(i)

    def _record(self, i: int) -> DirRecord:
        ino, gen, files, fp, key, tree = _DIR.unpack_from(self._packed, i * _DIR.size)
        return DirRecord(ino, gen, files, fp, key, Id(tree), self._census_of(i))

    def _census_of(self, i: int) -> CensusPairs:
        at = self._census_at[i]
        if at == _NO_CENSUS:
            return ()
        (count,) = _INO.unpack_from(self._census, at)
        keys = self._keys
        return tuple(
            (keys[number], n)
            for number, n in _PAIR.iter_unpack(
                self._census[at + _INO.size : at + _INO.size + count * _PAIR.size]
            )
        )

    def files_by_ino(self) -> Iterator[tuple[int, int]]:
        """(inode number, non-directory entries) of every record."""
        yield from _INO_FILES_OF_RECORD.iter_unpack(self._packed)

    def get(self, ino: int) -> DirRecord | None:
        """The record of directory ``ino`` (of several, the last), or None."""
        inos = self._sorted_inos()
        at = bisect_right(inos, ino) - 1
        if at < 0 or inos[at] != ino:
            return None
        return self._record(at)

    def _sorted_inos(self) -> array[int]:
        if self._inos is None:
            inos = self._all_inos()
            if any(a > b for a, b in pairwise(inos)):
                self._sort()
                inos = self._all_inos()
            self._inos = inos
        return self._inos

    def _all_inos(self) -> array[int]:
        return array("I", (ino for (ino,) in _INO_OF_RECORD.iter_unpack(self._packed)))

    def _sort(self) -> None:
        """Order the records by inode number (stable: of equal ones the last stays last)."""
        size = _DIR.size
        packed, census_at = self._packed, self._census_at
        order = sorted(range(len(self)), key=lambda i: _INO.unpack_from(packed, i * size)[0])
        self._packed = bytearray().join(packed[i * size : (i + 1) * size] for i in order)
        self._census_at = array("I", (census_at[i] for i in order))

    # -- the snapshot's attrs ---------------------------------------------------------------
    def encode(self) -> tuple[bytes, list[Value]]:
        """(packed table sorted by inode number, census list) for the snapshot's
        ``dirs`` and ``dir_census``."""
        census: list[Value] = []
        for i, ino in enumerate(self._sorted_inos()):
            pairs = self._census_of(i)
            if pairs:
                census.append([ino, [[k, n] for k, n in pairs]])
        return bytes(self._packed), census

    @classmethod
    def decode(cls, attrs: Mapping[str, Value]) -> DirTable:
        """The table of a snapshot's attrs (empty if it has none or it is malformed)."""
        table = cls()
        packed = attrs.get("dirs")
        if not isinstance(packed, bytes) or len(packed) % _DIR.size:
            return table
        census: dict[int, CensusPairs] = {}
        listed = attrs.get("dir_census")
        for item in listed if isinstance(listed, tuple) else ():
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], int):
                pairs = item[1] if isinstance(item[1], tuple) else ()
                census[item[0]] = tuple(
                    (p[0], p[1])
                    for p in pairs
                    if isinstance(p, tuple)
                    and len(p) == 2
                    and isinstance(p[0], bytes | str)
                    and isinstance(p[1], int)
                    and 0 <= p[1] < 1 << 64
                )
        table._packed = packed
        for ino in table._all_inos():
            table._census_at.append(table._pack_census(census.get(ino, ())))
        return table
