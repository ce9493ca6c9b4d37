"""No-key names: how Linux >= 5.15 shows encrypted names when the key is absent.

A no-key name is the base64url encoding (RFC 4648 section 5 alphabet, no ``=``
padding) of::

    le32 hash | le32 minor_hash | ciphertext                       ciphertext <= 149 bytes
    le32 hash | le32 minor_hash | ciphertext[:149] | SHA-256(ciphertext[149:])   longer

(``struct fscrypt_nokey_name`` in ``fs/crypto/fname.c``; the hash words are in CPU
order, little-endian on every platform the project targets).  The short form is at
most 157 bytes (208 characters); the long form is exactly 189 bytes (252 characters),
which still fits NAME_MAX.

Which ``(hash, minor_hash)`` the kernel embeds depends on the filesystem, not on
fscrypt: for ext4 it is the htree hash of the ciphertext when the directory is read
through the htree path, ``(0, 0)`` for linear directories, the hash stored in the
dirent for casefolded + encrypted directories, and always ``(0, 0)`` for symlink
targets.  Callers pass it in; this module knows nothing of ext4.

Older kernels (before 5.15, and before 5.6) used other encodings; they are not
handled here.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass
from typing import Final

from cipherdump.errors import CorruptError
from cipherdump.fscrypt.names import FNAME_MIN_MSG_LEN

#: Ciphertext bytes kept verbatim (``sizeof(nokey_name.bytes)``).
NOKEY_PREFIX_SIZE: Final = 149
NOKEY_DIGEST_SIZE: Final = 32
NOKEY_HASH_SIZE: Final = 8
#: Decoded size of a long-form no-key name (``FSCRYPT_NOKEY_NAME_MAX``).
NOKEY_NAME_MAX: Final = NOKEY_HASH_SIZE + NOKEY_PREFIX_SIZE + NOKEY_DIGEST_SIZE
#: Longest short form: ``offsetof(struct fscrypt_nokey_name, sha256)``.
NOKEY_SHORT_MAX: Final = NOKEY_HASH_SIZE + NOKEY_PREFIX_SIZE
#: Characters of a long-form name (``FSCRYPT_NOKEY_NAME_MAX_ENCODED``).
NOKEY_NAME_MAX_ENCODED: Final = 252

_U32_MAX: Final = 0xFFFFFFFF
_HASHES: Final = struct.Struct("<II")
_ALPHABET: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_DECODE: Final = tuple(_ALPHABET.find(bytes([b])) for b in range(256))
_DOT_NAMES: Final = (b".", b"..")


def _sha256(data: bytes) -> bytes:
    """SHA-256, for names too long to show whole.  hashlib is imported only then: it
    loads OpenSSL's libcrypto (16 ms of a start with a cold cache), which listing and
    backing up other names never need."""
    import hashlib

    return hashlib.sha256(data).digest()


@dataclass(frozen=True, slots=True)
class NoKeyName:
    """A decoded no-key name.

    ``ciphertext_prefix`` is the whole ciphertext (short form, 1..149 bytes) or its
    first 149 bytes (long form, then ``long_digest`` is the SHA-256 of the rest).
    Validated at construction: every instance encodes to a name the kernel accepts.
    """

    hash: int
    minor_hash: int
    ciphertext_prefix: bytes
    long_digest: bytes | None = None

    def __post_init__(self) -> None:
        for label, value in (("hash", self.hash), ("minor_hash", self.minor_hash)):
            if not 0 <= value <= _U32_MAX:
                raise ValueError(f"{label} {value} is not a 32-bit value")
        n = len(self.ciphertext_prefix)
        if self.long_digest is None:
            if not 1 <= n <= NOKEY_PREFIX_SIZE:
                raise ValueError(
                    f"short no-key name holds 1..{NOKEY_PREFIX_SIZE} ciphertext bytes, not {n}"
                )
        else:
            if n != NOKEY_PREFIX_SIZE:
                raise ValueError(f"long no-key name keeps {NOKEY_PREFIX_SIZE} bytes, not {n}")
            if len(self.long_digest) != NOKEY_DIGEST_SIZE:
                raise ValueError("long no-key name digest must be 32 bytes")

    @property
    def is_long(self) -> bool:
        """True for the digested form (ciphertext longer than 149 bytes)."""
        return self.long_digest is not None

    @property
    def dirhash(self) -> tuple[int, int]:
        return self.hash, self.minor_hash

    @property
    def ciphertext(self) -> bytes | None:
        """The full ciphertext when the name carries it (short form), else None."""
        return None if self.is_long else self.ciphertext_prefix

    def raw(self) -> bytes:
        """The unencoded ``struct fscrypt_nokey_name`` bytes (9..157 or 189)."""
        return (
            _HASHES.pack(self.hash, self.minor_hash)
            + self.ciphertext_prefix
            + (self.long_digest or b"")
        )

    def encode(self) -> bytes:
        """The no-key name itself (base64url without padding)."""
        return _b64url(self.raw())

    def matches(self, ciphertext: bytes, stored_hash: tuple[int, int] | None = None) -> bool:
        """Whether a directory entry whose name is ``ciphertext`` is the one named.

        As ``fscrypt_match_name``: the short form compares the whole ciphertext; the
        long form needs a ciphertext longer than 149 bytes with the same first 149
        bytes and the same SHA-256 over the rest.  For casefolded + encrypted
        directories pass the entry's stored ``(hash, minor_hash)`` as
        ``stored_hash``: it must then equal the embedded one as well.

        Ordinary ext4 ignores the embedded hash except to choose the leaf block of
        an indexed directory, which matters only for long names: to emulate a lookup
        of a long name in an indexed directory, pass the entry's computed dirhash.
        """
        if stored_hash is not None and stored_hash != (self.hash, self.minor_hash):
            return False
        if self.long_digest is None:
            return ciphertext == self.ciphertext_prefix
        if len(ciphertext) <= NOKEY_PREFIX_SIZE:
            return False
        if ciphertext[:NOKEY_PREFIX_SIZE] != self.ciphertext_prefix:
            return False
        return _sha256(ciphertext[NOKEY_PREFIX_SIZE:]) == self.long_digest


def _b64url(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


def _check_u32_pair(dirhash: tuple[int, int]) -> tuple[int, int]:
    hash_, minor_hash = dirhash
    if not (0 <= hash_ <= _U32_MAX and 0 <= minor_hash <= _U32_MAX):
        raise ValueError(f"dirhash {dirhash!r} is not a pair of 32-bit values")
    return hash_, minor_hash


def nokey_name_of(ciphertext: bytes, dirhash: tuple[int, int] | None = None) -> NoKeyName:
    """The :class:`NoKeyName` the kernel builds for an entry named ``ciphertext``.

    Raises :class:`CorruptError` for a ciphertext shorter than 16 bytes: the kernel
    refuses such entries (EUCLEAN) instead of listing them.
    """
    if len(ciphertext) < FNAME_MIN_MSG_LEN:
        raise CorruptError(
            f"encrypted name of {len(ciphertext)} bytes is shorter than {FNAME_MIN_MSG_LEN}",
            structure="encrypted name",
        )
    hash_, minor_hash = _check_u32_pair(dirhash or (0, 0))
    if len(ciphertext) <= NOKEY_PREFIX_SIZE:
        return NoKeyName(hash_, minor_hash, bytes(ciphertext))
    return NoKeyName(
        hash_,
        minor_hash,
        bytes(ciphertext[:NOKEY_PREFIX_SIZE]),
        _sha256(ciphertext[NOKEY_PREFIX_SIZE:]),
    )


def encode_nokey_name(ciphertext: bytes, dirhash: tuple[int, int] | None) -> bytes:
    """What ``readdir`` shows without the key for an entry named ``ciphertext``.

    ``dirhash`` is the ``(hash, minor_hash)`` the filesystem supplies (None means
    ``(0, 0)``).  ``.`` and ``..`` are returned unchanged, as the kernel does.
    Raises :class:`CorruptError` for a ciphertext shorter than 16 bytes.
    """
    if ciphertext in _DOT_NAMES:
        return bytes(ciphertext)
    hash_, minor_hash = dirhash or (0, 0)
    if (
        FNAME_MIN_MSG_LEN <= len(ciphertext) <= NOKEY_PREFIX_SIZE
        and 0 <= hash_ <= _U32_MAX
        and 0 <= minor_hash <= _U32_MAX
    ):
        # The short form (nearly every name), without building a NoKeyName.
        return _b64url(_HASHES.pack(hash_, minor_hash) + ciphertext)
    return nokey_name_of(ciphertext, dirhash).encode()


def encode_nokey_symlink(ciphertext: bytes) -> bytes:
    """What ``readlink`` shows without the key for an encrypted symlink target.

    Symlink targets always embed a zero dirhash.
    """
    return encode_nokey_name(ciphertext, (0, 0))


def _b64url_decode(text: bytes) -> bytes | None:
    """Strict base64url without padding; None unless ``text`` is canonical.

    Rejects characters outside the alphabet (``=`` included), a length of 4k + 1 and
    non-zero unused low bits, so every accepted string is the one encoding of its
    bytes.  fscrypt's own decoder (5.15 up to the switch to lib/base64) also accepts
    a trailing ``A`` after a 4k-character group (length 4k + 1) as an alias; the
    lib/base64 decoder of newer kernels rejects it, as we do.  The kernel never
    lists such a name.
    """
    if len(text) % 4 == 1:
        return None
    acc = 0
    bits = 0
    out = bytearray()
    for char in text:
        value = _DECODE[char]
        if value < 0:
            return None
        acc = (acc << 6) | value
        bits += 6
        if bits >= 8:
            bits -= 8
            out.append(acc >> bits)
            acc &= (1 << bits) - 1
    if acc:
        return None
    return bytes(out)


def decode_nokey_name(name: bytes) -> NoKeyName | None:
    """Parse a no-key name; None when the kernel would not take it as one (ENOENT).

    Rules of ``fscrypt_setup_filename``: at most 252 characters, strict base64url,
    and a decoded size of 9..157 bytes (short form) or exactly 189 (long form).
    Never raises for any input bytes.
    """
    if len(name) > NOKEY_NAME_MAX_ENCODED or name in _DOT_NAMES:
        return None
    raw = _b64url_decode(name)
    if raw is None:
        return None
    size = len(raw)
    if size < NOKEY_HASH_SIZE + 1 or (NOKEY_SHORT_MAX < size != NOKEY_NAME_MAX):
        return None
    hash_, minor_hash = _HASHES.unpack_from(raw)
    if size == NOKEY_NAME_MAX:
        return NoKeyName(
            hash_, minor_hash, raw[NOKEY_HASH_SIZE:NOKEY_SHORT_MAX], raw[NOKEY_SHORT_MAX:]
        )
    return NoKeyName(hash_, minor_hash, raw[NOKEY_HASH_SIZE:])
