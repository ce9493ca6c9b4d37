"""Path lookup through the htree: one index path and one leaf, same answer as the full scan.

On the kernel-made 10,000-entry directories (4 KiB blocks: root index only; 1 KiB blocks:
a deeper index), every entry's no-key name is found through the index alone, to the inode
the listing shows; a name that is not there is not found by the index and the full scan
then says "no such file".
"""

from __future__ import annotations

from typing import Any

import pytest

import kernelfs
from cipherdump.engine.views.image import ImageNode, Namespace
from cipherdump.errors import NotFoundError
from cipherdump.ext4.fs import open_filesystem
from kernelfs import KernelImage

pytestmark = pytest.mark.kernel

BIGDIR_CONFIGS = sorted(name for name in kernelfs.NAMED_CONFIGS if "bigdir" in name)


def _big_dir_path(ki: KernelImage) -> bytes:
    assert ki.tree.big_dir is not None
    ino = ki.with_key[ki.tree.big_dir].ino
    (rel,) = [rel for rel, v in ki.no_key.items() if v.ino == ino]
    return ki.config.encrypted_dir + b"/" + rel


@pytest.mark.parametrize("kernel_image", BIGDIR_CONFIGS, indirect=True)
def test_every_entry_is_found_through_the_index(kernel_image: KernelImage) -> None:
    ki = kernel_image
    big = _big_dir_path(ki)
    with open_filesystem(str(ki.image)) as fs:
        listed = {n.name: n.inode.ino for n in Namespace(fs).children(Namespace(fs).resolve(big))}
    assert len(listed) == ki.config.tree.big_dir_entries
    with open_filesystem(str(ki.image)) as fs:
        ns = Namespace(fs)
        directory = ns.resolve(big).inode
        assert directory.is_indexed_dir
        for name, ino in listed.items():
            found = ns._htree_lookup(directory, name)
            assert found is not None and found.ino == ino, name
        assert not directory.entries_loaded  # no full scan was needed
        # Through resolve too, names as the listing shows them.
        some = sorted(listed)[::97]
        for name in some:
            node = ns.resolve(big + b"/" + name)
            assert node.name == name and node.inode.ino == listed[name]
        assert not directory.entries_loaded


@pytest.mark.parametrize("kernel_image", BIGDIR_CONFIGS, indirect=True)
def test_a_missing_name_falls_back_to_the_scan(kernel_image: KernelImage) -> None:
    ki = kernel_image
    big = _big_dir_path(ki)
    with open_filesystem(str(ki.image)) as fs:
        ns = Namespace(fs)
        node: ImageNode = ns.resolve(big)
        missing = b"A" * 43  # a well-formed short no-key name of no entry
        assert ns._htree_lookup(node.inode, missing) is None
        with pytest.raises(NotFoundError):
            ns.resolve(big + b"/" + missing)
        assert node.inode.entries_loaded  # the scan settled it


@pytest.mark.parametrize("kernel_image", BIGDIR_CONFIGS, indirect=True)
def test_the_kernels_htree_index_checksums_verify(kernel_image: KernelImage) -> None:
    """Listing reads every index block of the 10,000-entry directory and checks its
    dx_tail checksum when the filesystem has metadata_csum: the kernel's all match."""
    ki = kernel_image
    with open_filesystem(str(ki.image)) as fs:
        ns = Namespace(fs)
        directory = ns.resolve(_big_dir_path(ki)).inode
        assert directory.is_indexed_dir and fs.sb.metadata_csum
        assert len(ns.children(ns.resolve(_big_dir_path(ki)))) == ki.config.tree.big_dir_entries
        assert [w for w in fs.warnings if "htree" in w] == []


@pytest.mark.parametrize("kernel_image", BIGDIR_CONFIGS, indirect=True)
def test_the_htree_root_is_read_once_for_entries_and_hash_version(
    kernel_image: KernelImage,
) -> None:
    """A backup lists an indexed directory, then asks for the hash version its root
    records; on a block device every read of the root waits for the disk, so listing
    keeps the version and asking for it reads nothing more.  Asked first, it reads the
    root itself; either way it is the version a fresh read gives."""
    ki = kernel_image
    big = _big_dir_path(ki)
    with open_filesystem(str(ki.image)) as fs:
        fresh = Namespace(fs).resolve(big).inode
        default = fs.sb.s_def_hash_version
        expected = fresh.directory.hash_version(default ^ 0xFF)  # not the default: a real root
        assert expected != default ^ 0xFF
    for entries_first in (True, False):
        with open_filesystem(str(ki.image)) as fs:
            directory = Namespace(fs).resolve(big).inode
            (root,) = [r.pblk for r in directory.runs if r.lblk == 0]
            reads: list[int] = []
            real = fs.read_block

            def counting(
                block: int, count: int = 1, reads: list[int] = reads, real: Any = real
            ) -> bytes:
                reads.extend(range(block, block + count))
                return bytes(real(block, count))

            fs.read_block = counting  # type: ignore[method-assign]
            if entries_first:
                directory.entries()
            assert directory.directory.hash_version(default) == expected
            directory.entries()
            if entries_first:
                assert reads.count(root) == 1


@pytest.mark.parametrize("kernel_image", BIGDIR_CONFIGS, indirect=True)
def test_entries_know_their_offset_and_the_index_finds_the_same(kernel_image: KernelImage) -> None:
    """Offsets rise in disk order, within the directory's size; an entry found through
    the index has the offset the full scan gives it (offsets are where ``order`` comes
    from in a backup: they must not depend on how an entry was found)."""
    ki = kernel_image
    big = _big_dir_path(ki)
    with open_filesystem(str(ki.image)) as fs:
        ns = Namespace(fs)
        directory = ns.resolve(big).inode
        entries = directory.entries()
        offsets = [e.offset for e in entries]
        assert offsets == sorted(set(offsets)) and offsets[0] >= 0
        assert offsets[-1] < directory.size
    with open_filesystem(str(ki.image)) as fs:
        ns = Namespace(fs)
        directory = ns.resolve(big).inode
        for e in entries[::211]:
            name = ns.display_name(directory, e)
            found = ns._htree_lookup(directory, name)
            assert found is not None and found == e and found.offset == e.offset
        assert not directory.entries_loaded
