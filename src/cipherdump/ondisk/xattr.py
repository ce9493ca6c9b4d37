"""Extended attribute entries, in the inode's extra space or in an xattr block."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cipherdump.errors import CorruptError
from cipherdump.ondisk.csum import crc32c_le
from cipherdump.ondisk.records import record_maker

EXT4_XATTR_MAGIC = 0xEA020000
XATTR_BLOCK_HEADER_SIZE = 32
_ENTRY = struct.Struct("<BBHIII")

EXT4_XATTR_INDEX_USER = 1
EXT4_XATTR_INDEX_POSIX_ACL_ACCESS = 2
EXT4_XATTR_INDEX_POSIX_ACL_DEFAULT = 3
EXT4_XATTR_INDEX_TRUSTED = 4
EXT4_XATTR_INDEX_LUSTRE = 5
EXT4_XATTR_INDEX_SECURITY = 6
EXT4_XATTR_INDEX_SYSTEM = 7
EXT4_XATTR_INDEX_RICHACL = 8
EXT4_XATTR_INDEX_ENCRYPTION = 9
EXT4_XATTR_INDEX_HURD = 10

# The full-name prefix Linux shows for each name index.  Index 9 has no user-visible
# name: the encryption context is hidden from the xattr syscalls.
PREFIXES: dict[int, bytes] = {
    1: b"user.",
    2: b"system.posix_acl_access",
    3: b"system.posix_acl_default",
    4: b"trusted.",
    6: b"security.",
    7: b"system.",
    8: b"system.richacl",
    9: b"encryption.",
}


@dataclass(frozen=True, slots=True)
class XattrEntry:
    e_name_index: int
    name: bytes
    e_value_offs: int
    e_value_inum: int
    e_value_size: int
    e_hash: int

    @property
    def full_name(self) -> bytes:
        return PREFIXES.get(self.e_name_index, b"index%d." % self.e_name_index) + self.name


@dataclass(frozen=True, slots=True)
class XattrBlockHeader:
    h_magic: int
    h_refcount: int
    h_blocks: int
    h_hash: int
    h_checksum: int


def decode_xattr_block_header(block: bytes) -> XattrBlockHeader:
    return XattrBlockHeader(*struct.unpack_from("<IIIII", block, 0))


_make_entry = record_maker(XattrEntry)


def decode_xattr_entries(buf: bytes, start: int, where: str) -> list[XattrEntry]:
    """Entries from ``start`` until the 4-byte zero terminator or the end of ``buf``."""
    fields = xattr_entry_fields(buf, start)
    if fields is None:
        raise xattr_entries_overrun(where)
    return [_make_entry(*f) for f in fields]


def xattr_entry_fields(
    buf: bytes, start: int
) -> list[tuple[int, bytes, int, int, int, int]] | None:
    """:func:`decode_xattr_entries` as tuples of the :class:`XattrEntry` fields, or None
    where it raises (see :func:`xattr_entries_overrun`)."""
    out: list[tuple[int, bytes, int, int, int, int]] = []
    pos = start
    end = len(buf)
    unpack = _ENTRY.unpack_from
    while pos + 16 <= end:  # _ENTRY.size
        name_len, index, voffs, vinum, vsize, ehash = unpack(buf, pos)
        if not (name_len or index or voffs):
            return out  # the 4-byte terminator (name_len, index, value offset)
        name_end = pos + 16 + name_len
        if name_end > end:
            return None
        out.append((index, bytes(buf[pos + 16 : name_end]), voffs, vinum, vsize, ehash))
        pos = (name_end + 3) & ~3
    if pos + 4 <= end and buf[pos : pos + 4] == b"\0\0\0\0":
        return out
    return None


def xattr_entries_overrun(where: str) -> CorruptError:
    """The error of an entry list without its terminator inside its area."""
    return CorruptError("entry list runs past its area", structure="xattr entries", location=where)


def xattr_entry_hash(name: bytes, value: bytes) -> int:
    """The ext2 xattr entry hash (name bytes rotated in, then value le32 words)."""
    h = 0
    for c in name:
        h = ((h << 5) ^ (h >> 27) ^ c) & 0xFFFFFFFF
    if value:
        padded = value + b"\0" * (-len(value) % 4)
        for (w,) in struct.iter_unpack("<I", padded):
            h = ((h << 16) ^ (h >> 16) ^ w) & 0xFFFFFFFF
    return h


# -- encoding -----------------------------------------------------------------------------

XATTR_ENTRY_HEADER_SIZE = _ENTRY.size


def xattr_entry_size(name: bytes) -> int:
    return (_ENTRY.size + len(name) + 3) & ~3


def xattr_value_size(value: bytes) -> int:
    return (len(value) + 3) & ~3


def encode_xattr_area(
    items: list[tuple[int, bytes, bytes]], size: int, *, base: int, in_block: bool
) -> bytearray:
    """Entries then values (from the end) for an area of ``size`` bytes.

    ``base`` is where entries start inside the area (32 after a block header, 0 in the
    inode after its magic); value offsets count from the block start (blocks) or from
    the first entry (inodes).  Entries in a block carry their hash, in-inode ones 0, as
    the kernel writes them.  ValueError if they do not fit.
    """
    buf = bytearray(size)
    pos = base
    vend = size
    for index, name, value in items:
        esize = xattr_entry_size(name)
        vsize = xattr_value_size(value)
        vend -= vsize
        if pos + esize + 4 > vend:
            raise ValueError("xattrs do not fit")
        buf[vend : vend + len(value)] = value
        offs = vend if in_block else vend - base
        ehash = xattr_entry_hash(name, value) if in_block else 0
        _ENTRY.pack_into(buf, pos, len(name), index, offs if value else 0, 0, len(value), ehash)
        buf[pos + _ENTRY.size : pos + _ENTRY.size + len(name)] = name
        pos += esize
    return buf


def xattr_area_fits(items: list[tuple[int, bytes, bytes]], room: int) -> bool:
    need = 4 + sum(xattr_entry_size(n) + xattr_value_size(v) for _, n, v in items)
    return need <= room


def encode_xattr_block(
    items: list[tuple[int, bytes, bytes]], block_size: int, blocknr: int, csum_seed: int | None
) -> bytearray:
    """An xattr block (refcount 1) holding ``items``, sorted as the kernel searches them."""
    ordered = sorted(items, key=lambda it: (it[0], len(it[1]), it[1]))
    buf = encode_xattr_area(ordered, block_size, base=XATTR_BLOCK_HEADER_SIZE, in_block=True)
    h = 0
    for _index, name, value in ordered:
        eh = xattr_entry_hash(name, value)
        if eh == 0:
            h = 0
            break
        h = ((h << 16) ^ (h >> 16) ^ eh) & 0xFFFFFFFF
    struct.pack_into("<IIIII", buf, 0, EXT4_XATTR_MAGIC, 1, 1, h, 0)
    if csum_seed is not None:
        crc = crc32c_le(csum_seed, struct.pack("<Q", blocknr))
        struct.pack_into("<I", buf, 16, crc32c_le(crc, bytes(buf)))
    return buf
