"""Peak memory of ``prune`` against the number of blobs in the repository.

For each size, a repository is made with that many small data blobs (16 bytes each,
so the run measures the index and the marks, not the data), referenced by snapshots of
1 000-blob trees; half the snapshots are then removed, so that prune has half the blobs
to drop.  Each prune runs in a fresh process, whose peak RSS (``VmHWM``) is
reported beside that of a process that only imported the repository's modules (the
baseline: the interpreter, cryptography, zstandard...).

    python3 bench/bench_prune_memory.py --blobs 250000 1000000
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

from cipherdump.repo import BlobType, KdfParams, LocalBackend, Node, Repository, Snapshot, Tree

PASSWORD = b"pw"
PER_TREE = 1000
PER_NODE = 50

CHILD = """
import json, sys, time
from cipherdump.repo import LocalBackend, Repository
from cipherdump.repo.prune import PruneOptions
start = time.perf_counter()
stats = None
if sys.argv[2] == "prune":
    repo = Repository.open(LocalBackend(sys.argv[1]), b"pw")
    stats = repo.prune(PruneOptions()).as_dict()
    repo.close()
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forked parent (the
# builder, holding its own index), while VmHWM belongs to this process's memory alone.
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"seconds": time.perf_counter() - start, "maxrss_kib": hwm, "stats": stats}))
"""


def build(path: Path, blobs: int) -> None:
    repo = Repository.init(
        LocalBackend.create(path), PASSWORD, kdf=KdfParams(1, 8, 1), pack_size=4 << 20
    )
    repo.close()
    with Repository.open(LocalBackend(str(path)), PASSWORD) as repo:
        made = 0
        snap = 0
        while made < blobs:
            nodes = []
            for n in range(PER_TREE // PER_NODE):
                ids = tuple(
                    repo.save_blob(BlobType.DATA, (made + i).to_bytes(16, "little"))
                    for i in range(PER_NODE)
                )
                made += PER_NODE
                nodes.append(Node(b"f%06d" % n, "file", content=ids))
            tree = repo.save_tree(Tree(tuple(nodes)))
            repo.save_snapshot(Snapshot(tree, time.time_ns() + snap, hostname="bench"))
            snap += 1
    with Repository.open(LocalBackend(str(path)), PASSWORD) as repo:
        for sid, _ in repo.list_snapshots()[::2]:
            repo.remove_snapshot(sid)


def child(path: Path, what: str) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), what],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    ).stdout
    result: dict[str, object] = json.loads(out)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blobs", type=int, nargs="+", default=[250_000, 1_000_000])
    args = parser.parse_args()
    print("| blobs | build s | prune s | peak RSS | baseline | prune's own |")
    print("|---|---|---|---|---|---|")
    for blobs in args.blobs:
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
            path = Path(tmp) / "repo"
            start = time.perf_counter()
            build(path, blobs)
            built = time.perf_counter() - start
            base = child(path, "open")
            run = child(path, "prune")
            peak = int(str(run["maxrss_kib"])) / 1024
            baseline = int(str(base["maxrss_kib"])) / 1024
            seconds = float(str(run["seconds"]))
            print(
                f"| {blobs:,} | {built:.0f} | {seconds:.1f} | {peak:.0f} MiB | "
                f"{baseline:.0f} MiB | {peak - baseline:.0f} MiB |",
                flush=True,
            )


if __name__ == "__main__":
    main()
