"""Index files: which blobs live in which pack, at which offset.

An index file is ``header("CDix") || seal(plaintext, aad = header)``; plaintext
(little-endian)::

    supersedes count u32, then that many index ids (32 bytes each)
    pack count u32, then per pack:
        pack id (32) | pack size u64 | blob count u32 | entries (48 bytes each, as in packs)

Writers append index files ("deltas") and never change them; the repository's index
is the union of all index files minus those listed as superseded by another.
Version 1 writers write a supersedes count of zero.
"""

from __future__ import annotations

import struct
import sys
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from operator import add

from cipherdump.errors import CorruptError
from cipherdump.repo.crypto import SEAL_OVERHEAD, MasterKey
from cipherdump.repo.envelope import Magic, open_file, seal_file
from cipherdump.repo.ids import BlobType, Id
from cipherdump.repo.pack import ENTRY_SIZE, FLAG_ZSTD, MAX_BLOB_SIZE, PackEntry

_U32 = struct.Struct("<I")
_PACK = struct.Struct("<32sQI")
_BIG_ENDIAN = sys.byteorder == "big"
# The bytes an entry's type and flags may hold.
_TYPES = bytes([BlobType.DATA, BlobType.TREE])
_FLAGS = bytes([0, FLAG_ZSTD])


@dataclass(frozen=True, slots=True)
class PackRecord:
    """One pack as an index file lists it; entries stay packed until asked for."""

    id: Id
    size: int
    raw_entries: bytes

    @property
    def count(self) -> int:
        return len(self.raw_entries) // ENTRY_SIZE

    def entries(self, what: str = "index") -> Iterator[PackEntry]:
        for at in range(0, len(self.raw_entries), ENTRY_SIZE):
            yield PackEntry.decode(self.raw_entries, at, what)


@dataclass(frozen=True, slots=True)
class IndexFile:
    packs: tuple[PackRecord, ...]
    supersedes: tuple[Id, ...] = ()


def encode_index(key: MasterKey, index: IndexFile) -> bytes:
    parts = [_U32.pack(len(index.supersedes))]
    parts += [i.raw for i in index.supersedes]
    parts.append(_U32.pack(len(index.packs)))
    for pack in index.packs:
        parts.append(_PACK.pack(pack.id.raw, pack.size, pack.count))
        parts.append(pack.raw_entries)
    return seal_file(key, Magic.INDEX, b"".join(parts))


def decode_index(key: MasterKey, data: bytes, what: str) -> IndexFile:
    """Authenticate and parse an index file; every entry is sanity-checked."""
    plain = open_file(key, Magic.INDEX, data, what)
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if n > len(plain) - pos:
            raise CorruptError("truncated", structure=what, location=f"offset {pos}")
        chunk = plain[pos : pos + n]
        pos += n
        return chunk

    (n_super,) = _U32.unpack(take(4))
    supersedes = tuple(Id(take(32)) for _ in range(n_super))
    (n_packs,) = _U32.unpack(take(4))
    packs = []
    for _ in range(n_packs):
        raw_id, size, count = _PACK.unpack(take(_PACK.size))
        raw_entries = take(count * ENTRY_SIZE)
        _validate_entries(raw_entries, size, what)
        packs.append(PackRecord(Id(raw_id), size, raw_entries))
    if pos != len(plain):
        raise CorruptError("trailing bytes", structure=what)
    return IndexFile(tuple(packs), supersedes)


def _validate_entries(raw: bytes, pack_size: int, what: str) -> None:
    """Every entry's fields within bounds.  Checked column by column (slices of the
    entries, C loops), not entry by entry: a backup reads every index file, and at ten
    million blobs a Python loop here cost seconds."""
    count = len(raw) // ENTRY_SIZE
    if not count:
        return
    words = array("I", raw)
    if _BIG_ENDIAN:
        words.byteswap()
    offsets, lengths = words[1::12], words[2::12]
    if (
        raw[0::ENTRY_SIZE].translate(None, _TYPES)  # a type but data or tree
        or raw[1::ENTRY_SIZE].translate(None, _FLAGS)  # an unknown flag
        or raw[2::ENTRY_SIZE].translate(None, b"\0")  # reserved bytes set
        or raw[3::ENTRY_SIZE].translate(None, b"\0")
        or min(lengths) < SEAL_OVERHEAD
        or max(words[3::12]) > MAX_BLOB_SIZE
        or max(map(add, offsets, lengths)) > pack_size
    ):
        raise CorruptError("bad blob entry", structure=what)
