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
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

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


# A node is the map {"attrs", "content"?, "kind", "name", "subtree"?} (keys in byte
# order): encoded directly, without building the map.  Its head is the tag and key
# count, then the key "attrs"; indexed by (has content) + 2 * (has subtree).
_NODE_HEADS = tuple(b"\x07" + codec.varint(3 + n) + b"\x05attrs" for n in (0, 1, 1, 2))
_CONTENT_KEY = b"\x07content"
_KIND_KEY = b"\x04kind"
_NAME_KEY = b"\x04name"
_SUBTREE_KEY_AND_HEAD = b"\x07subtree\x04\x20"
_ID_HEAD = b"\x04\x20"
_CONTENT_HEADS = tuple(_CONTENT_KEY + codec.list_head(n) for n in range(0x80))
_NAME_HEADS = tuple(_NAME_KEY + codec.bytes_head(n) for n in range(0x100))
# In a tree, a node's attrs are a value nested three deep ({"nodes": [{"attrs": ...}]}).
_ATTRS_DEPTH = 3
# The key "kind" and an encoded kind, by kind: a handful of strings.
_KINDS: dict[str, bytes] = {}


def _kind(kind: str) -> bytes:
    """The key "kind" and ``kind`` encoded, kept in _KINDS if ``kind`` is a str."""
    parts = [_KIND_KEY]
    codec.encode_into(kind, parts, _ATTRS_DEPTH)
    encoded = b"".join(parts)
    if type(kind) is str and len(_KINDS) < 64:
        _KINDS[kind] = encoded
    return encoded


def _node_parts(node: Node, parts: list[bytes]) -> None:
    """Append the pieces of ``node``'s encoding to ``parts``."""
    content, subtree, name, kind = node.content, node.subtree, node.name, node.kind
    parts.append(_NODE_HEADS[(subtree is not None) * 2 + (len(content) > 0)])
    codec.encode_into(node.attrs, parts, _ATTRS_DEPTH)
    if content:
        n = len(content)
        parts.append(_CONTENT_HEADS[n] if n < 0x80 else _CONTENT_KEY + codec.list_head(n))
        for blob_id in content:
            parts += (_ID_HEAD, blob_id.raw)
    n = len(name)
    parts += (
        (_KINDS.get(kind) if type(kind) is str else None) or _kind(kind),
        _NAME_HEADS[n] if n < 0x100 else _NAME_KEY + codec.bytes_head(n),
        name,
    )
    if subtree is not None:
        parts += (_SUBTREE_KEY_AND_HEAD, subtree.raw)


def encode_tree(tree: Tree) -> bytes:
    return _join(tree.nodes)


def encode_node(node: Node) -> bytes:
    """One node's encoding: a tree's plaintext is these joined (:func:`join_nodes`)."""
    parts: list[bytes] = []
    _node_parts(node, parts)
    return b"".join(parts)


# The codec frames a tree as {"nodes": [node, ...], "v": 1}: keys in byte order.
_TREE_HEAD = b"\x07\x02\x05nodes\x06"
_TREE_TAIL = b"\x01v" + codec.encode(TREE_VERSION)


def _join(nodes: Sequence[Node | bytes]) -> bytes:
    parts = [_TREE_HEAD, codec.varint(len(nodes))]
    for node in nodes:
        if isinstance(node, Node):
            _node_parts(node, parts)
        else:
            parts.append(node)
    parts.append(_TREE_TAIL)
    return b"".join(parts)


def join_nodes(encoded: Iterable[tuple[bytes, Node | bytes]]) -> bytes:
    """The plaintext of the tree of these ``(name, node)`` pairs, each node a
    :class:`Node` or its encoding (:func:`encode_node`, or a span from
    :func:`split_tree`).  Equal to :func:`encode_tree` of the same nodes.

    Reusing encoded nodes is what lets an incremental backup rebuild a changed
    directory without decoding and re-encoding its unchanged entries.
    """
    pairs = sorted(encoded, key=_name_of)
    names = list(map(_name_of, pairs))
    if not all(map(operator.lt, names, itertools.islice(names, 1, None))):
        for a, b in itertools.pairwise(names):
            if not a < b:
                raise ValueError(f"tree nodes not sorted and unique at {b!r}")
    return _join(list(map(_node_of, pairs)))


_name_of = operator.itemgetter(0)
_node_of = operator.itemgetter(1)


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


class NodeSpan(NamedTuple):
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


# A node's keys after "attrs" (see _NODE_HEADS), with the tag of their value.
_KIND_KEY_STR = _KIND_KEY + b"\x05"
_NAME_KEY_BYTES = _NAME_KEY + b"\x04"
_new_span = tuple.__new__


def _short_field(data: bytes, pos: int, key: bytes, what: str) -> tuple[bytes, int]:
    """The value of the node field whose key and tag (``key``, 6 bytes) are at ``pos``
    (bytes or a string), and where the next field starts."""
    if not data.startswith(key, pos):
        raise ValueError(f"bad node {what}")
    n = data[pos + 6]
    if n < 0x80:
        at = pos + 7
    else:
        n, at = codec.read_count(data, pos + 6)
    return data[at : at + n], at + n


def _split_tree(data: bytes, want: frozenset[bytes]) -> list[NodeSpan]:
    """The walk of :func:`split_tree`.  A node's keys are known (in byte order: attrs,
    content if any, kind, name, subtree if any), so only the attrs are walked item by
    item, by regular expressions (see :func:`_attr_patterns`), four at a time: this
    runs for every attr of every node of every changed directory."""
    if not data.startswith(_TREE_HEAD) or not data.endswith(_TREE_TAIL):
        raise ValueError("not a version 1 tree")
    count, pos = codec.read_count(data, len(_TREE_HEAD))
    read_count, startswith = codec.read_count, data.startswith
    one, four, keys = _attr_patterns(want)
    match_one, match_four = one.match, four.match
    out: list[NodeSpan] = []
    append = out.append
    for _ in range(count):
        start = pos
        if data[pos : pos + 9] not in _NODE_STARTS:
            raise ValueError("node is not a map starting with attrs")
        fields = data[pos + 1]
        n = data[pos + 9]
        if n < 0x80:
            pos += 10
        else:
            n, pos = read_count(data, pos + 9)
        found: dict[bytes, tuple[int, int]] = {}
        if n >= 4:  # four attrs at a time
            chunk = pos
            for _ in range(n >> 2):
                m = match_four(data, chunk)
                if m is None:
                    break
                g = m.lastindex
                if g:
                    # The wanted keys are groups in key order, as in the map: the last
                    # one matched is the last wanted key among these four attrs, and
                    # only keys before it, not found yet, can be among them too.
                    while g:
                        at = m.start(g) if keys[g] not in found else -1
                        if at >= 0 and (item := match_one(data, at)) is not None:
                            found[keys[g]] = (item.end(g) - start, item.end() - start)
                        g -= 1
                chunk = m.end()
            else:
                pos = chunk
                n &= 3
        for _ in range(n):
            m = match_one(data, pos)
            if m is None:
                break
            g = m.lastindex
            if g:
                at = m.end(g)
                found[keys[g]] = (at - start, m.end() - start)
            pos = m.end()
            n -= 1
        if n:  # attrs the patterns do not cover: walk them all again
            pos, found = _walk_attrs(data, start, want, match_one, keys)
        if startswith(_CONTENT_KEY, pos):
            n = data[pos + 9]  # a list of ids (with a one-byte count): 34 bytes each
            end = pos + 10 + 34 * n
            if (
                data[pos + 8] != 0x06
                or n >= 0x80
                or data[pos + 10 : end : 34] != b"\x04" * n
                or data[pos + 11 : end : 34] != b"\x20" * n
            ):
                end = codec.skip(data, pos + len(_CONTENT_KEY))
            pos = end
            fields -= 1
        kind, pos = _short_field(data, pos, _KIND_KEY_STR, "kind")
        name, pos = _short_field(data, pos, _NAME_KEY_BYTES, "name")
        if fields == 4:
            if not startswith(_SUBTREE_KEY_AND_HEAD, pos):
                raise ValueError("bad node subtree")
            pos += len(_SUBTREE_KEY_AND_HEAD) + 32
        elif fields != 3:
            raise ValueError("unknown node fields")
        if pos > len(data):
            raise ValueError("truncated")
        append(_new_span(NodeSpan, (name, kind, data[start:pos], found)))
    if pos + len(_TREE_TAIL) != len(data):
        raise ValueError("trailing bytes")
    return out


def _walk_attrs(
    data: bytes,
    start: int,
    want: frozenset[bytes],
    match_one: Callable[[bytes, int], re.Match[bytes] | None],
    keys: list[bytes],
) -> tuple[int, dict[bytes, tuple[int, int]]]:
    """(position after, wanted attrs found) of the attrs of the node at ``start``: each
    by the pattern of one attr if it covers it, else by :func:`codec.skip`."""
    n, pos = codec.read_count(data, start + 9)
    found: dict[bytes, tuple[int, int]] = {}
    for _ in range(n):
        m = match_one(data, pos)
        if m is not None:
            g = m.lastindex
            if g:
                at = m.end(g)
                found[keys[g]] = (at - start, m.end() - start)
            pos = m.end()
            continue
        key, at = codec.read_map_key(data, pos)
        pos = codec.skip(data, at)
        if key in want:
            found[key] = (at - start, pos - start)
    return pos, found


def _one_byte_length(limit: int) -> bytes:
    """A pattern of a one-byte length n < ``limit``, then n bytes."""
    return b"(?:%s)" % b"|".join(re.escape(bytes((n,))) + b".{%d}" % n for n in range(limit))


_NODE_STARTS = frozenset(b"\x07" + codec.varint(n) + b"\x05attrs\x07" for n in (3, 4, 5))
_Patterns = tuple[re.Pattern[bytes], re.Pattern[bytes], list[bytes]]
_ATTR_PATTERNS: dict[frozenset[bytes], _Patterns] = {}


def _attr_patterns(want: frozenset[bytes]) -> _Patterns:
    """The compiled patterns of one attr and of four attrs for these wanted keys, and
    the wanted key of each group.  Compiled on first use (some 10 ms), as few programs
    split trees.

    An attr is a key shorter than 64 bytes (those in ``want`` are groups, in key order,
    with their length byte) and one of the common values: ints, bools and None, bytes
    and strings shorter than 128 bytes, lists of up to 8 ints or bools, and lists of up
    to 4 ints, bools or lists of up to 4 of those (such as extents).  A value's encoding
    delimits itself, so the pattern matches exactly one whole value or nothing, and
    only where a value starts.  Other attrs (and longer wanted keys) are left to
    :func:`_walk_attrs`.
    """
    patterns = _ATTR_PATTERNS.get(want)
    if patterns is None:
        small = rb"\x03[\x80-\xff]*[\x00-\x7f]|[\x00-\x02]"  # an int, a bool or None

        def counted(item: bytes, most: int) -> bytes:  # a list of up to ``most`` items
            counts = (re.escape(bytes((n,))) + b"(?:%s){%d}" % (item, n) for n in range(most + 1))
            return rb"\x06(?:%s)" % b"|".join(counts)

        value = b"(?:%s|[\\x04\\x05]%s|%s|%s)" % (
            small,
            _one_byte_length(0x80),
            counted(small, 8),
            counted(small + b"|" + counted(small, 4), 4),
        )
        keys = sorted(k for k in want if len(k) < 0x40)
        wanted = b"".join(b"(" + re.escape(bytes((len(k),)) + k) + b")|" for k in keys)
        attr = b"(?:" + wanted + _one_byte_length(0x40) + b")" + value
        patterns = (
            re.compile(attr, re.DOTALL),
            re.compile(b"(?:" + attr + b"){4}", re.DOTALL),
            [b"", *keys],
        )
        if len(_ATTR_PATTERNS) < 16:
            _ATTR_PATTERNS[want] = patterns
    return patterns
