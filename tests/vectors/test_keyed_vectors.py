"""The keyed view against every kernel vector in ``shared/testdata/kernel-vectors``.

The vectors hold no images, only what the kernel wrote for each object (name
ciphertext, contexts, stored symlink bytes).  So the directories and symlinks here are
small stand-ins carrying exactly those bytes, and the test runs them through
:class:`KeyedNamespace`: every name and target must come out as the plaintext the
kernel was given, and a wrong key must raise KeyProblem rather than show anything.
(The crypto layer alone is checked on the same vectors in test_fscrypt_crypto.py.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from cipherdump.engine.views.image_keyed import KeyedNamespace
from cipherdump.errors import CipherdumpError, KeyProblem
from cipherdump.ext4 import Filesystem, Inode
from cipherdump.ext4.directory import Entry
from cipherdump.fscrypt.keys import KeyRing, MasterKey
from fscrypt_vectors import image_of, load_json, scenario_files

SCENARIOS = [p for p in scenario_files() if load_json(p).get("objects")]
pytestmark = pytest.mark.skipif(not SCENARIOS, reason="shared/testdata/kernel-vectors absent")


@dataclass
class _Sb:
    s_hash_seed: bytes = bytes(16)
    s_flags: int = 0


@dataclass
class _Fs:
    block_size: int
    uuid: bytes
    sb: _Sb


@dataclass
class _Dir:
    """Just enough of an Inode for names: number, context, entries."""

    ino: int
    encryption_context: bytes
    _entries: list[Entry]
    is_encrypted: bool = True
    is_casefolded: bool = False

    def entries(self) -> list[Entry]:
        return self._entries

    def entry_named(self, name: bytes) -> Entry | None:
        return next((e for e in self._entries if e.name == name), None)


@dataclass
class _Link:
    ino: int
    encryption_context: bytes
    stored: bytes
    size: int
    is_encrypted: bool = True

    def symlink_storage(self) -> bytes:
        return self.stored


def _ns(data: dict[str, Any], path: Path, ring: KeyRing, **kw: Any) -> KeyedNamespace:
    image = image_of(path)
    fs = _Fs(image["block_size"], bytes.fromhex(image["uuid_hex"]), _Sb())
    return KeyedNamespace(cast(Filesystem, fs), ring, **kw)


def _plain(entry: dict[str, Any]) -> bytes:
    if "plaintext_hex" in entry:
        return bytes.fromhex(entry["plaintext_hex"])
    return str(entry["plaintext"]).encode("utf-8")


def _dirs(data: dict[str, Any]) -> list[tuple[_Dir, list[bytes]]]:
    out = []
    sets = [(data["dir"], data["entries"])]
    for key in ("subdir", "htree"):
        sub = data.get(key)
        if sub and sub.get("entries"):
            sets.append((sub, sub["entries"]))
    for d, entries in sets:
        ents = [Entry(bytes.fromhex(e["ciphertext_hex"]), int(e.get("ino", 0)), 1) for e in entries]
        ctx = bytes.fromhex(d["context"]["hex"])
        out.append((_Dir(d["ino"], ctx, ents), [_plain(e) for e in entries]))
    return out


def _links(data: dict[str, Any]) -> list[tuple[_Link, bytes]]:
    out = []
    for obj in data["objects"].values():
        link = obj.get("symlink")
        if link:
            stored = bytes.fromhex(link["stored_hex_i_size_plus_1"])
            ctx = bytes.fromhex(obj["context"]["hex"])
            out.append(
                (_Link(obj["ino"], ctx, stored, len(stored) - 1), str(link["target"]).encode())
            )
    return out


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_names_and_targets_through_keyed_view(path: Path) -> None:
    data = load_json(path)
    key = MasterKey.from_hex(data["master_key_hex"])
    ns = _ns(data, path, KeyRing([key]))
    names = 0
    for directory, plains in _dirs(data):
        inode = cast(Inode, directory)
        assert ns.names_decrypted(inode)
        for entry, plain in zip(directory.entries(), plains, strict=True):
            assert ns.display_name(inode, entry) == plain
            names += 1
    for link, target in _links(data):
        assert ns.symlink_target(cast(Inode, link)) == target
    assert names > 0
    assert key.identifier in ns.used
    assert not ns.missing


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_without_matching_key_names_stay_nokey(path: Path) -> None:
    """A key of another policy matches nothing: no plaintext, and the miss is recorded."""
    data = load_json(path)
    other = MasterKey(bytes(range(64)))
    ns = _ns(data, path, KeyRing([other]))
    directory, _ = _dirs(data)[0]
    assert not ns.names_decrypted(cast(Inode, directory))
    with pytest.raises(KeyProblem, match="mismatch"):
        ns.require_cipher(cast(Inode, directory))
    assert ns.missing


V1 = [p for p in SCENARIOS if load_json(p)["policy"]["version"] == 1]


@pytest.mark.parametrize("path", V1, ids=[p.stem for p in V1])
def test_v1_wrong_key_paired_by_hand_never_shows_garbage(path: Path) -> None:
    """A v1 descriptor paired with the wrong key (which nothing can verify up front)."""
    data = load_json(path)
    descriptor = bytes.fromhex(data["key_descriptor_hex"])
    ring = KeyRing()
    ring.pair(descriptor, MasterKey(b"\x5a" * 64))
    ns = _ns(data, path, ring, unverified_descriptors=[descriptor])
    for directory, _plains in _dirs(data):
        for entry in directory.entries():
            with pytest.raises(KeyProblem, match="wrong key"):
                ns.display_name(cast(Inode, directory), entry)
    for link, _target in _links(data):
        with pytest.raises(CipherdumpError):
            ns.symlink_target(cast(Inode, link))


@pytest.mark.parametrize("path", V1[:1], ids=[p.stem for p in V1[:1]])
def test_v1_right_key_paired_by_hand_is_confirmed(path: Path) -> None:
    data = load_json(path)
    key = MasterKey.from_hex(data["master_key_hex"])
    descriptor = bytes.fromhex(data["key_descriptor_hex"])
    ring = KeyRing()
    ring.pair(descriptor, key)
    ns = _ns(data, path, ring, unverified_descriptors=[descriptor])
    directory, plains = _dirs(data)[0]
    got = [ns.display_name(cast(Inode, directory), e) for e in directory.entries()]
    assert got == plains
