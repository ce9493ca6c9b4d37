"""Reading an inode's extended attributes: in-inode, external block, and EA inodes."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cipherdump.errors import ChecksumError, CorruptError
from cipherdump.ondisk import features as F
from cipherdump.ondisk.csum import crc32c_le
from cipherdump.ondisk.inode import EXT4_EA_INODE_FL, EXT4_GOOD_OLD_INODE_SIZE
from cipherdump.ondisk.records import record_maker
from cipherdump.ondisk.xattr import (
    EXT4_XATTR_MAGIC,
    PREFIXES,
    XATTR_BLOCK_HEADER_SIZE,
    XattrEntry,
    decode_xattr_block_header,
    xattr_entries_overrun,
    xattr_entry_fields,
)

if TYPE_CHECKING:
    from cipherdump.ext4.inode import Inode

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


def read_xattrs(inode: Inode) -> list[Xattr]:
    body = read_inode_body_xattrs(inode)
    if inode.raw.i_file_acl:
        return body + _in_block(inode)
    return body


def read_inode_body_xattrs(inode: Inode) -> list[Xattr]:
    """The xattrs kept in the inode record after ``i_extra_isize`` (none if absent)."""
    rec = inode.raw
    raw = rec.raw
    isz = len(raw)
    start = EXT4_GOOD_OLD_INODE_SIZE + rec.i_extra_isize
    if isz <= EXT4_GOOD_OLD_INODE_SIZE or start + 4 > isz or raw[start : start + 4] != _MAGIC:
        return []
    area = raw[start + 4 :]
    entries = xattr_entry_fields(area, 0)
    if entries is None:
        raise xattr_entries_overrun(f"inode {inode.ino} in-inode xattrs")
    hi = len(area)
    out: list[Xattr] = []
    for fields in entries:
        index, name, voffs, vinum, vsize, _ehash = fields
        end = voffs + vsize
        if vinum or (vsize and end > hi):  # an EA inode's value, or an error
            where = f"inode {inode.ino} in-inode xattrs"
            out.append(_resolve(inode, XattrEntry(*fields), area, 0, hi, "inode", where))
        else:
            out.append(_make_xattr(index, name, area[voffs:end], "inode"))
    return out


def _in_block(inode: Inode) -> list[Xattr]:
    blk = inode.raw.i_file_acl
    if not blk:
        return []
    fs = inode.fs
    where = f"inode {inode.ino} xattr block {blk}"
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
    return [_resolve(inode, XattrEntry(*f), block, 0, len(block), "block", where) for f in fields]


def _resolve(
    inode: Inode, e: XattrEntry, area: bytes, lo: int, hi: int, kind: str, where: str
) -> Xattr:
    if e.e_value_inum:
        return Xattr(e.e_name_index, e.name, _ea_inode_value(inode, e, where), "ea_inode")
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


def _ea_inode_value(inode: Inode, e: XattrEntry, where: str) -> bytes:
    fs = inode.fs
    if not fs.sb.has_incompat(F.INCOMPAT_EA_INODE):
        raise CorruptError(
            f"value of {e.full_name!r} refers to inode {e.e_value_inum} without ea_inode",
            structure="xattr entry",
            location=where,
        )
    if e.e_value_inum == inode.ino:
        raise CorruptError("xattr value refers to its own inode", location=where)
    if e.e_value_size > _MAX_EA_INODE_VALUE:
        raise CorruptError(f"xattr value of {e.e_value_size} bytes is too large", location=where)
    ea = fs.inode(e.e_value_inum)
    if not ea.flags & EXT4_EA_INODE_FL or ea.flags & 0x10000000:
        raise CorruptError(
            f"inode {e.e_value_inum} holding an xattr value is not an EA inode", location=where
        )
    if ea.size != e.e_value_size:
        raise CorruptError(
            f"EA inode {e.e_value_inum} has size {ea.size}, entry says {e.e_value_size}",
            location=where,
        )
    return ea.read(0, e.e_value_size)
