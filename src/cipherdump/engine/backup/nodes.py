"""The node maker: one directory entry's inode into a tree node, its data into chunks.

What each node keeps is described in :mod:`cipherdump.engine.nodeattrs`.  A regular
file whose fingerprint is the parent snapshot's keeps the parent's chunk list unread
(unless the run forces a re-read); every other file is read and its chunks stored.
Directories get their node from the walk once their tree is saved.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from cipherdump.engine.backup.readahead import ReadAhead
from cipherdump.engine.backup.tally import Tally
from cipherdump.engine.chunker import iter_chunks
from cipherdump.engine.chunker import stored_length as stored_length_of
from cipherdump.engine.describe import node_record
from cipherdump.engine.filenode import file_context, file_node
from cipherdump.engine.nodeattrs import derived_record, file_fingerprint, fingerprint
from cipherdump.engine.parent import LOCATED_ATTRS, Census, ParentIndex
from cipherdump.engine.policies import PolicyCensus
from cipherdump.engine.views.image import ImageNode, Namespace
from cipherdump.errors import CipherdumpError
from cipherdump.ext4 import Filesystem, Inode, Run
from cipherdump.ext4.inode import InodeType
from cipherdump.ondisk.xattr import EXT4_XATTR_INDEX_ENCRYPTION
from cipherdump.repo import BlobType, Id, Node, Repository, pack
from cipherdump.repo.codec import Value, decode
from cipherdump.repo.dirwriter import DirectoryWriter
from cipherdump.repo.tree import NodeSpan, save_directory

# A file's data: (chunk indices, chunk ids).
ChunkRefs = tuple[tuple[int, ...], tuple[Id, ...]]


class NodeMaker:
    """Makes the nodes of one process's share of a backup, counting in ``tally``.

    ``parent_index`` is the parent snapshot's, or None in a full backup;
    ``reread`` reads every file even where the parent snapshot's chunks would do.
    ``on_progress(path)`` is told of work done (it decides whether to report it).
    """

    def __init__(
        self,
        repo: Repository,
        fs: Filesystem,
        chunk_size: int,
        tally: Tally,
        policy_census: PolicyCensus,
        readahead: ReadAhead,
        on_progress: Callable[[bytes], None],
        parent_index: ParentIndex | None = None,
        *,
        reread: bool = False,
    ) -> None:
        self.repo = repo
        self.fs = fs
        self.ns = Namespace(fs)
        self.chunk_size = chunk_size
        self.tally = tally
        self.policy_census = policy_census
        self.readahead = readahead
        self.on_progress = on_progress
        self.parent_index = parent_index
        self.reread = reread
        # Data of hard-linked files met in this run, so a second link is not read again.
        self.links: dict[int, ChunkRefs] = {}
        # Policy census keys of encoded context attrs, by all but their nonce.
        self._policy_keys: dict[bytes, bytes] = {}

    # -- metadata -------------------------------------------------------------------------
    def attrs_of(self, kid: ImageNode, order: int, census: Census | None) -> dict[str, Value]:
        """Every metadata field of the inode, and the ls record (see nodeattrs); its
        context, if any, is counted in ``census``."""
        ino = kid.inode
        raw = ino.raw
        attrs: dict[str, Value] = {
            "ino": ino.ino,
            "mode": ino.mode,
            "uid": ino.uid,
            "gid": ino.gid,
            "size": ino.size,
            "links": ino.links,
            "flags": ino.flags,
            "generation": ino.generation,
            "project_id": ino.project_id,
            "version": raw.i_version,
            "blocks": ino.blocks_512,
            "atime_ns": ino.atime_ns,
            "mtime_ns": ino.mtime_ns,
            "ctime_ns": ino.ctime_ns,
            "order": order,
        }
        crtime = ino.crtime_ns
        if crtime is not None:
            attrs["crtime_ns"] = crtime
        if kid.name_encrypted:
            attrs["name_encrypted"] = True
            attrs["display"] = kid.name
        if kid.stored_hash is not None:
            attrs["hash"] = list(kid.stored_hash)
        xattrs: list[Value] = []
        for x in ino.xattrs:
            if x.index == EXT4_XATTR_INDEX_ENCRYPTION and x.name == b"c":
                attrs["context"] = x.value
            else:
                xattrs.append([x.index, x.name, x.value])
        if xattrs:
            attrs["xattrs"] = xattrs
        context = attrs.get("context")
        if isinstance(context, bytes) and ino.is_encrypted and census is not None:
            self.policy_census.add(census, context)
        if ino.device is not None:
            attrs["rdev"] = list(ino.device)
        if ino.has_inline_data:
            attrs["inline"] = raw.i_block
        if ino.type is InodeType.SYMLINK:
            attrs["symlink"] = ino.symlink_data()
        extents = [[r.lblk, r.length, r.pblk, r.unwritten] for r in ino.runs if r.pblk is not None]
        if extents:
            attrs["extents"] = extents
        if ino.type is not InodeType.SYMLINK:
            # Only a symlink's record (its target, and the size Linux shows for an
            # encrypted one) can differ from the one derived from the fields above:
            # every other field of node_record is one of them by construction.
            return attrs
        try:
            rec = node_record(self.ns, kid)
        except CipherdumpError as err:
            attrs["ls_error"] = str(err)
        else:
            del rec["path"]
            if "target" in rec:
                attrs["target"] = rec["target"]
            derived = derived_record(ino.type.value, kid.raw_name, attrs)
            if rec != derived or list(rec) != list(derived):
                attrs["ls"] = [[k, v] for k, v in rec.items()]
        return attrs

    def count_context(self, census: Census, encoded: bytes) -> None:
        """Count an encoded ``context`` attr in ``census`` as :meth:`PolicyCensus.add`
        does.  The policy a context decodes to does not depend on its nonce (the last
        16 bytes of every context version), so it is decoded once per policy."""
        key: bytes | str | None = self._policy_keys.get(encoded[:-16])
        if key is None:
            value = decode(encoded, "context attr")
            if not isinstance(value, bytes):
                return
            probe: Census = {}
            self.policy_census.add(probe, value)
            (key,) = probe
            if isinstance(key, bytes):  # decoded: the same for every nonce
                self._policy_keys[encoded[:-16]] = key
        census[key] = census.get(key, 0) + 1

    # -- new, changed or unchanged ----------------------------------------------------------
    def classify_file(self, ino: Inode, fp: Callable[[], bytes]) -> bool:
        """Count a non-directory as new, changed or unchanged; True if unchanged.
        ``fp`` makes its fingerprint (only needed if the parent snapshot has the file)."""
        s = self.tally.stats
        parent = self.parent_index
        before = parent.file(ino.ino, ino.generation) if parent is not None else None
        if before is None:
            if parent is not None:
                if parent.file_generation(ino.ino) is not None:
                    s.files_removed += 1  # the number now belongs to a new inode
                else:  # perhaps the parent's tree that has it is not loaded (yet)
                    self.tally.unmatched[ino.ino] = ino.generation & 0xFFFFFFFF
            s.files_new += 1
            return False
        if before[0] == fp():
            s.files_unchanged += 1
            return True
        s.files_changed += 1
        return False

    def classify_dir(self, ino: Inode, fp: bytes) -> None:
        s = self.tally.stats
        rec = self.parent_index.dirs.get(ino.ino) if self.parent_index is not None else None
        if rec is None:
            s.dirs_new += 1
        elif rec.generation != ino.generation & 0xFFFFFFFF:
            s.dirs_removed += 1
            s.dirs_new += 1
        elif rec.fingerprint == fp:
            s.dirs_unchanged += 1
        else:
            s.dirs_changed += 1

    def known_file(self, ino: Inode) -> bool:
        """Whether the parent snapshot has this very file (its chunks may be reused)."""
        parent = self.parent_index
        return parent is not None and parent.file(ino.ino, ino.generation) is not None

    # -- data ---------------------------------------------------------------------------------
    def file_data(self, kid: ImageNode, unchanged: bool, first: bool) -> ChunkRefs:
        """The chunk indices and ids of a regular file: reused, or read and stored."""
        ino = kid.inode
        if not first and ino.ino in self.links:
            return self.links[ino.ino]
        # Most files are one run from block 0, within one chunk: their one chunk is the
        # run (what iter_chunks finds, without its bookkeeping).
        runs = ino.runs
        whole: Run | None = runs[0] if len(runs) == 1 else None
        bs = self.fs.block_size
        if (
            whole is not None
            and whole.lblk == 0
            and whole.pblk is not None
            and not whole.unwritten
            and whole.length * bs <= self.chunk_size
        ):
            length = whole.length * bs
        else:
            whole = None
            length = stored_length_of(ino)
        stats, tally = self.tally.stats, self.tally
        refs: ChunkRefs | None = None
        parent = self.parent_index
        if unchanged and not self.reread and parent is not None:
            before = parent.file(ino.ino, ino.generation)
            if (
                before is not None
                and parent.chunk_size == self.chunk_size
                and all(self.repo.has_blob(BlobType.DATA, i) for i in before[2])
            ):
                refs = before[1], before[2]
                stats.bytes_reused += length
                tally.bytes_done += length
        if refs is None:
            chunks: list[int] = []
            ids: list[Id] = []
            pieces: Iterable[tuple[int, bytes]] = (
                iter_chunks(
                    ino, self.chunk_size, self.readahead.stream_hint(), self.readahead.stream_ahead
                )
                if whole is None or whole.pblk is None
                else ((0, self.fs.read_block(whole.pblk, whole.length)),)
            )
            for index, data in pieces:
                blob_id, new = self.repo.add_blob(
                    BlobType.DATA, data, compress=not ino.is_encrypted
                )
                chunks.append(index)
                ids.append(blob_id)
                stats.bytes_read += len(data)
                tally.bytes_done += len(data)
                if new:
                    stats.bytes_added += len(data)
                    stats.data_blobs_added += 1
                self.on_progress(kid.path)
            refs = tuple(chunks), tuple(ids)
        if ino.links > 1:
            self.links[ino.ino] = refs
        return refs

    def remember_links(self, ino: int, span: NodeSpan) -> None:
        """Keep the chunks of a hard-linked file whose node was reused as encoded, as
        :meth:`file_data` does for one it reads, so that its other links are not read."""
        node = decode(span.data, "tree node")
        if not isinstance(node, Mapping):
            return
        attrs, content = node.get("attrs"), node.get("content", ())
        chunks = attrs.get("chunks", ()) if isinstance(attrs, Mapping) else ()
        if (
            isinstance(content, tuple)
            and isinstance(chunks, tuple)
            and len(chunks) == len(content)
            and all(isinstance(c, bytes) and len(c) == 32 for c in content)
            and all(isinstance(c, int) for c in chunks)
        ):
            self.links[ino] = (
                tuple(c for c in chunks if isinstance(c, int)),
                tuple(Id(c) for c in content if isinstance(c, bytes)),
            )

    # -- nodes --------------------------------------------------------------------------------
    def make_node(
        self, kid: ImageNode, order: int, census: Census, record_key: bytes | None
    ) -> Node | NodeSpan:
        """A non-directory's node (directories get theirs when their tree is done).

        ``order`` is the entry's position in its directory, ``census`` the directory's
        policy census, ``record_key`` the entry's (see :class:`.reuse.RecordKeys`), if
        known."""
        ino = kid.inode
        plain, context = file_context(ino)
        if plain:
            return self._make_file_node(kid, order, census, record_key, context)
        attrs = self.attrs_of(kid, order, census)
        if record_key is not None:
            attrs["source"] = record_key  # the record key's name on disk
        first = self.tally.first_visit(ino.ino)
        unchanged = self.classify_file(ino, lambda: fingerprint(attrs)) if first else False
        content: tuple[Id, ...] = ()
        if ino.type is InodeType.FILE and not ino.has_inline_data:
            chunks, content = self.file_data(kid, unchanged, first)
            if content:
                attrs["chunk_size"] = self.chunk_size
                attrs["chunks"] = list(chunks)
        self.on_progress(kid.path)
        return Node(kid.raw_name, ino.type.value, content=content, attrs=attrs)

    def _make_file_node(
        self,
        kid: ImageNode,
        order: int,
        census: Census,
        record_key: bytes | None,
        context: bytes | None,
    ) -> NodeSpan:
        """:meth:`make_node` of a regular file of the shape :mod:`.filenode` encodes:
        the same counts and the same node, without an attrs dict."""
        ino = kid.inode
        if context is not None and ino.is_encrypted and census is not None:
            self.policy_census.add(census, context)
        extents = [(r.lblk, r.length, r.pblk, r.unwritten) for r in ino.runs if r.pblk is not None]
        first = self.tally.first_visit(ino.ino)
        unchanged = False
        if first:
            raw = ino.raw

            def fp() -> bytes:
                runs = tuple(extents)
                return file_fingerprint(
                    ino.ino, raw.i_generation, ino.ctime_ns, ino.mtime_ns, raw.i_size, runs
                )

            unchanged = self.classify_file(ino, fp)
        chunks, content = self.file_data(kid, unchanged, first)
        self.on_progress(kid.path)
        return file_node(
            kid,
            order,
            LOCATED_ATTRS,
            context=context,
            extents=extents,
            record_key=record_key,
            chunk_size=self.chunk_size,
            chunks=chunks,
            content=content,
        )

    def save_tree(
        self,
        nodes: Iterable[tuple[bytes, Node | NodeSpan]],
        spilled: DirectoryWriter | None = None,
    ) -> Id:
        """Store a directory's tree (its nodes in any order): one tree blob, or, for a
        large directory, its parts and their index (see
        :func:`~cipherdump.repo.tree.save_directory`); an unchanged part is the blob
        it was, so one added entry does not rewrite a large directory.  ``spilled``:
        the writer (see :meth:`directory_writer`) holding the directory's other nodes,
        which stores the tree instead (the same blobs)."""
        if spilled is not None:
            return spilled.finish(nodes)
        # (Read when called: tests lower the limit.)
        return save_directory(nodes, LOCATED_ATTRS, self._save_tree_blob, pack.MAX_BLOB_SIZE)

    def directory_writer(self) -> DirectoryWriter:
        """Where a large directory's nodes go as they are made, not to be held all at
        once (see :class:`~cipherdump.repo.dirwriter.DirectoryWriter`)."""
        return DirectoryWriter(LOCATED_ATTRS, self._save_tree_blob, pack.MAX_BLOB_SIZE)

    def _save_tree_blob(self, data: bytes) -> Id:
        tree_id, new = self.repo.add_blob(BlobType.TREE, data, compress=True)
        if new:
            stats = self.tally.stats
            stats.bytes_added += len(data)
            stats.tree_blobs_added += 1
        return tree_id
