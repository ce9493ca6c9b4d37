"""Which snapshots, and which of their paths, use blobs that cannot be read.

The repository's check knows blobs (ids); users know snapshots and paths.  Given the
blobs a check found missing or damaged, this walks every snapshot's trees once per
tree (trees are shared between snapshots, so each is loaded once) and names, as
``ls`` of the snapshot shows them, the files whose contents use such a blob and the
directories whose own tree is unreadable.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from cipherdump.engine.dirtable import TABLE_ATTRS
from cipherdump.engine.nodeattrs import display_name
from cipherdump.engine.views.snapshot import SnapshotView
from cipherdump.errors import CipherdumpError
from cipherdump.repo import BlobType, Id, Repository

BadBlobs = set[tuple[BlobType, Id]]


@dataclass(frozen=True, slots=True)
class DamagedSnapshot:
    """A snapshot that uses unreadable blobs: the paths that do (absolute, as shown;
    a directory whose tree is unreadable ends with ``/``)."""

    id: Id
    paths: list[bytes]


class _TreeScan:
    def __init__(self, repo: Repository, bad: BadBlobs) -> None:
        self.repo = repo
        self.bad = bad
        # Paths below each tree, relative to it; b"" is the tree itself.
        self.memo: dict[Id, list[bytes]] = {}

    def below(self, tree_id: Id) -> list[bytes]:
        done = self.memo.get(tree_id)
        if done is not None:
            return done
        # Iteratively, deepest first: a directory's result needs its subtrees'.
        stack: list[Id] = [tree_id]
        while stack:
            current = stack[-1]
            if current in self.memo:
                stack.pop()
                continue
            if (BlobType.TREE, current) in self.bad:
                self.memo[current] = [b""]
                stack.pop()
                continue
            try:
                tree = self.repo.load_tree(current)
            except CipherdumpError:
                self.memo[current] = [b""]
                stack.pop()
                continue
            pending = [
                n.subtree
                for n in tree.nodes
                if n.subtree is not None and n.subtree not in self.memo and n.subtree not in stack
            ]
            if pending:
                stack.extend(pending)
                continue
            found: list[bytes] = []
            for node in tree.nodes:
                name = display_name(node.name, node.attrs)
                if any((BlobType.DATA, c) in self.bad for c in node.content):
                    found.append(name)
                if node.subtree is not None:
                    for rel in self.memo.get(node.subtree, ()):  # (absent only in a cycle)
                        found.append(name + b"/" + rel)
            self.memo[current] = found
            stack.pop()
        return self.memo[tree_id]


def damaged_snapshots(repo: Repository, bad: BadBlobs) -> list[DamagedSnapshot]:
    """Every readable snapshot that uses a blob of ``bad``, oldest first."""
    if not bad:
        return []
    scan = _TreeScan(repo, bad)
    out = []
    for snap_id, snapshot in repo.list_snapshots(damaged=[], drop_attrs=TABLE_ATTRS):
        try:
            top = SnapshotView(repo, snap_id, snapshot).top_node().path
        except CipherdumpError:
            top = b"/"
        rels = scan.below(snapshot.tree)
        if rels:
            paths = [posixpath.join(top, rel) if rel else top.rstrip(b"/") + b"/" for rel in rels]
            out.append(DamagedSnapshot(snap_id, paths))
    return out
