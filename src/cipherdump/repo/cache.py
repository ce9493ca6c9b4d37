"""A local cache of a remote repository's index files, snapshots and tree packs.

Why: an incremental backup, ``ls``, ``diff`` and ``snapshots`` read every index file,
every snapshot and the trees they walk; from S3 each is a request, every run.  These
files never change once saved (their names are content ids), so a copy kept locally
stays right until the file is removed from the repository.

* Where: ``CIPHERDUMP_CACHE_DIR``, else ``$XDG_CACHE_HOME/cipherdump`` (else
  ``~/.cache/cipherdump``), then a folder per repository id; ``CIPHERDUMP_NO_CACHE=1``
  turns it off.  Folders ``0700``, files ``0600``, written under a temporary name and
  renamed, so a reader never sees half a file.  What is cached is the repository's
  bytes, encrypted as they are there.
* Never trusted: an index file or snapshot is used only if its bytes hash to its name
  (else it is removed and read from the repository again).  A tree pack's blobs are
  authenticated as they are opened; the blob store drops a pack whose blob fails and
  reads from the repository instead (``forget``).
* Kept in step: listing index files, snapshots or packs drops the cached ones no
  longer listed (removed by a repair, say); saving an index file or snapshot keeps a
  copy.
* Only for remote backends: :func:`~cipherdump.repo.location.open_backend` puts it
  around S3.  The cache knows its repository only once the config is read
  (:meth:`attach_cache`); until then everything goes to the repository.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

from cipherdump.repo.backends.base import (
    COPY_CHUNK,
    Backend,
    FileInfo,
    FileType,
    Handle,
    Spool,
    WrappedBackend,
    open_spool,
)
from cipherdump.repo.crypto import file_id

ENV_CACHE_DIR = "CIPHERDUMP_CACHE_DIR"
ENV_NO_CACHE = "CIPHERDUMP_NO_CACHE"
_WHOLE_FILES = (FileType.INDEX, FileType.SNAPSHOT)


def default_cache_root(env: Mapping[str, str]) -> Path | None:
    """The folder that holds one cache per repository, or None if turned off."""
    if env.get(ENV_NO_CACHE, "") not in ("", "0"):
        return None
    if env.get(ENV_CACHE_DIR):
        return Path(env[ENV_CACHE_DIR])
    xdg = env.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path(env.get("HOME") or Path.home()) / ".cache"
    return base / "cipherdump"


class CachingBackend(WrappedBackend):
    def __init__(self, inner: Backend, root: Path) -> None:
        self.inner = inner
        self._root = root
        self._dir: Path | None = None
        self.hits = 0  # files served from the cache, for tests

    @property
    def uncached(self) -> Backend:
        """The repository itself: what ``check`` and the repairs read, since they are
        there to find damage in the repository, not in this copy of it."""
        return self.inner

    @property
    def directory(self) -> Path | None:
        return self._dir

    def attach_cache(self, repo_id: str) -> None:
        """Use the cache of the repository ``repo_id`` (64 hex digits)."""
        directory = self._root / repo_id
        try:
            for sub in (self._root, directory, *(directory / t.value for t in _WHOLE_FILES)):
                sub.mkdir(mode=0o700, exist_ok=True)
            (directory / FileType.PACK.value).mkdir(mode=0o700, exist_ok=True)
        except OSError:
            return  # no cache (a read-only home, say): everything from the repository
        self._dir = directory

    # -- the protocol -----------------------------------------------------------------
    def save(self, handle: Handle, source: BinaryIO) -> None:
        if self._dir is None or handle.type not in _WHOLE_FILES:
            self.inner.save(handle, source)
            return
        data = _read_all(source)
        self.inner.save(handle, io.BytesIO(data))
        if file_id(data).hex == handle.name:
            self._keep(handle, data)

    def load(self, handle: Handle, offset: int = 0, length: int | None = None) -> bytes:
        if (
            self._dir is None
            or handle.type not in _WHOLE_FILES
            or offset != 0
            or length is not None
        ):
            return self.inner.load(handle, offset, length)
        path = self._path(handle)
        try:
            data = path.read_bytes()
        except OSError:
            data = None
        if data is not None:
            if file_id(data).hex == handle.name:
                self.hits += 1
                return data
            _unlink(path)  # damaged: never trusted, fetched again
        data = self.inner.load(handle)
        if file_id(data).hex == handle.name:
            self._keep(handle, data)
        return data

    def load_pack(self, handle: Handle, size: int) -> bytes | None:
        """The whole pack (of ``size`` bytes, as the index says), from the cache or
        fetched into it; None without a cache.  For tree packs: the blob store
        authenticates each blob it takes from it."""
        if self._dir is None:
            return None
        path = self._path(handle)
        try:
            data = path.read_bytes()
        except OSError:
            data = None
        if data is not None and len(data) == size:
            self.hits += 1
            return data
        data = self.inner.load(handle, 0, size)
        self._keep(handle, data)
        return data

    def forget(self, handle: Handle) -> None:
        """Drop a cached file that failed (a blob of it did not open)."""
        if self._dir is not None:
            _unlink(self._path(handle))

    def stat(self, handle: Handle) -> int:
        return self.inner.stat(handle)

    def remove(self, handle: Handle) -> None:
        self.inner.remove(handle)
        if self._dir is not None:
            _unlink(self._path(handle))

    def list(self, file_type: FileType) -> Iterator[FileInfo]:
        found = builtins.list(self.inner.list(file_type))
        if self._dir is not None and file_type in (*_WHOLE_FILES, FileType.PACK):
            listed = {info.name for info in found}
            with contextlib.suppress(OSError):
                for entry in os.scandir(self._dir / file_type.value):
                    if entry.name not in listed:
                        _unlink(Path(entry.path))
        yield from found

    def open_spool(self, file_type: FileType) -> Spool | None:
        return open_spool(self.inner, file_type)

    def close(self) -> None:
        self.inner.close()

    # -- the cache's files ------------------------------------------------------------
    def _path(self, handle: Handle) -> Path:
        assert self._dir is not None
        return self._dir / handle.type.value / handle.name

    def _keep(self, handle: Handle, data: bytes) -> None:
        path = self._path(handle)
        tmp = path.with_name(f".tmp-{os.urandom(8).hex()}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, path)
        except OSError:
            _unlink(tmp)  # a cache that cannot be written is only slower


def _read_all(source: BinaryIO) -> bytes:
    parts = []
    while chunk := source.read(COPY_CHUNK):
        parts.append(chunk)
    return b"".join(parts)


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
