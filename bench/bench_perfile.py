"""Where a key-less full backup's per-file CPU time goes, stage by stage, on an image.

    python bench/bench_perfile.py /var/tmp/cipherdump-bench-scale/100k/built.img

Each stage of what the backup does per small file is run over every regular file of
the image in turn, in this process, with a warm page cache, and timed in CPU seconds
(``time.process_time``; the benchmark machines are shared, so wall time says more
about the neighbours than about us).  The stages, as the walk runs them:

* ``list+inode``: a directory's entries, their no-key names, each inode read,
  checked and decoded (:meth:`Namespace.iter_children`);
* ``record keys``: the reuse keys of each entry (:class:`RecordKeys`), made in a full
  backup too, for the next one;
* ``context``: the inode's xattrs (its encryption context), ``runs``: its block map;
* ``node``: the encoded tree node (:func:`file_node`);
* ``read``: the file's block; ``blob id``: its keyed BLAKE3; ``seal``: its sealing
  into a pack being written (a temporary file: the repository's write path is not in
  it).

Not in them: the walk's own bookkeeping, read-ahead hints, the index lookups, saving
the trees, and the start (imports, repository open): the sum is a floor of the
backup's CPU time per file, and the rest is what ``bench_scale.py`` measures beyond it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable

from cipherdump.engine.backup.reuse import RecordKeys
from cipherdump.engine.filenode import file_context, file_node
from cipherdump.engine.parent import LOCATED_ATTRS
from cipherdump.engine.views.image import ImageNode, Namespace
from cipherdump.ext4.fs import open_filesystem
from cipherdump.repo import BlobType, Id
from cipherdump.repo.crypto import MasterKey
from cipherdump.repo.pack import PackWriter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    fs = open_filesystem(args.image)
    ns = Namespace(fs)
    dirs: list[ImageNode] = []
    stack: list[object] = [ns.root_node()]
    while stack:
        node = stack.pop()
        if isinstance(node, ImageNode) and node.inode.is_dir:
            dirs.append(node)
            stack.extend(ns.iter_children(node))
    times: dict[str, float] = {}

    def timed(name: str, run: Callable[[], None]) -> None:
        t0 = time.process_time()
        run()
        times[name] = time.process_time() - t0

    kids: list[ImageNode] = []

    def listing() -> None:
        fs._inode_cache.clear()  # decoded again, as a backup does once
        for d in dirs:
            kids.extend(k for k in ns.iter_children(d) if isinstance(k, ImageNode))

    timed("list+inode", listing)
    kids[:] = [k for k in kids if k.inode.is_file and not k.inode.has_inline_data]
    keys = RecordKeys(fs, 1 << 20)
    timed("record keys", lambda: [keys.of(d.inode) for d in dirs])
    contexts: list[bytes | None] = []
    timed("context", lambda: contexts.extend(file_context(k.inode)[1] for k in kids))
    extents: list[list[tuple[int, int, int, bool]]] = []

    def runs() -> None:
        for k in kids:
            extents.append(
                [
                    (r.lblk, r.length, r.pblk, r.unwritten)
                    for r in k.inode.runs
                    if r.pblk is not None
                ]
            )

    timed("runs", runs)
    content = (Id(bytes(32)),)

    def nodes() -> None:
        for i, k in enumerate(kids):
            file_node(
                k,
                i,
                LOCATED_ATTRS,
                context=contexts[i],
                extents=extents[i],
                record_key=bytes(16),
                chunk_size=1 << 20,
                chunks=(0,),
                content=content,
            )

    timed("node", nodes)
    datas: list[bytes] = []

    def read() -> None:
        for k in kids:
            run = k.inode.runs[0]
            assert run.pblk is not None
            datas.append(fs.read_block(run.pblk, run.length))

    timed("read", read)
    key = MasterKey(os.urandom(32))
    ids: list[Id] = []
    timed("blob id", lambda: ids.extend(key.blob_id(d) for d in datas))
    writer = PackWriter(key, None)

    def seal() -> None:
        for d, i in zip(datas, ids, strict=True):
            writer.add(BlobType.DATA, i, d, False)

    timed("seal", seal)
    n = len(kids)
    figures = {k: round(v / n * 1e6, 2) for k, v in times.items()}
    figures["sum"] = round(sum(times.values()) / n * 1e6, 2)
    if args.json:
        print(json.dumps({"files": n, "us_per_file": figures}))
        return
    print(f"{n} files; CPU µs per file:", file=sys.stderr)
    for name, us in figures.items():
        print(f"{name:>12}: {us:7.2f}")


if __name__ == "__main__":
    main()
