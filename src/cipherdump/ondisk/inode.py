"""The ext4 inode: the 128-byte base and the extra fields after ``i_extra_isize``."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

from cipherdump.ondisk.csum import crc32c_le
from cipherdump.ondisk.records import record_maker

EXT4_GOOD_OLD_INODE_SIZE = 128

# i_flags
EXT4_SECRM_FL = 0x00000001
EXT4_COMPR_FL = 0x00000004
EXT4_SYNC_FL = 0x00000008
EXT4_IMMUTABLE_FL = 0x00000010
EXT4_APPEND_FL = 0x00000020
EXT4_NODUMP_FL = 0x00000040
EXT4_NOATIME_FL = 0x00000080
EXT4_ENCRYPT_FL = 0x00000800
EXT4_INDEX_FL = 0x00001000
EXT4_HUGE_FILE_FL = 0x00040000
EXT4_EXTENTS_FL = 0x00080000
EXT4_VERITY_FL = 0x00100000
EXT4_EA_INODE_FL = 0x00200000
EXT4_INLINE_DATA_FL = 0x10000000
EXT4_PROJINHERIT_FL = 0x20000000
EXT4_CASEFOLD_FL = 0x40000000

FLAG_NAMES = {
    0x1: "secrm", 0x2: "unrm", 0x4: "compr", 0x8: "sync", 0x10: "immutable",
    0x20: "append", 0x40: "nodump", 0x80: "noatime", 0x800: "encrypt",
    0x1000: "index", 0x2000: "imagic", 0x4000: "journal_data", 0x8000: "notail",
    0x10000: "dirsync", 0x20000: "topdir", 0x40000: "huge_file", 0x80000: "extents",
    0x100000: "verity", 0x200000: "ea_inode", 0x2000000: "dax",
    0x10000000: "inline_data", 0x20000000: "projinherit", 0x40000000: "casefold",
}  # fmt: skip

_BASE = struct.Struct("<HHIIIIIHHII4s60sIIII12s")
_OSD2 = struct.Struct("<HHHHHH")
_CSUM_LO_OFFSET = 0x7C
_CSUM_HI_OFFSET = 0x82
# The whole 160-byte record when every extra field is present: the base (i_version as
# one word), osd2, i_extra_isize, i_checksum_hi and the seven 32-bit extra fields.
_FULL = struct.Struct("<HHIIIIIHHIII60sIIIIHHHHHHHH7I")
_FULL_EXTRA_ISIZE = _FULL.size - 128
_ALL_EXTRA: dict[str, bool] = {
    "csum_hi": True,
    "ctime": True,
    "mtime": True,
    "atime": True,
    "crtime": True,
    "version_hi": True,
    "projid": True,
}
_ZERO2 = bytes(2)
_U16 = struct.Struct("<H")
# i_mode, i_size_lo, i_links_count, i_flags; i_file_acl_lo, i_size_high; acl_high.
_PEEK_A = struct.Struct("<H2xI18xH4xI")
_PEEK_B = struct.Struct("<II")
_PEEK_B_OFFSET = 0x68
_PEEK_ACL_HI_OFFSET = 0x76
_S_IFMT = 0o170000
_INO_GEN = struct.Struct("<II")  # the inode number and generation that seed its checksum


@dataclass(frozen=True, slots=True)
class RawInode:
    """Every field of an on-disk inode, lo/hi halves already joined."""

    i_mode: int
    i_uid: int
    i_gid: int
    i_size: int
    i_atime: int
    i_ctime: int
    i_mtime: int
    i_dtime: int
    i_crtime: int
    i_atime_extra: int
    i_ctime_extra: int
    i_mtime_extra: int
    i_crtime_extra: int
    i_links_count: int
    i_blocks: int
    i_flags: int
    i_version: int
    i_block: bytes
    i_generation: int
    i_file_acl: int
    i_extra_isize: int
    i_checksum: int
    i_projid: int
    has_extra: dict[str, bool]
    raw: bytes


_make_raw_inode = record_maker(RawInode)


def _fits(extra_isize: int, offset: int, size: int) -> bool:
    """EXT4_FITS_IN_INODE: the field at ``offset`` lies inside the extra area."""
    return EXT4_GOOD_OLD_INODE_SIZE + extra_isize >= offset + size


def decode_inode(raw: bytes, inode_size: int, *, hurd: bool = False) -> RawInode:
    """Decode an inode record.  ``raw`` must be ``inode_size`` bytes.

    ``i_extra_isize`` beyond the record is clamped to zero extra fields rather than
    trusted, so a hostile value never drives a read past the record.  ``hurd`` (a
    filesystem made by GNU Hurd) gives ``osd2`` its Hurd layout, where the words Linux
    reads as ``i_file_acl_high`` and ``i_checksum_lo`` are the mode high bits and the
    author: the kernel ignores them there, and so do we.
    """
    if inode_size >= _FULL.size and len(raw) >= _FULL.size:
        # Every extra field is present (mkfs's default of 32): one unpack does it all.
        (
            mode, uid, size, atime, ctime, mtime, dtime, gid, links, blocks, flags,
            version, i_block, generation, acl, size_hi, _faddr,
            blocks_hi, acl_hi, uid_hi, gid_hi, csum_lo, _res, extra, csum_hi,
            ctime_extra, mtime_extra, atime_extra, crtime, crtime_extra, version_hi, projid,
        ) = _FULL.unpack_from(raw, 0)  # fmt: skip
        if _FULL_EXTRA_ISIZE <= extra <= inode_size - EXT4_GOOD_OLD_INODE_SIZE and not extra & 3:
            if hurd:
                acl_hi = csum_lo = 0
            return _make_raw_inode(
                mode,
                uid | uid_hi << 16,
                gid | gid_hi << 16,
                size | size_hi << 32,
                atime,
                ctime,
                mtime,
                dtime,
                crtime,
                atime_extra,
                ctime_extra,
                mtime_extra,
                crtime_extra,
                links,
                blocks | blocks_hi << 32,
                flags,
                version | version_hi << 32,
                i_block,
                generation,
                acl | acl_hi << 32,
                extra,
                csum_lo | csum_hi << 16,
                projid,
                _ALL_EXTRA.copy(),
                raw if type(raw) is bytes and len(raw) == inode_size else bytes(raw[:inode_size]),
            )
    extra = 0
    if inode_size > EXT4_GOOD_OLD_INODE_SIZE:
        (extra,) = _U16.unpack_from(raw, 0x80)
        if extra > inode_size - EXT4_GOOD_OLD_INODE_SIZE or extra & 3:
            extra = 0
    return _decode_inode_partial(raw, inode_size, extra, hurd)


def _decode_inode_partial(raw: bytes, inode_size: int, extra: int, hurd: bool) -> RawInode:
    """:func:`decode_inode` for records whose extra area lacks some fields."""
    b = _BASE.unpack_from(raw, 0)
    (blocks_hi, acl_hi, uid_hi, gid_hi, csum_lo, _res) = _OSD2.unpack_from(raw, 0x74)
    if hurd:
        acl_hi = csum_lo = 0

    def field(off: int, size: int) -> int | None:
        if not _fits(extra, off, size):
            return None
        return int.from_bytes(raw[off : off + size], "little")

    csum_hi = field(_CSUM_HI_OFFSET, 2)
    ctime_extra = field(0x84, 4)
    mtime_extra = field(0x88, 4)
    atime_extra = field(0x8C, 4)
    crtime = field(0x90, 4)
    crtime_extra = field(0x94, 4)
    version_hi = field(0x98, 4)
    projid = field(0x9C, 4)
    return _make_raw_inode(
        i_mode=b[0],
        i_uid=b[1] | uid_hi << 16,
        i_gid=b[7] | gid_hi << 16,
        i_size=b[2] | b[15] << 32,
        i_atime=b[3],
        i_ctime=b[4],
        i_mtime=b[5],
        i_dtime=b[6],
        i_crtime=crtime or 0,
        i_atime_extra=atime_extra or 0,
        i_ctime_extra=ctime_extra or 0,
        i_mtime_extra=mtime_extra or 0,
        i_crtime_extra=crtime_extra or 0,
        i_links_count=b[8],
        i_blocks=b[9] | blocks_hi << 32,
        i_flags=b[10],
        i_version=int.from_bytes(b[11], "little") | (version_hi or 0) << 32,
        i_block=b[12],
        i_generation=b[13],
        i_file_acl=b[14] | acl_hi << 32,
        i_extra_isize=extra,
        i_checksum=csum_lo | (csum_hi or 0) << 16,
        i_projid=projid or 0,
        has_extra={
            "csum_hi": csum_hi is not None,
            "ctime": ctime_extra is not None,
            "mtime": mtime_extra is not None,
            "atime": atime_extra is not None,
            "crtime": crtime is not None and crtime_extra is not None,
            "version_hi": version_hi is not None,
            "projid": projid is not None,
        },
        raw=bytes(raw[:inode_size]),
    )


def timestamp_ns(seconds: int, extra: int) -> int:
    """Seconds (signed 32-bit on disk) plus the ``*_extra`` epoch bits and nanoseconds."""
    secs = seconds - (1 << 32) if seconds & 0x80000000 else seconds
    secs += (extra & 3) << 32
    return secs * 1_000_000_000 + (extra >> 2)


def _csum_pieces(raw: bytes, inode_size: int, extra_isize: int) -> tuple[list[bytes], bool]:
    """The record with its checksum fields as zeros, in pieces (no copy to edit), and
    whether it has the high 16 bits of the checksum."""
    if inode_size > EXT4_GOOD_OLD_INODE_SIZE and _fits(extra_isize, _CSUM_HI_OFFSET, 2):
        return [
            raw[:_CSUM_LO_OFFSET],
            _ZERO2,
            raw[_CSUM_LO_OFFSET + 2 : _CSUM_HI_OFFSET],
            _ZERO2,
            raw[_CSUM_HI_OFFSET + 2 : inode_size],
        ], True
    return [raw[:_CSUM_LO_OFFSET], _ZERO2, raw[_CSUM_LO_OFFSET + 2 : inode_size]], False


def inode_csum(raw: bytes, ino_seed: int, inode_size: int, extra_isize: int) -> int:
    """metadata_csum of an inode record given the inode's seed (ino + generation)."""
    pieces, has_hi = _csum_pieces(raw, inode_size, extra_isize)
    crc = crc32c_le(ino_seed, b"".join(pieces))
    return crc if has_hi else crc & 0xFFFF


def inode_record_csum(
    raw: bytes, fs_seed: int, ino: int, generation: int, inode_size: int, extra_isize: int
) -> int:
    """:func:`inode_csum` of inode ``ino`` from the filesystem's seed: the same value as
    ``inode_csum(raw, inode_csum_seed(fs_seed, ino, generation), ...)``, in one CRC
    update (the per-inode seed is the CRC of the inode number and generation, and CRC
    updates chain)."""
    pieces, has_hi = _csum_pieces(raw, inode_size, extra_isize)
    crc = crc32c_le(fs_seed, b"".join((_INO_GEN.pack(ino, generation), *pieces)))
    return crc if has_hi else crc & 0xFFFF


# -- encoding -----------------------------------------------------------------------------

EXT4_EPOCH_BITS = 2


def encode_time(ns: int) -> tuple[int, int]:
    """(seconds field, ``*_extra`` field) of a nanosecond timestamp, as the kernel stores it.

    The low 32 bits of the seconds go in the base field; the epoch bits (how far the
    seconds lie beyond the signed 32-bit range) and the nanoseconds go in ``*_extra``.
    """
    secs, nsec = divmod(ns, 1_000_000_000)
    lo = secs & 0xFFFFFFFF
    signed_lo = lo - (1 << 32) if lo & 0x80000000 else lo
    epoch = ((secs - signed_lo) >> 32) & 3
    return lo, epoch | nsec << EXT4_EPOCH_BITS


@dataclass(frozen=True, slots=True)
class InodeFields:
    """What :func:`encode_inode` writes: an inode record's fields, joined halves."""

    i_mode: int
    i_uid: int = 0
    i_gid: int = 0
    i_size: int = 0
    atime_ns: int = 0
    ctime_ns: int = 0
    mtime_ns: int = 0
    crtime_ns: int | None = None
    i_links_count: int = 1
    i_blocks: int = 0
    i_flags: int = 0
    i_version: int = 0
    i_block: bytes = b""
    i_generation: int = 0
    i_file_acl: int = 0
    i_projid: int = 0


def encode_inode(f: InodeFields, inode_size: int, extra_isize: int, tail: bytes = b"") -> bytearray:
    """An inode record of ``inode_size`` bytes with a zero checksum (see inode_csum_set).

    ``extra_isize`` is the extra field area (32 holds every field); ``tail`` is what
    follows it: the in-inode xattr area, magic included.
    """
    buf = bytearray(inode_size)
    atime, atime_x = encode_time(f.atime_ns)
    ctime, ctime_x = encode_time(f.ctime_ns)
    mtime, mtime_x = encode_time(f.mtime_ns)
    i_block = f.i_block.ljust(60, b"\0")
    if len(i_block) != 60:
        raise ValueError("i_block longer than 60 bytes")
    _BASE.pack_into(
        buf,
        0,
        f.i_mode,
        f.i_uid & 0xFFFF,
        f.i_size & 0xFFFFFFFF,
        atime,
        ctime,
        mtime,
        0,
        f.i_gid & 0xFFFF,
        f.i_links_count,
        f.i_blocks & 0xFFFFFFFF,
        f.i_flags,
        (f.i_version & 0xFFFFFFFF).to_bytes(4, "little"),
        i_block,
        f.i_generation,
        f.i_file_acl & 0xFFFFFFFF,
        f.i_size >> 32,
        0,
        bytes(12),
    )
    _OSD2.pack_into(
        buf,
        0x74,
        (f.i_blocks >> 32) & 0xFFFF,
        (f.i_file_acl >> 32) & 0xFFFF,
        f.i_uid >> 16,
        f.i_gid >> 16,
        0,
        0,
    )
    if inode_size > EXT4_GOOD_OLD_INODE_SIZE:
        struct.pack_into("<H", buf, 0x80, extra_isize)
        fields: list[tuple[int, int]] = [(0x84, ctime_x), (0x88, mtime_x), (0x8C, atime_x)]
        if f.crtime_ns is not None:
            crtime, crtime_x = encode_time(f.crtime_ns)
            fields += [(0x90, crtime), (0x94, crtime_x)]
        fields += [(0x98, f.i_version >> 32), (0x9C, f.i_projid)]
        for off, value in fields:
            if _fits(extra_isize, off, 4):
                struct.pack_into("<I", buf, off, value & 0xFFFFFFFF)
        start = EXT4_GOOD_OLD_INODE_SIZE + extra_isize
        if len(tail) > inode_size - start:
            raise ValueError("in-inode xattr area is too large")
        buf[start : start + len(tail)] = tail
    return buf


def inode_csum_set(buf: bytearray, ino_seed: int, inode_size: int) -> None:
    """Store the metadata_csum of an encoded inode record in place."""
    extra = struct.unpack_from("<H", buf, 0x80)[0] if inode_size > EXT4_GOOD_OLD_INODE_SIZE else 0
    crc = inode_csum(bytes(buf), ino_seed, inode_size, extra)
    struct.pack_into("<H", buf, _CSUM_LO_OFFSET, crc & 0xFFFF)
    if inode_size > EXT4_GOOD_OLD_INODE_SIZE and _fits(extra, _CSUM_HI_OFFSET, 2):
        struct.pack_into("<H", buf, _CSUM_HI_OFFSET, crc >> 16)


class InodePeek(NamedTuple):
    """The few fields of an inode record a walk needs before deciding whether to decode
    it at all (see :func:`peek_inode`)."""

    mode: int
    flags: int
    size: int
    links: int
    file_acl: int

    @property
    def is_dir(self) -> bool:
        return self.mode & _S_IFMT == 0o040000

    @property
    def is_file(self) -> bool:
        return self.mode & _S_IFMT == 0o100000

    @property
    def is_symlink(self) -> bool:
        return self.mode & _S_IFMT == 0o120000

    @property
    def has_inline_data(self) -> bool:
        return bool(self.flags & EXT4_INLINE_DATA_FL)

    @property
    def is_encrypted(self) -> bool:
        return bool(self.flags & EXT4_ENCRYPT_FL)


def peek_inode(raw: bytes, *, hurd: bool = False) -> InodePeek:
    """Mode, flags, size, link count and xattr block of a whole inode record, read as
    :func:`decode_inode` reads them, without decoding or checking the rest."""
    mode, size_lo, links, flags = _PEEK_A.unpack_from(raw, 0)
    acl_lo, size_hi = _PEEK_B.unpack_from(raw, _PEEK_B_OFFSET)
    acl_hi = 0 if hurd else _U16.unpack_from(raw, _PEEK_ACL_HI_OFFSET)[0]
    return InodePeek(mode, flags, size_lo | size_hi << 32, links, acl_lo | acl_hi << 32)
