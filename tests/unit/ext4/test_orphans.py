"""Orphan inodes read as the kernel's mount leaves them (deleted, or truncated to
i_size), on small mkfs-made images with the orphan list edited by hand.  Kernel-made
orphans and e2fsck's own lists are in test_journal_kernel.py and the corpus tests."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from cipherdump.blockio import MemorySource
from cipherdump.ext4 import Filesystem
from cipherdump.ext4.orphans import clip_runs
from cipherdump.ext4.volume import Run
from shared_data import SHARED_TESTDATA

MKFS = shutil.which("mkfs.ext4")


@pytest.fixture
def image(tmp_path: Path) -> bytes:
    if MKFS is None:
        pytest.skip("mkfs.ext4 not installed")
    root = tmp_path / "tree"
    root.mkdir()
    (root / "multi").write_bytes(bytes(range(256)) * 300)  # 75 blocks of 1 KiB
    (root / "small").write_bytes(b"small\n")
    out = tmp_path / "fs.img"
    subprocess.run(
        [MKFS, "-q", "-F", "-b", "1024", "-N", "64", "-O", "^has_journal,^metadata_csum",
         "-d", str(root), str(out), "1M"],
        check=True, capture_output=True,
    )  # fmt: skip
    return out.read_bytes()


def _edit(image: bytes, *, last_orphan: int, ino: int, i_size: int, dtime: int) -> bytes:
    fs = Filesystem(MemorySource(image))
    buf = bytearray(image)
    struct.pack_into("<I", buf, 1024 + 0xE8, last_orphan)
    group, index = divmod(ino - 1, fs.sb.s_inodes_per_group)
    at = fs.groups[group].bg_inode_table * fs.block_size + index * fs.sb.inode_size
    struct.pack_into("<I", buf, at + 0x04, i_size)
    struct.pack_into("<I", buf, at + 0x14, dtime)
    return bytes(buf)


def _ino(image: bytes, name: bytes) -> int:
    entry = Filesystem(MemorySource(image)).root.entry_named(name)
    assert entry is not None
    return entry.ino


def test_a_linked_orphan_is_truncated_to_its_size(image: bytes) -> None:
    ino = _ino(image, b"multi")
    shrunk = _edit(image, last_orphan=0, ino=ino, i_size=1500, dtime=0)
    # Not an orphan: the blocks past i_size stay mapped (a backup keeps them).
    assert sum(r.length for r in Filesystem(MemorySource(shrunk)).inode(ino).mapped_runs()) == 75
    orphan = _edit(image, last_orphan=ino, ino=ino, i_size=1500, dtime=0)
    fs = Filesystem(MemorySource(orphan))
    assert fs.orphans.truncated == {ino} and not fs.orphans.deleted
    assert sum(r.length for r in fs.inode(ino).mapped_runs()) == 2
    assert fs.inode(ino).read(0, 1500) == (bytes(range(256)) * 6)[:1500]
    assert not fs.warnings


def test_an_orphan_list_that_loops_ends_with_a_warning(image: bytes) -> None:
    ino = _ino(image, b"small")
    looped = _edit(image, last_orphan=ino, ino=ino, i_size=6, dtime=ino)
    fs = Filesystem(MemorySource(looped))
    assert fs.orphans.truncated == {ino}
    assert any("loops back" in w for w in fs.warnings), fs.warnings
    bad = _edit(image, last_orphan=ino, ino=ino, i_size=6, dtime=10**9)
    fs = Filesystem(MemorySource(bad))
    assert any("cannot be an orphan" in w for w in fs.warnings), fs.warnings


def test_clip_runs() -> None:
    runs = [Run(0, 4, 100), Run(4, 2, None), Run(6, 10, 200, True)]
    assert clip_runs(runs, 0, 1024) == []
    assert clip_runs(runs, 1, 1024) == [Run(0, 1, 100)]
    assert clip_runs(runs, 5 * 1024, 1024) == [Run(0, 4, 100), Run(4, 1, None)]
    assert clip_runs(runs, 7 * 1024 + 1, 1024) == [*runs[:2], Run(6, 2, 200, True)]
    assert clip_runs(runs, 1 << 40, 1024) == runs


CORPUS = SHARED_TESTDATA / "e2fsprogs"


def test_a_journal_error_of_the_last_mount_is_reported_and_orphans_left_alone() -> None:
    """f_clear_orphan_file (19 orphans) with s_errno set in its journal superblock: the
    kernel's mount marks the filesystem in error and does not process orphans."""
    import gzip

    from cipherdump.ext4.journal import _JournalFile
    from cipherdump.ondisk import jbd2 as J

    packed = CORPUS / "f_clear_orphan_file" / "image.gz"
    if not packed.is_file():
        pytest.skip("e2fsprogs corpus not found")
    image = bytearray(gzip.decompress(packed.read_bytes()))
    fs = Filesystem(MemorySource(bytes(image)))
    assert fs.orphans.count == 19
    at = _JournalFile(fs, 8).pblk(0) * fs.block_size
    struct.pack_into(">i", image, at + 0x20, -5)
    sb = bytes(image[at : at + J.JOURNAL_SUPERBLOCK_SIZE])
    struct.pack_into(">I", image, at + 0xFC, J.journal_superblock_csum(sb))
    fs = Filesystem(MemorySource(bytes(image)))
    assert fs.journal_replayed and fs.journal is not None and fs.journal.errno == -5
    assert fs.orphans.count == 0
    assert any("errno -5" in w for w in fs.warnings), fs.warnings
