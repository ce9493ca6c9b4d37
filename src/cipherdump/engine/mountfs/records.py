"""What a key-less mount shows as xattrs: the inode's own, and ``user.cipherdump.*``.

The records (:mod:`cipherdump.engine.keyless_records`, docs/keyless-records.md) appear
on every object whose contents or name are encrypted: what a copy made by another tool
needs, besides the ciphertext, to be turned back into an image the owners' keys unlock.
Unencrypted objects show only their own xattrs, as they are.

Linux allows ``user.*`` xattrs only on regular files and directories (``xattr_permission``
in fs/xattr.c answers ENODATA for any other kind before a filesystem is asked), so the
records of a symlink, device node, FIFO or socket cannot travel with it.  They travel
with its directory instead, in ``user.cipherdump.entries``; so do the per-entry records
(``name``, ``hash``) of a hard-linked file, which a copy stores once for all its names.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cipherdump.engine import keyless_records as records
from cipherdump.errors import CipherdumpError
from cipherdump.fscrypt.nokey import NOKEY_PREFIX_SIZE
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
    "entries_record",
    "filesystem_record",
    "object_records",
    "own_xattrs",
]

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
    def carries_records(self) -> bool:
        """Whether its records can be its own xattrs (see the module docstring)."""
        return self.kind in _CARRIERS

    @property
    def long_name(self) -> bool:
        """An encrypted name its no-key name does not hold whole (the kernel's long form
        keeps a prefix and a digest), so ``name`` is the only copy of it."""
        return self.name_encrypted and len(self.raw_name) > NOKEY_PREFIX_SIZE

    @property
    def long_symlink(self) -> bool:
        """An encrypted symlink whose no-key target does not hold the whole payload."""
        return self.symlink is not None and len(self.symlink) - 2 > NOKEY_PREFIX_SIZE

    @property
    def links_elsewhere(self) -> bool:
        """A hard-linked file with a long name: a copy stores one ``name`` for all its
        links, so its own goes to its directory too."""
        return self.kind == "file" and self.links > 1 and self.long_name


def object_records(facts: ObjectFacts) -> dict[str, bytes]:
    """The records of one object by record name (``size``, ``context``...), values as
    the xattrs show them; empty for an object with nothing encrypted."""
    if not facts.has_records:
        return {}
    out: dict[str, bytes] = {}
    if facts.encrypted and facts.kind == "file":
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
    own: Iterable[tuple[int, bytes, bytes]],
    facts: ObjectFacts | None,
    kids: Iterable[tuple[bytes, ObjectFacts]] = (),
) -> dict[str, bytes]:
    """Every xattr of one object: its own, then its records (``facts`` None: none),
    then for a directory ``user.cipherdump.entries`` over ``kids`` where needed."""
    out = own_xattrs(own)
    if facts is not None and facts.carries_records:
        for record, value in object_records(facts).items():
            out[records.xattr_name(record)] = value
    entries = entries_record(kids)
    if entries is not None:
        out[records.xattr_name(records.ENTRIES)] = entries
    return out


def entries_record(kids: Iterable[tuple[bytes, ObjectFacts]]) -> bytes | None:
    """``user.cipherdump.entries`` of a directory: for each entry shown as ``name``
    whose records cannot travel with its inode, those records; None when there is none.

    UTF-8 JSON: an object from shown name to an object of records, numbers as JSON
    numbers and bytes in base64 (RFC 4648, padded).  Only what the entry does not show
    itself is there, because ext4 holds all the xattrs of one inode in one block (a
    copy onto ext4 fails past it): ``ino``, ``flags`` and ``context`` always; ``name``
    and ``symlink`` only where the no-key name or target is the long form, which does
    not hold them whole.  A short no-key name decodes to the hash and the whole
    ciphertext name, a short no-key target to the whole symlink ciphertext (whose
    length gives the payload).
    """
    out: dict[str, dict[str, Any]] = {}
    for name, facts in kids:
        if not facts.has_records or (facts.carries_records and not facts.links_elsewhere):
            continue
        entry: dict[str, Any] = {
            records.INO: facts.ino,
            records.FLAGS: facts.flags,
        }
        if facts.context is not None:
            entry[records.CONTEXT] = _b64(facts.context)
        if facts.long_name:
            entry[records.NAME] = _b64(facts.raw_name)
            if facts.stored_hash is not None:
                h, minor = facts.stored_hash
                entry[records.HASH] = _b64(h.to_bytes(4, "little") + minor.to_bytes(4, "little"))
        if facts.long_symlink and facts.symlink is not None:
            entry[records.SYMLINK] = _b64(facts.symlink)
        out[name.decode("utf-8", "surrogateescape")] = entry
    if not out:
        return None
    return json.dumps(out, separators=(",", ":")).encode("utf-8", "surrogateescape")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


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
