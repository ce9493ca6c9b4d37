"""Extent trees of any depth: leaves in ``i_block`` or in blocks, index levels above."""

from __future__ import annotations

from cipherdump.ext4.build.image import ImageWriter
from cipherdump.ondisk.extent import (
    EXT_INIT_MAX_LEN,
    EXT_UNWRITTEN_MAX_LEN,
    Extent,
    ExtentIndex,
    encode_extent_node,
    extent_block_csum_set,
)

_ROOT_SLOTS = 4


def split_extents(runs: list[tuple[int, int, int, bool]]) -> list[Extent]:
    """``(lblk, length, pblk, unwritten)`` runs as extents within the length limits."""
    out: list[Extent] = []
    for lblk, length, pblk, unwritten in runs:
        cap = EXT_UNWRITTEN_MAX_LEN if unwritten else EXT_INIT_MAX_LEN
        while length:
            n = min(length, cap)
            prev = out[-1] if out else None
            if (
                prev is not None
                and prev.unwritten == unwritten
                and prev.ee_block + prev.length == lblk
                and prev.start + prev.length == pblk
                and prev.length + n <= cap
            ):
                out[-1] = Extent(prev.ee_block, prev.length + n, prev.start, unwritten)
            else:
                out.append(Extent(lblk, n, pblk, unwritten))
            lblk += n
            pblk += n
            length -= n
    return out


def write_extent_tree(
    w: ImageWriter, ino: int, generation: int, extents: list[Extent]
) -> tuple[bytes, int]:
    """The 60-byte ``i_block`` root and how many tree blocks were allocated for it."""
    if len(extents) <= _ROOT_SLOTS:
        return bytes(encode_extent_node(0, _ROOT_SLOTS, extents=extents)), 0
    bs = w.block_size
    per_block = (bs - 12) // 12
    seed = w.inode_seed(ino, generation) if w.metadata_csum else None
    tree_blocks = 0
    level: list[tuple[int, list[Extent] | list[ExtentIndex]]] = []
    for i in range(0, len(extents), per_block):
        part = extents[i : i + per_block]
        level.append((part[0].ee_block, part))
    depth = 0
    while True:
        # Write this level's nodes as blocks; their index entries form the next level.
        runs = w.alloc_blocks(len(level))
        pblks = [start + k for start, n in runs for k in range(n)]
        tree_blocks += len(level)
        uppers: list[ExtentIndex] = []
        for (first, entries), pblk in zip(level, pblks, strict=True):
            if depth == 0:
                leaf = [e for e in entries if isinstance(e, Extent)]
                node = encode_extent_node(0, per_block, extents=leaf, size=bs)
            else:
                index = [e for e in entries if isinstance(e, ExtentIndex)]
                node = encode_extent_node(depth, per_block, indexes=index, size=bs)
            if seed is not None:
                extent_block_csum_set(node, seed)
            w.write_blocks(pblk, node)
            uppers.append(ExtentIndex(first, pblk))
        depth += 1
        level = [
            (uppers[i].ei_block, uppers[i : i + per_block])
            for i in range(0, len(uppers), per_block)
        ]
        if len(uppers) <= _ROOT_SLOTS:
            root = encode_extent_node(depth, _ROOT_SLOTS, indexes=uppers)
            return bytes(root), tree_blocks
