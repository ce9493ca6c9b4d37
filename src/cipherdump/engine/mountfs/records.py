"""What a key-less mount shows as xattrs: the inode's own, and the key-less records.

The records (:mod:`cipherdump.engine.keyless_records`, docs/keyless-records.md) go where
``dump --ciphertext`` puts them, so that a copy made by another tool comes back through
``restore --from-dir`` as a dump comes back through ``--from-tar``: ``ino`` and ``flags``
on every object, ``context`` on every encrypted inode, ``name`` (and ``hash`` where the
directory stores one) on every entry of an encrypted directory, ``size`` on every
regular file, ``symlink`` on every encrypted symlink, ``filesystem`` on the root.

Linux allows ``user.*`` xattrs only on regular files and directories (``xattr_permission``
in fs/xattr.c answers ENODATA for any other kind before a filesystem is asked), so a
symlink, device node, FIFO or socket shows its records as ``trusted.cipherdump.*``:
the same names and values, which root reads and copies (``cp -a``, ``rsync -aAX``,
``tar --xattrs --xattrs-include='*'``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cipherdump.engine import keyless_records as records
from cipherdump.errors import CipherdumpError
from cipherdump.ondisk.acl import ext4_acl_to_xattr
from cipherdump.ondisk.inode import EXT4_ENCRYPT_FL
from cipherdump.ondisk.xattr import (
    EXT4_XATTR_INDEX_POSIX_ACL_ACCESS,
    EXT4_XATTR_INDEX_POSIX_ACL_DEFAULT,
    EXT4_XATTR_INDEX_SECURITY,
    EXT4_XATTR_INDEX_TRUSTED,
    EXT4_XATTR_INDEX_USER,
    PREFIXES,
)

__all__ = [
    "ObjectFacts",
    "filesystem_record",
    "object_records",
    "object_xattrs",
    "own_xattrs",
    "record_xattr",
]

#: Where symlinks and special files show their records (see the module docstring).
TRUSTED_PREFIX = "trusted."

# Name indices shown as they are; POSIX ACLs are converted to the form getxattr(2)
# returns.  Not shown, as the kernel does not show them: the encryption context (a
# record instead), system.data (inline data), Lustre, Hurd and richacl ones.
_SHOWN = (EXT4_XATTR_INDEX_USER, EXT4_XATTR_INDEX_TRUSTED, EXT4_XATTR_INDEX_SECURITY)
_ACLS = (EXT4_XATTR_INDEX_POSIX_ACL_ACCESS, EXT4_XATTR_INDEX_POSIX_ACL_DEFAULT)
# The kinds whose inodes Linux lets carry user.* xattrs.
_CARRIERS = ("file", "dir")


@dataclass(frozen=True, slots=True)
class ObjectFacts:
    """The facts of one directory entry and its inode that the records come from.

    ``raw_name`` is the name as stored in the parent directory (ciphertext when
    ``name_encrypted``), ``stored_hash`` the hash a casefolded + encrypted directory
    stores with it, ``symlink`` an encrypted symlink's stored payload.
    """

    kind: str
    ino: int
    flags: int
    size: int
    links: int
    context: bytes | None
    raw_name: bytes
    name_encrypted: bool
    stored_hash: tuple[int, int] | None = None
    symlink: bytes | None = None

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & EXT4_ENCRYPT_FL)

    @property
    def has_records(self) -> bool:
        """Whether anything about this object is encrypted (so it has records)."""
        return self.encrypted or self.name_encrypted

    @property
    def carries_user_xattrs(self) -> bool:
        """Whether Linux lets this kind carry ``user.*`` xattrs (else ``trusted.*``)."""
        return self.kind in _CARRIERS


def object_records(facts: ObjectFacts, *, everywhere: bool = True) -> dict[str, bytes]:
    """The records of one object by record name (``size``, ``context``...), values as
    the xattrs show them.  ``everywhere`` (a key-less view): every object has some;
    else (a keyed view, for what no key opened) only objects with something encrypted."""
    if not everywhere and not facts.has_records:
        return {}
    out: dict[str, bytes] = {}
    if facts.kind == "file":
        out[records.SIZE] = str(facts.size).encode()
    if facts.context is not None:
        out[records.CONTEXT] = facts.context
    if facts.name_encrypted:
        out[records.NAME] = facts.raw_name
        if facts.stored_hash is not None:
            h, minor = facts.stored_hash
            out[records.HASH] = h.to_bytes(4, "little") + minor.to_bytes(4, "little")
    if facts.symlink is not None and facts.encrypted:
        out[records.SYMLINK] = facts.symlink
    out[records.INO] = str(facts.ino).encode()
    out[records.FLAGS] = str(facts.flags).encode()
    return out


def record_xattr(record: str, facts: ObjectFacts) -> str:
    """The xattr name of ``record`` on this object: ``user.cipherdump.*`` where Linux
    allows user xattrs, ``trusted.cipherdump.*`` elsewhere."""
    name = records.xattr_name(record)
    return name if facts.carries_user_xattrs else TRUSTED_PREFIX + name[len("user.") :]


def own_xattrs(items: Iterable[tuple[int, bytes, bytes]]) -> dict[str, bytes]:
    """The inode's own xattrs as getxattr(2) shows them, from ``(name index, name,
    value)``; an ACL that cannot be converted is left out (damage ``stat`` reports)."""
    out: dict[str, bytes] = {}
    for index, name, value in items:
        if index in _SHOWN:
            full, data = PREFIXES[index] + name, value
        elif index in _ACLS and not name:
            try:
                full, data = PREFIXES[index], ext4_acl_to_xattr(value)
            except CipherdumpError:
                continue
        else:
            continue
        out.setdefault(full.decode("utf-8", "surrogateescape"), data)
    return out


def object_xattrs(
    own: Iterable[tuple[int, bytes, bytes]], facts: ObjectFacts | None, *, everywhere: bool = True
) -> dict[str, bytes]:
    """Every xattr of one object: its own, then its records (``facts`` None: none)."""
    out = own_xattrs(own)
    if facts is not None:
        for record, value in object_records(facts, everywhere=everywhere).items():
            out[record_xattr(record, facts)] = value
    return out


def filesystem_record(facts: Any) -> bytes:
    """``user.cipherdump.filesystem``: the fields of a ``TargetFacts`` as UTF-8 JSON,
    bytes in hex, in the order the dataclass declares them."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(facts):
        value = getattr(facts, f.name)
        if isinstance(value, bytes):
            value = value.hex()
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return json.dumps(out, separators=(",", ":")).encode()


def decode_filesystem_record(data: bytes) -> Mapping[str, Any]:
    """The mapping :func:`filesystem_record` wrote, bytes fields back to bytes (for
    ``TargetFacts.from_mapping``)."""
    raw = json.loads(data.decode())
    if not isinstance(raw, dict):
        raise ValueError("not a JSON object")
    for key in ("uuid", "hash_seed", "volume_name"):
        if isinstance(raw.get(key), str):
            raw[key] = bytes.fromhex(raw[key])
    return raw
