"""The config file: what a repository is, sealed with its master key.

The config is sealed with :data:`~cipherdump.repo.crypto.BOOTSTRAP_CIPHER` whatever
the repository's cipher, since it is what names that cipher.  Plaintext (40 bytes,
little-endian), by the version in the file's header::

    version 1                          version 2
    0  32  repository id (random)      0  32  repository id (random)
    32  4  target pack size, u32       32  4  target pack size, u32
    36  4  reserved, zero              36  1  cipher id (:class:`Cipher`)
                                       37  3  reserved, zero

A version-1 config names no cipher: its repository seals with ChaCha20-Poly1305, and
keeps doing so.  A version-2 config names its repository's cipher.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from cipherdump.errors import CorruptError
from cipherdump.repo.crypto import BOOTSTRAP_CIPHER, Cipher, MasterKey
from cipherdump.repo.envelope import Magic, open_versioned_file, seal_file
from cipherdump.repo.ids import Id

CONFIG_VERSION = 2
DEFAULT_CIPHER = Cipher.AES_256_GCM
DEFAULT_PACK_SIZE = 32 * 1024 * 1024
MIN_PACK_SIZE = 4 * 1024
MAX_PACK_SIZE = 1024 * 1024 * 1024
_BODY_V1 = struct.Struct("<32sII")
_BODY_V2 = struct.Struct("<32sIB3s")
_CIPHER_V1 = Cipher.CHACHA20_POLY1305


@dataclass(frozen=True, slots=True)
class RepoConfig:
    repo_id: Id
    pack_size: int = DEFAULT_PACK_SIZE
    cipher: Cipher = DEFAULT_CIPHER
    # Version 1 only for repositories made before ciphers were named (tests make one).
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        if not MIN_PACK_SIZE <= self.pack_size <= MAX_PACK_SIZE:
            raise CorruptError(f"pack size {self.pack_size} out of range", structure="config")
        if self.version not in (1, CONFIG_VERSION):
            raise ValueError(f"no config version {self.version}")
        if self.version == 1 and self.cipher is not _CIPHER_V1:
            raise ValueError(f"a version-1 config means {_CIPHER_V1.name}, not {self.cipher.name}")

    @classmethod
    def new(cls, pack_size: int = DEFAULT_PACK_SIZE, cipher: Cipher = DEFAULT_CIPHER) -> RepoConfig:
        return cls(Id(os.urandom(32)), pack_size, cipher)


def encode_config(key: MasterKey, config: RepoConfig) -> bytes:
    if config.version == 1:
        body = _BODY_V1.pack(config.repo_id.raw, config.pack_size, 0)
    else:
        body = _BODY_V2.pack(config.repo_id.raw, config.pack_size, config.cipher, bytes(3))
    return seal_file(key.with_cipher(BOOTSTRAP_CIPHER), Magic.CONFIG, body, config.version)


def decode_config(key: MasterKey, data: bytes) -> RepoConfig:
    """Authenticate and parse a config; :class:`UnsupportedError` for a newer version
    or an unknown cipher."""
    version, body = open_versioned_file(
        key.with_cipher(BOOTSTRAP_CIPHER), Magic.CONFIG, data, "config", CONFIG_VERSION
    )
    if len(body) != _BODY_V1.size:
        raise CorruptError(f"config body is {len(body)} bytes", structure="config")
    if version == 1:
        repo_id, pack_size, reserved = _BODY_V1.unpack(body)
        cipher = _CIPHER_V1
        zero = reserved == 0
    else:
        repo_id, pack_size, cipher_id, reserved = _BODY_V2.unpack(body)
        zero = reserved == bytes(3)
        cipher = Cipher.from_id(cipher_id, "config")
    if not zero:
        raise CorruptError("reserved config field is not zero", structure="config")
    return RepoConfig(Id(repo_id), pack_size, cipher, version)
