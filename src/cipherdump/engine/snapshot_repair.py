"""Snapshots rewritten without what they lost (``cipherdump repair snapshots``).

As restic's command of that name: a snapshot whose trees use blobs the index does not
have (lost packs, or blobs ``repair packs`` could not salvage) is saved again as a new
snapshot, with the files whose contents lost a chunk removed, and directories whose
own tree is lost or unreadable kept empty; each removal is reported by path.  The old
snapshot stays unless ``forget`` is given.  It depends on a correct index: run
``repair index`` and ``repair packs`` first.

The new snapshot keeps the old one's time plus one nanosecond (so that it is the
``latest`` and the next backup's parent), its host, tags (and ``repaired``) and
attrs, except its directory table (``dirs``): that table names the old trees, and a
backup that reused them would carry the loss into its snapshot.  The next backup
therefore reads every file once, and stores again what of the lost data is still on
its source.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field, replace

from cipherdump.engine.nodeattrs import display_name
from cipherdump.engine.parent import LOCATED_ATTRS
from cipherdump.engine.views.snapshot import SnapshotView
from cipherdump.errors import CipherdumpError
from cipherdump.repo import BlobType, Id, Node, Repository, Snapshot, Tree, pack
from cipherdump.repo.tree import join_nodes, save_directory

REPAIRED_TAG = "repaired"
# The snapshot attrs a repaired snapshot leaves out (see the module's docstring).
_DROPPED_ATTRS = frozenset({"dirs", "dir_census"})


@dataclass
class SnapshotRepair:
    old: Id
    new: Id | None  # None in a dry run
    removed: list[bytes] = field(default_factory=list)  # absolute paths; "/" ends a dir


class _Rewriter:
    def __init__(self, repo: Repository, dry_run: bool) -> None:
        self.repo = repo
        self.dry_run = dry_run
        # tree -> (its replacement, relative paths removed; b"" = the tree itself)
        self.memo: dict[Id, tuple[Id, list[bytes]]] = {}
        self._empty: Id | None = None

    def empty_tree(self) -> Id:
        if self._empty is None:
            data = join_nodes((), LOCATED_ATTRS)
            self._empty = self.repo.save_blob(BlobType.TREE, data, compress=True)
        return self._empty

    def rewrite(self, tree_id: Id, depth: int = 0) -> tuple[Id, list[bytes]]:
        done = self.memo.get(tree_id)
        if done is not None:
            return done
        result = self._rewrite(tree_id, depth)
        self.memo[tree_id] = result
        return result

    def _rewrite(self, tree_id: Id, depth: int) -> tuple[Id, list[bytes]]:
        removed: list[bytes] = []
        try:
            if not self.repo.has_blob(BlobType.TREE, tree_id):
                raise CipherdumpError("not indexed")
            tree = self.repo.load_tree_index(tree_id)
        except CipherdumpError:
            return (tree_id if self.dry_run else self.empty_tree()), [b""]
        if tree.chunked:
            # A large directory in parts: what a lost part held is lost (reported as
            # the directory, whose other entries are kept).
            kept: list[Node] = []
            for part in tree.nodes:
                try:
                    assert part.subtree is not None
                    if not self.repo.has_blob(BlobType.TREE, part.subtree):
                        raise CipherdumpError("not indexed")
                    kept += self.repo.load_tree_index(part.subtree).nodes
                except CipherdumpError:
                    if not removed:
                        removed.append(b"")
            tree = Tree(tuple(kept))
        nodes: list[Node] = []
        for node in tree.nodes:
            name = display_name(node.name, node.attrs)
            if any(not self.repo.has_blob(BlobType.DATA, c) for c in node.content):
                removed.append(name)
                continue
            if node.subtree is not None and depth < 4096:
                new_sub, below = self.rewrite(node.subtree, depth + 1)
                if below:
                    removed += [name + b"/" + rel for rel in below]
                    node = replace(node, subtree=new_sub)
            nodes.append(node)
        if not removed or self.dry_run:
            return tree_id, removed
        tree_id = save_directory(
            ((n.name, n) for n in nodes), LOCATED_ATTRS, self._save, pack.MAX_BLOB_SIZE
        )
        return tree_id, removed

    def _save(self, data: bytes) -> Id:
        return self.repo.save_blob(BlobType.TREE, data, compress=True)


def repair_snapshots(
    repo: Repository, refs: list[str] | None = None, *, dry_run: bool = False, forget: bool = False
) -> list[SnapshotRepair]:
    """Rewrite the snapshots ``refs`` (every readable one if None) that use blobs the
    index lacks; returns one :class:`SnapshotRepair` per such snapshot."""
    if refs:
        snaps = [repo.find_snapshot(ref) for ref in refs]
    else:
        snaps = repo.list_snapshots(damaged=[])
    rewriter = _Rewriter(repo, dry_run)
    out = []
    for snap_id, snap in snaps:
        new_root, removed = rewriter.rewrite(snap.tree)
        if not removed:
            continue
        try:
            top = SnapshotView(repo, snap_id, snap).top_node().path
        except CipherdumpError:
            top = b"/"
        paths = [posixpath.join(top, rel) if rel else top.rstrip(b"/") + b"/" for rel in removed]
        repair = SnapshotRepair(snap_id, None, paths)
        out.append(repair)
        if dry_run:
            continue
        attrs = {k: v for k, v in snap.attrs.items() if k not in _DROPPED_ATTRS}
        attrs["repaired_from"] = snap_id.raw
        tags = snap.tags if REPAIRED_TAG in snap.tags else (*snap.tags, REPAIRED_TAG)
        new = Snapshot(
            tree=new_root,
            time_ns=snap.time_ns + 1,
            hostname=snap.hostname,
            tags=tags,
            parent=snap.parent,
            attrs=attrs,
        )
        repair.new = repo.save_snapshot(new)  # (flushes the new trees first)
        if forget:
            repo.remove_snapshot(snap_id)
    return out
