"""Directory entries (``ext4_dir_entry_2``), the checksum tail, and htree roots."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cipherdump.errors import CorruptError
from cipherdump.ondisk.csum import crc32c_le

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
_HASH = struct.Struct("<II")


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


#: The longest name: ``name_len`` is one byte (EXT4_NAME_LEN).
EXT4_NAME_LEN = 255
#: An encrypted name is raw ciphertext of at least one cipher block; the kernel
#: refuses to list a directory holding a shorter one (EUCLEAN).  fscrypt's
#: FNAME_MIN_MSG_LEN, restated here because the on-disk layer knows no fscrypt.
ENCRYPTED_NAME_MIN = 16


def dirent_name_problem(name: bytes, *, encrypted: bool) -> str | None:
    """Why ``name`` cannot be an entry of an ext4 directory (other than the leading
    ``.`` and ``..``), or None if it can.  ``encrypted``: the directory is encrypted,
    so the name is ciphertext, whose bytes may be anything, '/' and NUL included.

    The one rule for every layer that reads names from untrusted bytes (a crafted
    image, a forged snapshot) or writes them into an image: e2fsck calls such entries
    broken, and the kernel answers a listing of their directory with an error.
    """
    if not name:
        return "empty name"
    if len(name) > EXT4_NAME_LEN:
        return f"name of {len(name)} bytes is longer than {EXT4_NAME_LEN}"
    if name == b"." or name == b"..":
        return f"extra entry named {name.decode()!r}"
    if encrypted:
        if len(name) < ENCRYPTED_NAME_MIN:
            return f"encrypted name of {len(name)} bytes is shorter than {ENCRYPTED_NAME_MIN}"
        return None
    if b"/" in name:
        return "name contains '/'"
    if b"\0" in name:
        return "name contains NUL"
    return None


#: A live entry as :func:`scan_dirents` gives it: the fields of :class:`Dirent`, in order.
DirentTuple = tuple[int, bytes, int, int, int, "tuple[int, int] | None"]


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
    return [
        Dirent(*t)
        for t in scan_dirents(
            buf, block_size=block_size, where=where, filetype=filetype, hashed=hashed, base=base
        )
    ]


def scan_dirents(
    buf: bytes,
    *,
    block_size: int,
    where: str,
    filetype: bool = True,
    hashed: bool = False,
    base: int = 0,
) -> list[DirentTuple]:
    """:func:`decode_dirents` as plain tuples, for readers that build their own objects."""
    out: list[DirentTuple] = []
    append = out.append
    unpack_from = _HEAD.unpack_from
    big = block_size >= 65536
    pos = 0
    end = len(buf)
    while pos < end:
        if end - pos < 8:
            raise CorruptError(
                f"entry header at offset {base + pos} runs past the end",
                structure="directory entry",
                location=where,
            )
        inode, rec_len, name_len, ft = unpack_from(buf, pos)
        if big:
            rec_len = rec_len_from_disk(rec_len, block_size)
        if not filetype:
            # Without the filetype feature the high byte belongs to the name length.
            name_len |= ft << 8
            ft = EXT4_FT_UNKNOWN
        if rec_len < 12 or rec_len & 3 or pos + rec_len > end or 8 + name_len > rec_len:
            raise CorruptError(
                f"bad rec_len {rec_len} / name_len {name_len} at offset {base + pos}",
                structure="directory entry",
                location=where,
            )
        if inode:
            # A live entry with an empty name is kept: callers report it (e2fsck:
            # "zero-length name"), where dropping it would lose its inode unseen.
            name = bytes(buf[pos + 8 : pos + 8 + name_len])
            stored: tuple[int, int] | None = None
            if hashed and name_len and name != b"." and name != b"..":
                hoff = pos + ((8 + name_len + 3) & ~3)
                if hoff + 8 > pos + rec_len:
                    raise CorruptError(
                        f"entry at offset {base + pos} lacks its stored casefold hash",
                        structure="directory entry",
                        location=where,
                    )
                stored = _HASH.unpack_from(buf, hoff)
            append((inode, name, ft, base + pos, rec_len, stored))
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


# -- encoding -----------------------------------------------------------------------------

DX_ROOT_COUNT_OFFSET = 0x20
DX_NODE_COUNT_OFFSET = 0x08
DX_TAIL_SIZE = 8


def dirent_rec_len(name_len: int, hashed: bool = False) -> int:
    """The smallest ``rec_len`` of an entry (plus 8 stored hash bytes in casefold+encrypt)."""
    return ((8 + name_len + 3) & ~3) + (8 if hashed else 0)


def rec_len_to_disk(rec_len: int, block_size: int) -> int:
    if block_size < 65536 or rec_len < 65536:
        return rec_len
    return 65535 if rec_len == 65536 else (rec_len & 65532) | ((rec_len >> 16) & 3)


def encode_dirent(
    inode: int, name: bytes, file_type: int, rec_len: int, block_size: int,
    hash: tuple[int, int] | None = None,
) -> bytes:  # fmt: skip
    """One entry padded to ``rec_len``; ``hash`` goes after the name (casefold+encrypt)."""
    out = bytearray(rec_len)
    _HEAD.pack_into(out, 0, inode, rec_len_to_disk(rec_len, block_size), len(name), file_type)
    out[8 : 8 + len(name)] = name
    if hash is not None:
        struct.pack_into("<II", out, (8 + len(name) + 3) & ~3, hash[0], hash[1])
    return bytes(out)


def encode_dirent_tail(block_size: int) -> bytes:
    """The 12-byte checksum tail with a zero checksum (see dirblock_csum_set)."""
    return _HEAD.pack(0, DIRENT_TAIL_SIZE, 0, EXT4_FT_DIR_CSUM) + b"\0\0\0\0"


def dirblock_csum_set(block: bytearray, seed: int) -> None:
    end = len(block) - DIRENT_TAIL_SIZE
    struct.pack_into("<I", block, len(block) - 4, crc32c_le(seed, bytes(block[:end])))


def dx_root_limit(block_size: int, csum: bool) -> int:
    """Index entries an htree root holds (the kernel's dx_root_limit): the block less
    '.', '..' and the 8-byte dx_root_info, and the dx_tail with metadata_csum.  The
    kernel sizes '.' and '..' without a stored hash even in casefolded encrypted
    directories, so this limit is the same there."""
    return (block_size - DX_ROOT_COUNT_OFFSET - (DX_TAIL_SIZE if csum else 0)) // 8


def dx_node_limit(block_size: int, csum: bool, hashed: bool) -> int:
    """Index entries an htree interior node holds (the kernel's dx_node_limit): the block
    less the fake dirent of ``ext4_dir_rec_len(0, dir)`` bytes, which in a casefolded
    encrypted directory (``hashed``) counts the 8-byte stored hash too, so such a node
    holds one entry fewer (125, not 126, in a 1 KiB block with metadata_csum).  The
    kernel's dx_probe rejects any other limit; e2fsck 1.47 wrongly expects the unhashed
    one here."""
    fake = dirent_rec_len(0, hashed)
    return (block_size - fake - (DX_TAIL_SIZE if csum else 0)) // 8


def encode_dx_entries(
    block: bytearray, count_offset: int, limit: int, entries: list[tuple[int, int]]
) -> None:
    """Write ``(hash, block)`` index entries; the first entry's hash slot holds limit/count."""
    struct.pack_into("<HH", block, count_offset, limit, len(entries))
    for i, (h, blk) in enumerate(entries):
        off = count_offset + 8 * i
        if i:
            struct.pack_into("<I", block, off, h)
        struct.pack_into("<I", block, off + 4, blk)


def encode_dx_root_info(block: bytearray, hash_version: int, indirect_levels: int) -> None:
    struct.pack_into("<IBBBB", block, 0x18, 0, hash_version, 8, indirect_levels, 0)


def dx_csum_set(block: bytearray, count_offset: int, seed: int) -> None:
    """Store the ``dx_tail`` checksum of an index block (after ``limit`` entries)."""
    tail, crc = _dx_csum(bytes(block), count_offset, seed)
    struct.pack_into("<I", block, tail + 4, crc)


def dx_csum_check(block: bytes, count_offset: int, seed: int) -> tuple[int, int] | None:
    """(stored, computed) ``dx_tail`` checksum of an index block, or None if its limit
    and count leave no room for the tail (as ext4_dx_csum_verify, a failure too)."""
    limit, count = struct.unpack_from("<HH", block, count_offset)
    if count > limit or count_offset + 8 * limit + DX_TAIL_SIZE > len(block):
        return None
    tail, crc = _dx_csum(block, count_offset, seed)
    (stored,) = struct.unpack_from("<I", block, tail + 4)
    return stored, crc


def _dx_csum(block: bytes, count_offset: int, seed: int) -> tuple[int, int]:
    """(offset of the dx_tail, its checksum): the entries in use, then the tail's
    reserved word, then a zero checksum (ext4_dx_csum)."""
    limit, count = struct.unpack_from("<HH", block, count_offset)
    tail = count_offset + 8 * limit
    crc = crc32c_le(seed, block[: count_offset + 8 * count])
    crc = crc32c_le(crc, block[tail : tail + 4])
    return tail, crc32c_le(crc, b"\0\0\0\0")
