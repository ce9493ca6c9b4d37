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


def encode_tree(tree: Tree) -> bytes:
    nodes: list[Value] = []
    for node in tree.nodes:
        m: dict[str, Value] = {"name": node.name, "kind": node.kind, "attrs": node.attrs}
        if node.subtree is not None:
            m["subtree"] = node.subtree.raw
        if node.content:
            m["content"] = [i.raw for i in node.content]
        nodes.append(m)
    return codec.encode({"v": TREE_VERSION, "nodes": nodes})


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
