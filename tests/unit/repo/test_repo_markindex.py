"""The lean index prune marks with agrees with the writers' index on every lookup."""

from __future__ import annotations

import os
import random

import pytest

from cipherdump.repo.ids import BlobType, Id
from cipherdump.repo.markindex import MarkIndex
from cipherdump.repo.memindex import MemoryIndex
from cipherdump.repo.pack import PackEntry


def _entries(ids: list[tuple[BlobType, Id]], rng: random.Random) -> bytes:
    out, offset = [], 0
    for blob_type, blob_id in ids:
        length = rng.randrange(40, 5000)
        entry = PackEntry(
            blob_type, rng.randrange(2), offset, length, rng.randrange(1 << 20), blob_id
        )
        out.append(entry.encode())
        offset += length
    return b"".join(out)


@pytest.mark.parametrize("expected", [0, 1000, 5000 + 350, 20000])
def test_agrees_with_the_memory_index(expected: int) -> None:
    # Announced too few (the columns grow), exactly the entries, and too many.
    rng = random.Random(7)
    blobs = [(rng.choice(list(BlobType)), Id(os.urandom(32))) for _ in range(5000)]
    lean, full = MarkIndex(expected), MemoryIndex()
    packs = []
    for start in range(0, len(blobs), 700):
        pack_id = Id(os.urandom(32))
        # Some blobs again in a later pack, as two writers may store them.
        chunk = blobs[start : start + 700] + blobs[max(start - 50, 0) : start]
        raw = _entries(chunk, rng)
        packs.append(pack_id)
        lean.add_pack(pack_id, 10**7, raw)
        full.add_pack(pack_id, 10**7, raw)
    assert len(lean) == len(full) == len(blobs)
    assert [p for p, _ in lean.iter_packs()] == packs
    for blob_type, blob_id in blobs:
        found = full.lookup(blob_type, blob_id)
        assert found is not None
        row = lean.row(blob_type, blob_id)
        assert packs[lean.pack_number(row)] == found[0]
        if blob_type is BlobType.TREE:
            assert lean.tree_location(blob_id) == found
        else:
            assert lean.tree_location(blob_id) is None
    lengths = {row: length for _, length, row in lean.iter_locations()}
    for blob_type, blob_id in blobs:
        found = full.lookup(blob_type, blob_id)
        assert found is not None
        assert lengths[lean.row(blob_type, blob_id)] == found[1].length
    for _ in range(2000):
        assert lean.row(BlobType.DATA, Id(os.urandom(32))) == -1
    # The same id as the other type is another blob.
    blob_type, blob_id = blobs[0]
    other = BlobType.TREE if blob_type is BlobType.DATA else BlobType.DATA
    assert lean.row(other, blob_id) == -1
    rows = sorted(row for _, _, row in lean.iter_locations())
    assert rows == list(range(len(blobs)))
