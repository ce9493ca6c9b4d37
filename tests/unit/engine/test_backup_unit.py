"""Key-less backup into an in-memory repository, on the bundled kernel-made sample image.

The sample (``examples/sample.img``) was written by the Linux kernel: two encrypted home
directories (v1 and v2 policies), hard links, symlinks and plain files.  A snapshot of
it must list exactly as the image lists, keep every stored byte, and a second backup of
the same image must reuse everything without reading data.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from cipherdump.blockio.mounts import find_mounts, parse_mountinfo
from cipherdump.engine.backup import BackupOptions, backup
from cipherdump.engine.chunker import check_chunk_size
from cipherdump.engine.describe import data_unit_size, iter_ciphertext, node_record
from cipherdump.engine.views.image import Namespace, Problem
from cipherdump.engine.views.snapshot import SnapNode, SnapshotView
from cipherdump.ext4 import Filesystem, open_filesystem
from cipherdump.repo import KdfParams, MemoryBackend, Repository
from shared_data import REPO

SAMPLE = REPO / "examples" / "sample.img"


@pytest.fixture
def repo() -> Repository:
    return Repository.init(MemoryBackend(), b"pw", kdf=KdfParams.insecure_for_tests())


@pytest.fixture
def fs() -> Any:
    with open_filesystem(str(SAMPLE)) as f:
        yield f


def image_records(fs: Filesystem, path: bytes = b"/") -> list[dict[str, Any]]:
    ns = Namespace(fs)
    out = []
    for item in ns.walk(ns.resolve(path), recursive=True):
        assert not isinstance(item, Problem), item
        out.append(node_record(ns, item))
    return out


def snapshot_records(view: SnapshotView, path: bytes = b"/") -> list[dict[str, Any]]:
    out = []
    for item in view.walk(view.resolve(path), recursive=True):
        assert not isinstance(item, Problem), item
        out.append(view.record(item))
    return out


def latest_view(repo: Repository) -> SnapshotView:
    snap_id, snap = repo.find_snapshot("latest")
    return SnapshotView(repo, snap_id, snap)


def test_snapshot_lists_exactly_as_the_image(repo: Repository, fs: Filesystem) -> None:
    result = backup(repo, fs, BackupOptions(source_name="sample"))
    assert result.stats.errors == 0
    view = latest_view(repo)
    assert snapshot_records(view) == image_records(fs)
    # No-key paths typed as Linux shows them resolve in the snapshot too.
    for rec in image_records(fs, b"/home"):
        assert view.resolve(rec["path"]).path == rec["path"]


def test_stored_bytes_equal_the_image(repo: Repository, fs: Filesystem) -> None:
    backup(repo, fs, BackupOptions())
    view = latest_view(repo)
    ns = Namespace(fs)
    files = 0
    for item in ns.walk(ns.root_node(), recursive=True):
        assert not isinstance(item, Problem)
        if not item.inode.is_file:
            continue
        files += 1
        du = data_unit_size(item.inode) if item.inode.is_encrypted else 1
        want = b"".join(iter_ciphertext(item.inode, du))
        node = view.resolve(item.path)
        assert view.data_unit_size(node) == (du if item.inode.is_encrypted else fs.block_size)
        assert b"".join(view.iter_stored(node, len(want))) == want, item.path
    assert files >= 8


def test_second_backup_reuses_everything(repo: Repository, fs: Filesystem) -> None:
    first = backup(repo, fs, BackupOptions())
    assert first.stats.files_new > 0 and first.stats.bytes_read > 0
    second = backup(repo, fs, BackupOptions())
    s = second.stats
    assert second.parent_id == first.snapshot_id
    assert (s.files_new, s.files_changed, s.files_removed) == (0, 0, 0)
    assert s.files_unchanged == first.stats.files_new
    assert s.bytes_read == 0 and s.bytes_added == 0 and s.data_blobs_added == 0
    assert s.bytes_reused == first.stats.bytes_read
    assert second.snapshot.tree == first.snapshot.tree  # unchanged trees are shared
    reread = backup(repo, fs, BackupOptions(force_reread=True))
    assert reread.stats.bytes_read == first.stats.bytes_read
    assert reread.stats.bytes_added == 0
    report = repo.check(read_data=True)
    assert report.ok, report.text()


def test_snapshot_keeps_filesystem_facts_and_policies(repo: Repository, fs: Filesystem) -> None:
    result = backup(repo, fs, BackupOptions(source_name="sample"))
    attrs = result.snapshot.attrs
    facts = attrs["fs"]
    assert isinstance(facts, dict)
    assert facts["uuid"] == fs.uuid and facts["block_size"] == 1024
    assert facts["hash_seed"] == fs.sb.s_hash_seed
    assert attrs["source"] == "sample" and attrs["path"] == b"/"
    policies = {p["version"]: p for p in result.policies}
    assert set(policies) == {1, 2}
    for p in policies.values():
        assert p["decryptable"] is True
        assert "1024-byte blocks" in str(p["restore"])


def test_path_backup_keeps_ancestors(repo: Repository, fs: Filesystem) -> None:
    ns = Namespace(fs)
    alice = ns.resolve(b"/home/alice")
    result = backup(repo, fs, BackupOptions(path=b"/home/alice"))
    assert result.snapshot.attrs["path"] == b"/home/alice"
    view = latest_view(repo)
    top: list[SnapNode | Problem] = list(view.walk(view.root_node(), recursive=False))
    assert [n.path for n in top if isinstance(n, SnapNode)] == [b"/home"]
    assert snapshot_records(view, b"/home/alice") == image_records(fs, b"/home/alice")
    home = view.resolve(b"/home")
    assert home.attrs["ino"] == ns.resolve(b"/home").inode.ino
    assert view.resolve(b"/home/alice").attrs["context"] == alice.inode.encryption_context
    # A different path is a different series: no parent from the full backups.
    assert result.parent_id is None


def test_chunk_size_must_keep_data_unit_alignment() -> None:
    assert check_chunk_size(1 << 20) == 1 << 20
    with pytest.raises(ValueError):
        check_chunk_size(1000)


MOUNTINFO = (
    "22 27 0:21 / /proc rw,relatime - proc proc rw\n"
    "98 27 7:3 / /mnt/a\\040b rw,noatime - ext4 /dev/loop3 rw\n"
    "99 27 7:4 / /mnt/ro ro,noatime - ext4 /dev/loop4 ro\n"
    "100 27 8:1 / /data ro - ext4 /dev/sda1 rw\n"
)


def test_mountinfo_parsing() -> None:
    rows = parse_mountinfo(MOUNTINFO)
    assert ("7:3", "/mnt/a b", True) in rows
    assert ("7:4", "/mnt/ro", False) in rows
    # A read-only bind of a superblock that is read-write elsewhere is still read-write.
    assert ("8:1", "/data", True) in rows


def test_loop_backed_image_counts_as_mounted(tmp_path: Path) -> None:
    image = tmp_path / "fs.img"
    image.write_bytes(b"x")
    sys_block = tmp_path / "sys"
    (sys_block / "loop3" / "loop").mkdir(parents=True)
    (sys_block / "loop3" / "loop" / "backing_file").write_text(f"{image}\n")
    (sys_block / "loop3" / "dev").write_text("7:3\n")
    (sys_block / "loop4" / "loop").mkdir(parents=True)
    (sys_block / "loop4" / "loop" / "backing_file").write_text("/elsewhere\n")
    (sys_block / "loop4" / "dev").write_text("7:4\n")
    info = tmp_path / "mountinfo"
    info.write_text(MOUNTINFO)
    mounts = find_mounts(str(image), mountinfo=str(info), sys_block=str(sys_block))
    assert [(m.mount_point, m.read_write, m.via) for m in mounts] == [
        ("/mnt/a b", True, "/dev/loop3")
    ]
    other = tmp_path / "other.img"
    other.write_bytes(b"y")
    assert find_mounts(str(other), mountinfo=str(info), sys_block=str(sys_block)) == []


def test_read_ahead_ranges_are_sorted_and_merged_across_small_gaps() -> None:
    from cipherdump.engine.backup.readahead import merge_ranges

    assert merge_ranges([], 10) == []
    got = merge_ranges([(100, 10), (0, 10), (15, 5), (200, 0), (300, 50), (305, 10)], 10)
    assert got == [(0, 20), (100, 10), (300, 50)]
    assert merge_ranges([(0, 100), (10, 5)], 0) == [(0, 100)]


def test_read_ahead_ranges_for_a_source_of_its_own_keep_the_walk_order() -> None:
    from cipherdump.engine.backup.readahead import merge_in_order

    assert merge_in_order([], 10) == []
    got = merge_in_order([(100, 10), (0, 10), (15, 5), (200, 0), (300, 50), (305, 10)], 10)
    # (15, 5) follows (0, 10) within the gap; (305, 10) lies inside (300, 50).
    assert got == [(100, 10), (0, 20), (300, 50)]
    assert merge_in_order([(50, 10), (40, 5)], 100) == [(50, 10), (40, 5)]  # never backwards


def test_a_block_that_cannot_be_read_is_one_problem(
    repo: Repository, fs: Filesystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bad sector under one file (EIO from the source) is that file's problem, named
    in one line: the backup goes on with everything else."""
    from cipherdump.blockio import source as source_module

    ns = Namespace(fs)
    bad = ns.resolve(b"/public/hello.txt").inode
    run = bad.runs[0]
    assert run.pblk is not None
    bad_offset = run.pblk * fs.block_size
    real = os.pread

    def failing(fd: int, length: int, offset: int) -> bytes:
        if offset == bad_offset:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(fd, length, offset)

    monkeypatch.setattr(source_module.os, "pread", failing)
    problems: list[tuple[bytes, str]] = []
    result = backup(
        repo, fs, BackupOptions(), on_problem=lambda path, err: problems.append((path, str(err)))
    )
    assert problems == [
        (b"/public/hello.txt", f"{SAMPLE}: cannot read at byte {bad_offset}: Input/output error")
    ]
    assert result.stats.errors == 1
    listed = {r["path"] for r in snapshot_records(latest_view(repo))}
    assert b"/public/numbers.csv" in listed and b"/public/hello.txt" not in listed


def test_a_blob_over_the_limit_is_refused_with_a_cipherdump_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from cipherdump.errors import UnsupportedError
    from cipherdump.repo import BlobType, pack

    monkeypatch.setattr(pack, "MAX_BLOB_SIZE", 100)
    with Repository.init(MemoryBackend(), b"pw", kdf=KdfParams.insecure_for_tests()) as repo:
        with pytest.raises(UnsupportedError, match="101 bytes is over the 100 bytes"):
            repo.add_blob(BlobType.TREE, bytes(101))
        assert repo.add_blob(BlobType.TREE, bytes(100))[1]  # at the limit: stored


def test_a_directory_too_large_for_one_tree_is_one_problem(
    repo: Repository, fs: Filesystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tree blob over the limit (a directory of some half a million entries; here
    the limit is lowered for trees of the sample) fails that directory, not the backup:
    it is reported, its node is kept and marked so that a listing says why it is
    empty, everything else is stored, and the next backup does it again."""
    from cipherdump.repo import BlobType, pack

    limit = max(len(t) for t in _tree_sizes(fs)) - 1  # only the largest tree is over
    real_add = pack.PackWriter.add

    def add(self: pack.PackWriter, blob_type: BlobType, blob_id: Any, data: bytes, z: bool) -> None:
        if blob_type is BlobType.TREE and len(data) > limit:
            raise pack.BlobTooLargeError(f"a tree blob of {len(data)} bytes is over {limit}")
        real_add(self, blob_type, blob_id, data, z)

    monkeypatch.setattr(pack.PackWriter, "add", add)
    for _ in range(2):
        problems: list[tuple[bytes, str]] = []
        result = backup(
            repo,
            fs,
            BackupOptions(),
            on_problem=lambda p, e, out=problems: out.append((p, str(e))),
        )
        assert len(problems) == 1 and result.stats.errors == 1
        path, why = problems[0]
        assert "its entries cannot be stored" in why
        view = latest_view(repo)
        listed = list(view.walk(view.root_node(), recursive=True))
        recorded = [i for i in listed if isinstance(i, Problem)]
        assert [(i.path, str(i.error)) for i in recorded] == [(path, why)]
        stored = {view.record(i)["path"] for i in listed if not isinstance(i, Problem)}
        on_disk = {r["path"] for r in image_records(fs)}
        assert path in stored  # the directory itself
        assert {p for p in on_disk if not p.startswith(path + b"/")} <= stored
    assert repo.check(read_data=True).ok


def _tree_sizes(fs: Filesystem) -> list[bytes]:
    """The tree plaintexts of a backup of ``fs``."""
    from cipherdump.repo import BlobType

    repo = Repository.init(MemoryBackend(), b"pw", kdf=KdfParams.insecure_for_tests())
    snap = backup(repo, fs, BackupOptions()).snapshot
    out, todo = [], [snap.tree]
    while todo:
        tree_id = todo.pop()
        out.append(repo.load_blob(BlobType.TREE, tree_id))
        todo += [n.subtree for n in repo.load_tree(tree_id).nodes if n.subtree is not None]
    return out


def test_a_backup_holds_the_lean_index_and_dedups_through_it(fs: Filesystem) -> None:
    """A backup loads the repository's index as a LeanIndex (repo/leanindex.py), and
    every chunk it finds stored there is confirmed by its whole id on disk."""
    from cipherdump.repo.leanindex import LeanIndex

    backend = MemoryBackend()
    with Repository.init(backend, b"pw", kdf=KdfParams.insecure_for_tests()) as first:
        done = backup(first, fs, BackupOptions())
    with Repository.open(backend, b"pw") as repo:
        again = backup(repo, fs, BackupOptions(force_reread=True))
        index = repo._store.index
        assert isinstance(index, LeanIndex)
        assert again.stats.bytes_read == done.stats.bytes_read
        assert again.stats.bytes_added == 0 and again.stats.data_blobs_added == 0
