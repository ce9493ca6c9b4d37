"""Logical-to-physical block maps: extent trees and ext2/3 indirect block maps.

Both produce a sorted list of :class:`Run` covering every mapped block, with holes made
explicit up to the end of ``i_size``.  Hostile maps (loops, out-of-range pointers,
absurd logical offsets) raise CorruptError; nothing is allocated in proportion to a
logical block number or ``i_size``.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from cipherdump.errors import ChecksumError, CorruptError
from cipherdump.ondisk.csum import crc32c_le, inode_csum_seed
from cipherdump.ondisk.extent import (
    EXT4_MAX_EXTENT_DEPTH,
    ExtentNode,
    decode_extent_node,
    extent_tail_offset,
)

if TYPE_CHECKING:
    from cipherdump.ext4.inode import Inode, Run

# ext4 logical block numbers are 32-bit.
_MAX_LBLK = 1 << 32


def map_runs(inode: Inode) -> list[Run]:
    from cipherdump.ext4.inode import Run

    if inode.has_inline_data or inode.is_fast_symlink:
        return []
    if inode.type.value in ("chardev", "blockdev", "fifo", "socket"):
        return []
    if inode.uses_extents:
        mapped = _extent_runs(inode)
    else:
        mapped = _blockmap_runs(inode)
    mapped.sort(key=lambda r: r.lblk)
    out: list[Run] = []
    pos = 0
    for r in mapped:
        if r.lblk < pos:
            raise CorruptError(
                f"overlapping mappings at logical block {r.lblk}",
                structure="block map",
                location=f"inode {inode.ino}",
            )
        if r.lblk > pos:
            out.append(Run(pos, r.lblk - pos, None))
        out.append(r)
        pos = r.lblk + r.length
    bs = inode.fs.block_size
    end = min((inode.size + bs - 1) // bs, _MAX_LBLK)
    if end > pos:
        out.append(Run(pos, end - pos, None))
    return out


def _extent_runs(inode: Inode) -> list[Run]:
    from cipherdump.ext4.inode import Run

    fs = inode.fs
    where = f"inode {inode.ino}"
    root = decode_extent_node(inode.raw.i_block, where)
    # Only index blocks are checksummed apart from the inode: most files need no seed.
    seed = (
        inode_csum_seed(fs.csum_seed, inode.ino, inode.generation)
        if root.eh_depth and fs.sb.metadata_csum
        else None
    )
    out: list[Run] = []
    visited: set[int] = set()
    # Every block of a file is a distinct block of the filesystem, so a tree that maps
    # more than the filesystem holds reuses blocks: stop it before it drives work or
    # memory (a few index blocks can otherwise map billions of logical blocks).
    budget = [fs.sb.s_blocks_count]

    def walk(node: ExtentNode, depth_expected: int | None, lo: int, hi: int, at: str) -> None:
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
                budget[0] -= e.length
                if budget[0] < 0:
                    raise CorruptError(
                        "extents map more blocks than the filesystem has",
                        structure="extent",
                        location=at,
                    )
                out.append(Run(e.ee_block, e.length, e.start, e.unwritten))
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


def _blockmap_runs(inode: Inode) -> list[Run]:
    from cipherdump.ext4.inode import Run

    fs = inode.fs
    where = f"inode {inode.ino}"
    bs = fs.block_size
    per = bs // 4
    ptrs = struct.unpack("<15I", inode.raw.i_block)
    out: list[Run] = []
    # A file cannot map more blocks than its i_blocks counts, which bounds the work a
    # hostile map can cause (self-references, huge fan-out of garbage pointers).
    # Nor can it map more blocks than the filesystem has (i_blocks is 48 bits wide).
    budget = [min(max(inode.blocks_512 // (bs // 512), 0), fs.sb.s_blocks_count) + 16]
    seen: set[int] = set()

    def add(lblk: int, pblk: int) -> None:
        if not fs.block_in_range(pblk):
            raise CorruptError(
                f"block pointer {pblk} at logical {lblk} is outside the filesystem",
                structure="block map",
                location=where,
            )
        budget[0] -= 1
        if budget[0] < 0:
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
            out[-1] = Run(last.lblk, last.length + 1, last.pblk)
        else:
            out.append(Run(lblk, 1, pblk))

    def indirect(pblk: int, level: int, lblk: int) -> None:
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
        budget[0] -= 1
        if budget[0] < 0:
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
