"""Walking a path a user typed, component by component, over any tree of nodes.

Images, snapshots and keyed views each know how to find one child by name (plain,
no-key or decrypted); the walk itself, with ``.``, ``..`` and "not a directory", is the
same for all of them and lives here once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from cipherdump.errors import NotFoundError

N = TypeVar("N")


def resolve_path(
    root: N,
    path: bytes,
    *,
    lookup: Callable[[N, bytes], N],
    is_dir: Callable[[N], bool],
    shown_path: Callable[[N], bytes],
) -> N:
    """The node at ``path`` below ``root``.  ``..`` never climbs above ``root``."""
    node = root
    trail = [node]
    for part in path.split(b"/"):
        if not part or part == b".":
            continue
        if part == b"..":
            if len(trail) > 1:
                trail.pop()
            node = trail[-1]
            continue
        if not is_dir(node):
            shown = shown_path(node).decode("utf-8", "backslashreplace")
            raise NotFoundError(f"{shown}: not a directory")
        node = lookup(node, part)
        trail.append(node)
    return node


def child_path(parent: bytes, name: bytes) -> bytes:
    """The path of entry ``name`` in the directory at ``parent``.  Unlike
    ``posixpath.join``, a name that starts with '/' (a damaged or forged entry, to be
    reported) stays below its parent in messages instead of replacing the path."""
    return parent + name if parent.endswith(b"/") else parent + b"/" + name


def show_path(path: bytes) -> str:
    """A path in an error message or a problem: UTF-8 where valid, escapes elsewhere."""
    return path.decode("utf-8", "backslashreplace")
