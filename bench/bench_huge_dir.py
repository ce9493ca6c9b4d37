"""Time and peak memory of backing up one huge directory, full and incremental.

For each size, an unencrypted ext4 image is made by the kernel with one directory of
that many empty files (one of them with a few bytes); it is backed up (``--jobs 1``:
one directory goes to one process anyway) into a fresh repository, then one file is
added and it is backed up again.  Each backup is a ``cipherdump`` process whose peak
RSS (``VmHWM``, read by the process itself at exit: ``ru_maxrss`` would carry the
forking parent's over exec) is reported beside that of a process that only imports
the command line (the interpreter and its wheels), and its time beside ``cat`` of the
image (the page cache is warm for both).

    python3 bench/bench_huge_dir.py --entries 10000 100000 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))

import kernelfs

PASSWORD = "pw"
# Runs the command line and prints its peak RSS (KiB) on the last line of stderr.
CHILD = """
import sys
from cipherdump.cli.main import main
code = 0
try:
    main()
except SystemExit as exit:
    code = exit.code if isinstance(exit.code, int) else 1
finally:
    hwm = next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM"))
    print("VmHWM", hwm, file=sys.stderr)
sys.exit(code)
"""


def run_cli(args: list[str], repo: Path) -> tuple[float, int]:
    """(seconds, peak RSS in KiB) of one ``cipherdump`` run, which must succeed."""
    env = dict(os.environ, CIPHERDUMP_PASSWORD=PASSWORD, CIPHERDUMP_REPOSITORY=str(repo))
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *args], env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"cipherdump {' '.join(args)} failed:\n{done.stderr}")
    last = done.stderr.strip().splitlines()[-1].split()
    return seconds, int(last[1])


def make_huge(image: Path, entries: int) -> None:
    """An image with ``/huge`` of ``entries`` files, as tests/kernel/test_backup_huge_dir."""
    size_mib = 64 + entries * 512 // (1 << 20)
    kernelfs.make_image(
        image, size_mib, features=("^has_journal",), extra_mkfs_args=("-N", str(entries + 1000))
    )
    with kernelfs.mounted(image) as mnt:
        huge = mnt / "huge"
        huge.mkdir()
        fd = os.open(huge, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for i in range(entries):
                os.close(os.open(f"f{i:07d}", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
        finally:
            os.close(fd)
        (huge / "f0000001").write_bytes(b"some data")
        os.sync()


def add_one(image: Path) -> None:
    with kernelfs.mounted(image) as mnt:
        (mnt / "huge" / "one-more").write_bytes(b"added")
        os.sync()


def cat_seconds(image: Path) -> float:
    start = time.perf_counter()
    with open(image, "rb") as f:
        while f.read(1 << 20):
            pass
    return time.perf_counter() - start


def measure(work: Path, entries: int) -> dict[str, float | int]:
    image = work / f"huge-{entries}.img"
    repo = work / f"repo-{entries}"
    make_huge(image, entries)
    run_cli(["init"], repo)
    _, base_kib = run_cli(["--help"], repo)
    cat_seconds(image)  # warm the page cache, as the backups find it
    cat_s = cat_seconds(image)
    full_s, full_kib = run_cli(["backup", "--jobs", "1", str(image)], repo)
    add_one(image)
    cat_seconds(image)
    incr_s, incr_kib = run_cli(["backup", "--jobs", "1", str(image)], repo)
    image.unlink()
    return {
        "entries": entries,
        "cat_s": cat_s,
        "full_s": full_s,
        "incremental_s": incr_s,
        "baseline_rss_mib": base_kib / 1024,
        "full_rss_mib": full_kib / 1024,
        "incremental_rss_mib": incr_kib / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--json", action="store_true", help="one JSON object a size")
    parser.add_argument("--dir", type=Path, default=None, help="where images go (a tmp dir)")
    args = parser.parse_args()
    caps = kernelfs.kernel_capabilities()
    if not caps.ok:
        raise SystemExit(caps.reason)
    print(f"load average {os.getloadavg()[0]:.1f}", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        if not args.json:
            print(
                "| entries | cat s | full s | x cat | incr. s | x cat "
                "| full RSS MiB | incr. RSS MiB | baseline RSS MiB |"
            )
            print("|---|---|---|---|---|---|---|---|---|")
        for entries in args.entries:
            m = measure(Path(tmp), entries)
            if args.json:
                print(json.dumps(m), flush=True)
                continue
            cat = max(float(m["cat_s"]), 1e-3)
            print(
                f"| {entries:,} | {m['cat_s']:.2f} | {m['full_s']:.1f} "
                f"| {float(m['full_s']) / cat:.0f} | {m['incremental_s']:.1f} "
                f"| {float(m['incremental_s']) / cat:.0f} | {m['full_rss_mib']:.0f} "
                f"| {m['incremental_rss_mib']:.0f} | {m['baseline_rss_mib']:.0f} |",
                flush=True,
            )
    print(f"load average {os.getloadavg()[0]:.1f}", file=sys.stderr)


if __name__ == "__main__":
    main()
