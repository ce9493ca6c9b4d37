"""The config file: what a repository is, sealed with its master key.

Plaintext (40 bytes, little-endian)::

    0  32  repository id (random)
    32  4  target pack size in bytes, u32
    36  4  reserved, zero
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass

from cipherdump.errors import CorruptError
from cipherdump.repo.crypto import MasterKey
from cipherdump.repo.envelope import Magic, open_file, seal_file
from cipherdump.repo.ids import Id

DEFAULT_PACK_SIZE = 32 * 1024 * 1024
MIN_PACK_SIZE = 4 * 1024
MAX_PACK_SIZE = 1024 * 1024 * 1024
_BODY = struct.Struct("<32sII")


@dataclass(frozen=True, slots=True)
class RepoConfig:
    repo_id: Id
    pack_size: int = DEFAULT_PACK_SIZE

    def __post_init__(self) -> None:
        if not MIN_PACK_SIZE <= self.pack_size <= MAX_PACK_SIZE:
            raise CorruptError(f"pack size {self.pack_size} out of range", structure="config")

    @classmethod
    def new(cls, pack_size: int = DEFAULT_PACK_SIZE) -> RepoConfig:
        return cls(Id(secrets.token_bytes(32)), pack_size)


def encode_config(key: MasterKey, config: RepoConfig) -> bytes:
    return seal_file(key, Magic.CONFIG, _BODY.pack(config.repo_id.raw, config.pack_size, 0))


def decode_config(key: MasterKey, data: bytes) -> RepoConfig:
    body = open_file(key, Magic.CONFIG, data, "config")
    if len(body) != _BODY.size:
        raise CorruptError(f"config body is {len(body)} bytes", structure="config")
    repo_id, pack_size, reserved = _BODY.unpack(body)
    if reserved != 0:
        raise CorruptError("reserved config field is not zero", structure="config")
    return RepoConfig(Id(repo_id), pack_size)
