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

A version-2 tree adds a *layout*: ``{"layout": bytes, "located": [str, ...], "nodes":
[...], "v": 2}``, where the layout holds, per node, u32 little-endian words: the node's
offset from the first node, then for each located attr key the offset of its value's
encoding in the node and its length (0, 0 if absent).  It is what lets an incremental
backup find and reuse the encoded nodes of unchanged entries without decoding a tree
(see :func:`tree_spans`); readers that do not need it decode the tree as before.

A version-3 tree is a *chunked* directory's index: ``{"nodes": [part, ...], "v": 3}``,
each part a node ``{"attrs": {"entries": n}, "kind": "part", "name": first name,
"subtree": id}`` whose subtree is a version-1 or -2 tree of the next ``n`` nodes of the
directory in name order (see :func:`split_parts` for where parts end, and
:func:`join_parts`).  Reachability needs nothing new (parts are subtrees); a reader
that lists the directory joins its parts (``Repository.load_tree``).
"""

from __future__ import annotations

import itertools
import operator
import sys
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from cipherdump.errors import CorruptError, UnsupportedError

# BLAKE2b without loading OpenSSL's libcrypto through hashlib (as engine.nodeattrs).
try:
    from _blake2 import blake2b
except ImportError:  # pragma: no cover - an interpreter without the builtin module
    from hashlib import blake2b
from cipherdump.repo import codec
from cipherdump.repo.codec import Value
from cipherdump.repo.ids import Id

TREE_VERSION = 3  # the newest version read and written (1 and 2 are read and written too)
_NODE_KEYS = frozenset({"name", "kind", "attrs", "subtree", "content"})
# The kind of a chunked directory's part nodes (version 3), and their one attr.
PART_KIND = "part"
_PART_ATTRS = frozenset({"entries"})
# Where a directory's tree is split into parts (see split_parts): directories of more
# nodes than CHUNK_FROM are; a part ends after a node whose name hashes to a multiple
# of 2**PART_BITS, once it holds PART_MIN nodes, and at PART_MAX nodes.
CHUNK_FROM = 8192
PART_BITS = 12
PART_MIN = 1024
PART_MAX = 16384


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
    """A directory's nodes in name order; with ``chunked``, the index of a chunked
    directory: its nodes are its parts (kind :data:`PART_KIND`)."""

    nodes: tuple[Node, ...] = ()
    chunked: bool = False

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
    content, subtree = node.content, node.subtree
    parts.append(_NODE_HEADS[(subtree is not None) * 2 + (len(content) > 0)])
    codec.encode_into(node.attrs, parts, _ATTRS_DEPTH)
    _tail_parts(node.name, node.kind, content, parts)
    if subtree is not None:
        parts += (_SUBTREE_KEY_AND_HEAD, subtree.raw)


def _tail_parts(name: bytes, kind: str, content: tuple[Id, ...], parts: list[bytes]) -> None:
    """Append what follows a node's attrs up to its subtree: content, kind and name."""
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


def encode_tree(tree: Tree, locate: Sequence[str] = ()) -> bytes:
    """A version-1 tree, or version 2 locating the attrs ``locate`` (see
    :func:`join_nodes`), or a chunked directory's index (version 3)."""
    if tree.chunked:
        return _join(tree.nodes, _TREE_TAIL_3)
    return _join_located(tree.nodes, tuple(locate)) if locate else _join(tree.nodes)


def split_parts(names: Sequence[bytes]) -> list[int]:
    """Where a directory of these node names (sorted) is cut into parts: the index of
    each part's first node after the first part's, or ``[]`` to keep it one tree.

    Content-defined: a cut follows a name whose BLAKE2b hash is a multiple of
    ``2**PART_BITS``, so that an added or removed entry changes only its own part (and
    rarely the next), and an unchanged part is the same blob as before.  Part sizes are
    not visible without the key (sealed blobs in packs), so the hash is not keyed.
    """
    if len(names) <= CHUNK_FROM:
        return []
    cuts: list[int] = []
    start = 0
    for i, name in enumerate(names):
        size = i + 1 - start
        if size < PART_MIN:
            continue
        if size >= PART_MAX or ends_part(name):
            if i + 1 < len(names):
                cuts.append(i + 1)
            start = i + 1
    return cuts


def ends_part(name: bytes) -> bool:
    """Whether a part may end after the node ``name`` (see :func:`split_parts`)."""
    mask = (1 << PART_BITS) - 1
    return not int.from_bytes(blake2b(name, digest_size=8).digest(), "big") & mask


def save_directory(
    encoded: Iterable[tuple[bytes, Node | NodeSpan | bytes]],
    locate: Sequence[str],
    save: Callable[[bytes], Id],
    limit: int,
) -> Id:
    """Store a directory's nodes (as :func:`join_nodes` takes them) with ``save`` (a
    tree blob's plaintext -> its id), as one tree or, if it has more than
    :data:`CHUNK_FROM` nodes or its tree would be over ``limit`` bytes, as parts (see
    :func:`split_parts`) and their index.  A part still over ``limit`` is halved until
    it fits (or is one node, which ``save`` then refuses)."""
    pairs = sorted(encoded, key=_name_of)
    names = list(map(_name_of, pairs))
    if not all(map(operator.lt, names, itertools.islice(names, 1, None))):
        # (Each part's join would see only its own names.)
        raise ValueError("tree nodes not sorted and unique")
    cuts = split_parts(names)
    if not cuts:
        data = join_nodes(pairs, locate)
        if len(data) <= limit or len(pairs) < 2:
            return save(data)
        cuts = [len(pairs) // 2]
    index: list[Node] = []
    bounds = [0, *cuts, len(pairs)]
    todo = [pairs[a:b] for a, b in itertools.pairwise(bounds)]
    todo.reverse()
    while todo:
        part = todo.pop()
        data = join_nodes(part, locate)
        if len(data) > limit and len(part) > 1:
            half = len(part) // 2
            todo += (part[half:], part[:half])
            continue
        index.append(part_node(part[0][0], save(data), len(part)))
    return save(encode_tree(Tree(tuple(index), chunked=True)))


def index_parts(data: bytes, what: str = "tree") -> tuple[Id, ...] | None:
    """The part ids of a chunked directory's index plaintext, None for another tree."""
    if not data.endswith(_TREE_TAIL_3):
        return None
    tree = decode_tree(data, what)
    if not tree.chunked:
        return None
    return tuple(n.subtree for n in tree.nodes if n.subtree is not None)


def index_entries(data: bytes, what: str = "tree") -> tuple[tuple[bytes, Id], ...] | None:
    """(first name, part id) of each part of a chunked directory's index plaintext, in
    name order; None for another tree."""
    if not data.endswith(_TREE_TAIL_3):
        return None
    tree = decode_tree(data, what)
    if not tree.chunked:
        return None
    return tuple((n.name, n.subtree) for n in tree.nodes if n.subtree is not None)


def part_node(first: bytes, part: Id, entries: int) -> Node:
    """The node of a chunked directory's index for one part."""
    return Node(first, PART_KIND, subtree=part, attrs={"entries": entries})


def join_parts(index: Tree, parts: Sequence[Tree], what: str = "tree") -> Tree:
    """The directory a chunked index and its parts' trees (in its order) make; raises
    CorruptError where they do not fit (a part's first name or count not the index's,
    names out of order across parts, a part that is itself an index)."""
    nodes: list[Node] = []
    for entry, part in zip(index.nodes, parts, strict=True):
        check_part(entry, part, None, what)
        nodes += part.nodes
    return _tree(nodes, what)


def check_part(entry: Node, part: Tree, after: bytes | None, what: str = "tree") -> None:
    """Raise CorruptError unless ``part`` is the part a chunked index's ``entry`` names
    (not itself an index; its first name and count the entry's) and, given ``after``
    (the last name of the part before), its names come after that."""
    if (
        part.chunked
        or not part.nodes
        or part.nodes[0].name != entry.name
        or entry.attrs.get("entries") != len(part.nodes)
        or (after is not None and part.nodes[0].name <= after)
    ):
        raise CorruptError("a part does not match its index", structure=what)


def encode_node(node: Node) -> bytes:
    """One node's encoding: a tree's plaintext is these joined (:func:`join_nodes`)."""
    parts: list[bytes] = []
    _node_parts(node, parts)
    return b"".join(parts)


def node_frame(name: bytes, kind: str, content: tuple[Id, ...] = ()) -> tuple[bytes, bytes]:
    """(head, tail) of the encoding of ``Node(name, kind, content=content, attrs=a)``
    (no subtree): the node is ``head + encode(a) + tail``, whatever the attrs ``a``.
    For writers that encode attrs themselves (see ``engine.filenode``)."""
    tail: list[bytes] = []
    _tail_parts(name, kind, content, tail)
    return _NODE_HEADS[len(content) > 0], b"".join(tail)


# Version 1 frames a tree as {"nodes": [node, ...], "v": 1}; version 2 as
# {"layout": bytes, "located": [str, ...], "nodes": [node, ...], "v": 2} (keys in byte
# order), the layout saying where each node, and each located attr of it, is.
_TREE_HEAD = b"\x07\x02\x05nodes\x06"
_TREE_TAIL_1 = b"\x01v" + codec.encode(1)
_TREE_HEAD_2 = b"\x07\x04\x06layout"
_LOCATED_KEY = b"\x07located"
_NODES_KEY_AND_TAG = b"\x05nodes\x06"
_TREE_TAIL_2 = b"\x01v" + codec.encode(2)
_TREE_TAIL_3 = b"\x01v" + codec.encode(3)
_STR_TAG = 0x05
_LIST_TAG = 0x06


class NodeSpan(NamedTuple):
    """One node's encoding, and where in it the values of its ``located`` attrs are
    (``found``: key -> (start, stop) of the value's encoding; a located key missing
    from ``found`` is not in the node)."""

    data: bytes
    found: dict[str, tuple[int, int]]
    located: tuple[str, ...]

    def attr(self, key: str) -> bytes | None:
        """The encoded value of attr ``key``, if it is located and present."""
        at = self.found.get(key)
        return None if at is None else self.data[at[0] : at[1]]

    def with_attr(self, key: str, encoded: bytes) -> NodeSpan:
        """The node with the value of its present, located attr ``key`` replaced."""
        start, stop = self.found[key]
        shift = len(encoded) - (stop - start)
        found = {
            k: (a + shift, b + shift) if a >= stop else (a, b) for k, (a, b) in self.found.items()
        }
        found[key] = (start, start + len(encoded))
        data = b"".join((self.data[:start], encoded, self.data[stop:]))
        return NodeSpan(data, found, self.located)


def join_nodes(
    encoded: Iterable[tuple[bytes, Node | NodeSpan | bytes]], locate: Sequence[str] = ()
) -> bytes:
    """The plaintext of the tree of these ``(name, node)`` pairs, each node a
    :class:`Node`, a :class:`NodeSpan` or a node's encoding (:func:`encode_node`).
    Equal to :func:`encode_tree` of the same nodes.

    With ``locate`` (attr keys), the tree is a version-2 tree whose layout locates each
    node and those attrs in it (see :func:`tree_spans`).  Reusing encoded nodes is what
    lets an incremental backup rebuild a changed directory without decoding and
    re-encoding its unchanged entries, and the layout is how it finds them.
    """
    pairs = sorted(encoded, key=_name_of)
    names = list(map(_name_of, pairs))
    if not all(map(operator.lt, names, itertools.islice(names, 1, None))):
        for a, b in itertools.pairwise(names):
            if not a < b:
                raise ValueError(f"tree nodes not sorted and unique at {b!r}")
    nodes = list(map(_node_of, pairs))
    if locate:
        return _join_located(nodes, tuple(locate))
    return _join(nodes)


_name_of = operator.itemgetter(0)
_node_of = operator.itemgetter(1)


def _join(nodes: Sequence[Node | NodeSpan | bytes], tail: bytes = _TREE_TAIL_1) -> bytes:
    parts = [_TREE_HEAD, codec.varint(len(nodes))]
    for node in nodes:
        if isinstance(node, Node):
            _node_parts(node, parts)
        else:
            parts.append(node.data if isinstance(node, NodeSpan) else node)
    parts.append(tail)
    return b"".join(parts)


def _join_located(nodes: Sequence[Node | NodeSpan | bytes], locate: tuple[str, ...]) -> bytes:
    return join_rows([located_row(node, locate) for node in nodes], locate)


def located_row(
    node: Node | NodeSpan | bytes, locate: tuple[str, ...]
) -> tuple[bytes, Sequence[int]]:
    """(encoding, layout row but its start) of one node of a version-2 tree locating
    ``locate``: what :func:`join_rows` joins."""
    if type(node) is Node and type(node.attrs) is dict:
        return _encode_located(node, locate)
    if isinstance(node, NodeSpan):
        data = node.data
        found = node.found if node.located == locate else _locate(data, locate)
    else:
        data = encode_node(node) if isinstance(node, Node) else node
        found = _locate(data, locate)
    row: list[int] = []
    for key in locate:
        at = found.get(key)
        row += (0, 0) if at is None else (at[0], at[1] - at[0])
    return data, row


def join_rows(rows: Sequence[tuple[bytes, Sequence[int]]], locate: Sequence[str]) -> bytes:
    """The plaintext of the tree of nodes given as :func:`located_row` makes them (in
    name order, names unique), a version-2 tree locating ``locate``, or version 1 if
    ``locate`` is empty (the rows then empty)."""
    if not locate:
        return b"".join((_TREE_HEAD, codec.varint(len(rows)), *(d for d, _ in rows), _TREE_TAIL_1))
    width = 1 + 2 * len(locate)
    layout = array("I")
    pos = 0
    for data, row in rows:
        layout.append(pos)
        layout.extend(row)
        pos += len(data)
    assert len(layout) == width * len(rows)
    if sys.byteorder != "little":
        layout.byteswap()
    table = layout.tobytes()
    return b"".join(
        (
            _TREE_HEAD_2,
            codec.bytes_head(len(table)),
            table,
            _LOCATED_KEY,
            codec.encode(list(locate)),
            _NODES_KEY_AND_TAG,
            codec.varint(len(rows)),
            *(d for d, _ in rows),
            _TREE_TAIL_2,
        )
    )


# Per tuple of attr keys (in the attrs' own order) and keys to locate: for each located
# key present, in byte order, its index in ``locate``, the index of its value among the
# pieces :func:`_node_parts` makes, and the length of the pieces before that value
# which do not depend on the values (the heads, and the keys up to its own).
_Plan = tuple[tuple[int, int, int], ...]
_PLANS: dict[tuple[tuple[str, ...], tuple[str, ...]], _Plan] = {}
_PLANS_MAX = 1024


def _plan(keys: tuple[str, ...], locate: tuple[str, ...]) -> _Plan:
    plan = _PLANS.get((keys, locate))
    if plan is None:
        ordered = sorted(k.encode("utf-8") for k in keys)
        # The node's head and its first key (``_NODE_HEADS``), then the attrs map's head.
        fixed = len(_NODE_HEADS[0]) + len(codec.varint(len(keys))) + 1
        steps = []
        for j, raw in enumerate(ordered):
            fixed += len(codec.varint(len(raw))) + len(raw)
            key = raw.decode("utf-8")
            if key in locate:
                steps.append((locate.index(key), 3 + 2 * j, fixed))
        plan = tuple(steps)
        if len(_PLANS) < _PLANS_MAX:
            _PLANS[(keys, locate)] = plan
    return plan


def _encode_located(node: Node, locate: tuple[str, ...]) -> tuple[bytes, list[int]]:
    """(encoding, layout row but its start) of a node whose attrs are a plain dict: the
    codec encodes such a map as its head, then key and value pieces in key order (see
    :func:`codec.encode_into`), so value ``j`` is piece ``3 + 2j`` of the node's."""
    parts: list[bytes] = []
    _node_parts(node, parts)
    row = [0] * (2 * len(locate))
    values = 0  # the length of the values before the one located
    previous = 3
    for i, piece, fixed in _plan(tuple(node.attrs), locate):
        values += sum(map(len, parts[previous:piece:2]))
        previous = piece
        row[2 * i] = fixed + values
        row[2 * i + 1] = len(parts[piece])
    return b"".join(parts), row


def _locate(data: bytes, locate: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """Where the values of the ``locate`` attrs are in a node's encoding, found by
    walking it (for nodes given encoded, without a layout of their own)."""
    wanted = {k.encode("utf-8"): k for k in locate}
    if not data.startswith(b"\x05attrs", 2) or data[0] != 0x07:
        raise ValueError("a node is a map starting with attrs")
    n, pos = codec.read_count(data, 9)
    found: dict[str, tuple[int, int]] = {}
    for _ in range(n):
        key, at = codec.read_map_key(data, pos)
        pos = codec.skip(data, at)
        if key in wanted:
            found[wanted[key]] = (at, pos)
    return found


def tree_spans(data: bytes) -> list[NodeSpan] | None:
    """The nodes of a version-2 tree's plaintext, by its layout, without decoding them;
    None for a version-1 tree.  For a tree this program wrote and authenticated: the
    layout is checked to be consistent, not to match the nodes (:func:`decode_tree`
    does that).  Raises CorruptError if it is not consistent."""
    if not data.startswith(_TREE_HEAD_2):
        return None
    try:
        return _tree_spans(data)
    except (IndexError, ValueError, UnicodeDecodeError) as exc:
        raise CorruptError(f"bad layout: {exc}", structure="tree") from None


def _tree_spans(data: bytes) -> list[NodeSpan]:
    read_count = codec.read_count
    n, pos = read_count(data, len(_TREE_HEAD_2) + 1)
    table = data[pos : pos + n]
    pos += n
    if not data.startswith(_LOCATED_KEY, pos) or data[pos + len(_LOCATED_KEY)] != _LIST_TAG:
        raise ValueError("no located keys")
    k, pos = read_count(data, pos + len(_LOCATED_KEY) + 1)
    keys: list[str] = []
    for _ in range(k):
        if data[pos] != _STR_TAG:
            raise ValueError("a located key is not a string")
        n, pos = read_count(data, pos + 1)
        keys.append(data[pos : pos + n].decode("utf-8"))
        pos += n
    if not data.startswith(_NODES_KEY_AND_TAG, pos):
        raise ValueError("no nodes")
    count, base = read_count(data, pos + len(_NODES_KEY_AND_TAG))
    if not data.endswith(_TREE_TAIL_2):
        raise ValueError("not a version 2 tree")
    end_of_nodes = len(data) - len(_TREE_TAIL_2)
    width = 1 + 2 * k
    if len(table) != 4 * width * count:
        raise ValueError("layout size does not match the nodes")
    layout = array("I")
    layout.frombytes(table)
    if sys.byteorder != "little":
        layout.byteswap()
    starts = [base + s for s in layout[::width]]
    starts.append(end_of_nodes)
    if count and starts[0] != base:
        raise ValueError("the first node is not first")
    located = tuple(keys)
    spans: list[NodeSpan] = []
    append = spans.append
    for i in range(count):
        start, stop = starts[i], starts[i + 1]
        size = stop - start
        if size <= 0:
            raise ValueError("nodes out of order")
        row = layout[i * width + 1 : (i + 1) * width]
        found: dict[str, tuple[int, int]] = {}
        for j, key in enumerate(keys):
            at, length = row[2 * j], row[2 * j + 1]
            if length:
                if at + length > size:
                    raise ValueError("a located attr is outside its node")
                found[key] = (at, at + length)
            elif at:
                raise ValueError("an absent attr has an offset")
        append(NodeSpan(data[start:stop], found, located))
    return spans


def decode_tree(data: bytes, what: str = "tree", *, check_layout: bool = False) -> Tree:
    """The tree of a plaintext.  ``check_layout`` also checks that a version-2 tree's
    layout is the one its nodes make (what ``check`` does: an incremental backup trusts
    layouts, and nothing else reads them)."""
    if check_layout and data.startswith(_TREE_HEAD_2):
        return _decode_checking_layout(data, what)
    top = codec.expect_map(codec.decode(data, what), what)
    version = codec.get_int(top, "v", what)
    if version > TREE_VERSION:
        raise UnsupportedError(f"{what}: tree version {version} is newer than this program")
    fields = {"v", "nodes"} if version != 2 else {"v", "nodes", "layout", "located"}
    if version < 1 or set(top) != fields:
        raise CorruptError("bad tree header", structure=what)
    nodes = [_node(item, what) for item in codec.get_list(top, "nodes", what)]
    if version == 3:
        return _index(nodes, what)
    return _tree(nodes, what)


def _index(nodes: list[Node], what: str) -> Tree:
    """A chunked directory's index: at least two parts, each a part node."""
    for node in nodes:
        entries = node.attrs.get("entries")
        if (
            node.kind != PART_KIND
            or node.subtree is None
            or node.content
            or set(node.attrs) != _PART_ATTRS
            or not isinstance(entries, int)
            or entries < 1
        ):
            raise CorruptError("bad part of a chunked tree", structure=what)
    if len(nodes) < 2:
        raise CorruptError("a chunked tree of fewer than two parts", structure=what)
    try:
        return Tree(tuple(nodes), chunked=True)
    except ValueError as exc:
        raise CorruptError(str(exc), structure=what) from None


def _decode_checking_layout(data: bytes, what: str) -> Tree:
    """A version-2 tree decoded node by node where its layout says the nodes are: each
    piece must be exactly one node, and each located attr's value must be where the
    layout says, right after its key (or absent on both counts)."""
    spans = tree_spans(data)
    if spans is None or (spans and not spans[0].located):
        raise CorruptError("bad layout", structure=what)
    nodes: list[Node] = []
    keys: dict[str, bytes] = {}
    for span in spans:
        node = _node(codec.decode(span.data, what), what)
        for key in span.located:
            if key not in keys:
                raw = key.encode("utf-8")
                keys[key] = codec.varint(len(raw)) + raw
            at = span.found.get(key)
            if key not in node.attrs:
                ok = at is None
            else:
                ok = (
                    at is not None
                    and span.data[at[0] : at[1]] == codec.encode(node.attrs[key])
                    and span.data.endswith(keys[key], 0, at[0])
                )
            if not ok:
                raise CorruptError("tree layout does not match its nodes", structure=what)
        nodes.append(node)
    return _tree(nodes, what)


def _node(item: Value, what: str) -> Node:
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
    return Node(
        name=codec.get_bytes(m, "name", what),
        kind=codec.get_str(m, "kind", what),
        subtree=subtree,
        content=content,
        attrs=codec.get_map(m, "attrs", what),
    )


def _tree(nodes: list[Node], what: str) -> Tree:
    try:
        return Tree(tuple(nodes))
    except ValueError as exc:
        raise CorruptError(str(exc), structure=what) from None
