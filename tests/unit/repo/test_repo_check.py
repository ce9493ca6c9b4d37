"""check: a clean repository passes; any flipped byte in any file is found and named."""

from __future__ import annotations

import itertools
import os
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from cipherdump.errors import CipherdumpError
from cipherdump.progress import Progress
from cipherdump.repo import (
    BlobType,
    FileType,
    Handle,
    KdfParams,
    LocalBackend,
    Node,
    Repository,
    Snapshot,
    Tree,
)
from cipherdump.repo.tree import decode_tree, encode_tree
from repo_formats import VERSIONS, init_repository

KDF = KdfParams.insecure_for_tests()


def _build(root: Path, version: int = 2) -> LocalBackend:
    """A small repository with every kind of file: 2 keys, several packs and indexes;
    of format ``version`` (see repo_formats)."""
    backend = LocalBackend.create(root)
    with init_repository(backend, b"pw", version=version, kdf=KDF, pack_size=4096) as repo:
        repo.add_key(b"pw2", KDF)
        for round_ in range(2):
            ids = [repo.save_blob(BlobType.DATA, os.urandom(900)) for _ in range(8)]
            leaf = repo.save_tree(
                Tree.of([Node(b"file\xff", "file", content=tuple(ids), attrs={"r": round_})])
            )
            root_tree = repo.save_tree(Tree.of([Node(b"dir", "dir", subtree=leaf)]))
            repo.save_snapshot(Snapshot(root_tree, time_ns=round_, hostname="h"))
    return backend


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _findings(backend: LocalBackend) -> str:
    """Everything check --read-data (or opening for it) says, as text."""
    try:
        with Repository.open(backend, b"pw") as repo:
            report = repo.check(read_data=True)
    except CipherdumpError as exc:
        return f"open failed: {exc}"
    assert report.ok == (not report.errors)
    return report.text() if report.errors else ""


@pytest.mark.parametrize("version", VERSIONS)
def test_clean_repository_passes(tmp_path: Path, version: int) -> None:
    backend = _build(tmp_path / "repo", version)
    with Repository.open(backend, b"pw") as repo:
        for read_data in (False, True):
            report = repo.check(read_data=read_data)
            assert report.ok, report.text()
            assert report.snapshots == 2 and report.trees == 4
        assert repo.check(read_data=True).blobs_checked == 20
        assert not any("unreferenced" in str(f) for f in report.infos)


@pytest.mark.parametrize("version", VERSIONS)
def test_every_flipped_byte_is_found_and_named(tmp_path: Path, version: int) -> None:
    root = tmp_path / "repo"
    backend = _build(root, version)
    files = _files(root)
    kinds = {p.relative_to(root).parts[0] for p in files}
    assert kinds == {"config", "keys", "snapshots", "index", "data"}
    for path in files:
        rel = str(path.relative_to(root))
        original = path.read_bytes()
        size = len(original)
        offsets = sorted({0, 1, 7, 8, size // 3, size // 2, size - 13, size - 1})
        for offset in offsets:
            damaged = bytearray(original)
            damaged[offset] ^= 0x40
            path.write_bytes(damaged)
            try:
                text = _findings(backend)
            finally:
                path.write_bytes(original)
            assert text, f"flipping byte {offset} of {rel} went unnoticed"
            assert rel in text, f"flip at {offset} of {rel} not named:\n{text}"
    assert _findings(backend) == ""


def _pack_parts(data: bytes) -> tuple[int, int]:
    """(start of the sealed header, start of the trailer) of a pack."""
    (header_len,) = struct.unpack_from("<I", data, len(data) - 12)
    return len(data) - 12 - header_len, len(data) - 12


def _flip(at: Callable[[bytes], int]) -> Callable[[bytes], bytes]:
    def damage(data: bytes) -> bytes:
        out = bytearray(data)
        out[at(data)] ^= 0x10
        return bytes(out)

    return damage


# Each damage to a pack, where a version-2 pack's name (BLAKE3 of header and trailer)
# does not cover the byte, or covers it: every one must be found and the pack named.
PACK_DAMAGE: dict[str, Callable[[bytes], bytes]] = {
    "first blob byte": _flip(lambda d: 0),
    "blob middle": _flip(lambda d: _pack_parts(d)[0] // 2),
    "last blob byte": _flip(lambda d: _pack_parts(d)[0] - 1),
    "header nonce": _flip(lambda d: _pack_parts(d)[0]),
    "header middle": _flip(lambda d: sum(_pack_parts(d)) // 2),
    "header tag": _flip(lambda d: _pack_parts(d)[1] - 1),
    "trailer length": _flip(lambda d: len(d) - 12),
    "trailer magic": _flip(lambda d: len(d) - 7),
    "trailer version": _flip(lambda d: len(d) - 4),
    "trailer reserved": _flip(lambda d: len(d) - 1),
    "truncated by one": lambda d: d[:-1],
    "truncated to the blobs": lambda d: d[: _pack_parts(d)[0]],
    "one byte appended": lambda d: d + b"\0",
    "blob bytes appended": lambda d: d[: _pack_parts(d)[0]] + d[:41] + d[_pack_parts(d)[0] :],
}


@pytest.mark.parametrize("damage", list(PACK_DAMAGE))
@pytest.mark.parametrize("version", VERSIONS)
def test_damaged_packs_are_named(tmp_path: Path, version: int, damage: str) -> None:
    root = tmp_path / "repo"
    backend = _build(root, version)
    # An unreferenced pack too: only reading the data can vouch for it.
    with Repository.open(backend, b"pw") as repo:
        repo.save_blob(BlobType.DATA, os.urandom(900))
        repo.save_blob(BlobType.DATA, os.urandom(900))
        repo._store._flush_pack(BlobType.DATA)
        repo._store._unindexed.clear()
    packs = sorted(p for p in (root / "data").rglob("*") if p.is_file())
    assert len(packs) > 2 and _findings(backend) == ""
    # The orphan is of version 2 whatever the repository's: so are all packs written now.
    assert {p.read_bytes()[-4] for p in packs} == {version, 2}
    for path in packs:
        rel = str(path.relative_to(root))
        original = path.read_bytes()
        path.write_bytes(PACK_DAMAGE[damage](original))
        try:
            text = _findings(backend)
        finally:
            path.write_bytes(original)
        assert rel in text, f"{damage} in {rel} went unnoticed or unnamed:\n{text}"
        assert "damaged" in text or "bytes, index/" in text, text


def test_damaged_blob_is_named(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    backend = LocalBackend.create(root)
    with Repository.init(backend, b"pw", kdf=KDF) as repo:
        blob = repo.save_blob(BlobType.DATA, b"a" * 1000)
        tree = repo.save_tree(Tree.of([Node(b"f", "file", content=(blob,))]))
        repo.save_snapshot(Snapshot(tree, time_ns=1))
        found = repo._store.index.lookup(BlobType.DATA, blob)
        assert found is not None
        handle, entry = Handle(FileType.PACK, found[0].hex), found[1]
    path = root / str(handle)
    data = bytearray(path.read_bytes())
    data[entry.offset + 30] ^= 1
    path.write_bytes(data)
    with Repository.open(backend, b"pw") as repo:
        report = repo.check(read_data=True)
        structural = repo.check(read_data=False)
    assert any(f.blob == blob and f.file == str(handle) for f in report.errors), report.text()
    assert structural.ok  # only reading the data can find this one


def test_orphan_pack_is_information_and_missing_pack_an_error(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    backend = _build(root)
    packs = sorted((root / "data").rglob("*"))
    pack_files = [p for p in packs if p.is_file()]
    # An orphan: a complete pack that no index names (as after a crash).
    with Repository.open(backend, b"pw") as repo:
        repo.save_blob(BlobType.DATA, b"orphan" * 100)
        repo._store._flush_pack(BlobType.DATA)
        repo._store._unindexed.clear()
    with Repository.open(backend, b"pw") as repo:
        report = repo.check(read_data=True)
    assert report.ok, report.text()
    assert any("unreferenced pack" in str(f) for f in report.infos)
    pack_files[0].unlink()
    with Repository.open(backend, b"pw") as repo:
        report = repo.check()
    assert not report.ok
    assert any(f.file == str(pack_files[0].relative_to(root)) for f in report.errors)


@pytest.mark.parametrize("what", ["snapshot", "index"])
def test_missing_files_break_nothing_else(tmp_path: Path, what: str) -> None:
    root = tmp_path / "repo"
    backend = _build(root)
    victim = next((root / ("snapshots" if what == "snapshot" else "index")).iterdir())
    victim.unlink()
    with Repository.open(backend, b"pw") as repo:
        report = repo.check(read_data=True)
    if what == "snapshot":
        assert report.ok and report.snapshots == 1
    else:
        assert not report.ok  # trees of a snapshot now point at unindexed blobs


def test_a_blob_stored_by_two_processes_of_one_writer_checks_clean(tmp_path: Path) -> None:
    """backup --jobs: two forked copies of one handle may both store a new blob; each
    writes its own pack and index, and the repository reads and checks as usual."""
    backend = LocalBackend.create(tmp_path / "repo")
    data = os.urandom(5000)
    with Repository.init(backend, b"pw", kdf=KDF) as repo:
        repo.prepare_fork()
        pid = os.fork()
        if pid == 0:  # the worker: its own pack and index of the same blob
            code = 1
            try:
                repo.become_worker()
                repo.save_blob(BlobType.DATA, data)
                repo.flush()
                code = 0
            finally:
                os._exit(code)
        blob_id = repo.save_blob(BlobType.DATA, data)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        tree = repo.save_tree(Tree.of([Node(b"f", "file", content=(blob_id,))]))
        repo.save_snapshot(Snapshot(tree, time_ns=1, hostname="h"))
    assert len(list(backend.list(FileType.PACK))) == 3  # the blob in two, the tree in one
    with Repository.open(backend, b"pw") as repo:
        assert repo.load_blob(BlobType.DATA, blob_id) == data
        report = repo.check(read_data=True)
        assert report.ok, report.text()


def test_read_data_reports_progress_pack_by_pack(tmp_path: Path) -> None:
    backend = _build(tmp_path / "repo")
    total = sum(info.size for info in backend.list(FileType.PACK))
    read: list[tuple[int, int]] = []
    walked: list[Progress] = []

    def keep(event: Progress) -> None:
        if event.phase == "reading packs":
            read.append((event.bytes_done, event.bytes_total or 0))
        else:
            walked.append(event)

    with Repository.open(backend, b"pw") as repo:
        assert repo.check(read_data=True, on_progress=keep).ok
        trees = repo.check().trees
        walked.clear()
        assert repo.check(on_progress=keep).ok  # the walk of the trees only
    assert read[0] == (0, total) and read[-1] == (total, total)
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(read))
    # The walk counts trees towards the number indexed, and ends with the number walked.
    assert walked and all(e.phase == "checking trees" and e.bytes_total is None for e in walked)
    assert walked[-1].items_done == walked[-1].items_total == trees
    assert all(e.items_total is not None and e.items_done <= e.items_total for e in walked)


def test_a_tree_layout_that_does_not_match_its_nodes_is_an_error(tmp_path: Path) -> None:
    """Incremental backups trust a tree's layout to find the nodes they reuse, so
    check re-derives it (other readers do not need it)."""
    nodes = [
        Node(b"a", "file", attrs={"order": 0, "source": b"s" * 16}),
        Node(b"b", "file", attrs={"order": 1, "source": b"t" * 16}),
    ]
    good = encode_tree(Tree.of(nodes), ("order", "source"))
    at = good.index(b"\x06layout") + len(b"\x06layout") + 2 + 4  # node 0, order offset
    bad = good[:at] + bytes([good[at] + 1]) + good[at + 1 :]
    assert decode_tree(bad) == decode_tree(good)  # readers that ignore layouts are fine
    backend = LocalBackend.create(tmp_path / "repo")
    with Repository.init(backend, b"pw", kdf=KDF) as repo:
        tree = repo.save_blob(BlobType.TREE, bad, compress=True)
        repo.save_snapshot(Snapshot(tree, time_ns=1))
        report = repo.check(read_data=False)
    assert not report.ok
    assert any(f.blob == tree and "layout does not match" in f.message for f in report.errors), (
        report.text()
    )
