"""The 8-byte header every repository file carries, and sealed single-object files.

Header: ``magic[4] | format_version u16 LE | reserved u16 LE (0)``.  Config, index,
snapshot and lock files are ``header || seal(plaintext, aad=header)``; key files and
pack files have their own layouts built on the same header (in the pack, as trailer).

Each kind of file has its own newest version: 2 for the config (which names the
repository's cipher) and for packs (named by their tail), 1 for the others.
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


def encode_header(magic: Magic, version: int = FORMAT_VERSION) -> bytes:
    return HEADER.pack(magic.value, version, 0)


def decode_header(
    data: bytes | memoryview, magic: Magic, what: str, newest: int = FORMAT_VERSION
) -> int:
    """Check a header and return its version (1 .. ``newest``); raises
    :class:`CorruptError`, or :class:`UnsupportedError` for a version above ``newest``."""
    if len(data) < HEADER_SIZE:
        raise CorruptError("file too short for its header", structure=what)
    got_magic, version, reserved = HEADER.unpack_from(data, 0)
    if got_magic != magic.value:
        raise CorruptError(f"bad magic {got_magic!r}, expected {magic.value!r}", structure=what)
    if version > newest:
        raise UnsupportedError(f"{what}: format version {version} is newer than this program")
    if version < 1 or reserved != 0:
        raise CorruptError(f"bad version {version} / reserved {reserved}", structure=what)
    return int(version)


def seal_file(
    key: MasterKey, magic: Magic, plaintext: bytes, version: int = FORMAT_VERSION
) -> bytes:
    header = encode_header(magic, version)
    return header + key.seal(plaintext, header)


def open_file(key: MasterKey, magic: Magic, data: bytes, what: str) -> bytes:
    """Check the header and authenticate/decrypt the body of a sealed file."""
    return open_versioned_file(key, magic, data, what)[1]


def open_versioned_file(
    key: MasterKey, magic: Magic, data: bytes, what: str, newest: int = FORMAT_VERSION
) -> tuple[int, bytes]:
    """:func:`open_file` for files with several versions: (version, plaintext)."""
    version = decode_header(data, magic, what, newest)
    header = data[:HEADER_SIZE]
    return version, key.open(memoryview(data)[HEADER_SIZE:], header, what)
