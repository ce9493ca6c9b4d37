"""The keyed view on the images a Linux 6.1 kernel wrote (ESSIV, HCTR2, Adiantum, casefold).

Ground truth: each image's manifest, recorded by that kernel with the keys added --
every path, inode number, file SHA-256 and symlink target -- and, for casefolded
encrypted directories, the SipHash dirhash stored in each dirent (which only the key
holder can compute).  Every file, name and symlink must decrypt to what the manifest
records, and plaintext paths must resolve to the recorded inodes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
import zstandard

from cipherdump.engine.views.image import Problem
from cipherdump.engine.views.image_keyed import KeyedNamespace
from cipherdump.errors import NotFoundError
from cipherdump.ext4 import Filesystem, open_filesystem
from cipherdump.fscrypt.keys import KeyRing, MasterKey
from fscrypt_vectors import KERNEL_VECTORS_61, load_json

IMAGES = ["essiv", "hctr2", "adiantum", "cf4k", "cf1k"]
pytestmark = pytest.mark.skipif(
    not KERNEL_VECTORS_61.is_dir(), reason="shared/testdata/kernel-vectors-6.1 absent"
)


def _manifest(name: str) -> dict[str, Any]:
    data: dict[str, Any] = load_json(KERNEL_VECTORS_61 / f"{name}.json")
    return data


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Filesystem]]:
    root = tmp_path_factory.mktemp("keyed61")
    out = {}
    for name in IMAGES:
        raw = root / f"{name}.img"
        with (KERNEL_VECTORS_61 / f"{name}.img.zst").open("rb") as f, raw.open("wb") as g:
            zstandard.ZstdDecompressor().copy_stream(f, g)
        out[name] = open_filesystem(str(raw))
    yield out
    for fs in out.values():
        fs.close()


def _keyed(fs: Filesystem, m: dict[str, Any]) -> KeyedNamespace:
    ring = KeyRing()
    for top in m["dirs"]:
        if top.get("encrypted"):
            ring.add(MasterKey.from_hex(top["master_key_hex"]))
    return KeyedNamespace(fs, ring)


def _path(entry: dict[str, Any]) -> bytes:
    if "path_hex" in entry:
        return bytes.fromhex(entry["path_hex"])
    return str(entry["path"]).encode("utf-8")


def _expected_paths(m: dict[str, Any]) -> dict[bytes, int]:
    out = {b"/" + _path(e): int(e["inode"]) for e in m["entries"]}
    for parent, table in m.get("big_dirs", {}).items():
        for name, ino, _nokey, _index in table["entries"]:
            out[b"/" + parent.encode() + b"/" + str(name).encode()] = int(ino)
    return out


@pytest.mark.parametrize("name", IMAGES)
def test_listing_with_keys_equals_kernel(name: str, images: dict[str, Filesystem]) -> None:
    m = _manifest(name)
    ns = _keyed(images[name], m)
    got: dict[bytes, int] = {}
    for item in ns.walk(ns.root_node(), recursive=True):
        assert not isinstance(item, Problem), f"{item.path!r}: {item.error}"
        got[item.path] = item.inode.ino
    got = {p: i for p, i in got.items() if not p.startswith(b"/lost+found/")}
    assert got == _expected_paths(m)
    assert not ns.missing


@pytest.mark.parametrize("name", IMAGES)
def test_contents_and_targets_decrypt(name: str, images: dict[str, Filesystem]) -> None:
    m = _manifest(name)
    fs = images[name]
    ns = _keyed(fs, m)
    files = links = 0
    for e in m["entries"]:
        node = ns.resolve(b"/" + _path(e))
        assert node.inode.ino == e["inode"]
        if e["type"] == "file":
            plain = ns.read_plaintext(node.inode)
            assert len(plain) == e["size"]
            assert hashlib.sha256(plain).hexdigest() == e["sha256"], e["path"]
            files += 1
        elif e["type"] == "symlink":
            assert ns.symlink_target(node.inode) == str(e["target"]).encode("utf-8")
            links += 1
    assert files and links


def _casefold_dirs(m: dict[str, Any]) -> list[bytes]:
    out = []
    for top in m["dirs"]:
        if top.get("encrypted") and top.get("casefold"):
            out.append(top["path"].encode())
    for e in m["entries"]:
        if e["type"] == "dir" and "nonce_hex" in e and int(e["i_flags"], 16) & 0x40000000:
            out.append(_path(e))
    return sorted(set(out))


@pytest.mark.parametrize("name", ["cf4k", "cf1k"])
def test_casefold_hashes_are_siphash_of_casefolded_names(
    name: str, images: dict[str, Filesystem]
) -> None:
    m = _manifest(name)
    ns = _keyed(images[name], m)
    checked = 0
    for path in _casefold_dirs(m):
        node = ns.resolve(b"/" + path)
        cipher = ns.require_cipher(node.inode)
        for entry in node.inode.entries():
            plain = ns.decrypt_entry_name(node.inode, entry)
            assert entry.hash == cipher.casefold_dirhash(plain), (path, plain)
            checked += 1
    assert checked > 3000


@pytest.mark.parametrize("name", ["cf4k", "cf1k"])
def test_lookups_by_other_spellings(name: str, images: dict[str, Filesystem]) -> None:
    """Every lookup the kernel made with the key added -- other case, other
    normalisation, multi-component paths -- finds the same inode here, and every one it
    refused is refused here too (casefolded and plain encrypted directories alike)."""
    m = _manifest(name)
    ns = _keyed(images[name], m)
    found = refused = 0
    for top in m["dirs"]:
        if not top.get("encrypted"):
            continue
        for look in top.get("lookups", []):
            spelled = (
                bytes.fromhex(look["name_hex"]) if "name_hex" in look else look["name"].encode()
            )
            path = top["path"].encode() + b"/" + spelled
            if isinstance(look["with_key"], int):
                assert ns.resolve(path).inode.ino == look["with_key"], look
                found += 1
            else:
                with pytest.raises(NotFoundError):
                    ns.resolve(path)
                refused += 1
    assert found > 10
    if name == "cf4k":
        assert refused > 5
