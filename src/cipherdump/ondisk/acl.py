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
    "acl_from_text",
    "acl_to_text",
    "decode_ext4_acl",
    "encode_ext4_acl",
    "ext4_acl_to_xattr",
    "xattr_acl_to_ext4",
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


def xattr_acl_to_ext4(data: bytes) -> bytes:
    """The ext4 form of a ``system.posix_acl_*`` value as ``getxattr(2)`` returns it
    (a copy's ACL, to be written into an image)."""
    if len(data) < _HEADER.size or _HEADER.unpack_from(data)[0] != POSIX_ACL_XATTR_VERSION:
        raise CorruptError("not a POSIX ACL xattr (version 2 header)", structure="POSIX ACL")
    body = data[_HEADER.size :]
    if len(body) % _LONG.size:
        raise CorruptError("truncated entry", structure="POSIX ACL")
    entries: list[Entry] = []
    for tag, perm, ident in _LONG.iter_unpack(body):
        if tag in _LONG_TAGS:
            entries.append((tag, perm, ident))
        elif tag in _SHORT_TAGS:
            entries.append((tag, perm, None))
        else:
            raise CorruptError(f"unknown ACL tag 0x{tag:x}", structure="POSIX ACL")
    return encode_ext4_acl(entries)


# The text form (acl(5)) as GNU tar and star keep it in ``SCHILY.acl.access`` and
# ``SCHILY.acl.default``: entries joined by commas, numeric ids (the names of the
# backed-up system mean nothing where the archive is read).
_TEXT_TAGS = {
    ACL_USER_OBJ: "user",
    ACL_USER: "user",
    ACL_GROUP_OBJ: "group",
    ACL_GROUP: "group",
    ACL_MASK: "mask",
    ACL_OTHER: "other",
}


def acl_to_text(entries: list[Entry]) -> str:
    """``user::rw-,user:1000:r--,group::r--,mask::r--,other::---``."""
    out = []
    for tag, perm, ident in entries:
        if tag not in _TEXT_TAGS:
            raise CorruptError(f"unknown ACL tag 0x{tag:x}", structure="POSIX ACL")
        bits = "".join(c if perm & b else "-" for c, b in (("r", 4), ("w", 2), ("x", 1)))
        who = str(ident) if tag in _LONG_TAGS and ident is not None else ""
        out.append(f"{_TEXT_TAGS[tag]}:{who}:{bits}")
    return ",".join(out)


def acl_from_text(text: str) -> list[Entry]:
    """Entries of the text form :func:`acl_to_text` writes (numeric ids; a star-style
    fourth field, the numeric id after a user name, is read too)."""
    entries: list[Entry] = []
    for item in text.replace("\n", ",").split(","):
        item = item.split("#", 1)[0].strip()
        if not item:
            continue
        parts = item.split(":")
        if len(parts) not in (3, 4):
            raise CorruptError(f"cannot read ACL entry {item!r}", structure="POSIX ACL")
        kind, who, bits = parts[0], parts[1], parts[2]
        if len(parts) == 4 and parts[3]:
            who = parts[3]
        perm = 0
        for c, b in (("r", 4), ("w", 2), ("x", 1)):
            if c in bits:
                perm |= b
        if kind in ("user", "u", "group", "g") and who:
            if not who.isdigit():
                raise CorruptError(
                    f"ACL entry {item!r} names a user or group, not a number",
                    structure="POSIX ACL",
                )
            tag = ACL_USER if kind[0] == "u" else ACL_GROUP
            entries.append((tag, perm, int(who)))
            continue
        tags = {"user": ACL_USER_OBJ, "u": ACL_USER_OBJ, "group": ACL_GROUP_OBJ,
                "g": ACL_GROUP_OBJ, "mask": ACL_MASK, "m": ACL_MASK, "other": ACL_OTHER,
                "o": ACL_OTHER}  # fmt: skip
        if kind not in tags:
            raise CorruptError(f"cannot read ACL entry {item!r}", structure="POSIX ACL")
        entries.append((tags[kind], perm, None))
    # ext4 and the kernel keep entries sorted by tag, then id.
    entries.sort(key=lambda e: (e[0], e[2] or 0))
    return entries
