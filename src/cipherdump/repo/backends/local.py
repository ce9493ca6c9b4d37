"""The local backend: a directory, written only by atomic, durable renames.

Layout (see ``docs/repository-format.md``)::

    config  keys/<id>  locks/<id>  snapshots/<id>  index/<id>  data/<id[:2]>/<id>

Every write goes to ``<dir>/.tmp-<random>`` (created ``0600`` with ``O_EXCL``), is
fsynced, renamed over the final name, and then the directory is fsynced, so a crash at
any point leaves either no file or the whole file.  Directories are created ``0700``.
Left-over ``.tmp-*`` files are never listed; the next holder of the lock removes them.
Packs are assembled in place, in ``data/.tmp-<random>`` (:meth:`LocalBackend.open_spool`),
and renamed into their ``data/<id[:2]>/`` directory once complete, instead of being
copied there.
"""

from __future__ import annotations

import builtins
import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, cast

from cipherdump.errors import BackendError, IntegrityError
from cipherdump.repo.backends.base import (
    COPY_CHUNK,
    FileInfo,
    FileType,
    Handle,
    ObjectMissing,
    ShortFile,
    check_range,
)
from cipherdump.repo.direct_file import DirectAppendFile
from cipherdump.repo.ids import is_hex_id

FILE_MODE = 0o600
DIR_MODE = 0o700
TEMP_PREFIX = ".tmp-"
_SUBDIRS = (FileType.KEY, FileType.LOCK, FileType.SNAPSHOT, FileType.INDEX, FileType.PACK)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mkdir(path: Path) -> None:
    """Create one directory 0700 and make its entry durable; existing is fine."""
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        return
    os.chmod(path, DIR_MODE)
    _fsync_dir(path.parent)


class LocalBackend:
    """A repository in a local directory."""

    # Several processes may write at once: every file is written under a temporary
    # name of its own and renamed into place.
    shared_between_processes = True

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.root = Path(path)
        if not self.root.is_dir():
            raise ObjectMissing(f"repository directory {self.root} does not exist")
        # Something else in the place of a subdirectory is damage done outside
        # cipherdump: said once, here, rather than as a failure of each operation.
        wrong = [
            sub.value
            for sub in _SUBDIRS
            if os.path.lexists(self.root / sub.value) and not (self.root / sub.value).is_dir()
        ]
        if wrong:
            raise IntegrityError(
                f"repository {self.root} is damaged: {', '.join(wrong)} "
                f"{'is not a directory' if len(wrong) == 1 else 'are not directories'}"
            )

    @classmethod
    def create(cls, path: str | os.PathLike[str]) -> LocalBackend:
        """Create the directory tree for a new repository (missing or empty ``path``)."""
        root = Path(path)
        try:
            if root.exists() or root.is_symlink():
                if not root.is_dir():
                    raise BackendError(f"{root} exists and is not a directory")
                if any(root.iterdir()):
                    raise BackendError(f"{root} is a directory that is not empty")
                os.chmod(root, DIR_MODE)
            else:
                root.parent.mkdir(parents=True, exist_ok=True)
                _mkdir(root)
            for sub in _SUBDIRS:
                _mkdir(root / sub.value)
        except OSError as exc:
            raise BackendError(f"cannot create repository at {root}: {exc}") from exc
        return cls(root)

    @property
    def location(self) -> str:
        return f"local:{self.root}"

    def _path(self, handle: Handle) -> Path:
        return self.root / str(handle)

    def save(self, handle: Handle, source: BinaryIO) -> None:
        path = self._path(handle)
        directory = path.parent
        try:
            if handle.type is FileType.PACK:
                _mkdir(directory)
            tmp = directory / f"{TEMP_PREFIX}{os.urandom(8).hex()}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
            try:
                os.fchmod(fd, FILE_MODE)
                with os.fdopen(fd, "wb", closefd=False) as out:
                    while chunk := source.read(COPY_CHUNK):
                        out.write(chunk)
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                tmp.unlink(missing_ok=True)
                raise
            os.close(fd)
            os.replace(tmp, path)
            _fsync_dir(directory)
        except OSError as exc:
            raise BackendError(f"cannot write {handle} in {self.location}: {exc}") from exc

    def open_spool(self, file_type: FileType) -> LocalSpool:
        """A new ``.tmp-*`` file in ``file_type``'s directory, to be renamed into place."""
        directory = self.root / file_type.value
        tmp = directory / f"{TEMP_PREFIX}{os.urandom(8).hex()}"
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
        except OSError as exc:
            raise BackendError(f"cannot create a file in {directory}: {exc}") from exc
        try:
            os.fchmod(fd, FILE_MODE)
            # Written once and not read again: around the page cache (see direct.py).
            file = cast(BinaryIO, DirectAppendFile(str(tmp), fd))
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        return LocalSpool(self, tmp, file)

    def load(self, handle: Handle, offset: int = 0, length: int | None = None) -> bytes:
        path = self._path(handle)
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                length = check_range(handle, size, offset, length)
                f.seek(offset)
                data = f.read(length)
        except FileNotFoundError:
            raise ObjectMissing(f"{handle} does not exist in {self.location}") from None
        except OSError as exc:
            raise BackendError(f"cannot read {handle} in {self.location}: {exc}") from exc
        if len(data) != length:
            raise ShortFile(f"short read of {handle} in {self.location}")
        return data

    def stat(self, handle: Handle) -> int:
        try:
            return self._path(handle).stat().st_size
        except FileNotFoundError:
            raise ObjectMissing(f"{handle} does not exist in {self.location}") from None
        except OSError as exc:
            raise BackendError(f"cannot stat {handle} in {self.location}: {exc}") from exc

    def remove(self, handle: Handle) -> None:
        path = self._path(handle)
        try:
            path.unlink()
            _fsync_dir(path.parent)
        except FileNotFoundError:
            raise ObjectMissing(f"{handle} does not exist in {self.location}") from None
        except OSError as exc:
            raise BackendError(f"cannot remove {handle} in {self.location}: {exc}") from exc

    def list(self, file_type: FileType) -> Iterator[FileInfo]:
        try:
            if file_type is FileType.CONFIG:
                config = self.root / "config"
                if config.is_file():
                    st = config.stat()
                    yield FileInfo("", st.st_size, st.st_mtime_ns)
                return
            top = self.root / file_type.value
            if file_type is FileType.PACK:
                dirs = [Path(e.path) for e in _scandir(top) if len(e.name) == 2 and e.is_dir()]
                dirs.sort()
            else:
                dirs = [top]
            for directory in dirs:
                for entry in sorted(_scandir(directory), key=lambda e: e.name):
                    if is_hex_id(entry.name) and entry.is_file(follow_symlinks=False):
                        if file_type is FileType.PACK and directory.name != entry.name[:2]:
                            continue  # not where its name puts it: see misplaced()
                        st = entry.stat(follow_symlinks=False)
                        yield FileInfo(entry.name, st.st_size, st.st_mtime_ns)
        except OSError as exc:
            raise BackendError(f"cannot list {file_type.value} in {self.location}: {exc}") from exc

    def misplaced(self) -> builtins.list[str]:
        """Packs in a ``data/`` folder other than the one their name puts them in
        (moved by hand, say), as repository-relative paths.  They are not listed,
        so readers treat them as absent, as restic's local backend does not (it lists
        them, and then cannot load them); ``check`` names them."""
        out = []
        top = self.root / FileType.PACK.value
        try:
            for sub in sorted(_scandir(top), key=lambda e: e.name):
                if len(sub.name) != 2 or not sub.is_dir():
                    continue
                for entry in sorted(_scandir(Path(sub.path)), key=lambda e: e.name):
                    if (
                        is_hex_id(entry.name)
                        and entry.name[:2] != sub.name
                        and entry.is_file(follow_symlinks=False)
                    ):
                        out.append(f"{FileType.PACK.value}/{sub.name}/{entry.name}")
        except OSError as exc:
            raise BackendError(f"cannot list data in {self.location}: {exc}") from exc
        return out

    def put_back(self, path: str) -> bool:
        """Move a misplaced pack (a path :meth:`misplaced` gave) to where its name puts
        it, unless a file is there already; True if it was moved.  For the holder of
        the lock (``repair packs``)."""
        source = self.root / path
        handle = Handle(FileType.PACK, source.name)
        target = self._path(handle)
        try:
            if target.exists():
                return False
            _mkdir(target.parent)
            os.link(source, target)  # (never over an existing file)
            _fsync_dir(target.parent)
            source.unlink()
            _fsync_dir(source.parent)
        except FileExistsError:
            return False
        except OSError as exc:
            raise BackendError(f"cannot move {path} in {self.location}: {exc}") from exc
        return True

    def temporary_files(self) -> builtins.list[str]:
        """The ``.tmp-*`` files now present (a writer's files being written, or what
        an interrupted one left), as repository-relative paths."""
        dirs = [self.root / t.value for t in _SUBDIRS]
        dirs += [Path(e.path) for e in _scandir(self.root / FileType.PACK.value) if e.is_dir()]
        out = []
        try:
            for directory in dirs:
                for entry in _scandir(directory):
                    if entry.name.startswith(TEMP_PREFIX):
                        out.append(str(Path(entry.path).relative_to(self.root)))
        except OSError as exc:
            raise BackendError(f"cannot list {self.location}: {exc}") from exc
        return sorted(out)

    def list_leftovers(self) -> set[str]:
        """The ``.tmp-*`` files there are now, as paths in the repository."""
        found = set()
        dirs = [self.root / t.value for t in _SUBDIRS]
        try:
            dirs += [Path(e.path) for e in _scandir(self.root / FileType.PACK.value) if e.is_dir()]
            for directory in dirs:
                for entry in _scandir(directory):
                    if entry.name.startswith(TEMP_PREFIX) and entry.is_file(follow_symlinks=False):
                        found.add(str(Path(entry.path).relative_to(self.root)))
        except OSError as exc:
            raise BackendError(f"cannot list temporary files in {self.location}: {exc}") from exc
        return found

    def remove_leftovers(self, only: set[str] | None = None) -> int:
        """Remove the ``.tmp-*`` files that interrupted writers left (with ``only``,
        those of them it names, from :meth:`list_leftovers`); returns how many.

        For the holder of the exclusive lock (no one else writes, so every temporary
        file is one that will never be finished), or with ``only`` for the holder of a
        shared lock: the files there were before it wrote its lock, when the lock
        check before and after found no other live lock (a writer makes its lock
        before any temporary file, so these belong to no live writer).
        """
        removed = 0
        try:
            for name in self.list_leftovers() if only is None else only:
                try:
                    os.unlink(self.root / name)
                except FileNotFoundError:
                    continue
                removed += 1
        except OSError as exc:
            raise BackendError(f"cannot clean up {self.location}: {exc}") from exc
        return removed

    def close(self) -> None:
        pass


class LocalSpool:
    """A file being filled in place; :meth:`commit` fsyncs it and renames it into place
    (then fsyncs both directories), as :meth:`LocalBackend.save` does with its copy."""

    def __init__(self, backend: LocalBackend, tmp: Path, file: BinaryIO) -> None:
        self._backend = backend
        self._tmp = tmp
        self._file = file
        self._done = False

    @property
    def file(self) -> BinaryIO:
        return self._file

    def commit(self, handle: Handle) -> None:
        if self._done:
            raise BackendError(f"{self._tmp} was already committed or discarded")
        path = self._backend._path(handle)
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            if handle.type is FileType.PACK:
                _mkdir(path.parent)
            os.replace(self._tmp, path)
            self._done = True
            _fsync_dir(path.parent)
            if path.parent != self._tmp.parent:
                _fsync_dir(self._tmp.parent)
        except OSError as exc:
            self.discard()
            raise BackendError(f"cannot write {handle} in {self._backend.location}: {exc}") from exc

    def discard(self) -> None:
        self._file.close()
        if not self._done:
            self._done = True
            self._tmp.unlink(missing_ok=True)


def _scandir(path: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(path) as it:
            return list(it)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return []
        raise
