"""Orphan inodes, as the kernel's ``ext4_orphan_cleanup`` treats them on mount.

An orphan is an inode the kernel was deleting (unlinked while still open) or truncating
when the filesystem was last in use; it records them so that the next mount finishes
the job.  They are found in the orphan list (``s_last_orphan``, each inode's ``i_dtime``
naming the next) and, with the ``orphan_file`` feature, in the orphan file's blocks.
An orphan with no links left is deleted on mount; one still linked is truncated to its
``i_size`` (blocks past it freed).  We read the filesystem as that mount leaves it:
deleted orphans are not in use, and truncated ones map nothing past ``i_size``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cipherdump.errors import CipherdumpError
from cipherdump.ext4.mapping import map_runs
from cipherdump.ext4.volume import Run
from cipherdump.ondisk.features import RO_COMPAT_ORPHAN_PRESENT
from cipherdump.ondisk.superblock import EXT2_ERROR_FS

if TYPE_CHECKING:
    from cipherdump.ext4.volume import Volume

EXT4_ORPHAN_BLOCK_MAGIC = 0x0B10CA04
COMPAT_ORPHAN_FILE = 0x1000
_TAIL = 8  # struct ext4_orphan_block_tail: ob_magic, ob_checksum


@dataclass(frozen=True, slots=True)
class Orphans:
    deleted: frozenset[int]
    truncated: frozenset[int]
    warnings: tuple[str, ...]

    @property
    def count(self) -> int:
        return len(self.deleted) + len(self.truncated)


NO_ORPHANS = Orphans(frozenset(), frozenset(), ())


def find_orphans(fs: Volume, *, journal_errno: int = 0) -> Orphans:
    """The orphans of ``fs``, and what the kernel would do with each.  ``journal_errno``
    is the error the journal superblock records (s_errno), if any."""
    sb = fs.sb
    # Without orphan_present (cleared by a clean unmount) the orphan file is empty:
    # not reading it keeps opening a clean filesystem to its superblock and descriptors.
    has_file = (
        bool(sb.s_feature_compat & COMPAT_ORPHAN_FILE)
        and sb.s_orphan_file_inum != 0
        and (sb.has_ro_compat(RO_COMPAT_ORPHAN_PRESENT) or fs.needs_recovery)
    )
    if not sb.s_last_orphan and not has_file:
        return NO_ORPHANS
    if sb.s_state & EXT2_ERROR_FS or journal_errno:
        # The kernel then clears the orphan list without processing it.
        return NO_ORPHANS
    warnings: list[str] = []
    found: list[int] = []
    _orphan_list(fs, found, warnings)
    if has_file:
        _orphan_file(fs, found, warnings)
    deleted: set[int] = set()
    truncated: set[int] = set()
    for ino in found:
        try:
            node = fs.raw_inode(ino)
        except CipherdumpError as exc:
            warnings.append(f"orphan inode {ino} cannot be read: {exc}")
            continue
        (truncated if node.i_links_count else deleted).add(ino)
    return Orphans(frozenset(deleted), frozenset(truncated), tuple(warnings))


def _orphan_list(fs: Volume, found: list[int], warnings: list[str]) -> None:
    ino = fs.sb.s_last_orphan
    seen: set[int] = set()
    while ino:
        if ino in seen:
            warnings.append(f"the orphan list loops back to inode {ino}")
            return
        if not fs.sb.first_ino <= ino <= fs.sb.s_inodes_count:
            warnings.append(f"the orphan list names inode {ino}, which cannot be an orphan")
            return
        seen.add(ino)
        found.append(ino)
        try:
            raw, _peek = fs.inode_record(ino)
        except CipherdumpError as exc:
            warnings.append(f"the orphan list stops at inode {ino}: {exc}")
            return
        ino = struct.unpack_from("<I", raw, 0x14)[0]  # i_dtime: the next orphan


def _orphan_file(fs: Volume, found: list[int], warnings: list[str]) -> None:
    inum = fs.sb.s_orphan_file_inum
    bs = fs.block_size
    try:
        raw = fs.raw_inode(inum)
        mapped = fs.orphan_runs(inum, map_runs(fs, inum, raw), raw.i_size)
        runs = [r for r in mapped if r.pblk is not None]
    except CipherdumpError as exc:
        warnings.append(f"the orphan file (inode {inum}) cannot be read: {exc}")
        return
    listed = set(found)
    blocks = 0
    for run in runs:
        for k in range(run.length):
            blocks += 1
            if run.pblk is None or blocks > 4096:
                return
            try:
                block = fs.read_block(run.pblk + k)
            except CipherdumpError as exc:
                warnings.append(f"an orphan file block cannot be read: {exc}")
                continue
            (magic,) = struct.unpack_from("<I", block, bs - _TAIL)
            if magic != EXT4_ORPHAN_BLOCK_MAGIC:
                warnings.append(f"orphan file block {run.pblk + k} has no orphan block magic")
                continue
            for (ino,) in struct.iter_unpack("<I", block[: bs - _TAIL]):
                sane = fs.sb.first_ino <= ino <= fs.sb.s_inodes_count
                if sane and ino not in listed:
                    listed.add(ino)
                    found.append(ino)


def clip_runs(runs: list[Run], size: int, block_size: int) -> list[Run]:
    """``runs`` without what lies past the block holding byte ``size - 1``: what a
    truncation to ``size`` leaves mapped."""
    end = (size + block_size - 1) // block_size
    out: list[Run] = []
    for run in runs:
        if run.lblk >= end:
            break
        if run.lblk + run.length > end:
            run = Run(run.lblk, end - run.lblk, run.pblk, run.unwritten)
        out.append(run)
    return out
