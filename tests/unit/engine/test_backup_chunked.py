"""Backups of directories stored in parts (chunked trees), on the sample image with
the part sizes lowered so that every directory of more than two entries is chunked.

A snapshot must list as the image does, check clean, and an incremental backup must
reuse as much as with one tree per directory: whole directories by their entries
key, encoded nodes of unchanged entries through the parts of a changed directory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from test_backup_unit import image_records, latest_view, snapshot_records

from cipherdump.engine.backup import BackupOptions, backup
from cipherdump.engine.backup.reuse import ParentReuse
from cipherdump.engine.dirtable import DirRecord
from cipherdump.engine.parent import ParentIndex
from cipherdump.engine.snapshot_repair import repair_snapshots
from cipherdump.engine.views.diff import iter_diff
from cipherdump.engine.views.snapshot import SnapshotView
from cipherdump.ext4 import Filesystem, open_filesystem
from cipherdump.repo import BlobType, Id, KdfParams, MemoryBackend, Repository
from cipherdump.repo import tree as tree_module
from cipherdump.repo.tree import index_parts
from shared_data import REPO

SAMPLE = REPO / "examples" / "sample.img"


@pytest.fixture(autouse=True)
def _small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tree_module, "CHUNK_FROM", 2)
    monkeypatch.setattr(tree_module, "PART_BITS", 1)
    monkeypatch.setattr(tree_module, "PART_MIN", 1)
    monkeypatch.setattr(tree_module, "PART_MAX", 2)


@pytest.fixture
def repo() -> Iterator[Repository]:
    repository = Repository.init(MemoryBackend(), b"pw", kdf=KdfParams.insecure_for_tests())
    yield repository
    repository.close()


@pytest.fixture
def fs() -> Iterator[Filesystem]:
    with open_filesystem(str(SAMPLE)) as f:
        yield f


def _chunked(repo: Repository) -> int:
    """How many directories of the latest snapshot are stored in parts."""
    view = latest_view(repo)
    count = 0
    for item in view.walk(view.root_node(), recursive=True):
        subtree = getattr(getattr(item, "node", None), "subtree", None)
        if subtree is not None:
            count += index_parts(repo.load_blob(BlobType.TREE, subtree)) is not None
    return count


def test_a_chunked_snapshot_lists_as_the_image(repo: Repository, fs: Filesystem) -> None:
    result = backup(repo, fs, BackupOptions(jobs=1))
    assert result.stats.errors == 0
    assert index_parts(repo.load_blob(BlobType.TREE, result.snapshot.tree)) is not None
    assert _chunked(repo) >= 3
    assert snapshot_records(latest_view(repo)) == image_records(fs)
    report = repo.check(read_data=True)
    assert report.ok, report.text()


def test_an_unchanged_chunked_filesystem_is_reused_whole(repo: Repository, fs: Filesystem) -> None:
    first = backup(repo, fs, BackupOptions(jobs=1))
    second = backup(repo, fs, BackupOptions(jobs=1))
    s = second.stats
    assert second.snapshot.tree == first.snapshot.tree
    assert s.files_unchanged == first.stats.files_new and s.bytes_read == 0
    assert s.tree_blobs_added == 0
    views = [SnapshotView(repo, r.snapshot_id, r.snapshot) for r in (first, second)]
    assert list(iter_diff(*views)) == []


def test_changed_chunked_directories_reuse_their_entries(
    repo: Repository, fs: Filesystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every directory taken as changed: each entry's node is found through the parts
    of its directory's parent tree and reused as encoded, making the same trees."""
    first = backup(repo, fs, BackupOptions(jobs=1))
    real = ParentIndex.dir_record

    def changed(self: ParentIndex, ino: int, generation: int) -> DirRecord | None:
        rec = real(self, ino, generation)
        return None if rec is None else dataclasses.replace(rec, key=b"\0" * 16)

    reused: list[int] = []
    real_reuse = ParentReuse.reuse_node

    def counting(self: ParentReuse, ino: int, *args: object) -> object:
        reused.append(ino)
        return real_reuse(self, ino, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(ParentIndex, "dir_record", changed)
    monkeypatch.setattr(ParentReuse, "reuse_node", counting)
    second = backup(repo, fs, BackupOptions(jobs=1))
    s = second.stats
    assert len(reused) >= first.stats.files_new - 1  # (a hard link's second entry too)
    assert second.snapshot.tree == first.snapshot.tree
    assert s.bytes_read == 0 and s.files_new == s.files_changed == 0


def _hiding(monkeypatch: pytest.MonkeyPatch, hidden: set[Id]) -> None:
    """The repository as if the blobs ``hidden`` were lost (not indexed)."""
    real = Repository.has_blob

    def has_blob(self: Repository, blob_type: BlobType, blob_id: Id) -> bool:
        return blob_id not in hidden and real(self, blob_type, blob_id)

    monkeypatch.setattr(Repository, "has_blob", has_blob)


def test_repairing_a_chunked_directory_keeps_it_chunked(
    repo: Repository, fs: Filesystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lost data blob: its file leaves the snapshot, its directory is rewritten in
    parts; a lost part: its entries leave, the directory's others stay."""
    first = backup(repo, fs, BackupOptions(jobs=1))
    view = SnapshotView(repo, first.snapshot_id, first.snapshot)
    readme = view.resolve(b"/README.txt")
    (blob,) = readme.node.content
    with monkeypatch.context() as m:
        _hiding(m, {blob})
        (repair,) = repair_snapshots(repo)
    assert repair.removed == [b"/README.txt"] and repair.new is not None
    new = repo.load_snapshot(repair.new)
    assert index_parts(repo.load_blob(BlobType.TREE, new.tree)) is not None
    after = SnapshotView(repo, repair.new, new)
    names = [k.raw_name for k in after.children(after.root_node())]
    assert b"README.txt" not in names and b"public" in names and b"home" in names

    parts = index_parts(repo.load_blob(BlobType.TREE, first.snapshot.tree))
    assert parts is not None
    lost = {n.name for n in repo.load_tree_index(parts[0]).nodes}
    with monkeypatch.context() as m:
        _hiding(m, {parts[0]})
        (repair,) = repair_snapshots(repo, [first.snapshot_id.hex])
    assert repair.removed == [b"/"] and repair.new is not None
    again = SnapshotView(repo, repair.new, repo.load_snapshot(repair.new))
    names = [k.raw_name for k in again.children(again.root_node())]
    assert names and not lost & set(names)
