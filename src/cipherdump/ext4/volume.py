"""What the ext4 operations need of an open filesystem (the seam below the views), and
the :class:`Run` of a block map they all speak of.

Block maps (:mod:`.mapping`), xattrs (:mod:`.xattr`), directories (:mod:`.directory`),
the journal (:mod:`.journal`) and orphans (:mod:`.orphans`) are operations, as in
e2fsprogs' ``lib/ext2fs``: they take a :class:`Volume` and an inode number and record,
never the :class:`~cipherdump.ext4.inode.Inode` view or the
:class:`~cipherdump.ext4.fs.Filesystem`, which are built on top of them.  So the
operation modules import nothing above themselves, and ext4 has no import cycle (an
import-linter contract in pyproject.toml keeps it so).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cipherdump.ondisk.inode import InodePeek, RawInode
from cipherdump.ondisk.superblock import Superblock


@dataclass(frozen=True, slots=True)
class Run:
    """``length`` logical blocks from ``lblk``: at ``pblk``, or a hole when ``pblk`` is None.

    ``unwritten`` marks preallocated extents that read as zeros.
    """

    lblk: int
    length: int
    pblk: int | None
    unwritten: bool = False


class Volume(Protocol):
    """An open ext4 filesystem, as the operations see it (``Filesystem`` is one)."""

    sb: Superblock
    block_size: int
    #: The seed of metadata checksums (s_checksum_seed or the UUID's crc32c).
    csum_seed: int

    @property
    def has_filetype(self) -> bool: ...

    @property
    def dir_index(self) -> bool: ...

    @property
    def needs_recovery(self) -> bool: ...

    def read_block(self, pblk: int, count: int = 1) -> bytes:
        """``count`` blocks from ``pblk`` (through the replayed journal, if any)."""
        ...

    def block_in_range(self, pblk: int, count: int = 1) -> bool: ...

    def raw_inode(self, ino: int) -> RawInode:
        """The decoded, checked record of inode ``ino`` (CorruptError if it is not one)."""
        ...

    def inode_record(self, ino: int) -> tuple[bytes, InodePeek]:
        """Inode ``ino``'s on-disk record, undecoded and unchecked, with its peeked fields."""
        ...

    def orphan_runs(self, ino: int, runs: list[Run], size: int) -> list[Run]:
        """``runs`` of inode ``ino`` as the kernel leaves an orphan it truncates."""
        ...

    def warn(self, message: str) -> None:
        """Note a condition that stops nothing (a damaged htree index, say)."""
        ...
