"""The fast path for regular files (``engine.filenode``) makes the very nodes the general
path makes.

A backup with the fast path and one without it, into the same repository, must give the
same snapshot tree: trees are content-addressed, so one differing byte in any node of
any directory changes the root's id.  Run on kernel-made encrypted images, on the bundled
sample and on e2fsprogs' test images (odd shapes: xattrs in blocks and EA inodes, no
extra inode fields, Hurd, bigalloc, verity, inline data, damage).
"""

from __future__ import annotations

import bz2
import gzip
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import kernelfs
from cipherdump.engine.backup import BackupOptions, backup
from cipherdump.engine.backup import nodes as nodes_module
from cipherdump.errors import CipherdumpError
from cipherdump.ext4 import open_filesystem
from cipherdump.repo import Id, KdfParams, MemoryBackend, Repository
from conftest import SHARED_TESTDATA, KernelImageFactory
from shared_data import REPO

SAMPLE = REPO / "examples" / "sample.img"
CORPUS = SHARED_TESTDATA / "e2fsprogs"
# Images of shapes the fast path must recognise or leave alone.
SOME_CORPUS = [
    "d_inline_dump", "f_bad_encryption", "f_big_sparse", "f_bigalloc_symlink_with_xattr",
    "f_ea_inode", "f_eofblocks", "f_extents", "f_hurd", "f_inlinedata_flags",
    "f_sb_extra_isize", "f_short_encrypted_dirent", "f_uninit_ext_past_eof",
    "f_unsorted_EAs", "f_valid_ea_in_inode", "f_verity", "f_write_ea_no_extra_isize",
    "f_zero_inode_size", "r_inline_xattr",
]  # fmt: skip


def both_ways(image: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Id, Id, int]:
    """(tree with the fast path, tree without, files the fast path described)."""
    repo = Repository.init(MemoryBackend(), b"pw", kdf=KdfParams.insecure_for_tests())
    used = 0
    real = nodes_module.file_node

    def counting(*args: object, **kwargs: object) -> object:
        nonlocal used
        used += 1
        return real(*args, **kwargs)  # type: ignore[arg-type]

    options = BackupOptions(no_parent=True, jobs=1)
    with open_filesystem(str(image)) as fs:
        with monkeypatch.context() as m:
            m.setattr(nodes_module, "file_node", counting)
            fast = backup(repo, fs, options)
        with monkeypatch.context() as m:
            m.setattr(nodes_module, "file_context", lambda inode: (False, None))
            general = backup(repo, fs, options)
    # The second backup finds every blob stored: only what it added may differ.
    added = {"bytes_added", "bytes_stored", "data_blobs_added", "tree_blobs_added"}
    assert {k: v for k, v in fast.stats.as_dict().items() if k not in added} == {
        k: v for k, v in general.stats.as_dict().items() if k not in added
    }
    assert fast.policies == general.policies
    return fast.snapshot.tree, general.snapshot.tree, used


def test_sample_image(monkeypatch: pytest.MonkeyPatch) -> None:
    fast, general, used = both_ways(SAMPLE, monkeypatch)
    assert fast == general
    assert used >= 5


@pytest.mark.parametrize(
    "config", ["4k-v2-pad32", "1k-v1-pad4", "4k-stable-v2-pad32-lblk64", "4k-inline-v2-pad32"]
)
def test_kernel_images(
    config: str, kernel_images: KernelImageFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = kernel_images(kernelfs.NAMED_CONFIGS[config])
    fast, general, used = both_ways(image.image, monkeypatch)
    assert fast == general
    assert used > 0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Path]]:
    if not CORPUS.is_dir():
        pytest.skip(f"e2fsprogs test images not found at {CORPUS}")
    root = tmp_path_factory.mktemp("corpus")

    def get(name: str) -> Path:
        src, out = CORPUS / name, root / f"{name}.img"
        if not out.exists():
            opener = gzip.open if (src / "image.gz").is_file() else bz2.open
            packed = src / ("image.gz" if opener is gzip.open else "image.bz2")
            if not packed.is_file():
                pytest.skip(f"{name}: no image")
            with opener(packed) as fin, out.open("wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
        return out

    yield get
    shutil.rmtree(root, ignore_errors=True)


def _corpus_case(name: str, corpus: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        fast, general, _ = both_ways(corpus(name), monkeypatch)
    except CipherdumpError:
        return  # an image no backup gets through either way (what test_e2fsprogs_corpus checks)
    assert fast == general, name


@pytest.mark.parametrize("name", SOME_CORPUS)
def test_some_e2fsprogs_images(
    name: str, corpus: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _corpus_case(name, corpus, monkeypatch)


@pytest.mark.slow
def test_every_e2fsprogs_image(
    corpus: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    names = sorted(p.name for p in CORPUS.iterdir() if p.is_dir())
    assert len(names) > 100
    for name in names:
        _corpus_case(name, corpus, monkeypatch)
