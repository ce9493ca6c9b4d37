"""A large directory's nodes go to a DirectoryWriter as they are made (spilled), not
held until the directory closes; the trees stored must be the very blobs a backup
holding them all stores.  The thresholds are lowered so that the sample image's
directories spill, over several runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from test_backup_unit import image_records, latest_view, snapshot_records

from cipherdump.engine.backup import BackupOptions, backup, frame
from cipherdump.engine.parent import DirRecord, ParentIndex
from cipherdump.ext4 import Filesystem, open_filesystem
from cipherdump.ext4.directory import Entry
from cipherdump.ondisk.inode import InodePeek
from cipherdump.repo import Id, KdfParams, MemoryBackend, Repository, dirwriter
from cipherdump.repo import tree as tree_module
from cipherdump.repo.tree import NodeSpan
from shared_data import REPO

SAMPLE = REPO / "examples" / "sample.img"


@pytest.fixture
def repo() -> Iterator[Repository]:
    repository = Repository.init(MemoryBackend(), b"pw", kdf=KdfParams.insecure_for_tests())
    yield repository
    repository.close()


@pytest.fixture
def fs() -> Iterator[Filesystem]:
    with open_filesystem(str(SAMPLE)) as f:
        yield f


def _spill_early(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(frame, "SPILL_AT", 2)
    monkeypatch.setattr(dirwriter, "RUN_NODES", 3)


@pytest.fixture(params=["one tree", "chunked"])
def layout(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "chunked":
        monkeypatch.setattr(tree_module, "CHUNK_FROM", 2)
        monkeypatch.setattr(tree_module, "PART_BITS", 1)
        monkeypatch.setattr(tree_module, "PART_MIN", 1)
        monkeypatch.setattr(tree_module, "PART_MAX", 2)
    return str(request.param)


def test_spilled_directories_store_the_same_tree_blobs(
    repo: Repository, fs: Filesystem, monkeypatch: pytest.MonkeyPatch, layout: str
) -> None:
    held = backup(repo, fs, BackupOptions(jobs=1))
    _spill_early(monkeypatch)
    spilled = backup(repo, fs, BackupOptions(jobs=1, no_parent=True))
    assert spilled.stats.errors == 0
    assert spilled.snapshot.tree == held.snapshot.tree
    assert spilled.stats.tree_blobs_added == 0
    assert spilled.stats.files_new == held.stats.files_new
    assert snapshot_records(latest_view(repo)) == image_records(fs)


def test_changed_directories_spill_their_reused_nodes(
    repo: Repository, fs: Filesystem, monkeypatch: pytest.MonkeyPatch, layout: str
) -> None:
    """Every directory taken as changed: the unchanged entries' encoded nodes, reused
    in one batch, go to the writer too, and make the same trees."""
    first = backup(repo, fs, BackupOptions(jobs=1))
    real = ParentIndex.dir_record

    def changed(self: ParentIndex, ino: int, generation: int) -> DirRecord | None:
        rec = real(self, ino, generation)
        return None if rec is None else dataclasses.replace(rec, key=b"\0" * 16)

    monkeypatch.setattr(ParentIndex, "dir_record", changed)
    _spill_early(monkeypatch)
    second = backup(repo, fs, BackupOptions(jobs=1))
    s = second.stats
    assert second.snapshot.tree == first.snapshot.tree
    assert s.errors == 0 and s.tree_blobs_added == 0
    assert s.bytes_read == 0 and s.files_new == s.files_changed == 0


def test_a_changed_chunked_directory_is_read_a_part_at_a_time(
    repo: Repository, fs: Filesystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A changed large directory (its parent tree chunked) is not split whole: its
    parts are read one at a time, its reused nodes go to its writer, and the trees are
    the very blobs of the first backup."""
    monkeypatch.setattr(tree_module, "CHUNK_FROM", 2)
    monkeypatch.setattr(tree_module, "PART_BITS", 1)
    monkeypatch.setattr(tree_module, "PART_MIN", 1)
    monkeypatch.setattr(tree_module, "PART_MAX", 2)
    first = backup(repo, fs, BackupOptions(jobs=1))
    real_record, real_parts = ParentIndex.dir_record, ParentIndex.part_spans
    split: list[int] = []
    parts: list[int] = []

    def changed(self: ParentIndex, ino: int, generation: int) -> DirRecord | None:
        rec = real_record(self, ino, generation)
        return None if rec is None else dataclasses.replace(rec, key=b"\0" * 16)

    def part_spans(self: ParentIndex, part: Id) -> list[NodeSpan] | None:
        found = real_parts(self, part)
        parts.append(len(found or ()))
        return found

    real_split = ParentIndex.split_dir

    def split_dir(self: ParentIndex, ino: int) -> list[NodeSpan] | None:
        found = real_split(self, ino)
        split.append(len(found or ()))
        return found

    monkeypatch.setattr(ParentIndex, "dir_record", changed)
    monkeypatch.setattr(ParentIndex, "part_spans", part_spans)
    monkeypatch.setattr(ParentIndex, "split_dir", split_dir)
    _spill_early(monkeypatch)
    second = backup(repo, fs, BackupOptions(jobs=1))
    s = second.stats
    assert second.snapshot.tree == first.snapshot.tree
    assert s.errors == 0 and s.tree_blobs_added == 0
    assert s.bytes_read == 0 and s.files_new == s.files_changed == 0
    assert s.files_unchanged == first.stats.files_new
    assert parts and max(parts) <= 2  # a part at a time, PART_MAX nodes at most
    assert all(n <= 2 for n in split)  # only directories too small to be chunked


def test_a_packed_listing_gives_back_its_entries() -> None:
    items = [
        frame.Listed(Entry(b"a", 12, 1, None, 24), InodePeek(0o100644, 0, 5, 1, 0)),
        frame.Listed(Entry(b"", 2**32 - 1, 2, (0xFFFFFFFF, 7), -1), InodePeek(0o40755, 9, 0, 2, 8)),
        frame.Listed(
            Entry(b"\xffname" * 40, 3, 7, (0, 0), 2**40), InodePeek(0o120777, 0, 2**40, 0, 0)
        ),
    ]
    packed = frame.PackedListing(items)
    assert len(packed) == 3
    assert list(packed) == items and packed[-1] == items[-1] and packed[1:] == items[1:]
    assert [packed.name(i) for i in range(3)] == [i.entry.name for i in items]
    assert [i.entry.offset for i in packed] == [24, -1, 2**40]  # offset: not compared
    with pytest.raises(IndexError):
        packed[3]
