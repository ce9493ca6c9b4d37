"""DirectoryWriter: a directory's tree stored from batches of nodes spilled to sorted
runs, byte for byte as ``save_directory`` stores the same nodes at once."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest

from cipherdump.repo import Id, Node
from cipherdump.repo import tree as tree_module
from cipherdump.repo.dirwriter import DirectoryWriter
from cipherdump.repo.tree import NodeSpan, encode_node, save_directory, tree_spans

LOCATE = ("context", "order", "source")


@pytest.fixture(autouse=True)
def _small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parts of about 16 nodes, from 64 nodes on, so tests stay small."""
    monkeypatch.setattr(tree_module, "CHUNK_FROM", 64)
    monkeypatch.setattr(tree_module, "PART_BITS", 4)
    monkeypatch.setattr(tree_module, "PART_MIN", 4)
    monkeypatch.setattr(tree_module, "PART_MAX", 64)


def _node(i: int) -> Node:
    attrs = {"ino": i, "order": i * 12, "source": i.to_bytes(16, "little"), "mode": 0o100644}
    if i % 3 == 0:
        attrs["context"] = b"ctx%d" % i
    return Node(b"entry-%06d" % i, "file", attrs=attrs)


def _as_given(i: int) -> Node | NodeSpan | bytes:
    """Nodes as the walk gives them: objects, reused encoded spans, and encodings."""
    node = _node(i)
    if i % 5 == 1:
        return encode_node(node)
    if i % 5 == 2:
        data = tree_module.join_nodes([(node.name, node)], LOCATE)
        spans = tree_spans(data)
        assert spans is not None
        return spans[0]
    return node


class Store:
    def __init__(self) -> None:
        self.blobs: dict[Id, bytes] = {}

    def save(self, data: bytes) -> Id:
        blob_id = Id(hashlib.sha256(data).digest())
        self.blobs[blob_id] = data
        return blob_id


def _at_once(numbers: list[int], limit: int = 1 << 20) -> tuple[Id, dict[Id, bytes]]:
    store = Store()
    pairs = [(_node(i).name, _as_given(i)) for i in numbers]
    return save_directory(pairs, LOCATE, store.save, limit), store.blobs


def _in_batches(
    numbers: list[int], batch: int, run_nodes: int, limit: int = 1 << 20
) -> tuple[Id, dict[Id, bytes], list[bytes]]:
    store = Store()
    writer = DirectoryWriter(LOCATE, store.save, limit, run_nodes=run_nodes)
    for start in range(0, len(numbers), batch):
        writer.add((_node(i).name, _as_given(i)) for i in numbers[start : start + batch])
    return writer.finish(), store.blobs, writer.duplicates


@pytest.mark.parametrize("count", [0, 1, 10, 64, 65, 200, 1500])
def test_the_same_blobs_as_at_once_in_any_order(count: int) -> None:
    numbers = list(range(count))
    random.Random(count).shuffle(numbers)
    want_id, want = _at_once(numbers)
    got_id, got, duplicates = _in_batches(numbers, batch=37, run_nodes=100)
    assert (got_id, got, duplicates) == (want_id, want, [])


def test_without_spilling_too() -> None:
    numbers = list(range(300))
    want_id, want = _at_once(numbers)
    got_id, got, _ = _in_batches(numbers, batch=300, run_nodes=10_000)
    assert (got_id, got) == (want_id, want)


@pytest.mark.parametrize("count", [40, 500])
def test_parts_over_the_limit_are_halved_the_same_way(count: int) -> None:
    numbers = list(range(count))
    random.Random(7).shuffle(numbers)
    want_id, want = _at_once(numbers, limit=1500)
    got_id, got, _ = _in_batches(numbers, batch=50, run_nodes=64, limit=1500)
    assert (got_id, got) == (want_id, want)


def test_a_name_given_twice_keeps_the_first_and_is_listed() -> None:
    store = Store()
    writer = DirectoryWriter(LOCATE, store.save, 1 << 20, run_nodes=50)
    first = _node(5)
    second = Node(first.name, "file", attrs={**first.attrs, "ino": 999})
    writer.add((_node(i).name, _node(i)) for i in range(100))  # 5 is in the first run
    writer.add([(second.name, second)])
    writer.add((_node(i).name, _node(i)) for i in range(100, 150))
    got = writer.finish()
    want_id, want = _at_once(list(range(150)))
    assert (got, store.blobs) == (want_id, want)
    assert writer.duplicates == [first.name]


def _open_files_under(folder: Path) -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(folder)):
            out.append(f"/proc/self/fd/{fd}")
    return out


def test_the_temporary_file_holds_no_name_in_clear(tmp_path: Path) -> None:
    store = Store()
    writer = DirectoryWriter(LOCATE, store.save, 1 << 20, run_nodes=10, tmpdir=str(tmp_path))
    writer.add((_node(i).name, _node(i)) for i in range(100))
    (spill,) = _open_files_under(tmp_path)
    assert os.listdir(tmp_path) == []  # unnamed: nothing is left behind, even on a crash
    with open(spill, "rb") as f:
        data = f.read()
    assert len(data) > 100 * 16 and b"entry-0000" not in data
    writer.finish()
    assert _open_files_under(tmp_path) == []
