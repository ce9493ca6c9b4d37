"""The acceptance test of a live backup: is what was read of one object on the device a
complete version of it?  Pure comparisons, no I/O (see docs/live-backup.md for why
these facts are enough).

An object is accepted when four looks at it agree: its on-disk inode read before its
data (or directory entries) and read again after, and the kernel's ``lstat`` before and
after, on the inode number, generation (where the kernel gave it), mode, link count,
owner, size, mtime and ctime; and when its ctime is older than the round's start time
T less the timestamp granularity (see :meth:`StartTime.limit_ns`): then nothing has
changed it since the ``syncfs`` that began the round, so every byte of it had reached
the device before it was read.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, fields
from typing import Protocol

from cipherdump.blockio.livefs import LiveStat
from cipherdump.engine.views.image import ImageNode
from cipherdump.errors import CipherdumpError
from cipherdump.ext4 import Inode
from cipherdump.ext4.inode import InodeType
from cipherdump.repo import Node
from cipherdump.repo.tree import NodeSpan

# Compared in this order; the first that differs names the reason.
_FIELDS = ("ino", "generation", "mode", "links", "uid", "gid", "size", "mtime_ns", "ctime_ns")


@dataclass(frozen=True, slots=True)
class Facts:
    """What both sides can say of one inode.  ``None``: this side cannot tell (the
    generation of a file that cannot be opened without its key; the size of an
    encrypted symlink, which the kernel shows as its decoded target's length)."""

    ino: int
    generation: int | None
    mode: int
    links: int
    uid: int
    gid: int
    size: int | None
    mtime_ns: int
    ctime_ns: int


def disk_facts(inode: Inode) -> Facts:
    """The facts of an on-disk inode, as the kernel would report them."""
    size: int | None = inode.size
    if inode.type is InodeType.SYMLINK and inode.is_encrypted:
        size = None
    return Facts(
        inode.ino,
        inode.generation & 0xFFFFFFFF,
        inode.mode,
        inode.links,
        inode.uid,
        inode.gid,
        size,
        inode.mtime_ns,
        inode.ctime_ns,
    )


def live_facts(st: LiveStat) -> Facts:
    size: int | None = st.size
    if stat.S_ISLNK(st.mode):
        size = None  # an encrypted symlink's size is its shown target's (see disk_facts)
    return Facts(
        st.ino,
        st.generation,
        st.mode,
        st.links,
        st.uid,
        st.gid,
        size,
        st.mtime_ns,
        st.ctime_ns,
    )


def _differs(a: Facts, b: Facts) -> str | None:
    # The common case first, without a look at each field by name (it is done for
    # every object, several times).
    if (
        (a.ino, a.mode, a.links, a.uid, a.gid, a.mtime_ns, a.ctime_ns)
        == (
            b.ino,
            b.mode,
            b.links,
            b.uid,
            b.gid,
            b.mtime_ns,
            b.ctime_ns,
        )
        and (a.size == b.size or a.size is None or b.size is None)
        and (a.generation == b.generation or a.generation is None or b.generation is None)
    ):
        return None
    for name in _FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        if x is not None and y is not None and x != y:
            return name
    return None


def rejection(
    disk_before: Facts,
    disk_after: Facts | None,
    live_before: Facts | None,
    live_after: Facts | None,
    ctime_limit_ns: int,
) -> str | None:
    """Why the object is not accepted (a short phrase), or None if it is.

    ``None`` for a live look means the kernel no longer has the object at that name;
    for ``disk_after``, that its inode could not be read again."""
    if live_before is None or live_after is None:
        return "gone from the live filesystem"
    if disk_after is None:
        return "its inode could not be read again"
    for label, a, b in (
        ("on disk, before and after reading it", disk_before, disk_after),
        ("live, before and after reading it", live_before, live_after),
        ("on disk and live", disk_after, live_after),
    ):
        name = _differs(a, b)
        if name is not None:
            return f"{name} differs {label}"
    if live_after.ctime_ns >= ctime_limit_ns:
        return "changed after the round began (ctime)"
    return None


@dataclass(frozen=True, slots=True)
class Settled:
    """The node to store for an object (None: none), and whether it was accepted."""

    node: Node | NodeSpan | None
    accepted: bool


class LiveCheck(Protocol):
    """What the backup walk asks of a live backup's round (the seam between the walk
    and :class:`cipherdump.engine.live_backup.LiveRound`).

    For a non-directory: ``before(kid)`` (False: already changed, nothing is read),
    the node made, then ``settle(kid, order, node)`` says what to store.  For a
    directory: ``before(kid)`` ahead of reading its entries, ``after(kid)`` right
    after, and once its subtree is done ``settle_dir(kid, order, node, accepted)``.
    Files are accepted provisionally: before a directory's tree is saved,
    ``verify_entries(path)`` reads their inodes again, together, and names those to
    take back (raw name, inode number, the node to put instead or None).
    A rejected object keeps its directory from being recorded for reuse.
    ``absorb(path, err)``: True if a read error is to be taken as a change."""

    top_path: bytes

    def before(self, kid: ImageNode) -> bool: ...

    def after(self, kid: ImageNode) -> bool: ...

    def settle(self, kid: ImageNode, order: int, node: Node | NodeSpan | None) -> Settled: ...

    def settle_dir(self, kid: ImageNode, order: int, node: Node, accepted: bool) -> Settled: ...

    def absorb(self, path: bytes, err: CipherdumpError) -> bool: ...

    def verify_entries(self, path: bytes) -> list[tuple[bytes, int, Node | None]]: ...


__all__ = ["Facts", "LiveCheck", "Settled", "disk_facts", "live_facts", "rejection"]
assert {f.name for f in fields(Facts)} == set(_FIELDS)
