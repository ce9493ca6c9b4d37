"""Adiantum, XChaCha12 and NH against the Adiantum authors' published vectors.

Provenance: ``tests/data/vectors/adiantum_vectors.json`` is transcribed unchanged from
google/adiantum ``test_vectors/ours/`` (see its ``_provenance``), the source of the Linux
``adiantum_xchacha12_aes_tv_template``.  The kernel check (names, symlink targets and
contents written by Linux 6.1, including DIRECT_KEY) is in ``test_fscrypt_61.py``.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cipherdump.fscrypt.adiantum import Adiantum, nh, xchacha12_stream
from fscrypt_vectors import LOCAL_VECTORS, load_json

VECTORS: dict[str, Any] = load_json(LOCAL_VECTORS / "adiantum_vectors.json")


@pytest.mark.parametrize(
    "vector",
    VECTORS["adiantum_xchacha12_aes256"],
    ids=lambda v: f"{len(v['plaintext']) // 2}B",
)
def test_adiantum(vector: dict[str, str]) -> None:
    cipher = Adiantum(bytes.fromhex(vector["key"]))
    tweak = bytes.fromhex(vector["tweak"])
    plaintext = bytes.fromhex(vector["plaintext"])
    ciphertext = cipher.encrypt(tweak, plaintext)
    assert ciphertext.hex() == vector["ciphertext"]
    assert cipher.decrypt(tweak, ciphertext) == plaintext


@pytest.mark.parametrize("vector", VECTORS["xchacha12"], ids=lambda v: v["nonce"][:8])
def test_xchacha12_keystream(vector: dict[str, Any]) -> None:
    key = bytes.fromhex(vector["key"])
    nonce = bytes.fromhex(vector["nonce"])
    for test in vector["tests"]:
        # "offset" counts 64-byte blocks.
        start = 64 * test["input"]["offset"]
        expected = bytes.fromhex(test["result_hex"])
        assert xchacha12_stream(key, nonce, start + len(expected))[start:] == expected


@pytest.mark.parametrize("vector", VECTORS["nh"], ids=lambda v: f"{len(v['message']) // 2}B")
def test_nh(vector: dict[str, str]) -> None:
    key = struct.unpack("<268I", bytes.fromhex(vector["key"]))
    assert nh(key, bytes.fromhex(vector["message"])).hex() == vector["hash"]


@settings(max_examples=25, deadline=None)
@given(st.binary(min_size=16, max_size=2100), st.binary(min_size=32, max_size=32))
def test_round_trip(data: bytes, tweak: bytes) -> None:
    cipher = Adiantum(bytes(range(32)))
    assert cipher.decrypt(tweak, cipher.encrypt(tweak, data)) == data


def test_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError):
        Adiantum(bytes(16))
    cipher = Adiantum(bytes(32))
    with pytest.raises(ValueError):
        cipher.encrypt(bytes(16), bytes(32))
    with pytest.raises(ValueError):
        cipher.encrypt(bytes(32), bytes(15))
    assert "hidden" in repr(cipher)
