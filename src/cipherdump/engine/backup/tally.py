"""What one process of a backup has counted: the tally.

Invariant: every counter of a backup lives in one :class:`Tally` field, and how the
field is reset (in a worker, see :mod:`.workers`) and merged (by the coordinator, from
each worker's end message) follows from the field alone.  A counter added here is
reset, sent and merged with no other line to change.  The tally travels as it is: a
worker's end message carries it pickled.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from typing import Literal

from cipherdump.engine.dirtable import DirTable
from cipherdump.engine.parent import Census

# How a field of a worker's tally joins the coordinator's.
Merge = Literal["add", "count", "union", "update", "extend", "stats"]


def _how(merge: Merge) -> dict[str, Merge]:
    return {"merge": merge}


@dataclass(slots=True)
class BackupStats:
    """The figures a backup reports (``backup --json``, the snapshot's ``stats``)."""

    files_new: int = 0
    files_changed: int = 0
    files_unchanged: int = 0
    files_removed: int = 0
    dirs_new: int = 0
    dirs_changed: int = 0
    dirs_unchanged: int = 0
    dirs_removed: int = 0
    bytes_read: int = 0  # data bytes read from the filesystem
    bytes_reused: int = 0  # data bytes taken over from the parent snapshot without reading
    bytes_added: int = 0  # plaintext bytes of blobs new to the repository
    data_blobs_added: int = 0
    tree_blobs_added: int = 0
    bytes_stored: int = 0  # growth of the repository's files
    errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def add(self, other: BackupStats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def clear(self) -> None:
        for f in fields(self):
            setattr(self, f.name, 0)


class InodeSet:
    """A set of inode numbers below a bound, as a bitmap (one bit an inode)."""

    __slots__ = ("bits",)

    def __init__(self, bound: int) -> None:
        self.bits = bytearray(bound // 8 + 1)

    def add(self, ino: int) -> bool:
        """Add ``ino``; True if it was not in the set yet (or is beyond the bound,
        which is never remembered)."""
        if ino >= len(self.bits) * 8:
            return True
        byte, bit = ino >> 3, 1 << (ino & 7)
        if self.bits[byte] & bit:
            return False
        self.bits[byte] |= bit
        return True

    def update(self, inos: Iterable[int]) -> None:
        for ino in inos:
            self.add(ino)

    def __contains__(self, ino: object) -> bool:
        return (
            isinstance(ino, int)
            and 0 <= ino < len(self.bits) * 8
            and bool(self.bits[ino >> 3] >> (ino & 7) & 1)
        )

    def __ior__(self, other: InodeSet) -> InodeSet:
        either = int.from_bytes(self.bits, "little") | int.from_bytes(other.bits, "little")
        self.bits[:] = either.to_bytes(len(self.bits), "little")
        return self

    def clear(self) -> None:
        self.bits[:] = bytes(len(self.bits))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, InodeSet) and self.bits == other.bits

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __iter__(self) -> Iterator[int]:
        for byte, value in enumerate(self.bits):
            for bit in range(8):
                if value >> bit & 1:
                    yield byte * 8 + bit


@dataclass(slots=True)
class Tally:
    """Everything one process counts while it backs up; see the module docstring."""

    seen: InodeSet = field(metadata=_how("union"))  # inodes met (a hard link is met once)
    seen_dirs: InodeSet = field(metadata=_how("union"))  # directories met
    stats: BackupStats = field(metadata=_how("stats"), default_factory=BackupStats)
    # Policy census of every directory closed (see PolicyCensus).
    census: Census = field(metadata=_how("count"), default_factory=dict)
    # New files whose number the parent index did not know when they were met (see
    # ParentIndex.removed): number -> generation.
    unmatched: dict[int, int] = field(metadata=_how("update"), default_factory=dict)
    # The directory table's records of the directories closed.
    dir_records: DirTable = field(metadata=_how("extend"), default_factory=DirTable)
    # For progress events.
    inodes_done: int = field(metadata=_how("add"), default=0)
    bytes_done: int = field(metadata=_how("add"), default=0)

    @classmethod
    def for_inodes(cls, inodes_count: int) -> Tally:
        return cls(InodeSet(inodes_count), InodeSet(inodes_count))

    def first_visit(self, ino: int) -> bool:
        """Mark inode ``ino`` met; True the first time (then it counts as done).  An
        inode number beyond the filesystem's count is never remembered nor counted."""
        if ino >= len(self.seen.bits) * 8:
            return True
        if self.seen.add(ino):
            self.inodes_done += 1
            return True
        return False

    def reset(self) -> None:
        """Start from nothing (a worker, on its fork of the coordinator's tally)."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata["merge"] == "add":
                setattr(self, f.name, 0)
            else:
                value.clear()

    def merge(self, other: Tally) -> None:
        """Add a worker's tally to this one."""
        for f in fields(self):
            how: Merge = f.metadata["merge"]
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if how == "add":
                setattr(self, f.name, mine + theirs)
            elif how == "count":
                for key, n in theirs.items():
                    mine[key] = mine.get(key, 0) + n
            elif how == "union":
                mine |= theirs
            elif how == "update":
                mine.update(theirs)
            elif how == "extend":
                mine.extend(theirs)
            else:
                mine.add(theirs)
