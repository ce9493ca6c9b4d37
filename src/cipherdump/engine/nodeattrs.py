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
``order``          sorts the entries of a directory into the order it holds them
                   (listings keep it): the entry's byte offset in the directory, which
                   stays when other entries come and go, so that their nodes (and a large
                   directory's parts) stay the same; its position in the directory in
                   trees written before chunked trees (version 3), and where the entries
                   could not all be read.  Only its order is meaningful.
``name_encrypted`` true when the containing directory encrypts names
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
                   encoded node of an entry whose source is unchanged.  The backup calls it
                   the entry's *record key* (see :mod:`cipherdump.engine.backup.reuse`).
                   Absent in snapshots of older versions and where the directory's entries
                   could not all be read.
``list_error``     for a directory: why its entries could not be read (a cycle, damage)
================== ==========================================================================
"""

from __future__ import annotations

import stat
import struct
from collections.abc import Mapping, Sequence
from typing import Any, TypeGuard

try:
    # hashlib's own BLAKE2b.  Importing hashlib loads OpenSSL's libcrypto besides, 16 ms
    # of every start of the program with a cold cache (measured), for nothing a backup
    # uses: cryptography brings its own.
    from _blake2 import blake2b as blake2b
except ImportError:  # pragma: no cover - not CPython
    from hashlib import blake2b as blake2b

from cipherdump.ondisk.dirent import dirent_name_problem
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


# -- what an ext4 inode can hold ------------------------------------------------------------
#
# A snapshot is authenticated, but one written by a damaged or hostile program with the
# password can hold any codec value.  Every field is checked against the width ext4 gives
# it before anything (a restore, a listing, a read) relies on it: a value no inode can
# hold is a problem of that one entry, never an overflow deep in a writer.

_U16, _U32, _U64 = 1 << 16, 1 << 32, 1 << 64
_FIELD_LIMITS: dict[str, int] = {
    "mode": _U16,
    "uid": _U32,
    "gid": _U32,
    "links": _U16,
    "flags": _U32,
    "generation": _U32,
    "project_id": _U32,
    "version": _U64,
    "blocks": 1 << 48,
}
# Seconds are a signed 32-bit field plus two epoch bits (EXT4_EPOCH_BITS).
_TIME_MIN_NS = -(1 << 31) * 1_000_000_000
_TIME_END_NS = ((1 << 34) - (1 << 31)) * 1_000_000_000
_TIMES = ("atime_ns", "mtime_ns", "ctime_ns", "crtime_ns")
# Extents address 32-bit logical blocks (EXT_MAX_EXTENT_LBLK) and 48-bit physical ones.
_MAX_LBLK = (1 << 32) - 1
_MAX_PBLK = 1 << 48
_MAX_CHUNK = 256 << 20  # a chunk is one blob (MAX_BLOB_SIZE)
_INLINE_MAX = 60  # i_block
# A node's kind is its mode's file type, as the backup read it.
_KIND_FMT = {
    "file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK,
    "chardev": stat.S_IFCHR, "blockdev": stat.S_IFBLK, "fifo": stat.S_IFIFO,
    "socket": stat.S_IFSOCK,
}  # fmt: skip


def node_problem(
    name: bytes, kind: str, attrs: Mapping[str, Value], *, name_encrypted: bool, block_size: int
) -> str | None:
    """Why a snapshot node cannot be an ext4 inode under this name, or None.

    ``name_encrypted``: the parent directory encrypts names (``name`` is ciphertext).
    """
    bad = dirent_name_problem(name, encrypted=name_encrypted)
    if bad is not None:
        return bad
    for key, limit in _FIELD_LIMITS.items():
        value = attrs.get(key, 0)
        if not _is_int(value) or not 0 <= value < limit:
            return f"{key} {value!r} does not fit an ext4 inode"
    mode = attrs.get("mode", 0)
    if _is_int(mode) and 0 <= mode < _U16:
        fmt = _KIND_FMT.get(kind)
        if kind == "unknown":
            if stat.S_IFMT(mode) in _KIND_FMT.values():
                return f"an unknown file type whose mode is {mode:#o}"
        elif fmt is None:
            return f"unknown kind {kind!r}"
        elif stat.S_IFMT(mode) != fmt:
            return f"a {kind} whose mode is {mode:#o}"
    ino = attrs.get("ino", 1)
    if not _is_int(ino) or not 0 < ino < _U32:
        return f"inode number {ino!r} is out of range"
    for key in _TIMES:
        value = attrs.get(key, 0)
        if value is None and key == "crtime_ns":
            continue
        if not _is_int(value) or not _TIME_MIN_NS <= value < _TIME_END_NS:
            return f"{key} {value!r} is beyond what ext4 timestamps hold"
    size = attrs.get("size", 0)
    if not _is_int(size) or not 0 <= size <= _MAX_LBLK * block_size:
        return f"size {size!r} is beyond the largest ext4 file of {block_size}-byte blocks"
    return _layout_problem(kind, attrs, block_size)


def _layout_problem(kind: str, attrs: Mapping[str, Value], block_size: int) -> str | None:
    for e in list_attr(attrs, "extents"):
        if not isinstance(e, tuple | list) or len(e) != 4:
            return "an extent is not [lblk, length, pblk, unwritten]"
        lblk, length, pblk = e[0], e[1], e[2]
        if not (_is_int(lblk) and _is_int(length) and _is_int(pblk)):
            return "an extent is not [lblk, length, pblk, unwritten]"
        if lblk < 0 or length <= 0 or lblk + length > _MAX_LBLK + 1:
            return f"extent at block {lblk!r} of {length!r} blocks is out of range"
        if not 0 <= pblk < _MAX_PBLK:
            return f"extent at physical block {pblk!r} is out of range"
    chunk_size = attrs.get("chunk_size", 1 << 20)
    if not _is_int(chunk_size) or not 0 < chunk_size <= _MAX_CHUNK:
        return f"chunk size {chunk_size!r} is out of range"
    inline = attrs.get("inline")
    if isinstance(inline, bytes) and len(inline) > _INLINE_MAX:
        return f"inline data of {len(inline)} bytes does not fit i_block"
    symlink = attrs.get("symlink")
    if kind == "symlink" and isinstance(symlink, bytes) and len(symlink) >= block_size:
        return f"symlink of {len(symlink)} bytes does not fit a {block_size}-byte block"
    rdev = list_attr(attrs, "rdev")
    if rdev and not (
        len(rdev) == 2
        and _is_int(rdev[0])
        and _is_int(rdev[1])
        and 0 <= rdev[0] < 1 << 12
        and 0 <= rdev[1] < 1 << 20
    ):
        return f"device number {list(rdev)!r} is out of range"
    for item in list_attr(attrs, "xattrs"):
        if isinstance(item, tuple | list) and len(item) == 3:
            index, xname = item[0], item[1]
            if not (_is_int(index) and 0 <= index < 256):
                return f"xattr name index {index!r} is out of range"
            if isinstance(xname, bytes) and len(xname) > 255:
                return f"xattr name of {len(xname)} bytes is too long"
    hashes = list_attr(attrs, "hash")
    if hashes and not all(_is_int(h) and 0 <= h < _U32 for h in hashes):
        return "stored name hash is out of range"
    return None


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
