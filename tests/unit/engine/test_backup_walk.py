"""The walk, through :class:`Walk`: a directory tree into the trees a backup saves, in
the coordinator and, for one handed-out directory, as a worker does it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cipherdump.engine.backup import BackupOptions, backup
from cipherdump.engine.backup import walk as walk_module
from cipherdump.engine.backup.walk import Walk
from cipherdump.engine.backup.workers import DirJob
from cipherdump.engine.chunker import DEFAULT_CHUNK_SIZE
from cipherdump.engine.views.image import Namespace
from cipherdump.errors import CipherdumpError
from cipherdump.ext4 import Filesystem, open_filesystem
from cipherdump.progress import Progress
from cipherdump.repo import KdfParams, MemoryBackend, Repository
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


def test_the_walk_makes_the_snapshots_tree(repo: Repository, fs: Filesystem) -> None:
    events: list[Progress] = []
    walk = Walk(repo, fs, DEFAULT_CHUNK_SIZE, on_progress=events.append)
    tree, attrs = walk.run(Namespace(fs).resolve(b"/"))
    snapshot = backup(repo, fs, BackupOptions(jobs=1, no_parent=True)).snapshot
    assert tree == snapshot.tree
    top = snapshot.attrs["top"]
    assert isinstance(top, dict) and attrs == top["attrs"]
    tally = walk.tally
    assert tally.stats.errors == 0 and tally.stats.dirs_new == len(tally.dir_records)
    assert sorted(tally.seen_dirs) == sorted(r.ino for r in tally.dir_records)
    assert tally.census and tally.inodes_done > 0
    # (A walk reports work done; the run reports its start and end.)
    assert [e.inodes_done for e in events] == sorted(e.inodes_done for e in events)


def test_the_walk_lets_go_of_each_directorys_listing(repo: Repository, fs: Filesystem) -> None:
    """The filesystem keeps thousands of recent inode views; a directory's listing kept
    with each took 200 MB more for a million files in directories of 3,000."""
    walk = Walk(repo, fs, DEFAULT_CHUNK_SIZE)
    walk.run(Namespace(fs).resolve(b"/"))
    dirs = [fs.inode(r.ino) for r in walk.tally.dir_records]
    assert len(dirs) > 3 and not any(d.entries_loaded for d in dirs)


def test_a_worker_backs_up_a_directory_as_the_coordinator_would(
    repo: Repository, fs: Filesystem
) -> None:
    whole = Walk(repo, fs, DEFAULT_CHUNK_SIZE)
    whole.run(Namespace(fs).resolve(b"/"))
    public = next(r for r in whole.tally.dir_records if r.ino == 13)

    worker = Walk(repo, fs, DEFAULT_CHUNK_SIZE)
    problems: list[tuple[bytes, CipherdumpError]] = []
    reports: list[Progress] = []
    worker.start_worker(reports.append, lambda path, err: problems.append((path, err)))
    job = DirJob(1, b"/public", b"public", b"public", 13, False, None, 2, 1, True, (2,))
    done = worker.run_job(job)
    end = worker.end_worker()
    assert done.tree == public.tree.raw and done.errors == 0 and problems == []
    assert list(done.records) == [public] and len(end.tally.dir_records) == 0
    assert end.tally.stats.files_new == 3 and end.tally.stats.dirs_new == 1
    assert reports and reports[-1].inodes_done == end.tally.inodes_done == 4


def test_entries_listed_in_batches_make_the_same_trees(
    repo: Repository, fs: Filesystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory is listed (its inodes decoded) a batch at a time; the batch size
    changes nothing stored.  Batches of one and two entries, against all at once."""
    trees = []
    for batch in (1 << 20, 1, 2):
        monkeypatch.setattr(walk_module, "BATCH", batch)
        walk = Walk(repo, fs, DEFAULT_CHUNK_SIZE)
        trees.append(walk.run(Namespace(fs).resolve(b"/")))
        assert walk.tally.stats.errors == 0
    assert trees[0] == trees[1] == trees[2]
