"""The encoded tree node of a regular file, made straight from its inode.

A backup describes every file it reads; through the general path (an attrs dict, a
:class:`~cipherdump.repo.Node`, the codec's generic map encoding, then the tree's
layout) that costs about 17 µs a file, a sixth of the per-file work of a full backup
(measured on the benchmark, 30,000 files).  Most files have the same shape: extents
or no blocks, a birth time, no xattr but an encryption context kept in the inode.  For
them this module writes the node's encoding key by key in the codec's canonical order,
noting where the attrs a tree's layout locates are: the very bytes the general path
makes (tests compare whole snapshots made both ways), in two thirds of the time.

Anything else (symlinks, devices, inline data, other xattrs, no birth time) is left to
the general path: :func:`file_context` says which.
"""

from __future__ import annotations

from collections.abc import Sequence

from cipherdump.engine.views.image import ImageNode
from cipherdump.ext4 import Inode
from cipherdump.ext4.inode import InodeType
from cipherdump.ondisk.inode import EXT4_INLINE_DATA_FL
from cipherdump.ondisk.xattr import EXT4_XATTR_INDEX_ENCRYPTION
from cipherdump.repo import Id, codec
from cipherdump.repo.tree import NodeSpan, node_frame

# Each key as the codec writes a map key, in the codec's order (UTF-8 bytes).
(
    _ATIME, _BLOCKS, _CHUNK_SIZE, _CHUNKS, _CONTEXT, _CRTIME, _CTIME, _DISPLAY, _EXTENTS,
    _FLAGS, _GENERATION, _GID, _HASH, _INO, _LINKS, _MODE, _MTIME, _NAME_ENCRYPTED, _ORDER,
    _PROJECT_ID, _SIZE, _SOURCE, _UID, _VERSION,
) = map(codec.map_key, (
    "atime_ns", "blocks", "chunk_size", "chunks", "context", "crtime_ns", "ctime_ns",
    "display", "extents", "flags", "generation", "gid", "hash", "ino", "links", "mode",
    "mtime_ns", "name_encrypted", "order", "project_id", "size", "source", "uid", "version",
))  # fmt: skip
# Keys every such node has: all those above but chunk_size, chunks, context, display,
# extents, hash, name_encrypted and source.
_ALWAYS = 16
_TRUE = codec.encode(True)
_EXTENT_HEAD = codec.list_head(4)
_BOOLS = (codec.encode(False), _TRUE)


def file_context(inode: Inode) -> tuple[bool, bytes | None]:
    """(whether :func:`file_node` can describe ``inode``, its encryption context)."""
    raw = inode.raw
    if (
        inode.type is not InodeType.FILE
        or raw.i_flags & EXT4_INLINE_DATA_FL
        or not raw.has_extra["crtime"]
    ):
        return False, None
    xattrs = inode.xattrs
    if not xattrs:
        return True, None
    if len(xattrs) > 1:
        return False, None
    (x,) = xattrs
    if x.index != EXT4_XATTR_INDEX_ENCRYPTION or x.name != b"c":
        return False, None
    return True, x.value


def file_node(
    kid: ImageNode,
    order: int,
    located: tuple[str, ...],
    *,
    context: bytes | None,
    extents: Sequence[tuple[int, int, int, bool]],
    record_key: bytes | None,
    chunk_size: int,
    chunks: Sequence[int],
    content: tuple[Id, ...],
) -> NodeSpan:
    """The node the general path makes of the regular file ``kid`` (see
    :meth:`~cipherdump.engine.backup.nodes.NodeMaker.attrs_of` and ``make_node``), for
    an inode :func:`file_context` accepts: ``extents`` its mapped runs, ``record_key``
    its record key (kept as the attr ``source``), ``chunks`` and ``content`` its data.
    ``located``: the keys a tree's layout locates (``context``, ``order`` and
    ``source`` are)."""
    ino = kid.inode
    raw = ino.raw
    enc = codec.int_value
    cached, uncached = codec.cached_int, codec.encode_int
    # The ints every such node has, encoded in one comprehension instead of a call of
    # int_value each: about 1 µs a node less (16-17 against 17-18 µs, 30,000 files).
    (
        e_atime, e_blocks, e_crtime, e_ctime, e_flags, e_generation, e_gid, e_ino,
        e_links, e_mode, e_mtime, e_order, e_projid, e_size, e_uid, e_version,
    ) = [
        cached(v) or uncached(v)
        for v in (
            ino.atime_ns, ino.blocks_512, ino.crtime_ns or 0, ino.ctime_ns, raw.i_flags,
            raw.i_generation, raw.i_gid, ino.ino, raw.i_links_count, raw.i_mode,
            ino.mtime_ns, order, raw.i_projid, raw.i_size, raw.i_uid, raw.i_version,
        )
    ]  # fmt: skip
    encrypted_name = kid.name_encrypted
    stored_hash = kid.stored_hash
    count = _ALWAYS + 2 * (bool(content) + encrypted_name) + bool(extents)
    count += (context is not None) + (stored_hash is not None) + (record_key is not None)
    head, tail = node_frame(kid.raw_name, "file", content)
    parts = [head, codec.map_head(count), _ATIME, e_atime, _BLOCKS, e_blocks]
    if content:
        parts += (_CHUNK_SIZE, enc(chunk_size), _CHUNKS, codec.list_head(len(chunks)))
        parts += map(enc, chunks)
    found: dict[str, tuple[int, int]] = {}
    if context is not None:
        parts = _located(parts, _CONTEXT, codec.bytes_value(context), "context", found)
    parts += (_CRTIME, e_crtime, _CTIME, e_ctime)
    if encrypted_name:
        parts += (_DISPLAY, codec.bytes_value(kid.name))
    if extents:
        parts += (_EXTENTS, codec.list_head(len(extents)))
        for lblk, length, pblk, unwritten in extents:
            parts += (_EXTENT_HEAD, enc(lblk), enc(length), enc(pblk), _BOOLS[unwritten])
    parts += (_FLAGS, e_flags, _GENERATION, e_generation, _GID, e_gid)
    if stored_hash is not None:
        parts += (_HASH, codec.list_head(2), enc(stored_hash[0]), enc(stored_hash[1]))
    parts += (_INO, e_ino, _LINKS, e_links, _MODE, e_mode, _MTIME, e_mtime)
    if encrypted_name:
        parts += (_NAME_ENCRYPTED, _TRUE)
    parts = _located(parts, _ORDER, e_order, "order", found)
    parts += (_PROJECT_ID, e_projid, _SIZE, e_size)
    if record_key is not None:
        parts = _located(parts, _SOURCE, codec.bytes_value(record_key), "source", found)
    parts += (_UID, e_uid, _VERSION, e_version, tail)
    return NodeSpan(b"".join(parts), found, located)


def _located(
    parts: list[bytes], key: bytes, value: bytes, name: str, found: dict[str, tuple[int, int]]
) -> list[bytes]:
    """``parts`` with ``key`` and ``value`` appended, joined so far, and where ``value``
    is noted in ``found`` under ``name``: joining at each located value and taking the
    length is cheaper than summing the lengths of the pieces."""
    parts.append(key)
    done = b"".join(parts)
    found[name] = (len(done), len(done) + len(value))
    return [done, value]
