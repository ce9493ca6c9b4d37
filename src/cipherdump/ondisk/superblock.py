"""The ext4 superblock (1024 bytes at byte offset 1024)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cipherdump.errors import ChecksumError, CorruptError, NotExt4Error
from cipherdump.ondisk import features as F
from cipherdump.ondisk.csum import crc32c_le

SUPERBLOCK_OFFSET = 1024
SUPERBLOCK_SIZE = 1024
EXT4_SUPER_MAGIC = 0xEF53

# s_flags
EXT2_FLAGS_SIGNED_HASH = 0x0001
EXT2_FLAGS_UNSIGNED_HASH = 0x0002

# s_state
EXT2_VALID_FS = 0x0001
EXT2_ERROR_FS = 0x0002
EXT3_ORPHAN_FS = 0x0004


@dataclass(frozen=True, slots=True)
class Superblock:
    s_inodes_count: int
    s_blocks_count: int
    s_r_blocks_count: int
    s_free_blocks_count: int
    s_free_inodes_count: int
    s_first_data_block: int
    s_log_block_size: int
    s_log_cluster_size: int
    s_blocks_per_group: int
    s_clusters_per_group: int
    s_inodes_per_group: int
    s_mtime: int
    s_wtime: int
    s_mnt_count: int
    s_max_mnt_count: int
    s_magic: int
    s_state: int
    s_errors: int
    s_minor_rev_level: int
    s_lastcheck: int
    s_creator_os: int
    s_rev_level: int
    s_first_ino: int
    s_inode_size: int
    s_feature_compat: int
    s_feature_incompat: int
    s_feature_ro_compat: int
    s_uuid: bytes
    s_volume_name: bytes
    s_last_mounted: bytes
    s_reserved_gdt_blocks: int
    s_journal_uuid: bytes
    s_journal_inum: int
    s_journal_dev: int
    s_last_orphan: int
    s_hash_seed: bytes
    s_def_hash_version: int
    s_desc_size: int
    s_first_meta_bg: int
    s_mkfs_time: int
    s_min_extra_isize: int
    s_want_extra_isize: int
    s_flags: int
    s_log_groups_per_flex: int
    s_checksum_type: int
    s_encrypt_algos: bytes
    s_encrypt_pw_salt: bytes
    s_lpf_ino: int
    s_checksum_seed: int
    s_encoding: int
    s_encoding_flags: int
    s_orphan_file_inum: int
    s_checksum: int
    raw: bytes

    # Geometry derived from the fields above; validated by decode_superblock.
    @property
    def block_size(self) -> int:
        return 1024 << self.s_log_block_size

    @property
    def cluster_size(self) -> int:
        # Without bigalloc the field is the old, unused fragment size: ignore it.
        if not self.s_feature_ro_compat & F.RO_COMPAT_BIGALLOC:
            return self.block_size
        return 1024 << self.s_log_cluster_size

    @property
    def is_64bit(self) -> bool:
        return bool(self.s_feature_incompat & F.INCOMPAT_64BIT)

    @property
    def desc_size(self) -> int:
        return self.s_desc_size if self.is_64bit else 32

    @property
    def inode_size(self) -> int:
        return 128 if self.s_rev_level == 0 else self.s_inode_size

    @property
    def first_ino(self) -> int:
        return 11 if self.s_rev_level == 0 else self.s_first_ino

    @property
    def group_count(self) -> int:
        span = self.s_blocks_count - self.s_first_data_block
        return (span + self.s_blocks_per_group - 1) // self.s_blocks_per_group

    @property
    def metadata_csum(self) -> bool:
        return bool(self.s_feature_ro_compat & F.RO_COMPAT_METADATA_CSUM)

    @property
    def feature_names(self) -> list[str]:
        return F.feature_names(
            self.s_feature_compat, self.s_feature_incompat, self.s_feature_ro_compat
        )

    def has_compat(self, mask: int) -> bool:
        return bool(self.s_feature_compat & mask)

    def has_incompat(self, mask: int) -> bool:
        return bool(self.s_feature_incompat & mask)

    def has_ro_compat(self, mask: int) -> bool:
        return bool(self.s_feature_ro_compat & mask)

    @property
    def dirhash_unsigned(self) -> bool:
        return bool(self.s_flags & EXT2_FLAGS_UNSIGNED_HASH)


def _u8(raw: bytes, off: int) -> int:
    return raw[off]


def _u16(raw: bytes, off: int) -> int:
    return int.from_bytes(raw[off : off + 2], "little")


def _u32(raw: bytes, off: int) -> int:
    return int.from_bytes(raw[off : off + 4], "little")


def decode_superblock(raw: bytes) -> Superblock:
    """Decode and sanity-check a superblock; raise NotExt4Error or CorruptError."""
    if len(raw) < SUPERBLOCK_SIZE:
        raise NotExt4Error("too short to hold an ext4 superblock")
    if _u16(raw, 0x38) != EXT4_SUPER_MAGIC:
        raise NotExt4Error("no ext2/3/4 superblock (bad magic number)")
    incompat = _u32(raw, 0x60)
    is64 = bool(incompat & F.INCOMPAT_64BIT)

    def lohi(lo_off: int, hi_off: int) -> int:
        lo = _u32(raw, lo_off)
        return lo | (_u32(raw, hi_off) << 32) if is64 else lo

    sb = Superblock(
        s_inodes_count=_u32(raw, 0x00),
        s_blocks_count=lohi(0x04, 0x150),
        s_r_blocks_count=lohi(0x08, 0x154),
        s_free_blocks_count=lohi(0x0C, 0x158),
        s_free_inodes_count=_u32(raw, 0x10),
        s_first_data_block=_u32(raw, 0x14),
        s_log_block_size=_u32(raw, 0x18),
        s_log_cluster_size=_u32(raw, 0x1C),
        s_blocks_per_group=_u32(raw, 0x20),
        s_clusters_per_group=_u32(raw, 0x24),
        s_inodes_per_group=_u32(raw, 0x28),
        s_mtime=_u32(raw, 0x2C),
        s_wtime=_u32(raw, 0x30),
        s_mnt_count=_u16(raw, 0x34),
        s_max_mnt_count=struct.unpack_from("<h", raw, 0x36)[0],
        s_magic=_u16(raw, 0x38),
        s_state=_u16(raw, 0x3A),
        s_errors=_u16(raw, 0x3C),
        s_minor_rev_level=_u16(raw, 0x3E),
        s_lastcheck=_u32(raw, 0x40),
        s_creator_os=_u32(raw, 0x48),
        s_rev_level=_u32(raw, 0x4C),
        s_first_ino=_u32(raw, 0x54),
        s_inode_size=_u16(raw, 0x58),
        s_feature_compat=_u32(raw, 0x5C),
        s_feature_incompat=incompat,
        s_feature_ro_compat=_u32(raw, 0x64),
        s_uuid=bytes(raw[0x68:0x78]),
        s_volume_name=bytes(raw[0x78:0x88]),
        s_last_mounted=bytes(raw[0x88:0xC8]),
        s_reserved_gdt_blocks=_u16(raw, 0xCE),
        s_journal_uuid=bytes(raw[0xD0:0xE0]),
        s_journal_inum=_u32(raw, 0xE0),
        s_journal_dev=_u32(raw, 0xE4),
        s_last_orphan=_u32(raw, 0xE8),
        s_hash_seed=bytes(raw[0xEC:0xFC]),
        s_def_hash_version=_u8(raw, 0xFC),
        s_desc_size=_u16(raw, 0xFE),
        s_first_meta_bg=_u32(raw, 0x104),
        s_mkfs_time=_u32(raw, 0x108),
        s_min_extra_isize=_u16(raw, 0x15C),
        s_want_extra_isize=_u16(raw, 0x15E),
        s_flags=_u32(raw, 0x160),
        s_log_groups_per_flex=_u8(raw, 0x174),
        s_checksum_type=_u8(raw, 0x175),
        s_encrypt_algos=bytes(raw[0x254:0x258]),
        s_encrypt_pw_salt=bytes(raw[0x258:0x268]),
        s_lpf_ino=_u32(raw, 0x268),
        s_checksum_seed=_u32(raw, 0x270),
        s_encoding=_u16(raw, 0x27C),
        s_encoding_flags=_u16(raw, 0x27E),
        s_orphan_file_inum=_u32(raw, 0x280),
        s_checksum=_u32(raw, 0x3FC),
        raw=bytes(raw[:SUPERBLOCK_SIZE]),
    )
    _validate(sb)
    return sb


def _validate(sb: Superblock) -> None:
    def bad(msg: str) -> CorruptError:
        return CorruptError(msg, structure="superblock")

    if sb.s_log_block_size > 6:
        raise bad(f"block size 2^(10+{sb.s_log_block_size}) is out of range (1 KiB..64 KiB)")
    bigalloc = sb.has_ro_compat(F.RO_COMPAT_BIGALLOC)
    if bigalloc and not sb.s_log_block_size <= sb.s_log_cluster_size <= 6 + 16:
        raise bad(f"cluster size exponent {sb.s_log_cluster_size} is invalid")
    if sb.s_rev_level > 1:
        raise bad(f"revision level {sb.s_rev_level} is not known")
    isz = sb.inode_size
    if isz < 128 or isz > sb.block_size or isz & (isz - 1):
        raise bad(f"inode size {isz} is invalid")
    if sb.s_inodes_per_group == 0 or sb.s_blocks_per_group == 0:
        raise bad("zero inodes or blocks per group")
    if sb.s_blocks_per_group > 8 * sb.block_size * (sb.cluster_size // sb.block_size):
        raise bad(f"{sb.s_blocks_per_group} blocks per group exceed one bitmap block")
    if sb.s_inodes_per_group > 8 * sb.block_size:
        raise bad(f"{sb.s_inodes_per_group} inodes per group exceed one bitmap block")
    if sb.s_blocks_count <= sb.s_first_data_block:
        raise bad("block count is not larger than the first data block")
    expected_first = 1 if sb.block_size == 1024 else 0
    if sb.s_first_data_block != expected_first and not (sb.block_size == 1024 and bigalloc):
        raise bad(f"first data block {sb.s_first_data_block} is wrong for the block size")
    if sb.is_64bit:
        ds = sb.s_desc_size
        if ds < 32 or ds > 1024 or ds & (ds - 1):
            raise bad(f"group descriptor size {ds} is invalid")
    groups = sb.group_count
    if sb.s_inodes_count > groups * sb.s_inodes_per_group or sb.s_inodes_count == 0:
        raise bad(
            f"inode count {sb.s_inodes_count} does not fit {groups} groups of "
            f"{sb.s_inodes_per_group}"
        )
    if sb.has_incompat(F.INCOMPAT_META_BG) and sb.s_first_meta_bg > groups:
        raise bad(f"first meta_bg {sb.s_first_meta_bg} is beyond the {groups} groups")
    if sb.s_rev_level >= 1 and sb.s_first_ino < 11 and sb.s_first_ino != 0:
        raise bad(f"first non-reserved inode {sb.s_first_ino} is invalid")


def superblock_csum_verify(sb: Superblock) -> None:
    """Raise ChecksumError if metadata_csum is on and the superblock checksum is wrong."""
    if not sb.metadata_csum:
        return
    want = crc32c_le(0xFFFFFFFF, sb.raw[:0x3FC])
    if want != sb.s_checksum:
        raise ChecksumError(
            f"superblock checksum 0x{sb.s_checksum:08x} != computed 0x{want:08x}",
            structure="superblock",
            location="byte 1024",
        )


def superblock_csum_set(raw: bytearray) -> None:
    """Store the metadata_csum of a 1024-byte superblock in place."""
    struct.pack_into("<I", raw, 0x3FC, crc32c_le(0xFFFFFFFF, bytes(raw[:0x3FC])))
