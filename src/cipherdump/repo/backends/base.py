"""The Backend protocol, the file types it stores and the handles that name files."""

from __future__ import annotations

import enum
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from cipherdump.errors import BackendError
from cipherdump.repo.ids import is_hex_id


class FileType(enum.Enum):
    """The kinds of repository files; the value is the directory/prefix name."""

    CONFIG = "config"
    KEY = "keys"
    LOCK = "locks"
    SNAPSHOT = "snapshots"
    INDEX = "index"
    PACK = "data"


@dataclass(frozen=True, slots=True)
class Handle:
    """Names one repository file.

    The config file's name is the empty string; every other file is named by 64
    lowercase hex digits.  Validating here keeps path traversal out of every backend.
    """

    type: FileType
    name: str = ""

    def __post_init__(self) -> None:
        if self.type is FileType.CONFIG:
            if self.name != "":
                raise BackendError("the config file has no name")
        elif not is_hex_id(self.name):
            raise BackendError(f"bad {self.type.value} file name {self.name[:80]!r}")

    def __str__(self) -> str:
        """The file's path relative to the repository root (local backend layout)."""
        if self.type is FileType.CONFIG:
            return "config"
        if self.type is FileType.PACK:
            return f"data/{self.name[:2]}/{self.name}"
        return f"{self.type.value}/{self.name}"


@dataclass(frozen=True, slots=True)
class FileInfo:
    """One entry of :meth:`Backend.list`.

    ``mtime_ns``: when the file was last saved, in ns since the epoch, by the storage's
    clock, or None if the backend cannot tell.  ``prune`` deletes a pack no index names
    only once it is older than a safety margin (a writer whose lock was lost may not
    have indexed it yet); without a time it keeps such a pack."""

    name: str
    size: int
    mtime_ns: int | None = None


class ObjectMissing(BackendError):
    """The named file does not exist in the backend."""


class TransientError(BackendError):
    """A failure of the storage that may pass (a server error, throttling, a timeout, a
    connection refused or dropped): :class:`~cipherdump.repo.backends.retry.RetryBackend`
    tries again.  Every other :class:`BackendError` is final."""


class ShortFile(BackendError):
    """A range past the end of a file was asked for.  The storage did not fail: the
    file is shorter than its reader expected, which for a repository file whose size
    an index records means the file was cut short or replaced (damage, not a backend
    failure: see :meth:`~cipherdump.repo.blobstore.BlobStore.load`)."""


class Backend(Protocol):
    """Storage only: whole-file atomic writes, ranged reads, listing, removal.

    * ``save`` is atomic: a reader sees either no file or the whole file, also after a
      crash at any point.  Saving an existing name replaces it atomically.
    * ``load`` with ``length=None`` reads to the end; a range past the end raises
      :class:`BackendError`.  A missing file raises :class:`ObjectMissing`.
    * ``list`` yields every complete file of one type, in no particular order, with its
      size and, where the storage keeps one, its modification time.
    * Every other failure of the storage raises :class:`BackendError`.
    """

    @property
    def location(self) -> str: ...

    def save(self, handle: Handle, source: BinaryIO) -> None:
        """Store everything ``source.read`` yields (from its current position) under ``handle``."""
        ...

    def load(self, handle: Handle, offset: int = 0, length: int | None = None) -> bytes: ...

    def stat(self, handle: Handle) -> int:
        """The size in bytes of the file."""
        ...

    def remove(self, handle: Handle) -> None: ...

    def list(self, file_type: FileType) -> Iterator[FileInfo]: ...

    def close(self) -> None: ...


class Spool(Protocol):
    """A file a writer fills in place and the backend then keeps as it is, so a pack is
    not copied once more by :meth:`Backend.save`.  An optional backend capability: see
    :func:`open_spool`."""

    @property
    def file(self) -> BinaryIO:
        """Readable and writable, positioned at its end."""
        ...

    def commit(self, handle: Handle) -> None:
        """Make the file durable under ``handle``, atomically as :meth:`Backend.save`."""
        ...

    def discard(self) -> None:
        """Forget the file (no-op after :meth:`commit`)."""
        ...


class TempFileSpool:
    """A :class:`Spool` whose file is an unnamed local temporary file, for a backend
    that cannot store a file where it is written (S3, a worker's relay): a subclass
    says how :meth:`commit` sends it.  Killed, it leaves nothing behind."""

    def __init__(self) -> None:
        self._file: BinaryIO = tempfile.TemporaryFile()  # noqa: SIM115 (closed by discard)

    @property
    def file(self) -> BinaryIO:
        return self._file

    def commit(self, handle: Handle) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def discard(self) -> None:
        self._file.close()


class WrappedBackend:
    """A backend that wraps another (retries, a cache) and passes on the attributes
    readers ask of the storage behind it; ``inner`` is the wrapped backend."""

    inner: Backend

    @property
    def location(self) -> str:
        return self.inner.location

    @property
    def shared_between_processes(self) -> bool:
        return bool(getattr(self.inner, "shared_between_processes", False))

    @property
    def relay_from_forks(self) -> bool:
        return bool(getattr(self.inner, "relay_from_forks", False))

    @property
    def read_ahead(self) -> int:
        return int(getattr(self.inner, "read_ahead", 0))

    @property
    def connections(self) -> int:
        return int(getattr(self.inner, "connections", 1))


def open_spool(backend: Backend, file_type: FileType) -> Spool | None:
    """A spool for a new file of ``file_type`` if the backend offers them, else None."""
    opener = getattr(backend, "open_spool", None)
    if opener is None:
        return None
    spool: Spool = opener(file_type)
    return spool


# Backends copy streams in pieces of this size, so no backend needs a whole pack in memory.
COPY_CHUNK = 1 << 20


def check_range(handle: Handle, size: int, offset: int, length: int | None) -> int:
    """Validate a read range against a file size; return the length to read."""
    if offset < 0 or (length is not None and length < 0):
        raise BackendError(f"negative read range for {handle}")
    if length is None:
        length = max(size - offset, 0)
    if offset + length > size:
        raise ShortFile(f"short file {handle}: wanted {length} bytes at {offset}, file has {size}")
    return length
