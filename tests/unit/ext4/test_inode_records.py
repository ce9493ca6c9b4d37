"""Filesystem.inode_records (a directory's inode records read in one loop) gives what
inode_record gives one at a time, and fails as it does."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from cipherdump.blockio import MemorySource
from cipherdump.errors import CorruptError
from cipherdump.ext4 import Filesystem

MKFS = shutil.which("mkfs.ext4")


@pytest.fixture
def fs(tmp_path: Path) -> Filesystem:
    if MKFS is None:
        pytest.skip("mkfs.ext4 not installed")
    root = tmp_path / "tree"
    for d in range(3):
        sub = root / f"d{d}"
        sub.mkdir(parents=True)
        for i in range(40):
            (sub / f"f{i}").write_bytes(b"x" * (i * 37))
    out = tmp_path / "fs.img"
    # Two groups' worth of inodes at least, so that records come from several spans.
    subprocess.run(
        [
            MKFS,
            "-q",
            "-F",
            "-b",
            "1024",
            "-N",
            "512",
            "-g",
            "1024",
            "-d",
            str(root),
            str(out),
            "4M",
        ],
        check=True,
        capture_output=True,
    )
    return Filesystem(MemorySource(out.read_bytes()))


def test_the_same_records_as_one_at_a_time(fs: Filesystem) -> None:
    inos = list(range(1, fs.sb.s_inodes_count + 1))
    assert fs.inode_records(inos) == [fs.inode_record(i) for i in inos]
    # In another order, and with repeats (a hard link's second entry).
    some = [200, 12, 12, 1, fs.sb.s_inodes_count, 13]
    assert fs.inode_records(some) == [fs.inode_record(i) for i in some]


@pytest.mark.parametrize("bad", [0, -1, 10**9])
def test_an_inode_number_out_of_range_fails_as_one_at_a_time(fs: Filesystem, bad: int) -> None:
    with pytest.raises(CorruptError) as one:
        fs.inode_record(bad)
    with pytest.raises(CorruptError) as batch:
        fs.inode_records([11, bad, 12])
    assert str(batch.value) == str(one.value)
