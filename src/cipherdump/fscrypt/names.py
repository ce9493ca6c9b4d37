"""Sizes of encrypted filenames and symlink targets (no cryptography here).

The kernel pads a plaintext name with NULs to at least 16 bytes, then up to a
multiple of the policy's padding (4, 8, 16 or 32), and never past the limit: 255
for names (NAME_MAX), block size - 3 for symlink targets (``le16`` length prefix and
a NUL terminator share the block).  The encryption is length-preserving, so this is
also the ciphertext length (``__fscrypt_fname_encrypted_size`` in ``fs/crypto/fname.c``).
"""

from __future__ import annotations

from typing import Final

#: No ciphertext name is shorter than one cipher block; the kernel refuses to list a
#: directory holding a shorter name (EUCLEAN), with or without the key.
FNAME_MIN_MSG_LEN: Final = 16

#: NAME_MAX: the longest name, plaintext or ciphertext (``name_len`` is a byte).
NAME_MAX: Final = 255

PADDINGS: Final = (4, 8, 16, 32)


def ciphertext_name_length(plain_len: int, padding: int, limit: int = NAME_MAX) -> int:
    """Length of the ciphertext of a ``plain_len``-byte name or symlink target.

    ``min(round_up(max(plain_len, 16), padding), limit)``.  ``limit`` is 255 for
    directory entries and ``block_size - 3`` for symlink targets.  Raises
    :class:`ValueError` where the kernel refuses the name (empty, or longer than
    ``limit``: ENAMETOOLONG) or for a padding no policy can have.
    """
    if padding not in PADDINGS:
        raise ValueError(f"filename padding must be one of {PADDINGS}, not {padding}")
    if limit < FNAME_MIN_MSG_LEN:
        raise ValueError(f"length limit {limit} is below the {FNAME_MIN_MSG_LEN}-byte minimum")
    if plain_len < 1:
        raise ValueError("an empty name has no ciphertext")
    if plain_len > limit:
        raise ValueError(f"a {plain_len}-byte name is longer than the limit of {limit}")
    padded = max(plain_len, FNAME_MIN_MSG_LEN)
    padded = -(-padded // padding) * padding
    return min(padded, limit)
