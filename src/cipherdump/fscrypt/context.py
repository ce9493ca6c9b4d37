"""Encryption contexts (the ``c`` xattr, name index 9) and the policies they carry.

A context is the policy plus a 16-byte per-inode nonce.  v1 contexts are 28 bytes with
version byte 1 (the v1 *policy* struct uses version byte 0); v2 contexts are 40 bytes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cipherdump.errors import CorruptError, UnsupportedError

V1_CONTEXT_SIZE = 28
V2_CONTEXT_SIZE = 40
NONCE_SIZE = 16
V1_DESCRIPTOR_SIZE = 8
V2_IDENTIFIER_SIZE = 16


class Mode(enum.IntEnum):
    """fscrypt mode numbers (uapi ``FSCRYPT_MODE_*``)."""

    AES_256_XTS = 1
    AES_256_CTS = 4
    AES_128_CBC = 5
    AES_128_CTS = 6
    SM4_XTS = 7
    SM4_CTS = 8
    ADIANTUM = 9
    AES_256_HCTR2 = 10


MODE_NAMES: dict[int, str] = {
    1: "AES-256-XTS",
    4: "AES-256-CTS",
    5: "AES-128-CBC-ESSIV",
    6: "AES-128-CTS",
    7: "SM4-XTS",
    8: "SM4-CTS",
    9: "Adiantum",
    10: "AES-256-HCTR2",
}

FLAG_PAD_MASK = 0x03
FLAG_DIRECT_KEY = 0x04
FLAG_IV_INO_LBLK_64 = 0x08
FLAG_IV_INO_LBLK_32 = 0x10
_V1_FLAGS = 0x07
_V2_FLAGS = 0x1F


def mode_name(mode: int) -> str:
    return MODE_NAMES.get(mode, f"mode-{mode}")


# What :mod:`cipherdump.fscrypt.modes` has ciphers for.  Kept here, beside the mode
# numbers, so that a key-less run can name what it could decrypt without loading the
# ciphers (``modes`` imports every one of them).
_CONTENTS_IMPLEMENTED = frozenset({Mode.AES_256_XTS, Mode.AES_128_CBC, Mode.ADIANTUM})
_FILENAMES_IMPLEMENTED = frozenset(
    {Mode.AES_256_CTS, Mode.AES_128_CTS, Mode.AES_256_HCTR2, Mode.ADIANTUM}
)


def contents_mode_implemented(mode: int) -> bool:
    """Whether :func:`~cipherdump.fscrypt.modes.contents_cipher` can decrypt file
    contents in ``mode``."""
    return mode in _CONTENTS_IMPLEMENTED


def filenames_mode_implemented(mode: int) -> bool:
    """Whether :func:`~cipherdump.fscrypt.modes.names_cipher` can decrypt names and
    symlink targets in ``mode``."""
    return mode in _FILENAMES_IMPLEMENTED


@dataclass(frozen=True, slots=True)
class Policy:
    """An encryption policy: what every inode of one encrypted tree shares.

    ``key_spec`` is the 8-byte master key descriptor (v1) or the 16-byte master key
    identifier (v2).  ``log2_data_unit_size`` is 0 for "the filesystem block size".
    """

    version: int
    contents_mode: int
    filenames_mode: int
    flags: int
    key_spec: bytes
    log2_data_unit_size: int = 0

    @property
    def padding(self) -> int:
        """Filename padding in bytes: 4, 8, 16 or 32."""
        return 4 << (self.flags & FLAG_PAD_MASK)

    @property
    def direct_key(self) -> bool:
        return bool(self.flags & FLAG_DIRECT_KEY)

    @property
    def iv_ino_lblk_64(self) -> bool:
        return bool(self.flags & FLAG_IV_INO_LBLK_64)

    @property
    def iv_ino_lblk_32(self) -> bool:
        return bool(self.flags & FLAG_IV_INO_LBLK_32)

    @property
    def ties_to_filesystem(self) -> bool:
        """True when ciphertext depends on inode numbers and the filesystem UUID."""
        return self.iv_ino_lblk_64 or self.iv_ino_lblk_32

    def data_unit_size(self, block_size: int) -> int:
        return 1 << self.log2_data_unit_size if self.log2_data_unit_size else block_size

    def flag_names(self) -> list[str]:
        names = [f"PAD_{self.padding}"]
        if self.direct_key:
            names.append("DIRECT_KEY")
        if self.iv_ino_lblk_64:
            names.append("IV_INO_LBLK_64")
        if self.iv_ino_lblk_32:
            names.append("IV_INO_LBLK_32")
        return names

    def describe(self) -> str:
        """One line such as ``v2 AES-256-XTS/AES-256-CTS PAD_32 key 9af8...``."""
        parts = [
            f"v{self.version}",
            f"{mode_name(self.contents_mode)}/{mode_name(self.filenames_mode)}",
            *self.flag_names(),
        ]
        if self.log2_data_unit_size:
            parts.append(f"du={1 << self.log2_data_unit_size}")
        label = "descriptor" if self.version == 1 else "identifier"
        parts.append(f"{label} {self.key_spec.hex()}")
        return " ".join(parts)

    def encode(self) -> bytes:
        """The ioctl policy struct (``fscrypt_policy_v1``/``_v2``): context minus nonce."""
        if self.version == 1:
            return bytes([0, self.contents_mode, self.filenames_mode, self.flags]) + self.key_spec
        return (
            bytes(
                [2, self.contents_mode, self.filenames_mode, self.flags, self.log2_data_unit_size]
            )
            + b"\0\0\0"
            + self.key_spec
        )


@dataclass(frozen=True, slots=True)
class EncryptionContext:
    """A decoded context: the policy and the inode's nonce, plus the exact raw bytes."""

    policy: Policy
    nonce: bytes
    raw: bytes

    @property
    def version(self) -> int:
        return self.policy.version


def decode_context(raw: bytes) -> EncryptionContext:
    """Decode a context xattr value.

    Raises :class:`UnsupportedError` for an unknown version and :class:`CorruptError`
    when the length does not match the version or reserved bytes are set; a reader
    keeps the raw bytes verbatim in either case, so nothing is lost by refusing here.
    """
    if not raw:
        raise CorruptError("empty encryption context", structure="encryption context")
    version = raw[0]
    if version == 1:
        if len(raw) != V1_CONTEXT_SIZE:
            raise CorruptError(
                f"v1 context of {len(raw)} bytes, expected {V1_CONTEXT_SIZE}",
                structure="encryption context",
            )
        policy = Policy(1, raw[1], raw[2], raw[3], raw[4:12])
        nonce = raw[12:28]
        if policy.flags & ~_V1_FLAGS:
            raise UnsupportedError(f"v1 context with unknown flags 0x{policy.flags:02x}")
    elif version == 2:
        if len(raw) != V2_CONTEXT_SIZE:
            raise CorruptError(
                f"v2 context of {len(raw)} bytes, expected {V2_CONTEXT_SIZE}",
                structure="encryption context",
            )
        if raw[5:8] != b"\0\0\0":
            raise CorruptError(
                "v2 context with non-zero reserved bytes", structure="encryption context"
            )
        policy = Policy(2, raw[1], raw[2], raw[3], raw[8:24], raw[4])
        nonce = raw[24:40]
        if policy.flags & ~_V2_FLAGS:
            raise UnsupportedError(f"v2 context with unknown flags 0x{policy.flags:02x}")
    else:
        raise UnsupportedError(f"encryption context version {version} is not known")
    return EncryptionContext(policy=policy, nonce=bytes(nonce), raw=bytes(raw))


def encode_context(policy: Policy, nonce: bytes) -> bytes:
    """The context xattr value for ``policy`` and ``nonce`` (inverse of decode)."""
    if len(nonce) != NONCE_SIZE:
        raise ValueError("nonce must be 16 bytes")
    if policy.version == 1:
        return bytes([1, policy.contents_mode, policy.filenames_mode, policy.flags]) + (
            policy.key_spec + nonce
        )
    return policy.encode() + nonce
