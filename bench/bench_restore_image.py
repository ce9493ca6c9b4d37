"""Key-less restore into an image, against ``e2image -ra`` of the source image.

Run as root (it makes an fscrypt-encrypted ext4 image with the running kernel)::

    sudo python bench/bench_restore_image.py [--data-mib 512] [--files 5000] [--workdir DIR]

Steps, all in one run so the ratios compare like with like on this machine:

1. Build an image with ``--data-mib`` MiB of file data in ``--files`` files (most small,
   a few large) under a v2-encrypted directory, written by the kernel with the key.
2. Back it up key-less into a local repository (not timed).
3. Baseline: ``e2image -ra SOURCE copy.img`` (copies all used blocks and metadata).
4. ``restore_to_image`` of the snapshot into a new image, then ``clone`` image to image.
5. Report the times and restore / e2image, clone / e2image.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))

import kernelfs
from cipherdump.engine.backup import BackupOptions, backup
from cipherdump.engine.restore_image import clone_image, restore_to_image
from cipherdump.ext4 import open_filesystem
from cipherdump.repo import KdfParams, LocalBackend, Repository

MiB = 1 << 20


def build(image: Path, data_mib: int, files: int) -> None:
    size = max(256, data_mib * 2 + 128)
    kernelfs.make_image(
        image, size, 4096, ("encrypt",), extra_mkfs_args=["-N", str(files * 2 + 1024)]
    )
    key = kernelfs.master_key_from_label("bench")
    rng = random.Random(1)
    big = data_mib * MiB // 2
    small_each = max(1, (data_mib * MiB - big) // max(1, files - 4))
    with kernelfs.mounted(image) as mnt:
        spec = kernelfs.add_key(mnt, key)
        enc = mnt / "enc"
        enc.mkdir()
        kernelfs.set_policy(enc, 2, kernelfs.MODE_AES_256_XTS, kernelfs.MODE_AES_256_CTS,
                            kernelfs.PAD_32, spec)  # fmt: skip
        for d in range(files // 500 + 1):
            (enc / f"d{d}").mkdir()
        for i in range(files - 4):
            n = rng.randint(small_each // 2, small_each * 3 // 2)
            (enc / f"d{i // 500}" / f"f{i}").write_bytes(os.urandom(n))
        for i in range(4):
            with open(enc / f"big{i}", "wb") as f:
                for _ in range(big // 4 // MiB):
                    f.write(os.urandom(MiB))
        os.sync()


def timed(fn: object, *args: object, **kw: object) -> float:
    t = time.perf_counter()
    fn(*args, **kw)  # type: ignore[operator]
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-mib", type=int, default=512)
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-restore-"))
    work.mkdir(parents=True, exist_ok=True)
    src = work / "src.img"
    build(src, args.data_mib, args.files)
    repo_dir = work / "repo"
    shutil.rmtree(repo_dir, ignore_errors=True)
    repo = Repository.init(LocalBackend.create(repo_dir), b"pw", kdf=KdfParams.insecure_for_tests())
    with open_filesystem(str(src)) as fs:
        snap_id = backup(repo, fs, BackupOptions(source_name=str(src))).snapshot_id
    snap = repo.load_snapshot(snap_id)
    for name in ("e2image.img", "restored.img", "cloned.img"):
        (work / name).unlink(missing_ok=True)
    os.sync()
    t_e2image = timed(subprocess.run, ["e2image", "-ra", str(src), str(work / "e2image.img")],
                      check=True)  # fmt: skip
    t_restore = timed(restore_to_image, repo, snap_id, snap, str(work / "restored.img"),
                      path=None, size=None)  # fmt: skip
    t_clone = timed(clone_image, str(src), str(work / "cloned.img"))
    report = {
        "data_mib": args.data_mib,
        "files": args.files,
        "e2image_s": round(t_e2image, 2),
        "restore_s": round(t_restore, 2),
        "clone_s": round(t_clone, 2),
        "restore_over_e2image": round(t_restore / t_e2image, 2),
        "clone_over_e2image": round(t_clone / t_e2image, 2),
    }
    print(json.dumps(report))
    repo.close()
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
