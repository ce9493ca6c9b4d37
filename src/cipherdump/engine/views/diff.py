"""What changed between two snapshots, as ``diff`` shows it.

Changes come as ``(change, path, kind)``, depth first in name order: ``+`` added, ``-``
removed (a node whose kind changed is removed and added), ``M`` contents modified, ``U``
metadata only.  Subtrees whose stored tree is the same in both snapshots are skipped
unread, and so are the parts a large directory's trees share (see
:mod:`cipherdump.repo.tree`).  The walk keeps its own stack, so a tree as deep as backup accepts
(:data:`~cipherdump.engine.views.image.MAX_DEPTH` levels) does not run into Python's
recursion limit.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cipherdump.engine.nodeattrs import VOLATILE_ATTRS
from cipherdump.engine.views.snapshot import SnapNode, SnapshotView

Change = tuple[str, bytes, str]


@dataclass(frozen=True, slots=True)
class _Descend:
    """A pair of directories (either missing) to compare next, one level down."""

    a: SnapNode | None
    b: SnapNode | None


def iter_diff(view1: SnapshotView, view2: SnapshotView) -> Iterator[Change]:
    """Every change from ``view1`` to ``view2``, from the root down."""
    stack = [_level(view1, view2, view1.root_node(), view2.root_node())]
    while stack:
        step = next(stack[-1], None)
        if step is None:
            stack.pop()
        elif isinstance(step, _Descend):
            stack.append(_level(view1, view2, step.a, step.b))
        else:
            yield step


def _level(
    view1: SnapshotView, view2: SnapshotView, a: SnapNode | None, b: SnapNode | None
) -> Iterator[Change | _Descend]:
    """The changes between directories ``a`` and ``b`` (either missing), one level deep."""
    if (
        a is not None
        and b is not None
        and a.node.subtree is not None
        and a.node.subtree == b.node.subtree
        and a.chain is None
        and b.chain is None
    ):
        return
    # A large directory stored in parts: the entries of a part both share are equal.
    shared = view1.parts(a) & view2.parts(b) if a is not None and b is not None else frozenset()
    kids1 = {k.raw_name: k for k in view1.children(a, skip_parts=shared)} if a is not None else {}
    kids2 = {k.raw_name: k for k in view2.children(b, skip_parts=shared)} if b is not None else {}
    for name in sorted(kids1.keys() | kids2.keys()):
        k1, k2 = kids1.get(name), kids2.get(name)
        if k1 is not None and (k2 is None or k1.kind != k2.kind):
            yield "-", k1.path, k1.kind
            if k1.is_dir:
                yield _Descend(k1, None)
            k1 = None
        if k2 is not None and k1 is None:
            yield "+", k2.path, k2.kind
            if k2.is_dir:
                yield _Descend(None, k2)
            continue
        if k1 is None or k2 is None:
            continue
        if k1.node.content != k2.node.content:
            yield "M", k2.path, k2.kind
        elif _meta(k1) != _meta(k2):
            yield "U", k2.path, k2.kind
        if k1.is_dir:
            yield _Descend(k1, k2)


def _meta(node: SnapNode) -> dict[str, Any]:
    # The listing position and atime are not changes a user means by "modified".
    return {k: v for k, v in node.attrs.items() if k not in VOLATILE_ATTRS}
