"""Reuse against the parent snapshot: what of a directory need not be made again.

Three levels, cheapest first (see :mod:`cipherdump.engine.parent` for what the parent
snapshot keeps):

* a directory whose *entries key* is the parent snapshot's keeps its tree unread, and
  only its child directories are walked (:meth:`ParentReuse.reuse_dir`);
* in a changed directory, an entry whose *record key* is unchanged keeps the parent
  snapshot's encoded node, patched only for its position
  (:meth:`ParentReuse.list_with_reuse`, :meth:`ParentReuse.reuse_node`);
* any other file whose fingerprint is unchanged keeps its chunk list unread (the node
  maker's part, :meth:`.nodes.NodeMaker.file_data`).

Keys are computed in every run, parent snapshot or not (:class:`RecordKeys`): the
next run compares with them.
"""

from __future__ import annotations

import posixpath
import struct
from array import array
from collections.abc import Callable, Sequence
from typing import NamedTuple

from cipherdump.engine.backup import frame as frame_module
from cipherdump.engine.backup.frame import (
    Frame,
    Listed,
    PackedKeys,
    PackedListing,
    Same,
)
from cipherdump.engine.backup.nodes import NodeMaker
from cipherdump.engine.backup.reuse_parts import list_by_parts, reusable_key
from cipherdump.engine.dirtable import DirRecord
from cipherdump.engine.nodeattrs import NODE_ATTRS_VERSION, blake2b, int_attr
from cipherdump.engine.parent import ParentIndex
from cipherdump.engine.views.image import ImageNode, Namespace, Problem, bad_entry
from cipherdump.engine.views.paths import child_path
from cipherdump.errors import CipherdumpError
from cipherdump.ext4 import Filesystem, Inode
from cipherdump.ext4.directory import Entry
from cipherdump.ondisk.dirent import dirent_name_problem
from cipherdump.ondisk.inode import (
    EXT4_CASEFOLD_FL,
    EXT4_ENCRYPT_FL,
    EXT4_INDEX_FL,
    EXT4_INLINE_DATA_FL,
    InodePeek,
)
from cipherdump.repo import BlobType, Id, Node, Repository
from cipherdump.repo.codec import encode
from cipherdump.repo.tree import NodeSpan

# Bits of a directory's i_flags that decide how its entries are shown (no-key names).
_NAME_FLAGS = EXT4_ENCRYPT_FL | EXT4_INDEX_FL | EXT4_INLINE_DATA_FL | EXT4_CASEFOLD_FL
# 2: the entries key hashes each entry's record key (see RecordKeys); 3: record keys
# depend on the checksum seed, as unchanged records are no longer checked again.
_KEY_VERSION = 3
_ENTRY = struct.Struct("<IIBB")
_HASH = struct.Struct("<II")
# The encoded ``order`` attrs of the first entries of a directory, to patch reused nodes.
_ORDERS = tuple(encode(i) for i in range(4096))


class RecordKeys:
    """The keys that decide reuse, computed from on-disk bytes alone.

    An entry's *record key* (kept in its node as the attr ``source``) hashes every
    on-disk byte its node is made from: the entry, the child's raw inode, xattr block
    and symlink block, the bits of the directory that decide no-key names, and the
    filesystem facts that change how an inode reads.  Equal record keys mean equal
    nodes, apart from the position (``order``) and a directory's subtree.  A
    directory's *entries key* (everything its tree is made of but child subtrees)
    hashes the directory's facts and every record key in entry order.
    """

    def __init__(self, fs: Filesystem, chunk_size: int) -> None:
        self.fs = fs
        self.chunk_size = chunk_size
        sb = fs.sb
        # What every record key starts from: the facts of this run and filesystem
        # that change how any inode is described.
        self._base = blake2b(
            repr(
                (
                    _KEY_VERSION,
                    NODE_ATTRS_VERSION,
                    chunk_size,
                    fs.block_size,
                    sb.cluster_size,
                    sb.s_hash_seed,
                    sb.s_flags,
                    sb.s_def_hash_version,
                    sb.s_feature_compat,
                    sb.s_feature_incompat,
                    sb.s_feature_ro_compat,
                    sb.s_encoding,
                    sb.s_encoding_flags,
                    # An unchanged record passed its checksum check when its node was
                    # made; with the same seed it passes it again (see of()).
                    fs.csum_seed,
                )
            ).encode(),
            digest_size=16,
        )

    def of(self, directory: Inode, *, listing: bool = True) -> Keys:
        """The entries key, the record key and offset of each entry, and (with
        ``listing``) the entries with their inodes' records (a backup without a
        parent snapshot has no use for them, and a large directory's would be
        hundreds of bytes an entry).

        Inodes are read as records, not decoded: an entry whose record key is the
        parent snapshot's needs nothing more (its record is the very one, checksum and
        all, that was decoded and checked when its node was made).
        """
        fs = self.fs
        # First: a directory read whole keeps its htree root's hash version.
        entries = directory.iter_entries()
        dx = (
            directory.directory.hash_version(fs.sb.s_def_hash_version)
            if directory.is_indexed_dir
            else 0
        )
        flags = directory.flags & _NAME_FLAGS
        facts = (_KEY_VERSION, self.chunk_size, flags, directory.size, dx)
        h = blake2b(repr(facts).encode(), digest_size=16)
        base = self._base.copy()
        base.update(repr((flags, directory.size == fs.block_size, dx)).encode())
        listed: list[Listed] | PackedListing = []
        keys = bytearray()
        offsets = array("q")
        pack_entry, pack_hash, record = _ENTRY.pack, _HASH.pack, fs.inode_record
        for e in entries:
            raw, peek = record(e.ino)
            stored = e.hash or (0, 0)
            k = base.copy()
            k.update(pack_entry(e.ino, len(e.name), e.file_type, e.hash is not None))
            k.update(e.name)
            k.update(pack_hash(*stored))
            k.update(raw)
            if peek.file_acl:
                k.update(fs.read_block(peek.file_acl))
            if peek.is_symlink:
                child = fs.inode(e.ino)
                if not child.is_fast_symlink and not child.has_inline_data:
                    k.update(child.symlink_storage())
            key = k.digest()
            h.update(key)
            keys += key
            offsets.append(e.offset)
            if listing:
                if isinstance(listed, list):
                    listed.append(Listed(e, peek))
                    if len(listed) >= frame_module.SPILL_AT:
                        listed = PackedListing(listed)  # a large directory: packed
                else:
                    listed.append(e, peek)
        return Keys(h.digest(), listed, PackedKeys(bytes(keys)), offsets)


class Keys(NamedTuple):
    """What :meth:`RecordKeys.of` finds of a directory."""

    key: bytes  # the entries key
    listed: Sequence[Listed]  # (if asked for) each entry and a peek at its inode's record
    records: PackedKeys  # each entry's record key
    offsets: array[int]  # each entry's offset in the directory (its ``order``)


class ParentReuse:
    """Reuse of the parent snapshot's trees and nodes by one process of a backup.

    ``encoded`` False (a forced re-read, or an index repaired since the parent
    snapshot) keeps trees and encoded nodes from being taken over unread: only the
    per-file chunk reuse of the node maker is left.
    """

    def __init__(
        self,
        repo: Repository,
        index: ParentIndex,
        maker: NodeMaker,
        on_progress: Callable[[bytes], None],
        *,
        encoded: bool = True,
    ) -> None:
        self.repo = repo
        self.index = index
        self.maker = maker
        self.fs = maker.fs
        self.ns: Namespace = maker.ns
        self.on_progress = on_progress
        self.encoded = encoded

    # -- whole directories ------------------------------------------------------------------
    def unchanged_dir(self, directory: Inode, key: bytes) -> DirRecord | None:
        """The parent snapshot's record of ``directory`` if its entries key is ``key``
        and its tree can be taken over as it is."""
        if not self.encoded:
            return None
        rec = self.index.dir_record(directory.ino, directory.generation)
        # (Its tree must be indexed too: reusing one whose index file was lost would
        # make a snapshot that cannot be read.)
        if rec is not None and rec.key == key and self.repo.has_blob(BlobType.TREE, rec.tree):
            return rec
        return None

    def reuse_dir(self, frame: Frame, rec: DirRecord, listed: Sequence[Listed]) -> None:
        """Take an unchanged directory's entries as they were; list only its child
        directories for the walk."""
        frame.reuse = rec
        frame.census = dict(rec.census)
        directory = frame.node.inode
        bs = self.fs.block_size
        tally = self.maker.tally
        for position, (e, peek) in enumerate(listed):
            if peek.is_dir:
                frame.orders[e.name] = frame.order(position)
                name = self.ns.display_name(directory, e)
                frame.kids.append(
                    ImageNode(
                        posixpath.join(frame.node.path, name),
                        name,
                        e.name,
                        self.fs.inode(e.ino),
                        directory.is_encrypted,
                        e.hash,
                    )
                )
                continue
            frame.files += 1
            if tally.first_visit(e.ino):
                tally.stats.files_unchanged += 1
                if peek.is_file and not peek.has_inline_data:
                    stored = -(-peek.size // bs) * bs  # what stored_length gives, bar oddities
                    tally.stats.bytes_reused += stored
                    tally.bytes_done += stored
        self.on_progress(frame.node.path)

    def tree_of(self, frame: Frame) -> Id:
        """The tree of a reused directory whose entries are all done: the parent
        snapshot's, or that one with the subtrees of changed child directories."""
        assert frame.reuse is not None
        same = len(frame.nodes) == len(frame.kids) and all(
            isinstance(n, Node)
            and (rec := self._dir_record_of(n)) is not None
            and n.subtree == rec.tree
            for n in frame.nodes.values()
        )
        if same:
            return frame.reuse.tree
        # Only subtrees of child directories differ: patch the old tree.  Their nodes
        # keep the old ``order``: the old tree may be of a version that kept positions.
        old = self.repo.load_tree(frame.reuse.tree)
        return self.maker.save_tree(
            (n.name, _patched(n, frame.nodes.get(n.name))) for n in old.nodes
        )

    def _dir_record_of(self, node: Node) -> DirRecord | None:
        return self.index.dirs.get(int_attr(node.attrs, "ino", -1))

    # -- changed directories -------------------------------------------------------------------
    def load_changed_dir(
        self, frame: Frame, listed: Sequence[Listed]
    ) -> list[ImageNode | Problem | Same | None] | None:
        """Find the parent snapshot's nodes of a changed directory: those of unchanged
        entries to reuse as encoded (into ``frame.reusable``), the others indexed for
        the per-file comparison.

        A large directory (one whose parent tree is chunked) is listed at once
        instead, a part of the parent's tree at a time, its reused nodes handed to
        its writer (see :mod:`.reuse_parts`): its entries to walk are returned."""
        index = self.index
        ino = frame.node.inode
        if (
            frame.record_keys
            and self.encoded
            and frame.spillable
            and len(listed) > frame_module.SPILL_AT
        ):
            parts = index.dir_parts(ino.ino)
            if parts is not None:
                if index.dir_record(ino.ino, ino.generation) is None:
                    for _, part in parts:  # another directory under the same number
                        index.index_spans(index.part_spans(part) or ())
                    return None
                return list_by_parts(self, frame, listed, parts)
        spans = None
        if frame.record_keys and self.encoded:
            spans = index.split_dir(ino.ino)
        if spans is None:
            index.load_dir(ino.ino)
            return None
        if index.dir_record(ino.ino, ino.generation) is None:
            index.index_spans(spans)  # another directory under the same number
            return None
        wanted = {
            key for item, key in zip(listed, frame.record_keys, strict=True) if not item.peek.is_dir
        }
        others: list[NodeSpan] = []
        for span in spans:
            key = reusable_key(span)
            if key is not None and key in wanted:
                frame.reusable[key] = span
            else:
                others.append(span)
        index.index_spans(others)
        return None

    def list_with_reuse(
        self, frame: Frame, listed: Sequence[Listed]
    ) -> list[ImageNode | Problem | Same | None]:
        """The entries as :meth:`Namespace.iter_children` lists them, but those with a
        reusable node put in ``frame.nodes`` at once, in one batch, without a display
        name nor a decoded inode (None holds their place in the list: an entry's
        position is its ``order``).

        An entry with the name of an earlier one is left to the walk as :class:`Same`,
        which reports it in its turn, as a directory listed without reuse would.  If
        the inode of another entry cannot be read, the directory is listed as
        :meth:`Namespace.iter_children` lists it (one problem per bad entry) and
        nothing is reused, as in a backup without a parent snapshot."""
        out: list[ImageNode | Problem | Same | None] = []
        node = frame.node
        directory = node.inode
        reusable = frame.reusable
        names: set[bytes] = set()
        batch: list[tuple[int, Entry, InodePeek, NodeSpan]] = []
        for position, ((e, peek), key) in enumerate(zip(listed, frame.record_keys, strict=True)):
            span = reusable.get(key)
            if span is not None and not peek.is_dir:
                if e.name in names:
                    out.append(Same(e, peek, span))
                else:
                    names.add(e.name)
                    batch.append((position, e, peek, span))
                    out.append(None)
                continue
            names.add(e.name)
            bad = dirent_name_problem(e.name, encrypted=directory.is_encrypted)
            if bad is not None:
                # As iter_children: no path can hold such a name.
                out.append(Problem(child_path(node.path, e.name), bad_entry(bad, directory.ino)))
                continue
            try:
                child = self.fs.inode(e.ino)
            except CipherdumpError:
                self.index.index_spans(reusable.values())
                reusable.clear()
                return list(self.ns.iter_children(node))
            name = self.ns.display_name(directory, e)
            path = child_path(node.path, name)
            out.append(ImageNode(path, name, e.name, child, directory.is_encrypted, e.hash))
        # Reused in one go: the walk would spend more on each than the reuse costs.
        reuse, order_of = self.reuse_node, frame.order
        frame.files += len(batch)
        spill = self.maker.directory_writer
        for position, e, peek, span in batch:
            try:
                frame.nodes[e.name] = reuse(e.ino, peek, span, order_of(position), frame)
            except CipherdumpError as err:
                name = self.ns.display_name(directory, e)
                out[position] = Problem(posixpath.join(node.path, name), err)
                continue
            frame.spill_if_large(spill)
        self.on_progress(node.path)
        return out

    def reuse_node(
        self, ino: int, child: InodePeek, span: NodeSpan, order: int, frame: Frame
    ) -> NodeSpan:
        """The parent snapshot's encoded node of an entry whose record key is
        unchanged: the node made now would be byte for byte the same but for its
        ``order`` (its offset in the directory, which may have moved), so only that is
        patched and the counts kept."""
        tally = self.maker.tally
        if tally.first_visit(ino):
            tally.stats.files_unchanged += 1
            if child.is_file and not child.has_inline_data:
                bs = self.fs.block_size
                stored = -(-child.size // bs) * bs  # as in reuse_dir
                tally.stats.bytes_reused += stored
                tally.bytes_done += stored
            if child.links > 1 and child.is_file:
                self.maker.remember_links(ino, span)
        context = span.attr("context")
        if context is not None and child.is_encrypted:
            self.maker.count_context(frame.census, context)
        position = _ORDERS[order] if order < len(_ORDERS) else encode(order)
        if span.attr("order") == position:
            return span
        return span.with_attr("order", position)


def _patched(old: Node, new: Node | NodeSpan | None) -> Node | NodeSpan:
    """``new`` in place of ``old`` in a reused directory's tree, at ``old``'s order."""
    if new is None:
        return old
    order = old.attrs.get("order")
    if not isinstance(new, Node) or order is None or new.attrs.get("order") == order:
        return new
    return Node(new.name, new.kind, new.subtree, new.content, {**new.attrs, "order": order})
