"""The plaintext tree writer shared by ``extract`` (from an image) and ``restore`` (from a
snapshot).

A :class:`TreeSource` says what a tree holds: per object its :class:`ObjectMeta`, its
children, its plaintext contents as data and hole
:class:`~cipherdump.engine.views.image_keyed.Segment` objects and its symlink target.
:class:`PlainWriter` writes that under a destination directory as ``cp -a`` would:
regular files (sparse files stay sparse), directories,
symlinks, FIFOs, device nodes and sockets, hard links within the tree, modes, owners,
nanosecond timestamps, ``user.``/``trusted.``/``security.`` xattrs and POSIX ACLs
(converted from ext4's compact form to the xattr form).  The encryption context is not
copied: the copy is plaintext.

Safety: everything is created relative to directory file descriptors opened with
``O_NOFOLLOW`` below the destination, with ``O_EXCL`` for new files, so neither a hostile
name nor a symlink already inside the destination can make a write land outside it.
Names that are empty, ``.``, ``..`` or contain ``/`` or NUL are refused.

With ``resume`` set, objects already there are checked instead of refused: a regular
file of the same size and mtime (set last, after its data, so only a complete file has
it), a symlink with the same target, a special file of the same type and device and a
hard link to the right file are skipped; anything else that is not a directory is
replaced.  So an interrupted restore can simply be run again.

An object that cannot be decrypted (no matching key, wrong key) or read is skipped and
reported as a :class:`WriteProblem`; ciphertext is never written as if it were
plaintext.  The writer never prints: pass ``on_progress`` to follow progress (one event an
object; problems are in the result).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from cipherdump.engine.views.image import MAX_DEPTH, Problem
from cipherdump.engine.views.image_keyed import Segment, invalid_name_reason
from cipherdump.errors import CipherdumpError, CorruptError, InputError, OutputError
from cipherdump.ondisk.acl import ext4_acl_to_xattr
from cipherdump.ondisk.xattr import (
    EXT4_XATTR_INDEX_POSIX_ACL_ACCESS,
    EXT4_XATTR_INDEX_POSIX_ACL_DEFAULT,
    EXT4_XATTR_INDEX_SECURITY,
    EXT4_XATTR_INDEX_TRUSTED,
    EXT4_XATTR_INDEX_USER,
    PREFIXES,
)
from cipherdump.progress import OnProgress, Progress

__all__ = [
    "ObjectMeta",
    "PlainWriter",
    "TreeSource",
    "WriteProblem",
    "WriteResult",
    "write_tree",
]

# Name indices copied as they are.  Not copied: the encryption context (9), inline data
# (system.data), Lustre/Hurd/richacl ones.  POSIX ACLs (2, 3) are converted.
_COPIED_XATTRS = (EXT4_XATTR_INDEX_USER, EXT4_XATTR_INDEX_TRUSTED, EXT4_XATTR_INDEX_SECURITY)
_ACL_XATTRS = (EXT4_XATTR_INDEX_POSIX_ACL_ACCESS, EXT4_XATTR_INDEX_POSIX_ACL_DEFAULT)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PATH_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_SPECIAL_KINDS = {
    "fifo": stat.S_IFIFO,
    "chardev": stat.S_IFCHR,
    "blockdev": stat.S_IFBLK,
    "socket": stat.S_IFSOCK,
}


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    """What the writer needs of one object.  ``kind`` is ``file``, ``dir``, ``symlink``,
    ``fifo``, ``chardev``, ``blockdev``, ``socket`` (anything else is refused);
    ``xattrs`` are ``(name index, name, value)`` as ext4 stores them."""

    ino: int
    kind: str
    mode: int
    uid: int
    gid: int
    size: int
    links: int
    atime_ns: int
    mtime_ns: int
    rdev: int = 0
    encrypted: bool = False
    xattrs: tuple[tuple[int, bytes, bytes], ...] = ()


N = TypeVar("N")


class TreeSource(Protocol[N]):
    """A tree to write: objects of type ``N`` (an image node, a snapshot node)."""

    def meta(self, node: N) -> ObjectMeta: ...

    def name(self, node: N) -> bytes:
        """The plaintext name of ``node`` (never a no-key name for an encrypted one)."""
        ...

    def iter_children(self, node: N) -> Iterator[N | Problem]: ...

    def require_decryptable(self, node: N, where: str) -> None:
        """Raise KeyProblem when an encrypted ``node`` cannot be decrypted."""
        ...

    def iter_segments(self, node: N) -> Iterator[Segment]: ...

    def symlink_target(self, node: N) -> bytes: ...


# Write errors of the destination as a whole, not of one object in it.
_DESTINATION_GONE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})


@dataclass(frozen=True, slots=True)
class WriteProblem:
    """An object that was not (completely) written; ``path`` is relative to the
    destination, ``source_path`` the object's path in the source (as the user named the
    top, joined with ``path``), for messages."""

    path: bytes
    error: CipherdumpError | OSError
    source_path: bytes = b""


@dataclass
class WriteResult:
    """What was written, and what was not."""

    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    specials: int = 0
    hardlinks: int = 0
    bytes: int = 0
    skipped: int = 0
    problems: list[WriteProblem] = field(default_factory=list)
    owners_restored: bool = True

    def summary(self) -> dict[str, object]:
        return {
            "files": self.files,
            "dirs": self.dirs,
            "symlinks": self.symlinks,
            "specials": self.specials,
            "hardlinks": self.hardlinks,
            "bytes": self.bytes,
            "skipped": self.skipped,
            "problems": len(self.problems),
            "owners_restored": self.owners_restored,
        }


class PlainWriter(Generic[N]):
    def __init__(
        self,
        source: TreeSource[N],
        on_progress: OnProgress | None = None,
        *,
        resume: bool = False,
    ) -> None:
        self.src = source
        self.on_progress = on_progress
        self.resume = resume
        self.result = WriteResult()
        self.is_root = os.geteuid() == 0
        # ino -> path (components below the destination) of the first copy, for hard links.
        self.links: dict[int, tuple[bytes, ...]] = {}
        self.seen_dirs: set[int] = set()
        # Where hard-link sources are found again: the destination directory.
        self.root_path = b""
        # How messages name the destination (as typed: not "." for the current
        # directory) and the top of the tree in the source (as the user named it).
        self.shown_dest = b""
        self.shown_top = b""
        # A file, symlink or special file as the top is written under DEST's name.
        self.top_is_dest = False

    # -- reporting ---------------------------------------------------------------------
    def event(self, rel: tuple[bytes, ...]) -> None:
        """One object written (or found there already): a progress event naming it."""
        if self.on_progress is not None:
            r = self.result
            done = r.files + r.dirs + r.symlinks + r.specials + r.hardlinks + r.skipped
            self.on_progress(Progress(r.bytes, inodes_done=done, path=b"/".join(rel)))

    def problem(self, rel: tuple[bytes, ...], error: CipherdumpError | OSError) -> None:
        path = b"/".join(rel) or b"."
        if isinstance(error, OSError) and error.errno in _DESTINATION_GONE:
            # Every later write would fail the same way: one line, not one per file.
            where = os.path.join(self.shown_dest, b"/".join(rel)) or b"."
            raise OutputError(f"{_bshow(where)}: {error.strerror}") from error
        self.result.problems.append(WriteProblem(path, error, self.source_path(rel)))

    def shown(self, rel: tuple[bytes, ...]) -> str:
        return _bshow(self.source_path(rel))

    def source_path(self, rel: tuple[bytes, ...]) -> bytes:
        """The source path of the object at ``rel`` below the top, for messages."""
        if not rel or self.top_is_dest:
            return self.shown_top or b"/".join(rel) or b"."
        if not self.shown_top:
            return b"/".join(rel)
        return self.shown_top.rstrip(b"/") + b"/" + b"/".join(rel)

    def skipped(self, rel: tuple[bytes, ...]) -> None:
        self.result.skipped += 1
        self.event(rel)

    # -- the walk ----------------------------------------------------------------------
    def write_dir_into(self, node: N, dest_fd: int, rel: tuple[bytes, ...]) -> None:
        """Fill the open directory ``dest_fd`` with the children of ``node``, then give it
        ``node``'s metadata.  Iterative, so deep trees do not hit the recursion limit."""
        self.seen_dirs.add(self.src.meta(node).ino)
        # Each frame: (node, its open fd, its path, iterator over its children).
        stack: list[tuple[N, int, tuple[bytes, ...], Iterator[N | Problem]]] = [
            (node, dest_fd, rel, self._children(node, rel))
        ]
        try:
            while stack:
                parent, fd, prel, kids = stack[-1]
                kid = next(kids, None)
                if kid is None:
                    stack.pop()
                    self.finish_dir(self.src.meta(parent), fd, prel)
                    if stack:  # the top fd belongs to the caller
                        os.close(fd)
                    continue
                if isinstance(kid, Problem):
                    self.problem((*prel, kid.path.rsplit(b"/", 1)[-1]), kid.error)
                    continue
                name = self.src.name(kid)
                krel = (*prel, name)
                reason = invalid_name_reason(name)
                if reason is not None:
                    self.problem(krel, CorruptError(f"refusing to write a file with {reason}"))
                    continue
                try:
                    meta = self.src.meta(kid)
                    if meta.kind == "dir":
                        if meta.encrypted:
                            # Without the key no entry can get a plaintext name: skip
                            # the directory rather than write no-key names as if
                            # they were plaintext, and leave nothing empty behind.
                            self.src.require_decryptable(kid, self.shown(krel))
                        child_fd = self.make_dir(meta, fd, krel, len(stack))
                        if child_fd is not None:
                            stack.append((kid, child_fd, krel, self._children(kid, krel)))
                    else:
                        self.make_nondir(kid, meta, fd, name, krel)
                except (CipherdumpError, OSError) as err:
                    self.problem(krel, err)
        finally:
            for _, fd, _, _ in stack[1:]:
                os.close(fd)

    def _children(self, node: N, rel: tuple[bytes, ...]) -> Iterator[N | Problem]:
        """The entries as the source reads them (a huge directory is not held whole);
        an error listing the directory is its problem, after the entries read before."""
        try:
            yield from self.src.iter_children(node)
        except CipherdumpError as err:
            self.problem(rel, err)

    def make_dir(
        self, meta: ObjectMeta, parent_fd: int, rel: tuple[bytes, ...], depth: int
    ) -> int | None:
        if meta.ino in self.seen_dirs or depth > MAX_DEPTH:
            self.problem(rel, CorruptError("directory is reachable twice or nested too deep"))
            return None
        self.seen_dirs.add(meta.ino)
        name = rel[-1]
        try:
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        except FileExistsError:
            # An existing directory is merged into (opening it below refuses a symlink);
            # when resuming, anything else in its place is replaced.
            if self.resume:
                st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    os.unlink(name, dir_fd=parent_fd)
                    os.mkdir(name, 0o700, dir_fd=parent_fd)
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        self.result.dirs += 1
        self.event(rel)
        return fd

    def finish_dir(self, meta: ObjectMeta, fd: int, rel: tuple[bytes, ...]) -> None:
        """Metadata of a directory, once its entries are in (they change its mtime)."""
        try:
            self.set_owner_fd(fd, meta)
            os.chmod(fd, stat.S_IMODE(meta.mode))
            self.set_xattrs(f"/proc/self/fd/{fd}", meta, rel)
            os.utime(fd, ns=(meta.atime_ns, meta.mtime_ns))
        except (CipherdumpError, OSError) as err:
            self.problem(rel, err)

    def make_nondir(
        self, node: N, meta: ObjectMeta, parent_fd: int, name: bytes, rel: tuple[bytes, ...]
    ) -> None:
        first = self.links.get(meta.ino)
        if first is not None:
            self.make_hardlink(first, parent_fd, name, rel)
            return
        if meta.kind == "file":
            self.make_file(node, meta, parent_fd, name, rel)
        elif meta.kind == "symlink":
            self.make_symlink(node, meta, parent_fd, name, rel)
        elif meta.kind in _SPECIAL_KINDS:
            self.make_special(meta, parent_fd, name, rel)
        else:
            raise CorruptError(f"inode {meta.ino} has an unknown file type (mode 0o{meta.mode:o})")
        if meta.links > 1:
            self.links[meta.ino] = rel

    # -- resuming ----------------------------------------------------------------------
    def _existing(self, parent_fd: int, name: bytes) -> os.stat_result | None:
        """What is already at ``name`` when resuming (None: nothing, or not resuming)."""
        if not self.resume:
            return None
        try:
            return os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def _clear(self, parent_fd: int, name: bytes, st: os.stat_result) -> None:
        """Remove what is in the way of a new object (a directory only if empty)."""
        if stat.S_ISDIR(st.st_mode):
            os.rmdir(name, dir_fd=parent_fd)
        else:
            os.unlink(name, dir_fd=parent_fd)

    # -- object kinds ------------------------------------------------------------------
    def make_file(
        self, node: N, meta: ObjectMeta, parent_fd: int, name: bytes, rel: tuple[bytes, ...]
    ) -> None:
        old = self._existing(parent_fd, name)
        if (
            old is not None
            and stat.S_ISREG(old.st_mode)
            and old.st_size == meta.size
            and old.st_mtime_ns == meta.mtime_ns
        ):
            self.skipped(rel)
            return
        # Decryption is checked before anything is created, so a missing key leaves no
        # empty or partial file behind.
        segments = self.src.iter_segments(node)
        first = next(segments, None)
        if old is not None:
            self._clear(parent_fd, name, old)
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
            os.ftruncate(fd, meta.size)
            self.set_owner_fd(fd, meta)
            os.chmod(fd, stat.S_IMODE(meta.mode))
            self.set_xattrs(f"/proc/self/fd/{fd}", meta, rel)
            # Last: a file with the right mtime is a complete one (see ``resume``).
            os.utime(fd, ns=(meta.atime_ns, meta.mtime_ns))
        finally:
            if fd >= 0:
                os.close(fd)
        self.result.files += 1
        self.result.bytes += written
        self.event(rel)

    def make_symlink(
        self, node: N, meta: ObjectMeta, parent_fd: int, name: bytes, rel: tuple[bytes, ...]
    ) -> None:
        if meta.encrypted:
            self.src.require_decryptable(node, self.shown(rel))
        target = self.src.symlink_target(node)
        if not target or b"\0" in target:
            raise CorruptError(f"symlink inode {meta.ino} has an unusable target")
        old = self._existing(parent_fd, name)
        if old is not None:
            if stat.S_ISLNK(old.st_mode) and os.readlink(name, dir_fd=parent_fd) == target:
                self.skipped(rel)
                return
            self._clear(parent_fd, name, old)
        os.symlink(target, name, dir_fd=parent_fd)
        self.set_owner_at(parent_fd, name, meta)
        os.utime(name, ns=(meta.atime_ns, meta.mtime_ns), dir_fd=parent_fd, follow_symlinks=False)
        self.result.symlinks += 1
        self.event(rel)

    def make_special(
        self, meta: ObjectMeta, parent_fd: int, name: bytes, rel: tuple[bytes, ...]
    ) -> None:
        fmt = _SPECIAL_KINDS[meta.kind]
        old = self._existing(parent_fd, name)
        if old is not None:
            if stat.S_IFMT(old.st_mode) == fmt and old.st_rdev == meta.rdev:
                self.skipped(rel)
                return
            self._clear(parent_fd, name, old)
        os.mknod(name, fmt | 0o600, meta.rdev, dir_fd=parent_fd)
        fd = os.open(name, _PATH_FLAGS, dir_fd=parent_fd)
        try:
            # The O_PATH descriptor pins the node mknod just made; its /proc link
            # reaches it without another lookup by name.
            proc = f"/proc/self/fd/{fd}"
            self.set_owner_at(parent_fd, name, meta)
            os.chmod(proc, stat.S_IMODE(meta.mode))
            self.set_xattrs(proc, meta, rel)
            os.utime(proc, ns=(meta.atime_ns, meta.mtime_ns))
        finally:
            os.close(fd)
        self.result.specials += 1
        self.event(rel)

    def make_hardlink(
        self, first: tuple[bytes, ...], parent_fd: int, name: bytes, rel: tuple[bytes, ...]
    ) -> None:
        src = self._open_below(first)
        try:
            old = self._existing(parent_fd, name)
            if old is not None:
                mine = os.fstat(src)
                if (old.st_dev, old.st_ino) == (mine.st_dev, mine.st_ino):
                    self.skipped(rel)
                    return
                self._clear(parent_fd, name, old)
            os.link(f"/proc/self/fd/{src}", name, dst_dir_fd=parent_fd, follow_symlinks=True)
        finally:
            os.close(src)
        self.result.hardlinks += 1
        self.event(rel)

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
    def set_owner_fd(self, fd: int, meta: ObjectMeta) -> None:
        try:
            os.chown(fd, meta.uid, meta.gid)
        except PermissionError:
            if self.is_root:
                raise
            self.result.owners_restored = False

    def set_owner_at(self, dir_fd: int, name: bytes, meta: ObjectMeta) -> None:
        try:
            os.chown(name, meta.uid, meta.gid, dir_fd=dir_fd, follow_symlinks=False)
        except PermissionError:
            if self.is_root:
                raise
            self.result.owners_restored = False

    def set_xattrs(self, proc_path: str, meta: ObjectMeta, rel: tuple[bytes, ...]) -> None:
        for index, xname, value in meta.xattrs:
            if index in _COPIED_XATTRS:
                full, data = PREFIXES[index] + xname, value
            elif index in _ACL_XATTRS and not xname:
                try:
                    full, data = PREFIXES[index], ext4_acl_to_xattr(value)
                except CorruptError as err:
                    self.problem(rel, err)
                    continue
            else:
                continue
            try:
                os.setxattr(proc_path, full, data)
            except OSError as err:
                if err.errno in (errno.EPERM, errno.EACCES) and not self.is_root:
                    continue  # trusted.* needs CAP_SYS_ADMIN
                if err.errno == errno.EOPNOTSUPP and index in _ACL_XATTRS:
                    # The destination has no ACL support: the mode bits still hold
                    # the ACL's owner, group (or mask) and other permissions.
                    continue
                self.problem(rel, err)


def write_tree(
    source: TreeSource[N],
    top: N,
    dest: str | bytes | os.PathLike[str],
    *,
    on_progress: OnProgress | None = None,
    resume: bool = False,
    shown_top: bytes = b"",
) -> WriteResult:
    """Write ``top`` of ``source`` to ``dest`` (see the module docstring).

    ``shown_top`` is how the user named ``top`` in the source (``/home``): messages
    name objects by their path there.

    A directory ``top`` fills ``dest`` (created if missing, merged if it exists; its
    own metadata goes onto ``dest``).  Any other ``top`` is written as ``dest``, or
    into ``dest`` under its name when ``dest`` is an existing directory.
    """
    w = PlainWriter(source, on_progress, resume=resume)
    w.shown_top = shown_top
    meta = source.meta(top)
    dest_b = os.fsencode(dest)
    if not dest_b:
        raise OutputError("the destination is an empty string")
    if meta.kind == "dir":
        if meta.encrypted:
            source.require_decryptable(
                top, w.shown(()) if shown_top else _show((source.name(top),))
            )
        fd = _open_destination(dest_b)
        w.root_path = w.shown_dest = dest_b
        try:
            w.write_dir_into(top, fd, ())
        finally:
            os.close(fd)
        return w.result
    if os.path.isdir(dest_b) and not os.path.islink(dest_b):
        parent, name = dest_b, source.name(top)
        where = os.path.join(dest_b, name)
    else:
        parent, name = os.path.split(dest_b)
        where = dest_b
    reason = invalid_name_reason(name)
    if reason is not None:
        raise InputError(f"cannot write a file with {reason}")
    try:
        fd = os.open(parent or b".", _DIR_FLAGS)
    except OSError as exc:
        raise OutputError(f"cannot create {_bshow(where)}: {_why_not_dir(parent, exc)}") from None
    w.root_path = parent or b"."
    w.shown_dest = parent
    w.top_is_dest = True
    try:
        w.make_nondir(top, meta, fd, name, (name,))
    except OSError as err:
        # The one object written is the destination itself: its failure is the
        # output's (exists, permission denied), not a problem of one object among many.
        raise OutputError(f"{_bshow(where)}: {err.strerror}") from None
    except CipherdumpError as err:
        w.problem((name,), err)
    finally:
        os.close(fd)
    return w.result


def _open_destination(dest: bytes) -> int:
    """The destination directory, made if missing; :class:`OutputError` if it cannot be."""
    try:
        os.mkdir(dest, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        parent = os.path.dirname(dest.rstrip(b"/"))
        if exc.errno in (errno.ENOENT, errno.ENOTDIR) and parent:
            why = _why_not_dir(parent, exc)
        else:
            why = exc.strerror or str(exc)
        raise OutputError(f"cannot create {_bshow(dest)}: {why}") from None
    try:
        return os.open(dest, _DIR_FLAGS)
    except OSError as exc:
        raise OutputError(_why_not_dir(dest, exc)) from None


def _why_not_dir(path: bytes, exc: OSError) -> str:
    """Why ``path`` cannot be used as the directory to write into: what is there."""
    try:
        st = os.lstat(path or b".")
    except OSError as err:
        return f"{_bshow(path)}: {err.strerror}"
    if stat.S_ISLNK(st.st_mode):
        return f"{_bshow(path)} is a symlink, which is not followed; name the directory itself"
    if not stat.S_ISDIR(st.st_mode):
        return f"{_bshow(path)} is not a directory"
    return f"{_bshow(path)}: {exc.strerror or exc}"


def _bshow(path: bytes) -> str:
    return path.decode("utf-8", "backslashreplace")


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _show(rel: tuple[bytes, ...]) -> str:
    return (b"/".join(rel) or b".").decode("utf-8", "backslashreplace")
