"""The offline writer on synthetic trees: encoders round-trip through the decoders, and
images the writer fills pass e2fsck and read back through the kernel.

The synthetic tree needs what kernel-made images rarely show: extent trees of depth 2
(thousands of fragments), extents longer than one extent can hold, unwritten extents,
two-level htrees of long names, and times before 1970 and after 2038.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

import kernelfs
from cipherdump.errors import UnsupportedError
from cipherdump.ext4 import open_filesystem
from cipherdump.ext4.build import (
    HashParams,
    ImageWriter,
    NewEntry,
    NewInode,
    NewRun,
    Populator,
    SrcNode,
    layout_directory,
    plan_tree,
)
from cipherdump.ext4.build.node import BlockReader
from cipherdump.ondisk.dirent import decode_dirents, decode_dx_root, encode_dirent
from cipherdump.ondisk.extent import Extent, decode_extent_node, encode_extent_node
from cipherdump.ondisk.inode import InodeFields, decode_inode, encode_inode, timestamp_ns
from cipherdump.ondisk.xattr import decode_xattr_entries, encode_xattr_block, xattr_entry_hash
from restore_checks import e2fsck_clean

# Before 1970, after 2038 (epoch bits), odd nanoseconds.
TIMES = [-1_000_000_000 * 86_400 * 365 + 7, 1_234_567_890_123_456_789, 2**33 * 10**9 + 999_999_999]


@pytest.mark.parametrize("ns", TIMES)
def test_inode_roundtrip(ns: int) -> None:
    f = InodeFields(
        i_mode=0o100644, i_uid=70000, i_gid=80000, i_size=(5 << 32) + 3, atime_ns=ns,
        ctime_ns=ns + 1, mtime_ns=ns + 2, crtime_ns=ns + 3, i_links_count=3,
        i_blocks=(1 << 33) + 8, i_flags=0x80800, i_version=(7 << 32) | 9, i_block=b"x" * 60,
        i_generation=1234, i_file_acl=(1 << 40) + 5, i_projid=42,
    )  # fmt: skip
    raw = decode_inode(bytes(encode_inode(f, 256, 32)), 256)
    assert (raw.i_uid, raw.i_gid, raw.i_size, raw.i_blocks) == (70000, 80000, f.i_size, f.i_blocks)
    assert (raw.i_file_acl, raw.i_version, raw.i_projid) == (f.i_file_acl, f.i_version, 42)
    assert timestamp_ns(raw.i_atime, raw.i_atime_extra) == ns
    assert timestamp_ns(raw.i_crtime, raw.i_crtime_extra) == ns + 3


def test_extent_and_dirent_roundtrip() -> None:
    exts = [Extent(0, 10, 1 << 33, False), Extent(20, 5, 99, True)]
    node = decode_extent_node(bytes(encode_extent_node(0, 4, extents=exts)), "t")
    assert list(node.extents) == exts
    block = encode_dirent(12, b"n" * 20, 1, 40, 4096, (0xDEADBEEE, 7)) + encode_dirent(
        13, b"m", 2, 4096 - 40, 4096
    )
    ents = decode_dirents(block, block_size=4096, where="t", hashed=True)
    assert [(e.inode, e.name, e.rec_len) for e in ents] == [(12, b"n" * 20, 40), (13, b"m", 4056)]
    assert ents[0].hash == (0xDEADBEEE, 7)


def test_xattr_block_entries() -> None:
    items = [(1, b"zz", b"value"), (9, b"c", bytes(40)), (1, b"a", b"")]
    block = encode_xattr_block(items, 1024, 77, None)
    got = decode_xattr_entries(bytes(block), 32, "t")
    assert [(e.e_name_index, e.name) for e in got] == [(1, b"a"), (1, b"zz"), (9, b"c")]
    zz = got[1]
    assert block[zz.e_value_offs : zz.e_value_offs + zz.e_value_size] == b"value"
    assert zz.e_hash == xattr_entry_hash(b"zz", b"value")


# -- a synthetic tree ------------------------------------------------------------------


def _pattern(lblk: int, bs: int) -> bytes:
    return (lblk.to_bytes(4, "little") * (bs // 4))[:bs]


class MemoryTree:
    def __init__(self, bs: int) -> None:
        self.bs = bs
        self.kids: dict[int, list[SrcNode]] = {}

    def children(self, node: SrcNode) -> list[SrcNode]:
        return self.kids.get(node.ino, [])

    def reader(self, node: SrcNode) -> BlockReader:
        bs = self.bs
        return lambda lblk, n: b"".join(_pattern(lblk + k, bs) for k in range(n))


def _node(name: bytes, ino: int, mode: int, **kw: object) -> SrcNode:
    spec = NewInode(mode=mode, atime_ns=TIMES[0], mtime_ns=TIMES[1], ctime_ns=TIMES[2],
                    crtime_ns=TIMES[1], **kw)  # type: ignore[arg-type]  # fmt: skip
    return SrcNode(name=name, ino=ino, spec=spec, handle=None)


BS = 1024
NAMES = [b"%05d-" % i + b"n" * 200 for i in range(3000)]
BIG_XATTR = (1, b"big", bytes(range(256)) * 2)
SMALL_XATTRS = ((1, b"a", b"1"), (6, b"selinux", b"system_u:object_r:x:s0\0"))


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1 KiB-block image (made by mke2fs, no root needed) filled by the writer."""
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 is not installed")
    image = tmp_path_factory.mktemp("build") / "t.img"
    kernelfs.make_image(image, 128, BS, ("^has_journal",), extra_mkfs_args=["-N", "8192"])
    tree = MemoryTree(BS)
    root = _node(b"", 2, stat.S_IFDIR | 0o755)
    frag = _node(b"fragmented", 20, stat.S_IFREG | 0o644, size=4000 * BS)
    frag.runs = [NewRun(2 * k, 1) for k in range(2000)]  # 2000 extents: depth 2 on 1 KiB
    big = _node(b"big", 21, stat.S_IFREG | 0o600, size=40000 * BS)
    big.runs = [NewRun(0, 40000)]  # longer than one extent holds
    pre = _node(b"prealloc", 22, stat.S_IFREG | 0o600, size=100 * BS,
                xattrs=(BIG_XATTR, *SMALL_XATTRS))  # fmt: skip
    pre.runs = [NewRun(0, 10), NewRun(10, 80, unwritten=True), NewRun(90, 10)]
    sub = _node(b"many", 30, stat.S_IFDIR | 0o700)
    files = [_node(n, 100 + i, stat.S_IFREG | 0o644) for i, n in enumerate(NAMES)]
    tree.kids = {2: [frag, big, pre, sub], 30: files}
    with ImageWriter(str(image)) as w:
        pop = Populator(w, tree)
        plan = plan_tree(tree, root)
        pop.reserve(plan)
        pop.check_room(plan)
        stats = pop.run(root)
        w.commit()
    assert stats.inodes_moved == 0
    return image


def test_writer_output_is_clean_and_reads_back(written: Path) -> None:
    ok, report = e2fsck_clean(written)
    assert ok, report
    with open_filesystem(str(written)) as fs:
        runs = fs.inode(22).runs
        assert [(r.lblk, r.length, r.unwritten) for r in runs] == [
            (0, 10, False),
            (10, 80, True),
            (90, 10, False),
        ]
        xattrs = {(x.index, x.name): (x.value, x.where) for x in fs.inode(22).xattrs}
        assert xattrs[BIG_XATTR[:2]] == (BIG_XATTR[2], "block")
        for index, name, value in SMALL_XATTRS:
            assert xattrs[(index, name)] == (value, "inode")
        frag = fs.inode(20)
        assert len([r for r in frag.runs if r.pblk is not None]) == 2000
        assert frag.read(3998 * BS, BS) == _pattern(3998, BS)
        assert sorted(e.name for e in fs.inode(30).entries()) == NAMES
        assert fs.inode(30).is_indexed_dir


@pytest.mark.kernel
def test_writer_output_reads_back_through_the_kernel(written: Path) -> None:
    assert kernelfs.extent_depth(written, 20) == 2
    assert kernelfs.htree_levels(written, 30) == 1
    bs = BS
    with kernelfs.mounted(written, readonly=True) as mnt:
        data = (mnt / "fragmented").read_bytes()
        for k in (0, 1, 2, 1999 * 2, 1999 * 2 + 1):
            want = _pattern(k, bs) if k % 2 == 0 else bytes(bs)
            assert data[k * bs : (k + 1) * bs] == want, k
        with open(mnt / "big", "rb") as f:
            f.seek(39999 * bs)
            assert f.read() == _pattern(39999, bs)
        pre_data = (mnt / "prealloc").read_bytes()
        assert pre_data[10 * bs : 90 * bs] == bytes(80 * bs)
        assert pre_data[95 * bs : 96 * bs] == _pattern(95, bs)
        assert os.getxattr(mnt / "prealloc", "user.big") == BIG_XATTR[2]
        assert sorted(os.listdir(mnt / "many")) == sorted(n.decode() for n in NAMES)
        st = os.stat(mnt / "many" / NAMES[1234].decode())
        assert (st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns) == tuple(TIMES)


def test_htree_layout_three_levels() -> None:
    """With large_dir, a directory too big for two levels gets a third.  (Stored hashes,
    as in casefolded encrypted directories, keep this fast: no half-MD4 in Python.)"""
    entries = [
        NewEntry(b"%06d" % i + b"x" * 240, 100 + i, 1, ((i * 2654435761) & 0xFFFFFFFE, i))
        for i in range(66000)
    ]
    hp = HashParams(1, bytes(range(16)), True)
    layout = layout_directory(
        12, 2, entries, block_size=1024, csum_seed=None, hashed=True, hash_params=hp,
        max_levels=2, filetype=True,
    )  # fmt: skip
    root = decode_dx_root(bytes(layout.blocks[0]))
    assert layout.indexed and root is not None and root.indirect_levels == 2
    seen = []
    for block in layout.blocks[1:]:
        if block[:8] == encode_dirent(0, b"", 0, 1024, 1024)[:8]:
            continue  # an index node
        blk = bytes(block)
        seen += [d.name for d in decode_dirents(blk, block_size=1024, where="t", hashed=True)]
    assert sorted(seen) == sorted(e.name for e in entries)
    with pytest.raises(UnsupportedError):
        layout_directory(
            12, 2, entries, block_size=1024, csum_seed=None, hashed=True, hash_params=hp,
            max_levels=1, filetype=True,
        )  # fmt: skip
