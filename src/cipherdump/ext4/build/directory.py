"""Directory blocks from raw entries: one linear block, or an htree over the raw names.

Names are written as given (ciphertext in encrypted directories).  Htree hashes are
computed over those bytes with the *target's* seed and hash version, as the kernel does
for encrypted directories; casefolded+encrypted directories use the stored per-entry
hashes (SipHash, keyed by the directory key, which a key-less writer cannot recompute).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cipherdump.errors import UnsupportedError
from cipherdump.ondisk.dirent import (
    DIRENT_TAIL_SIZE,
    DX_NODE_COUNT_OFFSET,
    DX_ROOT_COUNT_OFFSET,
    EXT4_FT_DIR,
    dirblock_csum_set,
    dirent_rec_len,
    dx_csum_set,
    dx_node_limit,
    dx_root_limit,
    encode_dirent,
    encode_dirent_tail,
    encode_dx_entries,
    encode_dx_root_info,
)
from cipherdump.ondisk.dirhash import ext4_dirhash

DX_HASH_SIPHASH = 6


@dataclass(frozen=True, slots=True)
class NewEntry:
    name: bytes
    ino: int
    file_type: int
    hash: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class DirLayout:
    blocks: list[bytearray]
    indexed: bool


@dataclass(frozen=True, slots=True)
class HashParams:
    version: int
    seed: bytes
    signed: bool


def _pack(
    entries: list[NewEntry], area: int, first_used: int, hashed: bool
) -> list[list[NewEntry]]:
    """Greedy fill of blocks with ``area`` bytes for entries (``first_used`` taken in #0)."""
    out: list[list[NewEntry]] = [[]]
    used = first_used
    for e in entries:
        need = dirent_rec_len(len(e.name), hashed and e.hash is not None)
        if used + need > area:
            out.append([])
            used = 0
        out[-1].append(e)
        used += need
    return out


def _encode_block(
    entries: list[NewEntry], bs: int, csum_seed: int | None, hashed: bool,
    prefix: Sequence[NewEntry] = (),
) -> bytearray:  # fmt: skip
    area = bs - (DIRENT_TAIL_SIZE if csum_seed is not None else 0)
    allents = list(prefix) + entries
    block = bytearray(bs)
    pos = 0
    if not allents:
        block[0:area] = encode_dirent(0, b"", 0, area, bs)
    for i, e in enumerate(allents):
        dot = e.name in (b".", b"..") and i < len(prefix)
        use_hash = e.hash if (hashed and not dot) else None
        rec = dirent_rec_len(len(e.name), use_hash is not None)
        if i == len(allents) - 1:
            rec = area - pos
        block[pos : pos + rec] = encode_dirent(e.ino, e.name, e.file_type, rec, bs, use_hash)
        pos += rec
    if csum_seed is not None:
        block[area:] = encode_dirent_tail(bs)
        dirblock_csum_set(block, csum_seed)
    return block


def layout_directory(
    ino: int, parent: int, entries: list[NewEntry], *, block_size: int, csum_seed: int | None,
    hashed: bool, hash_params: HashParams | None, max_levels: int, filetype: bool,
) -> DirLayout:  # fmt: skip
    """Blocks of a directory holding ``.``, ``..`` and ``entries``.

    ``hash_params`` None means the directory cannot be indexed (no dir_index, or a
    casefolded unencrypted directory whose hash needs Unicode folding): several blocks
    are then written linear, which the kernel and e2fsck accept.
    """
    bs = block_size
    ft_dir = EXT4_FT_DIR if filetype else 0
    dots = [NewEntry(b".", ino, ft_dir), NewEntry(b"..", parent, ft_dir)]
    area = bs - (DIRENT_TAIL_SIZE if csum_seed is not None else 0)
    if hashed and any(e.hash is None for e in entries):
        raise UnsupportedError(f"directory inode {ino}: entries lack their stored casefold hash")
    linear = _pack(entries, area, 24, hashed)
    if len(linear) == 1 or hash_params is None:
        blocks = [
            _encode_block(part, bs, csum_seed, hashed, dots if k == 0 else [])
            for k, part in enumerate(linear)
        ]
        return DirLayout(blocks, False)
    return _htree(ino, dots, entries, bs, csum_seed, hashed, hash_params, max_levels, area)


def _htree(
    ino: int, dots: list[NewEntry], entries: list[NewEntry], bs: int, csum_seed: int | None,
    hashed: bool, hp: HashParams, max_levels: int, area: int,
) -> DirLayout:  # fmt: skip
    csum = csum_seed is not None
    # Sorted as plain ints, (hash << 32 | minor) << 24 | position, not as tuples: a
    # directory of millions of entries sorts in a fraction of the memory.
    if hashed:
        version = DX_HASH_SIPHASH
    else:
        version = hp.version
    if len(entries) >= 1 << 24:
        raise UnsupportedError(f"directory inode {ino}: more than {(1 << 24) - 1} entries")
    keys: list[int] = []
    for k, e in enumerate(entries):
        h, minor = (
            (e.hash or (0, 0)) if hashed else ext4_dirhash(e.name, hp.version, hp.seed, hp.signed)
        )
        keys.append(((h << 32 | minor) << 24) | k)
    keys.sort()
    leaves: list[list[NewEntry]] = [[]]
    firsts: list[int] = [0]
    used = 0
    last_hash = -1
    for key in keys:
        h, e = key >> 56, entries[key & 0xFFFFFF]
        need = dirent_rec_len(len(e.name), hashed)
        if used + need > area:
            leaves.append([])
            # The continuation bit says the previous leaf ends with this same hash.
            firsts.append(h | 1 if h == last_hash else h)
            used = 0
        leaves[-1].append(e)
        used += need
        last_hash = h
    del keys
    root_limit = dx_root_limit(bs, csum)
    # Interior nodes of a casefolded encrypted directory hold one entry fewer: the
    # kernel counts a stored hash in their fake dirent, and rejects any other limit.
    node_limit = dx_node_limit(bs, csum, hashed)
    # Levels of index nodes, bottom-up: each is a list of nodes, a node a list of
    # (hash, child position) pairs.
    levels: list[list[list[tuple[int, int]]]] = []
    current = [(firsts[i], i) for i in range(len(leaves))]
    while len(current) > root_limit:
        nodes = [current[i : i + node_limit] for i in range(0, len(current), node_limit)]
        levels.append(nodes)
        current = [(node[0][0], k) for k, node in enumerate(nodes)]
    if len(levels) > max_levels:
        raise UnsupportedError(
            f"directory inode {ino} needs {len(levels) + 1} htree levels "
            f"(the target allows {max_levels + 1}); enable large_dir"
        )
    # Logical block numbers: root 0, then index nodes top level first, then leaves.
    nxt = 1
    level_base: list[int] = [0] * len(levels)
    for depth in range(len(levels) - 1, -1, -1):
        level_base[depth] = nxt
        nxt += len(levels[depth])
    leaf_base = nxt
    blocks: list[bytearray] = [bytearray(bs) for _ in range(leaf_base + len(leaves))]

    def child_block(depth: int, pos: int) -> int:
        # Children of level ``depth`` nodes: leaves for depth 0, else level depth-1 nodes.
        return leaf_base + pos if depth == 0 else level_base[depth - 1] + pos

    for depth, nodes in enumerate(levels):
        for k, node in enumerate(nodes):
            block = blocks[level_base[depth] + k]
            block[0:8] = encode_dirent(0, b"", 0, bs, bs)[:8]
            pairs = [(h & ~1 if i == 0 else h, child_block(depth, pos)) for i, (h, pos) in
                     enumerate(node)]  # fmt: skip
            encode_dx_entries(block, DX_NODE_COUNT_OFFSET, node_limit, pairs)
            if csum_seed is not None:
                dx_csum_set(block, DX_NODE_COUNT_OFFSET, csum_seed)
    root = blocks[0]
    root[0:12] = encode_dirent(dots[0].ino, b".", dots[0].file_type, 12, bs)
    root[12:24] = encode_dirent(dots[1].ino, b"..", dots[1].file_type, bs - 12, bs)[:12]
    encode_dx_root_info(root, version, len(levels))
    top = len(levels)
    root_pairs = [(h, child_block(top, pos)) for h, pos in current]
    encode_dx_entries(root, DX_ROOT_COUNT_OFFSET, root_limit, root_pairs)
    if csum_seed is not None:
        dx_csum_set(root, DX_ROOT_COUNT_OFFSET, csum_seed)
    for k, leaf in enumerate(leaves):
        blocks[leaf_base + k] = _encode_block(leaf, bs, csum_seed, hashed)
    return DirLayout(blocks, True)
