"""A backend in a dict: for tests and for fault-injecting wrappers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import BinaryIO

from cipherdump.repo.backends.base import (
    COPY_CHUNK,
    FileInfo,
    FileType,
    Handle,
    ObjectMissing,
    check_range,
)


class MemoryBackend:
    """Holds every file as bytes; ``files`` is exposed for tests that damage them."""

    # A forked copy would write into its own memory, lost to the parent.
    shared_between_processes = False

    def __init__(self) -> None:
        self.files: dict[Handle, bytes] = {}
        # When each file was saved (tests may set ``files`` directly: then no time).
        self.times: dict[Handle, int] = {}

    @property
    def location(self) -> str:
        return f"memory:{id(self):x}"

    def save(self, handle: Handle, source: BinaryIO) -> None:
        parts = []
        while chunk := source.read(COPY_CHUNK):
            parts.append(chunk)
        # Assigning once at the end keeps the write atomic for readers.
        self.files[handle] = b"".join(parts)
        self.times[handle] = time.time_ns()

    def load(self, handle: Handle, offset: int = 0, length: int | None = None) -> bytes:
        data = self._get(handle)
        length = check_range(handle, len(data), offset, length)
        return data[offset : offset + length]

    def stat(self, handle: Handle) -> int:
        return len(self._get(handle))

    def remove(self, handle: Handle) -> None:
        self._get(handle)
        del self.files[handle]
        self.times.pop(handle, None)

    def list(self, file_type: FileType) -> Iterator[FileInfo]:
        found = [
            FileInfo(h.name, len(d), self.times.get(h))
            for h, d in self.files.items()
            if h.type is file_type
        ]
        yield from found

    def close(self) -> None:
        pass

    def _get(self, handle: Handle) -> bytes:
        try:
            return self.files[handle]
        except KeyError:
            raise ObjectMissing(f"{handle} does not exist in {self.location}") from None
