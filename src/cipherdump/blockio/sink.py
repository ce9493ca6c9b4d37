"""A write-capable image file: the only place cipherdump opens anything for writing.

Sources stay read-only (:mod:`cipherdump.blockio.source`); a sink is made only for the
target of a restore or clone, an image file the user named as output.
"""

from __future__ import annotations

import fcntl
import os
import stat

from cipherdump.blockio.source import Closable
from cipherdump.errors import InputError, NotFoundError, OutputError


class TargetLock(Closable):
    """An exclusive ``flock`` on an image file, held for a whole restore or clone.

    A second writer is refused at once rather than made to wait: two writers into one
    image would each allocate from the bitmaps they loaded, and the later commit would
    silently drop the earlier tree.  With ``create`` the file is made if missing, mode
    0600 from the start: a key-less image holds every unencrypted file of its source.
    """

    def __init__(self, path: str, *, create: bool, shown: str | None = None) -> None:
        self._name = path
        self._create = create
        shown = shown or path
        try:
            st = os.stat(path)
        except FileNotFoundError:
            if not create:
                raise NotFoundError(f"{path}: no such file") from None
        else:
            if not stat.S_ISREG(st.st_mode):
                raise InputError(f"{path}: only image files can be written, not devices")
        # A file we create is ours alone: never a symlink planted where it will be.
        flags = os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT | os.O_NOFOLLOW if create else 0)
        try:
            self._fd = os.open(path, flags, 0o600)
        except OSError as e:
            raise OutputError(f"{path}: cannot open for writing: {e.strerror}") from None
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise OutputError(
                f"{shown}: another cipherdump is writing this image; wait for it to finish"
            ) from None
        except OSError as e:
            os.close(self._fd)
            raise OutputError(f"{path}: cannot lock: {e.strerror}") from None

    @property
    def name(self) -> str:
        return self._name

    def is_current(self) -> bool:
        """Whether the path still names the locked file (not replaced meanwhile), and a
        file this lock created has no other name."""
        try:
            st = os.stat(self._name)
        except OSError:
            return False
        mine = os.fstat(self._fd)
        if self._create and mine.st_nlink != 1:
            return False
        return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    def resize(self, size: int) -> None:
        """Empty the file, then give it ``size`` bytes (sparse)."""
        try:
            os.ftruncate(self._fd, 0)
            os.ftruncate(self._fd, size)
        except OSError as e:
            raise OutputError(
                f"{self._name}: cannot make a {size}-byte file: {e.strerror}"
            ) from None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # releases the lock
            self._fd = -1


class FileSink(Closable):
    """A regular image file opened read-write: ``read_at`` and ``write_at``, no cursor."""

    def __init__(self, path: str) -> None:
        self._name = path
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise NotFoundError(f"{path}: no such file") from None
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{path}: only image files can be written, not devices")
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise InputError(f"{path}: {e.strerror}") from None
        self._size = os.fstat(self._fd).st_size

    @property
    def size(self) -> int:
        return self._size

    @property
    def name(self) -> str:
        return self._name

    def read_at(self, offset: int, length: int) -> bytes:
        if length <= 0 or offset >= self._size:
            return b""
        try:
            return os.pread(self._fd, min(length, self._size - offset), offset)
        except OSError as e:
            raise OutputError(f"{self._name}: cannot read at byte {offset}: {e.strerror}") from e

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        try:
            while view:
                n = os.pwrite(self._fd, view, offset)
                view = view[n:]
                offset += n
        except OSError as e:
            raise OutputError(f"{self._name}: cannot write at byte {offset}: {e.strerror}") from e
        self._size = max(self._size, offset)

    def sync(self) -> None:
        try:
            os.fsync(self._fd)
        except OSError as e:
            raise OutputError(f"{self._name}: cannot sync: {e.strerror}") from e

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
