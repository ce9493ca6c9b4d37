"""The cost of replaying a full journal in memory: opening a filesystem whose 128 MiB
journal is full of committed, uncheckpointed transactions, as a ratio to opening the
same filesystem clean.

Run as root (it makes the image with the running kernel)::

    sudo python bench/bench_journal.py [--journal-mib 128] [--runs 5] [--workdir DIR]

Steps, in one run so the ratio compares like with like on this machine:

1. ``mkfs.ext4 -J size=N`` (checksum v3, 64-bit tags: the default format) on a sparse
   image; mount it with ``data=journal`` (file data goes through the journal too) and
   writeback held off (``vm.dirty_expire_centisecs``, restored afterwards); write and
   fsync files until the live log fills most of the journal; copy the image file while
   it is mounted: the crash-consistent source.
2. The clean reference: the same copy after ``e2fsck -fy``.
3. Time ``Filesystem(FileSource(image))`` (open: superblock, descriptors, and for the
   source the three passes and the overlay), the median of ``--runs`` with a warm page
   cache, and once with a cold one (page cache dropped) for each.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))

import kernelfs
from cipherdump.blockio import FileSource
from cipherdump.ext4 import Filesystem

MiB = 1 << 20
_SYSCTLS = ("vm/dirty_expire_centisecs", "vm/dirty_writeback_centisecs")


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def make_source(work: Path, journal_mib: int) -> tuple[Path, Path]:
    image = kernelfs.make_image(
        work / "fs.img",
        4 * journal_mib + 256,
        features=(),
        extra_mkfs_args=("-J", f"size={journal_mib}"),
    )
    source, clean = work / "source.img", work / "clean.img"
    saved = {name: Path("/proc/sys", name).read_text() for name in _SYSCTLS}
    try:
        for name in _SYSCTLS:
            Path("/proc/sys", name).write_text("360000\n")
        with kernelfs.mounted(image, ("noatime", "data=journal")) as mnt:
            chunk = os.urandom(MiB)
            # jbd2 checkpoints when the log nears full; stop a little short of that.
            for i in range(journal_mib * 3 // 4):
                with open(mnt / f"f{i:05d}", "wb") as f:
                    f.write(chunk)
                    f.flush()
                    os.fsync(f.fileno())
            shutil.copyfile(image, source)
    finally:
        for name, value in saved.items():
            Path("/proc/sys", name).write_text(value)
    shutil.copyfile(source, clean)
    subprocess.run(["e2fsck", "-fy", str(clean)], capture_output=True, check=False)
    return source, clean


def open_seconds(image: Path) -> float:
    start = time.perf_counter()
    with Filesystem(FileSource(str(image)), owns_source=True):
        pass
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--journal-mib", type=int, default=128)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    kernelfs.require_kernel = lambda: None  # type: ignore[assignment]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-journal-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        source, clean = make_source(work, args.journal_mib)
        with Filesystem(FileSource(str(source)), owns_source=True) as fs:
            assert fs.journal is not None and fs.journal.replay is not None
            plan = fs.journal.replay
            print(
                f"journal {args.journal_mib} MiB: {plan.transactions} transactions,"
                f" {plan.replayed} block copies, {len(plan.overlay)} blocks replayed"
            )
        results = {}
        for label, image in (("clean", clean), ("replayed", source)):
            drop_caches()
            cold = open_seconds(image)
            warm = statistics.median(open_seconds(image) for _ in range(args.runs))
            results[label] = (cold, warm)
            print(
                f"{label:>8}: open {warm * 1e3:8.2f} ms warm (median of {args.runs}),"
                f" {cold * 1e3:8.2f} ms cold"
            )
        (c_cold, c_warm), (r_cold, r_warm) = results["clean"], results["replayed"]
        print(f"ratio replayed / clean: {r_warm / c_warm:.0f}x warm, {r_cold / c_cold:.0f}x cold")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
