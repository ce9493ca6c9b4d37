"""A directory of a million entries made by the kernel (slow tier).

It must back up in parts, restore key-lessly into an image that reads the same, and
take one file more with an incremental backup that writes a few tree blobs, not the
directory again.  ``CIPHERDUMP_HUGE_DIR_ENTRIES`` sets the count (for a quick run).

The backups run as ``cipherdump backup`` processes, each reporting its own peak RSS
(``VmHWM`` at exit: ``ru_maxrss`` would carry this test process's over exec): memory
is bounded by design (issue 19), not by the directory's size.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import kernelfs
from cipherdump.engine.restore_image import restore_to_image
from cipherdump.engine.views.snapshot import SnapshotView
from cipherdump.repo import BlobType, Id, KdfParams, LocalBackend, Repository
from cipherdump.repo.tree import index_parts
from restore_checks import assert_reader_views_equal

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

ENTRIES = int(os.environ.get("CIPHERDUMP_HUGE_DIR_ENTRIES", "1000000"))


# Peak RSS allowed a backup of the directory, full or incremental (issue 19).
MAX_RSS_MIB = 256
# Runs the command line, then prints its peak RSS (KiB) last on stderr.
CHILD = """
import sys
from cipherdump.cli.main import main
try:
    main()
finally:
    hwm = next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM"))
    print("VmHWM", hwm, file=sys.stderr)
"""


def _backup(repo: Path, image: Path) -> tuple[dict[str, Any], float]:
    """A backup by a ``cipherdump`` process: (its JSON summary, its peak RSS in MiB)."""
    env = dict(os.environ, CIPHERDUMP_PASSWORD="pw")
    # One process: the directory would go to one worker whole anyway.
    argv = ["backup", "-r", str(repo), "--json", "--jobs", "1", str(image)]
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *argv], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["errors"] == 0
    hwm_kib = int(done.stderr.strip().splitlines()[-1].split()[1])
    return summary, hwm_kib / 1024


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
    path = tmp_path / "repo"
    Repository.init(LocalBackend.create(path), b"pw", kdf=KdfParams.insecure_for_tests()).close()
    first, first_rss = _backup(path, image)
    assert first["files_new"] == ENTRIES
    repo = Repository.open(LocalBackend(str(path)), b"pw")
    first_id = Id.from_hex(first["snapshot_id"])
    snapshot = repo.load_snapshot(first_id)
    view = SnapshotView(repo, first_id, snapshot)
    node = view.resolve(b"/huge")
    assert node.node.subtree is not None
    parts = index_parts(repo.load_blob(BlobType.TREE, node.node.subtree))
    assert parts is not None and len(parts) >= ENTRIES // 16384

    out = tmp_path / "restored.img"
    restore_to_image(repo, first_id, snapshot, str(out), path=None, size=None)
    assert_reader_views_equal(image, out)
    out.unlink()
    repo.close()

    with kernelfs.mounted(image) as mnt:
        (mnt / "huge" / "one-more").write_bytes(b"added")
        os.sync()
    second, second_rss = _backup(path, image)
    assert second["files_new"] == 1 and second["files_changed"] == 0
    assert second["bytes_read"] == 4096  # the new file's one block
    # The new entry's part (or two), the index and the root: not the directory again.
    assert second["tree_blobs_added"] <= 5
    with Repository.open(LocalBackend(str(path)), b"pw") as repo:
        report = repo.check()
        assert report.ok, report.text()
    print(f"peak RSS: full {first_rss:.0f} MiB, incremental {second_rss:.0f} MiB")
    assert first_rss <= MAX_RSS_MIB
    assert second_rss <= MAX_RSS_MIB
