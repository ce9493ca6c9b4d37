"""A live backup (``backup --live``) of a mounted filesystem while a writer runs, against
the same backup of the filesystem unmounted: the time ratio, and how many objects
were retried.

Run as root (it makes an fscrypt-encrypted ext4 image with the running kernel)::

    sudo python bench/bench_live.py --small            # 200 MiB in 5,000 files
    sudo python bench/bench_live.py                    # 1 GiB in 30,000 files

Steps, in one run so the ratios compare like with like on this machine:

1. Build the benchmark workload of ``bench_backup.py`` (``--data-mib`` MiB in
   ``--files`` files, a tenth unencrypted), plus a directory of files the writer
   changes (``tests/support/livewriter.py``: in-place rewrites, ``mmap``, ``O_DIRECT``,
   appends, renames over).
2. Unmounted: the image as a read-only loop device that reads around the page cache,
   as a disk is read; a full backup with a cold cache into a new repository.
3. Mounted read-write, idle: a full ``backup --live`` into a new repository (what the
   checks cost when nothing changes).
4. Mounted, with the writer running: a full ``backup --live`` into a new repository,
   then (writer still running) an incremental one, as a nightly backup would be.
5. Report each time and its ratio to step 2, the rounds, the objects retried and
   those still named as changed.

Every backup runs with ``--jobs 1``: a live backup runs in one process, and the
unmounted one is measured the same way (its default, with workers, is in
``bench_backup.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "support"))
sys.path.insert(0, str(HERE))

import bench_backup  # noqa: E402  (the workload and helpers of the backup benchmark)

import kernelfs  # noqa: E402
import livewriter  # noqa: E402

CLI = bench_backup.CLI
SHAPES = ("rewrite", "mmap", "odirect", "append", "rename", "truncate")


def writer_plan(mnt: Path, files_per_shape: int) -> livewriter.Plan:
    files = tuple(
        (f"{shape}-{i}", shape, 10 * n + i)
        for n, shape in enumerate(SHAPES)
        for i in range(files_per_shape)
    )
    return livewriter.Plan(mnt / "enc" / "busy", files, create_dir="new", seed=3, max_pause_s=0.05)


def run_backup(argv: list[str], env: dict[str, str]) -> tuple[float, dict[str, object]]:
    t0 = time.perf_counter()
    proc = subprocess.run([*CLI, *argv, "--json"], env=env, capture_output=True, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        raise SystemExit(f"backup failed ({proc.returncode}): {proc.stderr.decode()}")
    return seconds, json.loads(proc.stdout)


def new_repo(path: Path, env: dict[str, str]) -> dict[str, str]:
    shutil.rmtree(path, ignore_errors=True)
    env = dict(env, CIPHERDUMP_REPOSITORY=str(path))
    subprocess.run([*CLI, "init"], env=env, check=True, capture_output=True)
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-mib", type=int, default=None, help="Default 1024.")
    parser.add_argument("--files", type=int, default=None, help="Default 30000.")
    parser.add_argument("--small", action="store_true", help="200 MiB in 5,000 files.")
    parser.add_argument("--busy-files", type=int, default=4, help="Writer files per shape.")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", action="store_true", help="Print the figures as JSON.")
    parser.add_argument(
        "--rounds", type=int, default=2, help="Best of this many runs of each step."
    )
    args = parser.parse_args()
    size = bench_backup.SMALL if args.small else {"data_mib": 1024, "files": 30000}
    data_mib = args.data_mib or size["data_mib"]
    files = args.files or size["files"]
    work: Path = args.workdir or Path(
        "/var/tmp/cipherdump-bench-live" + ("-small" if args.small else "")
    )
    if os.geteuid() != 0:
        raise SystemExit("run as root: the image is made and mounted by the kernel")
    work.mkdir(parents=True, exist_ok=True)
    image = work / "bench.img"
    key = kernelfs.master_key_from_label("cipherdump bench key")
    facts = bench_backup.build_image(image, data_mib, files, key)
    env = dict(os.environ, CIPHERDUMP_PASSWORD="bench", CIPHERDUMP_INSECURE_TEST_KDF="1")
    log_path = work / "writer.json"
    with kernelfs.mounted(image) as mnt:
        ident = kernelfs.add_key(mnt, key)
        try:
            (mnt / "enc" / "busy").mkdir()
            plan = writer_plan(mnt, args.busy_files)
            livewriter.prepare(plan, log_path)
        finally:
            kernelfs.remove_key(mnt, ident)
    out: dict[str, object] = {"data_bytes": facts["data_bytes"], "files": facts["files"]}

    # 2. Unmounted, from a loop device read around the page cache.
    with kernelfs.loop_device(image, readonly=True, direct_io=True) as dev:
        best = []
        for _ in range(args.rounds):
            bench_backup.drop_caches()
            e = new_repo(work / "repo-unmounted", env)
            best.append(run_backup(["backup", "--jobs", "1", dev], e)[0])
        out["unmounted_s"] = min(best)

    with kernelfs.mounted(image, ("relatime",)) as mnt:
        ident = kernelfs.add_key(mnt, key)
        try:
            # 3. Idle.
            best = []
            for _ in range(args.rounds):
                bench_backup.drop_caches()
                e = new_repo(work / "repo-idle", env)
                best.append(run_backup(["backup", "--live", str(mnt)], e)[0])
            out["live_idle_s"] = min(best)
            # 4. Busy: a full backup, then an incremental one (the run with the faster
            # full backup is kept).
            plan = writer_plan(mnt, args.busy_files)
            runs = []
            with livewriter.running_writer(plan, log_path, warmup_s=1.0) as stop:
                for _ in range(args.rounds):
                    bench_backup.drop_caches()
                    e = new_repo(work / "repo-busy", env)
                    full = run_backup(["backup", "--live", str(mnt)], e)
                    runs.append((full, run_backup(["backup", "--live", str(mnt)], e)))
                stop()
            (out["live_busy_s"], busy), (out["live_busy_incr_s"], incr) = min(
                runs, key=lambda r: r[0][0]
            )
            log = livewriter.read_log(log_path)
            out["writer_versions"] = sum(len(v.versions) - 1 for v in log.values())
            for name, report in (("busy", busy), ("busy_incr", incr)):
                live = report["live"]
                assert isinstance(live, dict)
                out[f"live_{name}_rounds"] = live["rounds"]
                out[f"live_{name}_retried"] = live["retried"]
                out[f"live_{name}_changed"] = len(live["changed"])
        finally:
            kernelfs.remove_key(mnt, ident)
    base = float(out["unmounted_s"])  # type: ignore[arg-type]
    for name in ("live_idle_s", "live_busy_s", "live_busy_incr_s"):
        out[name.replace("_s", "_ratio")] = round(float(out[name]) / base, 2)  # type: ignore[arg-type]
    if args.json:
        print(json.dumps(out, indent=1))
        return
    print(f"workload: {facts['data_bytes'] / 2**20:.0f} MiB in {facts['files']} files")
    print(f"unmounted full backup (loop device, O_DIRECT): {base:.2f} s")
    for label, key_ in (
        ("live, idle, full", "live_idle"),
        ("live, writer running, full", "live_busy"),
        ("live, writer running, incremental", "live_busy_incr"),
    ):
        extra = ""
        if f"{key_}_retried" in out:
            extra = (
                f"  rounds {out[f'{key_}_rounds']}, retried {out[f'{key_}_retried']}, "
                f"named {out[f'{key_}_changed']}"
            )
        print(f"{label}: {float(out[key_ + '_s']):.2f} s = {out[key_ + '_ratio']} x{extra}")  # type: ignore[arg-type]
    print(f"writer: {out['writer_versions']} versions written during the busy backups")


if __name__ == "__main__":
    main()
