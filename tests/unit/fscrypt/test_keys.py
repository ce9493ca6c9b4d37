"""Master keys, key rings and the key hierarchy.

Expected values come from the kernel: the worked example of
``shared/docs/fscrypt-on-disk.md`` section 10 (taken from kernel-written vectors) and
``shared/testdata/known_keys.json`` (images made by e4crypt and fscrypt(1)).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from cipherdump.errors import KeyProblem
from cipherdump.fscrypt.context import EncryptionContext, Policy, decode_context
from cipherdump.fscrypt.inode_cipher import InodeCipher
from cipherdump.fscrypt.kdf import (
    derive_dirhash_key,
    derive_inode_hash_key,
    derive_mode_key,
    hashed_ino,
)
from cipherdump.fscrypt.keys import KeyRing, MasterKey, check_key, load_key_file
from fscrypt_vectors import SHARED_TESTDATA, Ext4Image, load_json
from shared_data import LOCAL_DATA

# Section 10 of the on-disk reference (values from 4k__v2_aes256xts_cts_pad32.json).
WORKED_KEY = (
    "b20145204df417669158112db3a72ca89454540df166685dca22ecc78c2d4006"
    "9ed98ae045b1c7851c5d068ae092936692fde18cce792da3ac50f083ab32da03"
)
WORKED_ID = "9af86f804d9b11223601e4dccd10af7f"
WORKED_DIR_NONCE = "29687f88c33e63fcfcbdf2a2f8e9791b"
WORKED_FILE_NONCE = "4d04687e317745a74eea53d3279df903"


def _v2_ctx(nonce_hex: str) -> EncryptionContext:
    """A context of the worked example's policy (v2, XTS/CTS, PAD_32) with ``nonce_hex``."""
    return decode_context(bytes.fromhex("0201040300000000" + WORKED_ID + nonce_hex))


def test_worked_example_v2() -> None:
    key = MasterKey.from_hex(WORKED_KEY)
    assert key.identifier.hex() == WORKED_ID
    dir_ctx = _v2_ctx(WORKED_DIR_NONCE)
    names_key = derive_mode_key(key, dir_ctx, 4)
    assert names_key.hex() == "f756b58df283bb1a16626127b54b035689007147e3acedc799f4cb96fd94f488"
    file_ctx = _v2_ctx(WORKED_FILE_NONCE)
    xts_key = derive_mode_key(key, file_ctx, 1)
    assert xts_key.hex() == (
        "d3a970fb384a4d0c77bcc3f29ea087b03a285132c13dbb33333b5ae25405e255"
        "5629db4b8f19cc8b4ebee5b915710c8f8538c616f8138c4721a0a53bcaf6b0e1"
    )
    names = InodeCipher(key, dir_ctx, ino=170, block_size=4096)
    ct = names.encrypt_name(b"tiny.txt")
    assert ct.hex() == "b93ba8302808abd5fc30203298c774dcddebc67d6aa8e5bb7a7c2c575e509f4c"
    assert names.decrypt_name(ct) == b"tiny.txt"
    contents = InodeCipher(key, file_ctx, ino=172, block_size=4096)
    unit = contents.encrypt_data_unit(0, b"hello, fscrypt\n".ljust(4096, b"\0"))
    assert unit[:16].hex() == "4397121f069a727201f35e9885e80119"


# The kernel-made fields the worked examples read, copied with their provenance.
WORKED = load_json(LOCAL_DATA / "kernel-worked-examples.json")


def test_worked_example_v1_per_file_key() -> None:
    data = WORKED["4k__v1_aes256xts_cts_pad32"]
    key = MasterKey.from_hex(data["master_key_hex"])
    tiny = data["objects"]["tiny.txt"]
    ctx = decode_context(bytes.fromhex(tiny["context"]["hex"]))
    assert ctx.raw.hex().startswith("01010403ea81eff6ff3bfd2c")
    assert derive_mode_key(key, ctx, 1).hex().startswith("4e666929eb6873d45c557540f06acfd4")
    unit = InodeCipher(key, ctx, ino=tiny["ino"], block_size=4096).encrypt_data_unit(
        0, b"hello, fscrypt\n".ljust(4096, b"\0")
    )
    assert unit[:16].hex() == "fd9f60e35235110c699692bef7524016"


def test_worked_example_lblk32() -> None:
    data = WORKED["4k-stable__v2_aes256xts_cts_pad16_lblk32"]
    key = MasterKey.from_hex(data["master_key_hex"])
    inode_hash_key = derive_inode_hash_key(key)
    assert inode_hash_key.hex() == "76fa4d127d5e62d0fa6620e9b204a58a"
    assert hashed_ino(inode_hash_key, 39) == 0xCEE56ABF
    assert hashed_ino(inode_hash_key, 37) == 0x2640F8BA
    ctx = decode_context(bytes.fromhex(data["dir"]["context"]["hex"]))
    uuid = bytes.fromhex(WORKED["4k-stable__image"]["uuid_hex"])
    assert InodeCipher(key, ctx, ino=39, block_size=4096, fs_uuid=uuid).hashed_ino == 0xCEE56ABF
    # Per-mode keys ignore the nonce: every inode of the policy shares them.
    other = decode_context(ctx.raw[:24] + bytes(16))
    assert derive_mode_key(key, ctx, 1, fs_uuid=uuid) == derive_mode_key(
        key, other, 1, fs_uuid=uuid
    )
    with pytest.raises(ValueError, match="UUID"):
        derive_mode_key(key, ctx, 1)


def test_dirhash_key_is_hkdf_context_5() -> None:
    key = MasterKey.from_hex(WORKED_KEY)
    ctx = _v2_ctx(WORKED_DIR_NONCE)
    assert derive_dirhash_key(key, ctx) == key.hkdf(5, ctx.nonce, 16)
    assert len(derive_dirhash_key(key, ctx)) == 16


# -- MasterKey -------------------------------------------------------------------------


def test_master_key_sizes() -> None:
    for size in (16, 32, 64):
        assert MasterKey(bytes(size)).size == size
    for size in (0, 15, 65):
        with pytest.raises(KeyProblem, match="16 to 64 bytes"):
            MasterKey(bytes(size))


def test_master_key_never_shows_bytes() -> None:
    raw = bytes.fromhex(WORKED_KEY)
    key = MasterKey(raw)
    for text in (repr(key), str(key), repr(KeyRing([key]))):
        assert WORKED_KEY[:16] not in text
        assert raw.hex()[-16:] not in text
    assert WORKED_ID in repr(key)
    with pytest.raises(TypeError):
        pickle.dumps(key)
    assert not hasattr(key, "__dict__")


def test_master_key_equality() -> None:
    assert MasterKey(bytes(32)) == MasterKey(bytes(32))
    assert MasterKey(bytes(32)) != MasterKey(b"\1" * 32)
    assert len({MasterKey(bytes(32)), MasterKey(bytes(32))}) == 1


def test_v1_key_too_short_for_mode() -> None:
    ctx = decode_context(b"\x01\x01\x04\x03" + bytes(8) + bytes(16))
    with pytest.raises(KeyProblem, match="needs 64"):
        derive_mode_key(MasterKey(bytes(32)), ctx, 1)


def test_v2_key_too_short_for_aes256() -> None:
    key = MasterKey(bytes(16))
    ctx = decode_context(b"\x02\x01\x04\x03" + bytes(4) + key.identifier + bytes(16))
    with pytest.raises(KeyProblem, match="needs 32"):
        derive_mode_key(key, ctx, 1)
    aes128 = decode_context(b"\x02\x05\x06\x03" + bytes(4) + key.identifier + bytes(16))
    assert len(derive_mode_key(key, aes128, 6)) == 16


# -- key files -------------------------------------------------------------------------


def test_load_key_file_raw_and_hex(tmp_path: Path) -> None:
    raw = bytes.fromhex(WORKED_KEY)
    (tmp_path / "raw.key").write_bytes(raw)
    (tmp_path / "hex.key").write_text(WORKED_KEY + "\n")
    (tmp_path / "upper.key").write_text(WORKED_KEY.upper())
    for name in ("raw.key", "hex.key", "upper.key"):
        assert load_key_file(tmp_path / name).identifier.hex() == WORKED_ID


def test_load_key_file_bad_sizes(tmp_path: Path) -> None:
    (tmp_path / "short").write_bytes(b"\x80" * 10)
    with pytest.raises(KeyProblem, match=r"holds 10 bytes \(raw\); a master key is 16 to 64"):
        load_key_file(tmp_path / "short")
    (tmp_path / "longhex").write_text("ab" * 65)
    with pytest.raises(KeyProblem, match=r"holds 65 bytes \(hex\)"):
        load_key_file(tmp_path / "longhex")
    with pytest.raises(KeyProblem, match="cannot read key file"):
        load_key_file(tmp_path / "missing")


# -- key rings -------------------------------------------------------------------------


def test_keyring_v2_by_identifier() -> None:
    key = MasterKey.from_hex(WORKED_KEY)
    ring = KeyRing([MasterKey(bytes(32)), key])
    policy = _v2_ctx("00" * 16).policy
    assert ring.key_for(policy) is key
    with pytest.raises(KeyProblem, match=f"no key for policy v2 identifier {WORKED_ID}"):
        KeyRing([MasterKey(bytes(32))]).key_for(policy)


def test_keyring_v1_by_convention_or_pairing() -> None:
    key = MasterKey(bytes(range(64)))
    by_convention = Policy(1, 1, 4, 3, key.descriptor)
    chosen = Policy(1, 1, 4, 3, b"12345678")
    ring = KeyRing([key])
    assert ring.key_for(by_convention) is key
    with pytest.raises(KeyProblem, match="no key for policy v1 descriptor 3132333435363738"):
        ring.key_for(chosen)
    ring.pair(b"12345678", key)
    assert ring.key_for(chosen) is key


def test_check_key_mismatch_message() -> None:
    key = MasterKey(bytes(32))
    policy = Policy(2, 1, 4, 3, bytes.fromhex(WORKED_ID))
    with pytest.raises(
        KeyProblem,
        match=f"key does not match: identifier {key.identifier.hex()}, policy wants {WORKED_ID}",
    ):
        check_key(key, policy)
    with pytest.raises(KeyProblem, match="key does not match"):
        InodeCipher(
            key, decode_context(policy.encode() + bytes(16)), ino=2, block_size=4096
        ).decrypt_name(bytes(16))


# -- known_keys.json (images made by e4crypt / fscrypt(1)) ----------------------------

KNOWN = SHARED_TESTDATA / "known_keys.json"


@pytest.mark.skipif(not KNOWN.is_file(), reason="known_keys.json absent")
def test_known_keys_specs() -> None:
    known = load_json(KNOWN)
    for name in ("e2fsprogs/f_bad_encryption", "e2fsprogs/f_badsymlinks2"):
        key = MasterKey.from_hex(known[name]["master_key"])
        assert key.descriptor.hex() == known[name]["policy"]["key_descriptor"]
    disk = known["ext4-view-rs/test_disk1"]
    key = MasterKey.from_hex(disk["master_key"])
    assert key.identifier.hex() == disk["policy"]["key_identifier"]
    assert key.matches(decode_context(bytes.fromhex(disk["dir"]["context"])).policy)


needs_images = pytest.mark.skipif(not KNOWN.is_file(), reason="needs known_keys.json")


@needs_images
def test_f_bad_encryption_edir_names(tmp_path: Path) -> None:
    known = load_json(KNOWN)["e2fsprogs/f_bad_encryption"]
    image = Ext4Image.unpack(
        SHARED_TESTDATA / "e2fsprogs/f_bad_encryption/image.gz", tmp_path, 4096
    )
    key = MasterKey.from_hex(known["master_key"])
    # v1 context: version 1, the policy's modes and flags, descriptor, then the nonce.
    ctx = decode_context(
        bytes([1, 1, 4, 0])
        + bytes.fromhex(known["policy"]["key_descriptor"] + known["dir_inode_12_edir_nonce"])
    )
    assert image.context(12) == ctx
    cipher = InodeCipher(key, ctx, ino=12, block_size=4096)
    names = {ino: cipher.decrypt_name(ct) for ino, ct in image.dirents(12)}
    expected = {int(i): n.encode() for i, n in known["expected_names_in_/edir"].items()}
    assert names == expected
    for ino, ct in image.dirents(12):
        assert cipher.encrypt_name(names[ino]) == ct


@needs_images
def test_test_disk1_name_and_contents(tmp_path: Path) -> None:
    known = load_json(KNOWN)["ext4-view-rs/test_disk1"]
    image = Ext4Image.unpack(SHARED_TESTDATA / "ext4-view-rs/test_disk1.bin.zst", tmp_path, 1024)
    key = MasterKey.from_hex(known["master_key"])
    dir_ctx = decode_context(bytes.fromhex(known["dir"]["context"]))
    names = InodeCipher(key, dir_ctx, ino=known["dir"]["ino"], block_size=1024)
    entries = image.dirents(known["dir"]["ino"])
    assert [(ino, names.decrypt_name(ct)) for ino, ct in entries] == [(11038, b"file")]
    want = known["expected_contents"]["11038"]
    file_ctx = decode_context(bytes.fromhex(want["context"]))
    contents = InodeCipher(key, file_ctx, ino=11038, block_size=1024)
    plain = contents.decrypt_data_units(0, image.file_blocks(11038))
    assert plain[: want["i_size"]] == want["plaintext"].encode()
    assert plain[want["i_size"] :] == bytes(len(plain) - want["i_size"])
