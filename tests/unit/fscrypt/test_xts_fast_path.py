"""The fast XTS path (the backend's context constructors) equals the public API path;
the modes said to be implemented are the ones with ciphers."""

from __future__ import annotations

import os

import pytest

from cipherdump.errors import UnsupportedError
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


@pytest.mark.parametrize("mode", list(Mode))
def test_modes_said_implemented_are_the_ones_with_ciphers(mode: Mode) -> None:
    """``context`` names what ``modes`` can run without importing it (a key-less backup
    reports what it could decrypt): the two must agree."""
    from cipherdump.fscrypt.context import contents_mode_implemented, filenames_mode_implemented
    from cipherdump.fscrypt.kdf import mode_spec

    try:
        key = os.urandom(mode_spec(mode).key_size)
    except UnsupportedError:  # SM4: no sizes, no cipher
        key = os.urandom(32)
    for implemented, build in (
        (contents_mode_implemented, modes.contents_cipher),
        (filenames_mode_implemented, modes.names_cipher),
    ):
        try:
            build(mode, key)
        except UnsupportedError:
            built = False
        else:
            built = True
        assert implemented(mode) is built, (mode, build.__name__)
