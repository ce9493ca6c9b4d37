"""CRC32C as ext4 uses it: the raw ``crc32c_le`` update, without final inversion."""

from __future__ import annotations

import struct

import crc32c as _crc32c

_MASK = 0xFFFFFFFF
_INO_GEN = struct.Struct("<II")


def crc32c_le(seed: int, data: bytes | memoryview) -> int:
    """The kernel's ``crc32c(seed, data)``: continue a CRC without pre/post inversion."""
    # The library computes the standard, inverted CRC; undo both inversions around it.
    return (~_crc32c.crc32c(data, (~seed) & _MASK)) & _MASK


def fs_csum_seed(uuid: bytes) -> int:
    """The per-filesystem checksum seed when ``metadata_csum_seed`` is not set."""
    return crc32c_le(_MASK, uuid)


def inode_csum_seed(fs_seed: int, ino: int, generation: int) -> int:
    """Seed for everything that belongs to one inode (inode, extents, dir blocks)."""
    # One update over both words equals the kernel's two (CRC updates chain).
    return crc32c_le(fs_seed, _INO_GEN.pack(ino, generation))


def crc16(crc: int, data: bytes) -> int:
    """CRC16 (ANSI, reflected 0xA001) used by the old ``uninit_bg`` descriptor checksum."""
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc & 0xFFFF
