"""The repository key: AEAD of every repository object, keyed blob ids, argon2id.

The master key is 32 random bytes, generated at ``init`` and never derived from a
password.  Two subkeys are derived from it with BLAKE3's key-derivation mode:

* the *encryption key*, which seals every object under a per-message key (see
  :meth:`MasterKey.seal`) with the repository's :class:`Cipher`: AES-256-GCM for
  repositories made now, ChaCha20-Poly1305 for those of format version 1, and
* the *id key*, with which blob ids are keyed BLAKE3 of the plaintext, so that equal
  plaintext in two repositories, or a guessed plaintext, cannot be recognised by
  anyone without the key.

Key files and the config are sealed with :data:`BOOTSTRAP_CIPHER` (ChaCha20-Poly1305)
in every repository: they are opened before the repository's cipher is known.  The
password only unwraps the master key (see :mod:`cipherdump.repo.keyfile`).
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

import blake3
from argon2.low_level import Type, hash_secret_raw
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from cipherdump.errors import CorruptError, IntegrityError, UnsupportedError
from cipherdump.repo.ids import ID_SIZE, Id

KEY_SIZE = 32
NONCE_SIZE = 24  # 16 bytes select the per-message key, 8 bytes are the AEAD's nonce.
TAG_SIZE = 16
SEAL_OVERHEAD = NONCE_SIZE + TAG_SIZE

_ENC_CONTEXT = "cipherdump repository v1 object encryption key"
_ID_CONTEXT = "cipherdump repository v1 blob id key"

# Environment variable that makes *new* key files use the cheapest argon2id
# parameters.  For test suites only: it makes a stolen key file cheap to brute-force.
INSECURE_KDF_ENV = "CIPHERDUMP_INSECURE_TEST_KDF"


class _NoncePool:
    """Random nonces drawn from the kernel a few thousand at a time.

    One ``getrandom`` call per sealed blob cost a system call and, since Python lets
    other threads run during it, often a wait for the interpreter lock afterwards.  A
    pool inherited through ``fork`` would hand parent and child the same nonces, so
    the child empties it before anything else runs.
    """

    _BATCH = 4096

    def __init__(self) -> None:
        self._buffer = b""
        self._at = 0
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._buffer, self._at = b"", 0

    def take(self) -> bytes:
        at = self._at
        if at + NONCE_SIZE > len(self._buffer):
            self._buffer, at = os.urandom(NONCE_SIZE * self._BATCH), 0
        self._at = at + NONCE_SIZE
        return self._buffer[at : at + NONCE_SIZE]


_new_nonce = _NoncePool().take


class Cipher(enum.IntEnum):
    """The AEAD a repository seals its objects with; the value is its id in the config."""

    CHACHA20_POLY1305 = 1
    AES_256_GCM = 2

    @classmethod
    def from_id(cls, value: int, what: str) -> Cipher:
        """The cipher of a stored id; :class:`UnsupportedError` for one we do not know."""
        try:
            return cls(value)
        except ValueError:
            raise UnsupportedError(
                f"{what}: cipher id {value} is unknown to this program"
            ) from None


# Key files and the config are opened before the repository's cipher is known.
BOOTSTRAP_CIPHER = Cipher.CHACHA20_POLY1305

# Both constructors only copy the key (about 1 µs, measured), so one AEAD object per
# message costs nothing next to sealing even a small object.
_Aead: TypeAlias = ChaCha20Poly1305 | AESGCM
_AEADS: dict[Cipher, Callable[[bytes], _Aead]] = {
    Cipher.CHACHA20_POLY1305: ChaCha20Poly1305,
    Cipher.AES_256_GCM: AESGCM,
}


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


def _message_aead(key: bytes, nonce: bytes, cipher: Cipher) -> tuple[_Aead, bytes]:
    """The AEAD under the per-message key ``BLAKE3-keyed(key, nonce[0:16])``, and its
    12-byte nonce ``00 00 00 00 || nonce[16:24]``."""
    subkey = blake3.blake3(nonce[:16], key=key).digest(KEY_SIZE)
    return _AEADS[cipher](subkey), b"\0\0\0\0" + nonce[16:]


def seal_with(key: bytes, plaintext: bytes, aad: bytes, cipher: Cipher = BOOTSTRAP_CIPHER) -> bytes:
    """nonce(24) || AEAD(subkey, nonce[16:24] padded, plaintext, aad) || tag.

    The per-message key is keyed-BLAKE3(key, nonce[0:16]); with 128 random bits
    choosing the key, one repository key can seal far more than 2^32 objects without
    any risk of nonce reuse.
    """
    nonce, body = seal_parts_with(key, plaintext, aad, cipher)
    return nonce + body


def seal_parts_with(
    key: bytes, plaintext: bytes, aad: bytes, cipher: Cipher = BOOTSTRAP_CIPHER
) -> tuple[bytes, bytes]:
    """:func:`seal_with` as (nonce, ciphertext || tag), for writers that append the two
    to a file and need not copy the ciphertext once more to join them."""
    nonce = _new_nonce()
    aead, short_nonce = _message_aead(key, nonce, cipher)
    return nonce, aead.encrypt(short_nonce, plaintext, aad)


def seal_into_with(
    key: bytes, plaintext: bytes, aad: bytes, out: memoryview, cipher: Cipher = BOOTSTRAP_CIPHER
) -> None:
    """:func:`seal_with` written into ``out``, which is exactly ``len(plaintext) + 40``
    bytes: for a writer that seals straight into its output buffer instead of copying."""
    if len(out) != len(plaintext) + SEAL_OVERHEAD:
        raise ValueError(
            f"sealing {len(plaintext)} bytes needs {SEAL_OVERHEAD} more, not {len(out)}"
        )
    nonce = _new_nonce()
    aead, short_nonce = _message_aead(key, nonce, cipher)
    out[:NONCE_SIZE] = nonce
    aead.encrypt_into(short_nonce, plaintext, aad, out[NONCE_SIZE:])


def open_with(
    key: bytes,
    sealed: bytes | memoryview,
    aad: bytes,
    what: str,
    cipher: Cipher = BOOTSTRAP_CIPHER,
) -> bytes:
    """Inverse of :func:`seal_with`; raises :class:`IntegrityError` naming ``what``."""
    if len(sealed) < SEAL_OVERHEAD:
        raise IntegrityError(f"{what}: too short to be sealed ({len(sealed)} bytes)")
    aead, short_nonce = _message_aead(key, bytes(sealed[:NONCE_SIZE]), cipher)
    try:
        return aead.decrypt(short_nonce, sealed[NONCE_SIZE:], aad)
    except InvalidTag:
        raise IntegrityError(f"{what}: authentication failed (damaged or wrong key)") from None


class MasterKey:
    """The repository key.  Holding one is what it means to be the repository's admin.

    ``cipher`` is the AEAD :meth:`seal` and :meth:`open` use: a key unwrapped from a
    key file starts with :data:`BOOTSTRAP_CIPHER`, and the repository switches it to
    its config's cipher with :meth:`with_cipher`.
    """

    __slots__ = ("_enc", "_id", "cipher", "material")

    def __init__(self, material: bytes, cipher: Cipher = BOOTSTRAP_CIPHER) -> None:
        if len(material) != KEY_SIZE:
            raise CorruptError("a master key is 32 bytes", structure="key file")
        self.material = bytes(material)
        self.cipher = cipher
        self._enc = blake3.blake3(material, derive_key_context=_ENC_CONTEXT).digest(KEY_SIZE)
        self._id = blake3.blake3(material, derive_key_context=_ID_CONTEXT).digest(KEY_SIZE)

    @classmethod
    def generate(cls, cipher: Cipher = BOOTSTRAP_CIPHER) -> MasterKey:
        return cls(os.urandom(KEY_SIZE), cipher)

    def with_cipher(self, cipher: Cipher) -> MasterKey:
        """The same key, sealing and opening with ``cipher``."""
        return self if cipher is self.cipher else MasterKey(self.material, cipher)

    def blob_id(self, plaintext: bytes | memoryview) -> Id:
        """Keyed BLAKE3 of a blob's plaintext (before compression)."""
        return Id(blake3.blake3(plaintext, key=self._id).digest(ID_SIZE))

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        return seal_with(self._enc, plaintext, aad, self.cipher)

    def seal_parts(self, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
        """:meth:`seal` as (nonce, ciphertext || tag)."""
        return seal_parts_with(self._enc, plaintext, aad, self.cipher)

    def seal_into(self, plaintext: bytes, aad: bytes, out: memoryview) -> None:
        """:meth:`seal` written into ``out`` (exactly ``len(plaintext) + 40`` bytes)."""
        seal_into_with(self._enc, plaintext, aad, out, self.cipher)

    def open(self, sealed: bytes | memoryview, aad: bytes, what: str) -> bytes:
        return open_with(self._enc, sealed, aad, what, self.cipher)

    def __repr__(self) -> str:
        return f"MasterKey(<secret>, {self.cipher.name})"


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
