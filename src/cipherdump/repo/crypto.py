"""The repository key: AEAD of every repository object, keyed blob ids, argon2id.

The master key is 32 random bytes, generated at ``init`` and never derived from a
password.  Two subkeys are derived from it with BLAKE3's key-derivation mode:

* the *encryption key*, which seals every object with ChaCha20-Poly1305 under a
  per-message key (see :meth:`MasterKey.seal`), and
* the *id key*, with which blob ids are keyed BLAKE3 of the plaintext, so that equal
  plaintext in two repositories, or a guessed plaintext, cannot be recognised by
  anyone without the key.

The password only unwraps the master key (see :mod:`cipherdump.repo.keyfile`).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass

import blake3
from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from cipherdump.errors import CorruptError, IntegrityError
from cipherdump.repo.ids import ID_SIZE, Id

KEY_SIZE = 32
NONCE_SIZE = 24  # 16 bytes select the per-message key, 8 bytes are the ChaCha20 nonce.
TAG_SIZE = 16
SEAL_OVERHEAD = NONCE_SIZE + TAG_SIZE

_ENC_CONTEXT = "cipherdump repository v1 object encryption key"
_ID_CONTEXT = "cipherdump repository v1 blob id key"

# Environment variable that makes *new* key files use the cheapest argon2id
# parameters.  For test suites only: it makes a stolen key file cheap to brute-force.
INSECURE_KDF_ENV = "CIPHERDUMP_INSECURE_TEST_KDF"


@dataclass(frozen=True, slots=True)
class KdfParams:
    """argon2id cost parameters, stored in each key file."""

    time_cost: int = 3
    memory_kib: int = 64 * 1024
    parallelism: int = 4

    # Bounds enforced when reading a key file, so that a forged key file cannot make
    # ``open`` allocate unbounded memory or spin for hours.
    MAX_MEMORY_KIB = 4 * 1024 * 1024
    MAX_TIME_COST = 100
    MAX_PARALLELISM = 64

    def __post_init__(self) -> None:
        if not (
            1 <= self.time_cost <= self.MAX_TIME_COST
            and 1 <= self.parallelism <= self.MAX_PARALLELISM
            and 8 * self.parallelism <= self.memory_kib <= self.MAX_MEMORY_KIB
        ):
            raise CorruptError(f"argon2id parameters out of range: {self}", structure="key file")

    @classmethod
    def default(cls) -> KdfParams:
        """Strong parameters, unless the insecure test environment variable is set."""
        if os.environ.get(INSECURE_KDF_ENV) == "1":
            return cls.insecure_for_tests()
        return cls()

    @classmethod
    def insecure_for_tests(cls) -> KdfParams:
        return cls(time_cost=1, memory_kib=8, parallelism=1)


def derive_wrapping_key(password: bytes, salt: bytes, params: KdfParams) -> bytes:
    """argon2id(password, salt) -> 32-byte key-encryption key."""
    return hash_secret_raw(
        secret=password,
        salt=salt,
        time_cost=params.time_cost,
        memory_cost=params.memory_kib,
        parallelism=params.parallelism,
        hash_len=KEY_SIZE,
        type=Type.ID,
        version=19,
    )


def seal_with(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """nonce(24) || ChaCha20-Poly1305(subkey, nonce[16:24] padded, plaintext, aad) || tag.

    The per-message key is keyed-BLAKE3(key, nonce[0:16]); with 128 random bits
    choosing the key, one repository key can seal far more than 2^32 objects without
    any risk of nonce reuse.
    """
    nonce, body = seal_parts_with(key, plaintext, aad)
    return nonce + body


def seal_parts_with(key: bytes, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
    """:func:`seal_with` as (nonce, ciphertext || tag), for writers that append the two
    to a file and need not copy the ciphertext once more to join them."""
    nonce = secrets.token_bytes(NONCE_SIZE)
    subkey = blake3.blake3(nonce[:16], key=key).digest(KEY_SIZE)
    return nonce, ChaCha20Poly1305(subkey).encrypt(b"\0\0\0\0" + nonce[16:], plaintext, aad)


def open_with(key: bytes, sealed: bytes | memoryview, aad: bytes, what: str) -> bytes:
    """Inverse of :func:`seal_with`; raises :class:`IntegrityError` naming ``what``."""
    if len(sealed) < SEAL_OVERHEAD:
        raise IntegrityError(f"{what}: too short to be sealed ({len(sealed)} bytes)")
    nonce = bytes(sealed[:NONCE_SIZE])
    subkey = blake3.blake3(nonce[:16], key=key).digest(KEY_SIZE)
    try:
        return ChaCha20Poly1305(subkey).decrypt(
            b"\0\0\0\0" + nonce[16:], bytes(sealed[NONCE_SIZE:]), aad
        )
    except InvalidTag:
        raise IntegrityError(f"{what}: authentication failed (damaged or wrong key)") from None


class MasterKey:
    """The repository key.  Holding one is what it means to be the repository's admin."""

    __slots__ = ("_enc", "_id", "material")

    def __init__(self, material: bytes) -> None:
        if len(material) != KEY_SIZE:
            raise CorruptError("a master key is 32 bytes", structure="key file")
        self.material = bytes(material)
        self._enc = blake3.blake3(material, derive_key_context=_ENC_CONTEXT).digest(KEY_SIZE)
        self._id = blake3.blake3(material, derive_key_context=_ID_CONTEXT).digest(KEY_SIZE)

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(secrets.token_bytes(KEY_SIZE))

    def blob_id(self, plaintext: bytes | memoryview) -> Id:
        """Keyed BLAKE3 of a blob's plaintext (before compression)."""
        return Id(blake3.blake3(plaintext, key=self._id).digest(ID_SIZE))

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        return seal_with(self._enc, plaintext, aad)

    def seal_parts(self, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
        """:meth:`seal` as (nonce, ciphertext || tag)."""
        return seal_parts_with(self._enc, plaintext, aad)

    def open(self, sealed: bytes | memoryview, aad: bytes, what: str) -> bytes:
        return open_with(self._enc, sealed, aad, what)

    def __repr__(self) -> str:
        return "MasterKey(<secret>)"


def file_id(data: bytes | memoryview) -> Id:
    """Unkeyed BLAKE3 of a stored file's bytes: the name of packs, indexes, snapshots..."""
    return Id(blake3.blake3(data).digest(ID_SIZE))


class FileHasher:
    """Incremental :func:`file_id` for files written in pieces."""

    def __init__(self) -> None:
        self._h = blake3.blake3()

    def update(self, data: bytes | memoryview) -> None:
        self._h.update(data)

    def id(self) -> Id:
        return Id(self._h.digest(ID_SIZE))
