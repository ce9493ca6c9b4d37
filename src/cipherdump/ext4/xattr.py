"""Reading an inode's extended attributes: in-inode, external block, and EA inodes."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cipherdump.errors import ChecksumError, CorruptError, UnsupportedError
from cipherdump.ext4.mapping import map_runs, read_mapped
from cipherdump.ondisk import features as F
from cipherdump.ondisk.csum import crc32c_le
from cipherdump.ondisk.inode import (
    EXT4_EA_INODE_FL,
    EXT4_EXTENTS_FL,
    EXT4_GOOD_OLD_INODE_SIZE,
    EXT4_INLINE_DATA_FL,
    RawInode,
)
from cipherdump.ondisk.records import record_maker
from cipherdump.ondisk.xattr import (
    EXT4_XATTR_INDEX_SYSTEM,
    EXT4_XATTR_MAGIC,
    PREFIXES,
    XATTR_BLOCK_HEADER_SIZE,
    XattrEntry,
    decode_xattr_block_header,
    xattr_entries_overrun,
    xattr_entry_fields,
)

if TYPE_CHECKING:
    from cipherdump.ext4.volume import Volume

# Values stored in EA inodes can be large; cap what we hold in memory for one value.
_MAX_EA_INODE_VALUE = 64 << 20


@dataclass(frozen=True, slots=True)
class Xattr:
    index: int
    name: bytes
    value: bytes
    where: str  # "inode", "block" or "ea_inode"

    @property
    def full_name(self) -> bytes:
        return PREFIXES.get(self.index, b"index%d." % self.index) + self.name


_make_xattr = record_maker(Xattr)
_MAGIC = struct.pack("<I", EXT4_XATTR_MAGIC)


def read_xattrs(vol: Volume, ino: int, raw: RawInode) -> list[Xattr]:
    """All xattrs of inode ``ino``: in-inode first, then the external block."""
    body = read_inode_body_xattrs(vol, ino, raw)
    if raw.i_file_acl:
        return body + _in_block(vol, ino, raw)
    return body


def read_inode_body_xattrs(vol: Volume, ino: int, rec: RawInode) -> list[Xattr]:
    """The xattrs kept in the inode record after ``i_extra_isize`` (none if absent)."""
    raw = rec.raw
    isz = len(raw)
    start = EXT4_GOOD_OLD_INODE_SIZE + rec.i_extra_isize
    if isz <= EXT4_GOOD_OLD_INODE_SIZE or start + 4 > isz or raw[start : start + 4] != _MAGIC:
        return []
    area = raw[start + 4 :]
    entries = xattr_entry_fields(area, 0)
    if entries is None:
        raise xattr_entries_overrun(f"inode {ino} in-inode xattrs")
    hi = len(area)
    out: list[Xattr] = []
    for fields in entries:
        index, name, voffs, vinum, vsize, _ehash = fields
        end = voffs + vsize
        if vinum or (vsize and end > hi):  # an EA inode's value, or an error
            where = f"inode {ino} in-inode xattrs"
            out.append(_resolve(vol, ino, XattrEntry(*fields), area, 0, hi, "inode", where))
        else:
            out.append(_make_xattr(index, name, area[voffs:end], "inode"))
    return out


def _in_block(vol: Volume, ino: int, raw: RawInode) -> list[Xattr]:
    blk = raw.i_file_acl
    if not blk:
        return []
    fs = vol
    where = f"inode {ino} xattr block {blk}"
    if not fs.sb.has_compat(F.COMPAT_EXT_ATTR):
        raise CorruptError("xattr block on a filesystem without ext_attr", location=where)
    if not fs.block_in_range(blk):
        raise CorruptError("xattr block is outside the filesystem", location=where)
    block = fs.read_block(blk)
    hdr = decode_xattr_block_header(block)
    if hdr.h_magic != EXT4_XATTR_MAGIC or hdr.h_blocks != 1:
        raise CorruptError(
            f"bad xattr block header (magic 0x{hdr.h_magic:08x}, blocks {hdr.h_blocks})",
            structure="xattr block",
            location=where,
        )
    if fs.sb.metadata_csum:
        buf = bytearray(block)
        buf[16:20] = b"\0\0\0\0"
        want = crc32c_le(crc32c_le(fs.csum_seed, struct.pack("<Q", blk)), bytes(buf))
        if want != hdr.h_checksum:
            raise ChecksumError(
                f"checksum 0x{hdr.h_checksum:08x} != computed 0x{want:08x}",
                structure="xattr block",
                location=where,
            )
    fields = xattr_entry_fields(block, XATTR_BLOCK_HEADER_SIZE)
    if fields is None:
        raise xattr_entries_overrun(where)
    return [
        _resolve(vol, ino, XattrEntry(*f), block, 0, len(block), "block", where) for f in fields
    ]


def _resolve(
    vol: Volume, ino: int, e: XattrEntry, area: bytes, lo: int, hi: int, kind: str, where: str
) -> Xattr:
    if e.e_value_inum:
        return Xattr(e.e_name_index, e.name, _ea_inode_value(vol, ino, e, where), "ea_inode")
    start = lo + e.e_value_offs
    end = start + e.e_value_size
    if e.e_value_size and (start < lo or end > hi):
        raise CorruptError(
            f"value of {e.full_name!r} (offset {e.e_value_offs}, size {e.e_value_size}) "
            "lies outside its area",
            structure="xattr entry",
            location=where,
        )
    return _make_xattr(e.e_name_index, e.name, bytes(area[start:end]), kind)


def _ea_inode_value(vol: Volume, ino: int, e: XattrEntry, where: str) -> bytes:
    fs = vol
    if not fs.sb.has_incompat(F.INCOMPAT_EA_INODE):
        raise CorruptError(
            f"value of {e.full_name!r} refers to inode {e.e_value_inum} without ea_inode",
            structure="xattr entry",
            location=where,
        )
    if e.e_value_inum == ino:
        raise CorruptError("xattr value refers to its own inode", location=where)
    if e.e_value_size > _MAX_EA_INODE_VALUE:
        raise CorruptError(f"xattr value of {e.e_value_size} bytes is too large", location=where)
    ea = fs.raw_inode(e.e_value_inum)
    if not ea.i_flags & EXT4_EA_INODE_FL or ea.i_flags & 0x10000000:
        raise CorruptError(
            f"inode {e.e_value_inum} holding an xattr value is not an EA inode", location=where
        )
    if ea.i_size != e.e_value_size:
        raise CorruptError(
            f"EA inode {e.e_value_inum} has size {ea.i_size}, entry says {e.e_value_size}",
            location=where,
        )
    if not e.e_value_size:
        return b""
    if ea.i_flags & EXT4_INLINE_DATA_FL:
        return read_inline_data(vol, e.e_value_inum, ea)[: e.e_value_size]
    runs = vol.orphan_runs(e.e_value_inum, map_runs(vol, e.e_value_inum, ea), ea.i_size)
    return read_mapped(vol, runs, 0, e.e_value_size)


def read_inline_data(vol: Volume, ino: int, raw: RawInode) -> bytes:
    """The bytes of an inline-data inode: ``i_block`` then ``system.data``."""
    if not raw.i_flags & EXT4_INLINE_DATA_FL:
        raise UnsupportedError(f"inode {ino} has no inline data")
    if not vol.sb.has_incompat(F.INCOMPAT_INLINE_DATA):
        raise CorruptError(
            "inline_data flag on a filesystem without the inline_data feature",
            structure="inode",
            location=f"inode {ino}",
        )
    if raw.i_flags & EXT4_EXTENTS_FL:
        raise CorruptError(
            "both inline_data and extents flags are set",
            structure="inode",
            location=f"inode {ino}",
        )
    # system.data always lives in the inode body (the kernel looks nowhere else), so
    # a damaged xattr block does not make the inline data unreadable.
    for x in read_inode_body_xattrs(vol, ino, raw):
        if x.index == EXT4_XATTR_INDEX_SYSTEM and x.name == b"data":
            return raw.i_block + x.value
    raise CorruptError(
        "inline_data flag is set but the system.data xattr is missing",
        structure="inode",
        location=f"inode {ino}",
    )
