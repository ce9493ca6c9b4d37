"""HCTR2 and POLYVAL against the HCTR2 authors' published vectors.

Provenance: ``tests/data/vectors/hctr2_vectors.json`` is transcribed unchanged from
google/hctr2 ``test_vectors/ours/`` (see its ``_provenance``), the source of the Linux
``aes_hctr2_tv_template``.  The kernel check (names in a Linux 6.1 HCTR2 directory) is
in ``test_fscrypt_61.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cipherdump.fscrypt.hctr2 import HCTR2, Polyval
from fscrypt_vectors import LOCAL_VECTORS, load_json

VECTORS: dict[str, Any] = load_json(LOCAL_VECTORS / "hctr2_vectors.json")


@pytest.mark.parametrize("vector", VECTORS["polyval"], ids=lambda v: f"{len(v['message']) // 2}B")
def test_polyval(vector: dict[str, str]) -> None:
    digest = Polyval(bytes.fromhex(vector["key"])).digest(bytes.fromhex(vector["message"]))
    assert digest.hex() == vector["hash"]


def test_polyval_rfc8452() -> None:
    # RFC 8452 appendix A: POLYVAL(H, X_1, X_2).
    h = bytes.fromhex("25629347589242761d31f826ba4b757b")
    x = bytes.fromhex("4f4f95668c83dfb6401762bb2d01a262d1a24ddd2721d006bbe45f20d3c9f362")
    assert Polyval(h).digest(x).hex() == "f7a3b47b846119fae5b7866cf5e5b77e"


@pytest.mark.parametrize(
    "vector",
    VECTORS["hctr2_aes256"],
    ids=lambda v: f"tweak{len(v['tweak']) // 2}-{len(v['plaintext']) // 2}B",
)
def test_hctr2_aes256(vector: dict[str, str]) -> None:
    cipher = HCTR2(bytes.fromhex(vector["key"]))
    tweak = bytes.fromhex(vector["tweak"])
    plaintext = bytes.fromhex(vector["plaintext"])
    ciphertext = cipher.encrypt(tweak, plaintext)
    assert ciphertext.hex() == vector["ciphertext"]
    assert cipher.decrypt(tweak, ciphertext) == plaintext


def test_covers_fscrypt_tweak_size() -> None:
    assert any(len(v["tweak"]) == 64 for v in VECTORS["hctr2_aes256"])


@given(st.binary(min_size=16, max_size=300), st.binary(min_size=32, max_size=32))
def test_round_trip(data: bytes, tweak: bytes) -> None:
    cipher = HCTR2(bytes(range(32)))
    assert cipher.decrypt(tweak, cipher.encrypt(tweak, data)) == data


def test_rejects_short_input_and_hides_key() -> None:
    cipher = HCTR2(bytes(32))
    with pytest.raises(ValueError):
        cipher.encrypt(bytes(32), bytes(15))
    assert "hidden" in repr(cipher)
