"""Key sources other than raw master keys: google/fscrypt protectors and e4crypt passphrases.

Ground truth:
* ``ext4-view-rs/test_disk1``: made by the fscrypt tool with a raw_key protector whose
  key is 32 x 0xab (``known_keys.json``); the image's own ``/.fscrypt`` must unwrap to the
  master key recorded there, which decrypts ``/encrypted_dir/file`` to ``encrypted!``.
* e2fsprogs' ``f_bad_encryption`` / ``f_badsymlinks2``: keys added by ``e4crypt add_key``
  with passphrases ``password`` and the empty one; the e4crypt KDF over each superblock's
  salt must give the master keys in ``known_keys.json`` (whose descriptors are on disk).
* The wire decoder and unwrapping are also checked on synthetic messages made here by an
  independent encoder (``_field``), including a wrong passphrase and hostile bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from cipherdump.engine.fscrypt_meta import metadata_from_image, passphrase_keys
from cipherdump.engine.views.image import Namespace
from cipherdump.engine.views.image_keyed import KeyedNamespace
from cipherdump.errors import CipherdumpError, CorruptError, KeyProblem
from cipherdump.ext4 import open_filesystem
from cipherdump.fscrypt.e4crypt import e4crypt_master_key
from cipherdump.fscrypt.keys import KeyRing, MasterKey
from cipherdump.fscrypt.protectors import (
    SOURCE_CUSTOM_PASSPHRASE,
    SOURCE_PAM_PASSPHRASE,
    SOURCE_RAW_KEY,
    FscryptMetadata,
    HashingCosts,
    decode_policy,
    decode_protector,
    passphrase_hash,
)
from cipherdump.ondisk.acl import (
    ACL_GROUP,
    ACL_GROUP_OBJ,
    ACL_MASK,
    ACL_OTHER,
    ACL_USER,
    ACL_USER_OBJ,
    decode_ext4_acl,
    encode_ext4_acl,
    ext4_acl_to_xattr,
)
from fscrypt_vectors import SHARED_TESTDATA, load_json, unpack

KNOWN = SHARED_TESTDATA / "known_keys.json"
needs_known = pytest.mark.skipif(not KNOWN.is_file(), reason="known_keys.json absent")


# -- an independent encoder for synthetic metadata ------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, value: int | bytes | str) -> bytes:
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _wrap(wrapping_key: bytes, secret: bytes, iv: bytes) -> bytes:
    okm = HKDF(hashes.SHA256(), 64, None, None).derive(wrapping_key)
    enc = Cipher(algorithms.AES(okm[:32]), modes.CTR(iv)).encryptor()
    ct = enc.update(secret) + enc.finalize()
    tag = hmac.new(okm[32:], iv + ct, "sha256").digest()
    return _field(1, iv) + _field(2, ct) + _field(3, tag)


def _descriptor(key: bytes) -> str:
    return hashlib.sha512(hashlib.sha512(key).digest()).digest()[:8].hex()


COSTS = HashingCosts(time=1, memory=64, parallelism=1)


def _synthetic(
    passphrase: bytes, source: int = SOURCE_CUSTOM_PASSPHRASE
) -> tuple[dict[str, bytes], dict[str, bytes], MasterKey]:
    protector_key = bytes(range(32))
    master = MasterKey(bytes(range(100, 164)))
    salt = b"s" * 16
    wrapping = passphrase_hash(passphrase, salt, COSTS)
    pdesc = _descriptor(protector_key)
    costs = _field(2, COSTS.time) + _field(3, COSTS.memory) + _field(4, COSTS.parallelism)
    protector = (
        _field(1, pdesc)
        + _field(2, source)
        + _field(3, "mine")
        + _field(6, 1000)
        + _field(4, costs)
        + _field(5, salt)
        + _field(7, _wrap(wrapping, protector_key, b"i" * 16))
    )
    wrapped_policy_key = _field(1, pdesc) + _field(2, _wrap(protector_key, master._raw, b"j" * 16))
    policy = _field(1, master.identifier.hex()) + _field(3, wrapped_policy_key)
    return {pdesc: protector}, {master.identifier.hex(): policy}, master


def test_synthetic_passphrase_protector() -> None:
    protectors, policies, master = _synthetic(b"correct horse")
    meta = FscryptMetadata.decode(protectors, policies)
    assert meta.keys_for_passphrase(b"correct horse") == [master]
    with pytest.raises(KeyProblem, match="wrong passphrase"):
        meta.keys_for_passphrase(b"Correct horse")
    with pytest.raises(KeyProblem, match="no raw-key protector"):
        meta.keys_for_raw_key(bytes(32))
    keys, _ = passphrase_keys(b"correct horse", meta)
    assert keys == [master]


def test_synthetic_login_protector() -> None:
    protectors, policies, master = _synthetic(b"login pw", SOURCE_PAM_PASSPHRASE)
    meta = FscryptMetadata.decode(protectors, policies)
    assert meta.keys_for_passphrase(b"login pw") == [master]
    with pytest.raises(KeyProblem, match="login passphrase of uid 1000"):
        meta.keys_for_passphrase(b"other")


def test_policy_key_must_match_its_descriptor() -> None:
    protectors, policies, _ = _synthetic(b"pw")
    # Same wrapped key under another policy name: the unwrapped key names itself.
    [(name, data)] = policies.items()
    other = data.replace(name.encode(), b"0" * 32)
    meta = FscryptMetadata.decode(protectors, {"0" * 32: other})
    with pytest.raises(KeyProblem, match="damaged metadata"):
        meta.keys_for_passphrase(b"pw")


def test_no_metadata_message() -> None:
    with pytest.raises(KeyProblem, match=r"no fscrypt metadata \(\.fscrypt"):
        FscryptMetadata().keys_for_passphrase(b"x")


def test_truncated_parallelism_of_old_metadata() -> None:
    assert HashingCosts(1, 2048, 0x104, truncation_fixed=False).lanes == 4
    assert HashingCosts(1, 2048, 0x100, truncation_fixed=False).lanes == 0x100
    assert HashingCosts(1, 2048, 0x104, truncation_fixed=True).lanes == 0x104


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_decoders_raise_only_our_errors(data: bytes) -> None:
    for decode in (decode_protector, decode_policy):
        with contextlib.suppress(CipherdumpError):
            decode(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=100))
def test_acl_decoder_raises_only_corrupt(data: bytes) -> None:
    with contextlib.suppress(CorruptError):
        ext4_acl_to_xattr(b"\x01\0\0\0" + data)


def test_hostile_costs_are_refused() -> None:
    with pytest.raises(CipherdumpError, match="Argon2id costs"):
        passphrase_hash(b"x", b"s" * 16, HashingCosts(1, 1 << 40, 1))


# -- ACLs -----------------------------------------------------------------------------------


def test_ext4_acl_to_xattr() -> None:
    entries = [
        (ACL_USER_OBJ, 6, None),
        (ACL_USER, 4, 1000),
        (ACL_GROUP_OBJ, 4, None),
        (ACL_GROUP, 5, 2000),
        (ACL_MASK, 7, None),
        (ACL_OTHER, 0, None),
    ]
    raw = encode_ext4_acl(entries)
    assert len(raw) == 4 + 4 * 4 + 2 * 8
    assert decode_ext4_acl(raw) == entries
    out = ext4_acl_to_xattr(raw)
    assert out[:4] == (2).to_bytes(4, "little")
    assert len(out) == 4 + 6 * 8
    assert out[4:12] == bytes.fromhex("01000600ffffffff")
    assert out[12:20] == bytes.fromhex("02000400e8030000")
    with pytest.raises(CorruptError):
        ext4_acl_to_xattr(b"\x02\0\0\0")
    with pytest.raises(CorruptError):
        ext4_acl_to_xattr(raw[:-2])


# -- known images ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def test_disk1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = SHARED_TESTDATA / "ext4-view-rs" / "test_disk1.bin.zst"
    if not src.is_file():
        pytest.skip("test_disk1 absent")
    return unpack(src, tmp_path_factory.mktemp("prot") / "disk1.img")


@needs_known
def test_test_disk1_raw_key_protector(test_disk1: Path) -> None:
    known = load_json(KNOWN)["ext4-view-rs/test_disk1"]
    with open_filesystem(str(test_disk1)) as fs:
        meta = metadata_from_image(Namespace(fs))
        assert set(meta.protectors) == {"26875e2ff5028181"}
        protector = meta.protectors["26875e2ff5028181"]
        assert protector.source == SOURCE_RAW_KEY
        pkey = meta.unlock_protector(protector, b"\xab" * 32)
        assert pkey is not None and pkey.hex() == known["protector_key"]
        # The protector descriptor is the double SHA-512 of the protector key.
        assert _descriptor(pkey) == "26875e2ff5028181"
        assert meta.unlock_protector(protector, b"\xac" * 32) is None
        keys = meta.keys_for_raw_key(b"\xab" * 32)
        assert keys == [MasterKey.from_hex(known["master_key"])]
        ns = KeyedNamespace(fs, KeyRing(keys))
        node = ns.resolve(b"/encrypted_dir/file")
        assert ns.read_plaintext(node.inode) == b"encrypted!"
        with pytest.raises(KeyProblem, match="wrong raw key"):
            meta.keys_for_raw_key(b"\x00" * 32)
        with pytest.raises(KeyProblem, match="no passphrase protector"):
            meta.keys_for_passphrase(b"anything")


@needs_known
@pytest.mark.parametrize(
    ("name", "passphrase"),
    [("e2fsprogs/f_bad_encryption", b"password"), ("e2fsprogs/f_badsymlinks2", b"")],
)
def test_e4crypt_passphrases(tmp_path: Path, name: str, passphrase: bytes) -> None:
    known = load_json(KNOWN)[name]
    img = unpack(SHARED_TESTDATA / known["image"], tmp_path / "img")
    with open_filesystem(str(img)) as fs:
        salt = fs.sb.s_encrypt_pw_salt
    assert salt.hex() == known["key_source"]["salt_uuid"].replace("-", "")
    key = e4crypt_master_key(passphrase, salt)
    assert key == MasterKey.from_hex(known["master_key"])
    assert key.descriptor.hex() == known["policy"]["key_descriptor"]
    # Through the passphrase path with the policies' descriptors known.
    descriptor = bytes.fromhex(known["policy"]["key_descriptor"])
    keys, _ = passphrase_keys(
        passphrase, FscryptMetadata(), e4crypt_salt=salt, v1_descriptors=frozenset({descriptor})
    )
    assert keys == [key]
    with pytest.raises(KeyProblem, match="wrong passphrase"):
        passphrase_keys(
            passphrase + b"x",
            FscryptMetadata(),
            e4crypt_salt=salt,
            v1_descriptors=frozenset({descriptor}),
        )


@needs_known
def test_standard_pbkdf2_is_not_e4crypt() -> None:
    known = load_json(KNOWN)["e2fsprogs/f_bad_encryption"]
    salt = bytes.fromhex(known["key_source"]["salt_uuid"].replace("-", ""))
    for iterations in (0xFFFF, 0xFFFE):
        std = hashlib.pbkdf2_hmac("sha512", b"password", salt, iterations, 64)
        assert MasterKey(std).descriptor.hex() != known["policy"]["key_descriptor"]


def test_e4crypt_needs_a_salt() -> None:
    with pytest.raises(KeyProblem, match="no passphrase salt"):
        e4crypt_master_key(b"x", bytes(16))


def test_no_secret_in_repr() -> None:
    protectors, policies, _ = _synthetic(b"pw")
    meta = FscryptMetadata.decode(protectors, policies)
    assert "pw" not in repr(meta.keys_for_passphrase(b"pw"))
    assert os.environ.get("CIPHERDUMP_FSCRYPT_PASSPHRASE") is None
