"""What a snapshot keeps of one inode: the engine's half of a repository tree node.

A repository :class:`~cipherdump.repo.Node` is ``name`` (the raw name bytes stored in
the parent directory: ciphertext in an encrypted directory), ``kind`` (the inode type:
``file``, ``dir``, ``symlink``, ``chardev``, ``blockdev``, ``fifo``, ``socket``,
``unknown``), ``subtree`` (directories), ``content`` (data chunk ids) and ``attrs``, this
map (codec values; keys absent when they do not apply):

================== ==========================================================================
``ino``            inode number
``mode``           the whole ``i_mode`` (type and permission bits)
``uid`` ``gid``    owner (32-bit)
``size``           ``i_size``, exact
``links``          ``i_links_count``
``flags``          ``i_flags`` (encrypt, extents, casefold, inline data, ...)
``generation``     ``i_generation``
``project_id``     ``i_projid``
``version``        ``i_version`` (both halves)
``blocks``         ``i_blocks`` in 512-byte units
``atime_ns``       access time, nanoseconds (``mtime_ns``, ``ctime_ns`` likewise)
``crtime_ns``      birth time, when the inode has one
``order``          position of the entry in its directory as read (listings keep it)
``name_encrypted`` true when the parent directory encrypts names
``display``        the name as Linux shows it without the key (no-key name), when encrypted
``hash``           ``[hash, minor_hash]`` stored in a casefolded + encrypted directory entry
``context``        the encryption context xattr value (index 9, ``c``), verbatim
``xattrs``         every other xattr as ``[name index, name bytes, value bytes]``, in order
``rdev``           ``[major, minor]`` of a device node
``inline``         the 60 bytes of ``i_block`` of an inline-data inode (the rest of its data
                   is the ``system.data`` xattr)
``symlink``        a symlink's stored bytes (``i_size`` bytes; encrypted: the
                   ``le16 length | ciphertext`` payload)
``extents``        the block map: ``[lblk, length, pblk, unwritten]`` per mapped run; the
                   gaps up to ``i_size`` are holes
``chunk_size``     the chunking of ``content``, and ``chunks``: the chunk index of each
                   content id (chunks holding no written block are not stored)
``target``         a symlink's target as Linux shows it without the key
``ls``             the ``ls --json`` record at backup time, as ``[key, value]`` pairs in
                   order, without ``path``, kept only where it differs from the one made
                   from the fields above (so a snapshot lists exactly as the image did)
``ls_error``       why that record could not be made (a listing reports it)
``source``         16 bytes (non-directories): a hash of every on-disk byte the node is
                   made from (entry, position, raw inode, xattr and symlink blocks, naming
                   facts of the directory and filesystem); an incremental backup reuses the
                   encoded node of an entry whose source is unchanged.  Absent in snapshots
                   of older versions and where the directory's entries could not all be read.
``list_error``     for a directory: why its entries could not be read (a cycle, damage)
================== ==========================================================================
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

try:
    # hashlib's own BLAKE2b.  Importing hashlib loads OpenSSL's libcrypto besides, 16 ms
    # of every start of the program with a cold cache (measured), for nothing a backup
    # uses: cryptography brings its own.
    from _blake2 import blake2b as blake2b
except ImportError:  # pragma: no cover - not CPython
    from hashlib import blake2b as blake2b

from cipherdump.ondisk.inode import EXT4_ENCRYPT_FL
from cipherdump.repo import Id
from cipherdump.repo.codec import Value

NODE_ATTRS_VERSION = 1
# Attrs that change without the object changing as a user means it (``diff`` skips
# them): the listing position, the access time, the listing record, the source hash.
VOLATILE_ATTRS = frozenset({"order", "atime_ns", "ls", "source"})
_REF = struct.Struct("<I32s")


def fingerprint(attrs: Mapping[str, Value]) -> bytes:
    """What decides "unchanged": number, generation, ctime, mtime, size and extent map.

    Any write to a file changes its mtime and ctime, and any change of metadata its
    ctime; the extent map guards against a clock set back.  Only ever compared within
    one program version, so ``repr`` of plain ints and tuples is a fine serialisation.
    """
    extents = attrs.get("extents", ())
    runs = tuple(tuple(e) for e in extents) if isinstance(extents, tuple | list) else ()
    return file_fingerprint(
        attrs.get("ino"),
        attrs.get("generation"),
        attrs.get("ctime_ns"),
        attrs.get("mtime_ns"),
        attrs.get("size"),
        runs,
    )


def file_fingerprint(
    ino: Value, generation: Value, ctime_ns: Value, mtime_ns: Value, size: Value, runs: Value
) -> bytes:
    """:func:`fingerprint` of attrs with these values (``runs``: the extents as a tuple
    of tuples)."""
    key = (ino, generation, ctime_ns, mtime_ns, size, runs)
    return blake2b(repr(key).encode(), digest_size=16).digest()


def pack_refs(chunks: Sequence[int], content: Sequence[Id]) -> bytes:
    """Chunk indices and ids in 36 bytes each: compact enough to keep for every file."""
    return b"".join(_REF.pack(c, i.raw) for c, i in zip(chunks, content, strict=True))


def unpack_refs(data: bytes) -> tuple[tuple[int, ...], tuple[Id, ...]]:
    pairs = list(_REF.iter_unpack(data))
    return tuple(c for c, _ in pairs), tuple(Id(r) for _, r in pairs)


def derived_record(kind: str, name: bytes, attrs: Mapping[str, Value]) -> dict[str, Any]:
    """The ``ls --json`` record made from the kept fields, without ``path``.

    The backup compares it with what ``ls`` of the image printed and keeps the latter
    verbatim (``ls``) only where the two differ, so listings stay exact at little cost.
    """
    rec: dict[str, Any] = {
        "name": display_name(name, attrs),
        "type": kind,
        "mode": int_attr(attrs, "mode") & 0o7777,
        "uid": int_attr(attrs, "uid"),
        "gid": int_attr(attrs, "gid"),
        "size": int_attr(attrs, "size"),
        "mtime_ns": int_attr(attrs, "mtime_ns"),
        "inode": int_attr(attrs, "ino"),
        "links": int_attr(attrs, "links"),
        "encrypted": bool(int_attr(attrs, "flags") & EXT4_ENCRYPT_FL),
        "name_encrypted": attrs.get("name_encrypted") is True,
    }
    target = attrs.get("target")
    if isinstance(target, bytes):
        rec["target"] = target
    rdev = attrs.get("rdev")
    if isinstance(rdev, tuple | list):
        rec["rdev"] = list(rdev)
    return rec


def ls_record(kind: str, name: bytes, attrs: Mapping[str, Value], path: bytes) -> dict[str, Any]:
    """The ``ls --json`` record of the image at backup time, ``path`` first."""
    rec: dict[str, Any] = {"path": path}
    pairs = attrs.get("ls")
    if not isinstance(pairs, tuple | list):
        rec.update(derived_record(kind, name, attrs))
        return rec
    for pair in pairs:
        if isinstance(pair, tuple | list) and len(pair) == 2 and isinstance(pair[0], str):
            value = pair[1]
            rec[pair[0]] = list(value) if isinstance(value, tuple) else value
    return rec


def int_attr(attrs: Mapping[str, Value], name: str, default: int = 0) -> int:
    value = attrs.get(name, default)
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def bytes_attr(attrs: Mapping[str, Value], name: str) -> bytes | None:
    value = attrs.get(name)
    return value if isinstance(value, bytes) else None


def display_name(name: bytes, attrs: Mapping[str, Value]) -> bytes:
    return bytes_attr(attrs, "display") or name


def list_attr(attrs: Mapping[str, Value], name: str) -> tuple[Value, ...]:
    value = attrs.get(name)
    return tuple(value) if isinstance(value, tuple | list) else ()
