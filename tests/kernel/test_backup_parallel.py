"""Backups shared between worker processes (``--jobs``) make the snapshot one process
makes, on a filesystem the running kernel made and changed; a worker's failure stops
the backup with one error and leaves the repository as it was."""

from __future__ import annotations

import gzip
import os
import shutil
import signal
from pathlib import Path

import pytest
from test_backup_kernel import assert_ciphertext_is_on_disk, assert_lists_like_kernel

import kernelfs
from cipherdump.engine.backup import BackupOptions, BackupResult, backup
from cipherdump.engine.backup.nodes import NodeMaker
from cipherdump.engine.backup.walk import Walk
from cipherdump.engine.backup.workers import WorkerDied
from cipherdump.engine.views.snapshot import SnapshotView
from cipherdump.errors import BackendError, CipherdumpError, CorruptError
from cipherdump.ext4 import open_filesystem
from cipherdump.repo import KdfParams, LocalBackend, MemoryBackend, Repository

pytestmark = pytest.mark.kernel

LEAVES = 8
COUNTS = (
    "files_new",
    "files_changed",
    "files_unchanged",
    "files_removed",
    "dirs_new",
    "dirs_changed",
    "dirs_unchanged",
    "dirs_removed",
    "errors",
)


@pytest.fixture
def wide_image(kernel_image_v2: kernelfs.KernelImage, tmp_path: Path) -> Path:
    """The default kernel-made tree plus directories without subdirectories (what
    workers are handed), encrypted and not."""
    image = tmp_path / "wide.img"
    shutil.copyfile(kernel_image_v2.image, image)
    with kernelfs.mounted(image) as mnt:
        kernelfs.add_key(mnt, kernel_image_v2.master_key)
        for top, count in ((mnt / "enc", LEAVES), (mnt / "plain-leaves", 3)):
            top.mkdir(exist_ok=True)
            for i in range(count):
                leaf = top / f"leaf-{i}"
                leaf.mkdir()
                for j, size in enumerate((0, 100, 5000, 70_000)):
                    (leaf / f"f{j}").write_bytes(kernelfs.pattern(size, 100 * i + j))
        os.sync()
    return image


def _repo(tmp_path: Path) -> Repository:
    return Repository.init(
        LocalBackend.create(tmp_path / "repo"), b"pw", kdf=KdfParams.insecure_for_tests()
    )


def _backup(repo: Repository, image: Path, **options: object) -> BackupResult:
    with open_filesystem(str(image)) as fs:
        return backup(repo, fs, BackupOptions(source_name=str(image), **options))  # type: ignore[arg-type]


def _change(image: Path, key: bytes) -> None:
    with kernelfs.mounted(image) as mnt:
        kernelfs.add_key(mnt, key)
        enc = mnt / "enc"
        (enc / "leaf-1" / "f2").write_bytes(kernelfs.pattern(6000, 9))
        os.unlink(enc / "leaf-2" / "f1")
        (enc / "leaf-3" / "new").write_bytes(kernelfs.pattern(3000, 10))
        with open(mnt / "plain-leaves" / "leaf-0" / "f3", "ab") as f:
            f.write(b"appended")
        os.sync()


def test_workers_make_the_snapshot_one_process_makes(
    wide_image: Path, kernel_image_v2: kernelfs.KernelImage, tmp_path: Path
) -> None:
    repo = _repo(tmp_path)
    one = _backup(repo, wide_image, jobs=1, no_parent=True)
    three = _backup(repo, wide_image, jobs=3, no_parent=True, force_reread=True)
    # Trees are content-addressed: equal ids mean equal trees, node for node.
    assert three.snapshot.tree == one.snapshot.tree
    assert three.snapshot.attrs["dirs"] == one.snapshot.attrs["dirs"]
    assert three.snapshot.attrs["policies"] == one.snapshot.attrs["policies"]
    assert [getattr(three.stats, k) for k in COUNTS] == [getattr(one.stats, k) for k in COUNTS]
    assert three.stats.bytes_read == one.stats.bytes_read
    assert three.stats.bytes_added == 0  # every chunk and tree was there already
    view = SnapshotView(repo, three.snapshot_id, three.snapshot)
    kernel = assert_lists_like_kernel(view, wide_image)
    assert_ciphertext_is_on_disk(view, wide_image, kernel)

    # Incremental: both ways from the same parent, after the kernel changed files.
    _change(wide_image, kernel_image_v2.master_key)
    parent = one.snapshot_id.hex
    inc_one = _backup(repo, wide_image, jobs=1, parent=parent)
    inc_three = _backup(repo, wide_image, jobs=3, parent=parent)
    assert inc_three.snapshot.tree == inc_one.snapshot.tree
    assert inc_three.snapshot.attrs["dirs"] == inc_one.snapshot.attrs["dirs"]
    got = {k: getattr(inc_three.stats, k) for k in COUNTS}
    assert got == {k: getattr(inc_one.stats, k) for k in COUNTS}
    assert got["files_new"] == 1 and got["files_removed"] == 1 and got["files_changed"] >= 2
    assert inc_three.stats.bytes_read == inc_one.stats.bytes_read
    view = SnapshotView(repo, inc_three.snapshot_id, inc_three.snapshot)
    assert_lists_like_kernel(view, wide_image)
    report = repo.check(read_data=True)
    assert report.ok, report.text()
    repo.close()


def test_the_same_handle_reads_what_workers_stored(wide_image: Path, tmp_path: Path) -> None:
    """Blobs only workers stored (a first backup) are read through the handle that ran
    the backup, and a second backup in the same process reuses them."""
    repo = _repo(tmp_path)
    first = _backup(repo, wide_image, jobs=3, no_parent=True)
    view = SnapshotView(repo, first.snapshot_id, first.snapshot)
    kernel = assert_lists_like_kernel(view, wide_image)
    assert_ciphertext_is_on_disk(view, wide_image, kernel)
    again = _backup(repo, wide_image, jobs=1, parent=first.snapshot_id.hex)
    assert again.snapshot.tree == first.snapshot.tree
    assert again.stats.bytes_added == 0


def test_problems_found_by_workers_are_reported(
    wide_image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    coordinator_pid = os.getpid()
    make_node = NodeMaker.make_node

    def fail_in_workers(self: NodeMaker, kid, *args):  # type: ignore[no-untyped-def]
        if os.getpid() != coordinator_pid and kid.raw_name == b"f3":
            raise CorruptError("made up for the test", structure="inode", location="inode 1")
        return make_node(self, kid, *args)

    monkeypatch.setattr(NodeMaker, "make_node", fail_in_workers)
    repo = _repo(tmp_path)
    seen: list[tuple[bytes, CipherdumpError]] = []
    with open_filesystem(str(wide_image)) as fs:
        result = backup(
            repo,
            fs,
            BackupOptions(jobs=2),
            on_problem=lambda path, err: seen.append((path, err)),
        )
    assert seen, "the worker got no directory"
    assert result.stats.errors == len(seen)
    for path, err in seen:
        assert path.endswith(b"/f3") and isinstance(err, CorruptError)
        assert "made up for the test" in str(err)
    repo.close()


def test_a_worker_that_cannot_save_stops_the_backup(
    wide_image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    coordinator_pid = os.getpid()
    flush = Repository.flush

    def failing_flush(self: Repository) -> None:
        if os.getpid() != coordinator_pid:
            raise BackendError("no space left on device (made up for the test)")
        flush(self)

    repo = _repo(tmp_path)
    first = _backup(repo, wide_image, jobs=1)
    monkeypatch.setattr(Repository, "flush", failing_flush)
    with pytest.raises(BackendError, match="no space left"):
        _backup(repo, wide_image, jobs=3, force_reread=True, no_parent=True)
    monkeypatch.undo()
    assert [sid for sid, _ in repo.list_snapshots()] == [first.snapshot_id]
    assert repo.check(read_data=True).ok
    again = _backup(repo, wide_image, jobs=3)
    assert again.snapshot.tree == first.snapshot.tree
    repo.close()


@pytest.mark.parametrize("jobs", [2, 3])  # one worker and the main process, or two workers
def test_a_worker_that_dies_stops_the_backup(
    wide_image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jobs: int
) -> None:
    coordinator_pid = os.getpid()

    def die(self: Walk, job: object) -> None:
        if os.getpid() != coordinator_pid:
            os.kill(os.getpid(), signal.SIGKILL)

    monkeypatch.setattr(Walk, "run_job", die)
    repo = _repo(tmp_path)
    # Noticed as its pipe closing, or, if the next job is sent first, as the send failing.
    with pytest.raises(WorkerDied, match=r"ended unexpectedly|is gone"):
        _backup(repo, wide_image, jobs=jobs)
    monkeypatch.undo()
    assert repo.list_snapshots() == []
    assert repo.check(read_data=True).ok
    assert _backup(repo, wide_image, jobs=jobs).stats.errors == 0
    repo.close()


def test_a_repository_in_memory_is_backed_up_in_one_process(wide_image: Path) -> None:
    """Forked workers could not write into the coordinator's memory: jobs is ignored."""
    repo = Repository.init(MemoryBackend(), b"pw", kdf=KdfParams.insecure_for_tests())
    result = _backup(repo, wide_image, jobs=4)
    assert result.stats.errors == 0 and result.stats.dirs_new > LEAVES


def test_workers_reading_a_block_device_make_the_same_snapshot(
    wide_image: Path, tmp_path: Path
) -> None:
    """Devices are read with O_DIRECT through a bounce buffer: each process must read
    into a buffer of its own (a shared one mixed the workers' blocks up)."""
    repo = _repo(tmp_path)
    from_image = _backup(repo, wide_image, jobs=1, no_parent=True)
    with (
        kernelfs.loop_device(wide_image, readonly=True) as device,
        open_filesystem(device) as fs,
    ):
        from_device = backup(repo, fs, BackupOptions(jobs=3, no_parent=True))
    assert from_device.stats.errors == 0
    assert from_device.snapshot.tree == from_image.snapshot.tree
    repo.close()


def test_a_directory_that_cannot_be_opened_is_one_problem_either_way(
    wide_image: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A leaf directory whose own inode cannot be described is reported and left out,
    by a worker as by the one process, and the backup goes on."""
    attrs_of = NodeMaker.attrs_of

    def bad_leaf(self: NodeMaker, kid, order, census):  # type: ignore[no-untyped-def]
        if kid.raw_name == b"leaf-1" and kid.inode.is_dir:
            raise CorruptError("made up for the test", structure="inode", location="inode 2")
        return attrs_of(self, kid, order, census)

    monkeypatch.setattr(NodeMaker, "attrs_of", bad_leaf)
    repo = _repo(tmp_path)
    results = []
    for jobs in (1, 3):
        seen: list[bytes] = []

        def on_problem(path: bytes, err: CipherdumpError, seen: list[bytes] = seen) -> None:
            seen.append(path)

        with open_filesystem(str(wide_image)) as fs:
            options = BackupOptions(jobs=jobs, no_parent=True, force_reread=True)
            results.append(backup(repo, fs, options, on_problem=on_problem))
        # (the encrypted tree's leaf-1 has a ciphertext name, so only this one fails)
        assert seen == [b"/plain-leaves/leaf-1"]
    one, three = results
    assert three.stats.errors == one.stats.errors == 1
    assert three.snapshot.tree == one.snapshot.tree
    repo.close()


def test_warnings_met_by_workers_reach_the_snapshot(tmp_path: Path, shared_testdata: Path) -> None:
    """Damaged htree indexes are warnings met while reading directories; a worker that
    reads one sends it back, so the snapshot keeps it as a one-process backup does."""
    corpus = shared_testdata / "e2fsprogs"
    image = tmp_path / "htree.img"
    image.write_bytes(gzip.decompress((corpus / "f_htree_bad_csum" / "image.gz").read_bytes()))
    results = []
    for jobs in (1, 3):
        with open_filesystem(str(image)) as fs:
            results.append(backup(_repo(tmp_path / f"r{jobs}"), fs, BackupOptions(jobs=jobs)))
    one, many = results
    htree = [w for w in one.warnings if "htree" in w]
    assert len(htree) == 5
    assert sorted(w for w in many.warnings if "htree" in w) == sorted(htree)
    assert many.snapshot.attrs["warnings"] == many.warnings
