"""Index files: every entry's fields are checked when the file is read."""

from __future__ import annotations

import os
import struct

import pytest

from cipherdump.errors import CorruptError
from cipherdump.repo.crypto import SEAL_OVERHEAD, MasterKey
from cipherdump.repo.ids import Id
from cipherdump.repo.index import IndexFile, PackRecord, decode_index, encode_index
from cipherdump.repo.pack import MAX_BLOB_SIZE

ENTRY = struct.Struct("<BBHIII32s")
PACK_SIZE = 100_000


def _entry(
    type_: int = 0,
    flags: int = 0,
    reserved: int = 0,
    offset: int = 0,
    length: int = 100,
    raw_length: int = 60,
) -> bytes:
    return ENTRY.pack(type_, flags, reserved, offset, length, raw_length, os.urandom(32))


def _round_trip(entries: list[bytes]) -> IndexFile:
    key = MasterKey.generate()
    index = IndexFile((PackRecord(Id(os.urandom(32)), PACK_SIZE, b"".join(entries)),))
    return decode_index(key, encode_index(key, index), "index/test")


GOOD = [_entry(offset=100 * i) for i in range(500)]


def test_good_entries_are_read() -> None:
    edge = [
        _entry(1, 1, 0, PACK_SIZE - SEAL_OVERHEAD, SEAL_OVERHEAD, MAX_BLOB_SIZE),
        _entry(0, 0, 0, 0, PACK_SIZE, 0),
    ]
    (pack,) = _round_trip(GOOD + edge).packs
    assert pack.count == 502
    assert [e.offset for e in pack.entries()][:3] == [0, 100, 200]


@pytest.mark.parametrize(
    "bad",
    [
        {"type_": 2},
        {"type_": 255},
        {"flags": 2},
        {"flags": 0x81},
        {"reserved": 1},
        {"reserved": 0x100},
        {"length": SEAL_OVERHEAD - 1},
        {"raw_length": MAX_BLOB_SIZE + 1},
        {"offset": PACK_SIZE - 99},  # ends past the pack
        {"offset": 0xFFFFFFFF, "length": 0xFFFFFFFF},
    ],
)
@pytest.mark.parametrize("where", [0, 250, 499])
def test_one_bad_field_anywhere_refuses_the_file(bad: dict[str, int], where: int) -> None:
    entries = list(GOOD)
    entries[where] = _entry(**bad)
    with pytest.raises(CorruptError, match="bad blob entry"):
        _round_trip(entries)
