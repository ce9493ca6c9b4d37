"""AES-CBC with ciphertext stealing, variant CS3 (Linux ``cts(cbc(aes))``).

fscrypt encrypts file names and symlink targets with it (modes 4 and 6).  CS3 always
swaps the last two blocks, even when the length is a multiple of 16; a single block is
plain CBC.  ``cryptography`` has no CTS mode, so it is built here on its CBC and ECB.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

__all__ = ["cts_cbc_decrypt", "cts_cbc_encrypt"]

_BLOCK = 16


def _split(length: int) -> tuple[int, int]:
    """(number of blocks n, bytes in the last block r) for a message of ``length``."""
    if length < _BLOCK:
        raise ValueError(f"CBC-CTS needs at least {_BLOCK} bytes, got {length}")
    n = -(-length // _BLOCK)
    return n, length - _BLOCK * (n - 1)


def cts_cbc_encrypt(key: bytes, iv: bytes, plaintext: bytes) -> bytes:
    n, r = _split(len(plaintext))
    padded = bytes(plaintext) + b"\0" * (_BLOCK - r)
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    c = enc.update(padded) + enc.finalize()
    if n == 1:
        return c
    # Zero padding makes ordinary CBC produce the stolen block: output C1..C(n-2), the
    # full last block, then the first r bytes of the second-to-last block.
    head = c[: _BLOCK * (n - 2)]
    return head + c[_BLOCK * (n - 1) :] + c[_BLOCK * (n - 2) : _BLOCK * (n - 2) + r]


def cts_cbc_decrypt(key: bytes, iv: bytes, ciphertext: bytes) -> bytes:
    n, r = _split(len(ciphertext))
    algorithm = algorithms.AES(key)
    if n == 1:
        dec = Cipher(algorithm, modes.CBC(iv)).decryptor()
        return dec.update(ciphertext) + dec.finalize()
    ct = bytes(ciphertext)
    full_last = ct[_BLOCK * (n - 2) : _BLOCK * (n - 1)]
    partial = ct[_BLOCK * (n - 1) :]
    ecb = Cipher(algorithm, modes.ECB()).decryptor()
    d = ecb.update(full_last) + ecb.finalize()
    # D = P(n) padded XOR C(n-1); the padding is zero, so D's tail is C(n-1)'s tail.
    c_prev = partial + d[r:]
    last_plain = bytes(a ^ b for a, b in zip(d[:r], partial, strict=True))
    dec = Cipher(algorithm, modes.CBC(iv)).decryptor()
    front = dec.update(ct[: _BLOCK * (n - 2)] + c_prev) + dec.finalize()
    return front + last_plain
