"""The repository key: sealing, keyed ids, key files and argon2id parameters."""

from __future__ import annotations

import os

import blake3
import pytest
from cryptography.exceptions import InvalidTag

from cipherdump.errors import CorruptError, IntegrityError, KeyProblem, UnsupportedError
from cipherdump.repo.crypto import (
    INSECURE_KDF_ENV,
    NONCE_SIZE,
    SEAL_OVERHEAD,
    Cipher,
    KdfParams,
    MasterKey,
    derive_wrapping_key,
)
from cipherdump.repo.keyfile import KEY_FILE_SIZE, encode_key_file, unwrap_key_file
from repo_formats import open_sealed

KDF = KdfParams.insecure_for_tests()


def test_seal_open_and_tamper() -> None:
    key = MasterKey.generate()
    sealed = key.seal(b"secret", b"aad")
    assert len(sealed) == 6 + SEAL_OVERHEAD
    assert key.open(sealed, b"aad", "x") == b"secret"
    assert key.seal(b"secret", b"aad") != sealed  # random nonces
    with pytest.raises(IntegrityError, match="x: authentication failed"):
        key.open(sealed, b"other aad", "x")
    for i in range(len(sealed)):
        damaged = bytearray(sealed)
        damaged[i] ^= 0x01
        with pytest.raises(IntegrityError):
            key.open(bytes(damaged), b"aad", "x")
    with pytest.raises(IntegrityError):
        MasterKey.generate().open(sealed, b"aad", "x")


@pytest.mark.parametrize(
    ("cipher", "aead", "other"),
    [
        (Cipher.CHACHA20_POLY1305, "chacha20-poly1305", "aes-256-gcm"),
        (Cipher.AES_256_GCM, "aes-256-gcm", "chacha20-poly1305"),
    ],
)
def test_sealing_follows_the_contract_for_each_cipher(
    cipher: Cipher, aead: str, other: str
) -> None:
    """§4.2, checked with cryptography and blake3 directly: the per-message key is
    BLAKE3-keyed(K_enc, N[0:16]) and the AEAD's nonce 00 00 00 00 || N[16:24]."""
    key = MasterKey(bytes(range(32)), cipher)
    for plaintext in (b"", b"secret", os.urandom(70_000)):
        sealed = key.seal(plaintext, b"aad")
        assert len(sealed) == len(plaintext) + SEAL_OVERHEAD
        assert open_sealed(aead, key.material, sealed, b"aad") == plaintext
        with pytest.raises(InvalidTag):
            open_sealed(other, key.material, sealed, b"aad")
        buffer = bytearray(len(sealed) + 2)
        key.seal_into(plaintext, b"aad", memoryview(buffer)[1:-1])
        assert buffer[0] == buffer[-1] == 0
        assert open_sealed(aead, key.material, bytes(buffer[1:-1]), b"aad") == plaintext
        assert key.open(bytes(buffer[1:-1]), b"aad", "x") == plaintext
    with pytest.raises(ValueError):
        key.seal_into(b"abc", b"aad", memoryview(bytearray(42)))
    with pytest.raises(IntegrityError):
        key.with_cipher(Cipher(3 - cipher)).open(key.seal(b"x", b"aad"), b"aad", "x")


def test_cipher_ids() -> None:
    assert [(c.name, c.value) for c in Cipher] == [
        ("CHACHA20_POLY1305", 1),
        ("AES_256_GCM", 2),
    ]
    assert Cipher.from_id(2, "config") is Cipher.AES_256_GCM
    with pytest.raises(UnsupportedError, match=r"^config: cipher id 0 is unknown"):
        Cipher.from_id(0, "config")
    key = MasterKey.generate()
    assert key.cipher is Cipher.CHACHA20_POLY1305  # what key files and the config use
    assert key.with_cipher(Cipher.CHACHA20_POLY1305) is key
    aes = key.with_cipher(Cipher.AES_256_GCM)
    assert aes.material == key.material and aes.blob_id(b"x") == key.blob_id(b"x")
    assert "AES_256_GCM" in repr(aes) and aes.material.hex() not in repr(aes)


def test_blob_ids_are_keyed() -> None:
    a, b = MasterKey(b"\x01" * 32), MasterKey(b"\x02" * 32)
    assert a.blob_id(b"chunk") == MasterKey(b"\x01" * 32).blob_id(b"chunk")
    assert a.blob_id(b"chunk") != b.blob_id(b"chunk")
    assert a.blob_id(b"chunk").raw != blake3.blake3(b"chunk").digest()


def test_key_file_round_trip_and_wrong_password() -> None:
    key = MasterKey.generate()
    data = encode_key_file(key, b"correct horse", KDF)
    assert len(data) == KEY_FILE_SIZE == 112
    assert data[:4] == b"CDky"
    assert unwrap_key_file(data, b"correct horse").material == key.material
    with pytest.raises(KeyProblem) as info:
        unwrap_key_file(data, b"wrong")
    assert "\n" not in str(info.value)


def test_key_file_params_are_authenticated() -> None:
    data = bytearray(encode_key_file(MasterKey.generate(), b"pw", KdfParams(1, 16, 1)))
    data[16] = 17  # memory_kib 16 -> 17: still valid parameters, different key
    with pytest.raises(KeyProblem):
        unwrap_key_file(bytes(data), b"pw")


def test_absurd_params_are_refused() -> None:
    data = bytearray(encode_key_file(MasterKey.generate(), b"pw", KDF))
    data[16:20] = (1 << 31).to_bytes(4, "little")  # 2 TiB of memory
    with pytest.raises(CorruptError):
        unwrap_key_file(bytes(data), b"pw")


def test_default_params_are_strong(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(INSECURE_KDF_ENV, raising=False)
    params = KdfParams.default()
    assert params.memory_kib >= 64 * 1024 and params.time_cost >= 3
    monkeypatch.setenv(INSECURE_KDF_ENV, "1")
    assert KdfParams.default() == KdfParams.insecure_for_tests()


# phc-winner-argon2 src/test.c, argon2id v=0x13, password "password", salt "somesalt",
# 32-byte output: (t, m KiB, p) -> tag.  The small-memory rows keep the test fast.
ARGON2ID_VECTORS = [
    (2, 256, 1, "9dfeb910e80bad0311fee20f9c0e2b12c17987b4cac90c2ef54d5b3021c68bfe"),
    (2, 256, 2, "6d093c501fd5999645e0ea3bf620d7b8be7fd2db59c20d9fff9539da2bf57037"),
]


@pytest.mark.parametrize(("t", "m", "p", "tag"), ARGON2ID_VECTORS)
def test_argon2id_reference_vectors(t: int, m: int, p: int, tag: str) -> None:
    got = derive_wrapping_key(b"password", b"somesalt", KdfParams(t, m, p))
    assert got.hex() == tag


def test_blake3_modes_match_official_vectors() -> None:
    # BLAKE3 test_vectors.json, empty input: keyed_hash and derive_key modes, which
    # are the two modes the repository uses (blob ids, subkeys).
    key = b"whats the Elvish word for friend"
    context = "BLAKE3 2019-12-27 16:29:52 test vectors context"
    assert blake3.blake3(b"", key=key).hexdigest() == (
        "92b2b75604ed3c761f9d6f62392c8a9227ad0ea3f09573e783f1498a4ed60d26"
    )
    assert blake3.blake3(b"", derive_key_context=context).hexdigest() == (
        "2cc39783c223154fea8dfb7c1b1660f2ac2dcbd1c1de8277b0b0dd39b7e50d7d"
    )


def test_sealed_objects_never_share_a_nonce_across_a_fork() -> None:
    """Nonces come from a pool drawn from the kernel a few thousand at a time; a
    forked backup worker must not inherit the rest of its parent's pool."""
    key = MasterKey.generate()
    parent_first = key.seal(b"x", b"")[:NONCE_SIZE]
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's result comes through the pipe
        try:
            os.write(write_end, b"".join(key.seal(b"x", b"")[:NONCE_SIZE] for _ in range(8)))
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    parent = [key.seal(b"x", b"")[:NONCE_SIZE] for _ in range(8)]
    child_nonces = {child[i : i + NONCE_SIZE] for i in range(0, len(child), NONCE_SIZE)}
    assert len(child_nonces) == 8
    assert not child_nonces & {parent_first, *parent}
