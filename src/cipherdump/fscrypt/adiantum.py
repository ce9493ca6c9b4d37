"""Adiantum (Crowley and Biggers, ToSC 2018) with XChaCha12, AES-256 and NH/Poly1305.

fscrypt mode 9 uses it for both contents and names, with a 32-byte tweak (the fscrypt
IV).  ``cryptography`` supplies AES-256 and Poly1305; it has no 12-round ChaCha and no
NH, which are written here on Python integers (this is slow, some milliseconds per
4 KiB data unit, but Adiantum is rare on the systems cipherdump reads).

The message is split as ``P_L || P_R`` with ``P_R`` the *last* 16 bytes.
"""

from __future__ import annotations

import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.poly1305 import Poly1305

__all__ = ["Adiantum", "hchacha12", "nh", "xchacha12_stream"]

_M32 = 0xFFFFFFFF
_M64 = 0xFFFFFFFFFFFFFFFF
_M128 = (1 << 128) - 1
_SIGMA = struct.unpack("<4I", b"expand 32-byte k")
_BLOCK = 16
_TWEAK_SIZE = 32
_NH_KEY_SIZE = 1072  # 1024-byte message unit + 3 extra passes x 16 bytes
_NH_CHUNK = 1024


_QUARTER_ROUNDS = (
    (0, 4, 8, 12),
    (1, 5, 9, 13),
    (2, 6, 10, 14),
    (3, 7, 11, 15),
    (0, 5, 10, 15),
    (1, 6, 11, 12),
    (2, 7, 8, 13),
    (3, 4, 9, 14),
)


def _chacha_rounds(state: list[int], rounds: int) -> list[int]:
    """Apply ``rounds`` ChaCha rounds to the 16-word state (no feed-forward)."""
    x = list(state)
    for _ in range(rounds // 2):
        # Four column quarter-rounds, then four diagonal ones.
        for a, b, c, d in _QUARTER_ROUNDS:
            xa = (x[a] + x[b]) & _M32
            xd = x[d] ^ xa
            xd = ((xd << 16) | (xd >> 16)) & _M32
            xc = (x[c] + xd) & _M32
            xb = x[b] ^ xc
            xb = ((xb << 12) | (xb >> 20)) & _M32
            xa = (xa + xb) & _M32
            xd ^= xa
            xd = ((xd << 8) | (xd >> 24)) & _M32
            xc = (xc + xd) & _M32
            xb ^= xc
            x[a] = xa
            x[b] = ((xb << 7) | (xb >> 25)) & _M32
            x[c] = xc
            x[d] = xd
    return x


def hchacha12(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha12: the 32-byte subkey XChaCha12 derives from ``key`` and a 16-byte nonce."""
    state = [*_SIGMA, *struct.unpack("<8I", key), *struct.unpack("<4I", nonce16)]
    out = _chacha_rounds(state, 12)
    return struct.pack("<8I", *out[0:4], *out[12:16])


def xchacha12_stream(key: bytes, nonce: bytes, length: int) -> bytes:
    """``length`` bytes of XChaCha12 keystream for a 32-byte key and 24-byte nonce.

    The block counter is 64-bit and starts at 0; the last 8 nonce bytes fill the other
    two state words (the original ChaCha layout, as Linux's ``xchacha12`` uses).
    """
    if len(key) != 32 or len(nonce) != 24:
        raise ValueError("XChaCha12 takes a 32-byte key and a 24-byte nonce")
    subkey = struct.unpack("<8I", hchacha12(key, nonce[:16]))
    n0, n1 = struct.unpack("<2I", nonce[16:24])
    blocks = []
    for counter in range(-(-length // 64)):
        state = [*_SIGMA, *subkey, counter & _M32, counter >> 32, n0, n1]
        mixed = _chacha_rounds(state, 12)
        blocks.append(
            struct.pack("<16I", *((a + b) & _M32 for a, b in zip(mixed, state, strict=True)))
        )
    return b"".join(blocks)[:length]


def _xor(data: bytes, stream: bytes) -> bytes:
    n = len(data)
    return (int.from_bytes(data, "little") ^ int.from_bytes(stream[:n], "little")).to_bytes(
        n, "little"
    )


def nh(key_words: tuple[int, ...], message: bytes) -> bytes:
    """NH as Adiantum uses it: 4 passes, stride 2, over at most 1024 bytes (multiple of 16).

    Returns the four 64-bit sums, little-endian (32 bytes).
    """
    if len(message) % _BLOCK or len(message) > _NH_CHUNK:
        raise ValueError("NH takes whole 16-byte units, at most 1024 bytes")
    k = key_words
    s0 = s1 = s2 = s3 = 0
    for j, (m0, m1, m2, m3) in enumerate(struct.iter_unpack("<4I", message)):
        b = 4 * j
        s0 += ((m0 + k[b]) & _M32) * ((m2 + k[b + 2]) & _M32)
        s0 += ((m1 + k[b + 1]) & _M32) * ((m3 + k[b + 3]) & _M32)
        s1 += ((m0 + k[b + 4]) & _M32) * ((m2 + k[b + 6]) & _M32)
        s1 += ((m1 + k[b + 5]) & _M32) * ((m3 + k[b + 7]) & _M32)
        s2 += ((m0 + k[b + 8]) & _M32) * ((m2 + k[b + 10]) & _M32)
        s2 += ((m1 + k[b + 9]) & _M32) * ((m3 + k[b + 11]) & _M32)
        s3 += ((m0 + k[b + 12]) & _M32) * ((m2 + k[b + 14]) & _M32)
        s3 += ((m1 + k[b + 13]) & _M32) * ((m3 + k[b + 15]) & _M32)
    return struct.pack("<4Q", s0 & _M64, s1 & _M64, s2 & _M64, s3 & _M64)


def _poly1305_core(r_key: bytes, message: bytes) -> int:
    """Poly1305 without the final ``+ s``: the kernel's ``poly1305_core_*`` over full blocks.

    With s = 0 the standard one-time MAC is exactly that value mod 2^128.
    """
    return int.from_bytes(Poly1305.generate_tag(r_key + b"\0" * 16, message), "little")


class Adiantum:
    """Adiantum-XChaCha12-AES keyed with 32 bytes; tweaks are 32 bytes."""

    __slots__ = ("_aes", "_header_key", "_key", "_message_key", "_nh_key")

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("Adiantum key must be 32 bytes")
        self._key = bytes(key)
        # Subkeys are XChaCha12 keystream under nonce 1 || 0^23: K_E, K_T, K_M, K_N.
        nonce = b"\x01" + b"\0" * 23
        derived = xchacha12_stream(self._key, nonce, 32 + 16 + 16 + _NH_KEY_SIZE)
        self._aes = algorithms.AES(derived[:32])
        self._header_key = derived[32:48]
        self._message_key = derived[48:64]
        self._nh_key = struct.unpack(f"<{_NH_KEY_SIZE // 4}I", derived[64:])

    def __repr__(self) -> str:
        return "Adiantum(<key hidden>)"

    def _hash(self, tweak: bytes, bulk: bytes) -> int:
        header = struct.pack("<QQ", len(bulk) * 8, 0) + tweak
        header_hash = _poly1305_core(self._header_key, header)
        padded = bulk + b"\0" * (-len(bulk) % _BLOCK)
        nh_out = b"".join(
            nh(self._nh_key, padded[i : i + _NH_CHUNK]) for i in range(0, len(padded), _NH_CHUNK)
        )
        message_hash = _poly1305_core(self._message_key, nh_out)
        return (header_hash + message_hash) & _M128

    def _stream_nonce(self, c_m: bytes) -> bytes:
        return c_m + b"\x01\0\0\0" + b"\0\0\0\0"

    def encrypt(self, tweak: bytes, plaintext: bytes) -> bytes:
        tweak, bulk, right = self._split(tweak, plaintext)
        p_m = (int.from_bytes(right, "little") + self._hash(tweak, bulk)) & _M128
        enc = Cipher(self._aes, modes.ECB()).encryptor()
        c_m = enc.update(p_m.to_bytes(_BLOCK, "little")) + enc.finalize()
        c_l = _xor(bulk, xchacha12_stream(self._key, self._stream_nonce(c_m), len(bulk)))
        c_r = (int.from_bytes(c_m, "little") - self._hash(tweak, c_l)) & _M128
        return c_l + c_r.to_bytes(_BLOCK, "little")

    def decrypt(self, tweak: bytes, ciphertext: bytes) -> bytes:
        tweak, c_l, c_r = self._split(tweak, ciphertext)
        c_m = ((int.from_bytes(c_r, "little") + self._hash(tweak, c_l)) & _M128).to_bytes(
            _BLOCK, "little"
        )
        p_l = _xor(c_l, xchacha12_stream(self._key, self._stream_nonce(c_m), len(c_l)))
        dec = Cipher(self._aes, modes.ECB()).decryptor()
        p_m = int.from_bytes(dec.update(c_m) + dec.finalize(), "little")
        p_r = (p_m - self._hash(tweak, p_l)) & _M128
        return p_l + p_r.to_bytes(_BLOCK, "little")

    @staticmethod
    def _split(tweak: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:
        if len(tweak) != _TWEAK_SIZE:
            raise ValueError(f"Adiantum tweak must be {_TWEAK_SIZE} bytes")
        if len(data) < _BLOCK:
            raise ValueError(f"Adiantum needs at least {_BLOCK} bytes, got {len(data)}")
        data = bytes(data)
        return bytes(tweak), data[:-_BLOCK], data[-_BLOCK:]
