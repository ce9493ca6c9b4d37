"""The compact in-memory index: correctness and its memory budget."""

from __future__ import annotations

import os
import tracemalloc

from cipherdump.repo.ids import BlobType, Id
from cipherdump.repo.memindex import MemoryIndex
from cipherdump.repo.pack import PackEntry


def _entries(n: int, blob_type: BlobType = BlobType.DATA) -> list[PackEntry]:
    return [PackEntry(blob_type, 0, i * 100, 100, 60, Id(os.urandom(32))) for i in range(n)]


def _raw(entries: list[PackEntry]) -> bytes:
    return b"".join(e.encode() for e in entries)


def test_lookup_duplicates_and_types() -> None:
    index = MemoryIndex()
    p1, p2 = Id(b"\x01" * 32), Id(b"\x02" * 32)
    first = _entries(5000)
    assert index.add_pack(p1, 1 << 20, _raw(first)) == 5000
    assert index.add_pack(p2, 1 << 20, _raw(first[:10])) == 0  # first location wins
    for e in first:
        assert index.lookup(BlobType.DATA, e.id) == (p1, e)
        assert not index.has(BlobType.TREE, e.id)
    same_id_tree = PackEntry(BlobType.TREE, 1, 0, 50, 80, first[0].id)
    assert index.add_pack(p2, 1 << 20, same_id_tree.encode()) == 1
    assert index.lookup(BlobType.TREE, first[0].id) == (p2, same_id_tree)
    assert len(index) == 5001
    assert index.pack_count == 2
    assert index.rows_per_pack() == {p1: 5000, p2: 1}
    assert index.lookup(BlobType.DATA, Id(os.urandom(32))) is None


def test_memory_per_blob_is_small() -> None:
    # 50k blobs are measured (tracemalloc is slow).  The budget is 256 MiB for a
    # million blobs, so < 200 bytes a blob would do; the design target is ~70 bytes.
    n = 50_000
    raw = _raw(_entries(n))
    tracemalloc.start()
    try:
        index = MemoryIndex()
        for start in range(0, len(raw), 48 * 10_000):
            index.add_pack(Id(os.urandom(32)), 1 << 30, raw[start : start + 48 * 10_000])
        current, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(index) == n
    assert current / n < 100, f"{current / n:.0f} bytes per blob"


def test_a_blob_twice_in_one_pack_keeps_its_first_entry() -> None:
    index = MemoryIndex()
    entries = _entries(3000)
    again = PackEntry(BlobType.DATA, 1, 7, 70, 50, entries[10].id)
    raw = _raw(entries[:2000]) + again.encode() + _raw(entries[2000:])
    assert index.add_pack(Id(b"\x01" * 32), 1 << 20, raw) == 3000
    assert len(index) == 3000
    for e in entries:
        assert index.lookup(BlobType.DATA, e.id) == (Id(b"\x01" * 32), e)
    later = _entries(3000)  # grows the table: every row is placed again
    assert index.add_pack(Id(b"\x02" * 32), 1 << 20, _raw(later + entries[:5])) == 3000
    assert [row for row, _, _ in index.iter_rows()] == list(range(6000))
    for e in entries + later:
        found = index.lookup(BlobType.DATA, e.id)
        assert found is not None and found[1] == e
