"""Micro-benchmark of the per-file work of a backup's listing: no-key names and file nodes.

Usage::

    python3 bench/bench_listing.py                       # the bundled sample image
    python3 bench/bench_listing.py --image IMAGE         # e.g. the backup benchmark's image
                                                         # (/var/tmp/cipherdump-bench/bench.img)

Figures are best of ``--repeat`` passes, in µs per name or per file, and each fast way
as a ratio to the way it replaced (measured in the same run, so machine load cancels):

* ``dirhash``: half-MD4 of random 32-byte names (encrypted names padded to 32), one by
  one (:func:`ext4_dirhash`) and a directory's worth at once (:func:`ext4_dirhashes`),
  for directories of ``--names`` names;
* ``names``: the no-key names of every encrypted directory of the image, one by one
  (``Namespace.display_name``) and a directory at a time (``display_names``);
* ``file nodes``: the tree nodes of every regular file of the image, through the general
  path (``attrs_of``, a :class:`Node`, the tree layout's encoder) and through
  ``engine.filenode`` where it applies; the outputs are compared byte for byte.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path

from bench_codec import best  # a sibling script: best of ``repeat`` timed calls

from cipherdump.engine.backup.walk import Walk
from cipherdump.engine.chunker import DEFAULT_CHUNK_SIZE
from cipherdump.engine.filenode import file_context, file_node
from cipherdump.engine.parent import LOCATED_ATTRS
from cipherdump.engine.views.image import ImageNode, Namespace
from cipherdump.ext4 import open_filesystem
from cipherdump.ondisk.dirhash import DX_HASH_HALF_MD4, ext4_dirhash, ext4_dirhashes
from cipherdump.repo import Id, KdfParams, MemoryBackend, Repository
from cipherdump.repo.tree import Node, join_nodes

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample.img"


def report(what: str, count: int, slow: float, fast: float) -> None:
    print(
        f"{what:>11}: {slow / count * 1e6:7.2f} -> {fast / count * 1e6:6.2f} us each"
        f"  ({fast / slow:.2f}x, {count} each pass)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=SAMPLE)
    parser.add_argument("--names", type=int, default=300, help="Names per directory (dirhash).")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    rng = random.Random(1)
    seed = rng.randbytes(16)
    dirs = [[rng.randbytes(32) for _ in range(args.names)] for _ in range(20)]
    count = sum(map(len, dirs))
    one = best(lambda: [ext4_dirhash(n, DX_HASH_HALF_MD4, seed, True) for d in dirs for n in d],
               args.repeat)  # fmt: skip
    together = best(lambda: [ext4_dirhashes(d, DX_HASH_HALF_MD4, seed, True) for d in dirs],
                    args.repeat)  # fmt: skip
    report("dirhash", count, one, together)

    with open_filesystem(str(args.image)) as fs:
        ns = Namespace(fs)
        listed: list[tuple[ImageNode, list[ImageNode]]] = []
        todo = [ns.root_node()]
        while todo:
            node = todo.pop()
            kids = [k for k in ns.iter_children(node) if isinstance(k, ImageNode)]
            listed.append((node, kids))
            todo += [k for k in kids if k.inode.is_dir]
        encrypted = [(n.inode, n.inode.entries()) for n, _ in listed if n.inode.is_encrypted]
        names = sum(len(entries) for _, entries in encrypted)
        if names:
            one = best(lambda: [[ns.display_name(d, e) for e in es] for d, es in encrypted],
                       args.repeat)  # fmt: skip
            together = best(lambda: [ns.display_names(d, es) for d, es in encrypted], args.repeat)
            report("names", names, one, together)

        repo = Repository.init(MemoryBackend(), b"pw", kdf=KdfParams.insecure_for_tests())
        job = Walk(repo, fs, DEFAULT_CHUNK_SIZE).maker
        content = (Id(bytes(32)),)
        files = [
            (order, kid)
            for _, kids in listed
            for order, kid in enumerate(kids)
            if kid.inode.is_file and file_context(kid.inode)[0]
        ]
        if not files:
            return

        def general() -> list[bytes]:
            out = []
            for order, kid in files:
                attrs = job.attrs_of(kid, order, {})
                attrs.update(source=bytes(16), chunk_size=1 << 20, chunks=[0])
                node = Node(kid.raw_name, "file", content=content, attrs=attrs)
                out.append(join_nodes([(kid.raw_name, node)], LOCATED_ATTRS))
            return out

        def fast() -> list[bytes]:
            out = []
            for order, kid in files:
                _, context = file_context(kid.inode)
                if context is not None and kid.inode.is_encrypted:
                    job.policy_census.add({}, context)
                runs = kid.inode.runs
                extents = [
                    (r.lblk, r.length, r.pblk, r.unwritten) for r in runs if r.pblk is not None
                ]
                span = file_node(
                    kid, order, LOCATED_ATTRS, context=context, extents=extents,
                    record_key=bytes(16), chunk_size=1 << 20, chunks=(0,), content=content,
                )  # fmt: skip
                out.append(join_nodes([(kid.raw_name, span)], LOCATED_ATTRS))
            return out

        if general() != fast():
            sys.exit("the two paths made different nodes")
        report("file nodes", len(files), best(general, args.repeat), best(fast, args.repeat))
    print(f"(image {args.image}, Python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
