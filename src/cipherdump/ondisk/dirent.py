"""Directory entries (``ext4_dir_entry_2``), the checksum tail, and htree roots."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cipherdump.errors import CorruptError

EXT4_FT_UNKNOWN = 0
EXT4_FT_REG_FILE = 1
EXT4_FT_DIR = 2
EXT4_FT_CHRDEV = 3
EXT4_FT_BLKDEV = 4
EXT4_FT_FIFO = 5
EXT4_FT_SOCK = 6
EXT4_FT_SYMLINK = 7
EXT4_FT_DIR_CSUM = 0xDE
DIRENT_TAIL_SIZE = 12
_HEAD = struct.Struct("<IHBB")


@dataclass(frozen=True, slots=True)
class Dirent:
    """One live entry.  ``hash`` is the stored (hash, minor_hash) of casefold+encrypt dirs."""

    inode: int
    name: bytes
    file_type: int
    offset: int
    rec_len: int
    hash: tuple[int, int] | None = None


def rec_len_from_disk(value: int, block_size: int) -> int:
    """Decode ``rec_len``; 64 KiB blocks store 65536 as 0 or 65535 (kernel convention)."""
    if block_size < 65536:
        return value
    if value == 65535 or value == 0:
        return block_size
    return (value & 65532) | ((value & 3) << 16)


def has_csum_tail(block: bytes) -> bool:
    """True if the block ends with the 12-byte ``ext4_dir_entry_tail``."""
    if len(block) < DIRENT_TAIL_SIZE:
        return False
    tail: tuple[int, int, int, int] = _HEAD.unpack_from(block, len(block) - DIRENT_TAIL_SIZE)
    return tail == (0, DIRENT_TAIL_SIZE, 0, EXT4_FT_DIR_CSUM)


def decode_dirents(
    buf: bytes,
    *,
    block_size: int,
    where: str,
    filetype: bool = True,
    hashed: bool = False,
    base: int = 0,
) -> list[Dirent]:
    """Parse the entries of one directory block (or an inline-data area).

    ``hashed`` is true in casefold+encrypt directories, whose entries (except ``.`` and
    ``..``) carry 8 bytes of stored hash after the name.  Raises CorruptError on the
    first entry that breaks the rules (the kernel rejects the whole block too).
    """
    out: list[Dirent] = []
    pos = 0
    end = len(buf)
    while pos < end:
        if end - pos < 8:
            raise CorruptError(
                f"entry header at offset {base + pos} runs past the end",
                structure="directory entry",
                location=where,
            )
        inode, raw_rec_len, name_len, ft = _HEAD.unpack_from(buf, pos)
        rec_len = rec_len_from_disk(raw_rec_len, block_size)
        if not filetype:
            # Without the filetype feature the high byte belongs to the name length.
            name_len |= ft << 8
            ft = EXT4_FT_UNKNOWN
        if rec_len < 12 or rec_len % 4 or pos + rec_len > end or 8 + name_len > rec_len:
            raise CorruptError(
                f"bad rec_len {rec_len} / name_len {name_len} at offset {base + pos}",
                structure="directory entry",
                location=where,
            )
        if inode != 0 and name_len:
            name = bytes(buf[pos + 8 : pos + 8 + name_len])
            stored: tuple[int, int] | None = None
            if hashed and name not in (b".", b".."):
                hoff = pos + ((8 + name_len + 3) & ~3)
                if hoff + 8 > pos + rec_len:
                    raise CorruptError(
                        f"entry at offset {base + pos} lacks its stored casefold hash",
                        structure="directory entry",
                        location=where,
                    )
                stored = struct.unpack_from("<II", buf, hoff)
            out.append(Dirent(inode, name, ft, base + pos, rec_len, stored))
        pos += rec_len
    return out


@dataclass(frozen=True, slots=True)
class DxRoot:
    hash_version: int
    info_length: int
    indirect_levels: int
    limit: int
    count: int


def decode_dx_root(block: bytes) -> DxRoot | None:
    """The htree root info of block 0 of an indexed directory, or None if absent."""
    if len(block) < 0x28:
        return None
    _, hash_version, info_length, levels, _flags = struct.unpack_from("<IBBBB", block, 0x18)
    limit, count = struct.unpack_from("<HH", block, 0x20)
    return DxRoot(hash_version, info_length, levels, limit, count)
