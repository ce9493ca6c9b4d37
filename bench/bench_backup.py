"""Key-less backup speed against reading the raw image, and what an incremental costs.

Run as root (it makes an fscrypt-encrypted ext4 image with the running kernel)::

    sudo python bench/bench_backup.py [--data-mib 1024] [--files 30000] [--workdir DIR]
    sudo python bench/bench_backup.py --small        # 200 MiB in 5 000 files, under a minute
    sudo python bench/bench_backup.py --small --reuse --profile /tmp/prof  # cProfile each backup

Steps, all in one run so the ratios compare like with like on this machine:

1. Build (or reuse, with ``--reuse``) an image of ``--data-mib`` MiB of file data in
   ``--files`` files: most small (a few KiB), a few large, under one v2-encrypted
   directory and one plain directory, written through the kernel with the key.
2. Baseline: drop the page cache, then ``dd if=IMAGE iflag=direct bs=4M of=/dev/null``.
3. Full key-less backup (``cipherdump backup`` in a child process) with a cold cache.
4. Change 1 % of the data through the kernel with the key (rewrite some small files, one
   block in some large files, add and delete a few), then an incremental backup with a
   cold cache.
5. Report: full / dd, incremental / full, and the peak RSS of each backup (``wait4``).
6. The disk's floor for a backup into a repository on the same disk: dd reading the
   image while another dd writes as many bytes as the full backup added next to the
   repository (full / floor, floor / dd).
7. Unless ``--no-device``: the (changed) image attached as a read-only loop device that
   reads its file around the page cache, as a disk or an LVM snapshot is read: dd of
   the device, then a full backup of it (device full / device dd).

The aims (issue #4) are full / dd <= 1.5, incremental / full <= 0.25, peak RSS < 256 MiB.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))

import cipherdump
import kernelfs

MiB = 1 << 20
CLI = [sys.executable, "-c", "from cipherdump.cli.main import main; main()"]
SMALL = {"data_mib": 200, "files": 5000}
QUIET = ["status=none"]


def cli(profile: Path | None, name: str) -> list[str]:
    """The CLI command line, under cProfile (stats in ``profile/name.prof``) if asked."""
    if profile is None:
        return CLI
    out = profile / f"{name}.prof"
    code = (
        "import cProfile; from cipherdump.cli.main import main; "
        f"cProfile.run('main()', {str(out)!r})"
    )
    return [sys.executable, "-c", code]


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def _tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (the backup's workers)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


def measure(argv: list[str], env: dict[str, str]) -> tuple[float, int, bytes, float]:
    """(seconds, peak RSS bytes, stdout, CPU seconds) of ``argv``.

    CPU seconds are user plus system time of the child and of the worker processes it
    waited for: on a machine whose speed drifts, they compare better than wall time.

    The peak RSS is the larger of the child's own ``ru_maxrss`` (from ``wait4``) and
    the largest sum of the resident sizes of the child and its worker processes,
    sampled every 20 ms (pages shared by forked workers count once per process, so
    this overstates what the backup takes).
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            peak[0] = max(peak[0], _tree_rss(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out = proc.stdout.read()
    err = proc.stderr.read()
    stop.set()
    sampler.join()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"child failed ({proc.returncode}): {err.decode(errors='replace')}")
    cpu = usage.ru_utime + usage.ru_stime
    return seconds, max(usage.ru_maxrss * 1024, peak[0]), out, cpu


def disk_floor(image: Path, directory: Path, written: int) -> float:
    """Seconds to read the image (as the dd baseline does) while writing ``written``
    bytes into ``directory`` (as a backup writes its packs there), with a cold cache:
    what the disk alone allows a backup into a repository on the same disk."""
    target = directory / "floor.tmp"
    drop_caches()
    t0 = time.perf_counter()
    reader = subprocess.Popen(
        ["dd", f"if={image}", "iflag=direct", "bs=4M", "of=/dev/null", "status=none"]
    )
    count = max(-(-written // (4 * MiB)), 1)
    subprocess.run(
        ["dd", "if=/dev/zero", f"of={target}", "oflag=direct", "bs=4M", f"count={count}", *QUIET],
        check=True,
    )
    reader.wait()
    seconds = time.perf_counter() - t0
    target.unlink()
    return seconds


def device_backup(image: Path, work: Path, jobs: int) -> dict[str, float]:
    """The image attached as a read-only loop device (read around the host's cache, as
    a disk or an LVM snapshot is): dd of it, then a full backup of it into a repository
    of its own, both with a cold cache."""
    repo = work / "repo-device"
    shutil.rmtree(repo, ignore_errors=True)
    env = dict(os.environ, CIPHERDUMP_PASSWORD="bench", CIPHERDUMP_REPOSITORY=str(repo))
    env["CIPHERDUMP_INSECURE_TEST_KDF"] = "1"
    subprocess.run([*CLI, "init"], env=env, check=True, capture_output=True)
    with kernelfs.loop_device(image, readonly=True, direct_io=True) as device:
        drop_caches()
        dd_s, _, _, _ = measure(
            ["dd", f"if={device}", "iflag=direct", "bs=4M", "of=/dev/null", "status=none"], env
        )
        drop_caches()
        full_s, rss, _, cpu = measure([*CLI, "backup", "--jobs", str(jobs), "--json", device], env)
    shutil.rmtree(repo, ignore_errors=True)
    return {
        "device_dd_s": round(dd_s, 3),
        "device_full_s": round(full_s, 3),
        "device_full_over_dd": round(full_s / dd_s, 2),
        "device_full_cpu_s": round(cpu, 2),
        "device_full_peak_rss_mib": round(rss / MiB, 1),
    }


def file_sizes(data_mib: int, files: int, rng: random.Random) -> list[int]:
    """Mostly small files, some medium, a few large; adds up to ``data_mib``."""
    total = data_mib * MiB
    small = [rng.choice([0, 300, 1500, 4096, 6000, 9000, 16384]) for _ in range(files - 64)]
    medium = [rng.randrange(256 * 1024, 2 * MiB) for _ in range(48)]
    rest = max(total - sum(small) - sum(medium), 16 * MiB)
    large = [rest // 16] * 16
    sizes = small + medium + large
    rng.shuffle(sizes)
    return sizes


def build_image(image: Path, data_mib: int, files: int, key: bytes) -> dict[str, int]:
    sizes = file_sizes(data_mib, files, random.Random(1))
    used = sum(-(-s // 4096) * 4096 for s in sizes)
    image_mib = int(used / MiB * 1.12) + 64
    kernelfs.make_image(
        image, image_mib, 4096, ("encrypt",), extra_mkfs_args=["-N", str(files * 2)]
    )
    chunk = os.urandom(4 * MiB)
    with kernelfs.mounted(image) as mnt:
        spec = kernelfs.add_key(mnt, key)
        enc = mnt / "enc"
        enc.mkdir()
        kernelfs.set_policy(enc, 2, 1, 4, kernelfs.PAD_32, spec)
        plain = mnt / "plain"
        plain.mkdir()
        for i, size in enumerate(sizes):
            top = enc if i % 10 else plain  # a tenth unencrypted
            d = top / f"d{i % 97:02d}"
            d.mkdir(exist_ok=True)
            with open(d / f"file-{i:06d}", "wb") as f:
                left, off = size, (i * 4099) % (len(chunk) - 1)
                while left:
                    n = min(left, len(chunk) - off)
                    f.write(chunk[off : off + n])
                    left -= n
                    off = 0
        os.sync()
    return {"files": len(sizes), "data_bytes": sum(sizes), "image_bytes": image.stat().st_size}


def change_one_percent(image: Path, key: bytes, data_bytes: int) -> int:
    """Change ~1 % of the data through the kernel with the key; returns bytes written."""
    rng = random.Random(2)
    budget = data_bytes // 100
    written = 0
    with kernelfs.mounted(image) as mnt:
        kernelfs.add_key(mnt, key)
        paths = sorted(p for p in (mnt / "enc").rglob("file-*") if p.is_file())
        paths += sorted(p for p in (mnt / "plain").rglob("file-*") if p.is_file())
        rng.shuffle(paths)
        for p in paths:
            if written >= budget:
                break
            size = p.stat().st_size
            if size > 4 * MiB:  # one block in place
                with open(p, "r+b") as f:
                    f.seek(rng.randrange(0, size - 4096) // 4096 * 4096)
                    f.write(os.urandom(4096))
                written += 4096
            elif size:  # rewrite a small file
                p.write_bytes(os.urandom(size))
                written += size
        for i in range(50):  # add and delete some
            (mnt / "enc" / "d00" / f"new-{i:04d}").write_bytes(os.urandom(8192))
            written += 8192
        for p in paths[-50:]:
            p.unlink()
        os.sync()
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-mib", type=int, default=None, help="Default 1024.")
    parser.add_argument("--files", type=int, default=None, help="Default 30000.")
    parser.add_argument(
        "--small",
        action="store_true",
        help=f"A quick run: {SMALL['data_mib']} MiB in {SMALL['files']} files "
        "(own default workdir).",
    )
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--reuse", action="store_true", help="Reuse the workdir's image.")
    parser.add_argument(
        "--profile", type=Path, default=None, help="Write cProfile stats of each backup here."
    )
    parser.add_argument(
        "--jobs", type=int, default=0, help="Passed to backup --jobs (default 0: automatic)."
    )
    parser.add_argument("--json", action="store_true", help="Print the figures as JSON.")
    parser.add_argument(
        "--no-device", action="store_true", help="Skip the backup of the image as a loop device."
    )
    args = parser.parse_args()
    size = SMALL if args.small else {"data_mib": 1024, "files": 30000}
    args.data_mib = args.data_mib or size["data_mib"]
    args.files = args.files or size["files"]
    if args.workdir is None:
        suffix = "-small" if args.small else ""
        args.workdir = Path(f"/var/tmp/cipherdump-bench{suffix}")
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        raise SystemExit("run as root: the image is made by the kernel")

    work: Path = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    image, repo = work / "bench.img", work / "repo"
    # The run changes the image; --reuse starts again from the copy kept as built.
    pristine = work / "bench-as-built.img"
    key = kernelfs.master_key_from_label("cipherdump bench key")
    t0 = time.perf_counter()
    if not (args.reuse and pristine.exists() and (work / "facts.json").exists()):
        facts = build_image(image, args.data_mib, args.files, key)
        (work / "facts.json").write_text(json.dumps(facts))
        shutil.copyfile(image, pristine)
    else:
        shutil.copyfile(pristine, image)
    facts = json.loads((work / "facts.json").read_text())
    build_s = time.perf_counter() - t0
    shutil.rmtree(repo, ignore_errors=True)
    env = dict(os.environ, CIPHERDUMP_PASSWORD="bench", CIPHERDUMP_REPOSITORY=str(repo))
    env["CIPHERDUMP_INSECURE_TEST_KDF"] = "1"  # the KDF is not what is measured
    subprocess.run([*CLI, "init"], env=env, check=True, capture_output=True)
    # As an installed package has them: with PYTHONDONTWRITEBYTECODE set (as on these
    # machines) every run would otherwise compile every module again (~0.1 s).
    package = Path(cipherdump.__file__).parent
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)], check=True)

    drop_caches()
    dd_s, _, _, _ = measure(
        ["dd", f"if={image}", "iflag=direct", "bs=4M", "of=/dev/null", "status=none"], env
    )
    drop_caches()
    full_s, full_rss, out, full_cpu = measure(
        [*cli(args.profile, "full"), "backup", "--jobs", str(args.jobs), "--json", str(image)], env
    )
    full = json.loads(out)
    changed = change_one_percent(image, key, facts["data_bytes"])
    drop_caches()
    inc_s, inc_rss, out, inc_cpu = measure(
        [
            *cli(args.profile, "incremental"),
            "backup",
            "--jobs",
            str(args.jobs),
            "--json",
            str(image),
        ],
        env,
    )
    inc = json.loads(out)
    check_s, _, _, _ = measure([*CLI, "check"], env)
    floor_s = disk_floor(image, repo.parent, full["bytes_added"])
    device = None if args.no_device else device_backup(image, work, args.jobs)

    figures = {
        "kernel": os.uname().release,
        "cpus": os.cpu_count(),
        "jobs": args.jobs,
        "files": facts["files"],
        "data_mib": round(facts["data_bytes"] / MiB, 1),
        "image_mib": round(facts["image_bytes"] / MiB, 1),
        "build_s": round(build_s, 1),
        "dd_s": round(dd_s, 3),
        "full_s": round(full_s, 3),
        "full_over_dd": round(full_s / dd_s, 2),
        "full_cpu_s": round(full_cpu, 2),
        "full_peak_rss_mib": round(full_rss / MiB, 1),
        "full_bytes_read_mib": round(full["bytes_read"] / MiB, 1),
        "changed_mib": round(changed / MiB, 2),
        "incremental_s": round(inc_s, 3),
        "incremental_over_full": round(inc_s / full_s, 3),
        "incremental_cpu_s": round(inc_cpu, 2),
        "incremental_peak_rss_mib": round(inc_rss / MiB, 1),
        "incremental": {
            k: inc[k]
            for k in (
                "files_new",
                "files_changed",
                "files_unchanged",
                "files_removed",
                "bytes_read",
                "bytes_added",
                "bytes_stored",
            )
        },
        "check_s": round(check_s, 2),
        "floor_s": round(floor_s, 3),
        "full_over_floor": round(full_s / floor_s, 2),
        "floor_over_dd": round(floor_s / dd_s, 2),
        "repo_mib": round(sum(p.stat().st_size for p in repo.rglob("*") if p.is_file()) / MiB, 1),
    }
    if device is not None:
        figures.update(device)
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    for k, v in figures.items():
        print(f"{k:>26}: {v}")


if __name__ == "__main__":
    main()
