"""Extent tree nodes: a 12-byte header followed by leaf extents or index entries."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cipherdump.errors import CorruptError
from cipherdump.ondisk.csum import crc32c_le
from cipherdump.ondisk.records import record_maker

EXT4_EXT_MAGIC = 0xF30A
EXT_INIT_MAX_LEN = 1 << 15
EXT4_MAX_EXTENT_DEPTH = 5
_HEADER = struct.Struct("<HHHHI")
_ENTRY = struct.Struct("<IHHI")  # leaf: ee_block, ee_len, ee_start_hi, ee_start_lo
_INDEX = struct.Struct("<IIHH")  # index: ei_block, ei_leaf_lo, ei_leaf_hi, ei_unused


@dataclass(frozen=True, slots=True)
class Extent:
    """A leaf extent: ``ee_len`` blocks from logical ``ee_block`` at physical ``start``."""

    ee_block: int
    length: int
    start: int
    unwritten: bool


@dataclass(frozen=True, slots=True)
class ExtentIndex:
    ei_block: int
    leaf: int


@dataclass(frozen=True, slots=True)
class ExtentNode:
    eh_entries: int
    eh_max: int
    eh_depth: int
    eh_generation: int
    extents: tuple[Extent, ...]
    indexes: tuple[ExtentIndex, ...]


_make_extent = record_maker(Extent)
_make_index = record_maker(ExtentIndex)
_make_node = record_maker(ExtentNode)


def decode_extent_node(raw: bytes, where: str) -> ExtentNode:
    """Decode a node from ``i_block`` (60 bytes) or an extent tree block."""
    if len(raw) < 12:
        raise CorruptError("too short", structure="extent header", location=where)
    magic, entries, emax, depth, gen = _HEADER.unpack_from(raw, 0)
    if magic != EXT4_EXT_MAGIC:
        raise CorruptError(f"bad magic 0x{magic:04x}", structure="extent header", location=where)
    capacity = (len(raw) - 12) // 12
    if emax > capacity or entries > emax:
        raise CorruptError(
            f"{entries} entries, max {emax}, room for {capacity}",
            structure="extent header",
            location=where,
        )
    if depth > EXT4_MAX_EXTENT_DEPTH:
        raise CorruptError(f"depth {depth} is too deep", structure="extent header", location=where)
    if depth == 0:
        extents: list[Extent] = []
        for block, length, start_hi, start_lo in _ENTRY.iter_unpack(raw[12 : 12 + 12 * entries]):
            unwritten = length > EXT_INIT_MAX_LEN
            if unwritten:
                length -= EXT_INIT_MAX_LEN
            extents.append(_make_extent(block, length, start_hi << 32 | start_lo, unwritten))
        return _make_node(entries, emax, depth, gen, tuple(extents), ())
    indexes = [
        _make_index(block, leaf_hi << 32 | leaf_lo)
        for block, leaf_lo, leaf_hi, _ in _INDEX.iter_unpack(raw[12 : 12 + 12 * entries])
    ]
    return _make_node(entries, emax, depth, gen, (), tuple(indexes))


def extent_tail_offset(eh_max: int) -> int:
    """Where the 4-byte checksum of an extent block lies (after ``eh_max`` slots)."""
    return 12 + 12 * eh_max


# -- encoding -----------------------------------------------------------------------------

EXT_UNWRITTEN_MAX_LEN = EXT_INIT_MAX_LEN - 1


def encode_extent_node(
    depth: int, eh_max: int, extents: list[Extent] | None = None,
    indexes: list[ExtentIndex] | None = None, size: int = 60,
) -> bytearray:  # fmt: skip
    """A node of ``size`` bytes: 60 for ``i_block``, the block size for a tree block."""
    entries: list[Extent | ExtentIndex] = list(extents or []) if depth == 0 else list(indexes or [])
    if len(entries) > eh_max or 12 + 12 * eh_max > size:
        raise ValueError("too many extent entries for the node")
    buf = bytearray(size)
    _HEADER.pack_into(buf, 0, EXT4_EXT_MAGIC, len(entries), eh_max, depth, 0)
    for i, e in enumerate(entries):
        off = 12 + 12 * i
        if isinstance(e, Extent):
            length = e.length + (EXT_INIT_MAX_LEN if e.unwritten else 0)
            _ENTRY.pack_into(buf, off, e.ee_block, length, e.start >> 32, e.start & 0xFFFFFFFF)
        else:
            _INDEX.pack_into(buf, off, e.ei_block, e.leaf & 0xFFFFFFFF, e.leaf >> 32, 0)
    return buf


def extent_block_csum_set(block: bytearray, seed: int) -> None:
    """Store the checksum of an extent tree block after its ``eh_max`` slots."""
    (eh_max,) = struct.unpack_from("<H", block, 4)
    tail = extent_tail_offset(eh_max)
    struct.pack_into("<I", block, tail, crc32c_le(seed, bytes(block[:tail])))
