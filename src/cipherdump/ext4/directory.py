"""Directory reading: linear and htree blocks, inline directories, raw name bytes.

Htree directories are read block by block like the kernel's linear readdir: index
blocks hide behind a fake entry with inode 0 spanning the block, so a linear scan sees
every leaf entry exactly once and survives damaged index nodes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cipherdump.errors import ChecksumError, CorruptError
from cipherdump.ondisk.csum import crc32c_le, inode_csum_seed
from cipherdump.ondisk.dirent import (
    DIRENT_TAIL_SIZE,
    Dirent,
    decode_dirents,
    has_csum_tail,
    rec_len_from_disk,
)

if TYPE_CHECKING:
    from cipherdump.ext4.inode import Inode

# Bound on directory size in blocks; a real directory of millions of entries stays far
# below it, a hostile i_size does not drive the loop.
_MAX_DIR_BLOCKS = 1 << 24


@dataclass(frozen=True, slots=True)
class Entry:
    """A directory entry: raw name bytes, inode number, dirent file type.

    ``hash`` is the (hash, minor_hash) stored in casefold+encrypt directories.
    """

    name: bytes
    ino: int
    file_type: int
    hash: tuple[int, int] | None = None


def read_entries(dir_inode: Inode) -> list[Entry]:
    if not dir_inode.is_dir:
        raise CorruptError(
            "not a directory", structure="directory", location=f"inode {dir_inode.ino}"
        )
    fs = dir_inode.fs
    hashed = dir_inode.is_encrypted and dir_inode.is_casefolded
    filetype = fs.has_filetype
    where = f"directory inode {dir_inode.ino}"
    if dir_inode.has_inline_data:
        data = dir_inode.inline_data()
        # The first 4 bytes of i_block hold the parent inode; entries follow.
        parent = struct.unpack_from("<I", data, 0)[0]
        raw_entries = [Dirent(parent, b"..", 2, 0, 4)]
        raw_entries += decode_dirents(
            data[4:60],
            block_size=fs.block_size,
            where=where,
            filetype=filetype,
            hashed=hashed,
            base=4,
        )
        if len(data) > 60:
            raw_entries += decode_dirents(
                data[60:],
                block_size=fs.block_size,
                where=where + " (system.data)",
                filetype=filetype,
                hashed=hashed,
                base=60,
            )
        return _public(raw_entries)
    seed = (
        inode_csum_seed(fs.csum_seed, dir_inode.ino, dir_inode.generation)
        if fs.sb.metadata_csum
        else None
    )
    out: list[Dirent] = []
    bs = fs.block_size
    nblocks = 0
    for run in dir_inode.runs:
        if run.pblk is None:
            continue  # holes in directories read as nothing (the kernel skips them too)
        if run.unwritten:
            continue
        for k in range(run.length):
            nblocks += 1
            if nblocks > _MAX_DIR_BLOCKS:
                raise CorruptError("directory is implausibly large", location=where)
            lblk = run.lblk + k
            if lblk * bs >= dir_inode.size:
                break
            block = fs.read_block(run.pblk + k)
            at = f"{where} block {lblk}"
            if _is_dx_node(block, bs, lblk, dir_inode.is_indexed_dir):
                continue
            if lblk == 0 and dir_inode.is_indexed_dir:
                # Block 0 of an htree holds '.', '..' and the dx_root behind '..'; the
                # rest of the block may be stale bytes from before indexing.  Index
                # blocks are not needed for a full scan, so their checksums (dx_tail)
                # are not verified here.
                continue
            end = bs
            if has_csum_tail(block):
                if seed is not None:
                    (stored,) = struct.unpack_from("<I", block, bs - 4)
                    want = crc32c_le(seed, block[: bs - DIRENT_TAIL_SIZE])
                    if stored != want:
                        raise ChecksumError(
                            f"checksum 0x{stored:08x} != computed 0x{want:08x}",
                            structure="directory block",
                            location=at,
                        )
                end = bs - DIRENT_TAIL_SIZE
            elif seed is not None:
                raise ChecksumError(
                    "directory block has no checksum tail",
                    structure="directory block",
                    location=at,
                )
            out += decode_dirents(
                block[:end],
                block_size=bs,
                where=at,
                filetype=filetype,
                hashed=hashed,
                base=lblk * bs,
            )
    return _public(out)


def _is_dx_node(block: bytes, bs: int, lblk: int, indexed: bool) -> bool:
    """An htree interior node: a fake entry with inode 0 whose rec_len spans the block."""
    if not indexed or lblk == 0:
        return False
    inode, rec_len = struct.unpack_from("<IH", block, 0)
    return inode == 0 and rec_len_from_disk(rec_len, bs) == bs and block[6] == 0


def _public(raw: list[Dirent]) -> list[Entry]:
    return [Entry(d.name, d.inode, d.file_type, d.hash) for d in raw if d.name not in (b".", b"..")]


def dx_hash_version(dir_inode: Inode, default: int) -> int:
    """The hash version recorded in an htree root, or ``default`` if it is unreadable."""
    from cipherdump.ondisk.dirent import decode_dx_root

    runs = [r for r in dir_inode.runs if r.lblk == 0 and r.pblk is not None]
    if not runs or runs[0].pblk is None:
        return default
    try:
        root = decode_dx_root(dir_inode.fs.read_block(runs[0].pblk))
    except CorruptError:
        return default
    return root.hash_version if root is not None else default
