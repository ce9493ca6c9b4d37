"""Micro-benchmark of the tree codec: encode, decode, join and split of real-shaped nodes.

Usage::

    python3 bench/bench_codec.py                  # synthetic nodes, shaped as attrs_of makes them
    python3 bench/bench_codec.py --repo DIR       # the nodes of every tree of a repository
                                                  # (password: CIPHERDUMP_PASSWORD, or "bench")
    python3 bench/bench_codec.py --baseline HEAD  # alternate with an export of HEAD

Figures are best of ``--repeat`` passes over all nodes, in µs per node:

* ``encode_node``: :func:`encode_node` of every node once, as a backup does (the ints
  that differ from node to node, such as times, inode numbers and block numbers, are new
  to the codec's cache);
* ``encode_one``: the same typical node (the median-sized one) over and over;
* ``encode_attrs``: :func:`codec.encode` of every node's attrs;
* ``join_nodes``, ``join_spans``: a tree's plaintext from its nodes, or from their
  encodings (what an incremental backup reuses);
* ``join_located``: a version-2 tree (with its layout) from its nodes, as a backup
  saves every tree;
* ``spans``, ``spans+attr``: :func:`tree_spans` of every version-2 tree, then (as the
  engine does) the ``source``, ``order`` and ``context`` attrs of every span;
* ``decode``: :func:`codec.decode` of every tree.

``digest`` hashes every byte produced, so equal digests mean byte-identical output.
With ``--baseline REF`` the git revision REF is exported to a temporary directory and
the current tree and REF run alternately in child processes (``--rounds`` pairs) on the
same nodes, so both see the same machine load; the best of each is shown.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# The order in which engine/backup/nodes.py attrs_of and make_node fill a node's attrs.
ATTR_ORDER = [
    *("ino", "mode", "uid", "gid", "size", "links", "flags", "generation", "project_id"),
    *("version", "blocks", "atime_ns", "mtime_ns", "ctime_ns", "order", "crtime_ns"),
    *("name_encrypted", "display", "hash", "context", "xattrs", "rdev", "inline", "symlink"),
    *("extents", "ls_error", "target", "ls", "source", "chunk_size", "chunks"),
]
LOCATED = ("context", "order", "source")

# A node as plain data: (name, kind, subtree raw id or None, content raw ids, attrs).
RawNode = tuple[bytes, str, bytes | None, tuple[bytes, ...], dict[str, Any]]


def as_built(value: Any) -> Any:
    """A decoded value as the engine builds it: lists, not tuples."""
    if isinstance(value, tuple):
        return [as_built(v) for v in value]
    if isinstance(value, dict):
        return {k: as_built(v) for k, v in value.items()}
    return value


def engine_order(attrs: dict[str, Any]) -> dict[str, Any]:
    rank = {k: i for i, k in enumerate(ATTR_ORDER)}
    return {k: as_built(attrs[k]) for k in sorted(attrs, key=lambda k: rank.get(k, 99))}


def repo_trees(path: str) -> list[list[RawNode]]:
    from cipherdump.repo import codec
    from cipherdump.repo.backends.local import LocalBackend
    from cipherdump.repo.ids import BlobType, Id
    from cipherdump.repo.repository import Repository

    password = os.environ.get("CIPHERDUMP_PASSWORD", "bench").encode()
    trees: list[list[RawNode]] = []
    with Repository.open(LocalBackend(path), password, lock=False) as repo:
        seen: set[Any] = set()
        stack = [snap.tree for _, snap in repo.list_snapshots()]
        while stack:
            tree_id = stack.pop()
            if tree_id in seen:
                continue
            seen.add(tree_id)
            top = codec.decode(repo.load_blob(BlobType.TREE, tree_id))
            assert isinstance(top, dict)
            nodes: list[RawNode] = []
            for m in top["nodes"]:
                nodes.append(
                    (
                        m["name"],
                        m["kind"],
                        m.get("subtree"),
                        tuple(m.get("content", ())),
                        engine_order(m["attrs"]),
                    )
                )
            stack.extend(Id(m["subtree"]) for m in top["nodes"] if "subtree" in m)
            trees.append(nodes)
    return trees


def synthetic_trees(dirs: int = 60, per_dir: int = 100, seed: int = 1) -> list[list[RawNode]]:
    """Directories of nodes like a backup of fscrypt-encrypted and plain files makes."""
    rng = random.Random(seed)
    ino = 12
    trees: list[list[RawNode]] = []
    for d in range(dirs):
        encrypted = d % 2 == 0
        prefix = bytes(rng.randrange(256) for _ in range(24))
        nodes: list[RawNode] = []
        for order in range(per_dir):
            ino += 1
            t = 1_795_699_600_000_000_000 + rng.randrange(10**11)
            kind = rng.choices(["file", "dir", "symlink"], [90, 6, 4])[0]
            size = rng.choice([0, 9000, 8192, 300, rng.randrange(1 << 24)])
            attrs: dict[str, Any] = {
                "ino": ino,
                "mode": {"file": 0o100644, "dir": 0o40755, "symlink": 0o120777}[kind],
                "uid": rng.choice([0, 1000]),
                "gid": rng.choice([0, 1000]),
                "size": size,
                "links": 2 if kind == "dir" else 1,
                "flags": 0x80800 if encrypted else 0x80000,
                "generation": rng.randrange(1 << 32),
                "project_id": 0,
                "version": rng.randrange(1, 8),
                "blocks": -(-size // 4096) * 8,
                "atime_ns": t,
                "mtime_ns": t + rng.randrange(10**5),
                "ctime_ns": t + rng.randrange(10**5),
                "order": order,
                "crtime_ns": t,
            }
            if encrypted:
                name = bytes(rng.randrange(256) for _ in range(rng.choice([16, 32, 48])))
                attrs["name_encrypted"] = True
                attrs["display"] = bytes(rng.randrange(65, 91) for _ in range(54))
                attrs["context"] = prefix + bytes(rng.randrange(256) for _ in range(16))
            else:
                name = f"file-{order:05d}.dat".encode()
            if kind == "symlink":
                attrs["symlink"] = bytes(rng.randrange(256) for _ in range(40))
            extents = [
                [i * 8, 8, rng.randrange(1 << 20), False] for i in range(rng.choice([0, 1, 1, 3]))
            ]
            if extents and kind == "file":
                attrs["extents"] = extents
            subtree = None
            content: tuple[bytes, ...] = ()
            if kind == "dir":
                subtree = rng.randbytes(32)
            attrs["source"] = rng.randbytes(16)
            if kind == "file" and size:
                content = tuple(rng.randbytes(32) for _ in range(1 + size // (1 << 20)))
                attrs["chunk_size"] = 1 << 20
                attrs["chunks"] = list(range(len(content)))
            nodes.append((name, kind, subtree, content, attrs))
        nodes.sort(key=lambda n: n[0])
        trees.append(nodes)
    return trees


def best(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def run(fixture: Path, repeat: int) -> dict[str, Any]:
    """Time this interpreter's cipherdump (whichever is first on sys.path)."""
    import cipherdump.repo.tree as tree_mod
    from cipherdump.repo import codec
    from cipherdump.repo.ids import Id
    from cipherdump.repo.tree import Node, join_nodes, tree_spans

    raw_trees: list[list[RawNode]] = pickle.loads(fixture.read_bytes())
    trees = [
        [
            Node(
                name,
                kind,
                subtree=None if sub is None else Id(sub),
                content=tuple(Id(c) for c in content),
                attrs=attrs,
            )
            for name, kind, sub, content, attrs in nodes
        ]
        for nodes in raw_trees
    ]
    all_nodes = [n for nodes in trees for n in nodes]
    all_attrs = [n.attrs for n in all_nodes]
    n_nodes = len(all_nodes)
    encode, decode, encode_node = codec.encode, codec.decode, tree_mod.encode_node
    plain = [join_nodes([(n.name, n) for n in nodes]) for nodes in trees]
    located = [join_nodes([(n.name, n) for n in nodes], LOCATED) for nodes in trees]
    spans_of = [tree_spans(p) or [] for p in located]
    encoded_pairs = [
        [(n.name, s.data) for n, s in zip(nodes, spans, strict=True)]
        for nodes, spans in zip(trees, spans_of, strict=True)
    ]

    digest = hashlib.sha256()
    for n in all_nodes:
        digest.update(encode_node(n))
    for a in all_attrs:
        digest.update(encode(a))
    for p in plain:
        digest.update(p)
    for p in located:
        digest.update(p)
    for spans in spans_of:
        for s in spans:
            digest.update(s.data)
            for k in LOCATED:
                digest.update(k.encode() + b"=" + (s.attr(k) or b"-"))
            if s.attr("order") is not None:
                digest.update(s.with_attr("order", encode(7)).data)
    for p in plain:
        digest.update(repr(decode(p)).encode())

    def t_encode_node() -> None:
        for n in all_nodes:
            encode_node(n)

    typical = sorted(all_nodes, key=lambda n: len(encode_node(n)))[n_nodes // 2]

    def t_encode_one() -> None:
        for _ in all_nodes:
            encode_node(typical)

    def t_encode_attrs() -> None:
        for a in all_attrs:
            encode(a)

    def t_join_nodes() -> None:
        for nodes in trees:
            join_nodes([(n.name, n) for n in nodes])

    def t_join_spans() -> None:
        for pairs in encoded_pairs:
            join_nodes(pairs)

    def t_join_located() -> None:
        for nodes in trees:
            join_nodes([(n.name, n) for n in nodes], LOCATED)

    def t_spans() -> None:
        for p in located:
            tree_spans(p)

    def t_spans_use() -> None:
        # What the incremental backup does with each node of a changed directory.
        for p in located:
            for s in tree_spans(p) or ():
                s.attr("source")
                s.attr("order")
                s.attr("context")

    def t_decode() -> None:
        for p in plain:
            decode(p)

    results: dict[str, Any] = {}
    for label, fn in [
        ("encode_node", t_encode_node),
        ("encode_one", t_encode_one),
        ("encode_attrs", t_encode_attrs),
        ("join_nodes", t_join_nodes),
        ("join_spans", t_join_spans),
        ("join_located", t_join_located),
        ("spans", t_spans),
        ("spans+attr", t_spans_use),
        ("decode", t_decode),
    ]:
        results[label] = best(fn, repeat) / n_nodes * 1e6
    results["nodes"] = n_nodes
    results["trees"] = len(trees)
    results["digest"] = digest.hexdigest()[:16]
    return results


def child(source: Path | None, fixture: Path, repeat: int) -> dict[str, Any]:
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = str(source)
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import bench_codec; "
        "from pathlib import Path; "
        "print(json.dumps(bench_codec.run(Path(sys.argv[2]), int(sys.argv[3]))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent), str(fixture), str(repeat)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result: dict[str, Any] = json.loads(out)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", help="Take the nodes of every tree of this repository.")
    parser.add_argument("--baseline", help="A git revision to compare with, alternately.")
    parser.add_argument("--rounds", type=int, default=2, help="Alternated pairs (default 2).")
    parser.add_argument("--repeat", type=int, default=3, help="Passes per figure (default 3).")
    args = parser.parse_args()

    trees = repo_trees(args.repo) if args.repo else synthetic_trees()
    with tempfile.TemporaryDirectory(prefix="bench-codec-") as tmp:
        fixture = Path(tmp) / "nodes.pickle"
        fixture.write_bytes(pickle.dumps(trees))
        if args.baseline is None:
            results = run(fixture, args.repeat)
            for key, value in results.items():
                print(
                    f"{key:>14}: {value:.3f}" if isinstance(value, float) else f"{key:>14}: {value}"
                )
            return
        export = Path(tmp) / "baseline"
        export.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", args.baseline, "src/cipherdump"],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(export)], input=archive, check=True)
        runs: dict[str, list[dict[str, Any]]] = {"current": [], args.baseline: []}
        for _ in range(args.rounds):
            runs["current"].append(child(None, fixture, args.repeat))
            runs[args.baseline].append(child(export / "src", fixture, args.repeat))
    first = runs["current"][0]
    print(f"{first['nodes']} nodes in {first['trees']} trees; µs per node, best of all runs")
    labels = [k for k, v in first.items() if isinstance(v, float)]
    print(f"{'':>14} {'current':>9} {args.baseline:>9} {'speed-up':>9}")
    for label in labels:
        now = min(r[label] for r in runs["current"])
        before = min(r[label] for r in runs[args.baseline])
        print(f"{label:>14} {now:9.3f} {before:9.3f} {before / now:8.2f}x")
    digests = {name: {r["digest"] for r in rs} for name, rs in runs.items()}
    print("digests:", digests)
    if len(set().union(*digests.values())) != 1:
        raise SystemExit("output bytes differ")


if __name__ == "__main__":
    main()
