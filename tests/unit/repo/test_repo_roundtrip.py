"""Repository round trips: blobs, trees, snapshots, dedup, keys, write ordering."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cipherdump.errors import BackendError, IntegrityError, KeyProblem, NotFoundError
from cipherdump.repo import (
    BlobType,
    FileType,
    Handle,
    Id,
    KdfParams,
    LocalBackend,
    MemoryBackend,
    Node,
    Repository,
    Snapshot,
    Tree,
)
from cipherdump.repo.blobstore import load_index_file

KDF = KdfParams.insecure_for_tests()


@pytest.fixture(params=["memory", "local"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> MemoryBackend | LocalBackend:
    if request.param == "memory":
        return MemoryBackend()
    return LocalBackend.create(tmp_path / "repo")


@pytest.fixture
def repo(backend: MemoryBackend | LocalBackend) -> Iterator[Repository]:
    r = Repository.init(backend, b"secret", kdf=KDF, pack_size=8192)
    yield r
    r.close()


def _indexed_blob_count(repo: Repository) -> int:
    total = 0
    for info in repo.backend.list(FileType.INDEX):
        f = load_index_file(repo.backend, repo._key, info.name)
        total += sum(p.count for p in f.packs)
    return total


def test_blob_round_trip_across_sessions(backend: MemoryBackend | LocalBackend) -> None:
    chunks = [os.urandom(n) for n in (0, 1, 100, 5000, 20000)]
    with Repository.init(backend, b"secret", kdf=KDF, pack_size=8192) as repo:
        ids = [repo.save_blob(BlobType.DATA, c) for c in chunks]
        # Readable before flush, from the unfinished pack.
        assert [repo.load_blob(BlobType.DATA, i) for i in ids] == chunks
    with Repository.open(backend, b"secret") as repo:
        assert [repo.load_blob(BlobType.DATA, i) for i in ids] == chunks
        assert all(repo.has_blob(BlobType.DATA, i) for i in ids)
        assert not repo.has_blob(BlobType.TREE, ids[0])


def test_dedup_same_blob_stored_once(repo: Repository) -> None:
    chunk = os.urandom(3000)
    a = repo.save_blob(BlobType.DATA, chunk)
    b = repo.save_blob(BlobType.DATA, chunk)
    for _ in range(10):  # fills packs, so the first copy is flushed
        repo.save_blob(BlobType.DATA, os.urandom(3000))
    c = repo.save_blob(BlobType.DATA, chunk)
    repo.flush()
    assert a == b == c
    assert _indexed_blob_count(repo) == 11
    before = sum(i.size for i in repo.backend.list(FileType.PACK))
    repo.save_blob(BlobType.DATA, chunk)
    repo.flush()
    assert sum(i.size for i in repo.backend.list(FileType.PACK)) == before


def test_dedup_across_sessions(backend: MemoryBackend | LocalBackend) -> None:
    chunk = os.urandom(1000)
    with Repository.init(backend, b"secret", kdf=KDF) as repo:
        repo.save_blob(BlobType.DATA, chunk)
    packs = list(backend.list(FileType.PACK))
    with Repository.open(backend, b"secret") as repo:
        repo.save_blob(BlobType.DATA, chunk)
    assert list(backend.list(FileType.PACK)) == packs


def test_compressed_blobs(repo: Repository) -> None:
    text = b"hello world " * 1000
    blob_id = repo.save_blob(BlobType.DATA, text, compress=True)
    repo.flush()
    assert repo.load_blob(BlobType.DATA, blob_id) == text
    assert sum(i.size for i in repo.backend.list(FileType.PACK)) < 1000


names = st.binary(min_size=1, max_size=255)


@settings(max_examples=30, deadline=None)
@given(st.lists(names, unique=True, max_size=20), st.binary(max_size=64))
def test_tree_names_and_attrs_survive_exactly(names: list[bytes], blob: bytes) -> None:
    repo = Repository.init(MemoryBackend(), b"pw", kdf=KDF, lock=False)
    data_id = repo.save_blob(BlobType.DATA, blob)
    nodes = [
        Node(n, "file", content=(data_id,), attrs={"mode": 0o100644, "raw": n, "t": "é"})
        for n in names
    ]
    tree = Tree.of(nodes)
    tree_id = repo.save_tree(tree)
    repo.flush()
    again = Repository.open(repo.backend, b"pw", lock=False)
    assert again.load_tree(tree_id) == tree
    assert [n.name for n in again.load_tree(tree_id).nodes] == sorted(names)


def test_unchanged_subtrees_are_shared(repo: Repository) -> None:
    leaf = Tree.of([Node(b"f", "file", attrs={"size": 1})])
    leaf_id = repo.save_tree(leaf)
    root1 = repo.save_tree(Tree.of([Node(b"d", "dir", subtree=leaf_id), Node(b"x", "file")]))
    root2 = repo.save_tree(Tree.of([Node(b"d", "dir", subtree=leaf_id), Node(b"y", "file")]))
    assert repo.save_tree(Tree.of([Node(b"f", "file", attrs={"size": 1})])) == leaf_id
    repo.flush()
    assert root1 != root2
    assert _indexed_blob_count(repo) == 3


def test_tree_rejects_unsorted_nodes() -> None:
    with pytest.raises(ValueError):
        Tree((Node(b"b", "file"), Node(b"a", "file")))
    with pytest.raises(ValueError):
        Tree((Node(b"a", "file"), Node(b"a", "file")))


def test_snapshots_list_find_latest(repo: Repository) -> None:
    root = repo.save_tree(Tree())
    ids = [
        repo.save_snapshot(
            Snapshot(root, time_ns=t, hostname="h", tags=("a",), attrs={"dev": b"\x00"})
        )
        for t in (30, 10, 20)
    ]
    listed = repo.list_snapshots()
    assert [s.time_ns for _, s in listed] == [10, 20, 30]
    assert repo.find_snapshot("latest") == (ids[0], listed[-1][1])
    assert repo.find_snapshot(ids[1].hex[:10])[0] == ids[1]
    assert repo.find_snapshot(ids[2].hex)[1].time_ns == 20
    assert listed[0][1].attrs == {"dev": b"\x00"}
    with pytest.raises(NotFoundError):
        repo.find_snapshot("f" * 64 if not ids[0].hex.startswith("f") else "0" * 64)
    with pytest.raises(NotFoundError):
        repo.find_snapshot("")
    with pytest.raises(NotFoundError):
        repo.find_snapshot("zz")
    # Ambiguous prefix: pad with snapshots until two share a first hex digit.
    prefixes = {i.hex[0] for i in ids}
    t = 40
    while len(prefixes) == len(ids):
        new = repo.save_snapshot(Snapshot(root, time_ns=t))
        ids.append(new)
        prefixes.add(new.hex[0])
        t += 1
    dup = next(p for p in prefixes if sum(i.hex.startswith(p) for i in ids) > 1)
    with pytest.raises(NotFoundError, match="ambiguous"):
        repo.find_snapshot(dup)


def test_a_listing_leaves_out_the_attrs_it_is_told_to(repo: Repository) -> None:
    """A listing holds every snapshot at once: big attrs (a backup's directory table)
    stay out of it, while the latest and a single snapshot still come whole."""
    attrs = {"dirs": bytes(1000), "path": b"/"}
    sid = repo.save_snapshot(Snapshot(repo.save_tree(Tree()), time_ns=5, attrs=attrs))
    ((listed_id, light),) = repo.list_snapshots(drop_attrs={"dirs"})
    assert listed_id == sid and light.attrs == {"path": b"/"}
    assert repo.find_snapshot("latest")[1].attrs == attrs
    assert repo.load_snapshot(sid).attrs == attrs


def test_latest_of_empty_repository(repo: Repository) -> None:
    with pytest.raises(NotFoundError):
        repo.find_snapshot("latest")


def test_wrong_password_is_a_one_line_key_problem(backend: MemoryBackend | LocalBackend) -> None:
    Repository.init(backend, b"right", kdf=KDF).close()
    with pytest.raises(KeyProblem) as info:
        Repository.open(backend, b"wrong")
    assert "\n" not in str(info.value)
    assert "wrong password" in str(info.value)


def test_second_key_opens_too(backend: MemoryBackend | LocalBackend) -> None:
    with Repository.init(backend, b"one", kdf=KDF) as repo:
        blob = repo.save_blob(BlobType.DATA, b"x")
        repo.add_key(b"two", KDF)
    with Repository.open(backend, b"two") as repo:
        assert repo.load_blob(BlobType.DATA, blob) == b"x"


def test_init_twice_and_open_nothing(backend: MemoryBackend | LocalBackend) -> None:
    with pytest.raises(NotFoundError):
        Repository.open(backend, b"pw")
    Repository.init(backend, b"pw", kdf=KDF).close()
    with pytest.raises(BackendError):
        Repository.init(backend, b"pw", kdf=KDF)


def test_close_without_flush_discards(backend: MemoryBackend | LocalBackend) -> None:
    repo = Repository.init(backend, b"pw", kdf=KDF)
    blob = repo.save_blob(BlobType.DATA, b"lost")
    repo.close()
    with Repository.open(backend, b"pw") as again:
        assert not again.has_blob(BlobType.DATA, blob)
        with pytest.raises(IntegrityError):
            again.load_blob(BlobType.DATA, blob)


class RecordingBackend(MemoryBackend):
    """Records the order of saves, to check the write-ordering rules."""

    def __init__(self) -> None:
        super().__init__()
        self.saved: list[Handle] = []

    def save(self, handle: Handle, source: BinaryIO) -> None:
        super().save(handle, source)
        self.saved.append(handle)


def test_write_ordering_packs_then_index_then_snapshot() -> None:
    backend = RecordingBackend()
    repo = Repository.init(backend, b"pw", kdf=KDF, pack_size=4096)
    assert [h.type for h in backend.saved[:2]] == [FileType.KEY, FileType.CONFIG]
    ids = [repo.save_blob(BlobType.DATA, os.urandom(1500)) for _ in range(40)]
    tree = repo.save_tree(Tree.of([Node(b"f", "file", content=tuple(ids))]))
    repo.save_snapshot(Snapshot(tree, time_ns=1))
    repo.close()
    order = [h for h in backend.saved if h.type is not FileType.LOCK]
    saved_packs: set[str] = set()
    for position, handle in enumerate(order):
        if handle.type is FileType.PACK:
            saved_packs.add(handle.name)
        elif handle.type is FileType.INDEX:
            data = backend.files[handle]
            index = load_index_file(backend, repo._key, handle.name)
            assert data and {p.id.hex for p in index.packs} <= saved_packs
        elif handle.type is FileType.SNAPSHOT:
            assert position == len(order) - 1
            assert order[position - 1].type is FileType.INDEX


def test_pack_sizes_follow_the_target(tmp_path: Path) -> None:
    backend = LocalBackend.create(tmp_path / "r")
    with Repository.init(backend, b"pw", kdf=KDF, pack_size=64 * 1024) as repo:
        for _ in range(100):
            repo.save_blob(BlobType.DATA, os.urandom(4000))
    sizes = sorted(i.size for i in backend.list(FileType.PACK))
    assert len(sizes) >= 6
    assert all(s < 80 * 1024 for s in sizes)
    assert all(s >= 64 * 1024 for s in sizes[1:])  # only the last one may be short


def test_ids_are_values() -> None:
    raw = bytes(range(32))
    assert Id.from_hex(raw.hex()) == Id(raw)
    assert str(Id(raw)) == raw.hex() and Id(raw).short == raw[:4].hex()
