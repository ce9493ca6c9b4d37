"""Micro-benchmark of sealing blobs into packs on the local backend, per cipher and pack
version, as ratios to writing the same bytes unsealed through the same pack files.

Usage::

    python3 bench/bench_seal.py                    # 512 MiB of 32 KiB .. 1 MiB blobs
    python3 bench/bench_seal.py --mib 128 --rounds 5 --dir /dev/shm --json

Every variant writes the same blobs (incompressible, drawn from a 64 MiB random pool;
ids made beforehand, since a blob's keyed id costs the same whatever the format) into
32 MiB packs assembled in place by :meth:`LocalBackend.open_spool` and made durable by
a thread of their own, as the blob store does:

* ``cat``: the blobs written into the packs' files as they are; the baseline (copying
  into the writer's buffers and the writes themselves);
* ``chacha/v1``: ChaCha20-Poly1305, version-1 packs (BLAKE3 of every pack byte), the
  format of version-1 repositories;
* ``aes/v2``: AES-256-GCM, version-2 packs (BLAKE3 of header and trailer only), the
  format of new repositories;
* ``chacha/v2``, ``aes/v1``: the two changes one at a time;
* ``aes/v2 copy``: as ``aes/v2`` but each blob sealed into a new buffer and copied into
  the file, instead of sealed in place in the writer's buffer.

Figures are the best of ``--rounds`` alternated passes, per GiB of blobs: wall time,
CPU time of the thread that seals (the time a backup's walk loses), and CPU time of
the whole process (adding the writer's and committer's threads), with the ratios of
wall and sealing-thread CPU to ``cat``'s in the same run; and minor page faults.
``--dir`` picks the file system (default: the temporary directory); on tmpfs
``O_DIRECT`` is refused and the writer goes through the page cache.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

from cipherdump.repo import direct_file
from cipherdump.repo.backends.base import FileType, Handle
from cipherdump.repo.backends.local import LocalBackend, LocalSpool
from cipherdump.repo.crypto import Cipher, MasterKey
from cipherdump.repo.ids import BlobType, Id
from cipherdump.repo.pack import PackWriter

GIB = 1 << 30
PACK_SIZE = 32 << 20
POOL = 64 << 20
VARIANTS = ["cat", "chacha/v1", "aes/v2", "chacha/v2", "aes/v1", "aes/v2 copy"]


class Copied:
    """A spool file without :meth:`reserve`, so the pack writer seals each blob into a
    buffer of its own and writes (copies) it in."""

    def __init__(self, file: BinaryIO) -> None:
        self.write = file.write
        self.flush = file.flush
        self.seek = file.seek
        self.read = file.read
        self.close = file.close


def make_blobs(mib: int, seed: int) -> list[memoryview]:
    rng = random.Random(seed)
    pool = memoryview(os.urandom(POOL))
    blobs: list[memoryview] = []
    total = 0
    while total < mib << 20:
        size = rng.randrange(32 << 10, (1 << 20) + 1)
        at = rng.randrange(POOL - size)
        blobs.append(pool[at : at + size])
        total += size
    return blobs


def run_variant(
    variant: str, backend: LocalBackend, material: bytes, blobs: Sequence[memoryview], ids: list[Id]
) -> dict[str, float]:
    """Write every blob into packs as ``variant`` does; seconds per GiB."""
    name = variant.split()[0]
    cipher = Cipher.AES_256_GCM if name.startswith("aes") else Cipher.CHACHA20_POLY1305
    version = 1 if name.endswith("v1") else 2
    key = MasterKey(material, cipher)
    committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pack-commit")
    pending: list[Future[None]] = []

    def commit(spool: LocalSpool) -> None:
        spool.commit(Handle(FileType.PACK, secrets.token_hex(32)))

    total = sum(len(b) for b in blobs)
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0, c0, p0 = time.perf_counter(), time.thread_time(), time.process_time()
    spool: LocalSpool | None = None
    writer: PackWriter | None = None
    size = 0
    for blob, blob_id in zip(blobs, ids, strict=True):
        if spool is None:
            spool = backend.open_spool(FileType.PACK)
            if name != "cat":
                file = Copied(spool.file) if variant.endswith("copy") else spool.file
                writer = PackWriter(key, file=file, version=version)  # type: ignore[arg-type]
        if writer is not None:
            writer.add(BlobType.DATA, blob_id, blob, False)  # type: ignore[arg-type]
            size = writer.size
        else:
            spool.file.write(blob)
            size += len(blob)
        if size >= PACK_SIZE:
            if writer is not None:
                writer.finish()
                writer = None
            pending.append(committer.submit(commit, spool))
            spool, size = None, 0
    if spool is not None:
        if writer is not None:
            writer.finish()
        pending.append(committer.submit(commit, spool))
    for future in pending:
        future.result()
    t1, c1, p1 = time.perf_counter(), time.thread_time(), time.process_time()
    f1 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    committer.shutdown()
    return {
        "wall": (t1 - t0) / total * GIB,
        "cpu_sealing_thread": (c1 - c0) / total * GIB,
        "cpu_process": (p1 - p0) / total * GIB,
        "page_faults": (f1 - f0) / total * GIB,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.segment_mib:
        direct_file.SEGMENT = args.segment_mib << 20
    blobs = make_blobs(args.mib, args.seed)
    material = os.urandom(32)
    ids = [MasterKey(material).blob_id(b) for b in blobs]
    best: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-seal-", dir=args.dir) as tmp:
        root = Path(tmp) / "repo"
        backend = LocalBackend.create(root)
        for round_ in range(args.rounds):
            # Alternate the order so that no variant always runs first after a pause.
            order = VARIANTS if round_ % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                figures = run_variant(variant, backend, material, blobs, ids)
                shutil.rmtree(root / FileType.PACK.value)
                (root / FileType.PACK.value).mkdir(mode=0o700)
                old = best.setdefault(variant, figures)
                for k, v in figures.items():
                    old[k] = min(old[k], v)
    base = best["cat"]
    return {
        "mib": args.mib,
        "blobs": len(blobs),
        "segment_bytes": direct_file.SEGMENT,
        "segments": direct_file.SEGMENTS,
        "dir": args.dir or tempfile.gettempdir(),
        "rounds": args.rounds,
        "variants": {
            v: {
                **{k: round(x, 4) for k, x in f.items()},
                "wall_vs_cat": round(f["wall"] / base["wall"], 3),
                "cpu_vs_cat": round(f["cpu_sealing_thread"] / base["cpu_sealing_thread"], 3),
            }
            for v, f in best.items()
        },
    }


def show(result: dict[str, Any], echo: Callable[[str], None] = print) -> None:
    echo(
        f"{result['mib']} MiB in {result['blobs']} blobs, {result['segments']} segments of "
        f"{result['segment_bytes'] >> 20} MiB, in {result['dir']}; "
        f"s/GiB, best of {result['rounds']}"
    )
    echo(
        f"{'':>12} {'wall':>7} {'x cat':>6} {'sealing CPU':>12} {'x cat':>6} {'all CPU':>8}"
        f" {'faults/GiB':>11}"
    )
    for variant, f in result["variants"].items():
        echo(
            f"{variant:>12} {f['wall']:7.3f} {f['wall_vs_cat']:6.2f} "
            f"{f['cpu_sealing_thread']:12.3f} {f['cpu_vs_cat']:6.2f} {f['cpu_process']:8.3f}"
            f" {f['page_faults']:11.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=512, help="MiB of blobs (default 512).")
    parser.add_argument("--rounds", type=int, default=3, help="Alternated passes (default 3).")
    parser.add_argument("--dir", help="Where to write the packs (default: temporary dir).")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--segment-mib", type=int, default=0, help="Try another size of the writer's segments."
    )
    parser.add_argument("--json", action="store_true", help="Print one JSON object.")
    args = parser.parse_args()
    result = run(args)
    if args.json:
        print(json.dumps(result))
    else:
        show(result)


if __name__ == "__main__":
    main()
