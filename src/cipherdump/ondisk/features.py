"""Feature flag bits of the ext4 superblock, with the names ``mke2fs -O`` uses."""

from __future__ import annotations

COMPAT = {
    0x0001: "dir_prealloc",
    0x0002: "imagic_inodes",
    0x0004: "has_journal",
    0x0008: "ext_attr",
    0x0010: "resize_inode",
    0x0020: "dir_index",
    0x0040: "lazy_bg",
    0x0080: "exclude_inode",
    0x0100: "exclude_bitmap",
    0x0200: "sparse_super2",
    0x0400: "fast_commit",
    0x0800: "stable_inodes",
    0x1000: "orphan_file",
}
RO_COMPAT = {
    0x0001: "sparse_super",
    0x0002: "large_file",
    0x0004: "btree_dir",
    0x0008: "huge_file",
    0x0010: "uninit_bg",
    0x0020: "dir_nlink",
    0x0040: "extra_isize",
    0x0080: "snapshot",
    0x0100: "quota",
    0x0200: "bigalloc",
    0x0400: "metadata_csum",
    0x0800: "replica",
    0x1000: "read-only",
    0x2000: "project",
    0x4000: "shared_blocks",
    0x8000: "verity",
    0x10000: "orphan_present",
}
INCOMPAT = {
    0x0001: "compression",
    0x0002: "filetype",
    0x0004: "needs_recovery",
    0x0008: "journal_dev",
    0x0010: "meta_bg",
    0x0040: "extent",
    0x0080: "64bit",
    0x0100: "mmp",
    0x0200: "flex_bg",
    0x0400: "ea_inode",
    0x1000: "dirdata",
    0x2000: "metadata_csum_seed",
    0x4000: "large_dir",
    0x8000: "inline_data",
    0x10000: "encrypt",
    0x20000: "casefold",
}

# Incompat features a read-only reader can handle.  Anything else changes the meaning
# of on-disk structures in ways we do not implement, so the filesystem is refused.
READABLE_INCOMPAT = (
    0x0002
    | 0x0004
    | 0x0010
    | 0x0040
    | 0x0080
    | 0x0100
    | 0x0200
    | 0x0400
    | 0x2000
    | 0x4000
    | 0x8000
    | 0x10000
    | 0x20000
)

COMPAT_HAS_JOURNAL = 0x0004
COMPAT_EXT_ATTR = 0x0008
COMPAT_DIR_INDEX = 0x0020
COMPAT_STABLE_INODES = 0x0800
RO_COMPAT_HUGE_FILE = 0x0008
RO_COMPAT_DIR_NLINK = 0x0020
RO_COMPAT_GDT_CSUM = 0x0010
RO_COMPAT_BIGALLOC = 0x0200
RO_COMPAT_METADATA_CSUM = 0x0400
RO_COMPAT_ORPHAN_PRESENT = 0x10000
INCOMPAT_FILETYPE = 0x0002
INCOMPAT_RECOVER = 0x0004
INCOMPAT_JOURNAL_DEV = 0x0008
INCOMPAT_META_BG = 0x0010
INCOMPAT_EXTENTS = 0x0040
INCOMPAT_64BIT = 0x0080
INCOMPAT_EA_INODE = 0x0400
INCOMPAT_CSUM_SEED = 0x2000
INCOMPAT_LARGE_DIR = 0x4000
INCOMPAT_INLINE_DATA = 0x8000
INCOMPAT_ENCRYPT = 0x10000
INCOMPAT_CASEFOLD = 0x20000


def feature_names(compat: int, incompat: int, ro_compat: int) -> list[str]:
    """Names in ``dumpe2fs`` order: compat, then incompat, then ro_compat; unknown as hex."""
    out: list[str] = []
    for value, table, kind in (
        (compat, COMPAT, "compat"),
        (incompat, INCOMPAT, "incompat"),
        (ro_compat, RO_COMPAT, "ro_compat"),
    ):
        for bit in range(32):
            mask = 1 << bit
            if value & mask:
                out.append(table.get(mask, f"{kind}_0x{mask:x}"))
    return out
