"""``restore --from-dir``: a tree copied from the ciphertext view, as copied entries.

The copy is walked without following symlinks.  Records are the ``user.cipherdump.*``
xattrs (docs/keyless-records.md); Linux allows ``user.*`` xattrs on regular files and
directories only, so for symlinks and special files they are also read from
``trusted.cipherdump.*`` (the same record names; only root can read or copy them).
Every other xattr is copied into the image as it is (``system.posix_acl_*`` as ext4's
ACL form).  Names of one inode in the copy (hard links kept by ``cp -a``, ``rsync -H``,
tar) are one inode; so are names with one ``ino`` record.  Which ranges of a file hold
data is asked of the copy's filesystem (``SEEK_DATA``/``SEEK_HOLE``).

The copy is only read: nothing in DIR is opened for writing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator

from cipherdump.engine import keyless_records as R
from cipherdump.engine.keyless_ingest import (
    CopiedEntry,
    Copy,
    CopyRefused,
    ReadAt,
    ext4_xattr,
    kind_of,
)
from cipherdump.errors import CipherdumpError, InputError

__all__ = ["open_dir_copy"]

_USER = R.XATTR_PREFIX.encode()
_TRUSTED = b"trusted." + _USER[len(b"user.") :]
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


class _Files:
    """Open files of the copy, by path; one kept open between reads."""

    def __init__(self) -> None:
        self.path: bytes | None = None
        self.fd = -1

    def reader(self, path: bytes) -> ReadAt:
        def read(off: int, n: int) -> bytes:
            if self.path != path:
                self.close()
                self.fd = os.open(path, _READ)
                self.path = path
            return os.pread(self.fd, n, off).ljust(n, b"\0")

        return read

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.fd, self.path = -1, None


def _data_ranges(path: bytes, size: int) -> list[tuple[int, int]]:
    fd = os.open(path, _READ)
    try:
        out: list[tuple[int, int]] = []
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as err:
                if err.errno == errno.ENXIO:
                    break
                if err.errno == errno.EINVAL:  # no SEEK_DATA here: all data
                    return [(0, size)]
                raise
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            out.append((start, end - start))
            pos = end
        return out
    finally:
        os.close(fd)


def _entry(path: bytes, rel: bytes, st: os.stat_result, files: _Files,
           problems: list[str]) -> CopiedEntry:  # fmt: skip
    kind = kind_of(st.st_mode)
    e = CopiedEntry(rel, kind, st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns,
                    st.st_atime_ns, st.st_ctime_ns, None, st.st_size)  # fmt: skip
    where = "/" + rel.decode("utf-8", "backslashreplace")
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as err:
        if err.errno not in (errno.ENOTSUP, errno.EPERM):
            problems.append(f"{where}: cannot list its xattrs: {err.strerror}")
        names = []
    for name in names:
        full = os.fsencode(name)
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError as err:
            problems.append(f"{where}: cannot read xattr {name}: {err.strerror}")
            continue
        for prefix in (_USER, _TRUSTED):
            if full.startswith(prefix):
                e.records.setdefault(full[len(prefix) :].decode("ascii", "replace"), value)
                break
        else:
            try:
                x = ext4_xattr(full, value)
            except CipherdumpError as err:
                problems.append(f"{where}: xattr {name}: {err}")
                continue
            if x is None:
                problems.append(f"{where}: xattr {name} has no place in ext4")
            else:
                e.xattrs.append(x)
    if kind == "symlink":
        e.target = os.readlink(path)
        e.size = len(e.target)
    elif kind in ("chardev", "blockdev"):
        e.rdev = (os.major(st.st_rdev), os.minor(st.st_rdev))
    elif kind == "file":
        e.read_at = files.reader(path)
        e.ranges = _data_ranges(path, st.st_size)
    if kind != "dir" and st.st_nlink > 1:
        e.identity = (st.st_dev, st.st_ino)
    return e


def _walk(top: bytes, files: _Files, problems: list[str]) -> list[CopiedEntry]:
    entries = [_entry(top, b"", os.lstat(top), files, problems)]
    stack = [b""]
    while stack:
        rel_dir = stack.pop()
        full_dir = os.path.join(top, rel_dir) if rel_dir else top
        try:
            names = sorted(os.listdir(full_dir))
        except OSError as err:
            problems.append(f"/{rel_dir.decode('utf-8', 'backslashreplace')}: {err.strerror}")
            continue
        for name in names:
            rel = rel_dir + b"/" + name if rel_dir else name
            full = os.path.join(top, rel)
            try:
                st = os.lstat(full)
                entries.append(_entry(full, rel, st, files, problems))
            except OSError as err:
                problems.append(f"/{rel.decode('utf-8', 'backslashreplace')}: {err.strerror}")
                continue
            if stat.S_ISDIR(st.st_mode):
                stack.append(rel)
    return entries


@contextlib.contextmanager
def open_dir_copy(path: str) -> Iterator[Copy]:
    """The copy in the directory ``path``."""
    top = os.fsencode(path)
    try:
        st = os.stat(top)
    except OSError as err:
        raise InputError(f"{path}: {err.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise InputError(f"{path}: not a directory")
    files = _Files()
    try:
        problems: list[str] = []
        entries = _walk(top, files, problems)
        if problems:
            raise CopyRefused(path, problems)
        yield Copy(entries, entries[0].records.get(R.FILESYSTEM), path)
    finally:
        files.close()
