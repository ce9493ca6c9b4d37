"""Listings of the images a Linux 6.1 kernel wrote (casefold, ESSIV, HCTR2, Adiantum).

This kernel cannot mount casefold filesystems and lacks those ciphers, so these images
and the no-key listings recorded when they were made are the ground truth: cipherdump's
key-less listing must equal what that kernel's readdir/readlink showed without the key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import zstandard

from cipherdump.blockio import FileSource
from cipherdump.engine.views.image import ImageNode, Namespace, Problem
from cipherdump.ext4 import Filesystem

IMAGES = ["cf4k", "cf1k", "essiv", "hctr2", "adiantum"]


@pytest.fixture(scope="module")
def images61(shared_testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = shared_testdata / "kernel-vectors-6.1"
    if not src.is_dir():
        pytest.skip("kernel-vectors-6.1 not present")
    out = tmp_path_factory.mktemp("k61")
    for name in IMAGES:
        with open(src / f"{name}.img.zst", "rb") as f, open(out / f"{name}.img", "wb") as g:
            zstandard.ZstdDecompressor().copy_stream(f, g)
    return out


def _manifest(shared_testdata: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (shared_testdata / "kernel-vectors-6.1" / f"{name}.json").read_text()
    )
    return data


def _nokey_path(entry: dict[str, Any]) -> bytes:
    if "nokey_path_hex" in entry:
        return b"/" + bytes.fromhex(entry["nokey_path_hex"])
    return b"/" + entry["nokey_path"].encode()


def _walk(fs: Filesystem) -> dict[bytes, ImageNode]:
    ns = Namespace(fs)
    out: dict[bytes, ImageNode] = {}
    for item in ns.walk(ns.root_node(), recursive=True):
        assert not isinstance(item, Problem), f"{item.path!r}: {item.error}"
        out[item.path] = item
    return out


@pytest.mark.parametrize("name", IMAGES)
def test_nokey_listing_equals_kernel(name: str, images61: Path, shared_testdata: Path) -> None:
    manifest = _manifest(shared_testdata, name)
    with FileSource(str(images61 / f"{name}.img")) as src:
        fs = Filesystem(src)
        ns = Namespace(fs)
        ours = _walk(fs)
        expected: dict[bytes, dict[str, Any]] = {}
        for e in manifest["entries"]:
            expected[_nokey_path(e)] = e
        for dir_path, big in manifest.get("big_dirs", {}).items():
            parent = next(e for e in manifest["entries"] if e["path"] == dir_path)
            cols = big["columns"]
            for row in big["entries"]:
                rec = dict(zip(cols, row, strict=True))
                path = _nokey_path(parent) + b"/" + rec["nokey_name"].encode()
                expected[path] = {"inode": rec["inode"]}
        assert set(ours) - {p for p in ours if p.startswith(b"/lost+found/")} == set(expected)
        for path, e in expected.items():
            node = ours[path]
            assert node.inode.ino == e["inode"], path
            if "type" in e:
                assert node.inode.type.value == {"file": "file"}.get(e["type"], e["type"]), path
                assert node.inode.mode == int(e["mode"], 8), path
                assert node.inode.links == e["nlink"], path
            if e.get("nokey_target"):
                assert ns.symlink_target(node.inode) == e["nokey_target"].encode(), path
            # A no-key path typed by a user resolves to the same inode.
            assert ns.resolve(path).inode.ino == e["inode"], path


@pytest.mark.parametrize("name", ["cf4k", "cf1k"])
def test_casefold_encrypted_entries_carry_stored_hash(name: str, images61: Path) -> None:
    with FileSource(str(images61 / f"{name}.img")) as src:
        fs = Filesystem(src)
        cf_enc = Namespace(fs).resolve(b"/cf_enc").inode
        assert cf_enc.is_encrypted and cf_enc.is_casefolded
        entries = cf_enc.entries()
        assert entries and all(e.hash is not None for e in entries)
