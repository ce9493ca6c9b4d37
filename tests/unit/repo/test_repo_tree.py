"""Tree encoding and layouts: the same bytes as the codec's plain encoding of the tree
map (with, in version 2, a layout computed here independently), and spans that are
exactly the nodes, with the located attrs where they are."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_repo_codec import INTS, reference_encode

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
    tree_spans,
)

LONG_KEY = "w" * 130
LOCATE = ("context", "order", "source", "v" * 100, LONG_KEY)


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


# Short and long values of every kind.
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


def reference_layout_tree(nodes: list[Node], locate: tuple[str, ...]) -> bytes:
    """A version-2 tree as docs/repository-format.md describes it, offsets computed
    from the reference encoding of each piece."""
    ordered = sorted(nodes, key=lambda n: n.name)
    words: list[int] = []
    pos = 0
    for node in ordered:
        encoded = reference_encode(node_value(node))
        words.append(pos)
        # The node map's head, its first key "attrs", then the attrs map's head.
        at = 1 + len(codec.varint(len(node_value(node)))) + len(b"\x05attrs")
        at += 1 + len(codec.varint(len(node.attrs)))
        offsets: dict[str, tuple[int, int]] = {}
        for key in sorted(node.attrs, key=lambda k: k.encode()):
            raw = key.encode()
            at += len(codec.varint(len(raw))) + len(raw)
            value = reference_encode(node.attrs[key])
            offsets[key] = (at, len(value))
            at += len(value)
        for key in locate:
            words += offsets.get(key, (0, 0))
        pos += len(encoded)
    layout = b"".join(w.to_bytes(4, "little") for w in words)
    return reference_encode(
        {
            "v": 2,
            "layout": layout,
            "located": list(locate),
            "nodes": [node_value(n) for n in ordered],
        }
    )


def check_spans(data: bytes, nodes: list[Node]) -> None:
    ordered = sorted(nodes, key=lambda n: n.name)
    spans = tree_spans(data)
    assert spans is not None
    assert join_nodes(zip([n.name for n in ordered], spans, strict=True), LOCATE) == data
    assert (
        join_nodes(((n.name, s.data) for n, s in zip(ordered, spans, strict=True)), LOCATE) == data
    )
    for span, node in zip(spans, ordered, strict=True):
        assert span.data == encode_node(node)
        present = set(node.attrs) & set(LOCATE)
        assert set(span.found) == present
        for key in present:
            assert span.attr(key) == reference_encode(node.attrs[key])
            patched_span = span.with_attr(key, codec.encode(1 << 40))
            patched = join_nodes([(node.name, patched_span)], LOCATE)
            again = tree_spans(patched)
            assert again is not None and again[0] == patched_span
            assert codec.encode(decode_tree(patched).nodes[0].attrs) == codec.encode(
                {**node.attrs, key: 1 << 40}
            )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees_strategy)
def test_trees_encode_as_the_reference_and_split_back(nodes: list[Node]) -> None:
    data = reference_tree(nodes)
    assert encode_tree(Tree.of(nodes)) == data
    assert join_nodes((n.name, n) for n in nodes) == data
    assert join_nodes((n.name, encode_node(n)) for n in nodes) == data
    assert tree_spans(data) is None  # version 1: no layout
    for node in nodes:
        assert encode_node(node) == reference_encode(node_value(node))
    located = reference_layout_tree(nodes, LOCATE)
    assert encode_tree(Tree.of(nodes), LOCATE) == located
    assert join_nodes(((n.name, n) for n in nodes), LOCATE) == located
    assert join_nodes(((n.name, encode_node(n)) for n in nodes), LOCATE) == located
    assert encode_tree(decode_tree(located)) == data
    assert encode_tree(decode_tree(located, check_layout=True)) == data
    check_spans(located, nodes)


def test_layout_finds_located_attrs_wherever_they_are() -> None:
    """Located keys together, apart, first, last, alone, next to long values, and keys
    that only look like them."""
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
        {"inline": b"\x06source\x04\x10" + b"s" * 16, "source": b"t" * 16},
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
    data = encode_tree(Tree.of(nodes), LOCATE)
    assert data == reference_layout_tree(nodes, LOCATE)
    check_spans(data, nodes)


def test_spans_of_another_layout_are_located_again() -> None:
    nodes = [Node(b"a", "file", attrs={"order": 1, "source": b"s" * 16, "x": 2})]
    spans = tree_spans(encode_tree(Tree.of(nodes), ("x",)))
    assert spans is not None and spans[0].located == ("x",)
    assert join_nodes([(b"a", spans[0])], LOCATE) == encode_tree(Tree.of(nodes), LOCATE)


def test_layouts_that_do_not_match_their_nodes_are_refused() -> None:
    nodes = [
        Node(b"a", "file", attrs={"order": 1, "source": b"s" * 16}),
        Node(b"b", "file", attrs={"order": 2}),
    ]
    good = encode_tree(Tree.of(nodes), LOCATE)
    layout_at = good.index(b"\x06layout") + len(b"\x06layout") + 2
    for at in range(layout_at, layout_at + 4 * 11 * 2):
        bad = bytearray(good)
        bad[at] ^= 0x01
        with pytest.raises(CorruptError):
            decode_tree(bytes(bad), check_layout=True)
    with pytest.raises(CorruptError):
        tree_spans(good[:-1])
    with pytest.raises(CorruptError):
        tree_spans(good[:30] + good[31:])


@settings(max_examples=150, deadline=None)
@given(trees_strategy, st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_damaged_trees_split_or_raise_corrupt_error(nodes: list[Node], at: int, byte: int) -> None:
    data = bytearray(reference_layout_tree(nodes, LOCATE))
    data[at % len(data)] = byte
    with contextlib.suppress(CorruptError):
        tree_spans(bytes(data))
    with contextlib.suppress(CorruptError):
        decode_tree(bytes(data), check_layout=True)
