"""Per-file cost of a key-less backup of many small encrypted files (issue #19, items 2 and 5).

Run as root (the images are made with the running kernel)::

    sudo python bench/bench_scale.py --sizes 10k,100k          # builds what is missing
    sudo python bench/bench_scale.py --sizes 300k --reuse --json
    sudo python bench/bench_scale.py --sizes 100k --reuse --jobs-list 1 --profile /tmp/prof

The workload is a mail server's shape: ``N`` files of 100-1,000 bytes in maildir-like
directories of ``--per-dir`` (default 3,000) files each (``enc/uNNNN/Maildir/cur``), all
under one v2 fscrypt policy, written through the kernel with the key (so names and
contents are really encrypted; ``mkfs.ext4 -d`` could not encrypt them).  Each size is
built once into ``WORKDIR/N/`` and kept, as built and with about 1 % of its files
changed (rewritten, a few added, a few deleted), so that ``--reuse`` starts at once.

For each size and each ``--jobs`` value (``--jobs-list``, default ``0,1``: 0 is the
CLI's default, one worker per CPU up to 4, which on these 2-CPU machines means one
worker beside the coordinator; 1 is one process alone, which shows the per-file cost),
every step with a cold page cache:

1. baseline: ``dd if=IMAGE iflag=direct bs=4M`` (what the disk allows);
2. full backup into an empty repository;
3. incremental backup of the same image (nothing changed);
4. incremental backup of the changed image (same filesystem UUID, so it is the child
   of the snapshot made in 3).

Each backup is a ``cipherdump backup`` child process; reported: seconds, µs per file
(seconds / N), ratio to the baseline dd, CPU seconds (user + system of the child and the
workers it waited for, from ``wait4``) and the peak RSS (the largest sum over the child
and its workers, sampled every 20 ms, or the child's own ``ru_maxrss`` if larger).
``--profile DIR`` runs each backup under cProfile (``DIR/N-jJ-step.prof``; with --jobs 0
only the coordinator is profiled).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))

from bench_backup import CLI, cli, drop_caches, measure

import cipherdump
import kernelfs

MiB = 1 << 20
SIZES = {"10k": 10_000, "100k": 100_000, "300k": 300_000, "1m": 1_000_000}


def maildir_name(i: int, rng: random.Random) -> str:
    """A maildir-like file name (unique by ``i``)."""
    return f"{1733600000 + i}.M{rng.randrange(10**6)}P{i}.mail.example.org,S={i % 997}:2,S"


def write_files(top: Path, start: int, count: int, per_dir: int, pool: bytes) -> None:
    """``count`` files numbered from ``start``, 100-1,000 bytes each, distinct contents."""
    rng = random.Random(start)
    for i in range(start, start + count):
        d = top / f"u{i // per_dir:04d}" / "Maildir" / "cur"
        if i % per_dir == 0 or i == start:
            d.mkdir(parents=True, exist_ok=True)
        size = rng.randrange(100, 1001)
        off = (i * 7919) % (len(pool) - size)
        fd = os.open(d / maildir_name(i, rng), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, pool[off : off + size])
        finally:
            os.close(fd)


def build_image(image: Path, files: int, per_dir: int, key: bytes) -> dict[str, int]:
    # 4 KiB per file's block, 256 B per inode, a tenth spare, the journal.
    image_mib = int(files * (4096 + 256 + 64) * 1.15 / MiB) + 160
    kernelfs.make_image(
        image,
        image_mib,
        4096,
        ("encrypt",),
        extra_mkfs_args=["-N", str(files + files // 10 + 1000)],
    )
    pool = random.Random(1).randbytes(8 * MiB)
    with kernelfs.mounted(image) as mnt:
        spec = kernelfs.add_key(mnt, key)
        enc = mnt / "enc"
        enc.mkdir()
        kernelfs.set_policy(enc, 2, 1, 4, kernelfs.PAD_32, spec)
        write_files(enc, 0, files, per_dir, pool)
        os.sync()
    return {"files": files, "image_bytes": image.stat().st_size}


def change_one_percent(image: Path, key: bytes) -> dict[str, int]:
    """Rewrite ~1 % of the files, add and delete a few, through the kernel with the key."""
    rng = random.Random(2)
    counts = {"rewritten": 0, "added": 0, "deleted": 0}
    with kernelfs.mounted(image) as mnt:
        kernelfs.add_key(mnt, key)
        dirs = sorted(p for p in (mnt / "enc").glob("u*/Maildir/cur"))
        for d in dirs:
            names = sorted(os.listdir(d))
            picked = rng.sample(names, max(1, len(names) // 100))
            for name in picked[:-2]:
                (d / name).write_bytes(rng.randbytes(rng.randrange(100, 1001)))
                counts["rewritten"] += 1
            for name in picked[-2:]:
                (d / name).unlink()
                counts["deleted"] += 1
            for j in range(2):
                (d / f"new-{j}").write_bytes(rng.randbytes(rng.randrange(100, 1001)))
                counts["added"] += 1
        os.sync()
    return counts


def prepare(work: Path, files: int, per_dir: int, reuse: bool) -> dict[str, object]:
    """The size's two images (as built, changed) and their facts, built if missing."""
    work.mkdir(parents=True, exist_ok=True)
    built, changed, facts_file = work / "built.img", work / "changed.img", work / "facts.json"
    if reuse and built.exists() and changed.exists() and facts_file.exists():
        facts: dict[str, object] = json.loads(facts_file.read_text())
        return facts
    key = kernelfs.master_key_from_label("cipherdump bench key")
    t0 = time.perf_counter()
    facts = dict(build_image(built, files, per_dir, key))
    facts["build_s"] = round(time.perf_counter() - t0, 1)
    subprocess.run(["cp", "--sparse=always", str(built), str(changed)], check=True)
    facts["changed"] = change_one_percent(changed, key)
    facts_file.write_text(json.dumps(facts))
    return facts


def backup(
    image: Path, env: dict[str, str], jobs: int, profile: Path | None, name: str
) -> dict[str, object]:
    drop_caches()
    seconds, rss, out, cpu = measure(
        [*cli(profile, name), "backup", "--jobs", str(jobs), "--json", str(image)], env
    )
    summary = json.loads(out)
    return {
        "s": round(seconds, 3),
        "cpu_s": round(cpu, 2),
        "rss_mib": round(rss / MiB, 1),
        "files_new": summary.get("files_new"),
        "files_changed": summary.get("files_changed"),
        "files_unchanged": summary.get("files_unchanged"),
    }


def run_size(label: str, args: argparse.Namespace, env_base: dict[str, str]) -> dict[str, object]:
    files = SIZES[label]
    work = args.workdir / label
    facts = prepare(work, files, args.per_dir, args.reuse)
    built, changed = work / "built.img", work / "changed.img"
    drop_caches()
    dd_s, _, _, _ = measure(
        ["dd", f"if={built}", "iflag=direct", "bs=4M", "of=/dev/null", "status=none"], env_base
    )
    result: dict[str, object] = {"files": files, "facts": facts, "dd_s": round(dd_s, 3)}
    for jobs in args.jobs_list:
        repo = work / "repo"
        shutil.rmtree(repo, ignore_errors=True)
        env = dict(env_base, CIPHERDUMP_REPOSITORY=str(repo))
        subprocess.run([*CLI, "init"], env=env, check=True, capture_output=True)
        steps: dict[str, dict[str, object]] = {}
        for step, image in (("full", built), ("unchanged", built), ("changed", changed)):
            fig = backup(image, env, jobs, args.profile, f"{label}-j{jobs}-{step}")
            seconds = float(fig["s"])  # type: ignore[arg-type]
            fig["us_per_file"] = round(seconds / files * 1e6, 1)
            fig["over_dd"] = round(seconds / dd_s, 2)
            steps[step] = fig
            if not args.json:
                print(
                    f"{label:>5} jobs={jobs} {step:>9}: {seconds:8.2f} s "
                    f"{fig['us_per_file']:7.1f} us/file  x{fig['over_dd']:<6} dd  "
                    f"cpu {fig['cpu_s']:7.2f} s  rss {fig['rss_mib']:7.1f} MiB",
                    flush=True,
                )
        result[f"jobs{jobs}"] = steps
        if not args.keep_repo:
            shutil.rmtree(repo, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", default="10k,100k,300k", help="Comma-separated of 10k, 100k, 300k, 1m."
    )
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/cipherdump-bench-scale"))
    parser.add_argument("--reuse", action="store_true", help="Reuse the workdir's images.")
    parser.add_argument("--per-dir", type=int, default=3000, help="Files per maildir.")
    parser.add_argument(
        "--jobs-list", default="0,1", help="backup --jobs values to measure (default 0,1)."
    )
    parser.add_argument("--profile", type=Path, default=None, help="cProfile each backup here.")
    parser.add_argument("--keep-repo", action="store_true", help="Keep WORKDIR/N/repo.")
    parser.add_argument("--build-only", action="store_true", help="Only build the images.")
    parser.add_argument("--json", action="store_true", help="Print the figures as JSON.")
    args = parser.parse_args()
    labels = [s.strip().lower() for s in args.sizes.split(",") if s.strip()]
    unknown = [s for s in labels if s not in SIZES]
    if unknown:
        raise SystemExit(f"unknown size(s): {', '.join(unknown)} (choose from {', '.join(SIZES)})")
    args.jobs_list = [int(j) for j in args.jobs_list.split(",")]
    if os.geteuid() != 0:
        raise SystemExit("run as root: the images are made by the kernel")
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    # As an installed package has them: with PYTHONDONTWRITEBYTECODE set every run would
    # otherwise compile every module again.
    package = Path(cipherdump.__file__).parent
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)], check=True)
    env = dict(os.environ, CIPHERDUMP_PASSWORD="bench", CIPHERDUMP_INSECURE_TEST_KDF="1")
    figures: dict[str, object] = {
        "kernel": os.uname().release,
        "cpus": os.cpu_count(),
        "load_before": os.getloadavg()[0],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    for label in labels:
        if args.build_only:
            facts = prepare(args.workdir / label, SIZES[label], args.per_dir, args.reuse)
            print(label, facts, flush=True)
            continue
        figures[label] = run_size(label, args, env)
    figures["load_after"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
