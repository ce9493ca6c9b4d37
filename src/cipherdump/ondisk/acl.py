"""POSIX ACLs as ext4 stores them, and as the VFS xattr interface wants them.

ext4 keeps ``system.posix_acl_access`` (name index 2) and ``system.posix_acl_default``
(index 3) in a compact form of its own (fs/ext4/acl.h): a le32 version 1 header, then
entries of 4 bytes (``le16 e_tag, le16 e_perm``) for ACL_USER_OBJ, ACL_GROUP_OBJ,
ACL_MASK and ACL_OTHER, and of 8 bytes (plus ``le32 e_id``) for ACL_USER and
ACL_GROUP.  ``setxattr(2)`` takes the generic form (include/uapi/linux/posix_acl_xattr.h):
a le32 version 2 header and 8-byte entries throughout, ``e_id`` 0xFFFFFFFF where the
tag has no id.
"""

from __future__ import annotations

import struct

from cipherdump.errors import CorruptError

__all__ = [
    "ACL_GROUP",
    "ACL_GROUP_OBJ",
    "ACL_MASK",
    "ACL_OTHER",
    "ACL_USER",
    "ACL_USER_OBJ",
    "EXT4_ACL_VERSION",
    "POSIX_ACL_XATTR_VERSION",
    "decode_ext4_acl",
    "encode_ext4_acl",
    "ext4_acl_to_xattr",
]

EXT4_ACL_VERSION = 1
POSIX_ACL_XATTR_VERSION = 2
ACL_UNDEFINED_ID = 0xFFFFFFFF

ACL_USER_OBJ = 0x01
ACL_USER = 0x02
ACL_GROUP_OBJ = 0x04
ACL_GROUP = 0x08
ACL_MASK = 0x10
ACL_OTHER = 0x20

_SHORT_TAGS = (ACL_USER_OBJ, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER)
_LONG_TAGS = (ACL_USER, ACL_GROUP)
_HEADER = struct.Struct("<I")
_SHORT = struct.Struct("<HH")
_LONG = struct.Struct("<HHI")

Entry = tuple[int, int, int | None]  # (tag, perm, id or None)


def decode_ext4_acl(data: bytes) -> list[Entry]:
    """Entries of an ext4 ACL xattr value (:class:`CorruptError` when malformed)."""
    if len(data) < _HEADER.size or _HEADER.unpack_from(data)[0] != EXT4_ACL_VERSION:
        raise CorruptError("not an ext4 ACL (version 1 header)", structure="POSIX ACL")
    out: list[Entry] = []
    pos = _HEADER.size
    while pos < len(data):
        if pos + _SHORT.size > len(data):
            raise CorruptError("truncated entry", structure="POSIX ACL")
        tag, perm = _SHORT.unpack_from(data, pos)
        if tag in _SHORT_TAGS:
            out.append((tag, perm, None))
            pos += _SHORT.size
        elif tag in _LONG_TAGS:
            if pos + _LONG.size > len(data):
                raise CorruptError("truncated entry", structure="POSIX ACL")
            out.append((tag, perm, _LONG.unpack_from(data, pos)[2]))
            pos += _LONG.size
        else:
            raise CorruptError(f"unknown ACL tag 0x{tag:x}", structure="POSIX ACL")
    return out


def encode_ext4_acl(entries: list[Entry]) -> bytes:
    """The ext4 form of ``entries`` (for tests and writers)."""
    out = bytearray(_HEADER.pack(EXT4_ACL_VERSION))
    for tag, perm, ident in entries:
        if tag in _LONG_TAGS:
            out += _LONG.pack(tag, perm, ident or 0)
        else:
            out += _SHORT.pack(tag, perm)
    return bytes(out)


def ext4_acl_to_xattr(data: bytes) -> bytes:
    """Convert an ext4 ACL value to what ``setxattr("system.posix_acl_*")`` accepts."""
    out = bytearray(_HEADER.pack(POSIX_ACL_XATTR_VERSION))
    for tag, perm, ident in decode_ext4_acl(data):
        out += _LONG.pack(tag, perm, ACL_UNDEFINED_ID if ident is None else ident)
    return bytes(out)
