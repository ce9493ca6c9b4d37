"""Plaintext extraction: write a decrypted copy of a subtree into a local directory.

``extract(ns, top, dest)`` gives ``dest`` the contents of ``top`` as ``cp -a top/. dest``
would: regular files (sparse files stay sparse), directories, symlinks, FIFOs, device
nodes and sockets, hard links within the subtree, modes, owners, nanosecond
timestamps and ``user.``/``trusted.``/``security.`` xattrs.  The encryption context is
not copied: the copy is plaintext.

Safety: everything is created relative to directory file descriptors opened with
``O_NOFOLLOW`` below ``dest``, with ``O_EXCL`` for new files, so neither a hostile name
nor a symlink already inside ``dest`` can make a write land outside it.  Names that
are empty, ``.``, ``..`` or contain ``/`` are refused.

An object that cannot be decrypted (no matching key, wrong key) or read is skipped and
reported as an :class:`ExtractProblem`; ciphertext is never written as if it were
plaintext.  The engine never prints: pass ``on_event`` to follow progress.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field

from cipherdump.engine.keyed import KeyedNamespace, invalid_name_reason
from cipherdump.engine.namespace import MAX_DEPTH, Node, Problem
from cipherdump.errors import CipherdumpError, CorruptError, InputError
from cipherdump.ext4 import Inode
from cipherdump.ext4.inode import FileType
from cipherdump.ondisk.xattr import (
    EXT4_XATTR_INDEX_SECURITY,
    EXT4_XATTR_INDEX_TRUSTED,
    EXT4_XATTR_INDEX_USER,
)

__all__ = ["ExtractEvent", "ExtractProblem", "ExtractResult", "extract"]

# Name indices copied as xattrs.  Not copied: the encryption context (9), inline data
# (system.data), POSIX ACLs (stored in an ext4-specific format) and Lustre/Hurd ones.
_COPIED_XATTRS = (EXT4_XATTR_INDEX_USER, EXT4_XATTR_INDEX_TRUSTED, EXT4_XATTR_INDEX_SECURITY)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class ExtractProblem:
    """An object that was not (completely) written; ``path`` is relative to ``dest``."""

    path: bytes
    error: CipherdumpError | OSError


@dataclass(frozen=True, slots=True)
class ExtractEvent:
    """Progress: ``kind`` is ``"file"``, ``"dir"``, ``"symlink"``, ``"special"``,
    ``"hardlink"`` or ``"problem"``; ``path`` is relative to ``dest``."""

    kind: str
    path: bytes
    size: int = 0


@dataclass
class ExtractResult:
    """What was written, and what was not."""

    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    specials: int = 0
    hardlinks: int = 0
    bytes: int = 0
    problems: list[ExtractProblem] = field(default_factory=list)
    owners_restored: bool = True

    def summary(self) -> dict[str, object]:
        return {
            "files": self.files,
            "dirs": self.dirs,
            "symlinks": self.symlinks,
            "specials": self.specials,
            "hardlinks": self.hardlinks,
            "bytes": self.bytes,
            "problems": len(self.problems),
            "owners_restored": self.owners_restored,
        }


class _Extractor:
    def __init__(
        self,
        ns: KeyedNamespace,
        on_event: Callable[[ExtractEvent], None] | None,
    ) -> None:
        self.ns = ns
        self.on_event = on_event
        self.result = ExtractResult()
        self.is_root = os.geteuid() == 0
        # ino -> path (components below dest) of the first copy, for hard links.
        self.links: dict[int, tuple[bytes, ...]] = {}
        self.seen_dirs: set[int] = set()
        # Where hard-link sources are found again: the directory given as dest.
        self.root_path = b""

    # -- reporting ---------------------------------------------------------------------
    def event(self, kind: str, rel: tuple[bytes, ...], size: int = 0) -> None:
        if self.on_event is not None:
            self.on_event(ExtractEvent(kind, b"/".join(rel), size))

    def problem(self, rel: tuple[bytes, ...], error: CipherdumpError | OSError) -> None:
        path = b"/".join(rel) or b"."
        self.result.problems.append(ExtractProblem(path, error))
        if self.on_event is not None:
            self.on_event(ExtractEvent("problem", path))

    # -- the walk ----------------------------------------------------------------------
    def extract_dir_into(self, node: Node, dest_fd: int, rel: tuple[bytes, ...]) -> None:
        """Fill the open directory ``dest_fd`` with the children of ``node``, then give it
        ``node``'s metadata.  Iterative, so deep trees do not hit the recursion limit."""
        self.seen_dirs.add(node.inode.ino)
        # Each frame: (node, its open fd, its path, iterator over its children).
        stack: list[tuple[Node, int, tuple[bytes, ...], Iterator[Node | Problem]]] = [
            (node, dest_fd, rel, self._children(node, rel))
        ]
        try:
            while stack:
                parent, fd, prel, kids = stack[-1]
                kid = next(kids, None)
                if kid is None:
                    stack.pop()
                    self.finish_dir(parent.inode, fd, prel)
                    if stack:  # the top fd belongs to the caller
                        os.close(fd)
                    continue
                if isinstance(kid, Problem):
                    self.problem((*prel, _last(kid.path)), kid.error)
                    continue
                krel = (*prel, kid.name)
                reason = invalid_name_reason(kid.name)
                if reason is not None:
                    self.problem(krel, CorruptError(f"refusing to write a file with {reason}"))
                    continue
                try:
                    if kid.inode.is_dir:
                        if kid.inode.is_encrypted:
                            # Without the key no entry can get a plaintext name: skip
                            # the directory rather than write no-key names as if
                            # they were plaintext, and leave nothing empty behind.
                            self.ns.require_cipher(kid.inode, "directory " + _show(krel))
                        child_fd = self.make_dir(kid, fd, krel, len(stack))
                        if child_fd is not None:
                            stack.append((kid, child_fd, krel, self._children(kid, krel)))
                    else:
                        self.make_nondir(kid.inode, fd, kid.name, krel)
                except (CipherdumpError, OSError) as err:
                    self.problem(krel, err)
        finally:
            for _, fd, _, _ in stack[1:]:
                os.close(fd)

    def _children(self, node: Node, rel: tuple[bytes, ...]) -> Iterator[Node | Problem]:
        try:
            return iter(list(self.ns.iter_children(node)))
        except CipherdumpError as err:
            self.problem(rel, err)
            return iter(())

    def make_dir(
        self, node: Node, parent_fd: int, rel: tuple[bytes, ...], depth: int
    ) -> int | None:
        ino = node.inode.ino
        if ino in self.seen_dirs or depth > MAX_DEPTH:
            self.problem(rel, CorruptError("directory is reachable twice or nested too deep"))
            return None
        self.seen_dirs.add(ino)
        name = rel[-1]
        # An existing directory is merged into; opening it below refuses a symlink.
        with suppress(FileExistsError):
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        self.result.dirs += 1
        self.event("dir", rel)
        return fd

    def finish_dir(self, inode: Inode, fd: int, rel: tuple[bytes, ...]) -> None:
        """Metadata of a directory, once its entries are in (they change its mtime)."""
        try:
            self.set_owner_fd(fd, inode)
            os.chmod(fd, stat.S_IMODE(inode.mode))
            self.set_xattrs(f"/proc/self/fd/{fd}", inode, rel)
            os.utime(fd, ns=(inode.atime_ns, inode.mtime_ns))
        except (CipherdumpError, OSError) as err:
            self.problem(rel, err)

    def make_nondir(
        self, inode: Inode, parent_fd: int, name: bytes, rel: tuple[bytes, ...]
    ) -> None:
        first = self.links.get(inode.ino)
        if first is not None:
            self.make_hardlink(first, parent_fd, name, rel)
            return
        kind = inode.type
        if kind is FileType.FILE:
            self.make_file(inode, parent_fd, name, rel)
        elif kind is FileType.SYMLINK:
            self.make_symlink(inode, parent_fd, name, rel)
        elif kind in (FileType.FIFO, FileType.CHARDEV, FileType.BLOCKDEV, FileType.SOCKET):
            self.make_special(inode, parent_fd, name, rel)
        else:
            raise CorruptError(
                f"inode {inode.ino} has an unknown file type (mode 0o{inode.mode:o})"
            )
        if inode.links > 1:
            self.links[inode.ino] = rel

    # -- object kinds ------------------------------------------------------------------
    def make_file(self, inode: Inode, parent_fd: int, name: bytes, rel: tuple[bytes, ...]) -> None:
        # Decryption is checked before anything is created, so a missing key leaves no
        # empty or partial file behind.
        segments = self.ns.iter_segments(inode)
        first = next(segments, None)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(name, flags, 0o600, dir_fd=parent_fd)
        try:
            written = 0
            try:
                seg = first
                while seg is not None:
                    if seg.data is not None:
                        _pwrite_all(fd, seg.data, seg.offset)
                        written += len(seg.data)
                    seg = next(segments, None)
            except CipherdumpError:
                # Leave nothing half-decrypted behind.
                os.close(fd)
                fd = -1
                with suppress(OSError):
                    os.unlink(name, dir_fd=parent_fd)
                raise
            # Holes were skipped; the size makes them (and a trailing hole) exist.
            os.ftruncate(fd, inode.size)
            self.set_owner_fd(fd, inode)
            os.chmod(fd, stat.S_IMODE(inode.mode))
            self.set_xattrs(f"/proc/self/fd/{fd}", inode, rel)
            os.utime(fd, ns=(inode.atime_ns, inode.mtime_ns))
        finally:
            if fd >= 0:
                os.close(fd)
        self.result.files += 1
        self.result.bytes += written
        self.event("file", rel, inode.size)

    def make_symlink(
        self, inode: Inode, parent_fd: int, name: bytes, rel: tuple[bytes, ...]
    ) -> None:
        if inode.is_encrypted:
            self.ns.require_cipher(inode, "symlink " + _show(rel))
        target = self.ns.symlink_target(inode)
        if not target or b"\0" in target:
            raise CorruptError(f"symlink inode {inode.ino} has an unusable target")
        os.symlink(target, name, dir_fd=parent_fd)
        self.set_owner_at(parent_fd, name, inode)
        os.utime(name, ns=(inode.atime_ns, inode.mtime_ns), dir_fd=parent_fd, follow_symlinks=False)
        self.result.symlinks += 1
        self.event("symlink", rel)

    def make_special(
        self, inode: Inode, parent_fd: int, name: bytes, rel: tuple[bytes, ...]
    ) -> None:
        fmt = stat.S_IFMT(inode.mode)
        os.mknod(name, fmt | 0o600, inode.rdev, dir_fd=parent_fd)
        fd = os.open(name, _PATH_FLAGS, dir_fd=parent_fd)
        try:
            # The O_PATH descriptor pins the node mknod just made; its /proc link
            # reaches it without another lookup by name.
            proc = f"/proc/self/fd/{fd}"
            self.set_owner_at(parent_fd, name, inode)
            os.chmod(proc, stat.S_IMODE(inode.mode))
            self.set_xattrs(proc, inode, rel)
            os.utime(proc, ns=(inode.atime_ns, inode.mtime_ns))
        finally:
            os.close(fd)
        self.result.specials += 1
        self.event("special", rel)

    def make_hardlink(
        self, first: tuple[bytes, ...], parent_fd: int, name: bytes, rel: tuple[bytes, ...]
    ) -> None:
        src = self._open_below(first)
        try:
            os.link(f"/proc/self/fd/{src}", name, dst_dir_fd=parent_fd, follow_symlinks=True)
        finally:
            os.close(src)
        self.result.hardlinks += 1
        self.event("hardlink", rel)

    def _open_below(self, rel: tuple[bytes, ...]) -> int:
        """An ``O_PATH`` fd of ``rel`` below the root, never following a symlink."""
        fd = os.open(self.root_path, _DIR_FLAGS)
        try:
            for part in rel[:-1]:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nxt
            out = os.open(rel[-1], _PATH_FLAGS, dir_fd=fd)
        finally:
            os.close(fd)
        return out

    # -- metadata ----------------------------------------------------------------------
    def set_owner_fd(self, fd: int, inode: Inode) -> None:
        try:
            os.chown(fd, inode.uid, inode.gid)
        except PermissionError:
            if self.is_root:
                raise
            self.result.owners_restored = False

    def set_owner_at(self, dir_fd: int, name: bytes, inode: Inode) -> None:
        try:
            os.chown(name, inode.uid, inode.gid, dir_fd=dir_fd, follow_symlinks=False)
        except PermissionError:
            if self.is_root:
                raise
            self.result.owners_restored = False

    def set_xattrs(self, proc_path: str, inode: Inode, rel: tuple[bytes, ...]) -> None:
        for x in inode.xattrs:
            if x.index not in _COPIED_XATTRS:
                continue
            try:
                os.setxattr(proc_path, x.full_name, x.value)
            except OSError as err:
                if err.errno in (errno.EPERM, errno.EACCES) and not self.is_root:
                    continue  # trusted.* needs CAP_SYS_ADMIN
                self.problem(rel, err)


def extract(
    ns: KeyedNamespace,
    top: Node,
    dest: str | bytes | os.PathLike[str],
    *,
    on_event: Callable[[ExtractEvent], None] | None = None,
) -> ExtractResult:
    """Write the plaintext of ``top`` to ``dest`` (see the module docstring).

    A directory ``top`` fills ``dest`` (created if missing, merged if it exists; its
    own metadata goes onto ``dest``).  Any other ``top`` is written as ``dest``, or
    into ``dest`` under its name when ``dest`` is an existing directory.
    """
    ex = _Extractor(ns, on_event)
    dest_b = os.fsencode(dest)
    if top.inode.is_dir:
        if top.inode.is_encrypted:
            ns.require_cipher(top.inode, "directory " + top.path.decode("utf-8", "replace"))
        with suppress(FileExistsError):
            os.mkdir(dest_b, 0o700)
        fd = os.open(dest_b, _DIR_FLAGS)
        ex.root_path = dest_b
        try:
            ex.extract_dir_into(top, fd, ())
        finally:
            os.close(fd)
        return ex.result
    if os.path.isdir(dest_b) and not os.path.islink(dest_b):
        parent, name = dest_b, top.name
    else:
        parent, name = os.path.split(dest_b)
        parent = parent or b"."
    reason = invalid_name_reason(name)
    if reason is not None:
        raise InputError(f"cannot write a file with {reason}")
    fd = os.open(parent, _DIR_FLAGS)
    ex.root_path = parent
    try:
        ex.make_nondir(top.inode, fd, name, (name,))
    except (CipherdumpError, OSError) as err:
        ex.problem((name,), err)
    finally:
        os.close(fd)
    return ex.result


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _last(path: bytes) -> bytes:
    return path.rsplit(b"/", 1)[-1]


def _show(rel: tuple[bytes, ...]) -> str:
    return (b"/".join(rel) or b".").decode("utf-8", "backslashreplace")
