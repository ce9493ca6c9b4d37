"""The read-only filesystem model: nodes, and a tree that answers requests by path.

A :class:`MountNode` is one directory entry as the mount shows it: its attributes, its
children (directories), its target (symlinks), its bytes (regular files) and its xattrs.
Nodes are made per entry, not per inode, so a hard-linked file can answer xattrs that
belong to the name it was reached by (``user.cipherdump.name``) while every link shows
the same inode number.

:class:`MountTree` resolves paths with a bounded cache of directory listings, so a
``find`` over a large tree lists each directory once while memory stays bounded.
"""

from __future__ import annotations

import errno
import stat
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["Attr", "MountNode", "MountTree", "fs_error"]

# Directory listings kept (each one a dict of nodes): enough for the working set of a
# tree walk, small enough for directories of many thousand entries.
DEFAULT_LISTINGS = 256


def fs_error(code: int, path: bytes | str = "") -> OSError:
    """The OSError a filesystem call returns: ``code`` is an errno."""
    shown = path.decode("utf-8", "backslashreplace") if isinstance(path, bytes) else path
    return OSError(code, errno.errorcode.get(code, str(code)), shown)


@dataclass(frozen=True, slots=True)
class Attr:
    """What ``stat`` shows of a node; times in nanoseconds since the epoch."""

    ino: int
    mode: int
    nlink: int = 1
    uid: int = 0
    gid: int = 0
    size: int = 0
    blocks: int = 0  # 512-byte units
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    rdev: int = 0

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


class MountNode:
    """One entry of a mounted tree.  Subclasses override what their kind supports."""

    def attr(self) -> Attr:
        raise NotImplementedError

    def children(self) -> Mapping[bytes, MountNode]:
        """The entries of a directory by the names the mount shows, in listing order."""
        raise fs_error(errno.ENOTDIR)

    def lookup(self, name: bytes) -> MountNode:
        """One child by name; the default looks it up in :meth:`children`."""
        kid = self.children().get(name)
        if kid is None:
            raise fs_error(errno.ENOENT, name)
        return kid

    def readlink(self) -> bytes:
        raise fs_error(errno.EINVAL)

    def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes at ``offset``; short only at the end of the file."""
        raise fs_error(errno.EISDIR if self.attr().is_dir else errno.EINVAL)

    def xattrs(self) -> Mapping[str, bytes]:
        """Every xattr by its full name (``user.comment``, ``user.cipherdump.size``)."""
        return {}

    @property
    def volatile(self) -> bool:
        """Whether a listing of this directory may change (the repository layout), so
        that :class:`MountTree` does not cache it."""
        return False


class MountTree:
    """Requests by path over a tree of :class:`MountNode`.

    ``listings`` bounds how many directory listings are cached; a listing of a
    :attr:`MountNode.volatile` directory is asked for each time.  A lock makes the
    model safe under a multi-threaded FUSE loop (the adapter runs one thread anyway).
    """

    def __init__(self, root: MountNode, *, listings: int = DEFAULT_LISTINGS) -> None:
        self.root = root
        self._max = max(1, listings)
        self._listings: OrderedDict[bytes, Mapping[bytes, MountNode]] = OrderedDict()
        self.lock = threading.RLock()

    # -- paths -------------------------------------------------------------------------
    def node(self, path: bytes) -> MountNode:
        """The node at ``path`` (absolute, ``/`` separated, no ``.`` or ``..``: as the
        kernel hands paths to a FUSE filesystem)."""
        with self.lock:
            node = self.root
            here = b""
            for part in path.split(b"/"):
                if not part:
                    continue
                if not node.attr().is_dir:
                    raise fs_error(errno.ENOTDIR, path)
                node = self._child(here or b"/", node, part)
                here = here + b"/" + part
            return node

    def _child(self, dir_path: bytes, directory: MountNode, name: bytes) -> MountNode:
        if directory.volatile:
            return directory.lookup(name)
        listing = self._listing(dir_path, directory)
        kid = listing.get(name)
        if kid is None:
            # A name the listing does not show may still be typed: a raw or plaintext
            # name a node accepts besides the shown one (never listed, never cached).
            return directory.lookup(name)
        return kid

    def _listing(self, dir_path: bytes, directory: MountNode) -> Mapping[bytes, MountNode]:
        cached = self._listings.get(dir_path)
        if cached is not None:
            self._listings.move_to_end(dir_path)
            return cached
        listing = directory.children()
        if not directory.volatile:
            self._listings[dir_path] = listing
            while len(self._listings) > self._max:
                self._listings.popitem(last=False)
        return listing

    # -- requests ----------------------------------------------------------------------
    def getattr(self, path: bytes) -> Attr:
        with self.lock:
            return self.node(path).attr()

    def readdir(self, path: bytes) -> list[tuple[bytes, Attr]]:
        """The entries of the directory at ``path`` with their attributes (the adapter
        passes mode and inode number on to ``readdir``)."""
        with self.lock:
            node = self.node(path)
            if not node.attr().is_dir:
                raise fs_error(errno.ENOTDIR, path)
            listing = node.children() if node.volatile else self._listing(path or b"/", node)
            return [(name, kid.attr()) for name, kid in listing.items()]

    def readlink(self, path: bytes) -> bytes:
        with self.lock:
            return self.node(path).readlink()

    def read(self, path: bytes, offset: int, size: int) -> bytes:
        with self.lock:
            node = self.node(path)
            if not stat.S_ISREG(node.attr().mode):
                raise fs_error(errno.EISDIR if node.attr().is_dir else errno.EINVAL, path)
            if offset < 0 or size < 0:
                raise fs_error(errno.EINVAL, path)
            return node.read(offset, size)

    def listxattr(self, path: bytes) -> list[str]:
        with self.lock:
            return list(self.node(path).xattrs())

    def getxattr(self, path: bytes, name: str) -> bytes:
        with self.lock:
            value = self.node(path).xattrs().get(name)
            if value is None:
                raise fs_error(errno.ENODATA, path)
            return value


def listing(items: Iterable[tuple[bytes, MountNode]]) -> dict[bytes, MountNode]:
    """A directory listing from (name, node) pairs; a repeated name keeps its first
    entry (a damaged directory can hold one name twice; a mount can show it once)."""
    out: dict[bytes, MountNode] = {}
    for name, node in items:
        out.setdefault(name, node)
    return out
