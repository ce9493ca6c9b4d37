"""The jbd2 journal's on-disk structures (``include/linux/jbd2.h``), pure bytes <-> records.

Everything in a journal is big-endian, unlike the rest of ext4.  A journal is a ring of
blocks after its superblock: each transaction is descriptor blocks (each followed by the
data blocks its tags describe), revoke blocks, and one commit block.  Every block that
is not a data block starts with a 12-byte header (magic, block type, sequence).

This module only decodes and checks single blocks; walking the ring and replaying it is
:mod:`cipherdump.ext4.journal`.  Field names are the kernel's.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from cipherdump.errors import CorruptError, UnsupportedError
from cipherdump.ondisk.csum import crc32c_le

JBD2_MAGIC_NUMBER = 0xC03B3998

# h_blocktype
JBD2_DESCRIPTOR_BLOCK = 1
JBD2_COMMIT_BLOCK = 2
JBD2_SUPERBLOCK_V1 = 3
JBD2_SUPERBLOCK_V2 = 4
JBD2_REVOKE_BLOCK = 5
JBD2_FC_BLOCK = 6

# Journal features (s_feature_*); only version-2 superblocks have them.
JBD2_FEATURE_COMPAT_CHECKSUM = 0x1
JBD2_FEATURE_INCOMPAT_REVOKE = 0x1
JBD2_FEATURE_INCOMPAT_64BIT = 0x2
JBD2_FEATURE_INCOMPAT_ASYNC_COMMIT = 0x4
JBD2_FEATURE_INCOMPAT_CSUM_V2 = 0x8
JBD2_FEATURE_INCOMPAT_CSUM_V3 = 0x10
JBD2_FEATURE_INCOMPAT_FAST_COMMIT = 0x20
JBD2_KNOWN_INCOMPAT = 0x3F

COMPAT_NAMES = {JBD2_FEATURE_COMPAT_CHECKSUM: "journal_checksum"}
INCOMPAT_NAMES = {
    JBD2_FEATURE_INCOMPAT_REVOKE: "journal_incompat_revoke",
    JBD2_FEATURE_INCOMPAT_64BIT: "journal_64bit",
    JBD2_FEATURE_INCOMPAT_ASYNC_COMMIT: "journal_async_commit",
    JBD2_FEATURE_INCOMPAT_CSUM_V2: "journal_checksum_v2",
    JBD2_FEATURE_INCOMPAT_CSUM_V3: "journal_checksum_v3",
    JBD2_FEATURE_INCOMPAT_FAST_COMMIT: "journal_fast_commit",
}

# Descriptor tag flags (t_flags).
JBD2_FLAG_ESCAPE = 1  # the block's first four bytes were the magic: restore them
JBD2_FLAG_SAME_UUID = 2  # no 16-byte UUID follows the tag
JBD2_FLAG_DELETED = 4
JBD2_FLAG_LAST_TAG = 8

# Commit block h_chksum_type (checksum v1).
JBD2_CRC32_CHKSUM = 1
JBD2_MD5_CHKSUM = 2
JBD2_SHA1_CHKSUM = 3
JBD2_CRC32C_CHKSUM = 4  # s_checksum_type with checksum v2/v3
JBD2_CRC32_CHKSUM_SIZE = 4
JBD2_CHECKSUM_BYTES = 8  # h_chksum is 8 big-endian words

JBD2_DEFAULT_FAST_COMMIT_BLOCKS = 256
JBD2_MIN_JOURNAL_BLOCKS = 1024

JOURNAL_HEADER_SIZE = 12
JOURNAL_SUPERBLOCK_SIZE = 1024
JBD2_TAIL_SIZE = 4  # jbd2_journal_block_tail / jbd2_journal_revoke_tail
_UUID_SIZE = 16

_HEADER = struct.Struct(">III")
_SB = struct.Struct(">12xIIIIIIIII16sIIIIB3xII")
_SB_CHECKSUM_OFFSET = 0xFC
_COMMIT = struct.Struct(">12xBB2x8IQI")
_COMMIT_CHKSUM_OFFSET = 16
_TAG3 = struct.Struct(">IIII")  # t_blocknr, t_flags, t_blocknr_high, t_checksum
_TAG = struct.Struct(">IHHI")  # t_blocknr, t_checksum, t_flags, t_blocknr_high
_BE32 = struct.Struct(">I")
_BE64 = struct.Struct(">Q")
_MASK = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class JournalHeader:
    h_magic: int
    h_blocktype: int
    h_sequence: int


@dataclass(frozen=True, slots=True)
class JournalSuperblock:
    """``journal_superblock_t``.  A version-1 superblock has no features: they read 0."""

    h_blocktype: int
    h_sequence: int
    s_blocksize: int
    s_maxlen: int
    s_first: int
    s_sequence: int
    s_start: int
    s_errno: int
    s_feature_compat: int
    s_feature_incompat: int
    s_feature_ro_compat: int
    s_uuid: bytes
    s_nr_users: int
    s_dynsuper: int
    s_max_transaction: int
    s_max_trans_data: int
    s_checksum_type: int
    s_num_fc_blks: int
    s_head: int
    s_checksum: int

    def has_incompat(self, flag: int) -> bool:
        return bool(self.s_feature_incompat & flag)

    @property
    def csum_v2or3(self) -> bool:
        return self.has_incompat(JBD2_FEATURE_INCOMPAT_CSUM_V2 | JBD2_FEATURE_INCOMPAT_CSUM_V3)

    @property
    def checksum_v1(self) -> bool:
        return bool(self.s_feature_compat & JBD2_FEATURE_COMPAT_CHECKSUM)

    @property
    def fast_commit(self) -> bool:
        return self.has_incompat(JBD2_FEATURE_INCOMPAT_FAST_COMMIT)

    @property
    def num_fc_blocks(self) -> int:
        """Blocks at the end of the journal set aside for fast commits (0 without them)."""
        if not self.fast_commit:
            return 0
        return self.s_num_fc_blks or JBD2_DEFAULT_FAST_COMMIT_BLOCKS

    @property
    def log_end(self) -> int:
        """``j_last``: the first block past the ring of full commits (the fast-commit
        area, if any, starts there)."""
        return self.s_maxlen - self.num_fc_blocks

    @property
    def csum_seed(self) -> int:
        """``j_csum_seed``: every v2/v3 checksum starts from it."""
        return crc32c_le(_MASK, self.s_uuid)

    @property
    def tag_bytes(self) -> int:
        """``journal_tag_bytes()``: the size of one descriptor tag, UUID not counted."""
        return tag_bytes(self.s_feature_incompat)

    @property
    def feature_names(self) -> list[str]:
        names = [n for bit, n in COMPAT_NAMES.items() if self.s_feature_compat & bit]
        names += [n for bit, n in INCOMPAT_NAMES.items() if self.s_feature_incompat & bit]
        return names


@dataclass(frozen=True, slots=True)
class BlockTag:
    """One descriptor tag: the filesystem block ``t_blocknr`` (high word included with
    64bit) gets the next data block of the log."""

    t_blocknr: int
    t_flags: int
    t_checksum: int
    uuid: bytes | None  # present only without JBD2_FLAG_SAME_UUID


@dataclass(frozen=True, slots=True)
class CommitHeader:
    """``struct commit_header``."""

    h_sequence: int
    h_chksum_type: int
    h_chksum_size: int
    h_chksum: tuple[int, ...]
    h_commit_sec: int
    h_commit_nsec: int


def tag_bytes(incompat: int) -> int:
    """Descriptor tag size for the incompat features ``incompat`` (as the kernel's
    ``journal_tag_bytes``): 16 with csum v3; else 12 with 64bit, 8 without, and 2 more
    with csum v2."""
    if incompat & JBD2_FEATURE_INCOMPAT_CSUM_V3:
        return _TAG3.size
    size = _TAG.size
    if incompat & JBD2_FEATURE_INCOMPAT_CSUM_V2:
        size += 2
    if incompat & JBD2_FEATURE_INCOMPAT_64BIT:
        return size
    return size - 4


def decode_header(block: bytes) -> JournalHeader | None:
    """The block's header, or None if it does not start with the jbd2 magic (a data
    block, or the end of the log)."""
    if len(block) < JOURNAL_HEADER_SIZE:
        return None
    magic, blocktype, sequence = _HEADER.unpack_from(block, 0)
    if magic != JBD2_MAGIC_NUMBER:
        return None
    return JournalHeader(magic, blocktype, sequence)


def decode_journal_superblock(raw: bytes) -> JournalSuperblock:
    """Decode and check a journal superblock as the kernel's ``journal_load`` does;
    CorruptError for a damaged one, UnsupportedError for features we cannot replay."""
    if len(raw) < JOURNAL_SUPERBLOCK_SIZE:
        raise CorruptError("journal superblock is cut short", structure="journal superblock")
    header = decode_header(raw)
    if header is None:
        raise CorruptError("no jbd2 magic", structure="journal superblock")
    if header.h_blocktype not in (JBD2_SUPERBLOCK_V1, JBD2_SUPERBLOCK_V2):
        raise CorruptError(
            f"block type {header.h_blocktype} is not a superblock", structure="journal superblock"
        )
    f = _SB.unpack_from(raw, 0)
    v2 = header.h_blocktype == JBD2_SUPERBLOCK_V2
    # Version-1 journals predate features; whatever those bytes hold means nothing.
    compat, incompat, ro_compat = (f[6], f[7], f[8]) if v2 else (0, 0, 0)
    (checksum,) = _BE32.unpack_from(raw, _SB_CHECKSUM_OFFSET)
    jsb = JournalSuperblock(
        h_blocktype=header.h_blocktype,
        h_sequence=header.h_sequence,
        s_blocksize=f[0],
        s_maxlen=f[1],
        s_first=f[2],
        s_sequence=f[3],
        s_start=f[4],
        s_errno=f[5] - (1 << 32) if f[5] & 0x80000000 else f[5],
        s_feature_compat=compat,
        s_feature_incompat=incompat,
        s_feature_ro_compat=ro_compat,
        s_uuid=f[9],
        s_nr_users=f[10],
        s_dynsuper=f[11],
        s_max_transaction=f[12],
        s_max_trans_data=f[13],
        s_checksum_type=f[14],
        s_num_fc_blks=f[15],
        s_head=f[16],
        s_checksum=checksum,
    )
    _check_superblock(jsb, raw)
    return jsb


def _check_superblock(jsb: JournalSuperblock, raw: bytes) -> None:
    where = "journal superblock"
    unknown = jsb.s_feature_incompat & ~JBD2_KNOWN_INCOMPAT
    if unknown:
        raise UnsupportedError(f"journal uses unknown incompatible features 0x{unknown:x}")
    both = JBD2_FEATURE_INCOMPAT_CSUM_V2 | JBD2_FEATURE_INCOMPAT_CSUM_V3
    if jsb.s_feature_incompat & both == both:
        raise CorruptError("checksum v2 and v3 are both set", structure=where)
    if jsb.csum_v2or3:
        if jsb.checksum_v1:
            raise CorruptError("checksum v1 and v2/v3 are both set", structure=where)
        if jsb.s_checksum_type != JBD2_CRC32C_CHKSUM:
            raise CorruptError(f"unknown checksum type {jsb.s_checksum_type}", structure=where)
        want = journal_superblock_csum(raw)
        if want != jsb.s_checksum:
            raise CorruptError(
                f"checksum 0x{jsb.s_checksum:08x} != computed 0x{want:08x}", structure=where
            )
    if jsb.s_blocksize < 1024 or jsb.s_blocksize > 65536 or jsb.s_blocksize & (jsb.s_blocksize - 1):
        raise CorruptError(f"block size {jsb.s_blocksize} is not valid", structure=where)
    if jsb.s_first == 0 or jsb.s_first >= jsb.s_maxlen:
        raise CorruptError(
            f"first log block {jsb.s_first} is outside 1..{jsb.s_maxlen - 1}", structure=where
        )
    if jsb.fast_commit and jsb.log_end <= jsb.s_first:
        raise CorruptError(
            f"{jsb.num_fc_blocks} fast-commit blocks leave no room for the log", structure=where
        )
    if jsb.s_start and not jsb.s_first <= jsb.s_start < jsb.log_end:
        raise CorruptError(
            f"log start {jsb.s_start} is outside {jsb.s_first}..{jsb.log_end - 1}",
            structure=where,
        )


def journal_superblock_csum(raw: bytes) -> int:
    """``jbd2_superblock_csum``: crc32c from ~0 over the 1 KiB superblock, its own
    checksum taken as zero."""
    crc = crc32c_le(_MASK, raw[:_SB_CHECKSUM_OFFSET])
    crc = crc32c_le(crc, b"\0\0\0\0")
    return crc32c_le(crc, raw[_SB_CHECKSUM_OFFSET + 4 : JOURNAL_SUPERBLOCK_SIZE])


def block_tail_csum_verify(block: bytes, csum_seed: int) -> bool:
    """``jbd2_descriptor_block_csum_verify``: the last four bytes of a descriptor or
    revoke block hold crc32c over the block with those bytes as zero."""
    if len(block) < JOURNAL_HEADER_SIZE + JBD2_TAIL_SIZE:
        return False
    provided: int = _BE32.unpack_from(block, len(block) - JBD2_TAIL_SIZE)[0]
    crc = crc32c_le(csum_seed, block[:-JBD2_TAIL_SIZE])
    return crc32c_le(crc, b"\0\0\0\0") == provided


def decode_descriptor_tags(block: bytes, incompat: int) -> list[BlockTag]:
    """The tags of a descriptor block, as ``count_tags`` and the replay pass walk them:
    up to the tag flagged LAST_TAG or the end of the block (less the checksum tail with
    csum v2/v3).  A UUID follows each tag without SAME_UUID."""
    size = len(block)
    if incompat & (JBD2_FEATURE_INCOMPAT_CSUM_V2 | JBD2_FEATURE_INCOMPAT_CSUM_V3):
        size -= JBD2_TAIL_SIZE
    step = tag_bytes(incompat)
    v3 = bool(incompat & JBD2_FEATURE_INCOMPAT_CSUM_V3)
    wide = bool(incompat & JBD2_FEATURE_INCOMPAT_64BIT)
    tags: list[BlockTag] = []
    at = JOURNAL_HEADER_SIZE
    while at + step <= size:
        if v3:
            lo, flags, hi, csum = _TAG3.unpack_from(block, at)
        else:
            # The 8-byte tag of a 32-bit journal has no t_blocknr_high; read it as 0.
            padded = block[at : at + 8] + (block[at + 8 : at + 12] if wide else b"\0\0\0\0")
            lo, csum, flags, hi = _TAG.unpack_from(padded, 0)
        at += step
        uuid: bytes | None = None
        if not flags & JBD2_FLAG_SAME_UUID:
            uuid = bytes(block[at : at + _UUID_SIZE])
            at += _UUID_SIZE
        tags.append(BlockTag(lo | (hi << 32 if wide else 0), flags, csum, uuid))
        if flags & JBD2_FLAG_LAST_TAG:
            break
    return tags


def block_tag_csum_verify(
    tag: BlockTag, data: bytes, sequence: int, csum_seed: int, incompat: int
) -> bool:
    """``jbd2_block_tag_csum_verify``: crc32c of the transaction's sequence (big-endian)
    then the data block; csum v3 keeps all 32 bits, v2 the low 16.  True without v2/v3."""
    if not incompat & (JBD2_FEATURE_INCOMPAT_CSUM_V2 | JBD2_FEATURE_INCOMPAT_CSUM_V3):
        return True
    crc = crc32c_le(crc32c_le(csum_seed, _BE32.pack(sequence & _MASK)), data)
    if incompat & JBD2_FEATURE_INCOMPAT_CSUM_V3:
        return tag.t_checksum == crc
    return tag.t_checksum == crc & 0xFFFF


def decode_revoke(block: bytes, incompat: int) -> list[int]:
    """The filesystem blocks a revoke block revokes (``jbd2_journal_revoke_header_t``:
    the header, ``r_count`` bytes used including it, then 4- or 8-byte block numbers).
    CorruptError if ``r_count`` runs past the block (or into its checksum tail)."""
    if len(block) < JOURNAL_HEADER_SIZE + 4:
        raise CorruptError("revoke block is cut short", structure="journal revoke block")
    (r_count,) = _BE32.unpack_from(block, JOURNAL_HEADER_SIZE)
    limit = len(block)
    if incompat & (JBD2_FEATURE_INCOMPAT_CSUM_V2 | JBD2_FEATURE_INCOMPAT_CSUM_V3):
        limit -= JBD2_TAIL_SIZE
    if r_count > limit:
        raise CorruptError(
            f"r_count {r_count} runs past the block ({limit} bytes)",
            structure="journal revoke block",
        )
    if incompat & JBD2_FEATURE_INCOMPAT_64BIT:
        record, size = _BE64, 8
    else:
        record, size = _BE32, 4
    out: list[int] = []
    at = JOURNAL_HEADER_SIZE + 4
    while at + size <= r_count:
        out.append(record.unpack_from(block, at)[0])
        at += size
    return out


def decode_commit(block: bytes) -> CommitHeader:
    """A commit block's header (the rest of the block is unused)."""
    if len(block) < _COMMIT.size:
        raise CorruptError("commit block is cut short", structure="journal commit block")
    f = _COMMIT.unpack_from(block, 0)
    (sequence,) = _BE32.unpack_from(block, 8)
    return CommitHeader(sequence, f[0], f[1], tuple(f[2:10]), f[10], f[11])


def commit_block_csum_verify(block: bytes, csum_seed: int) -> bool:
    """``jbd2_commit_block_csum_verify`` (v2/v3): ``h_chksum[0]`` is crc32c over the
    block with that word as zero."""
    if len(block) < _COMMIT.size:
        return False
    provided: int = _BE32.unpack_from(block, _COMMIT_CHKSUM_OFFSET)[0]
    crc = crc32c_le(csum_seed, block[:_COMMIT_CHKSUM_OFFSET])
    crc = crc32c_le(crc, b"\0\0\0\0")
    return crc32c_le(crc, block[_COMMIT_CHKSUM_OFFSET + 4 :]) == provided


# crc32_be (the kernel's big-endian CRC32, polynomial 0x04c11db7, no inversions), used by
# checksum v1.  It equals the bit-reversed little-endian CRC of the bit-reversed bytes,
# so zlib's fast crc32 computes it: zlib inverts before and after, which we undo.
_REVERSE8 = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def _reverse32(x: int) -> int:
    return int(f"{x & _MASK:032b}"[::-1], 2)


def crc32_be(crc: int, data: bytes) -> int:
    """The kernel's ``crc32_be(crc, data, len)``."""
    state = _reverse32(crc)
    raw = (~zlib.crc32(data.translate(_REVERSE8), (~state) & _MASK)) & _MASK
    return _reverse32(raw)
