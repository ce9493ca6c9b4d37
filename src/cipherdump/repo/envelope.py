"""The 8-byte header every repository file carries, and sealed single-object files.

Header: ``magic[4] | format_version u16 LE | reserved u16 LE (0)``.  Config, index,
snapshot and lock files are ``header || seal(plaintext, aad=header)``; key files and
pack files have their own layouts built on the same header (in the pack, as trailer).
"""

from __future__ import annotations

import enum
import struct

from cipherdump.errors import CorruptError, UnsupportedError
from cipherdump.repo.crypto import MasterKey

FORMAT_VERSION = 1
HEADER = struct.Struct("<4sHH")
HEADER_SIZE = HEADER.size


class Magic(bytes, enum.Enum):
    """The first four bytes of each kind of file (last twelve bytes of a pack)."""

    CONFIG = b"CDcf"
    KEY = b"CDky"
    SNAPSHOT = b"CDsn"
    INDEX = b"CDix"
    LOCK = b"CDlk"
    PACK = b"CDpk"


def encode_header(magic: Magic) -> bytes:
    return HEADER.pack(magic.value, FORMAT_VERSION, 0)


def decode_header(data: bytes | memoryview, magic: Magic, what: str) -> None:
    """Check a header; raises :class:`CorruptError` or :class:`UnsupportedError`."""
    if len(data) < HEADER_SIZE:
        raise CorruptError("file too short for its header", structure=what)
    got_magic, version, reserved = HEADER.unpack_from(data, 0)
    if got_magic != magic.value:
        raise CorruptError(f"bad magic {got_magic!r}, expected {magic.value!r}", structure=what)
    if version > FORMAT_VERSION:
        raise UnsupportedError(f"{what}: format version {version} is newer than this program")
    if version != FORMAT_VERSION or reserved != 0:
        raise CorruptError(f"bad version {version} / reserved {reserved}", structure=what)


def seal_file(key: MasterKey, magic: Magic, plaintext: bytes) -> bytes:
    header = encode_header(magic)
    return header + key.seal(plaintext, header)


def open_file(key: MasterKey, magic: Magic, data: bytes, what: str) -> bytes:
    """Check the header and authenticate/decrypt the body of a sealed file."""
    decode_header(data, magic, what)
    header = data[:HEADER_SIZE]
    return key.open(memoryview(data)[HEADER_SIZE:], header, what)
