"""Encrypted symlink payloads: ``le16 ciphertext_len | ciphertext | NUL``.

The target is encrypted like a filename, with the symlink inode's own key, and stored
behind a little-endian 16-bit length (``struct fscrypt_symlink_data``).  The NUL is
written but not counted: ``i_size = 2 + ciphertext_len``.  The payload lives in
``i_block`` (60 bytes) for a fast symlink or in one data block otherwise, so the
longest ciphertext is ``block_size - 3``.

A payload is accepted here only when both the kernel (``fscrypt_get_symlink``:
length non-zero, fits its buffer, at least 16 bytes once listed) and e2fsck
(``check_symlink``: ``i_size == 2 + len`` and room left for the NUL) accept it.
"""

from __future__ import annotations

from typing import Final

from cipherdump.errors import CorruptError
from cipherdump.fscrypt.names import FNAME_MIN_MSG_LEN, ciphertext_name_length

#: ``le16`` length prefix plus the NUL terminator.
SYMLINK_OVERHEAD: Final = 3
#: Bytes of ``i_block``, where a fast symlink keeps its payload.
FAST_SYMLINK_AREA: Final = 60
_LE16_MAX: Final = 0xFFFF


def max_symlink_ciphertext(block_size: int) -> int:
    """Longest symlink ciphertext on a filesystem with ``block_size`` blocks."""
    return block_size - SYMLINK_OVERHEAD


def symlink_ciphertext_length(plain_len: int, padding: int, block_size: int) -> int:
    """Ciphertext length of a ``plain_len``-byte target (padding rule capped at bs - 3)."""
    return ciphertext_name_length(plain_len, padding, max_symlink_ciphertext(block_size))


def is_fast_symlink_payload(ciphertext_len: int) -> bool:
    """Whether the kernel keeps a payload of this ciphertext length in ``i_block``."""
    return ciphertext_len + SYMLINK_OVERHEAD <= FAST_SYMLINK_AREA


def decode_encrypted_symlink(
    stored: bytes, i_size: int, block_size: int, *, location: str = ""
) -> bytes:
    """The ciphertext of an encrypted symlink target.

    ``stored`` is the symlink's storage area: the 60 bytes of ``i_block`` for a fast
    symlink, the first data block for a slow one (a shorter buffer is fine as long as
    it holds the NUL after the ciphertext).  ``location`` (for example ``"inode 12"``)
    goes into the error.  Raises :class:`CorruptError` when the length prefix is 0
    or below 16, the ciphertext plus NUL does not fit ``stored`` or the block, or
    ``i_size`` is not ``2 + length``.
    """

    def corrupt(message: str) -> CorruptError:
        return CorruptError(message, structure="encrypted symlink", location=location)

    if len(stored) < SYMLINK_OVERHEAD:
        raise corrupt(f"payload area of {len(stored)} bytes cannot hold a length and a NUL")
    ct_len = int.from_bytes(stored[:2], "little")
    if ct_len == 0:
        raise corrupt("ciphertext length is 0")
    if ct_len < FNAME_MIN_MSG_LEN:
        raise corrupt(f"ciphertext length {ct_len} is below the minimum of {FNAME_MIN_MSG_LEN}")
    if ct_len > max_symlink_ciphertext(block_size):
        raise corrupt(
            f"ciphertext length {ct_len} exceeds {max_symlink_ciphertext(block_size)}, "
            f"the most a {block_size}-byte block holds"
        )
    if 2 + ct_len >= len(stored):
        raise corrupt(
            f"ciphertext length {ct_len} and its NUL do not fit the {len(stored)}-byte payload area"
        )
    if i_size != 2 + ct_len:
        raise corrupt(f"i_size {i_size} does not match ciphertext length {ct_len} + 2")
    return bytes(stored[2 : 2 + ct_len])


def encode_encrypted_symlink(ciphertext: bytes) -> bytes:
    """The stored payload for ``ciphertext``: ``le16 len | ciphertext | NUL``.

    The inode's ``i_size`` must then be ``len(ciphertext) + 2``.  Raises
    :class:`ValueError` for a ciphertext the kernel could never have written (below
    16 bytes or too long for the length field); the block-size limit is the
    writer's to check with :func:`max_symlink_ciphertext`.
    """
    if not FNAME_MIN_MSG_LEN <= len(ciphertext) <= _LE16_MAX:
        raise ValueError(
            f"symlink ciphertext must be {FNAME_MIN_MSG_LEN}..{_LE16_MAX} bytes, "
            f"not {len(ciphertext)}"
        )
    return len(ciphertext).to_bytes(2, "little") + ciphertext + b"\0"
