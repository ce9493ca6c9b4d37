"""The FUSE adapter: a :class:`~cipherdump.engine.mountfs.model.MountTree` served through
mfusepy (ctypes on libfuse 3), read-only, in the foreground.

It translates and nothing more: paths from str (mfusepy decodes them with
``surrogateescape``) to bytes, attributes to ``stat`` fields, errors to errno.  A
:class:`~cipherdump.errors.CipherdumpError` (damage met while reading) becomes ``EIO``
and is reported once per path through ``on_error``.

The loop runs in one thread: the readers below are not thread-safe, and a read-only
view gains little from threads in one Python process.  libfuse installs its own
handlers for SIGINT, SIGTERM and SIGHUP: each ends the loop, and the filesystem is
unmounted before :func:`serve` returns.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from typing import Any

import mfusepy

from cipherdump.engine.mountfs.model import Attr, MountTree
from cipherdump.errors import CipherdumpError

__all__ = ["serve"]

OnError = Callable[[bytes, CipherdumpError], None]


def _path(path: str) -> bytes:
    return os.fsencode(path)


def _stat(a: Attr) -> dict[str, int]:
    return {
        "st_ino": a.ino,
        "st_mode": a.mode,
        "st_nlink": a.nlink,
        "st_uid": a.uid,
        "st_gid": a.gid,
        "st_size": a.size,
        "st_blocks": a.blocks,
        "st_atime": a.atime_ns,
        "st_mtime": a.mtime_ns,
        "st_ctime": a.ctime_ns,
        "st_rdev": a.rdev,
        "st_blksize": 4096,
    }


class _Operations(mfusepy.Operations):  # type: ignore[misc]
    """Read-only operations over ``tree``; anything else is refused by libfuse (ENOSYS)
    or by the read-only mount (EROFS)."""

    # Times are whole nanoseconds (mfusepy's float seconds would lose them).
    use_ns = True

    def __init__(self, tree: MountTree, on_error: OnError | None) -> None:
        self.tree = tree
        self.on_error = on_error
        self._reported: set[bytes] = set()

    def _failed(self, path: bytes, err: CipherdumpError) -> OSError:
        if self.on_error is not None and path not in self._reported:
            self._reported.add(path)
            self.on_error(path, err)
        return OSError(errno.EIO, "cannot be read")

    def getattr(self, path: str, _fh: Any = None) -> dict[str, int]:
        p = _path(path)
        try:
            return _stat(self.tree.getattr(p))
        except CipherdumpError as err:
            raise self._failed(p, err) from None

    def readdir(self, path: str, _fh: Any) -> Iterator[tuple[str, dict[str, int], int]]:
        p = _path(path)
        try:
            entries = self.tree.readdir(p)
        except CipherdumpError as err:
            raise self._failed(p, err) from None
        here = self.tree.getattr(p)
        out = [(".", {"st_mode": here.mode, "st_ino": here.ino}, 0), ("..", {}, 0)]
        for name, a in entries:
            out.append((os.fsdecode(name), {"st_mode": a.mode, "st_ino": a.ino}, 0))
        return iter(out)

    def readlink(self, path: str) -> str:
        p = _path(path)
        try:
            return os.fsdecode(self.tree.readlink(p))
        except CipherdumpError as err:
            raise self._failed(p, err) from None

    def open(self, path: str, flags: int) -> int:
        if flags & os.O_ACCMODE != os.O_RDONLY:
            raise mfusepy.FuseOSError(errno.EROFS)
        p = _path(path)
        try:
            self.tree.getattr(p)
        except CipherdumpError as err:
            raise self._failed(p, err) from None
        return 0

    def read(self, path: str, size: int, offset: int, _fh: Any) -> bytes:
        p = _path(path)
        try:
            return self.tree.read(p, offset, size)
        except CipherdumpError as err:
            raise self._failed(p, err) from None

    def listxattr(self, path: str) -> list[str]:
        p = _path(path)
        try:
            return self.tree.listxattr(p)
        except CipherdumpError as err:
            raise self._failed(p, err) from None

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        p = _path(path)
        try:
            return self.tree.getxattr(p, name)
        except CipherdumpError as err:
            raise self._failed(p, err) from None

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_namemax": 255}


def serve(
    tree: MountTree,
    mountpoint: str,
    *,
    fsname: str,
    allow_other: bool = False,
    on_error: OnError | None = None,
) -> None:
    """Mount ``tree`` read-only at ``mountpoint`` and serve it until unmounted or
    interrupted (SIGINT, SIGTERM, SIGHUP)."""
    options: dict[str, Any] = {
        "foreground": True,
        "nothreads": True,
        "ro": True,
        # The inode numbers are the model's (the source's, or stable per snapshot).
        "use_ino": True,
        "readdir_ino": True,
        # Permission checks by the kernel against the modes and owners shown.
        "default_permissions": True,
        # Nothing changes under a read-only view: keep pages between opens.
        "kernel_cache": True,
        # libfuse splits options at commas; a backslash escapes one.
        "fsname": fsname.replace("\\", "\\\\").replace(",", "\\,"),
        "subtype": "cipherdump",
    }
    if allow_other:
        options["allow_other"] = True
    mfusepy.FUSE(_Operations(tree, on_error), mountpoint, **options)
