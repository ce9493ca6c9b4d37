"""The fscrypt crypto layer against images written by Linux 6.1 (ESSIV, HCTR2, Adiantum,
casefold), from ``shared/testdata/kernel-vectors-6.1``.

Two sources of ground truth:

* The manifests alone: every no-key name the kernel listed embeds the name's
  ciphertext (or, above 149 bytes, its first 149 bytes and the SHA-256 of the rest)
  and, in casefolded directories, the stored SipHash dirhash.  So names, dirhashes and
  key identifiers are checked without reading the images.
* The images, through cipherdump's ext4 reader: a symlink's context and a file's
  data blocks.  (The keyed view over the same images is in test_keyed_61.py.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from cipherdump.fscrypt.context import EncryptionContext, decode_context
from cipherdump.fscrypt.inode_cipher import InodeCipher
from cipherdump.fscrypt.keys import MasterKey
from fscrypt_vectors import (
    KERNEL_VECTORS_61,
    Ext4Image,
    load_json,
    nokey_ciphertext,
)

IMAGES = ["essiv", "hctr2", "adiantum", "cf4k", "cf1k"]
pytestmark = pytest.mark.skipif(
    not KERNEL_VECTORS_61.is_dir(), reason="shared/testdata/kernel-vectors-6.1 absent"
)
CASEFOLD_FL = 0x40000000
NOKEY_PREFIX = 149


@dataclass(frozen=True)
class _Dir:
    path: str
    ino: int
    context: EncryptionContext
    casefold: bool
    master_key: MasterKey


def _manifest(name: str) -> dict[str, Any]:
    data: dict[str, Any] = load_json(KERNEL_VECTORS_61 / f"{name}.json")
    return data


def _block_size(m: dict[str, Any]) -> int:
    return int(m["superblock"]["Block size"])


def _uuid(m: dict[str, Any]) -> bytes:
    return bytes.fromhex(m["superblock"]["Filesystem UUID"].replace("-", ""))


def _context(policy_hex: str, nonce_hex: str) -> EncryptionContext:
    policy = bytes.fromhex(policy_hex)
    # The v1 policy struct has version byte 0 where the v1 context has 1.
    head = b"\x01" + policy[1:] if policy[0] == 0 else policy
    return decode_context(head + bytes.fromhex(nonce_hex))


def _name_bytes(entry: dict[str, Any]) -> bytes:
    if "path_hex" in entry:
        return bytes.fromhex(entry["path_hex"]).rsplit(b"/", 1)[-1]
    return str(entry["path"]).rsplit("/", 1)[-1].encode("utf-8")


def _encrypted_dirs(m: dict[str, Any]) -> dict[str, _Dir]:
    """Every encrypted directory by path; children inherit the top directory's policy."""
    dirs: dict[str, _Dir] = {}
    tops = {}
    for top in m["dirs"]:
        if not top.get("encrypted"):
            continue
        tops[top["path"]] = top
        dirs[top["path"]] = _Dir(
            top["path"],
            top["inode"],
            _context(top["policy"]["get_policy_ex_hex"], top["nonce_hex"]),
            bool(int(top["i_flags"], 16) & CASEFOLD_FL),
            MasterKey.from_hex(top["master_key_hex"]),
        )
    for entry in m["entries"]:
        if entry["type"] != "dir" or "nonce_hex" not in entry:
            continue
        top = tops.get(str(entry["path"]).split("/", 1)[0])
        if top is None:
            continue
        dirs[entry["path"]] = _Dir(
            entry["path"],
            entry["inode"],
            _context(top["policy"]["get_policy_ex_hex"], entry["nonce_hex"]),
            bool(int(entry["i_flags"], 16) & CASEFOLD_FL),
            MasterKey.from_hex(top["master_key_hex"]),
        )
    return dirs


def _cipher(m: dict[str, Any], d: _Dir, context: EncryptionContext, ino: int) -> InodeCipher:
    return InodeCipher(d.master_key, context, ino=ino, block_size=_block_size(m), fs_uuid=_uuid(m))


def _check_against_nokey(cipher_ct: bytes, nokey_raw_tail: bytes) -> None:
    """The kernel's no-key form embeds the ciphertext, or a prefix and a digest."""
    if len(cipher_ct) <= NOKEY_PREFIX:
        assert nokey_raw_tail == cipher_ct
    else:
        assert nokey_raw_tail[:NOKEY_PREFIX] == cipher_ct[:NOKEY_PREFIX]
        assert nokey_raw_tail[NOKEY_PREFIX:] == hashlib.sha256(cipher_ct[NOKEY_PREFIX:]).digest()


@pytest.mark.parametrize("image", IMAGES)
def test_key_specs(image: str) -> None:
    for top in _manifest(image)["dirs"]:
        if not top.get("encrypted"):
            continue
        key = MasterKey.from_hex(top["master_key_hex"])
        spec = top["key_spec"]
        got = key.identifier if spec["type"] == "identifier" else key.descriptor
        assert got.hex() == spec["hex"], top["path"]
        assert key.matches(_context(top["policy"]["get_policy_ex_hex"], top["nonce_hex"]).policy)


def _name_rows(m: dict[str, Any]) -> list[tuple[str, bytes, str]]:
    """(parent path, plaintext name, no-key name) for every listed entry."""
    rows = []
    for entry in m["entries"]:
        path = str(entry["path"])
        if "/" in path:
            rows.append((path.rsplit("/", 1)[0], _name_bytes(entry), entry["nokey_name"]))
    for parent, table in m.get("big_dirs", {}).items():
        for name, _ino, nokey, _index in table["entries"]:
            rows.append((parent, str(name).encode("utf-8"), nokey))
    return rows


@pytest.mark.parametrize("image", IMAGES)
def test_names_match_kernel_nokey_names(image: str) -> None:
    """Each name re-encrypts to the ciphertext inside the kernel's no-key name, and each
    embedded ciphertext (short form) decrypts back to the name."""
    m = _manifest(image)
    dirs = _encrypted_dirs(m)
    ciphers: dict[str, InodeCipher] = {}
    checked = casefold_checked = 0
    for parent, name, nokey in _name_rows(m):
        d = dirs.get(parent)
        if d is None:
            continue  # not an encrypted directory
        cipher = ciphers.get(parent)
        if cipher is None:
            cipher = ciphers[parent] = _cipher(m, d, d.context, d.ino)
        hash_, minor, tail = nokey_ciphertext(nokey)
        ct = cipher.encrypt_name(name)
        _check_against_nokey(ct, tail)
        if len(tail) == len(ct):
            assert cipher.decrypt_name(tail) == name
        checked += 1
        if d.casefold:
            # Casefold + encrypt: the no-key name carries the dirhash stored in the dirent.
            assert cipher.casefold_dirhash(name) == (hash_, minor), (parent, name)
            casefold_checked += 1
    assert checked > 0
    if image.startswith("cf"):
        assert casefold_checked > 3000


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Ext4Image]]:
    root = tmp_path_factory.mktemp("kernel61")
    opened = {
        name: Ext4Image.unpack(
            KERNEL_VECTORS_61 / f"{name}.img.zst", root, _block_size(_manifest(name))
        )
        for name in IMAGES
    }
    yield opened
    for image in opened.values():
        image.close()


@pytest.mark.parametrize("image", IMAGES)
def test_symlink_targets(image: str, images: dict[str, Ext4Image]) -> None:
    m = _manifest(image)
    dirs = _encrypted_dirs(m)
    checked = 0
    for entry in m["entries"]:
        if entry["type"] != "symlink" or "nokey_target" not in entry:
            continue
        d = dirs.get(str(entry["path"]).rsplit("/", 1)[0])
        if d is None:
            continue
        # A target is encrypted with the symlink's own context (nonce) and inode number.
        cipher = _cipher(m, d, images[image].context(entry["inode"]), entry["inode"])
        target = str(entry["target"]).encode("utf-8")
        hash_, minor, tail = nokey_ciphertext(entry["nokey_target"])
        assert (hash_, minor) == (0, 0)
        ct = cipher.encrypt_symlink_target(target)
        _check_against_nokey(ct, tail)
        if len(tail) == len(ct):
            assert cipher.decrypt_symlink_target(tail) == target
        checked += 1
    assert checked > 0


@pytest.mark.parametrize("image", IMAGES)
def test_file_contents(image: str, images: dict[str, Ext4Image]) -> None:
    m = _manifest(image)
    dirs = _encrypted_dirs(m)
    checked = 0
    seen: set[int] = set()
    for entry in m["entries"]:
        if entry["type"] != "file" or not entry["size"] or entry["inode"] in seen:
            continue
        d = dirs.get(str(entry["path"]).rsplit("/", 1)[0])
        if d is None:
            continue
        seen.add(entry["inode"])
        context = _context(d.context.policy.encode().hex(), entry["nonce_hex"])
        cipher = _cipher(m, d, context, entry["inode"])
        ct = images[image].file_blocks(entry["inode"])
        plain = cipher.decrypt_data_units(0, ct)
        assert hashlib.sha256(plain[: entry["size"]]).hexdigest() == entry["sha256"], entry["path"]
        assert plain[entry["size"] :] == b"\0" * (len(plain) - entry["size"])
        assert cipher.encrypt_data_units(0, plain) == ct
        checked += 1
    assert checked > 0
