"""Reusing the parent's encoded nodes in a changed directory (incremental backups).

The node an incremental backup reuses as encoded must be byte for byte the node it
would have made: so a backup that finds every directory "changed" but every entry's
source key equal must produce exactly the parent's trees.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from cipherdump.engine import backup as backup_mod
from cipherdump.engine.backup import BackupOptions, backup
from cipherdump.engine.parent import DirRecord, ParentIndex
from cipherdump.ext4 import Filesystem, open_filesystem
from cipherdump.repo import KdfParams, MemoryBackend, Repository, codec
from cipherdump.repo.ids import Id
from cipherdump.repo.tree import Node, Tree, decode_tree, encode_tree, join_nodes, split_tree

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample.img"


@pytest.fixture
def repo() -> Repository:
    return Repository.init(MemoryBackend(), b"pw", kdf=KdfParams.insecure_for_tests())


@pytest.fixture
def fs() -> Iterator[Filesystem]:
    with open_filesystem(str(SAMPLE)) as f:
        yield f


NODES = [
    Node(
        b"b",
        "file",
        content=(Id(b"x" * 32),),
        attrs={"ino": 5000, "order": 3, "source": b"k" * 16, "extents": [[0, 1, 2, False]]},
    ),
    Node(b"a", "dir", subtree=Id(b"y" * 32), attrs={"ino": 7, "m": {"z": [1, (2, 3)]}}),
    Node(b"c", "symlink", attrs={"big": b"q" * 300, "order": 70, "display": "é"}),
]


def test_join_nodes_equals_encode_tree() -> None:
    tree = encode_tree(Tree.of(NODES))
    assert join_nodes((n.name, n) for n in NODES) == tree
    assert join_nodes([]) == encode_tree(Tree(()))
    with pytest.raises(ValueError):
        join_nodes([(b"a", NODES[0]), (b"a", NODES[1])])


def test_split_tree_spans_rebuild_the_tree() -> None:
    tree = encode_tree(Tree.of(NODES))
    spans = split_tree(tree, frozenset({b"order", b"source", b"big"}))
    assert [s.name for s in spans] == [b"a", b"b", b"c"]
    assert [s.kind for s in spans] == [b"dir", b"file", b"symlink"]
    assert join_nodes((s.name, s.data) for s in spans) == tree
    assert spans[1].attr(b"source") == codec.encode(b"k" * 16)
    assert spans[2].attr(b"order") == codec.encode(70)
    assert spans[0].attr(b"order") is None
    patched = spans[2].with_attr(b"order", codec.encode(1 << 40))
    again = decode_tree(join_nodes([(b"c", patched)]))
    assert again.nodes[0].attrs["order"] == 1 << 40
    assert again.nodes[0].attrs["big"] == b"q" * 300


def test_every_directory_changed_but_no_entry(
    repo: Repository, fs: Filesystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = backup(repo, fs, BackupOptions())
    real = ParentIndex.dir_record

    def changed(self: ParentIndex, ino: int, generation: int) -> DirRecord | None:
        rec = real(self, ino, generation)
        return None if rec is None else dataclasses.replace(rec, key=b"\0" * 16)

    reused = []
    real_reuse = backup_mod._Backup.reuse_node

    def counting(
        self: backup_mod._Backup, kid: backup_mod._Same, order: int, frame: object
    ) -> bytes:
        reused.append(kid.raw_name)
        return real_reuse(self, kid, order, frame)  # type: ignore[arg-type]

    monkeypatch.setattr(ParentIndex, "dir_record", changed)
    monkeypatch.setattr(backup_mod._Backup, "reuse_node", counting)
    second = backup(repo, fs, BackupOptions())
    s = second.stats
    assert reused, "no node was reused as encoded"
    assert second.snapshot.tree == first.snapshot.tree
    assert (s.files_new, s.files_changed, s.files_removed) == (0, 0, 0)
    assert s.files_unchanged == first.stats.files_new
    assert s.bytes_read == 0 and s.bytes_added == 0
    assert second.policies == first.policies
    assert second.snapshot.attrs["dir_census"] == first.snapshot.attrs["dir_census"]
