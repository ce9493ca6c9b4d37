"""The kernel's view of a mounted tree (``statx``, with and without the key): what
cipherdump must list."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from kernelfs.uapi import (
    _LIBC,
    AT_SYMLINK_NOFOLLOW,
    STATX_ATTR_ENCRYPTED,
    STATX_BASIC_STATS,
    STATX_BTIME,
)

# --- kernel views ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeView:
    """What the kernel reports for one path.

    ``read_errno`` is set (e.g. ``"ENOKEY"``) when a regular file could not be read; then
    ``sha256`` is None.  ``encrypted`` is STATX_ATTR_ENCRYPTED, ``crtime_ns`` the birth time
    (both None when statx is unavailable).  ``xattrs`` lists the user-visible ``user.*`` ones.
    """

    path: bytes
    mode: int
    uid: int
    gid: int
    size: int
    ino: int
    nlink: int
    rdev: int
    blocks: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    crtime_ns: int | None
    encrypted: bool | None
    link_target: bytes | None
    sha256: str | None
    read_errno: str | None
    xattrs: tuple[tuple[bytes, bytes], ...]

    @property
    def kind(self) -> str:
        return _KINDS.get(stat.S_IFMT(self.mode), "?")


_KINDS = {
    stat.S_IFREG: "reg",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "lnk",
    stat.S_IFIFO: "fifo",
    stat.S_IFCHR: "chr",
    stat.S_IFBLK: "blk",
    stat.S_IFSOCK: "sock",
}


class _StatxTimestamp(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_uint32), ("_r", ctypes.c_int32)]


class _Statx(ctypes.Structure):
    _fields_ = [
        ("stx_mask", ctypes.c_uint32),
        ("stx_blksize", ctypes.c_uint32),
        ("stx_attributes", ctypes.c_uint64),
        ("stx_nlink", ctypes.c_uint32),
        ("stx_uid", ctypes.c_uint32),
        ("stx_gid", ctypes.c_uint32),
        ("stx_mode", ctypes.c_uint16),
        ("_pad", ctypes.c_uint16),
        ("stx_ino", ctypes.c_uint64),
        ("stx_size", ctypes.c_uint64),
        ("stx_blocks", ctypes.c_uint64),
        ("stx_attributes_mask", ctypes.c_uint64),
        ("stx_atime", _StatxTimestamp),
        ("stx_btime", _StatxTimestamp),
        ("stx_ctime", _StatxTimestamp),
        ("stx_mtime", _StatxTimestamp),
        ("_rest", ctypes.c_uint8 * 128),
    ]


def _statx_extra(path: bytes) -> tuple[int | None, bool | None]:
    """(birth time ns, STATX_ATTR_ENCRYPTED) through libc statx(2); (None, None) if missing."""
    fn = getattr(_LIBC, "statx", None)
    if fn is None:
        return None, None
    buf = _Statx()
    rc = fn(-100, path, AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS | STATX_BTIME, ctypes.byref(buf))
    if rc != 0:
        return None, None
    btime = None
    if buf.stx_mask & STATX_BTIME:
        btime = buf.stx_btime.tv_sec * 1_000_000_000 + buf.stx_btime.tv_nsec
    encrypted = None
    if buf.stx_attributes_mask & STATX_ATTR_ENCRYPTED:
        encrypted = bool(buf.stx_attributes & STATX_ATTR_ENCRYPTED)
    return btime, encrypted


def _view_one(full: bytes, rel: bytes) -> NodeView:
    st = os.lstat(full)
    target = os.readlink(full) if stat.S_ISLNK(st.st_mode) else None
    digest = read_errno = None
    if stat.S_ISREG(st.st_mode):
        try:
            h = hashlib.sha256()
            with open(full, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            digest = h.hexdigest()
        except OSError as exc:
            read_errno = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    xattrs: list[tuple[bytes, bytes]] = []
    if not stat.S_ISLNK(st.st_mode):  # ext4 allows no user.* xattrs on symlinks
        for name in sorted(os.listxattr(full, follow_symlinks=False)):
            if name.startswith("user."):
                xattrs.append((name.encode(), os.getxattr(full, name, follow_symlinks=False)))
    crtime, encrypted = _statx_extra(full)
    return NodeView(
        path=rel,
        mode=st.st_mode,
        uid=st.st_uid,
        gid=st.st_gid,
        size=st.st_size,
        ino=st.st_ino,
        nlink=st.st_nlink,
        rdev=st.st_rdev,
        blocks=st.st_blocks,
        atime_ns=st.st_atime_ns,
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
        crtime_ns=crtime,
        encrypted=encrypted,
        link_target=target,
        sha256=digest,
        read_errno=read_errno,
        xattrs=tuple(xattrs),
    )


def snapshot_view(mnt: Path, path: Path | bytes | str = b".") -> dict[bytes, NodeView]:
    """Walk ``mnt/path`` with the kernel; map each relative path (root = ``b"."``) to its view.

    Names come from ``os.listdir(bytes)``: plaintext with the key, no-key names without it.
    Hard links appear once per path.  ``lost+found`` is skipped at the top of a mount.
    """
    root = os.path.join(os.fsencode(mnt), os.fsencode(path))
    view: dict[bytes, NodeView] = {b".": _view_one(root, b".")}
    stack = [b""]
    while stack:
        rel_dir = stack.pop()
        full_dir = os.path.join(root, rel_dir) if rel_dir else root
        for name in sorted(os.listdir(full_dir)):
            if not rel_dir and name == b"lost+found" and os.path.ismount(root):
                continue
            rel = os.path.join(rel_dir, name) if rel_dir else name
            node = _view_one(os.path.join(root, rel), rel)
            view[rel] = node
            if stat.S_ISDIR(node.mode):
                stack.append(rel)
    return view


def by_ino(view: dict[bytes, NodeView]) -> dict[int, list[NodeView]]:
    """Group a view by inode number: how a with-key and a no-key view are matched up."""
    out: dict[int, list[NodeView]] = {}
    for node in view.values():
        out.setdefault(node.ino, []).append(node)
    return out
