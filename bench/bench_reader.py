"""Per-inode reader cost: what a key-less backup asks of every regular file's inode.

Opens a kernel-made image and, for every regular file, does what the backup's
``RecordKeys.of`` and ``attrs_of`` do with its inode (load it, hash its raw record, take
every metadata field, its xattrs and its block map), on a fresh
:class:`~cipherdump.ext4.fs.Filesystem` each time so no inode comes from the cache.
Reports the best of ``--repeat`` passes in microseconds per inode, and the same for
the no-key name hash (``ext4_dirhash``) of every name in an encrypted directory.

Make an image first (as root; the backups it then runs can be ignored)::

    python3 bench/bench_reader.py --build           # bench_backup.py --small's image
    python3 bench/bench_reader.py [--image IMG]

To compare with another tree of the sources (for example a copy of ``src`` taken before
a change), ``--compare DIR`` runs both, alternately, in child processes and checks that
both give identical results (a digest of every value read)::

    python3 bench/bench_reader.py --compare /tmp/base/src
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
WORKDIR = Path("/var/tmp/reader-bench")
IMAGE = WORKDIR / "bench-as-built.img"


def collect(fs: Any) -> tuple[list[int], list[tuple[bytes, int, bool]]]:
    """Numbers of every regular file (in walk order), and every (name, hash version,
    signed) of a name a no-key listing hashes."""
    from cipherdump.ondisk import dirhash

    files: list[int] = []
    names: list[tuple[bytes, int, bool]] = []
    signed = dirhash.is_signed_filesystem(fs.sb.s_flags)
    stack = [fs.root]
    seen = {fs.root.ino}
    while stack:
        d = stack.pop()
        hashed = d.is_encrypted and fs.dir_index and (d.is_indexed_dir or d.size == fs.block_size)
        for e in d.entries():
            if hashed and e.hash is None:
                names.append((e.name, fs.sb.s_def_hash_version, signed))
            child = fs.inode(e.ino)
            if child.is_dir and child.ino not in seen:
                seen.add(child.ino)
                stack.append(child)
            elif child.is_file:
                files.append(child.ino)
    return files, names


def one_file(fs: Any, number: int, file_type: Any, xattr_index: int) -> list[Any]:
    """What RecordKeys.of and attrs_of (engine/backup/reuse.py, nodes.py) read of one inode."""
    ino = fs.inode(number)
    raw = ino.raw
    # RecordKeys.of: the raw record, the xattr block, a slow symlink's block
    out: list[Any] = [raw.raw]
    if raw.i_file_acl:
        out.append(fs.read_block(raw.i_file_acl))
    if ino.is_symlink and not ino.is_fast_symlink and not ino.has_inline_data:
        out.append(ino.symlink_storage())
    # attrs_of
    out += [
        ino.ino, ino.mode, ino.uid, ino.gid, ino.size, ino.links, ino.flags,
        ino.generation, ino.project_id, raw.i_version, ino.blocks_512,
        ino.atime_ns, ino.mtime_ns, ino.ctime_ns, ino.crtime_ns,
    ]  # fmt: skip
    for x in ino.xattrs:
        out.append(x.value if x.index == xattr_index and x.name == b"c" else (x.index, x.name))
    out += [ino.is_encrypted, ino.device, ino.has_inline_data]
    if ino.has_inline_data:
        out.append(raw.i_block)
    if ino.type is file_type.SYMLINK:
        out.append(ino.symlink_data())
    out.append([[r.lblk, r.length, r.pblk, r.unwritten] for r in ino.runs if r.pblk is not None])
    # make_node, classify_file, file_data
    out += [ino.type is file_type.FILE, ino.has_inline_data, ino.generation, ino.links]
    return out


def measure(image: Path, repeat: int) -> dict[str, Any]:
    from cipherdump.ext4.fs import open_filesystem
    from cipherdump.ext4.inode import InodeType
    from cipherdump.ondisk.dirhash import ext4_dirhash
    from cipherdump.ondisk.xattr import EXT4_XATTR_INDEX_ENCRYPTION

    with open_filesystem(str(image)) as fs:
        files, names = collect(fs)
        seed = fs.sb.s_hash_seed
    digest = hashlib.blake2b(digest_size=16)
    best = float("inf")
    for rep in range(repeat):
        with open_filesystem(str(image)) as fs:
            t0 = time.perf_counter()
            results = [one_file(fs, n, InodeType, EXT4_XATTR_INDEX_ENCRYPTION) for n in files]
            best = min(best, time.perf_counter() - t0)
        if rep == 0:
            for r in results:
                digest.update(repr(r).encode())
    best_hash = float("inf")
    for rep in range(repeat):
        t0 = time.perf_counter()
        hashes = [ext4_dirhash(name, version, seed, signed) for name, version, signed in names]
        best_hash = min(best_hash, time.perf_counter() - t0)
        if rep == 0:
            digest.update(repr(hashes).encode())
    return {
        "files": len(files),
        "us_per_inode": best / max(len(files), 1) * 1e6,
        "names": len(names),
        "us_per_name_hash": best_hash / max(len(names), 1) * 1e6,
        "digest": digest.hexdigest(),
    }


def child(src: str, image: Path, repeat: int) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=src)
    argv = [sys.executable, str(HERE), "--image", str(image), "--repeat", str(repeat), "--json"]
    out = subprocess.run(argv, env=env, check=True, capture_output=True).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", type=Path, default=IMAGE)
    parser.add_argument("--repeat", type=int, default=5, help="passes; the best counts")
    parser.add_argument("--compare", metavar="SRC", help="another source tree to run too")
    parser.add_argument("--rounds", type=int, default=3, help="alternations with --compare")
    parser.add_argument("--build", action="store_true", help="make the image (root)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.build:
        script = HERE.parent / "bench_backup.py"
        cmd = [sys.executable, str(script), "--small", "--workdir", str(args.image.parent)]
        subprocess.run(cmd, check=True)
    if not args.image.exists():
        raise SystemExit(f"{args.image}: no image; make one with --build (as root)")
    if args.compare is None:
        result = measure(args.image, args.repeat)
        if args.json:
            print(json.dumps(result))
        else:
            for key, value in result.items():
                shown = f"{value:.2f}" if isinstance(value, float) else value
                print(f"{key:>18}: {shown}")
        return
    this = str(HERE.parents[1] / "src")
    runs: dict[str, list[dict[str, Any]]] = {args.compare: [], this: []}
    for _ in range(args.rounds):
        for src in runs:
            runs[src].append(child(src, args.image, args.repeat))
    digests = {r["digest"] for rs in runs.values() for r in rs}
    for src, rs in runs.items():
        inode = min(r["us_per_inode"] for r in rs)
        name = min(r["us_per_name_hash"] for r in rs)
        each = ", ".join(f"{r['us_per_inode']:.2f}" for r in rs)
        print(
            f"{src}: {rs[0]['files']} files {inode:.2f} us/inode, "
            f"{rs[0]['names']} names {name:.2f} us/name hash (rounds: {each})"
        )
    (old, new) = (min(r["us_per_inode"] for r in rs) for rs in runs.values())
    print(f"speed-up per inode: {old / new:.2f}x")
    print("results identical" if len(digests) == 1 else f"RESULTS DIFFER: {sorted(digests)}")
    if len(digests) != 1:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
