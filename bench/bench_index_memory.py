"""Peak memory and load time of a backup's repository index against its blob count.

For each size a repository is made cheaply: a real full backup of a small unencrypted
ext4 image (``mkfs.ext4 -d``, ``--files`` files), then index files naming that many
more blobs (random ids, 5 % of them tree blobs: 9.5 million data and 0.5 million
tree blobs of ten million) in packs of 1,000 that exist only as empty files
(loading the index checks that a pack is listed, not its bytes; nothing reads these
blobs).  Then, each in a fresh process:

* ``load``: open the repository and load its index as a backup does (time, VmHWM);
* ``backup``: an incremental backup of the same image (``--jobs 1``: the index is
  the process's; its workers would share it copy-on-write), with the VmHWM of the
  process;
* ``open``: the baseline, a process that opened the repository and loaded nothing.

``--index memory`` measures the index every command used before (a MemoryIndex, kept
by making :meth:`Repository.use_lean_index` a no-op in the child), ``lean`` (default)
the backup's :class:`~cipherdump.repo.leanindex.LeanIndex`.  ``BENCH_SRC=DIR`` runs the
children on other sources (``git archive COMMIT src | tar -x -C DIR``: before).

    python3 bench/bench_index_memory.py --blobs 1000000 2000000 10000000 --index lean memory
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

from cipherdump.repo import KdfParams, LocalBackend, Repository
from cipherdump.repo.backends.base import FileType, Handle
from cipherdump.repo.crypto import MasterKey, file_id
from cipherdump.repo.index import IndexFile, PackRecord, encode_index

PASSWORD = b"pw"
PER_PACK = 1000
PER_FILE = 64  # packs per index file (64,000 entries, as writers write at most 65,536)
TREES = 0.05  # the share of tree blobs among the added ones
ENTRY = struct.Struct("<BBHIII32s")

CHILD = """
import json, os, resource, sys, time
from cipherdump.repo import LocalBackend, Repository
if sys.argv[3] == "memory" and hasattr(Repository, "use_lean_index"):
    Repository.use_lean_index = lambda self: None
start = time.perf_counter()
what = sys.argv[2]
code = 0
if what == "backup":
    from cipherdump.cli.main import cli
    try:
        cli(["--repo", sys.argv[1], "--quiet", "backup", "--jobs", "1", sys.argv[4]],
            prog_name="cipherdump")
    except SystemExit as exc:
        code = exc.code or 0
else:
    repo = Repository.open(LocalBackend(sys.argv[1]), b"pw", lock=False)
    if what == "load":
        if sys.argv[3] == "lean" and hasattr(repo, "use_lean_index"):
            repo.use_lean_index()
        repo.missing_packs()
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
usage = resource.getrusage(resource.RUSAGE_SELF)
cpu = usage.ru_utime + usage.ru_stime
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "cpu": cpu, "hwm_kib": hwm, "code": code}))
"""


def cipherdump(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-c", "from cipherdump.cli.main import main; main()", *args],
        check=True,
        env=env(),
        stdout=subprocess.DEVNULL,
    )


def env() -> dict[str, str]:
    # BENCH_SRC: other sources for the children (an older commit's, to compare).
    src = os.environ.get("BENCH_SRC") or str(Path(__file__).resolve().parents[1] / "src")
    return {**os.environ, "PYTHONPATH": src, "CIPHERDUMP_PASSWORD": PASSWORD.decode()}


def build_image(work: Path, files: int) -> Path:
    rng = random.Random(1)
    tree = work / "tree"
    for i in range(files):
        d = tree / f"d{i // 100:03d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:05d}").write_bytes(rng.randbytes(rng.randint(100, 20_000)))
    image = work / "src.img"
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-b", "4096", "-d", str(tree), str(image), "128M"], check=True
    )
    shutil.rmtree(tree)
    return image


def add_fake_blobs(path: Path, blobs: int) -> None:
    """Index files naming ``blobs`` more blobs in empty pack files."""
    with Repository.open(LocalBackend(str(path)), PASSWORD, lock=False) as repo:
        key: MasterKey = repo._key
    rng = random.Random(2)
    made = 0
    while made < blobs:
        packs = []
        for _ in range(PER_FILE):
            if made >= blobs:
                break
            n = min(PER_PACK, blobs - made)
            ids = rng.randbytes(32 * n)
            raw = b"".join(
                ENTRY.pack(
                    int(rng.random() < TREES), 0, 0, 100 * i, 100, 60, ids[32 * i : 32 * i + 32]
                )
                for i in range(n)
            )
            pack_id = file_id(ids[:32] + b"pack")
            packs.append(PackRecord(pack_id, 100 * n, raw))
            pack_file = path / str(Handle(FileType.PACK, pack_id.hex))
            pack_file.parent.mkdir(exist_ok=True)
            pack_file.touch()
            made += n
        data = encode_index(key, IndexFile(tuple(packs)))
        (path / str(Handle(FileType.INDEX, file_id(data).hex))).write_bytes(data)


def child(path: Path, what: str, index: str, image: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), what, index, str(image)],
        capture_output=True,
        text=True,
        check=True,
        env=env(),
    ).stdout
    result: dict[str, float] = json.loads(out.splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blobs", type=int, nargs="+", default=[1_000_000, 2_000_000])
    parser.add_argument("--index", nargs="+", default=["lean"], choices=["lean", "memory"])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--keep", type=Path, help="build the repositories here and keep them")
    args = parser.parse_args()
    print(
        "| blobs | index | load s (CPU s) | load peak | backup s (CPU s) | backup peak | baseline |"
    )
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        work = args.keep or Path(tmp)
        image = work / "src.img"
        if not image.exists():
            image = build_image(work, args.files)
        for blobs in args.blobs:
            repo = work / f"repo{blobs}"
            if not repo.exists():
                backend = LocalBackend.create(repo)
                Repository.init(backend, PASSWORD, kdf=KdfParams(1, 8, 1)).close()
                cipherdump("--repo", str(repo), "backup", "--jobs", "1", str(image))
                add_fake_blobs(repo, blobs)
            base = child(repo, "open", "memory", image)
            for index in args.index:
                load = child(repo, "load", index, image)
                run = child(repo, "backup", index, image)
                assert run["code"] == 0, run
                print(
                    f"| {blobs:,} | {index} | {load['seconds']:.1f} ({load['cpu']:.1f}) | "
                    f"{load['hwm_kib'] / 1024:.0f} MiB | {run['seconds']:.1f} ({run['cpu']:.1f}) | "
                    f"{run['hwm_kib'] / 1024:.0f} MiB | {base['hwm_kib'] / 1024:.0f} MiB |",
                    flush=True,
                )
            if args.keep is None:
                shutil.rmtree(repo)


if __name__ == "__main__":
    main()
