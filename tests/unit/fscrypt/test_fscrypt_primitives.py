"""SipHash-2-4, casefolding, CBC-CTS and InodeCipher edge cases.

SipHash vectors are from the SipHash paper (Aumasson and Bernstein, appendix A: key
00..0f, messages 00..(n-1)).  Kernel checks of the same code are in
``test_fscrypt_crypto.py`` (IV_INO_LBLK_32 inode hashes, CTS names) and
``test_fscrypt_61.py`` (casefold dirhashes).
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cipherdump.errors import CorruptError, UnsupportedError
from cipherdump.fscrypt.context import Policy, decode_context, encode_context
from cipherdump.fscrypt.cts import cts_cbc_decrypt, cts_cbc_encrypt
from cipherdump.fscrypt.dirhash import casefold, casefold_dirhash
from cipherdump.fscrypt.inode_cipher import InodeCipher, encrypted_name_size
from cipherdump.fscrypt.kdf import derive_mode_key
from cipherdump.fscrypt.keys import MasterKey
from cipherdump.fscrypt.siphash import siphash24

SIPHASH_KEY = bytes(range(16))
SIPHASH_PAPER = {
    0: 0x726FDB47DD0E0E31,
    1: 0x74F839C593DC67FD,
    7: 0xAB0200F58B01D137,
    8: 0x93F5F5799A932462,
    15: 0xA129CA6149BE45E5,
    63: 0x958A324CEB064572,
}


@pytest.mark.parametrize(("length", "expected"), SIPHASH_PAPER.items())
def test_siphash_paper_vectors(length: int, expected: int) -> None:
    assert siphash24(SIPHASH_KEY, bytes(range(length))) == expected


def test_casefold() -> None:
    assert casefold(b"Readme.TXT") == b"readme.txt"
    assert casefold("Straße".encode()) == b"strasse"
    # NFC, NFD and the Angstrom sign all fold to the same decomposed form.
    forms = ["Ångström", "A\u030angstro\u0308m", "\u212bngstr\u00f6m"]
    assert len({casefold(f.encode()) for f in forms}) == 1
    assert casefold("ΣΊΣΥΦΟΣ".encode()) == casefold("Σίσυφος".encode())
    assert casefold(b"bad\xff\xfeName") == b"bad\xff\xfeName"


def test_casefold_dirhash_eof_fixup() -> None:
    # Find a name whose major hash would be the htree EOF value, to check the fix-up.
    key = bytes(16)
    for h, minor in (casefold_dirhash(key, b"%d" % i) for i in range(2000)):
        assert h & 1 == 0
        assert h != 0xFFFFFFFE
        assert 0 <= minor <= 0xFFFFFFFF


@given(st.binary(min_size=16, max_size=300))
def test_cts_round_trip(data: bytes) -> None:
    key, iv = bytes(range(32)), bytes(range(16, 32))
    ct = cts_cbc_encrypt(key, iv, data)
    assert len(ct) == len(data)
    assert cts_cbc_decrypt(key, iv, ct) == data


def test_cts_swaps_last_blocks_even_when_aligned() -> None:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key, iv, data = bytes(32), bytes(16), bytes(range(32))
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    cbc = enc.update(data) + enc.finalize()
    assert cts_cbc_encrypt(key, iv, data) == cbc[16:] + cbc[:16]
    assert cts_cbc_encrypt(key, iv, data[:16]) == cbc[:16]


def _cipher(policy: Policy, *, ino: int = 12, fs_uuid: bytes | None = bytes(16)) -> InodeCipher:
    """An InodeCipher for ``policy`` under a fixed key (v2 key spec filled in)."""
    key = MasterKey(bytes(range(64)))
    if policy.version == 2:
        policy = dataclasses.replace(policy, key_spec=key.identifier)
    ctx = decode_context(encode_context(policy, bytes(range(16))))
    return InodeCipher(key, ctx, ino=ino, block_size=4096, fs_uuid=fs_uuid)


def test_name_padding_rule() -> None:
    p = Policy(2, 1, 4, 0, bytes(16))
    assert encrypted_name_size(p, 1) == 16
    assert encrypted_name_size(Policy(2, 1, 4, 3, bytes(16)), 17) == 32
    assert encrypted_name_size(Policy(2, 1, 4, 3, bytes(16)), 250) == 255
    cipher = _cipher(Policy(2, 1, 4, 3, bytes(16)))
    assert len(cipher.encrypt_name(b"x" * 255)) == 255
    assert len(cipher.encrypt_symlink_target(b"x" * 4093)) == 4093
    with pytest.raises(ValueError):
        cipher.encrypt_name(b"x" * 256)
    with pytest.raises(ValueError):
        cipher.encrypt_name(b"a\0b")


@pytest.mark.parametrize(
    "policy",
    [
        Policy(2, 1, 4, 3, b""),
        Policy(2, 1, 4, 0x0B, b""),
        Policy(2, 1, 4, 0x13, b""),
        Policy(2, 1, 10, 3, b""),
        Policy(2, 5, 6, 2, b""),
        Policy(2, 9, 9, 3, b""),
        Policy(2, 9, 9, 7, b""),
        Policy(1, 9, 9, 7, b"12345678"),
        Policy(1, 5, 6, 0, b"12345678"),
        Policy(2, 1, 4, 3, b"", 9),
    ],
    ids=lambda p: p.describe().split(" identifier")[0].split(" descriptor")[0],
)
def test_round_trips_for_every_mode(policy: Policy) -> None:
    cipher = _cipher(policy)
    du = cipher.data_unit_size
    data = bytes(range(256)) * (3 * du // 256)
    ct = cipher.encrypt_data_units(5, data)
    assert ct != data
    assert cipher.decrypt_data_units(5, ct) == data
    assert cipher.decrypt_data_unit(6, ct[du : 2 * du]) == data[du : 2 * du]
    for name in (b"a", b"sixteen_chars_ok", "naïve-日本語".encode(), b"n" * 255):
        assert cipher.decrypt_name(cipher.encrypt_name(name)) == name


def test_input_errors() -> None:
    cipher = _cipher(Policy(2, 1, 4, 3, b""))
    with pytest.raises(CorruptError, match="shorter than 16"):
        cipher.decrypt_name(bytes(15))
    with pytest.raises(ValueError, match="data unit"):
        cipher.decrypt_data_unit(0, bytes(100))
    with pytest.raises(ValueError, match="whole number"):
        cipher.decrypt_data_units(0, bytes(4097))
    with pytest.raises(CorruptError, match="empty"):
        cipher.decrypt_symlink_target(_all_nul_ciphertext(cipher))
    lblk64 = _cipher(Policy(2, 1, 4, 0x0B, b""), ino=1 << 33)
    with pytest.raises(UnsupportedError, match="32-bit"):
        lblk64.decrypt_data_unit(0, bytes(4096))
    with pytest.raises(ValueError, match="UUID"):
        _cipher(Policy(2, 1, 4, 0x0B, b""), fs_uuid=None)
    with pytest.raises(CorruptError, match="DIRECT_KEY"):
        _cipher(Policy(2, 1, 4, 0x07, b"")).decrypt_data_unit(0, bytes(4096))
    with pytest.raises(UnsupportedError, match="SM4"):
        _cipher(Policy(2, 7, 8, 3, b"")).decrypt_data_unit(0, bytes(4096))
    assert "key" not in repr(cipher).lower().replace("identifier", "")


def _all_nul_ciphertext(cipher: InodeCipher) -> bytes:
    """Ciphertext that decrypts to 16 NUL bytes (default policy: the name IV is zero)."""
    key = derive_mode_key(MasterKey(bytes(range(64))), cipher.context, 4)
    return cts_cbc_encrypt(key, bytes(16), bytes(16))
