"""Chunked trees (version 3): a large directory stored as parts and their index.

Parts end where names say (content-defined), so that one entry more or less changes
one part, and the index, not the whole directory; a reader joins the parts, and
refuses an index whose parts do not fit it.
"""

from __future__ import annotations

import pytest

from cipherdump.errors import CorruptError, UnsupportedError
from cipherdump.repo import (
    BlobType,
    Id,
    KdfParams,
    MemoryBackend,
    Node,
    Repository,
    Snapshot,
    codec,
)
from cipherdump.repo import tree as tree_module
from cipherdump.repo.tree import (
    PART_KIND,
    Tree,
    decode_tree,
    encode_tree,
    index_parts,
    join_parts,
    part_node,
    save_directory,
    split_parts,
)

LOCATE = ("context", "order", "source")


@pytest.fixture(autouse=True)
def _small_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parts of about 16 nodes, from 64 nodes on, so tests stay small."""
    monkeypatch.setattr(tree_module, "CHUNK_FROM", 64)
    monkeypatch.setattr(tree_module, "PART_BITS", 4)
    monkeypatch.setattr(tree_module, "PART_MIN", 4)
    monkeypatch.setattr(tree_module, "PART_MAX", 64)


def _node(i: int) -> Node:
    name = b"entry-%06d" % i
    return Node(name, "file", attrs={"ino": i, "order": i, "source": bytes(16)})


def _save(repo: Repository, nodes: list[Node], added: list[Id] | None = None) -> Id:
    def save(data: bytes) -> Id:
        blob_id, new = repo.add_blob(BlobType.TREE, data, compress=True)
        if new and added is not None:
            added.append(blob_id)
        return blob_id

    return save_directory(((n.name, n) for n in nodes), LOCATE, save, 1 << 20)


def test_small_directories_stay_one_tree() -> None:
    assert split_parts([b"%d" % i for i in range(64)]) == []
    repo = Repository.init(MemoryBackend(), b"pw", kdf=KdfParams.insecure_for_tests())
    nodes = [_node(i) for i in range(10)]
    tree_id = _save(repo, nodes)
    data = repo.load_blob(BlobType.TREE, tree_id)
    assert index_parts(data) is None and data == encode_tree(Tree(tuple(nodes)), LOCATE)
    repo.close()


def test_cuts_depend_on_names_only() -> None:
    names = sorted(b"n%05d" % i for i in range(1000))
    cuts = split_parts(names)
    assert cuts and cuts == sorted(set(cuts)) and all(0 < c < len(names) for c in cuts)
    sizes = [b - a for a, b in zip([0, *cuts], [*cuts, len(names)], strict=True)]
    assert all(4 <= s <= 64 for s in sizes[:-1])
    # One name more: every cut well after it stays on the same name.
    more = sorted([*names, b"n00500x"])
    again = split_parts(more)
    after = {names[c] for c in cuts if c > 600}
    assert after <= {more[c] for c in again}


def test_a_large_directory_is_parts_and_an_index_that_join_back() -> None:
    repo = Repository.init(MemoryBackend(), b"pw", kdf=KdfParams.insecure_for_tests())
    nodes = [_node(i) for i in range(500)]
    tree_id = _save(repo, nodes)
    index = repo.load_tree_index(tree_id)
    assert index.chunked and len(index.nodes) > 2
    assert all(n.kind == PART_KIND and n.subtree is not None for n in index.nodes)
    assert sum(int(n.attrs["entries"]) for n in index.nodes) == 500  # type: ignore[call-overload]
    assert repo.load_tree(tree_id) == Tree(tuple(nodes))
    # Parts are version-2 trees with a layout, as any directory's.
    first = index.nodes[0].subtree
    assert first is not None
    assert index_parts(repo.load_blob(BlobType.TREE, first)) is None
    # Parts a caller compares by id can be left out.
    skipped = repo.load_tree(tree_id, skip_parts=frozenset({first}))
    assert len(skipped.nodes) == 500 - int(index.nodes[0].attrs["entries"])  # type: ignore[call-overload]
    repo.close()


def test_one_entry_more_adds_one_part_and_the_index() -> None:
    repo = Repository.init(MemoryBackend(), b"pw", kdf=KdfParams.insecure_for_tests())
    nodes = [_node(i) for i in range(0, 1000, 2)]
    before = _save(repo, nodes)
    added: list[Id] = []
    after = _save(repo, sorted([*nodes, _node(501)], key=lambda n: n.name), added)
    assert after != before
    # The part with the new entry (perhaps with the next, if a cut moved), and the index.
    assert 2 <= len(added) <= 3
    assert _node(501) in repo.load_tree(after).nodes
    repo.close()


def test_a_tree_too_large_for_one_blob_is_split_however_small() -> None:
    repo = Repository.init(MemoryBackend(), b"pw", kdf=KdfParams.insecure_for_tests())
    nodes = [Node(b"big-%d" % i, "file", attrs={"x": bytes(300)}) for i in range(10)]

    def save(data: bytes) -> Id:
        assert len(data) <= 1000
        return repo.add_blob(BlobType.TREE, data)[0]

    tree_id = save_directory(((n.name, n) for n in nodes), LOCATE, save, 1000)
    assert repo.load_tree_index(tree_id).chunked
    assert repo.load_tree(tree_id) == Tree(tuple(nodes))
    repo.close()


def _index_bytes(parts: list[Node]) -> bytes:
    return codec.encode({"nodes": [_raw(n) for n in parts], "v": 3})


def _raw(node: Node) -> dict[str, codec.Value]:
    out: dict[str, codec.Value] = {"attrs": dict(node.attrs), "kind": node.kind, "name": node.name}
    if node.subtree is not None:
        out["subtree"] = node.subtree.raw
    return out


def test_an_index_is_checked_when_decoded() -> None:
    a, b = Id(b"a" * 32), Id(b"b" * 32)
    good = [part_node(b"a", a, 3), part_node(b"m", b, 2)]
    assert decode_tree(_index_bytes(good)) == Tree(tuple(good), chunked=True)
    assert encode_tree(Tree(tuple(good), chunked=True)) == _index_bytes(good)
    bad = [
        [part_node(b"a", a, 3)],  # one part: not worth an index
        [part_node(b"m", a, 3), part_node(b"a", b, 2)],  # out of order
        [part_node(b"a", a, 0), part_node(b"m", b, 2)],  # an empty part
        [Node(b"a", "file", subtree=a, attrs={"entries": 1}), part_node(b"m", b, 2)],
        [Node(b"a", PART_KIND, attrs={"entries": 1}), part_node(b"m", b, 2)],  # no subtree
        [Node(b"a", PART_KIND, subtree=a, attrs={"entries": 1, "x": 1}), part_node(b"m", b, 2)],
    ]
    for parts in bad:
        with pytest.raises(CorruptError):
            decode_tree(_index_bytes(parts))
    with pytest.raises(UnsupportedError, match="tree version 4"):
        decode_tree(codec.encode({"nodes": [], "v": 4}))


def test_parts_that_do_not_fit_their_index_are_refused() -> None:
    a, b = Id(b"a" * 32), Id(b"b" * 32)
    index = Tree((part_node(b"a", a, 1), part_node(b"m", b, 1)), chunked=True)
    one = Tree((Node(b"a", "file"),))
    two = Tree((Node(b"m", "file"),))
    assert join_parts(index, [one, two]) == Tree((Node(b"a", "file"), Node(b"m", "file")))
    for parts in ([one, one], [two, two], [one, Tree((Node(b"m", "f"), Node(b"n", "f")))]):
        with pytest.raises(CorruptError):
            join_parts(index, parts)
    with pytest.raises(CorruptError):
        join_parts(index, [one, index])


def test_check_compares_each_part_with_its_index() -> None:
    repo = Repository.init(MemoryBackend(), b"pw", kdf=KdfParams.insecure_for_tests())
    nodes = [_node(i) for i in range(300)]
    good = _save(repo, nodes)
    repo.save_snapshot(Snapshot(tree=good, time_ns=1))
    repo.flush()
    report = repo.check(read_data=True)
    assert report.ok, report.text()
    # An index whose second part claims one entry more than it has.
    index = repo.load_tree_index(good)
    wrong = [
        part_node(n.name, n.subtree, int(n.attrs["entries"]) + (i == 1))  # type: ignore[arg-type, call-overload]
        for i, n in enumerate(index.nodes)
    ]
    bad = repo.save_blob(BlobType.TREE, encode_tree(Tree(tuple(wrong), chunked=True)))
    repo.save_snapshot(Snapshot(tree=bad, time_ns=2))
    repo.flush()
    report = repo.check(read_data=True)
    assert not report.ok
    assert [f.message for f in report.errors] == [
        f"a part of a chunked directory does not match tree {bad}"
    ]
    with pytest.raises(CorruptError, match="does not match its index"):
        repo.load_tree(bad)
    repo.close()
