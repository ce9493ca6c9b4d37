"""The keyed dirhash of casefolded encrypted directories, and the casefolding under it.

ext4 stores ``hash`` and ``minor_hash`` after every name in a casefold + encrypt
directory.  With the directory's dirhash key (HKDF context 5) they are SipHash-2-4 of
the *casefolded plaintext* name (fs/ext4/hash.c, ``DX_HASH_SIPHASH``).
"""

from __future__ import annotations

import unicodedata

from cipherdump.fscrypt.siphash import siphash24

__all__ = ["EXT4_HTREE_EOF_32BIT", "casefold", "casefold_dirhash"]

EXT4_HTREE_EOF_32BIT = 0x7FFFFFFF


def casefold(name: bytes) -> bytes:
    """The name as the kernel's ``utf8_casefold`` (utf8-12.1, non-strict) gives it.

    That is full case folding followed by canonical decomposition (NFD); a name that is
    not valid UTF-8 is used as raw bytes, as ext4 does on a non-strict filesystem.
    Python's Unicode tables are newer than 12.1, so characters assigned after 12.1 may
    fold here but not in the kernel.
    """
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError:
        return bytes(name)
    # NFD first so that decomposable characters fold the same as their decompositions.
    folded = unicodedata.normalize("NFD", unicodedata.normalize("NFD", text).casefold())
    return folded.encode("utf-8")


def casefold_dirhash(dirhash_key: bytes, casefolded_name: bytes) -> tuple[int, int]:
    """(hash, minor_hash) of an already casefolded name, as stored in the dirent."""
    h = siphash24(dirhash_key, casefolded_name)
    major = (h >> 32) & ~1 & 0xFFFFFFFF
    # The largest even value means "end of directory" in htree readdir cookies.
    if major == EXT4_HTREE_EOF_32BIT << 1:
        major = (EXT4_HTREE_EOF_32BIT - 1) << 1
    return major, h & 0xFFFFFFFF
