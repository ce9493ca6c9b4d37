"""The backup's lean index: every answer confirmed against the full entry on disk."""

from __future__ import annotations

import errno
import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from cipherdump.errors import BackendError
from cipherdump.repo import (
    FileType,
    Handle,
    KdfParams,
    LocalBackend,
    Node,
    Repository,
    Tree,
)
from cipherdump.repo.ids import BlobType, Id
from cipherdump.repo.leanindex import LeanIndex
from cipherdump.repo.pack import PackEntry

KDF = KdfParams.insecure_for_tests()


def _entries(n: int, blob_type: BlobType = BlobType.DATA) -> list[PackEntry]:
    return [PackEntry(blob_type, 0, i * 100, 100, 60, Id(os.urandom(32))) for i in range(n)]


def _raw(entries: list[PackEntry]) -> bytes:
    return b"".join(e.encode() for e in entries)


@pytest.fixture
def index(tmp_path: os.PathLike[str]) -> Iterator[LeanIndex]:
    lean = LeanIndex(str(tmp_path))
    yield lean
    lean.close()


def test_lookup_duplicates_and_types(index: LeanIndex) -> None:
    p1, p2 = Id(b"\x01" * 32), Id(b"\x02" * 32)
    first = _entries(5000)
    index.add_pack(p1, 1 << 20, _raw(first))
    index.add_pack(p2, 1 << 20, _raw(first[:10]))  # the first location wins
    for e in first:
        assert index.lookup(BlobType.DATA, e.id) == (p1, e)
        assert index.has(BlobType.DATA, e.id)
        assert not index.has(BlobType.TREE, e.id)
    same_id_tree = PackEntry(BlobType.TREE, 1, 0, 50, 80, first[0].id)
    index.add_pack(p2, 1 << 20, same_id_tree.encode())
    assert index.lookup(BlobType.TREE, first[0].id) == (p2, same_id_tree)
    assert index.lookup(BlobType.DATA, first[0].id) == (p1, first[0])
    assert len(index) == 5011  # (entries: a duplicate is one too)
    assert index.pack_count == 2
    assert index.pack_size(p2) == 1 << 20 and index.pack_size(Id(b"\x03" * 32)) is None
    assert index.lookup(BlobType.DATA, Id(os.urandom(32))) is None


def _same_start(length: int) -> tuple[Id, Id]:
    """Two ids whose first ``length`` bytes are equal (the table's hash and the
    fingerprint, and more), differing in the last byte."""
    a = os.urandom(32)
    return Id(a), Id(a[:length] + a[length:31] + bytes([a[31] ^ 1]))


def test_a_shared_prefix_is_not_a_hit(index: LeanIndex) -> None:
    """The adversarial case: an absent id that shares 31 bytes (every byte the memory
    holds, and more) with a stored one is not found; the stored one still is."""
    stored, absent = _same_start(31)
    entry = PackEntry(BlobType.DATA, 0, 0, 100, 60, stored)
    index.add_pack(Id(b"\x01" * 32), 1000, _raw(_entries(100)) + entry.encode())
    assert index.has(BlobType.DATA, stored)
    assert not index.has(BlobType.DATA, absent)
    assert index.lookup(BlobType.DATA, absent) is None
    # Both stored: each found at its own entry.
    other = PackEntry(BlobType.DATA, 0, 100, 100, 60, absent)
    index.add_pack(Id(b"\x02" * 32), 1000, other.encode())
    assert index.lookup(BlobType.DATA, stored) == (Id(b"\x01" * 32), entry)
    assert index.lookup(BlobType.DATA, absent) == (Id(b"\x02" * 32), other)


def test_a_fingerprint_match_is_confirmed_on_disk(
    index: LeanIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hit reads the entry from the file; a miss whose fingerprint matches reads it
    too and is still a miss; a plain miss reads nothing."""
    stored, absent = _same_start(12)
    index.add_pack(Id(b"\x01" * 32), 1000, PackEntry(BlobType.DATA, 0, 0, 100, 60, stored).encode())
    reads: list[int] = []
    real = os.pread

    def counting(fd: int, n: int, at: int) -> bytes:
        reads.append(at)
        return real(fd, n, at)

    monkeypatch.setattr(os, "pread", counting)
    assert index.has(BlobType.DATA, stored) and len(reads) == 1
    assert not index.has(BlobType.DATA, absent) and len(reads) == 2
    assert not index.has(BlobType.DATA, Id(os.urandom(32))) and len(reads) == 2


def test_a_wrong_entry_on_disk_is_not_trusted(index: LeanIndex) -> None:
    """What the memory holds alone never makes a hit: with the file's entry of a blob
    overwritten by another id, the blob is no longer found."""
    entries = _entries(10)
    index.add_pack(Id(b"\x01" * 32), 1000, _raw(entries))
    rows = index._rows
    os.pwrite(rows._fds[0], os.urandom(32), 3 * 48 + 16)
    assert not index.has(BlobType.DATA, entries[3].id)
    assert index.has(BlobType.DATA, entries[4].id)


def test_staged_packs_build_once_in_order(index: LeanIndex) -> None:
    """The loader's path: entries staged, then made findable in the given order (a
    pack left out, as one missing from the backend, is not found)."""
    a, b, c = _entries(3000), _entries(3000), _entries(10)
    dup = PackEntry(BlobType.DATA, 0, 900, 100, 60, a[0].id)
    ra, rb, rc = index.stage(_raw(a)), index.stage(_raw([dup, *b])), index.stage(_raw(c))
    pa, pb, pc = Id(b"\x0a" * 32), Id(b"\x0b" * 32), Id(b"\x0c" * 32)
    index.build([(pa, 1 << 20, ra, 3000), (pb, 1 << 20, rb, 3001)])
    assert len(index) == 6001
    assert index.lookup(BlobType.DATA, a[0].id) == (pa, a[0])
    assert index.lookup(BlobType.DATA, b[-1].id) == (pb, b[-1])
    assert not any(index.has(BlobType.DATA, e.id) for e in c)
    assert not index.has_pack(pc) and index.has_pack(pb)
    del rc


def test_growth_keeps_every_blob_and_first_locations(index: LeanIndex) -> None:
    packs = [(Id(os.urandom(32)), _entries(700)) for _ in range(40)]
    for pack_id, entries in packs:
        index.add_pack(pack_id, 1 << 20, _raw(entries))
    again = Id(b"\x05" * 32)
    index.add_pack(again, 1 << 20, _raw(packs[0][1]))
    assert len(index) == 28_700
    assert len(index._slots) >= len(index) / 0.8
    for pack_id, entries in packs[::7]:
        for e in entries[::50]:
            assert index.lookup(BlobType.DATA, e.id) == (pack_id, e)
    assert index.lookup(BlobType.DATA, packs[0][1][0].id) == (packs[0][0], packs[0][1][0])


def test_a_forked_process_appends_to_its_own_file(index: LeanIndex) -> None:
    """A backup's worker adds packs after the fork; the coordinator adds others at the
    same rows.  Neither may overwrite the other's entries."""
    base = _entries(100)
    index.add_pack(Id(b"\x01" * 32), 1 << 20, _raw(base))
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker
        ok = False
        try:
            mine = _entries(50)
            index.add_pack(Id(b"\x02" * 32), 1 << 20, _raw(mine))
            ok = all(index.has(BlobType.DATA, e.id) for e in mine + base[::10])
        finally:
            os.write(write_fd, b"1" if ok else b"0")
            os._exit(0)
    os.close(write_fd)
    coordinator = _entries(50)
    index.add_pack(Id(b"\x03" * 32), 1 << 20, _raw(coordinator))
    assert os.read(read_fd, 1) == b"1"
    os.waitpid(pid, 0)
    os.close(read_fd)
    assert all(index.has(BlobType.DATA, e.id) for e in coordinator + base)


def test_memory_per_blob(index: LeanIndex) -> None:
    """About 10 bytes a blob once built (the entries are on disk)."""
    n = 60_000
    raw = _raw(_entries(n))
    tracemalloc.start()
    try:
        staged = [
            (Id(os.urandom(32)), 1 << 30, index.stage(raw[s : s + 48 * 10_000]), 10_000)
            for s in range(0, len(raw), 48 * 10_000)
        ]
        del raw
        index.build(staged)
        current, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(index) == n
    assert current / n < 12, f"{current / n:.1f} bytes per blob"


def test_a_repository_loaded_lean_answers_as_with_the_memory_index(tmp_path: Path) -> None:
    """Through the repository: blobs of several sessions, a pack lost outside
    cipherdump (its blobs absent, stored again), and an index rebuilt by ``repair
    index`` (superseded files left out) are seen alike by both indexes."""
    backend = LocalBackend.create(tmp_path / "repo")
    datas = [os.urandom(64) + i.to_bytes(2, "little") for i in range(300)]
    with Repository.init(backend, b"pw", kdf=KDF, pack_size=4096) as repo:
        ids = [repo.save_blob(BlobType.DATA, d) for d in datas[:200]]
        tree = repo.save_tree(Tree((Node(b"f", "file", content=tuple(ids[:5])),)))
    with Repository.open(backend, b"pw") as repo:
        ids += [repo.save_blob(BlobType.DATA, d) for d in datas[200:]]
    lost = next(iter(backend.list(FileType.PACK))).name
    backend.remove(Handle(FileType.PACK, lost))

    def seen(lean: bool) -> tuple[list[bool], list[Id], bool]:
        with Repository.open(backend, b"pw", exclusive=False) as repo:
            if lean:
                repo.use_lean_index()
            present = [repo.has_blob(BlobType.DATA, i) for i in ids]
            for i, d in zip(ids, datas, strict=True):
                if repo.has_blob(BlobType.DATA, i):
                    assert repo.load_blob(BlobType.DATA, i) == d
            return present, repo.missing_packs(), repo.has_blob(BlobType.TREE, tree)

    memory, lean = seen(False), seen(True)
    assert lean == memory
    assert not all(lean[0]) and any(lean[0]) and lean[1] == [Id.from_hex(lost)]
    # Stored again by a lean writer, then found by both.
    with Repository.open(backend, b"pw", exclusive=False) as repo:
        repo.use_lean_index()
        new = [repo.add_blob(BlobType.DATA, d)[1] for d in datas]
        assert new == [not p for p in lean[0]]
    with Repository.open(backend, b"pw") as repo:
        repo.repair_index()
    assert seen(True) == seen(False)
    assert all(seen(True)[0])


def test_a_temporary_directory_that_fails_is_a_one_line_backend_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(BackendError, match=r"index's temporary file in .*nowhere"):
        LeanIndex(str(tmp_path / "nowhere"))
    index = LeanIndex(str(tmp_path))

    def full(fd: int, data: object, at: int) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(BackendError, match="No space left on device"):
        index.add_pack(Id(b"\x01" * 32), 1000, _raw(_entries(3)))
    index.close()
