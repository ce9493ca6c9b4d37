"""A file written once, front to back, around the page cache (``O_DIRECT``).

Why: a backup writes every pack once and does not read it again, yet through the page
cache each byte is copied into freshly allocated cache pages, written back, and then
evicts something a server was using.  Written directly, from one reused aligned buffer,
the same pack costs a tenth of the system time (measured: 0.06 s against 0.7 s of
``sys`` per GiB on the benchmark machine) and leaves the page cache alone.

``O_DIRECT`` needs buffer, offset and length aligned to the device's logical block
size; :data:`ALIGN` (4 KiB) covers every common device.  Appends are gathered in an
aligned buffer and written a segment at a time; the last, partial block is written
padded with zeros and the file then cut to its true size.  Where the file system
refuses ``O_DIRECT`` (tmpfs, some network file systems), the file is written through
the page cache as any other.
"""

from __future__ import annotations

import errno
import mmap
import os

ALIGN = 4096
SEGMENT = 1 << 20


class DirectAppendFile:
    """The part of a binary file that a pack writer uses: ``write`` (appending),
    ``flush`` (once, at the end: after it nothing more may be written), ``seek`` and
    ``read`` (of bytes written before), ``fileno`` (for ``fsync``) and ``close``.

    ``fd`` is an open, empty, readable and writable descriptor of ``path``; the object
    owns it from now on.
    """

    def __init__(self, path: str, fd: int) -> None:
        self._fd = fd
        self._direct = -1
        try:
            self._direct = os.open(path, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
        self._stage = mmap.mmap(-1, 2 * SEGMENT)  # page-aligned
        self._staged = 0  # bytes waiting in the stage
        self._written = 0  # bytes in the file, a multiple of ALIGN while writing
        self._finished = False
        self._pos = 0

    @property
    def size(self) -> int:
        return self._written + self._staged

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._finished:
            raise ValueError("write after flush")
        view = memoryview(data).cast("B")
        done, total = 0, len(view)
        stage = self._stage
        while done < total:
            take = min(total - done, len(stage) - self._staged)
            stage[self._staged : self._staged + take] = view[done : done + take]
            self._staged += take
            done += take
            if self._staged >= SEGMENT:
                self._drain(self._staged - self._staged % SEGMENT)
        self._pos = self.size
        return total

    def _drain(self, length: int) -> None:
        """Write the first ``length`` staged bytes (aligned, unless padding the end)."""
        view = memoryview(self._stage)[:length]
        try:
            if self._direct >= 0:
                _write_all(self._direct, view)
            else:
                _write_all_at(self._fd, view, self._written)
        except OSError as exc:
            if exc.errno != errno.EINVAL or self._direct < 0:
                raise
            # The file system took the open but not the write: do without O_DIRECT.
            os.close(self._direct)
            self._direct = -1
            _write_all_at(self._fd, view, self._written)
        finally:
            view.release()
        left = self._staged - length
        self._stage.move(0, length, left)
        self._staged = left
        self._written += length

    def flush(self) -> None:
        """Write what is staged; the file then has its final size."""
        if self._finished:
            return
        self._finished = True
        size = self.size
        if self._direct < 0:
            if self._staged:
                self._drain(self._staged)
            return
        padded = -(-self._staged // ALIGN) * ALIGN
        if padded:
            self._stage[self._staged : padded] = bytes(padded - self._staged)
            self._staged = padded
            self._drain(padded)
        os.ftruncate(self._direct, size)
        self._written = size

    def fileno(self) -> int:
        return self._direct if self._direct >= 0 else self._fd

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._pos = offset if whence == os.SEEK_SET else self.size + offset
        return self._pos

    def read(self, length: int) -> bytes:
        """``length`` bytes from the position: from the file, then from the stage."""
        out = b""
        if self._pos < self._written:
            out = os.pread(self._fd, min(length, self._written - self._pos), self._pos)
        start = self._pos + len(out) - self._written
        if len(out) < length and 0 <= start < self._staged:
            out += self._stage[start : min(self._staged, start + length - len(out))]
        self._pos += len(out)
        return out

    def close(self) -> None:
        if self._direct >= 0:
            os.close(self._direct)
            self._direct = -1
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if not self._stage.closed:
            self._stage.close()


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _write_all_at(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n
