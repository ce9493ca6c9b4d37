"""HCTR2 (Crowley, Huckleberry, Biggers; eprint 2021/1441) with AES and POLYVAL.

fscrypt mode 10 (AES-256-HCTR2) encrypts file names with it, passing its 32-byte IV as
the tweak.  Names are short (at most 255 bytes), so POLYVAL is done on Python integers
with a per-key table of 16 x 256 entries; AES comes from ``cryptography``.

Notation follows the paper: the message is ``M || N`` with ``M`` the first 16 bytes.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["HCTR2", "Polyval"]

_BLOCK = 16
# POLYVAL's field: x^128 + x^127 + x^126 + x^121 + 1, bit i of an integer = coefficient of x^i.
_POLY = (1 << 128) | (1 << 127) | (1 << 126) | (1 << 121) | 1


def _times_x_inverse_128(value: int) -> int:
    """``value * x^-128 mod P`` (P has constant term 1, so x divides value + P when odd)."""
    for _ in range(128):
        if value & 1:
            value ^= _POLY
        value >>= 1
    return value


class Polyval:
    """POLYVAL (RFC 8452) keyed with the 16-byte ``h``."""

    __slots__ = ("_table",)

    def __init__(self, h: bytes) -> None:
        if len(h) != _BLOCK:
            raise ValueError("POLYVAL key must be 16 bytes")
        # dot(a, h) = a * h * x^-128 is linear in a, so it is the XOR over a's bytes of a
        # table lookup: table[k][b] = (b * x^(8k)) * h * x^-128.
        g = _times_x_inverse_128(int.from_bytes(h, "little"))
        basis: list[int] = []
        for _ in range(128):
            basis.append(g)
            g <<= 1
            if g >> 128:
                g ^= _POLY
        table: list[list[int]] = []
        for k in range(16):
            row = [0] * 256
            for b in range(1, 256):
                low = b & -b
                row[b] = row[b ^ low] ^ basis[8 * k + low.bit_length() - 1]
            table.append(row)
        self._table = table

    def _dot(self, a: int) -> int:
        t = self._table
        acc = 0
        for k in range(16):
            acc ^= t[k][(a >> (8 * k)) & 0xFF]
        return acc

    def update(self, state: int, blocks: bytes) -> int:
        """Absorb whole 16-byte ``blocks`` into ``state``."""
        if len(blocks) % _BLOCK:
            raise ValueError("POLYVAL input must be whole blocks")
        for i in range(0, len(blocks), _BLOCK):
            state = self._dot(state ^ int.from_bytes(blocks[i : i + _BLOCK], "little"))
        return state

    def digest(self, message: bytes) -> bytes:
        return self.update(0, message).to_bytes(_BLOCK, "little")


class HCTR2:
    """HCTR2 over AES (16-, 24- or 32-byte key; fscrypt uses AES-256)."""

    __slots__ = ("_algorithm", "_l", "_polyval")

    def __init__(self, key: bytes) -> None:
        self._algorithm = algorithms.AES(bytes(key))
        ecb = Cipher(self._algorithm, modes.ECB()).encryptor()
        both = ecb.update(b"\0" * _BLOCK + b"\x01" + b"\0" * (_BLOCK - 1)) + ecb.finalize()
        self._polyval = Polyval(both[:_BLOCK])  # h = E_K(0)
        self._l = int.from_bytes(both[_BLOCK:], "little")  # L = E_K(1)

    def __repr__(self) -> str:
        return "HCTR2(<key hidden>)"

    def _hash(self, tweak: bytes, n: bytes) -> int:
        remainder = len(n) % _BLOCK
        # The first block encodes the tweak length in bits, times two, plus 2 or 3
        # depending on whether N needs padding, so different shapes never collide.
        length_block = (len(tweak) * 8 * 2 + 2 + (1 if remainder else 0)).to_bytes(_BLOCK, "little")
        tweak_padded = tweak + b"\0" * (-len(tweak) % _BLOCK)
        if remainder:
            n = n + b"\x01" + b"\0" * (_BLOCK - remainder - 1)
        return self._polyval.update(0, length_block + tweak_padded + n)

    def _xctr(self, s: int, length: int) -> bytes:
        if length == 0:
            return b""
        count = -(-length // _BLOCK)
        counters = b"".join((s ^ i).to_bytes(_BLOCK, "little") for i in range(1, count + 1))
        ecb = Cipher(self._algorithm, modes.ECB()).encryptor()
        return (ecb.update(counters) + ecb.finalize())[:length]

    def _crypt(self, tweak: bytes, data: bytes, *, encrypt: bool) -> bytes:
        if len(data) < _BLOCK:
            raise ValueError(f"HCTR2 needs at least {_BLOCK} bytes, got {len(data)}")
        tweak = bytes(tweak)
        first = int.from_bytes(data[:_BLOCK], "little")
        rest = bytes(data[_BLOCK:])
        mm = first ^ self._hash(tweak, rest)
        ecb = Cipher(self._algorithm, modes.ECB())
        ctx = ecb.encryptor() if encrypt else ecb.decryptor()
        uu = int.from_bytes(ctx.update(mm.to_bytes(_BLOCK, "little")) + ctx.finalize(), "little")
        s = mm ^ uu ^ self._l
        stream = self._xctr(s, len(rest))
        out_rest = (int.from_bytes(rest, "little") ^ int.from_bytes(stream, "little")).to_bytes(
            len(rest), "little"
        )
        out_first = uu ^ self._hash(tweak, out_rest)
        return out_first.to_bytes(_BLOCK, "little") + out_rest

    def encrypt(self, tweak: bytes, plaintext: bytes) -> bytes:
        return self._crypt(tweak, plaintext, encrypt=True)

    def decrypt(self, tweak: bytes, ciphertext: bytes) -> bytes:
        return self._crypt(tweak, ciphertext, encrypt=False)
