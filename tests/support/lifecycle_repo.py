"""A repository of dated synthetic snapshots, for forget, prune and stats tests.

Each snapshot has a root tree with a few files whose contents are data blobs: some
shared by every snapshot, some its own, so that forgetting a snapshot leaves data only
it used (prune's work) next to data others still use.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

from cipherdump.repo import BlobType, Id, KdfParams, LocalBackend, Node, Repository, Snapshot, Tree

PASSWORD = b"pw"
FAST_KDF = KdfParams(1, 8, 1)


def ns(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()) * 10**9


def content(label: str, size: int) -> bytes:
    """Deterministic incompressible bytes."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.blake2b(f"{label}/{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def make_repo(path: Path, pack_size: int = 4096) -> None:
    Repository.init(
        LocalBackend.create(str(path)), PASSWORD, kdf=FAST_KDF, pack_size=pack_size
    ).close()


def add_snapshot(
    path: Path,
    when: str,
    *,
    host: str = "h1",
    tags: tuple[str, ...] = (),
    own_chunks: int = 3,
    chunk: int = 1500,
    shared_chunks: int = 2,
) -> Id:
    """A snapshot dated ``when`` (UTC) of a tree holding shared files and its own."""
    with Repository.open(LocalBackend(str(path)), PASSWORD) as repo:
        nodes = []
        shared = tuple(
            repo.save_blob(BlobType.DATA, content(f"shared{i}", chunk))
            for i in range(shared_chunks)
        )
        nodes.append(Node(b"shared", "file", content=shared))
        own = tuple(
            repo.save_blob(BlobType.DATA, content(f"{when}/{host}/{i}", chunk))
            for i in range(own_chunks)
        )
        nodes.append(Node(b"own", "file", content=own))
        sub = repo.save_tree(Tree((Node(b"note", "file", content=own[:1]),)))
        nodes.append(Node(b"sub", "dir", subtree=sub))
        tree = repo.save_tree(Tree(tuple(sorted(nodes, key=lambda n: n.name))))
        snap = Snapshot(
            tree,
            ns(when),
            hostname=host,
            tags=tags,
            attrs={"path": b"/", "source": "synthetic"},
        )
        return repo.save_snapshot(snap)


def expected_files(
    when: str, host: str = "h1", own_chunks: int = 3, chunk: int = 1500, shared_chunks: int = 2
) -> dict[bytes, bytes]:
    """What each path of a snapshot made by :func:`add_snapshot` holds."""
    own = [content(f"{when}/{host}/{i}", chunk) for i in range(own_chunks)]
    return {
        b"shared": b"".join(content(f"shared{i}", chunk) for i in range(shared_chunks)),
        b"own": b"".join(own),
        b"sub/note": own[0],
    }


def read_snapshot_files(repo: Repository, tree_id: Id, prefix: bytes = b"") -> dict[bytes, bytes]:
    """Every file's bytes in a snapshot's tree, read through the repository."""
    out: dict[bytes, bytes] = {}
    for node in repo.load_tree(tree_id).nodes:
        name = prefix + node.name
        if node.subtree is not None:
            out.update(read_snapshot_files(repo, node.subtree, name + b"/"))
        else:
            out[name] = b"".join(repo.load_blob(BlobType.DATA, b) for b in node.content)
    return out
