"""Htree index limits as the kernel computes them (fs/ext4/namei.c, dx_root_limit and
dx_node_limit), checked against an index node Linux 6.1 wrote.

In a casefolded encrypted directory every dirent carries an 8-byte hash, and the kernel
sizes the fake dirent of an index node with ``ext4_dir_rec_len(0, dir)``, which counts
it: such a node holds one entry fewer.  The root's '.' and '..' are sized without it.
dx_probe refuses a node whose limit differs, falls back to linear lookups and records an
ext4 error.  e2fsck 1.47 expects the unhashed limit here, so it is no oracle for these
directories: the kernel-made node below is (and tests/kernel/test_kernel61_vm.py).
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from cipherdump.ext4 import open_filesystem
from cipherdump.ext4.build import HashParams, NewEntry, layout_directory
from cipherdump.ondisk.dirent import (
    DX_NODE_COUNT_OFFSET,
    DX_ROOT_COUNT_OFFSET,
    dx_csum_check,
    dx_node_limit,
    dx_root_limit,
)

BIG_DIR = 38  # cf_enc/Big in cf1k: an htree of depth 1 written by Linux 6.1


@pytest.fixture(scope="module")
def cf1k(shared_testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("zstd") is None:
        pytest.skip("zstd is not installed")
    out = tmp_path_factory.mktemp("cf1k") / "cf1k.img"
    packed = shared_testdata / "kernel-vectors-6.1" / "cf1k.img.zst"
    subprocess.run(["zstd", "-q", "-d", "-f", str(packed), "-o", str(out)], check=True)
    return out


def _pblk(image: Path, ino: int, lblk: int) -> int:
    with open_filesystem(str(image)) as fs:
        for r in fs.inode(ino).runs:
            if r.pblk is not None and r.lblk <= lblk < r.lblk + r.length:
                return r.pblk + lblk - r.lblk
    raise AssertionError(f"no block {lblk} in inode {ino}")


def _index_node_lblk(image: Path) -> int:
    """The logical block of the first index node: the root's first child."""
    with open_filesystem(str(image)) as fs:
        root = fs.read_block(_pblk(image, BIG_DIR, 0))
    (child,) = struct.unpack_from("<I", root, DX_ROOT_COUNT_OFFSET + 4)
    return int(child & 0x0FFFFFFF)


def test_limits_equal_the_kernel_made_index_node(cf1k: Path) -> None:
    with open_filesystem(str(cf1k)) as fs:
        assert fs.block_size == 1024 and fs.sb.metadata_csum
        root = fs.read_block(_pblk(cf1k, BIG_DIR, 0))
        node = fs.read_block(_pblk(cf1k, BIG_DIR, _index_node_lblk(cf1k)))
    assert root[0x1E] == 1  # indirect levels: the root points to index nodes
    assert struct.unpack_from("<HH", root, DX_ROOT_COUNT_OFFSET) == (123, 2)
    assert struct.unpack_from("<HH", node, DX_NODE_COUNT_OFFSET) == (125, 98)
    assert dx_root_limit(1024, csum=True) == 123
    assert dx_node_limit(1024, csum=True, hashed=True) == 125
    # Elsewhere the fake dirent is 8 bytes: (1024 - 8 - 8) / 8.
    assert dx_node_limit(1024, csum=True, hashed=False) == 126
    assert dx_node_limit(4096, csum=True, hashed=True) == 509
    assert dx_node_limit(4096, csum=False, hashed=True) == 510
    assert dx_node_limit(4096, csum=False, hashed=False) == 511


@pytest.mark.parametrize(("bs", "csum", "node_limit"), [(1024, True, 125), (4096, True, 509),
                                                        (1024, False, 126)])  # fmt: skip
def test_layout_of_a_hashed_directory_uses_the_kernel_limits(
    bs: int, csum: bool, node_limit: int
) -> None:
    # Long names: few per leaf, so a few thousand entries need index nodes.
    entries = [
        NewEntry(b"%05d" % i + b"y" * 200, 100 + i, 1, ((i * 2654435761) & 0xFFFFFFFE, i))
        for i in range(bs * 2 if bs == 1024 else 10000)
    ]
    layout = layout_directory(
        12, 2, entries, block_size=bs, csum_seed=0x1234 if csum else None, hashed=True,
        hash_params=HashParams(1, bytes(16), False), max_levels=1, filetype=True,
    )  # fmt: skip
    root = bytes(layout.blocks[0])
    assert layout.indexed and root[0x1E] == 1
    assert struct.unpack_from("<H", root, DX_ROOT_COUNT_OFFSET)[0] == dx_root_limit(bs, csum)
    nodes = [
        bytes(b) for b in layout.blocks[1:] if struct.unpack_from("<IH", b, 0) == (0, bs % 65536)
    ]
    assert nodes
    for node in nodes:
        limit, count = struct.unpack_from("<HH", node, DX_NODE_COUNT_OFFSET)
        assert limit == node_limit and 0 < count <= limit
        if csum:
            found = dx_csum_check(node, DX_NODE_COUNT_OFFSET, 0x1234)
            assert found is not None and found[0] == found[1]


def test_reader_warns_on_a_limit_the_kernel_rejects(cf1k: Path, tmp_path: Path) -> None:
    """An index node with the unhashed limit (as cipherdump wrote before) is one the
    kernel's dx_probe refuses: the reader says so and still lists every entry."""
    with open_filesystem(str(cf1k)) as fs:
        want = sorted(e.name for e in fs.inode(BIG_DIR).entries())
        assert not fs.warnings
    bad = tmp_path / "bad.img"
    shutil.copyfile(cf1k, bad)
    lblk = _index_node_lblk(cf1k)
    with open(bad, "r+b") as f:
        f.seek(_pblk(cf1k, BIG_DIR, lblk) * 1024 + DX_NODE_COUNT_OFFSET)
        f.write(struct.pack("<H", 126))
    with open_filesystem(str(bad)) as fs:
        got = sorted(e.name for e in fs.inode(BIG_DIR).entries())
        warnings = list(fs.warnings)
    assert got == want
    assert any(f"block {lblk}: htree index limit 126 != 125" in w for w in warnings), warnings
