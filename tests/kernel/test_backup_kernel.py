"""Key-less incremental backups of filesystems the running kernel made and changed.

The kernel is the reference: after each backup, the snapshot's listing must equal what
the kernel lists without the key, and every file's stored bytes must equal what
``debugfs cat`` reads off the disk.  Between backups the kernel changes files with the
key (one block of a big file, an append, a delete, an add, a rename); the second backup
must add about what changed, not the whole filesystem.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import kernelfs
from cipherdump.cli.main import cli
from cipherdump.engine.backup import BackupOptions, BackupResult, backup
from cipherdump.engine.chunker import iter_chunks, stored_length
from cipherdump.engine.views.image import Namespace, Problem
from cipherdump.engine.views.snapshot import SnapNode, SnapshotView
from cipherdump.ext4 import Filesystem, open_filesystem
from cipherdump.repo import Id, KdfParams, LocalBackend, Repository

pytestmark = pytest.mark.kernel

MiB = 1 << 20
BIG = 16 * MiB


def _backup(repo: Repository, image: Path) -> BackupResult:
    with open_filesystem(str(image)) as fs:
        result = backup(repo, fs, BackupOptions(source_name=str(image)))
    assert result.stats.errors == 0
    return result


def _view(repo: Repository, snap_id: Id) -> SnapshotView:
    return SnapshotView(repo, snap_id, repo.load_snapshot(snap_id))


def _snapshot_listing(view: SnapshotView) -> dict[bytes, dict[str, Any]]:
    out: dict[bytes, dict[str, Any]] = {}
    for item in view.walk(view.root_node(), recursive=True):
        assert isinstance(item, SnapNode), item
        if item.path == b"/lost+found" or item.path.startswith(b"/lost+found/"):
            continue
        out[item.path[1:]] = view.record(item)
    return out


def _kernel_listing(image: Path) -> dict[bytes, kernelfs.NodeView]:
    with kernelfs.mounted(image, readonly=True) as mnt:
        view = kernelfs.snapshot_view(mnt)
    view.pop(b".")
    return view


def assert_lists_like_kernel(view: SnapshotView, image: Path) -> dict[bytes, kernelfs.NodeView]:
    kernel = _kernel_listing(image)
    ours = _snapshot_listing(view)
    assert set(ours) == set(kernel)
    for path, k in kernel.items():
        rec = ours[path]
        assert rec["inode"] == k.ino, path
        assert rec["mode"] == k.mode & 0o7777, path
        assert (rec["uid"], rec["gid"], rec["links"]) == (k.uid, k.gid, k.nlink), path
        assert rec["mtime_ns"] == k.mtime_ns, path
        assert rec["size"] == k.size, path
        if k.link_target is not None:
            assert rec["target"] == k.link_target, path
    return kernel


def assert_ciphertext_is_on_disk(
    view: SnapshotView, image: Path, kernel: dict[bytes, kernelfs.NodeView]
) -> None:
    """Every regular file's stored bytes, cut to i_size, equal ``debugfs cat`` (which
    reads the raw blocks, ciphertext for encrypted files)."""
    for path, k in kernel.items():
        if k.kind != "reg":
            continue
        node = view.resolve(b"/" + path)
        stored = b"".join(view.iter_stored(node, k.size))
        disk = subprocess.run(
            ["debugfs", "-R", f"cat <{k.ino}>", os.fspath(image)],
            capture_output=True,
            check=True,
            stdin=subprocess.DEVNULL,
        ).stdout
        assert stored == disk, path


def _change_files(image: Path, key: bytes) -> int:
    """Change the encrypted tree through the kernel with the key; returns bytes written."""
    with kernelfs.mounted(image) as mnt:
        kernelfs.add_key(mnt, key)
        enc = mnt / "enc"
        fd = os.open(enc / "big", os.O_WRONLY)
        try:
            os.pwrite(fd, b"\xa5" * 4096, 5 * MiB + 4096)  # one block, in place
        finally:
            os.close(fd)
        with open(enc / "file-0005", "ab") as f:  # 1 MiB + 3 bytes, then an append
            f.write(kernelfs.pattern(5000, 99))
        os.unlink(enc / "file-0002")
        (enc / "a-new-file-made-later").write_bytes(kernelfs.pattern(20000, 7))
        os.rename(enc / "file-0003", enc / "dir1" / "file-0003-renamed")
        # Deep in directories whose own entries do not change: their trees are reused
        # but for the changed subtree.
        with open(enc / "dir1" / "dir2" / "dir3" / "deep.txt", "ab") as f:
            f.write(b"more\n")
        os.sync()
    return 4096 + 5000 + 20000 + 5


@pytest.fixture
def image_with_big_file(kernel_image_v2: kernelfs.KernelImage, tmp_path: Path) -> Path:
    image = tmp_path / "fs.img"
    shutil.copyfile(kernel_image_v2.image, image)
    with kernelfs.mounted(image) as mnt:
        kernelfs.add_key(mnt, kernel_image_v2.master_key)
        (mnt / "enc" / "big").write_bytes(kernelfs.pattern(BIG, 1234))
        os.sync()
    return image


def test_incremental_backup_follows_kernel_changes(
    image_with_big_file: Path, kernel_image_v2: kernelfs.KernelImage, tmp_path: Path
) -> None:
    image = image_with_big_file
    repo = Repository.init(
        LocalBackend.create(tmp_path / "repo"), b"pw", kdf=KdfParams.insecure_for_tests()
    )
    first = _backup(repo, image)
    assert first.stats.bytes_read >= BIG
    view1 = _view(repo, first.snapshot_id)
    kernel1 = assert_lists_like_kernel(view1, image)
    assert_ciphertext_is_on_disk(view1, image, kernel1)

    changed = _change_files(image, kernel_image_v2.master_key)
    second = _backup(repo, image)
    s = second.stats
    assert second.parent_id == first.snapshot_id
    assert s.files_new == 1 and s.files_removed == 1
    assert s.files_changed >= 4  # big, file-0005, deep.txt, the renamed file (its ctime)
    assert s.files_unchanged >= first.stats.files_new - 5
    # One changed block costs one chunk; an append one chunk; the new file one chunk.
    assert s.data_blobs_added <= 4
    data_added = s.bytes_added
    assert data_added <= changed + MiB + 256 * 1024, s
    # Only changed files are read again (wholly: an in-place write keeps the extent map).
    assert s.bytes_read <= BIG + 3 * MiB and s.bytes_reused > 0
    view2 = _view(repo, second.snapshot_id)
    kernel2 = assert_lists_like_kernel(view2, image)
    assert_ciphertext_is_on_disk(view2, image, kernel2)
    # The first snapshot still lists the first state.
    assert set(_snapshot_listing(view1)) == set(kernel1)
    # Nodes reused from the parent (as encoded) are exactly those a fresh backup makes.
    with open_filesystem(str(image)) as fs:
        fresh = backup(repo, fs, BackupOptions(source_name=str(image), no_parent=True))
    assert fresh.snapshot.tree == second.snapshot.tree
    assert fresh.snapshot.attrs["dirs"] == second.snapshot.attrs["dirs"]
    report = repo.check(read_data=True)
    assert report.ok, report.text()
    repo.close()


@pytest.mark.parametrize("kernel_image", ["4k-stable-v2-pad32-lblk64"], indirect=True)
def test_restorability_summary_names_inode_bound_policies(
    kernel_image: kernelfs.KernelImage,
) -> None:
    from cipherdump.repo import MemoryBackend

    repo = Repository.init(MemoryBackend(), b"pw", kdf=KdfParams.insecure_for_tests())
    result = _backup(repo, kernel_image.image)
    (policy,) = result.policies
    assert policy["ties_to_filesystem"] is True
    assert str(kernel_image.uuid) in str(policy["restore"])
    assert "IV_INO_LBLK_64" in str(policy["restore"])
    facts = result.snapshot.attrs["fs"]
    assert isinstance(facts, dict) and facts["uuid"] == kernel_image.uuid.bytes


def test_mounted_read_write_source_is_refused(
    kernel_image_v2: kernelfs.KernelImage, tmp_path: Path
) -> None:
    image = tmp_path / "fs.img"
    shutil.copyfile(kernel_image_v2.image, image)
    repo = tmp_path / "repo"
    env = {
        "CIPHERDUMP_INSECURE_TEST_KDF": "1",
        "CIPHERDUMP_PASSWORD": "pw",
        "CIPHERDUMP_REPOSITORY": str(repo),
    }
    runner = CliRunner()
    assert runner.invoke(cli, ["init"], env=env).exit_code == 0
    with kernelfs.mounted(image) as mnt:
        refused = runner.invoke(cli, ["backup", str(image)], env=env)
        assert refused.exit_code == 3
        assert "mounted read-write" in refused.output and str(mnt) in refused.output
        allowed = runner.invoke(cli, ["backup", "--allow-mounted", str(image)], env=env)
        assert allowed.exit_code == 0, allowed.output
        assert "warning" in allowed.output
    with kernelfs.mounted(image, readonly=True):
        read_only = runner.invoke(cli, ["backup", str(image)], env=env)
        assert read_only.exit_code == 0, read_only.output


@pytest.mark.parametrize("ahead_bytes", [8192, 1 << 20])
def test_big_files_hint_their_next_reads_before_making_them(
    kernel_image_v2: kernelfs.KernelImage, ahead_bytes: int
) -> None:
    """For a source without the kernel's read-ahead: every read of a file but its
    first was hinted before it was made, hints never run more than ``ahead_bytes``
    past the read at hand, and the chunks are those read without hints."""
    with open_filesystem(str(kernel_image_v2.image)) as fs:
        _check_read_ahead_hints(fs, ahead_bytes)


def _check_read_ahead_hints(fs: Filesystem, ahead_bytes: int) -> None:
    # Smaller than a real chunk (iter_chunks takes any multiple of the block size), so
    # that the image's files of a few blocks have several chunks.
    chunk = 2 * fs.block_size
    reads: list[tuple[int, int]] = []
    read_at = fs.source.read_at

    def recording(offset: int, length: int) -> bytes:
        reads.append((offset, length))
        return read_at(offset, length)

    hinted: list[tuple[int, int]] = []
    done_then: list[int] = []  # bytes read when each hint was given

    def ahead(batch: list[tuple[int, int]]) -> None:
        hinted.extend(batch)
        done_then.extend([sum(length for _, length in reads)] * len(batch))

    checked = 0
    ns = Namespace(fs)
    for kid in ns.walk(ns.root_node(), recursive=True):
        assert not isinstance(kid, Problem), kid
        ino = kid.inode
        if not ino.is_file or ino.has_inline_data or stored_length(ino) <= chunk:
            continue
        plain = list(iter_chunks(ino, chunk))
        hinted.clear()
        done_then.clear()
        reads.clear()
        fs.source.read_at = recording  # type: ignore[method-assign]
        try:
            hinted_chunks = list(iter_chunks(ino, chunk, ahead, ahead_bytes))
        finally:
            del fs.source.read_at
        assert hinted_chunks == plain
        assert hinted == reads[1:]  # in the order read
        at = reads[0][1] if reads else 0  # where each hinted read starts, in bytes read
        for (_, length), done in zip(hinted, done_then, strict=True):
            # (from the read about to be made, of at most a chunk, on)
            assert at - done < chunk + ahead_bytes
            at += length
        checked += len(reads) > 3
    assert checked


@pytest.mark.parametrize("kernel_image", ["4k-v2-pad32", "1k-v2-pad32-bigdir"], indirect=True)
def test_a_block_device_backs_up_as_its_image_does(
    kernel_image: kernelfs.KernelImage, tmp_path: Path
) -> None:
    """A device is read around the page cache, with read-ahead of our own (hinted for
    each directory's files and ahead of each big file's chunks, here 64 KiB so that
    files have several): the snapshot must be the image's, byte for byte.  (Workers
    reading a device: ``test_backup_parallel``.)"""
    repo = Repository.init(
        LocalBackend.create(tmp_path / "repo"), b"pw", kdf=KdfParams.insecure_for_tests()
    )
    options = BackupOptions(no_parent=True, chunk_size=64 * 1024)
    with open_filesystem(str(kernel_image.image)) as fs:
        from_image = backup(repo, fs, options)
    with (
        kernelfs.loop_device(kernel_image.image, readonly=True) as device,
        open_filesystem(device) as fs,
    ):
        from_device = backup(repo, fs, options)
    assert from_device.stats.errors == 0
    assert from_device.stats.bytes_read == from_image.stats.bytes_read > 0
    assert from_device.snapshot.tree == from_image.snapshot.tree
    repo.close()


def test_a_bad_sector_on_a_device_is_one_problem(
    kernel_image_v2: kernelfs.KernelImage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read ahead or read at once, a failed read of a device is the problem of the one
    file it was for, named in one line, and the backup goes on."""
    from cipherdump.blockio import direct as direct_module
    from cipherdump.blockio.aio import AioContext

    repo = Repository.init(
        LocalBackend.create(tmp_path / "repo"), b"pw", kdf=KdfParams.insecure_for_tests()
    )
    with (
        kernelfs.loop_device(kernel_image_v2.image, readonly=True) as device,
        open_filesystem(device) as fs,
    ):
        ns = Namespace(fs)
        victim = next(
            kid
            for kid in ns.walk(ns.root_node(), recursive=True)
            if not isinstance(kid, Problem)
            and kid.inode.is_file
            and kid.inode.size > 0
            and not kid.inode.has_inline_data
        )
        run = next(r for r in victim.inode.runs if r.pblk is not None)
        bad = (run.pblk or 0) * fs.block_size
        real_preadv, real_submit = os.preadv, AioContext.submit_read

        def failing_preadv(fd: int, buffers: list[memoryview], offset: int) -> int:
            if offset <= bad < offset + sum(len(b) for b in buffers):
                raise OSError(5, "Input/output error")
            return real_preadv(fd, buffers, offset)

        def failing_submit(
            self: AioContext, fd: int, address: int, n: int, at: int, tag: int
        ) -> None:
            if at <= bad < at + n:
                raise OSError(5, "Input/output error")
            real_submit(self, fd, address, n, at, tag)

        monkeypatch.setattr(direct_module.os, "preadv", failing_preadv)
        monkeypatch.setattr(AioContext, "submit_read", failing_submit)
        problems: list[tuple[bytes, str]] = []
        result = backup(
            repo,
            fs,
            BackupOptions(no_parent=True),
            on_problem=lambda path, err: problems.append((path, str(err))),
        )
    assert [path for path, _ in problems] == [victim.path]
    assert problems[0][1].startswith(f"{device}: cannot read at byte ")
    assert problems[0][1].endswith(": Input/output error")
    assert result.stats.errors == 1 and result.stats.files_new > 1
    repo.close()


def test_a_full_repository_disk_is_one_line_and_harms_nothing(tmp_path: Path) -> None:
    """The repository's disk fills up in the middle of a backup (a real ext4, so packs
    are written with O_DIRECT as on any disk): one line and exit code 6, not an internal
    error nor a problem per file; ``check`` passes; once there is room again, the next
    backup works.  One process leaves no temporary file; workers are stopped as a
    killed backup's are, and the next run removes what they were writing."""
    files = tmp_path / "files"
    files.mkdir()
    for i in range(3):
        (files / f"f{i}").write_bytes(os.urandom(4 * MiB))
    source = kernelfs.make_image(
        tmp_path / "source.img", 32, features=(), extra_mkfs_args=["-d", str(files)]
    )
    disk = kernelfs.make_image(tmp_path / "disk.img", 40, features=())
    env = {"CIPHERDUMP_INSECURE_TEST_KDF": "1", "CIPHERDUMP_PASSWORD": "pw"}

    def run(*args: str) -> Any:
        return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)

    with kernelfs.mounted(disk) as mnt:
        repo = mnt / "repo"
        assert run("init", "-r", str(repo)).exit_code == 0
        ballast = mnt / "ballast"
        for jobs in ("1", "3"):  # in this process, and in workers
            # 3 MiB of room (what a failed run left is in the way of the next)
            ballast.unlink(missing_ok=True)
            ballast.write_bytes(bytes(shutil.disk_usage(mnt).free - 3 * MiB))
            full = run("backup", "-r", str(repo), "--jobs", jobs, str(source))
            assert full.exit_code == 6, full.output
            # (a pack, mostly; the index or a lock file when the disk fills there)
            assert full.stderr.startswith("cipherdump: error: cannot write ")
            assert full.stderr.endswith("No space left on device\n")
            assert full.stderr.count("\n") == 1
            if jobs == "1":
                assert not list(repo.rglob(".tmp-*"))
            assert run("check", "-r", str(repo)).exit_code == 0
        ballast.unlink()
        again = run("backup", "-r", str(repo), "--json", str(source))
        assert again.exit_code == 0, again.output
        assert not list(repo.rglob(".tmp-*"))
        assert run("check", "-r", str(repo), "--read-data").exit_code == 0
        listed = run("ls", "-r", str(repo), "latest", "/")
        assert {"f0", "f1", "f2"} <= set(listed.output.split())
