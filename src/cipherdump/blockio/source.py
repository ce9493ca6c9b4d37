"""Read-only byte sources with positional reads and no shared cursor."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self

from cipherdump.blockio.kinds import file_kind, is_source_kind
from cipherdump.errors import InputError, NotFoundError

if TYPE_CHECKING:
    from cipherdump.blockio.direct import DirectReader


class ByteSource(Protocol):
    """Random-access, read-only bytes.  Reads past the end return what exists."""

    @property
    def size(self) -> int: ...

    @property
    def name(self) -> str: ...

    def read_at(self, offset: int, length: int) -> bytes: ...

    def close(self) -> None: ...


class Closable:
    """``with`` support for anything with a ``close()``: sources, sinks, filesystems."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:  # pragma: no cover - overridden
        pass


class MemorySource(Closable):
    """Bytes held in memory (tests, fuzzing, decompressed fixtures)."""

    def __init__(self, data: bytes, name: str = "<memory>") -> None:
        self._data = bytes(data)
        self._name = name

    @property
    def size(self) -> int:
        return len(self._data)

    @property
    def name(self) -> str:
        return self._name

    def read_at(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        return self._data[offset : offset + length]


class FileSource(Closable):
    """A regular file (an image) read with ``pread``."""

    def __init__(self, path: str) -> None:
        self._name = path
        self._fd = _open_readonly(path, 0)
        self._size = os.fstat(self._fd).st_size

    @property
    def size(self) -> int:
        return self._size

    @property
    def name(self) -> str:
        return self._name

    def read_at(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        if length == 0 or offset >= self._size:
            return b""
        try:
            return os.pread(self._fd, min(length, self._size - offset), offset)
        except OSError as exc:
            raise read_error(self._name, offset, exc) from None

    def prefetch(self, offset: int, length: int) -> None:
        """Ask the kernel to start reading ``[offset, offset + length)`` now, so a
        later :meth:`read_at` of it need not wait (a hint; errors are ignored)."""
        if self._fd >= 0 and length > 0:
            with contextlib.suppress(OSError):
                os.posix_fadvise(self._fd, offset, length, os.POSIX_FADV_WILLNEED)

    def reopen(self) -> None:
        """Read through a new open file of the same file.  A forked process that kept
        the parent's would share its kernel read-ahead state, and two interleaved
        streams of reads defeat read-ahead for both."""
        fd = _open_readonly(f"/proc/self/fd/{self._fd}", 0)
        os.close(self._fd)
        self._fd = fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class DirectDeviceSource(Closable):
    """A block device read with ``O_DIRECT``, with read-ahead of our own (see
    :mod:`cipherdump.blockio.direct`).

    The page cache is bypassed so an administrator's backup never leaves ciphertext
    (or anything else) cached on the host on behalf of the user, and so that what is
    read is what is on the device, not blocks the device's cache kept from before a
    filesystem on it was mounted and written.
    """

    def __init__(self, path: str) -> None:
        self._name = path
        self._fd = _open_readonly(path, os.O_DIRECT)
        self._size = os.lseek(self._fd, 0, os.SEEK_END)
        # Imported here: images, the common source, need neither it nor ctypes.
        from cipherdump.blockio.direct import DirectReader

        self._reader: DirectReader = DirectReader(self._fd, self._size)

    @property
    def size(self) -> int:
        return self._size

    @property
    def name(self) -> str:
        return self._name

    def read_at(self, offset: int, length: int) -> bytes:
        try:
            return self._reader.read_at(offset, length)
        except OSError as exc:
            raise read_error(self._name, offset, exc) from None

    def prefetch(self, offset: int, length: int) -> None:
        """Have ``[offset, offset + length)`` read ahead of the walk (a hint)."""
        self._reader.prefetch(offset, length)

    def prefetch_stream(self, offset: int, length: int) -> None:
        """:meth:`prefetch` of what a big file's reads come to next."""
        self._reader.prefetch_stream(offset, length)

    @property
    def readahead_window(self) -> int:
        """Bytes worth hinting with :meth:`prefetch` at one time."""
        return self._reader.window

    @property
    def stream_window(self) -> int:
        """Bytes worth hinting with :meth:`prefetch_stream` ahead of a big file's reads."""
        return self._reader.stream_window

    def close(self) -> None:
        if self._fd >= 0:
            self._reader.close()
            os.close(self._fd)
            self._fd = -1


def read_error(name: str, offset: int, exc: OSError) -> InputError:
    """A failed read (a bad sector, a vanished device) as the error of the one object
    being read, so that a backup reports it and goes on with the rest."""
    return InputError(f"{name}: cannot read at byte {offset}: {exc.strerror or exc}")


def _open_readonly(path: str, extra_flags: int) -> int:
    # O_RDONLY only, ever: a source is never opened for writing.  O_NONBLOCK so that
    # a FIFO put in the image's place after open_source looked at it cannot block the
    # open; the open file is then checked for what it is, and the flag taken off.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | extra_flags)
    except FileNotFoundError:
        raise NotFoundError(f"{path}: no such file or device") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not an image or device") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except OSError as e:
        if e.errno == errno.EINVAL and extra_flags & os.O_DIRECT:
            raise InputError(f"{path}: device does not support O_DIRECT") from None
        raise InputError(f"{path}: {e.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not is_source_kind(mode):
            raise _not_a_source(path, mode)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _not_a_source(path: str, mode: int) -> InputError:
    return InputError(f"{path}: is {file_kind(mode)}, not an image file or block device")


def open_source(path: str) -> FileSource | DirectDeviceSource:
    """Open an image file or block device read-only, choosing the right reader.

    Anything else is refused before it is opened: opening a FIFO would wait for a
    writer, and a character device (``/dev/zero``) or FIFO never ends."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise NotFoundError(f"{path}: no such file or device") from None
    except OSError as e:
        raise InputError(f"{path}: {e.strerror}") from None
    if stat.S_ISBLK(st.st_mode):
        return DirectDeviceSource(path)
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{path}: is a directory, not an image or device")
    if not stat.S_ISREG(st.st_mode):
        raise _not_a_source(path, st.st_mode)
    return FileSource(path)
