"""The packed directory table: what goes in comes out, as the snapshot stored it before."""

from __future__ import annotations

import pickle
import struct

from cipherdump.engine.dirtable import DirRecord, DirTable
from cipherdump.repo import Id

POLICY = bytes(range(12))


def _rec(ino: int, census: tuple[tuple[bytes | str, int], ...] = ()) -> DirRecord:
    return DirRecord(
        ino,
        ino * 3,
        ino % 7,
        bytes([ino % 256]) * 16,
        b"k" * 16,
        Id(bytes([ino % 251]) * 32),
        census,
    )


def _old_encoding(records: list[DirRecord]) -> tuple[bytes, list[object]]:
    """How snapshots stored the table before it was packed in memory (format 1)."""
    records = sorted(records, key=lambda r: r.ino)
    table = b"".join(
        struct.pack("<III16s16s32s", r.ino, r.generation, r.files, r.fingerprint, r.key, r.tree.raw)
        for r in records
    )
    return table, [[r.ino, [[k, n] for k, n in r.census]] for r in records if r.census]


def test_records_come_back_with_their_census() -> None:
    records = [_rec(12, ((POLICY, 5), ("bad context", 1))), _rec(2), _rec(40, ((POLICY, 1 << 40),))]
    table = DirTable.of(records)
    assert list(table) == records and len(table) == 3
    assert table.get(40) == records[2] and table.get(2) == records[1] and table.get(3) is None
    assert sorted(table.files_by_ino()) == sorted((r.ino, r.files) for r in records)


def test_the_snapshot_encoding_is_unchanged() -> None:
    records = [_rec(12, ((POLICY, 5),)), _rec(2), _rec(40, (("x", 2), (POLICY, 1)))]
    assert DirTable.of(records).encode() == _old_encoding(records)


def test_a_decoded_table_answers_by_inode_number() -> None:
    records = [_rec(i, ((POLICY, i),) if i % 2 else ()) for i in range(2, 4000, 3)]
    packed, census = _old_encoding(records)
    attrs = {"dirs": packed, "dir_census": tuple(tuple(map(_tuple, c)) for c in census)}
    table = DirTable.decode(attrs)  # type: ignore[arg-type]
    for rec in records:
        assert table.get(rec.ino) == rec
    assert table.get(0) is None and table.get(3) is None and table.get(5000) is None
    assert DirTable.decode({"dirs": packed[:-1]}) == DirTable()  # malformed: none


def _tuple(value: object) -> object:
    return tuple(map(_tuple, value)) if isinstance(value, list) else value


def test_an_unsorted_table_is_sorted_and_the_last_of_equal_numbers_wins() -> None:
    first, again = _rec(9), DirRecord(9, 1, 1, bytes(16), bytes(16), Id(bytes(32)))
    table = DirTable.of([_rec(30), first, _rec(4), again])
    assert table.get(9) == again and table.get(30) == _rec(30) and table.get(4) == _rec(4)
    assert [r.ino for r in table] == [4, 9, 9, 30]


def test_workers_tables_travel_and_join() -> None:
    mine = DirTable.of([_rec(1, ((POLICY, 1),))])
    theirs = pickle.loads(pickle.dumps(DirTable.of([_rec(7, (("other", 3),))])))
    mine.extend(theirs)
    assert list(mine) == [_rec(1, ((POLICY, 1),)), _rec(7, (("other", 3),))]
    mine.clear()
    assert len(mine) == 0 and mine == DirTable()
