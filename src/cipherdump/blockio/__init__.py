"""Byte sources: ``read_at(offset, n)`` over an image file, a block device or memory.

Owns: opening sources strictly read-only; ``O_DIRECT`` for block devices, with
read-ahead of our own into aligned buffers, so ciphertext never lands in the page cache
(:mod:`cipherdump.blockio.direct`).  Must not import anything above ``cipherdump.errors``.
"""

from cipherdump.blockio.sink import FileSink, TargetLock
from cipherdump.blockio.source import (
    ByteSource,
    Closable,
    DirectDeviceSource,
    FileSource,
    MemorySource,
    open_source,
)

__all__ = [
    "ByteSource",
    "Closable",
    "DirectDeviceSource",
    "FileSink",
    "FileSource",
    "MemorySource",
    "TargetLock",
    "open_source",
]
