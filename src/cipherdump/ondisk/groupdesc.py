"""Block group descriptors (32 bytes, or ``s_desc_size`` with the 64bit feature)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cipherdump.ondisk.csum import crc16, crc32c_le

EXT4_BG_INODE_UNINIT = 0x0001
EXT4_BG_BLOCK_UNINIT = 0x0002
EXT4_BG_INODE_ZEROED = 0x0004

_BG_CHECKSUM_OFFSET = 0x1E


@dataclass(frozen=True, slots=True)
class GroupDesc:
    bg_block_bitmap: int
    bg_inode_bitmap: int
    bg_inode_table: int
    bg_free_blocks_count: int
    bg_free_inodes_count: int
    bg_used_dirs_count: int
    bg_flags: int
    bg_itable_unused: int
    bg_checksum: int


def decode_group_desc(raw: bytes, desc_size: int) -> GroupDesc:
    lo = struct.unpack_from("<IIIHHHHIHHHH", raw, 0)
    if desc_size >= 64:
        h = struct.unpack_from("<IIIHHHH", raw, 0x20)
    else:
        h = (0, 0, 0, 0, 0, 0, 0)
    return GroupDesc(
        bg_block_bitmap=lo[0] | h[0] << 32,
        bg_inode_bitmap=lo[1] | h[1] << 32,
        bg_inode_table=lo[2] | h[2] << 32,
        bg_free_blocks_count=lo[3] | h[3] << 16,
        bg_free_inodes_count=lo[4] | h[4] << 16,
        bg_used_dirs_count=lo[5] | h[5] << 16,
        bg_flags=lo[6],
        bg_itable_unused=lo[10] | h[6] << 16,
        bg_checksum=lo[11],
    )


def group_desc_csum(
    raw: bytes, group: int, *, metadata_csum: bool, csum_seed: int, uuid: bytes
) -> int:
    """The 16-bit descriptor checksum, with metadata_csum (crc32c) or uninit_bg (crc16)."""
    le_group = struct.pack("<I", group)
    if metadata_csum:
        crc = crc32c_le(csum_seed, le_group)
        crc = crc32c_le(crc, raw[:_BG_CHECKSUM_OFFSET])
        crc = crc32c_le(crc, b"\0\0")
        crc = crc32c_le(crc, raw[_BG_CHECKSUM_OFFSET + 2 :])
        return crc & 0xFFFF
    crc = crc16(0xFFFF, uuid)
    crc = crc16(crc, le_group)
    crc = crc16(crc, raw[:_BG_CHECKSUM_OFFSET])
    return crc16(crc, raw[_BG_CHECKSUM_OFFSET + 2 :])


def group_desc_csum_set(
    raw: bytearray, group: int, *, metadata_csum: bool, csum_seed: int, uuid: bytes
) -> None:
    crc = group_desc_csum(
        bytes(raw), group, metadata_csum=metadata_csum, csum_seed=csum_seed, uuid=uuid
    )
    struct.pack_into("<H", raw, _BG_CHECKSUM_OFFSET, crc)


def bitmap_csums_set(
    raw: bytearray, desc_size: int, *, block_bitmap_csum: int, inode_bitmap_csum: int
) -> None:
    """``bg_{block,inode}_bitmap_csum_{lo,hi}`` (hi halves only in 64-byte descriptors)."""
    struct.pack_into("<HH", raw, 0x18, block_bitmap_csum & 0xFFFF, inode_bitmap_csum & 0xFFFF)
    if desc_size >= 64:
        struct.pack_into("<HH", raw, 0x38, block_bitmap_csum >> 16, inode_bitmap_csum >> 16)


def set_group_counts(
    raw: bytearray, desc_size: int, *, free_blocks: int, free_inodes: int, used_dirs: int,
    flags: int, itable_unused: int,
) -> None:  # fmt: skip
    """Store the counters and flags of a descriptor (lo and, if 64 bytes, hi halves)."""
    struct.pack_into("<HHHH", raw, 0x0C, free_blocks & 0xFFFF, free_inodes & 0xFFFF,
                     used_dirs & 0xFFFF, flags)  # fmt: skip
    struct.pack_into("<H", raw, 0x1C, itable_unused & 0xFFFF)
    if desc_size >= 64:
        struct.pack_into("<HHH", raw, 0x2C, free_blocks >> 16, free_inodes >> 16, used_dirs >> 16)
        struct.pack_into("<H", raw, 0x32, itable_unused >> 16)
