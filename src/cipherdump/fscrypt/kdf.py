"""Which key encrypts what: fscrypt's key hierarchy (fs/crypto/keysetup*.c).

Given a master key and an inode's context, derive the key its contents (regular files)
or names (directories, symlink targets) are encrypted with, the IV_INO_LBLK_32 inode
hash and the casefold dirhash key.  The derivation primitives live on
:class:`~cipherdump.fscrypt.keys.MasterKey`; this module chooses contexts and sizes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from cipherdump.errors import UnsupportedError
from cipherdump.fscrypt.context import EncryptionContext, Mode, mode_name
from cipherdump.fscrypt.keys import MasterKey, check_key
from cipherdump.fscrypt.siphash import siphash24

__all__ = [
    "HKDF_CONTEXT_DIRECT_KEY",
    "HKDF_CONTEXT_DIRHASH_KEY",
    "HKDF_CONTEXT_INODE_HASH_KEY",
    "HKDF_CONTEXT_IV_INO_LBLK_32_KEY",
    "HKDF_CONTEXT_IV_INO_LBLK_64_KEY",
    "HKDF_CONTEXT_KEY_IDENTIFIER",
    "HKDF_CONTEXT_PER_FILE_ENC_KEY",
    "ModeSpec",
    "derive_dirhash_key",
    "derive_inode_hash_key",
    "derive_mode_key",
    "hashed_ino",
    "mode_spec",
]

HKDF_CONTEXT_KEY_IDENTIFIER = 1
HKDF_CONTEXT_PER_FILE_ENC_KEY = 2
HKDF_CONTEXT_DIRECT_KEY = 3
HKDF_CONTEXT_IV_INO_LBLK_64_KEY = 4
HKDF_CONTEXT_DIRHASH_KEY = 5
HKDF_CONTEXT_IV_INO_LBLK_32_KEY = 6
HKDF_CONTEXT_INODE_HASH_KEY = 7

SIPHASH_KEY_SIZE = 16


@dataclass(frozen=True, slots=True)
class ModeSpec:
    """Sizes of one fscrypt mode (``fscrypt_modes[]`` in keysetup.c)."""

    number: int
    name: str
    key_size: int
    iv_size: int
    security_strength: int


_MODES: dict[int, ModeSpec] = {
    Mode.AES_256_XTS: ModeSpec(1, "AES-256-XTS", 64, 16, 32),
    Mode.AES_256_CTS: ModeSpec(4, "AES-256-CTS", 32, 16, 32),
    Mode.AES_128_CBC: ModeSpec(5, "AES-128-CBC-ESSIV", 16, 16, 16),
    Mode.AES_128_CTS: ModeSpec(6, "AES-128-CTS", 16, 16, 16),
    Mode.ADIANTUM: ModeSpec(9, "Adiantum", 32, 32, 32),
    Mode.AES_256_HCTR2: ModeSpec(10, "AES-256-HCTR2", 32, 32, 32),
}


def mode_spec(mode: int) -> ModeSpec:
    """The sizes of ``mode``; :class:`UnsupportedError` for modes we cannot run (SM4)."""
    spec = _MODES.get(mode)
    if spec is None:
        raise UnsupportedError(f"fscrypt mode {mode_name(mode)} is not implemented")
    return spec


def derive_mode_key(
    master_key: MasterKey,
    context: EncryptionContext,
    mode: int,
    *,
    fs_uuid: bytes | None = None,
) -> bytes:
    """The encryption key of an inode with ``context`` for ``mode``.

    ``mode`` is the policy's contents mode for regular files and its filenames mode for
    directories and symlinks.  ``fs_uuid`` (the superblock ``s_uuid``) is needed only
    for IV_INO_LBLK_64/32 policies.
    """
    policy = context.policy
    spec = mode_spec(mode)
    check_key(master_key, policy)
    if policy.version == 1:
        if policy.direct_key:
            return master_key.v1_direct(spec.key_size)
        return master_key.v1_derive(context.nonce, spec.key_size)
    master_key.require_size(spec.security_strength, f"{spec.name} (v2)")
    mode_byte = bytes([spec.number])
    if policy.direct_key:
        return master_key.hkdf(HKDF_CONTEXT_DIRECT_KEY, mode_byte, spec.key_size)
    if policy.iv_ino_lblk_64 or policy.iv_ino_lblk_32:
        uuid = _require_uuid(fs_uuid)
        ctx = (
            HKDF_CONTEXT_IV_INO_LBLK_64_KEY
            if policy.iv_ino_lblk_64
            else HKDF_CONTEXT_IV_INO_LBLK_32_KEY
        )
        return master_key.hkdf(ctx, mode_byte + uuid, spec.key_size)
    return master_key.hkdf(HKDF_CONTEXT_PER_FILE_ENC_KEY, context.nonce, spec.key_size)


def derive_inode_hash_key(master_key: MasterKey) -> bytes:
    """The SipHash key of IV_INO_LBLK_32 inode hashing (HKDF context 7)."""
    return master_key.hkdf(HKDF_CONTEXT_INODE_HASH_KEY, b"", SIPHASH_KEY_SIZE)


def hashed_ino(inode_hash_key: bytes, ino: int) -> int:
    """``ci_hashed_ino``: the low 32 bits of SipHash-2-4(key, le64(ino))."""
    return siphash24(inode_hash_key, struct.pack("<Q", ino)) & 0xFFFFFFFF


def derive_dirhash_key(master_key: MasterKey, context: EncryptionContext) -> bytes:
    """The SipHash key of a casefolded encrypted directory (HKDF context 5, v2 only)."""
    policy = context.policy
    if policy.version != 2:
        raise UnsupportedError("casefolded directories need a v2 policy")
    check_key(master_key, policy)
    return master_key.hkdf(HKDF_CONTEXT_DIRHASH_KEY, context.nonce, SIPHASH_KEY_SIZE)


def _require_uuid(fs_uuid: bytes | None) -> bytes:
    if fs_uuid is None or len(fs_uuid) != 16:
        raise ValueError("IV_INO_LBLK_* policies need the 16-byte filesystem UUID")
    return bytes(fs_uuid)
