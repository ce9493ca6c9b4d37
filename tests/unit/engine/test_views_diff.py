"""The snapshot tree diff (engine/views/diff.py): order and kinds of changes, and a walk
as deep as backup accepts, which the recursive version ended in RecursionError."""

from __future__ import annotations

import sys
from typing import cast

from cipherdump.engine.views.diff import iter_diff
from cipherdump.engine.views.paths import child_path
from cipherdump.engine.views.snapshot import SnapNode, SnapshotView
from cipherdump.repo import Id
from cipherdump.repo.tree import Node


class FakeView:
    """The methods the diff uses, over directories given as name -> children (none
    stored in parts)."""

    def __init__(self, root: SnapNode, kids: dict[bytes, list[SnapNode]]) -> None:
        self.root = root
        self.kids = kids

    def root_node(self) -> SnapNode:
        return self.root

    def children(
        self, node: SnapNode, *, skip_parts: frozenset[Id] = frozenset()
    ) -> list[SnapNode]:
        return self.kids.get(node.path, [])

    def parts(self, node: SnapNode) -> frozenset[Id]:
        return frozenset()


def _dir(path: bytes, name: bytes, **attrs: int) -> SnapNode:
    return SnapNode(path, Node(name, "dir", attrs=dict(attrs)))


def _file(path: bytes, name: bytes, content: bytes, **attrs: int) -> SnapNode:
    return SnapNode(path, Node(name, "file", content=(Id(content.ljust(32, b"\0")),), attrs=attrs))


def _chain(depth: int, leaf: SnapNode | None) -> FakeView:
    """``/d/d/.../d`` ``depth`` levels deep, with ``leaf`` (if any) at the bottom."""
    kids: dict[bytes, list[SnapNode]] = {}
    path = b"/"
    for _ in range(depth):
        child = _dir(child_path(path, b"d"), b"d")
        kids[path] = [child]
        path = child.path
    if leaf is not None:
        kids[path] = [SnapNode(child_path(path, leaf.raw_name), leaf.node)]
    return FakeView(_dir(b"/", b""), kids)


def _view(fake: FakeView) -> SnapshotView:
    return cast(SnapshotView, fake)


def test_changes_in_name_order_depth_first() -> None:
    a, b, c = _file(b"/a", b"a", b"1"), _file(b"/b", b"b", b"1"), _dir(b"/c", b"c")
    old = FakeView(_dir(b"/", b""), {b"/": [a, b, c], b"/c": [_file(b"/c/x", b"x", b"1")]})
    new = FakeView(
        _dir(b"/", b""),
        {
            b"/": [
                _file(b"/a", b"a", b"2"),
                _file(b"/b", b"b", b"1", mode=1),
                _file(b"/c", b"c", b""),
            ],
            b"/c": [],
        },
    )
    assert list(iter_diff(_view(old), _view(new))) == [
        ("M", b"/a", "file"),
        ("U", b"/b", "file"),
        ("-", b"/c", "dir"),
        ("-", b"/c/x", "file"),
        ("+", b"/c", "file"),
    ]


def test_a_tree_deeper_than_the_recursion_limit() -> None:
    depth = 1500
    assert depth > sys.getrecursionlimit()
    leaf_old = _file(b"", b"f", b"1")
    leaf_new = _file(b"", b"f", b"2")
    changes = list(iter_diff(_view(_chain(depth, leaf_old)), _view(_chain(depth, leaf_new))))
    assert changes == [("M", b"/d" * depth + b"/f", "file")]
    added = list(iter_diff(_view(_chain(0, None)), _view(_chain(depth, None))))
    assert len(added) == depth and added[-1] == ("+", b"/d" * depth, "dir")
