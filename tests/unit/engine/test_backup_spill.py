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
from cipherdump.repo import KdfParams, MemoryBackend, Repository, dirwriter
from cipherdump.repo import tree as tree_module
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
