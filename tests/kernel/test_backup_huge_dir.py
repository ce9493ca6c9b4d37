"""A directory of a million entries made by the kernel (slow tier).

It must back up in parts, restore key-lessly into an image that reads the same, and
take one file more with an incremental backup that writes a few tree blobs, not the
directory again.  ``CIPHERDUMP_HUGE_DIR_ENTRIES`` sets the count (for a quick run).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import kernelfs
from cipherdump.engine.backup import BackupOptions, BackupResult, backup
from cipherdump.engine.restore_image import restore_to_image
from cipherdump.engine.views.snapshot import SnapshotView
from cipherdump.ext4 import open_filesystem
from cipherdump.repo import BlobType, KdfParams, LocalBackend, Repository
from cipherdump.repo.tree import index_parts
from restore_checks import assert_reader_views_equal

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

ENTRIES = int(os.environ.get("CIPHERDUMP_HUGE_DIR_ENTRIES", "1000000"))


def _backup(repo: Repository, image: Path) -> BackupResult:
    with open_filesystem(str(image)) as fs:
        # One process: the directory would go to one worker whole anyway.
        result = backup(repo, fs, BackupOptions(source_name=str(image), jobs=1))
    assert result.stats.errors == 0
    return result


def test_a_directory_of_a_million_entries(tmp_path: Path) -> None:
    image = tmp_path / "huge.img"
    # 256-byte inodes and about 40 bytes of directory a name, with room to spare.
    size_mib = 64 + ENTRIES * 512 // (1 << 20)
    kernelfs.make_image(
        image, size_mib, features=("^has_journal",), extra_mkfs_args=("-N", str(ENTRIES + 1000))
    )
    with kernelfs.mounted(image) as mnt:
        huge = mnt / "huge"
        huge.mkdir()
        fd = os.open(huge, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i in range(ENTRIES):
                os.close(os.open(f"f{i:07d}", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
        finally:
            os.close(fd)
        (huge / "f0000001").write_bytes(b"some data")
        os.sync()
    repo = Repository.init(
        LocalBackend.create(tmp_path / "repo"), b"pw", kdf=KdfParams.insecure_for_tests()
    )
    first = _backup(repo, image)
    assert first.stats.files_new == ENTRIES
    view = SnapshotView(repo, first.snapshot_id, first.snapshot)
    node = view.resolve(b"/huge")
    assert node.node.subtree is not None
    parts = index_parts(repo.load_blob(BlobType.TREE, node.node.subtree))
    assert parts is not None and len(parts) >= ENTRIES // 16384

    out = tmp_path / "restored.img"
    restore_to_image(repo, first.snapshot_id, first.snapshot, str(out), path=None, size=None)
    assert_reader_views_equal(image, out)
    out.unlink()

    with kernelfs.mounted(image) as mnt:
        (mnt / "huge" / "one-more").write_bytes(b"added")
        os.sync()
    second = _backup(repo, image)
    assert second.stats.files_new == 1 and second.stats.files_changed == 0
    assert second.stats.bytes_read == 4096  # the new file's one block
    # The new entry's part (or two), the index and the root: not the directory again.
    assert second.stats.tree_blobs_added <= 5
    report = repo.check()
    assert report.ok, report.text()
    repo.close()
