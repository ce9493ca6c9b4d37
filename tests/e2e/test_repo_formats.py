"""Format versions: the config's cipher, AES-256-GCM objects and tail-named packs in new
repositories, and version-1 repositories (ChaCha20-Poly1305, packs named by all their
bytes) still read, checked and written to (with ChaCha20-Poly1305, version-2 packs)."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import blake3
import pytest
from click.testing import CliRunner, Result
from cryptography.exceptions import InvalidTag
from hypothesis import given, settings
from hypothesis import strategies as st

from cipherdump.cli.main import cli
from cipherdump.errors import CipherdumpError, CorruptError, UnsupportedError
from cipherdump.repo import (
    BlobType,
    Id,
    KdfParams,
    LocalBackend,
    MemoryBackend,
    Node,
    Repository,
    Snapshot,
    Tree,
)
from cipherdump.repo.config import RepoConfig, decode_config, encode_config
from cipherdump.repo.crypto import BOOTSTRAP_CIPHER, Cipher, MasterKey
from cipherdump.repo.envelope import HEADER_SIZE, Magic, seal_file
from cipherdump.repo.pack import ENTRY, TRAILER_SIZE
from repo_formats import AEAD_OF_VERSION, AEADS, VERSIONS, init_repository, open_sealed
from shared_data import REPO

KDF = KdfParams.insecure_for_tests()
SAMPLE = REPO / "examples" / "sample.img"


def _fill(repo: Repository, rounds: int = 2) -> list[Id]:
    """Blobs, trees and a snapshot per round; returns the data blob ids."""
    ids: list[Id] = []
    for round_ in range(rounds):
        new = [repo.save_blob(BlobType.DATA, os.urandom(1500)) for _ in range(6)]
        ids += new
        leaf = repo.save_tree(Tree.of([Node(b"f", "file", content=tuple(new))]))
        root = repo.save_tree(Tree.of([Node(b"d", "dir", subtree=leaf, attrs={"r": round_})]))
        repo.save_snapshot(Snapshot(root, time_ns=round_ + 1, hostname="h"))
    return ids


def _pack_paths(root: Path) -> list[Path]:
    return sorted(p for p in (root / "data").rglob("*") if p.is_file())


# -- The config ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        RepoConfig(Id(bytes(range(32))), 8192),
        RepoConfig(Id(bytes(32)), 4096, Cipher.CHACHA20_POLY1305),
        RepoConfig(Id(b"\xff" * 32), 1 << 30, Cipher.CHACHA20_POLY1305, version=1),
    ],
)
def test_config_round_trip(config: RepoConfig) -> None:
    key = MasterKey.generate(Cipher.AES_256_GCM)  # whatever its cipher: see BOOTSTRAP_CIPHER
    data = encode_config(key, config)
    assert len(data) == 88
    assert decode_config(key, data) == config
    assert decode_config(MasterKey(key.material), data) == config


def test_config_version_2_layout() -> None:
    """§6, checked by opening the config with cryptography (ChaCha20-Poly1305, §4.2)."""
    key = MasterKey.generate()
    config = RepoConfig(Id(bytes(range(32))), 0x01020304, Cipher.AES_256_GCM)
    data = encode_config(key, config)
    header = data[:HEADER_SIZE]
    assert header == b"CDcf\x02\x00\x00\x00"
    plain = open_sealed("chacha20-poly1305", key.material, data[HEADER_SIZE:], header)
    assert plain == bytes(range(32)) + b"\x04\x03\x02\x01" + b"\x02" + bytes(3)
    with pytest.raises(InvalidTag):
        open_sealed("aes-256-gcm", key.material, data[HEADER_SIZE:], header)
    v1 = encode_config(key, RepoConfig(Id(bytes(32)), 4096, Cipher.CHACHA20_POLY1305, version=1))
    assert v1[:HEADER_SIZE] == b"CDcf\x01\x00\x00\x00"
    assert open_sealed("chacha20-poly1305", key.material, v1[8:], v1[:8])[32:] == bytes(
        [0, 16, 0, 0, 0, 0, 0, 0]
    )


def _config_file(key: MasterKey, version: int, body: bytes) -> bytes:
    return seal_file(key.with_cipher(BOOTSTRAP_CIPHER), Magic.CONFIG, body, version)


@pytest.mark.parametrize("cipher_id", [0, 3, 255])
def test_unknown_cipher_id_is_unsupported(cipher_id: int) -> None:
    key = MasterKey.generate()
    body = bytes(32) + struct.pack("<I", 4096) + bytes([cipher_id]) + bytes(3)
    with pytest.raises(UnsupportedError) as info:
        decode_config(key, _config_file(key, 2, body))
    assert str(info.value) == f"config: cipher id {cipher_id} is unknown to this program"


@pytest.mark.parametrize(
    ("version", "body", "error"),
    [
        (3, bytes(40), UnsupportedError),  # a newer config
        (0, bytes(40), CorruptError),
        (1, bytes(32) + struct.pack("<I", 4096) + b"\x02\x00\x00\x00", CorruptError),
        (2, bytes(32) + struct.pack("<I", 4096) + b"\x02\x00\x01\x00", CorruptError),
        (2, bytes(32) + struct.pack("<I", 4096) + b"\x02\x00\x00", CorruptError),
    ],
)
def test_bad_configs_are_refused(version: int, body: bytes, error: type[Exception]) -> None:
    key = MasterKey.generate()
    with pytest.raises(error):
        decode_config(key, _config_file(key, version, body))


_FUZZ_KEY = MasterKey(bytes(32))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 3), st.binary(max_size=48))
def test_any_authentic_config_body_decodes_or_raises_our_errors(version: int, body: bytes) -> None:
    data = _config_file(_FUZZ_KEY, version, body)
    try:
        config = decode_config(_FUZZ_KEY, data)
    except CipherdumpError:
        return
    assert encode_config(_FUZZ_KEY, config)[:HEADER_SIZE] == data[:HEADER_SIZE]
    assert decode_config(_FUZZ_KEY, encode_config(_FUZZ_KEY, config)) == config


def test_a_version_1_config_names_chacha_only() -> None:
    with pytest.raises(ValueError):
        RepoConfig(Id(bytes(32)), 4096, Cipher.AES_256_GCM, version=1)


def test_opening_a_repository_of_an_unknown_cipher_fails_in_one_line(tmp_path: Path) -> None:
    backend = LocalBackend.create(tmp_path / "repo")
    with Repository.init(backend, b"pw", kdf=KDF) as repo:
        key = repo._key
    body = os.urandom(32) + struct.pack("<I", 4096) + b"\x07" + bytes(3)
    (tmp_path / "repo" / "config").write_bytes(_config_file(key, 2, body))
    with pytest.raises(UnsupportedError) as info:
        Repository.open(backend, b"pw")
    assert "\n" not in str(info.value) and "cipher id 7" in str(info.value)
    result = _run("snapshots", "-r", str(tmp_path / "repo"))
    assert result.exit_code == 3
    assert result.output == "cipherdump: error: config: cipher id 7 is unknown to this program\n"


# -- What new repositories write ----------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_is_sealed_with_the_repositorys_cipher(tmp_path: Path, version: int) -> None:
    """Open every sealed object of each kind with cryptography directly: it opens with
    the format's AEAD under the derived per-message key, and not with the other one."""
    root = tmp_path / "repo"
    backend = LocalBackend.create(root)
    repo = init_repository(backend, b"pw", version=version, kdf=KDF, pack_size=4096)
    material = repo._key.material
    ids = _fill(repo)
    repo.flush()
    right = AEAD_OF_VERSION[version]
    (wrong,) = set(AEADS) - {right}

    def opens(sealed: bytes, aad: bytes) -> bytes:
        with pytest.raises(InvalidTag):
            open_sealed(wrong, material, sealed, aad)
        return open_sealed(right, material, sealed, aad)

    sealed_files = [root / "config"] + [
        p for kind in ("snapshots", "index", "locks") for p in (root / kind).iterdir()
    ]
    assert {p.relative_to(root).parts[0] for p in sealed_files} == {
        "config",
        "snapshots",
        "index",
        "locks",
    }
    for path in sealed_files:
        data = path.read_bytes()
        header = data[:HEADER_SIZE]
        assert header[4:6] == (b"\x02\x00" if path.name == "config" and version == 2 else b"\1\0")
        if path.name == "config":  # always the bootstrap cipher: it names the others
            open_sealed("chacha20-poly1305", material, data[HEADER_SIZE:], header)
        else:
            opens(data[HEADER_SIZE:], header)
    blobs = 0
    for path in _pack_paths(root):
        data = path.read_bytes()
        trailer = data[-TRAILER_SIZE:]
        assert trailer[4:10] == b"CDpk" + bytes([version, 0])
        (header_len,) = struct.unpack_from("<I", trailer)
        start = len(data) - TRAILER_SIZE - header_len
        entries = opens(data[start:-TRAILER_SIZE], trailer)
        for type_, flags, _, offset, length, raw_length, raw_id in ENTRY.iter_unpack(entries):
            aad = b"CDbl" + bytes([type_]) + raw_id
            body = opens(data[offset : offset + length], aad)
            assert len(body) == raw_length or flags == 1
            blobs += 1
        # §7: a version-2 pack is named by its tail, a version-1 pack by all its bytes.
        named = data[start:] if version == 2 else data
        assert path.name == blake3.blake3(named).hexdigest()
    assert blobs == len(ids) + 4
    repo.close()


def test_new_repositories_use_aes_gcm_and_version_2_packs() -> None:
    backend = MemoryBackend()
    with Repository.init(backend, b"pw", kdf=KDF) as repo:
        assert repo.config.cipher is Cipher.AES_256_GCM and repo.config.version == 2
        assert repo._key.cipher is Cipher.AES_256_GCM
    with Repository.open(backend, b"pw") as repo:
        assert repo._key.cipher is Cipher.AES_256_GCM


# -- Version-1 repositories -------------------------------------------------------------


def _pack_version(path: Path) -> int:
    data = path.read_bytes()
    assert data[-8:-4] == b"CDpk"
    version = data[-4]
    # §7: a version-1 pack is named by all its bytes, a version-2 pack by its tail.
    (header_len,) = struct.unpack_from("<I", data, len(data) - 12)
    named = data if version == 1 else data[-12 - header_len :]
    assert path.name == blake3.blake3(named).hexdigest()
    return version


def test_a_version_1_repository_is_read_checked_and_extended(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    backend = LocalBackend.create(root)
    with init_repository(backend, b"pw", version=1, kdf=KDF, pack_size=4096) as repo:
        first = _fill(repo)
    old_packs = set(_pack_paths(root))
    assert {_pack_version(p) for p in old_packs} == {1}
    with Repository.open(backend, b"pw") as repo:
        assert repo.config.version == 1 and repo._key.cipher is Cipher.CHACHA20_POLY1305
        assert [s.time_ns for _, s in repo.list_snapshots()] == [1, 2]
        assert all(len(repo.load_blob(BlobType.DATA, i)) == 1500 for i in first)
        report = repo.check(read_data=True)
        assert report.ok, report.text()
        more = _fill(repo, rounds=1)
    new_packs = set(_pack_paths(root)) - old_packs
    assert new_packs and {_pack_version(p) for p in new_packs} == {2}
    key = MasterKey(repo._key.material)
    for path in new_packs:  # still sealed with ChaCha20-Poly1305
        data = path.read_bytes()
        (header_len,) = struct.unpack_from("<I", data, len(data) - 12)
        start = len(data) - 12 - header_len
        open_sealed("chacha20-poly1305", key.material, data[start:-12], data[-12:])
    assert (root / "config").read_bytes()[4:6] == b"\x01\x00"
    with Repository.open(backend, b"pw") as repo:
        assert len(repo.list_snapshots()) == 3
        assert all(repo.has_blob(BlobType.DATA, i) for i in first + more)
        report = repo.check(read_data=True)
        assert report.ok, report.text()
        assert report.blobs_checked == len(first + more) + 6


def _run(*args: str) -> Result:
    env = {"CIPHERDUMP_INSECURE_TEST_KDF": "1", "CIPHERDUMP_PASSWORD": "pw"}
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_a_version_1_repository_takes_backups_through_the_cli(tmp_path: Path) -> None:
    path = tmp_path / "repo"
    with init_repository(LocalBackend.create(path), b"pw", version=1, kdf=KDF) as repo:
        _fill(repo, rounds=1)
    r = str(path)
    for _ in range(2):  # a full backup, then an incremental one on top of it
        result = _run("backup", "-r", r, str(SAMPLE), "--json")
        assert result.exit_code == 0, result.output
    summary = json.loads(result.output.splitlines()[-1])
    assert summary["files_unchanged"] == 11
    assert len(json.loads(_run("snapshots", "-r", r, "--json").output)) == 3
    check = _run("check", "-r", r, "--read-data")
    assert check.exit_code == 0, check.output
    assert {_pack_version(p) for p in _pack_paths(path)} == {1, 2}
