"""Key files: the master key wrapped by a password with argon2id.

Layout (all integers little-endian)::

    0   8  header: "CDky" | version u16 = 1 | reserved u16 = 0
    8   1  kdf algorithm: 1 = argon2id (version 0x13)
    9   3  reserved, zero
    12  4  time_cost u32
    16  4  memory_kib u32
    20  4  parallelism u32
    24 16  salt
    40 72  seal(wrapping key, master key (32 bytes), aad = bytes 0..40)

The file's name is the unkeyed BLAKE3 of its 112 bytes.
"""

from __future__ import annotations

import os
import struct

from cipherdump.errors import CorruptError, IntegrityError, KeyProblem
from cipherdump.repo.crypto import (
    KEY_SIZE,
    SEAL_OVERHEAD,
    KdfParams,
    MasterKey,
    derive_wrapping_key,
    open_with,
    seal_with,
)
from cipherdump.repo.envelope import HEADER_SIZE, Magic, decode_header, encode_header

KDF_ARGON2ID = 1
SALT_SIZE = 16
_PARAMS = struct.Struct("<B3xIII16s")
_PREFIX_SIZE = HEADER_SIZE + _PARAMS.size
KEY_FILE_SIZE = _PREFIX_SIZE + KEY_SIZE + SEAL_OVERHEAD


def encode_key_file(master: MasterKey, password: bytes, params: KdfParams) -> bytes:
    salt = os.urandom(SALT_SIZE)
    prefix = encode_header(Magic.KEY) + _PARAMS.pack(
        KDF_ARGON2ID, params.time_cost, params.memory_kib, params.parallelism, salt
    )
    wrapping = derive_wrapping_key(password, salt, params)
    return prefix + seal_with(wrapping, master.material, prefix)


def decode_key_params(data: bytes) -> tuple[KdfParams, bytes]:
    """Parse the clear part of a key file: (argon2id parameters, salt)."""
    if len(data) != KEY_FILE_SIZE:
        raise CorruptError(
            f"key file is {len(data)} bytes, not {KEY_FILE_SIZE}", structure="key file"
        )
    decode_header(data, Magic.KEY, "key file")
    algorithm, t, m, p, salt = _PARAMS.unpack_from(data, HEADER_SIZE)
    if algorithm != KDF_ARGON2ID:
        raise CorruptError(f"unknown KDF algorithm {algorithm}", structure="key file")
    return KdfParams(time_cost=t, memory_kib=m, parallelism=p), salt


def unwrap_key_file(data: bytes, password: bytes) -> MasterKey:
    """Recover the master key; :class:`KeyProblem` if the password does not open it."""
    params, salt = decode_key_params(data)
    wrapping = derive_wrapping_key(password, salt, params)
    try:
        material = open_with(wrapping, data[_PREFIX_SIZE:], data[:_PREFIX_SIZE], "key file")
    except IntegrityError:
        raise KeyProblem("wrong password for this key file") from None
    return MasterKey(material)
