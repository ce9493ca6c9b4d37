"""Identifiers: 32-byte ids of blobs and repository files, and blob types."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cipherdump.errors import CorruptError

ID_SIZE = 32
_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True, order=True)
class Id:
    """A 32-byte identifier, shown as 64 lowercase hex digits.

    Blob ids are keyed BLAKE3 of the blob's plaintext; file ids (index, snapshot,
    key, lock names) are unkeyed BLAKE3 of the stored file bytes, and pack ids that
    of all a pack's bytes (version 1) or of its header and trailer (version 2).
    """

    raw: bytes

    def __post_init__(self) -> None:
        if type(self.raw) is not bytes or len(self.raw) != ID_SIZE:
            raise CorruptError(f"an id is {ID_SIZE} bytes", structure="id")

    @classmethod
    def from_hex(cls, text: str) -> Id:
        if len(text) != 2 * ID_SIZE or not set(text) <= _HEX:
            raise CorruptError(f"not a 64-digit lowercase hex id: {text[:80]!r}", structure="id")
        return cls(bytes.fromhex(text))

    @property
    def hex(self) -> str:
        return self.raw.hex()

    @property
    def short(self) -> str:
        """The first 8 hex digits, for messages."""
        return self.raw[:4].hex()

    def __str__(self) -> str:
        return self.hex

    def __repr__(self) -> str:
        return f"Id({self.hex})"


def is_hex_id(text: str) -> bool:
    """True if ``text`` is a well-formed 64-digit lowercase hex id."""
    return len(text) == 2 * ID_SIZE and set(text) <= _HEX


class BlobType(enum.IntEnum):
    """What a blob holds; stored as one byte in pack headers and index entries."""

    DATA = 0
    TREE = 1
