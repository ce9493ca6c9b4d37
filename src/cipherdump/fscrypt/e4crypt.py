"""The passphrase key derivation of e2fsprogs' ``e4crypt add_key``.

e4crypt turns a passphrase into a 64-byte v1 master key with its own SHA-512 chain,
which is *not* RFC 8018 PBKDF2 (a standard PBKDF2-HMAC-SHA512 gives another key)::

    saltbuf = salt, zero-padded to 256 bytes, || passphrase
    H[0]    = SHA-512(saltbuf)
    H[i]    = SHA-512(H[i-1] || passphrase)          for i = 1 .. 65534
    key     = H[0] xor H[1] xor ... xor H[65534]

The salt is the filesystem's ``s_encrypt_pw_salt`` (16 bytes; e4crypt can also be given
one with ``-S``).  This module takes it as bytes: it knows nothing of ext4.
"""

from __future__ import annotations

import hashlib

from cipherdump.errors import KeyProblem
from cipherdump.fscrypt.keys import MasterKey

__all__ = ["E4CRYPT_ITERATIONS", "e4crypt_master_key"]

E4CRYPT_ITERATIONS = 0xFFFF  # e4crypt's count: H[0] .. H[65534]
_SALT_FIELD = 256  # the salt buffer is always this long before the passphrase
_MAX_PASSPHRASE = 1024


def e4crypt_master_key(passphrase: bytes, salt: bytes) -> MasterKey:
    """The master key ``e4crypt add_key`` adds for ``passphrase`` with ``salt``."""
    if not salt or len(salt) > _SALT_FIELD:
        raise KeyProblem(f"an e4crypt salt is 1 to {_SALT_FIELD} bytes, got {len(salt)}")
    if salt == bytes(len(salt)):
        raise KeyProblem(
            "the filesystem has no passphrase salt (s_encrypt_pw_salt is zero): "
            "e4crypt was never used on it"
        )
    if len(passphrase) > _MAX_PASSPHRASE:
        raise KeyProblem(f"an e4crypt passphrase is at most {_MAX_PASSPHRASE} bytes")
    digest = hashlib.sha512(salt.ljust(_SALT_FIELD, b"\0") + passphrase).digest()
    acc = int.from_bytes(digest, "big")
    for _ in range(E4CRYPT_ITERATIONS - 1):
        digest = hashlib.sha512(digest + passphrase).digest()
        acc ^= int.from_bytes(digest, "big")
    return MasterKey(acc.to_bytes(64, "big"))
