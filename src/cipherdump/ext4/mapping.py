"""Logical-to-physical block maps: extent trees and ext2/3 indirect block maps.

Both produce a sorted list of :class:`Run` covering every mapped block, with holes made
explicit up to the end of ``i_size``.  Hostile maps (loops, out-of-range pointers,
absurd logical offsets) raise CorruptError; nothing is allocated in proportion to a
logical block number or ``i_size``.
"""

from __future__ import annotations

import stat
import struct
from operator import attrgetter
from typing import TYPE_CHECKING

from cipherdump.errors import ChecksumError, CorruptError
from cipherdump.ext4.volume import Run
from cipherdump.ondisk import features as F
from cipherdump.ondisk.csum import crc32c_le, inode_csum_seed
from cipherdump.ondisk.extent import (
    EXT4_EXT_MAGIC,
    EXT4_MAX_EXTENT_DEPTH,
    EXT_INIT_MAX_LEN,
    ExtentNode,
    decode_extent_node,
    extent_tail_offset,
)
from cipherdump.ondisk.inode import (
    EXT4_EXTENTS_FL,
    EXT4_HUGE_FILE_FL,
    EXT4_INLINE_DATA_FL,
    RawInode,
)
from cipherdump.ondisk.records import record_maker
from cipherdump.ondisk.superblock import Superblock

if TYPE_CHECKING:
    from cipherdump.ext4.volume import Volume

__all__ = ["Run", "blocks_512", "is_fast_symlink", "map_runs", "read_mapped"]


_make_run = record_maker(Run)
_by_lblk = attrgetter("lblk")

# ext4 logical block numbers are 32-bit.
_MAX_LBLK = 1 << 32
# Inodes of these types map no blocks, whatever their i_block holds.
_UNMAPPED_TYPES = frozenset((stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK))
# An extent tree node as ondisk.extent decodes it: the header, then 12-byte leaf entries.
_EXTENT_HEADER = struct.Struct("<HHHHI")  # magic, entries, max, depth, generation
_EXTENT_LEAF = struct.Struct("<IHHI")  # ee_block, ee_len, ee_start_hi, ee_start_lo


def map_runs(vol: Volume, ino: int, raw: RawInode) -> list[Run]:
    fmt = stat.S_IFMT(raw.i_mode)
    if raw.i_flags & EXT4_INLINE_DATA_FL or (fmt == stat.S_IFLNK and is_fast_symlink(vol.sb, raw)):
        return []
    if fmt in _UNMAPPED_TYPES:
        return []
    if raw.i_flags & EXT4_EXTENTS_FL:
        mapped = _extent_runs(vol, ino, raw)
    else:
        mapped = _blockmap_runs(vol, ino, raw)
    if len(mapped) > 1:
        mapped.sort(key=_by_lblk)
    out: list[Run] = []
    pos = 0
    for r in mapped:
        if r.lblk < pos:
            raise CorruptError(
                f"overlapping mappings at logical block {r.lblk}",
                structure="block map",
                location=f"inode {ino}",
            )
        if r.lblk > pos:
            out.append(_make_run(pos, r.lblk - pos, None, False))
        out.append(r)
        pos = r.lblk + r.length
    bs = vol.block_size
    end = min((raw.i_size + bs - 1) // bs, _MAX_LBLK)
    if end > pos:
        out.append(_make_run(pos, end - pos, None, False))
    return out


def _extent_runs(vol: Volume, ino: int, raw: RawInode) -> list[Run]:
    """The mapped runs of an extent tree, in tree order.

    A root that is a valid leaf (the extents of most files) is read here, with the
    checks :func:`_extent_tree_runs` makes of a leaf, in the same order and with the
    same errors; any other root goes there.
    """
    i_block = raw.i_block
    if len(i_block) < 12:
        return _extent_tree_runs(vol, ino, raw)
    magic, entries, emax, depth, _ = _EXTENT_HEADER.unpack_from(i_block, 0)
    if depth or magic != EXT4_EXT_MAGIC or not entries <= emax <= (len(i_block) - 12) // 12:
        return _extent_tree_runs(vol, ino, raw)
    sb = vol.sb
    first, total = sb.s_first_data_block, sb.s_blocks_count
    budget = total
    out: list[Run] = []
    for lblk, length, start_hi, start_lo in _EXTENT_LEAF.iter_unpack(
        i_block[12 : 12 + 12 * entries]
    ):
        unwritten = length > EXT_INIT_MAX_LEN
        if unwritten:
            length -= EXT_INIT_MAX_LEN
        if length == 0:
            continue  # a zero-length extent maps nothing (e2fsck removes them)
        start = start_hi << 32 | start_lo
        if lblk + length > _MAX_LBLK:
            raise CorruptError(
                f"extent at logical {lblk} lies outside its index range",
                structure="extent",
                location=f"inode {ino}",
            )
        if start < first or start + length > total:  # Filesystem.block_in_range
            raise CorruptError(
                f"extent points to blocks {start}+{length} outside the filesystem",
                structure="extent",
                location=f"inode {ino}",
            )
        budget -= length
        if budget < 0:
            raise CorruptError(
                "extents map more blocks than the filesystem has",
                structure="extent",
                location=f"inode {ino}",
            )
        out.append(_make_run(lblk, length, start, unwritten))
    return out


def _extent_tree_runs(vol: Volume, ino: int, raw: RawInode) -> list[Run]:
    fs = vol
    where = f"inode {ino}"
    root = decode_extent_node(raw.i_block, where)
    # Only index blocks are checksummed apart from the inode: most files need no seed.
    seed = (
        inode_csum_seed(fs.csum_seed, ino, raw.i_generation)
        if root.eh_depth and fs.sb.metadata_csum
        else None
    )
    out: list[Run] = []
    visited: set[int] = set()
    # Every block of a file is a distinct block of the filesystem, so a tree that maps
    # more than the filesystem holds reuses blocks: stop it before it drives work or
    # memory (a few index blocks can otherwise map billions of logical blocks).
    budget = fs.sb.s_blocks_count

    def walk(node: ExtentNode, depth_expected: int | None, lo: int, hi: int, at: str) -> None:
        nonlocal budget
        if depth_expected is not None and node.eh_depth != depth_expected:
            raise CorruptError(
                f"depth {node.eh_depth}, expected {depth_expected}",
                structure="extent header",
                location=at,
            )
        if node.eh_depth == 0:
            for e in node.extents:
                if e.length == 0:
                    continue  # a zero-length extent maps nothing (e2fsck removes them)
                if e.ee_block < lo or e.ee_block + e.length > hi:
                    raise CorruptError(
                        f"extent at logical {e.ee_block} lies outside its index range",
                        structure="extent",
                        location=at,
                    )
                if not fs.block_in_range(e.start, e.length):
                    raise CorruptError(
                        f"extent points to blocks {e.start}+{e.length} outside the filesystem",
                        structure="extent",
                        location=at,
                    )
                budget -= e.length
                if budget < 0:
                    raise CorruptError(
                        "extents map more blocks than the filesystem has",
                        structure="extent",
                        location=at,
                    )
                out.append(_make_run(e.ee_block, e.length, e.start, e.unwritten))
            return
        idx = node.indexes
        for i, ix in enumerate(idx):
            next_lo = idx[i + 1].ei_block if i + 1 < len(idx) else hi
            if ix.ei_block < lo or next_lo > hi or next_lo < ix.ei_block:
                raise CorruptError(
                    f"index entry at logical {ix.ei_block} is out of order",
                    structure="extent index",
                    location=at,
                )
            if ix.leaf in visited or not fs.block_in_range(ix.leaf):
                raise CorruptError(
                    f"index points to block {ix.leaf} (loop or outside the filesystem)",
                    structure="extent index",
                    location=at,
                )
            visited.add(ix.leaf)
            block = fs.read_block(ix.leaf)
            child_at = f"{where} extent block {ix.leaf}"
            if seed is not None:
                _verify_extent_block(block, seed, child_at)
            walk(
                decode_extent_node(block, child_at),
                node.eh_depth - 1,
                ix.ei_block,
                next_lo,
                child_at,
            )

    if root.eh_depth > EXT4_MAX_EXTENT_DEPTH:
        raise CorruptError("extent tree too deep", structure="extent header", location=where)
    walk(root, None, 0, _MAX_LBLK, where)  # the root is decoded once
    return out


def _verify_extent_block(block: bytes, seed: int, where: str) -> None:
    node = decode_extent_node(block, where)
    tail = extent_tail_offset(node.eh_max)
    if tail + 4 > len(block):
        return
    (stored,) = struct.unpack_from("<I", block, tail)
    want = crc32c_le(seed, block[:tail])
    if stored != want:
        raise ChecksumError(
            f"checksum 0x{stored:08x} != computed 0x{want:08x}",
            structure="extent block",
            location=where,
        )


def _blockmap_runs(vol: Volume, ino: int, raw: RawInode) -> list[Run]:
    fs = vol
    where = f"inode {ino}"
    bs = fs.block_size
    per = bs // 4
    ptrs = struct.unpack("<15I", raw.i_block)
    out: list[Run] = []
    # A file cannot map more blocks than its i_blocks counts, which bounds the work a
    # hostile map can cause (self-references, huge fan-out of garbage pointers).
    # Nor can it map more blocks than the filesystem has (i_blocks is 48 bits wide).
    budget = min(max(blocks_512(vol.sb, raw, bs) // (bs // 512), 0), fs.sb.s_blocks_count) + 16
    seen: set[int] = set()

    def add(lblk: int, pblk: int) -> None:
        nonlocal budget
        if not fs.block_in_range(pblk):
            raise CorruptError(
                f"block pointer {pblk} at logical {lblk} is outside the filesystem",
                structure="block map",
                location=where,
            )
        budget -= 1
        if budget < 0:
            raise CorruptError(
                "block map maps more blocks than i_blocks accounts for",
                structure="block map",
                location=where,
            )
        if (
            out
            and out[-1].pblk is not None
            and (out[-1].lblk + out[-1].length == lblk and out[-1].pblk + out[-1].length == pblk)
        ):
            last = out[-1]
            out[-1] = _make_run(last.lblk, last.length + 1, last.pblk, False)
        else:
            out.append(_make_run(lblk, 1, pblk, False))

    def indirect(pblk: int, level: int, lblk: int) -> None:
        nonlocal budget
        if pblk in seen:
            raise CorruptError(
                f"indirect block {pblk} is referenced twice", structure="block map", location=where
            )
        if not fs.block_in_range(pblk):
            raise CorruptError(
                f"indirect block {pblk} is outside the filesystem",
                structure="block map",
                location=where,
            )
        seen.add(pblk)
        budget -= 1
        if budget < 0:
            raise CorruptError(
                "block map maps more blocks than i_blocks accounts for",
                structure="block map",
                location=where,
            )
        entries = struct.unpack(f"<{per}I", fs.read_block(pblk))
        span = per ** (level - 1)
        for i, p in enumerate(entries):
            if not p:
                continue
            child = lblk + i * span
            if level == 1:
                add(child, p)
            else:
                indirect(p, level - 1, child)

    for i in range(12):
        if ptrs[i]:
            add(i, ptrs[i])
    base = 12
    for level, p in ((1, ptrs[12]), (2, ptrs[13]), (3, ptrs[14])):
        if p:
            indirect(p, level, base)
        base += per**level
    return [r for r in out if r.lblk < _MAX_LBLK]


# A fast symlink keeps its target in i_block, whose 60 bytes bound the target length.
FAST_SYMLINK_MAX = 60


def blocks_512(sb: Superblock, raw: RawInode, block_size: int) -> int:
    """``st_blocks``: 512-byte units, whatever the huge_file encoding on disk."""
    if not sb.s_feature_ro_compat & F.RO_COMPAT_HUGE_FILE:
        # Like the kernel: without huge_file, l_i_blocks_high means nothing.
        return raw.i_blocks & 0xFFFFFFFF
    if raw.i_flags & EXT4_HUGE_FILE_FL:
        return raw.i_blocks * (block_size // 512)
    return raw.i_blocks


def is_fast_symlink(sb: Superblock, raw: RawInode) -> bool:
    """Target in ``i_block``: decided the way the kernel decides it.

    Like ``ext4_inode_is_fast_symlink``: with the ea_inode feature by ``i_size``
    alone, otherwise by an ``i_blocks`` that counts nothing but the xattr block (one
    cluster).  Neither the extents flag nor the encrypt flag enters into it.
    """
    if stat.S_IFMT(raw.i_mode) != stat.S_IFLNK or raw.i_flags & EXT4_INLINE_DATA_FL:
        return False
    if sb.has_incompat(F.INCOMPAT_EA_INODE):
        return 0 < raw.i_size < FAST_SYMLINK_MAX
    ea_blocks = (sb.cluster_size // 512) if raw.i_file_acl else 0
    return blocks_512(sb, raw, sb.block_size) == ea_blocks


def read_mapped(vol: Volume, runs: list[Run], start: int, end: int) -> bytes:
    """Stored bytes of [start, end) by the block map ``runs``, not capped at any size;
    holes and unwritten extents read as zeros."""
    bs = vol.block_size
    out = bytearray()
    first = start // bs
    last = (end - 1) // bs
    for run in runs:
        if run.lblk + run.length <= first or run.lblk > last:
            continue
        lo = max(run.lblk, first)
        hi = min(run.lblk + run.length - 1, last)
        want_pos = lo * bs
        cur = first * bs + len(out)
        if want_pos > cur:
            out += bytes(want_pos - cur)
        count = hi - lo + 1
        if run.pblk is None or run.unwritten:
            out += bytes(count * bs)
        else:
            out += vol.read_block(run.pblk + (lo - run.lblk), count)
    total = (last - first + 1) * bs
    if len(out) < total:
        out += bytes(total - len(out))
    skip = start - first * bs
    return bytes(out[skip : skip + (end - start)])
