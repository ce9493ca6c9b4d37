"""The parent snapshot of an incremental backup, read only as far as needed.

Two levels, so that an unchanged directory costs neither decoding nor encoding a tree:

* The **directory table**, kept in every snapshot (attr ``dirs``): per directory its
  inode number and generation, the fingerprint of its own inode, the number of
  non-directory entries, the tree it was saved as, and its *entries key*: a hash over
  everything its tree is made of except the subtrees of its child directories (the
  raw entries, every child's whole raw inode, xattr block and symlink block, the bits
  of the directory that decide no-key names).  An equal key means an equal tree,
  up to the subtrees of child directories.
* **Trees of changed directories**, split into encoded nodes by their layout (see
  :func:`~cipherdump.repo.tree.tree_spans`) when the walk reaches them.  A node whose
  ``source`` attr (the hash of the entry and of every on-disk byte
  its node is made from, see :mod:`cipherdump.engine.nodeattrs`) equals the one
  computed now is reused as encoded, without decoding it or describing the inode
  again.  The other nodes are decoded and indexed by inode number: a file whose
  fingerprint (number, generation, ctime, mtime, size, extent map) is unchanged reuses
  its chunk list without being read.
"""

from __future__ import annotations

import struct
from collections.abc import Container, Iterable, Mapping

from cipherdump.engine.chunker import DEFAULT_CHUNK_SIZE
from cipherdump.engine.dirtable import DirRecord, DirTable
from cipherdump.engine.nodeattrs import fingerprint, int_attr, pack_refs, unpack_refs
from cipherdump.errors import CipherdumpError
from cipherdump.repo import BlobType, Id, Repository, Snapshot
from cipherdump.repo.codec import Value, decode, expect_map
from cipherdump.repo.tree import NodeSpan, index_entries, index_parts, tree_spans

_GEN = struct.Struct("<I")

Census = dict[bytes | str, int]
# The attrs every tree's layout locates: what an incremental backup needs of a parent
# node it may reuse as encoded.
LOCATED_ATTRS = ("context", "order", "source")


class ParentIndex:
    """What the backup asks of the parent snapshot."""

    def __init__(self, repo: Repository, snapshot: Snapshot) -> None:
        self._repo = repo
        attrs = snapshot.attrs
        self.chunk_size = int_attr(attrs, "chunk_size", DEFAULT_CHUNK_SIZE)
        self.dirs = DirTable.decode(attrs)
        self._by_ino: dict[int, bytes] = {}
        self._loaded: set[Id] = set()
        # Files of trees other processes loaded (see merge_loaded): number -> generation.
        self._loaded_elsewhere: dict[int, int] = {}

    def dir_record(self, ino: int, generation: int) -> DirRecord | None:
        rec = self.dirs.get(ino)
        if rec is None or rec.generation != generation & 0xFFFFFFFF:
            return None
        return rec

    def load_dir(self, ino: int) -> None:
        """Index the nodes of the parent's tree of directory ``ino`` (once)."""
        rec = self.dirs.get(ino)
        if rec is None or rec.tree in self._loaded:
            return
        self._loaded.add(rec.tree)
        try:
            nodes = self._repo.load_tree(rec.tree).nodes
        except CipherdumpError:
            return  # lost or damaged (check says which): its files are read as new
        for node in nodes:
            if node.kind != "dir":
                self._index_file(node.attrs, node.content)

    def split_dir(self, ino: int) -> list[NodeSpan] | None:
        """The parent's tree of directory ``ino`` as encoded nodes, each with its
        ``source``, ``context`` and ``order`` attrs located (see :func:`tree_spans`);
        None if there is no such tree, it was already loaded, or it has no layout (a
        version-1 tree: :meth:`load_dir` it instead).

        Nothing is indexed: the caller reuses the nodes of unchanged entries as they
        are and hands the others to :meth:`index_spans`.
        """
        rec = self.dirs.get(ino)
        if rec is None or rec.tree in self._loaded:
            return None
        try:
            spans = self._spans(rec.tree)
        except CipherdumpError:
            return None
        if spans is None or any(s.located != LOCATED_ATTRS for s in spans[:1]):
            return None
        self._loaded.add(rec.tree)
        return spans

    def dir_parts(self, ino: int) -> tuple[tuple[bytes, Id], ...] | None:
        """(first name, part id) of each part of the parent's tree of directory
        ``ino`` if it is chunked (a large directory), marking it loaded; None if there
        is no such tree, it was already loaded, or it is not chunked.

        Its parts are then read one at a time (:meth:`part_spans`): a large directory's
        encoded nodes are not held all at once.  Nothing is indexed: the caller hands
        the nodes it does not reuse to :meth:`index_spans`.
        """
        rec = self.dirs.get(ino)
        if rec is None or rec.tree in self._loaded:
            return None
        try:
            parts = index_entries(self._repo.load_blob(BlobType.TREE, rec.tree), f"tree {rec.tree}")
        except CipherdumpError:
            return None
        if parts is not None:
            self._loaded.add(rec.tree)
        return parts

    def part_spans(self, part: Id) -> list[NodeSpan] | None:
        """The encoded nodes of one part (see :meth:`dir_parts`), with the attrs
        :data:`LOCATED_ATTRS` located; None if it cannot be read or has no such
        layout (its files are then read as new)."""
        try:
            found = tree_spans(self._repo.load_blob(BlobType.TREE, part))
        except CipherdumpError:
            return None
        if found is None or any(s.located != LOCATED_ATTRS for s in found[:1]):
            return None
        return found

    def _spans(self, tree: Id) -> list[NodeSpan] | None:
        """The encoded nodes of a tree with a layout, or of every part of a chunked
        one (all of them with a layout); None otherwise."""
        data = self._repo.load_blob(BlobType.TREE, tree)
        parts = index_parts(data, f"tree {tree}")
        if parts is None:
            return tree_spans(data)
        spans: list[NodeSpan] = []
        for part in parts:
            found = tree_spans(self._repo.load_blob(BlobType.TREE, part))
            if found is None or any(s.located != LOCATED_ATTRS for s in found[:1]):
                return None
            spans += found
        return spans

    def index_spans(self, spans: Iterable[NodeSpan]) -> None:
        """Index the files among ``spans`` as :meth:`load_dir` indexes a whole tree."""
        for span in spans:
            try:
                node = expect_map(decode(span.data, "tree node"), "tree node")
            except CipherdumpError:
                continue
            if node.get("kind") == "dir":
                continue
            attrs = node.get("attrs")
            content = node.get("content", ())
            if not isinstance(attrs, Mapping) or not isinstance(content, tuple):
                continue
            ids = tuple(Id(c) for c in content if isinstance(c, bytes) and len(c) == 32)
            if len(ids) == len(content):
                self._index_file(attrs, ids)

    def _index_file(self, attrs: Mapping[str, Value], content: tuple[Id, ...]) -> None:
        ino_ = int_attr(attrs, "ino", -1)
        if ino_ < 0 or ino_ in self._by_ino:
            return
        chunks = attrs.get("chunks", ())
        refs = b""
        if (
            content
            and isinstance(chunks, tuple)
            and len(chunks) == len(content)
            and all(isinstance(c, int) for c in chunks)
        ):
            refs = pack_refs([c for c in chunks if isinstance(c, int)], content)
        gen = _GEN.pack(int_attr(attrs, "generation") & 0xFFFFFFFF)
        self._by_ino[ino_] = gen + fingerprint(attrs) + refs

    def file(
        self, ino: int, generation: int
    ) -> tuple[bytes, tuple[int, ...], tuple[Id, ...]] | None:
        """(fingerprint, chunk indices, chunk ids) of a file of a loaded tree."""
        value = self._by_ino.get(ino)
        if value is None or _GEN.unpack_from(value)[0] != generation & 0xFFFFFFFF:
            return None
        chunks, content = unpack_refs(value[20:])
        return value[4:20], chunks, content

    def file_generation(self, ino: int) -> int | None:
        value = self._by_ino.get(ino)
        return None if value is None else int(_GEN.unpack_from(value)[0])

    def loaded_files(self) -> dict[int, int]:
        """Inode number -> generation of the files of every tree loaded so far."""
        return {ino: int(_GEN.unpack_from(v)[0]) for ino, v in self._by_ino.items()}

    def merge_loaded(self, files: Mapping[int, int]) -> None:
        """Count files another process loaded (see :meth:`loaded_files`) in
        :meth:`removed`; they are not looked up here."""
        self._loaded_elsewhere.update(files)

    def removed(
        self,
        seen: Container[int],
        seen_dirs: Container[int],
        unmatched: Mapping[int, int] | None = None,
    ) -> tuple[int, int]:
        """(files, dirs) of the parent not seen in this run.

        Directories are counted from the table; the files of a directory that is gone
        by the table's count; other files from the trees this run loaded.  A file moved
        out of a directory that is gone counts as removed, and a moved one found
        elsewhere before its old directory was loaded as new.
        """

        dirs = files = 0
        for ino, dir_files in self.dirs.files_by_ino():
            if ino not in seen_dirs:
                dirs += 1
                files += dir_files
        loaded = dict(self._loaded_elsewhere)
        loaded.update(self.loaded_files())
        for ino in loaded:
            if ino not in seen:
                files += 1
        # New files whose number the parent's file had, found before its tree was
        # loaded (or by another process): that file is gone.
        for ino, generation in (unmatched or {}).items():
            before = loaded.get(ino)
            if before is not None and before != generation:
                files += 1
        return files, dirs
