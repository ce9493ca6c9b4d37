"""Trees: one directory's nodes, stored as a content-addressed blob.

The repository understands only what it needs for reachability: a node's ``subtree``
(another tree blob) and ``content`` (the data blobs it needs, in order).  Everything
else the engine wants to keep (inode fields, extents, xattrs, fscrypt contexts) goes in
``attrs``, an opaque map of codec values.  Names are ``bytes`` and survive exactly.

Plaintext (the codec, :mod:`cipherdump.repo.codec`) before zstd and sealing::

    {"v": 1, "nodes": [{"name": bytes, "kind": str, "attrs": map,
                        "subtree": bytes(32)  (only if present),
                        "content": [bytes(32), ...]  (only if non-empty)}, ...]}

Nodes are sorted by name as bytes, names unique, so equal directories encode equally
and get equal ids: unchanged subtrees are shared between snapshots.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from cipherdump.errors import CorruptError, UnsupportedError
from cipherdump.repo import codec
from cipherdump.repo.codec import Value
from cipherdump.repo.ids import Id

TREE_VERSION = 1
_NODE_KEYS = frozenset({"name", "kind", "attrs", "subtree", "content"})


@dataclass(frozen=True, slots=True)
class Node:
    name: bytes
    kind: str
    subtree: Id | None = None
    content: tuple[Id, ...] = ()
    attrs: Mapping[str, Value] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if type(self.name) is not bytes:
            raise TypeError("a node name is bytes")


@dataclass(frozen=True, slots=True)
class Tree:
    nodes: tuple[Node, ...] = ()

    def __post_init__(self) -> None:
        for a, b in zip(self.nodes, self.nodes[1:], strict=False):
            if not a.name < b.name:
                raise ValueError(f"tree nodes not sorted and unique at {b.name!r}")

    @classmethod
    def of(cls, nodes: Iterable[Node]) -> Tree:
        return cls(tuple(sorted(nodes, key=lambda n: n.name)))

    def __getitem__(self, name: bytes) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def blob_refs(self) -> Iterable[Id]:
        for node in self.nodes:
            yield from node.content


def _node_value(node: Node) -> dict[str, Value]:
    m: dict[str, Value] = {"name": node.name, "kind": node.kind, "attrs": node.attrs}
    if node.subtree is not None:
        m["subtree"] = node.subtree.raw
    if node.content:
        m["content"] = [i.raw for i in node.content]
    return m


def encode_tree(tree: Tree) -> bytes:
    return codec.encode({"v": TREE_VERSION, "nodes": [_node_value(n) for n in tree.nodes]})


def encode_node(node: Node) -> bytes:
    """One node's encoding: a tree's plaintext is these joined (:func:`join_nodes`)."""
    return codec.encode(_node_value(node))


# The codec frames a tree as {"nodes": [node, ...], "v": 1}: keys in byte order.
_TREE_HEAD = b"\x07\x02\x05nodes\x06"
_TREE_TAIL = b"\x01v" + codec.encode(TREE_VERSION)


def join_nodes(encoded: Iterable[tuple[bytes, Node | bytes]]) -> bytes:
    """The plaintext of the tree of these ``(name, node)`` pairs, each node a
    :class:`Node` or its encoding (:func:`encode_node`, or a span from
    :func:`split_tree`).  Equal to :func:`encode_tree` of the same nodes.

    Reusing encoded nodes is what lets an incremental backup rebuild a changed
    directory without decoding and re-encoding its unchanged entries.
    """
    pairs = sorted(encoded, key=lambda pair: pair[0])
    for a, b in itertools.pairwise(pairs):
        if not a[0] < b[0]:
            raise ValueError(f"tree nodes not sorted and unique at {b[0]!r}")
    count = bytearray()
    codec.encode_varint(len(pairs), count)
    body = [encode_node(n) if isinstance(n, Node) else n for _, n in pairs]
    return b"".join((_TREE_HEAD, count, *body, _TREE_TAIL))


def decode_tree(data: bytes, what: str = "tree") -> Tree:
    top = codec.expect_map(codec.decode(data, what), what)
    version = codec.get_int(top, "v", what)
    if version > TREE_VERSION:
        raise UnsupportedError(f"{what}: tree version {version} is newer than this program")
    if version != TREE_VERSION or set(top) != {"v", "nodes"}:
        raise CorruptError("bad tree header", structure=what)
    nodes = []
    for item in codec.get_list(top, "nodes", what):
        m = codec.expect_map(item, what)
        if not set(m) <= _NODE_KEYS:
            raise CorruptError(f"unknown node fields {sorted(set(m) - _NODE_KEYS)}", structure=what)
        subtree = Id(codec.get_bytes(m, "subtree", what)) if "subtree" in m else None
        content: tuple[Id, ...] = ()
        if "content" in m:
            refs = codec.get_list(m, "content", what)
            if not refs or not all(isinstance(r, bytes) and len(r) == 32 for r in refs):
                raise CorruptError("bad content list", structure=what)
            content = tuple(Id(r) for r in refs if isinstance(r, bytes))
        nodes.append(
            Node(
                name=codec.get_bytes(m, "name", what),
                kind=codec.get_str(m, "kind", what),
                subtree=subtree,
                content=content,
                attrs=codec.get_map(m, "attrs", what),
            )
        )
    try:
        return Tree(tuple(nodes))
    except ValueError as exc:
        raise CorruptError(str(exc), structure=what) from None


@dataclass(frozen=True, slots=True)
class NodeSpan:
    """One node of an encoded tree, found without decoding it: its name and kind (as
    UTF-8 bytes), its own encoding, and where in it the ``attrs`` values asked for are
    (encoded)."""

    name: bytes
    kind: bytes
    data: bytes
    found: dict[bytes, tuple[int, int]]

    def attr(self, key: bytes) -> bytes | None:
        """The encoded value of attr ``key``, if it was asked for and is present."""
        at = self.found.get(key)
        return None if at is None else self.data[at[0] : at[1]]

    def with_attr(self, key: bytes, encoded: bytes) -> bytes:
        """The node's encoding with the value of the present attr ``key`` replaced."""
        start, stop = self.found[key]
        return b"".join((self.data[:start], encoded, self.data[stop:]))


def split_tree(data: bytes, want: frozenset[bytes]) -> list[NodeSpan]:
    """The nodes of a tree's plaintext, for a tree this program wrote and authenticated.

    ``want`` names the ``attrs`` keys to locate.  Raises CorruptError if the plaintext
    is not shaped like a version-1 tree.
    """
    try:
        return _split_tree(data, want)
    except (IndexError, ValueError) as exc:
        raise CorruptError(f"cannot split: {exc}", structure="tree") from None


def _split_tree(data: bytes, want: frozenset[bytes]) -> list[NodeSpan]:
    if not data.startswith(_TREE_HEAD) or not data.endswith(_TREE_TAIL):
        raise ValueError("not a version 1 tree")
    count, pos = codec.read_count(data, len(_TREE_HEAD))
    skip, read_key = codec.skip, codec.read_map_key
    lengths = {len(k) for k in want}
    out: list[NodeSpan] = []
    for _ in range(count):
        start = pos
        if data[pos] != 0x07:
            raise ValueError("node is not a map")
        keys, pos = codec.read_count(data, pos + 1)
        name = kind = b""
        found: dict[bytes, tuple[int, int]] = {}
        for _ in range(keys):
            key, pos = read_key(data, pos)
            if key == b"attrs":
                if data[pos] != 0x07:
                    raise ValueError("attrs is not a map")
                n, pos = codec.read_count(data, pos + 1)
                for _ in range(n):
                    # Scalars inline: this loop runs for every attr of every node.
                    b = data[pos]
                    if b < 0x80:
                        at = pos + 1 + b
                        # Only keys of a wanted length are worth a slice.
                        akey = data[pos + 1 : at] if b in lengths else b""
                    else:
                        akey, at = read_key(data, pos)
                    tag = data[at]
                    if tag == 0x03:
                        pos = at + 1
                        while data[pos] & 0x80:
                            pos += 1
                        pos += 1
                    elif tag == 0x04 and data[at + 1] < 0x80:
                        pos = at + 2 + data[at + 1]
                    else:
                        pos = skip(data, at)
                    if akey in want:
                        found[akey] = (at - start, pos - start)
                continue
            end = skip(data, pos)
            if key == b"name" or key == b"kind":
                # bytes (tag 4) and str (tag 5, UTF-8): a length, then the raw bytes.
                if data[pos] != (0x04 if key == b"name" else 0x05):
                    raise ValueError("bad node name or kind")
                _, at = codec.read_count(data, pos + 1)
                if key == b"name":
                    name = data[at:end]
                else:
                    kind = data[at:end]
            pos = end
        out.append(NodeSpan(name, kind, data[start:pos], found))
    if pos + len(_TREE_TAIL) != len(data):
        raise ValueError("trailing bytes")
    return out
