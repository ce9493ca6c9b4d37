"""Decrypt 64 MiB of AES-256-XTS data units: InodeCipher vs. a plain cryptography loop.

Both run in the same process over the same bytes; the ratio (baseline time / our time,
higher is better, 1.0 = no overhead) is what to compare across machines.

    python bench/bench_decrypt.py [--mib 64] [--unit 4096] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import struct
import time

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from cipherdump.fscrypt.context import Policy, decode_context, encode_context
from cipherdump.fscrypt.inode_cipher import InodeCipher
from cipherdump.fscrypt.kdf import derive_mode_key
from cipherdump.fscrypt.keys import MasterKey


def baseline(key: bytes, data: bytes, unit: int) -> bytes:
    """The floor: one cryptography XTS context per data unit, nothing else."""
    algorithm = algorithms.AES(key)
    view = memoryview(data)
    out = []
    for i in range(len(data) // unit):
        tweak = struct.pack("<Q8x", i)
        ctx = Cipher(algorithm, modes.XTS(tweak)).decryptor()
        out.append(ctx.update(view[i * unit : (i + 1) * unit]))
    return b"".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--unit", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=4)
    args = parser.parse_args()

    master = MasterKey(os.urandom(64))
    policy = Policy(2, 1, 4, 3, master.identifier)
    context = decode_context(encode_context(policy, os.urandom(16)))
    cipher = InodeCipher(master, context, ino=12, block_size=args.unit)
    key = derive_mode_key(master, context, 1)
    data = os.urandom(args.mib << 20)

    best_base = best_ours = float("inf")
    for round_ in range(args.repeat):
        # Alternate the order so neither side always runs on a warmer cache.
        for side in ("base", "ours") if round_ % 2 == 0 else ("ours", "base"):
            t0 = time.perf_counter()
            if side == "base":
                expected = baseline(key, data, args.unit)
                best_base = min(best_base, time.perf_counter() - t0)
            else:
                got = cipher.decrypt_data_units(0, data)
                best_ours = min(best_ours, time.perf_counter() - t0)
        if got != expected:
            raise SystemExit("InodeCipher and the baseline disagree")

    mib = args.mib
    print(f"data: {mib} MiB in {args.unit}-byte AES-256-XTS data units, best of {args.repeat}")
    print(f"baseline (cryptography loop): {best_base:.3f} s  {mib / best_base:8.1f} MiB/s")
    print(f"InodeCipher.decrypt_data_units: {best_ours:.3f} s  {mib / best_ours:8.1f} MiB/s")
    print(f"ratio (baseline / ours): {best_base / best_ours:.2f}")


if __name__ == "__main__":
    main()
