"""The keyed view on the three images with known keys (``shared/testdata/known_keys.json``).

Ground truth is that file: the names, symlink targets and contents each image's
creator (e4crypt on e2fsprogs' test images, fscrypt(1) on ext4-view-rs's) encrypted,
independently re-derived when the file was written.  The master keys are given there
directly (the e4crypt passphrase KDF is not cipherdump's business here).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from cipherdump.engine.views.image import ImageNode, Problem
from cipherdump.engine.views.image_keyed import KeyedNamespace
from cipherdump.errors import CorruptError, KeyProblem, UnsupportedError
from cipherdump.ext4 import Filesystem, open_filesystem
from cipherdump.fscrypt.keys import KeyRing, MasterKey
from fscrypt_vectors import SHARED_TESTDATA, load_json, unpack

KNOWN = SHARED_TESTDATA / "known_keys.json"
pytestmark = pytest.mark.skipif(not KNOWN.is_file(), reason="known_keys.json absent")


def _known(name: str) -> dict[str, Any]:
    data: dict[str, Any] = load_json(KNOWN)[name]
    return data


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Filesystem]]:
    root = tmp_path_factory.mktemp("known")
    paths = {
        "e2fsprogs/f_bad_encryption": "e2fsprogs/f_bad_encryption/image.gz",
        "e2fsprogs/f_badsymlinks2": "e2fsprogs/f_badsymlinks2/image.gz",
        "ext4-view-rs/test_disk1": "ext4-view-rs/test_disk1.bin.zst",
    }
    out = {}
    for i, (name, rel) in enumerate(paths.items()):
        out[name] = open_filesystem(str(unpack(SHARED_TESTDATA / rel, root / f"{i}.img")))
    yield out
    for fs in out.values():
        fs.close()


def _keyed(fs: Filesystem, name: str) -> KeyedNamespace:
    return KeyedNamespace(fs, KeyRing([MasterKey.from_hex(_known(name)["master_key"])]))


def _children(ns: KeyedNamespace, path: bytes) -> dict[int, ImageNode | Problem]:
    out: dict[int, ImageNode | Problem] = {}
    for item in ns.iter_children(ns.resolve(path)):
        assert isinstance(item, ImageNode), item
        out[item.inode.ino] = item
    return out


def test_f_bad_encryption_names(images: dict[str, Filesystem]) -> None:
    name = "e2fsprogs/f_bad_encryption"
    ns = _keyed(images[name], name)
    expected = {int(i): n.encode() for i, n in _known(name)["expected_names_in_/edir"].items()}
    kids = _children(ns, b"/edir")
    assert {ino: n.name for ino, n in kids.items() if isinstance(n, ImageNode)} == expected
    # Plaintext names can be typed, and lead to the same inodes.
    for ino, plain in expected.items():
        assert ns.resolve(b"/edir/" + plain).inode.ino == ino


def test_f_bad_encryption_symlink_and_broken_contexts(images: dict[str, Filesystem]) -> None:
    name = "e2fsprogs/f_bad_encryption"
    known = _known(name)
    ns = _keyed(images[name], name)
    for ino, target in known["expected_symlink_targets"].items():
        assert ns.symlink_target(images[name].inode(int(ino))) == target.encode()
    assert ns.resolve(b"/edir/encrypted_symlink").inode.ino == 15
    # Inodes 19-22: contexts 00, 28 x 00, 01, 02 -> unsupported or corrupt, never data.
    for path in (b"corrupt_xattr_1", b"corrupt_xattr_2", b"corrupt_xattr_3", b"corrupt_xattr_4"):
        with pytest.raises((CorruptError, UnsupportedError)):
            ns.read_plaintext(ns.resolve(b"/edir/" + path).inode)
    with pytest.raises(CorruptError, match="no encryption context"):
        ns.read_plaintext(ns.resolve(b"/edir/missing_xattr_file").inode)
    # /edir2: context rewritten to v2 identifier 'A' x 16: no key can match, so the
    # names stay no-key names and contents are refused with the identifier mismatch.
    edir2 = ns.resolve(b"/edir2")
    assert not ns.names_decrypted(edir2.inode)
    (child,) = ns.children(edir2)
    assert not ns.name_decrypted(child)
    with pytest.raises(KeyProblem, match="identifier 41414141414141414141414141414141"):
        ns.read_plaintext(child.inode)
    assert b"A" * 16 in ns.missing
    # /edir3: context version 3 is unknown.
    edir3 = ns.resolve(b"/edir3")
    with pytest.raises(UnsupportedError, match="version 3"):
        ns.require_cipher(edir3.inode)


def test_f_badsymlinks2(images: dict[str, Filesystem]) -> None:
    name = "e2fsprogs/f_badsymlinks2"
    known = _known(name)
    ns = _keyed(images[name], name)
    valid = 0
    for label, spec in known["expected_valid_targets"].items():
        path = label.split(" ")[0].encode()
        ino = int(label.split("(")[1].rstrip(")"))
        count = int(spec.split(" ")[0].split("*")[1])
        node = ns.resolve(path)
        assert node.inode.ino == ino
        assert ns.symlink_target(node.inode) == b"A" * count
        valid += 1
    assert valid == 8
    invalid = 0
    for top in (b"/encrypted", b"/extents_encrypted"):
        for bad in known["expected_invalid"]:
            node = ns.resolve(top + b"/" + bad.encode())
            assert node.inode.is_encrypted
            with pytest.raises(CorruptError) as info:
                ns.symlink_target(node.inode)
            assert f"inode {node.inode.ino}" in str(info.value)
            invalid += 1
    assert invalid == 14


def test_test_disk1(images: dict[str, Filesystem]) -> None:
    name = "ext4-view-rs/test_disk1"
    known = _known(name)
    ns = _keyed(images[name], name)
    kids = _children(ns, known["dir"]["path"].encode())
    assert {ino: n.name for ino, n in kids.items() if isinstance(n, ImageNode)} == {
        int(i): v.encode() for i, v in known["expected_names"].items()
    }
    for ino, want in known["expected_contents"].items():
        node = ns.resolve(known["dir"]["path"].encode() + b"/file")
        assert node.inode.ino == int(ino)
        assert node.inode.size == want["i_size"]
        assert ns.read_plaintext(node.inode) == want["plaintext"].encode()
    # The unencrypted rest reads as before, through the same keyed view.
    assert ns.read_plaintext(ns.resolve(b"/small_file").inode) == b"hello, world!"
