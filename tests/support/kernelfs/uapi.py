"""The fscrypt uapi (``include/uapi/linux/fscrypt.h``) from Python: constants, key
identifiers and the ioctls that add and remove keys and set and read policies."""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

# --- fscrypt uapi (include/uapi/linux/fscrypt.h) -----------------------------------------------

FS_IOC_SET_ENCRYPTION_POLICY = 0x800C6613
FS_IOC_GET_ENCRYPTION_POLICY_EX = 0xC0096616
FS_IOC_ADD_ENCRYPTION_KEY = 0xC0506617
FS_IOC_REMOVE_ENCRYPTION_KEY = 0xC0406618
FS_IOC_GET_ENCRYPTION_KEY_STATUS = 0xC080661A
FS_IOC_GET_ENCRYPTION_NONCE = 0x8010661B

KEY_SPEC_TYPE_DESCRIPTOR = 1
KEY_SPEC_TYPE_IDENTIFIER = 2
KEY_SPEC_SIZE = 40  # le32 type, le32 reserved, 32-byte union
ADD_KEY_HEADER_SIZE = 80
REMOVE_KEY_ARG_SIZE = 64
KEY_STATUS_ARG_SIZE = 128

MODE_AES_256_XTS = 1
MODE_AES_256_CTS = 4
PAD_4, PAD_8, PAD_16, PAD_32 = 0x00, 0x01, 0x02, 0x03
FLAG_DIRECT_KEY = 0x04
FLAG_IV_INO_LBLK_64 = 0x08
FLAG_IV_INO_LBLK_32 = 0x10

# fallocate(2) modes; Python only wraps posix_fallocate, so punching holes goes through libc.
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

# statx(2), for the birth time and the "encrypted" attribute, which os.stat does not report.
STATX_BASIC_STATS = 0x07FF
STATX_BTIME = 0x0800
STATX_ATTR_ENCRYPTED = 0x0800
AT_SYMLINK_NOFOLLOW = 0x100

_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


# --- keys -----------------------------------------------------------------------------------------


def master_key_from_label(label: bytes | str, size: int = 64) -> bytes:
    """A deterministic, public master key: SHA-512 of ``label``, cut to ``size`` bytes.

    These keys protect nothing; they make kernel-made images reproducible in content and let a
    test (or a user of the sample image) decrypt them later.
    """
    if isinstance(label, str):
        label = label.encode()
    if not 16 <= size <= 64:
        raise ValueError("fscrypt master keys are 16..64 bytes")
    return hashlib.sha512(label).digest()[:size]


def key_descriptor(master_key: bytes) -> bytes:
    """The e4crypt/fscrypt convention for a v1 descriptor: SHA-512(SHA-512(key))[:8].

    The kernel never checks it; any 8 bytes would do.
    """
    return hashlib.sha512(hashlib.sha512(master_key).digest()).digest()[:8]


def _key_spec(key_spec: bytes) -> bytes:
    """Encode a key specifier: 8 bytes are a v1 descriptor, 16 bytes a v2 identifier."""
    if len(key_spec) == 8:
        kind = KEY_SPEC_TYPE_DESCRIPTOR
    elif len(key_spec) == 16:
        kind = KEY_SPEC_TYPE_IDENTIFIER
    else:
        raise ValueError(f"key spec must be 8 (descriptor) or 16 (identifier) bytes: {key_spec!r}")
    return struct.pack("<II32s", kind, 0, key_spec)


# --- fscrypt ioctls -------------------------------------------------------------------------------


def _ioctl_path(path: Path, request: int, arg: bytearray) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, request, arg, True)
    finally:
        os.close(fd)


def add_key(mnt: Path, raw_key: bytes, v1_descriptor: bytes | None = None) -> bytes:
    """FS_IOC_ADD_ENCRYPTION_KEY on the filesystem mounted at ``mnt``.

    Without ``v1_descriptor`` the key is added as a v2 key and the kernel-computed 16-byte
    identifier is returned; with it, the key is added for v1 policies under that 8-byte
    descriptor, which is returned.
    """
    if v1_descriptor is None:
        # The kernel fills in the identifier; the union goes in zeroed.
        spec = struct.pack("<II32x", KEY_SPEC_TYPE_IDENTIFIER, 0)
    else:
        spec = _key_spec(v1_descriptor)
    arg = bytearray(spec + struct.pack("<II32x", len(raw_key), 0) + raw_key)
    assert len(arg) == ADD_KEY_HEADER_SIZE + len(raw_key)
    _ioctl_path(mnt, FS_IOC_ADD_ENCRYPTION_KEY, arg)
    if v1_descriptor is not None:
        return v1_descriptor
    return bytes(arg[8:24])


@dataclass(frozen=True)
class KeyStatus:
    """FS_IOC_GET_ENCRYPTION_KEY_STATUS: status 1 absent, 2 present, 3 incompletely removed."""

    status: int
    status_flags: int
    user_count: int

    ABSENT = 1
    PRESENT = 2
    INCOMPLETELY_REMOVED = 3


def key_status(mnt: Path, key_spec: bytes) -> KeyStatus:
    arg = bytearray(_key_spec(key_spec).ljust(KEY_STATUS_ARG_SIZE, b"\0"))
    _ioctl_path(mnt, FS_IOC_GET_ENCRYPTION_KEY_STATUS, arg)
    status, flags, users = struct.unpack_from("<III", arg, KEY_SPEC_SIZE + 24)
    return KeyStatus(status, flags, users)


def remove_key(mnt: Path, key_spec: bytes) -> int:
    """FS_IOC_REMOVE_ENCRYPTION_KEY; returns the removal status flags (1 = files still busy)."""
    arg = bytearray(_key_spec(key_spec).ljust(REMOVE_KEY_ARG_SIZE, b"\0"))
    _ioctl_path(mnt, FS_IOC_REMOVE_ENCRYPTION_KEY, arg)
    return int(struct.unpack_from("<I", arg, KEY_SPEC_SIZE)[0])


@dataclass(frozen=True)
class PolicySpec:
    """What to pass to FS_IOC_SET_ENCRYPTION_POLICY, minus the key spec (known only at run time).

    ``flags`` holds the padding (PAD_*) and at most one of IV_INO_LBLK_64/32 (v2 only).
    """

    version: int = 2
    contents_mode: int = MODE_AES_256_XTS
    filenames_mode: int = MODE_AES_256_CTS
    flags: int = PAD_32
    log2_data_unit_size: int = 0

    @property
    def label(self) -> str:
        pad = 4 << (self.flags & 3)
        extra = ""
        if self.flags & FLAG_IV_INO_LBLK_64:
            extra += "_lblk64"
        if self.flags & FLAG_IV_INO_LBLK_32:
            extra += "_lblk32"
        if self.log2_data_unit_size:
            extra += f"_du{1 << self.log2_data_unit_size}"
        return f"v{self.version}_m{self.contents_mode}-{self.filenames_mode}_pad{pad}{extra}"

    @property
    def needs_stable_inodes(self) -> bool:
        return bool(self.flags & (FLAG_IV_INO_LBLK_64 | FLAG_IV_INO_LBLK_32))


def encode_policy(
    version: int,
    contents_mode: int,
    filenames_mode: int,
    flags: int,
    key_spec: bytes,
    log2_du: int = 0,
) -> bytes:
    """The ioctl policy struct: 12 bytes for v1 (version byte **0**), 24 bytes for v2."""
    if version == 1:
        if len(key_spec) != 8 or log2_du:
            raise ValueError("v1 policies take an 8-byte descriptor and no data unit size")
        return struct.pack("<BBBB8s", 0, contents_mode, filenames_mode, flags, key_spec)
    if version == 2:
        if len(key_spec) != 16:
            raise ValueError("v2 policies take a 16-byte identifier")
        return struct.pack(
            "<BBBBB3x16s", 2, contents_mode, filenames_mode, flags, log2_du, key_spec
        )
    raise ValueError(f"unknown policy version {version}")


def set_policy(
    directory: Path,
    version: int,
    contents_mode: int,
    filenames_mode: int,
    flags: int,
    key_spec: bytes,
    log2_du: int = 0,
) -> None:
    """FS_IOC_SET_ENCRYPTION_POLICY on an empty directory."""
    policy = encode_policy(version, contents_mode, filenames_mode, flags, key_spec, log2_du)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, FS_IOC_SET_ENCRYPTION_POLICY, policy)
    finally:
        os.close(fd)


def get_policy_ex(path: Path) -> bytes:
    """FS_IOC_GET_ENCRYPTION_POLICY_EX: the 12-byte (v1) or 24-byte (v2) policy struct."""
    arg = bytearray(struct.pack("<Q", 24) + b"\0" * 24)
    _ioctl_path(path, FS_IOC_GET_ENCRYPTION_POLICY_EX, arg)
    (size,) = struct.unpack_from("<Q", arg, 0)
    return bytes(arg[8 : 8 + size])


def get_nonce(path: Path) -> bytes:
    """FS_IOC_GET_ENCRYPTION_NONCE: the 16-byte nonce of a regular file or directory."""
    arg = bytearray(16)
    _ioctl_path(path, FS_IOC_GET_ENCRYPTION_NONCE, arg)
    return bytes(arg)
