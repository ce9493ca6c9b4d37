"""SipHash-2-4 (Aumasson and Bernstein), as the kernel's ``siphash()`` computes it.

fscrypt uses it twice: the IV_INO_LBLK_32 inode-number hash and the keyed dirhash of
casefolded encrypted directories.  The 16-byte key is read as two little-endian u64.
"""

from __future__ import annotations

import struct

__all__ = ["siphash24"]

_MASK = 0xFFFFFFFFFFFFFFFF


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _MASK


def siphash24(key: bytes, message: bytes) -> int:
    """The 64-bit SipHash-2-4 of ``message`` under the 16-byte ``key``."""
    if len(key) != 16:
        raise ValueError("SipHash key must be 16 bytes")
    k0, k1 = struct.unpack("<QQ", key)
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573

    def rounds(n: int) -> None:
        nonlocal v0, v1, v2, v3
        for _ in range(n):
            v0 = (v0 + v1) & _MASK
            v1 = _rotl(v1, 13) ^ v0
            v0 = _rotl(v0, 32)
            v2 = (v2 + v3) & _MASK
            v3 = _rotl(v3, 16) ^ v2
            v0 = (v0 + v3) & _MASK
            v3 = _rotl(v3, 21) ^ v0
            v2 = (v2 + v1) & _MASK
            v1 = _rotl(v1, 17) ^ v2
            v2 = _rotl(v2, 32)

    full = len(message) - len(message) % 8
    for (m,) in struct.iter_unpack("<Q", message[:full]):
        v3 ^= m
        rounds(2)
        v0 ^= m
    # The last word carries the remaining bytes and the message length in its top byte.
    tail = message[full:] + b"\0" * (7 - len(message) % 8)
    last = int.from_bytes(tail, "little") | ((len(message) & 0xFF) << 56)
    v3 ^= last
    rounds(2)
    v0 ^= last
    v2 ^= 0xFF
    rounds(4)
    result: int = v0 ^ v1 ^ v2 ^ v3
    return result
