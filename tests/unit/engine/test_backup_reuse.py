"""Reusing the parent's encoded nodes in a changed directory (incremental backups).

The node an incremental backup reuses as encoded must be byte for byte the node it
would have made: so a backup that finds every directory "changed" but every entry's
record key equal must produce exactly the parent's trees.  The keys themselves
(:class:`RecordKeys`) and the decision to take a directory over
(:meth:`ParentReuse.unchanged_dir`) are tested through their own seams too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from cipherdump.engine.backup import BackupOptions, backup
from cipherdump.engine.backup import frame as frame_module
from cipherdump.engine.backup import nodes as nodes_module
from cipherdump.engine.backup.frame import Same
from cipherdump.engine.backup.reuse import ParentReuse, RecordKeys
from cipherdump.engine.backup.walk import Walk
from cipherdump.engine.chunker import DEFAULT_CHUNK_SIZE
from cipherdump.engine.dirtable import DirRecord
from cipherdump.engine.parent import LOCATED_ATTRS, ParentIndex
from cipherdump.ext4 import Filesystem, open_filesystem
from cipherdump.ondisk.csum import inode_csum_seed
from cipherdump.ondisk.dirent import dirblock_csum_set
from cipherdump.repo import BlobType, KdfParams, MemoryBackend, Repository, codec, dirwriter
from cipherdump.repo import tree as tree_module
from cipherdump.repo.ids import Id
from cipherdump.repo.tree import (
    Node,
    NodeSpan,
    Tree,
    decode_tree,
    encode_tree,
    join_nodes,
    tree_spans,
)
from shared_data import REPO

SAMPLE = REPO / "examples" / "sample.img"


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


def test_tree_spans_rebuild_the_tree() -> None:
    tree = encode_tree(Tree.of(NODES), LOCATED_ATTRS)
    spans = tree_spans(tree)
    assert spans is not None
    assert join_nodes(zip((b"a", b"b", b"c"), spans, strict=True), LOCATED_ATTRS) == tree
    assert spans[1].attr("source") == codec.encode(b"k" * 16)
    assert spans[2].attr("order") == codec.encode(70)
    assert spans[0].attr("order") is None
    patched = spans[2].with_attr("order", codec.encode(1 << 40))
    again = decode_tree(join_nodes([(b"c", patched)], LOCATED_ATTRS))
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
    real_reuse = ParentReuse.reuse_node

    def counting(self: ParentReuse, ino: int, *args: object, **kwargs: object) -> object:
        reused.append(ino)
        return real_reuse(self, ino, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ParentIndex, "dir_record", changed)
    monkeypatch.setattr(ParentReuse, "reuse_node", counting)
    second = backup(repo, fs, BackupOptions())
    s = second.stats
    assert reused, "no node was reused as encoded"
    assert second.snapshot.tree == first.snapshot.tree
    assert (s.files_new, s.files_changed, s.files_removed) == (0, 0, 0)
    assert s.files_unchanged == first.stats.files_new
    assert s.bytes_read == 0 and s.bytes_added == 0
    assert second.policies == first.policies
    assert second.snapshot.attrs["dir_census"] == first.snapshot.attrs["dir_census"]


def test_a_parent_of_version_1_trees_still_spares_reading(
    repo: Repository, fs: Filesystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trees without a layout (written before version 2) cannot lend encoded nodes, but
    their files' chunks are still reused, and the new trees hold the same nodes."""
    with monkeypatch.context() as m:
        m.setattr(nodes_module, "LOCATED_ATTRS", ())
        first = backup(repo, fs, BackupOptions())
    assert tree_spans(repo.load_blob(BlobType.TREE, first.snapshot.tree)) is None
    real = ParentIndex.dir_record

    def changed(self: ParentIndex, ino: int, generation: int) -> DirRecord | None:
        rec = real(self, ino, generation)
        return None if rec is None else dataclasses.replace(rec, key=b"\0" * 16)

    # (An unchanged directory keeps its version-1 tree; a changed one is rebuilt.)
    monkeypatch.setattr(ParentIndex, "dir_record", changed)
    second = backup(repo, fs, BackupOptions())
    s = second.stats
    assert (s.files_new, s.files_changed, s.files_removed) == (0, 0, 0)
    assert s.bytes_read == 0 and s.files_unchanged == first.stats.files_new

    def same(old: Id, new: Id) -> None:
        a, b = repo.load_tree(old), repo.load_tree(new)
        assert encode_tree(Tree(tuple(n for n in a.nodes if n.kind != "dir"))) == encode_tree(
            Tree(tuple(n for n in b.nodes if n.kind != "dir"))
        )
        dirs = [(x, y) for x, y in zip(a.nodes, b.nodes, strict=True) if x.kind == "dir"]
        for x, y in dirs:
            assert x.attrs == y.attrs and x.subtree is not None and y.subtree is not None
            same(x.subtree, y.subtree)

    same(first.snapshot.tree, second.snapshot.tree)
    assert tree_spans(repo.load_blob(BlobType.TREE, second.snapshot.tree)) is not None


@pytest.fixture(params=["small", "large"])
def size(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """ "large": the thresholds lowered so that /public (three entries) is a large
    directory, its tree chunked, its listing packed, and a changed one read a part of
    its parent tree at a time (engine/backup/reuse_parts.py); checked to be so."""
    if request.param == "small":
        yield "small"
        return
    monkeypatch.setattr(tree_module, "CHUNK_FROM", 2)
    monkeypatch.setattr(tree_module, "PART_BITS", 1)
    monkeypatch.setattr(tree_module, "PART_MIN", 1)
    monkeypatch.setattr(tree_module, "PART_MAX", 2)
    monkeypatch.setattr(frame_module, "SPILL_AT", 2)
    monkeypatch.setattr(dirwriter, "RUN_NODES", 3)
    real = ParentIndex.part_spans
    read: list[Id] = []

    def part_spans(self: ParentIndex, part: Id) -> list[NodeSpan] | None:
        read.append(part)
        return real(self, part)

    monkeypatch.setattr(ParentIndex, "part_spans", part_spans)
    yield "large"
    assert read


def test_a_damaged_inode_in_a_changed_directory_is_one_problem_as_without_a_parent(
    repo: Repository, tmp_path: Path, size: str
) -> None:
    """Unchanged entries are not decoded again; an entry whose inode now fails its
    checksum must still be found, and the directory come out as a backup without a
    parent makes it."""
    image = tmp_path / "damaged.img"
    image.write_bytes(SAMPLE.read_bytes())
    with open_filesystem(str(image)) as f:
        first = backup(repo, f, BackupOptions())
        # /public/hello.txt: its directory changes with it, its other entries do not.
        bad = f.inode(14)
        assert bad.is_file and f.sb.metadata_csum
        group, index = divmod(14 - 1, f.sb.s_inodes_per_group)
        at = f.groups[group].bg_inode_table * f.block_size + index * f.sb.inode_size
    with open(image, "r+b") as out:
        out.seek(at + 0x7C)  # i_checksum_lo
        out.write(bytes(b ^ 0xFF for b in out.read(1)))
    problems: list[bytes] = []
    alone: list[bytes] = []
    with open_filesystem(str(image)) as f:
        second = backup(repo, f, BackupOptions(), on_problem=lambda p, e: problems.append(p))
        fresh = backup(
            repo, f, BackupOptions(no_parent=True), on_problem=lambda p, e: alone.append(p)
        )
    assert problems == alone == [b"/public/hello.txt"]
    assert second.snapshot.tree == fresh.snapshot.tree != first.snapshot.tree
    assert second.stats.files_unchanged == first.stats.files_new - 1


@pytest.mark.parametrize(
    ("old", "new", "twice", "reused"),
    [
        # The first entry is reused (in a batch), the second now has its name.
        (b"numbers.csv", b"hello.txt", b"/public/hello.txt", ("reuse_node", 14)),
        # The third could be reused but an entry before it now has its name.
        (b"hello.txt", b"latest", b"/public/latest", ("walk_same", 16)),
    ],
)
def test_a_second_entry_of_a_name_is_one_problem_as_without_a_parent(
    repo: Repository,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    old: bytes,
    new: bytes,
    twice: bytes,
    reused: tuple[str, int],
    size: str,
) -> None:
    """Which of two entries of one name is kept, and which reported, follows the order
    of the entries, whether or not the node of either is reused as encoded."""
    image = tmp_path / "twice.img"
    image.write_bytes(SAMPLE.read_bytes())
    with open_filesystem(str(image)) as f:
        first = backup(repo, f, BackupOptions())
        public = f.inode(13)  # /public: hello.txt, numbers.csv, latest, one block
        (run,) = public.runs
        assert run.pblk is not None and not public.is_indexed_dir
        at = run.pblk * f.block_size
        block = bytearray(f.read_block(run.pblk))
        seed = inode_csum_seed(f.csum_seed, public.ino, public.generation)
    pos = block.index(old)
    assert block[pos - 2] == len(old) and len(new) <= len(old)
    block[pos - 2] = len(new)
    block[pos : pos + len(old)] = new.ljust(len(old), b"\0")
    dirblock_csum_set(block, seed)
    with open(image, "r+b") as out:
        out.seek(at)
        out.write(block)
    problems: list[bytes] = []
    alone: list[bytes] = []
    tried: list[tuple[str, int]] = []
    real_reuse, real_same = ParentReuse.reuse_node, Walk.walk_same

    def reuse_spy(self: ParentReuse, ino: int, *args: object) -> object:
        tried.append(("reuse_node", ino))
        return real_reuse(self, ino, *args)  # type: ignore[arg-type]

    def same_spy(self: Walk, kid: Same, *args: object) -> None:
        tried.append(("walk_same", kid.entry.ino))
        real_same(self, kid, *args)  # type: ignore[arg-type]

    with open_filesystem(str(image)) as f:
        with monkeypatch.context() as m:
            m.setattr(ParentReuse, "reuse_node", reuse_spy)
            m.setattr(Walk, "walk_same", same_spy)
            second = backup(repo, f, BackupOptions(), on_problem=lambda p, e: problems.append(p))
        fresh = backup(
            repo, f, BackupOptions(no_parent=True), on_problem=lambda p, e: alone.append(p)
        )
    assert reused in tried  # the path meant
    assert problems == alone == [twice]
    assert second.snapshot.tree == fresh.snapshot.tree != first.snapshot.tree
    assert second.stats.errors == fresh.stats.errors == 1


def test_record_keys_depend_on_the_bytes_and_the_run(fs: Filesystem) -> None:
    home = fs.inode(18)  # /home/alice
    key, listed, keys, offsets = RecordKeys(fs, 1 << 20).of(home)
    again = RecordKeys(fs, 1 << 20).of(home, listing=False)
    assert (key, list(keys), offsets) == (again.key, list(again.records), again.offsets)
    assert again.listed == []  # (not asked for: a backup without a parent snapshot)
    assert len(keys) == len(listed) == len(set(keys)) == len(home.entries())
    assert [item.entry.name for item in listed] == [e.name for e in home.entries()]
    assert list(offsets) == [e.offset for e in home.entries()]
    assert all(len(k) == 16 for k in keys) and keys[-1] == list(keys)[-1]
    # Another chunk size makes other nodes (their chunk lists): other keys.
    other_key, _, other_keys, _ = RecordKeys(fs, 1 << 21).of(home)
    assert other_key != key and not set(other_keys) & set(keys)


def test_parent_reuse_takes_over_unchanged_directories(repo: Repository, fs: Filesystem) -> None:
    first = backup(repo, fs, BackupOptions(jobs=1))
    index = ParentIndex(repo, first.snapshot)
    walk = Walk(repo, fs, DEFAULT_CHUNK_SIZE, parent_index=index)
    reuse = walk.reuse
    assert reuse is not None
    for rec in index.dirs:
        ino = rec.ino
        directory = fs.inode(ino)
        key = walk.keys.of(directory)[0]
        assert reuse.unchanged_dir(directory, key) == rec
        assert reuse.unchanged_dir(directory, bytes(16)) is None
    cautious = Walk(
        repo, fs, DEFAULT_CHUNK_SIZE, parent_index=index, trust_parent_trees=False
    ).reuse
    assert cautious is not None
    assert all(cautious.unchanged_dir(fs.inode(rec.ino), rec.key) is None for rec in index.dirs)
