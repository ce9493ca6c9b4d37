"""The tally: one process's counters, reset in a worker and merged by the coordinator,
each field's handling following from the field alone."""

from __future__ import annotations

import dataclasses
import pickle

from cipherdump.engine.backup.tally import BackupStats, InodeSet, Tally
from cipherdump.engine.dirtable import DirRecord, DirTable
from cipherdump.repo import Id


def _filled(seen: tuple[int, ...], base: int) -> Tally:
    tally = Tally.for_inodes(100)
    for ino in seen:
        tally.first_visit(ino)
    tally.stats = BackupStats(*(base + i for i in range(len(dataclasses.fields(BackupStats)))))
    tally.census = {b"policy": base, "unencrypted": 1}
    tally.seen_dirs.add(base)
    tally.unmatched = {base: 7}
    tally.dir_records = DirTable.of([DirRecord(base, 1, 0, bytes(16), bytes(16), Id(bytes(32)))])
    tally.bytes_done = base * 10
    return tally


def test_every_field_says_how_it_merges() -> None:
    for f in dataclasses.fields(Tally):
        assert f.metadata.get("merge") in {"add", "count", "union", "update", "extend", "stats"}


def test_merge_adds_each_field_its_way() -> None:
    mine, theirs = _filled((1, 2), 1), _filled((2, 3, 99), 50)
    mine.merge(theirs)
    assert list(mine.seen) == [1, 2, 3, 99]
    assert mine.inodes_done == 2 + 3 and mine.bytes_done == 10 + 500
    assert mine.stats.files_new == 1 + 50 and mine.stats.errors == 1 + 14 + 50 + 14
    assert mine.census == {b"policy": 51, "unencrypted": 2}
    assert list(mine.seen_dirs) == [1, 50]
    assert mine.unmatched == {1: 7, 50: 7}
    assert [r.ino for r in mine.dir_records] == [1, 50]


def test_reset_forgets_everything_but_the_bound() -> None:
    tally = _filled((1, 2, 99), 5)
    tally.reset()
    assert tally == Tally.for_inodes(100)
    assert len(tally.seen.bits) == len(Tally.for_inodes(100).seen.bits)
    assert tally.first_visit(99) and not tally.first_visit(99)


def test_a_tally_is_its_own_message() -> None:
    tally = _filled((4, 8), 3)
    again = pickle.loads(pickle.dumps(tally))
    assert again == tally and list(again.seen) == [4, 8]


def test_first_visit_counts_each_inode_once() -> None:
    tally = Tally.for_inodes(16)
    assert [tally.first_visit(i) for i in (5, 5, 16, 17, 1000, 1000)] == [
        True,
        False,
        True,
        True,
        True,  # beyond the filesystem's count: never remembered, never counted
        True,
    ]
    assert tally.inodes_done == 3 and 5 in tally.seen and 1000 not in tally.seen


def test_inode_set_is_a_set() -> None:
    a, b = InodeSet(64), InodeSet(64)
    assert a.add(3) and not a.add(3) and b.add(60)
    a |= b
    assert list(a) == [3, 60] and 60 in a and 61 not in a and "3" not in a
    a.clear()
    assert list(a) == []


def test_stats_add_and_clear_by_their_fields() -> None:
    s = BackupStats(files_new=1, bytes_read=5)
    s.add(BackupStats(files_new=2, errors=1))
    assert s.as_dict() == {**BackupStats().as_dict(), "files_new": 3, "bytes_read": 5, "errors": 1}
    s.clear()
    assert s == BackupStats()
