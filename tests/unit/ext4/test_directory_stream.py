"""A large directory is read as it is iterated, not kept: ``iter_entries`` gives what
``entries`` gives, in the same order, without holding them once done."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from cipherdump.engine.views import image as image_view
from cipherdump.engine.views.image import Namespace
from cipherdump.ext4 import directory, open_filesystem
from cipherdump.ondisk.inode import EXT4_INDEX_FL

ENTRIES = 3000


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp_path = tmp_path_factory.mktemp("stream")
    entries = ENTRIES
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 unavailable")
    tree = tmp_path / "tree"
    big = tree / "big"
    big.mkdir(parents=True)
    for i in range(entries):
        (big / f"entry-{i:05d}-with-a-longer-name").write_bytes(b"")
    (tree / "small").mkdir()
    (tree / "small" / "one").write_bytes(b"1")
    image = tmp_path / "fs.img"
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-b", "1024", "-N", str(entries + 64), "-d", str(tree),
         str(image), "16M"],
        check=True, capture_output=True,
    )  # fmt: skip
    # e2fsck -D indexes the large directory (mkfs -d leaves it linear); exit 1: fixed.
    done = subprocess.run(["e2fsck", "-fyD", str(image)], capture_output=True)
    assert done.returncode in (0, 1), done.stdout
    return image


def test_a_large_directory_streams_what_entries_lists(
    image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(directory, "STREAM_FROM", 4096)
    with open_filesystem(str(image)) as fs:
        root = fs.root
        big_entry = root.entry_named(b"big")
        small_entry = root.entry_named(b"small")
        assert big_entry is not None and small_entry is not None
        big = fs.inode(big_entry.ino)
        assert big.flags & EXT4_INDEX_FL  # an htree: block 0 and index blocks skipped
        streamed = list(big.iter_entries())
        assert not big.entries_loaded  # not kept
        assert list(big.iter_entries()) == streamed  # read again, the same
        small = fs.inode(small_entry.ino)
        assert [e.name for e in small.iter_entries()] == [b"one"]
        assert small.entries_loaded  # a small directory is kept, as always
    with open_filesystem(str(image)) as fs:
        kept = fs.inode(big_entry.ino).entries()
    assert streamed == kept and [e.offset for e in streamed] == [e.offset for e in kept]
    assert len(kept) == ENTRIES


def test_a_large_directory_lists_in_batches_as_a_whole(
    image: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(image_view, "_NAMES_BATCH", 700)  # several batches, one short
    with open_filesystem(str(image)) as fs:
        ns = Namespace(fs)
        whole = [(c.path, c.inode.ino) for c in ns.iter_children(ns.resolve(b"/big"))]
    monkeypatch.setattr(directory, "STREAM_FROM", 4096)
    with open_filesystem(str(image)) as fs:
        ns = Namespace(fs)
        node = ns.resolve(b"/big")
        streamed = [(c.path, c.inode.ino) for c in ns.iter_children(node)]
        assert not node.inode.entries_loaded
    assert streamed == whole and len(whole) == ENTRIES
