"""The fast XTS path (the backend's context constructors) equals the public API path."""

from __future__ import annotations

import os

import pytest

from cipherdump.fscrypt import modes
from cipherdump.fscrypt.context import Mode


def test_fast_xts_equals_public_api(monkeypatch: pytest.MonkeyPatch) -> None:
    cipher = modes.contents_cipher(Mode.AES_256_XTS, os.urandom(64))
    ivs = [i.to_bytes(8, "little") + bytes(8) for i in (0, 1, 7, 1 << 40)]
    data = os.urandom(4096 * len(ivs))
    fast_dec = cipher.crypt_units(ivs, data, 4096, encrypt=False)
    fast_enc = cipher.crypt_units(ivs, data, 4096, encrypt=True)
    monkeypatch.setattr(modes, "_FORCE_PUBLIC_API", True)
    assert cipher.crypt_units(ivs, data, 4096, encrypt=False) == fast_dec
    assert cipher.crypt_units(ivs, data, 4096, encrypt=True) == fast_enc
    assert cipher.crypt_units(ivs, fast_enc, 4096, encrypt=False) == data
