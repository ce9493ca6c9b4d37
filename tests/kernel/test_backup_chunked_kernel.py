"""A directory of 10,000 entries made by the kernel, stored in parts (a chunked tree).

With parts of about 256 entries, the snapshot must list as the kernel does, restore
key-lessly into an image that reads the same, and after the kernel adds one file an
incremental backup must write only that file's part, the index and the trees above,
and ``diff`` must name that one file.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from test_backup_kernel import assert_lists_like_kernel

import kernelfs
from cipherdump.engine.backup import BackupOptions, BackupResult, backup
from cipherdump.engine.restore_image import restore_to_image
from cipherdump.engine.views.diff import iter_diff
from cipherdump.engine.views.snapshot import SnapshotView
from cipherdump.ext4 import open_filesystem
from cipherdump.repo import BlobType, KdfParams, LocalBackend, Repository
from cipherdump.repo import tree as tree_module
from cipherdump.repo.tree import index_parts
from restore_checks import assert_reader_views_equal

pytestmark = pytest.mark.kernel


def _backup(repo: Repository, image: Path) -> BackupResult:
    with open_filesystem(str(image)) as fs:
        result = backup(repo, fs, BackupOptions(source_name=str(image), jobs=1))
    assert result.stats.errors == 0
    return result


def test_a_chunked_directory_backs_up_restores_and_diffs(
    kernel_images: Callable[[kernelfs.ImageConfig], kernelfs.KernelImage],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tree_module, "PART_BITS", 8)
    monkeypatch.setattr(tree_module, "PART_MIN", 64)
    ki = kernel_images(kernelfs.NAMED_CONFIGS["4k-v2-pad32-bigdir"])
    image = tmp_path / "big.img"
    shutil.copyfile(ki.image, image)
    repo = Repository.init(
        LocalBackend.create(tmp_path / "repo"), b"pw", kdf=KdfParams.insecure_for_tests()
    )
    first = _backup(repo, image)
    view = SnapshotView(repo, first.snapshot_id, first.snapshot)
    big = view.resolve(b"/enc")
    (big_dir,) = [k for k in view.children(big) if len(view.children(k)) >= 10_000]
    assert big_dir.node.subtree is not None
    parts = index_parts(repo.load_blob(BlobType.TREE, big_dir.node.subtree))
    assert parts is not None and len(parts) >= 20
    assert_lists_like_kernel(view, image)
    report = repo.check(read_data=True)
    assert report.ok, report.text()

    out = tmp_path / "restored.img"
    restore_to_image(repo, first.snapshot_id, first.snapshot, str(out), path=None, size=None)
    assert_reader_views_equal(image, out)

    with kernelfs.mounted(image) as mnt:
        kernelfs.add_key(mnt, ki.master_key)
        (mnt / "enc" / "big-dir" / "one-more").write_bytes(b"added")
        os.sync()
    second = _backup(repo, image)
    # The new entry's part (or two, if a cut moved), the index, big-dir's directory,
    # the encrypted directory and the root: not the whole of big-dir.
    assert second.stats.tree_blobs_added <= 6 < len(parts)
    assert second.stats.files_new == 1 and second.stats.files_changed == 0
    changes = list(iter_diff(view, SnapshotView(repo, second.snapshot_id, second.snapshot)))
    assert [(c[0], c[2]) for c in changes if c[0] != "U"] == [("+", "file")]
    (added,) = [path for change, path, _ in changes if change == "+"]
    assert added.startswith(big_dir.path + b"/")
    assert_lists_like_kernel(SnapshotView(repo, second.snapshot_id, second.snapshot), image)
    repo.close()
