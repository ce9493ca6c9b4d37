"""A write-capable image file: the only place cipherdump opens anything for writing.

Sources stay read-only (:mod:`cipherdump.blockio.source`); a sink is made only for the
target of a restore or clone, an image file the user named as output.
"""

from __future__ import annotations

import os
import stat

from cipherdump.blockio.source import Closable
from cipherdump.errors import InputError, NotFoundError, OutputError


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
