"""``cipherdump diff SNAPSHOT1 SNAPSHOT2``: what changed between two snapshots."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import click

from cipherdump.cli import render, sources

if TYPE_CHECKING:
    from cipherdump.engine.snapshot_view import SnapNode, SnapshotView


def _iter_diff(
    view1: SnapshotView, view2: SnapshotView, a: SnapNode | None, b: SnapNode | None
) -> Iterator[tuple[str, bytes, str]]:
    """(change, path, kind) below two directories; equal subtrees are skipped unread."""
    if (
        a is not None
        and b is not None
        and a.node.subtree is not None
        and a.node.subtree == b.node.subtree
        and a.chain is None
        and b.chain is None
    ):
        return
    kids1 = {k.raw_name: k for k in view1.children(a)} if a is not None else {}
    kids2 = {k.raw_name: k for k in view2.children(b)} if b is not None else {}
    for name in sorted(kids1.keys() | kids2.keys()):
        k1, k2 = kids1.get(name), kids2.get(name)
        if k1 is not None and (k2 is None or k1.kind != k2.kind):
            yield "-", k1.path, k1.kind
            if k1.is_dir:
                yield from _iter_diff(view1, view2, k1, None)
            k1 = None
        if k2 is not None and k1 is None:
            yield "+", k2.path, k2.kind
            if k2.is_dir:
                yield from _iter_diff(view1, view2, None, k2)
            continue
        if k1 is None or k2 is None:
            continue
        if k1.node.content != k2.node.content:
            yield "M", k2.path, k2.kind
        elif _meta(k1) != _meta(k2):
            yield "U", k2.path, k2.kind
        if k1.is_dir:
            yield from _iter_diff(view1, view2, k1, k2)


def _meta(node: SnapNode) -> dict[str, Any]:
    from cipherdump.engine.nodeattrs import VOLATILE_ATTRS

    # The listing position and atime are not changes a user means by "modified".
    return {k: v for k, v in node.attrs.items() if k not in VOLATILE_ATTRS}


@click.command()
@click.argument("snapshot1")
@click.argument("snapshot2")
@sources.repo_option
@sources.password_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@render.one_line_errors
def diff(
    snapshot1: str, snapshot2: str, repo: str | None, password_file: str | None, as_json: bool
) -> None:
    """What changed from SNAPSHOT1 to SNAPSHOT2: + added, - removed, M contents
    modified, U metadata only."""
    with sources.open_repository(repo, password_file, lock=False) as repository:
        v1, v2 = (
            sources.snapshot_view(repository, snapshot1),
            sources.snapshot_view(repository, snapshot2),
        )
        changes = list(_iter_diff(v1, v2, v1.root_node(), v2.root_node()))
    counts = {c: sum(1 for x in changes if x[0] == c) for c in "+-MU"}
    if as_json:
        click.echo(
            render.dumps(
                {
                    "snapshot1": v1.id.hex,
                    "snapshot2": v2.id.hex,
                    "changes": [{"change": c, "path": p, "type": k} for c, p, k in changes],
                    "added": counts["+"],
                    "removed": counts["-"],
                    "modified": counts["M"],
                    "metadata": counts["U"],
                }
            )
        )
        return
    for change, path, kind in changes:
        suffix = "/" if kind == "dir" else ""
        click.echo(f"{change}  {render.show_bytes(path)}{suffix}")
    click.echo(
        f"{counts['+']} added, {counts['-']} removed, {counts['M']} modified, "
        f"{counts['U']} metadata only"
    )
