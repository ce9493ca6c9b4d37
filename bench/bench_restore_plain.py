"""Keyed restore to plaintext against ``tar -x`` of the same plaintext tree.

Run as root (it makes an fscrypt-encrypted ext4 image with the running kernel)::

    sudo python bench/bench_restore_plain.py [--data-mib 512] [--files 5000] [--workdir DIR]
    sudo python bench/bench_restore_plain.py --small     # 64 MiB in 1 000 files

Steps, all in one run so the ratio compares like with like on this machine:

1. Build an image with ``--data-mib`` MiB of file data in ``--files`` files (most a few
   KiB, a few large) under one v2-encrypted directory, written through the kernel with
   the key; while the key is there, ``tar -cf`` the plaintext directory (the baseline's
   input: the very tree the restore must produce).
2. A key-less ``cipherdump backup`` of the unmounted image.
3. Baseline: drop the page cache, ``tar -xf`` the archive into an empty directory, sync.
4. Drop the page cache, ``cipherdump restore --key --target`` the snapshot's encrypted
   directory into another empty directory, sync.
5. Check both trees hold the same bytes, and report restore / tar.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))

import kernelfs

MiB = 1 << 20
CLI = [sys.executable, "-c", "from cipherdump.cli.main import main; main()"]
ENV = {**os.environ, "CIPHERDUMP_INSECURE_TEST_KDF": "1", "CIPHERDUMP_PASSWORD": "bench"}


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def timed(argv: list[str], **kw: object) -> float:
    drop_caches()
    start = time.perf_counter()
    subprocess.run(argv, check=True, env=ENV, stdout=subprocess.DEVNULL, **kw)  # type: ignore[call-overload]
    os.sync()
    return time.perf_counter() - start


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every regular file (the bytes, not just the stat)."""
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def build(work: Path, data_mib: int, files: int) -> tuple[Path, Path, bytes]:
    image = work / "fs.img"
    size_mib = max(128, data_mib * 2 + files // 8 + 64)
    kernelfs.make_image(
        image, size_mib, 4096, ("encrypt",), extra_mkfs_args=["-N", str(files + 4096)]
    )
    key = kernelfs.master_key_from_label("bench restore key")
    rng = random.Random(7)
    large = max(1, files // 500)
    large_size = data_mib * MiB // 2 // large
    small_total = data_mib * MiB - large * large_size
    small_size = max(1, small_total // max(1, files - large))
    tarball = work / "plain.tar"
    with kernelfs.mounted(image) as mnt:
        spec = kernelfs.add_key(mnt, key)
        enc = mnt / "enc"
        enc.mkdir()
        kernelfs.set_policy(enc, 2, kernelfs.MODE_AES_256_XTS, kernelfs.MODE_AES_256_CTS,
                            kernelfs.PAD_32, spec)  # fmt: skip
        for i in range(files):
            d = enc / f"d{i % 64:02d}"
            d.mkdir(exist_ok=True)
            n = large_size if i < large else rng.randint(small_size // 2, small_size * 3 // 2)
            (d / f"f{i:06d}").write_bytes(rng.randbytes(n))
        os.sync()
        subprocess.run(["tar", "-cf", str(tarball), "-C", str(enc), "."], check=True)
        kernelfs.remove_key(mnt, spec)
    return image, tarball, key


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-mib", type=int, default=512)
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--small", action="store_true", help="64 MiB in 1 000 files")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.small:
        args.data_mib, args.files = 64, 1000
    work = args.workdir or Path(os.environ.get("TMPDIR", "/tmp")) / "cipherdump-bench-restore"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        image, tarball, key = build(work, args.data_mib, args.files)
        keyfile = work / "key"
        keyfile.write_text(key.hex())
        repo = work / "repo"
        subprocess.run(
            [*CLI, "init", "-r", str(repo)], check=True, env=ENV, stdout=subprocess.DEVNULL
        )
        subprocess.run([*CLI, "backup", str(image), "-r", str(repo)], check=True, env=ENV,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        by_tar, by_restore = work / "by-tar", work / "by-restore"
        by_tar.mkdir()
        t_tar = timed(["tar", "-xf", str(tarball), "-C", str(by_tar)])
        t_restore = timed([*CLI, "restore", "latest", "-r", str(repo), "--target", str(by_restore),
                           "--key", str(keyfile), "--path", "/enc"])  # fmt: skip
        t_again = timed([*CLI, "restore", "latest", "-r", str(repo), "--target", str(by_restore),
                         "--key", str(keyfile), "--path", "/enc"])  # fmt: skip
        same = tree_digest(by_tar) == tree_digest(by_restore)
        result = {
            "data_mib": args.data_mib,
            "files": args.files,
            "tar_x_s": round(t_tar, 3),
            "restore_s": round(t_restore, 3),
            "restore_over_tar": round(t_restore / t_tar, 2),
            "rerun_s": round(t_again, 3),
            "trees_equal": same,
        }
        if args.json:
            print(json.dumps(result))
        else:
            for k, v in result.items():
                print(f"{k:>18}: {v}")
    finally:
        kernelfs.cleanup_leftovers()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
