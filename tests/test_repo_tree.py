"""Tree encoding and splitting: the same bytes as the codec's plain encoding of the tree
map, and spans that are exactly the nodes, with the wanted attrs where they are."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cipherdump.errors import CorruptError
from cipherdump.repo import codec
from cipherdump.repo.codec import Value
from cipherdump.repo.ids import Id
from cipherdump.repo.tree import (
    Node,
    Tree,
    decode_tree,
    encode_node,
    encode_tree,
    join_nodes,
    split_tree,
)
from test_repo_codec import INTS, reference_encode

LONG_KEY = "w" * 130
WANT = frozenset({b"source", b"order", b"context", b"v" * 100, LONG_KEY.encode()})


def node_value(node: Node) -> dict[str, Value]:
    """The node as the map docs/repository-format.md describes."""
    m: dict[str, Value] = {"name": node.name, "kind": node.kind, "attrs": node.attrs}
    if node.subtree is not None:
        m["subtree"] = node.subtree.raw
    if node.content:
        m["content"] = [i.raw for i in node.content]
    return m


def reference_tree(nodes: list[Node]) -> bytes:
    ordered = sorted(nodes, key=lambda n: n.name)
    return reference_encode({"v": 1, "nodes": [node_value(n) for n in ordered]})


# Values the split patterns cover (short scalars, short lists of ints, lists of those)
# and values they leave to the slow walk (long bytes, long lists, maps, strings).
covered: st.SearchStrategy[Value] = (
    INTS
    | st.booleans()
    | st.none()
    | st.binary(max_size=127)
    | st.text(max_size=40)
    | st.lists(INTS | st.booleans(), max_size=8)
    | st.lists(st.lists(INTS | st.booleans(), max_size=8) | INTS, max_size=4)
)
uncovered: st.SearchStrategy[Value] = (
    st.binary(min_size=128, max_size=140)
    | st.lists(INTS, min_size=9, max_size=12)
    | st.lists(st.lists(INTS, max_size=2), min_size=5, max_size=6)
    | st.dictionaries(st.text(max_size=3), INTS, max_size=2)
    | st.lists(st.binary(max_size=3), min_size=1, max_size=3)
)
attr_keys = st.sampled_from(
    ["ino", "mode", "context", "order", "source", "zz", "", "é", LONG_KEY, "k" * 70, "v" * 100]
) | st.text(max_size=10)
attrs_strategy = st.dictionaries(attr_keys, covered | uncovered, max_size=16)
ids = st.binary(min_size=32, max_size=32).map(Id)
nodes_strategy = st.builds(
    Node,
    name=st.binary(max_size=40),
    kind=st.sampled_from(["file", "dir", "symlink"]) | st.text(max_size=10),
    subtree=st.none() | ids,
    content=st.lists(ids, max_size=3).map(tuple),
    attrs=attrs_strategy,
)
trees_strategy = st.lists(nodes_strategy, max_size=5, unique_by=lambda n: n.name)


def check_spans(data: bytes, nodes: list[Node]) -> None:
    ordered = sorted(nodes, key=lambda n: n.name)
    spans = split_tree(data, WANT)
    assert join_nodes((s.name, s.data) for s in spans) == data
    assert [s.name for s in spans] == [n.name for n in ordered]
    assert [s.kind for s in spans] == [n.kind.encode() for n in ordered]
    for span, node in zip(spans, ordered, strict=True):
        assert span.data == encode_node(node)
        present = {k.encode() for k in node.attrs} & WANT
        assert set(span.found) == present
        for key in present:
            value = node.attrs[key.decode()]
            assert span.attr(key) == reference_encode(value)
            patched = decode_tree(join_nodes([(span.name, span.with_attr(key, codec.encode(7)))]))
            assert codec.encode(patched.nodes[0].attrs) == codec.encode(
                {**node.attrs, key.decode(): 7}
            )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees_strategy)
def test_trees_encode_as_the_reference_and_split_back(nodes: list[Node]) -> None:
    data = reference_tree(nodes)
    assert encode_tree(Tree.of(nodes)) == data
    assert join_nodes((n.name, n) for n in nodes) == data
    assert join_nodes((n.name, encode_node(n)) for n in nodes) == data
    for node in nodes:
        assert encode_node(node) == reference_encode(node_value(node))
    check_spans(data, nodes)


def test_split_finds_wanted_attrs_wherever_they_are() -> None:
    """Wanted keys together in one run of four attrs, apart, first, last, alone, next
    to attrs the patterns do not cover, and keys that only look like them."""
    wanted = {"context": b"c" * 40, "order": 70, "source": b"s" * 16}
    layouts: list[Mapping[str, Value]] = [
        wanted,
        {**wanted, "a": 1},
        {**wanted, "a": 1, "b": 2, "p": [1, 2], "z": None},
        {"order": 1 << 62, "source": [1, 2, 3], "context": {"x": 1}},
        {"ordef": 1, "orde": 2, "sourcf": b"x", "context": b"y" * 200, "a": b"\x06source"},
        {"order": -5, "zz": list(range(20)), "source": b"", "a": b"a" * 127},
        {f"k{i:02}": i for i in range(40)} | {"order": 3},
        {f"k{i:02}": i for i in range(40)} | {"source": b"x", "k39": b"y" * 300},
        {LONG_KEY: 5, "order": 2, "v" * 100: b"v", "k" * 63: 1, "k" * 64: 2},
        {f"k{i:03}": [i] for i in range(130)} | {"order": 2, "source": b"x"},
        {},
    ]
    nodes = [
        Node(bytes([i]), "file", content=(Id(b"i" * 32),), attrs=a) for i, a in enumerate(layouts)
    ]
    many = tuple(Id(bytes([i]) * 32) for i in range(130))
    nodes += [
        Node(b"n" * 300, "k" * 140, subtree=Id(b"t" * 32), content=many, attrs={"order": 1}),
        Node(b"m" * 200, "dir", subtree=Id(b"t" * 32), attrs=layouts[0]),
    ]
    data = encode_tree(Tree.of(nodes))
    assert data == reference_tree(nodes)
    check_spans(data, nodes)


def test_split_refuses_what_is_not_a_tree() -> None:
    good = encode_tree(Tree.of([Node(b"a", "file", attrs={"order": 1})]))
    bad_field = reference_encode(
        {"v": 1, "nodes": [{"name": b"a", "kind": "file", "attrs": {}, "zz": 1}]}
    )
    for data in [good[:-1], good[:20] + good[21:], bad_field, good + b"\x00"]:
        with pytest.raises(CorruptError):
            split_tree(data, WANT)


@settings(max_examples=150, deadline=None)
@given(trees_strategy, st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_damaged_trees_split_or_raise_corrupt_error(nodes: list[Node], at: int, byte: int) -> None:
    data = bytearray(reference_tree(nodes))
    data[at % len(data)] = byte
    with contextlib.suppress(CorruptError):
        split_tree(bytes(data), WANT)
