"""Reuse in a changed *large* directory, one part of the parent's tree at a time.

A large directory's tree in the parent snapshot is chunked: an index of parts, each
with its first name, in name order.  Every entry is routed by its name to the one
part that can hold a node of that name (a reused node has the entry's name: the
record key hashes it), so the parts are read one at a time and the nodes reused go
straight to the directory's writer; neither the parent's nodes nor the new ones are
all held at once (issue 19).  The tree stored is the one
:meth:`.reuse.ParentReuse.list_with_reuse` makes: the same nodes, the same blobs.

Each part is read twice: first to find what is reused (nothing is reused if an entry
to walk cannot be read, as in :meth:`~.reuse.ParentReuse.list_with_reuse`), then to
hand the nodes over.
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from cipherdump.engine.backup.frame import Frame, Listed, PackedListing, Same
from cipherdump.engine.views.image import ImageNode, Problem, bad_entry
from cipherdump.engine.views.paths import child_path
from cipherdump.errors import CipherdumpError
from cipherdump.ext4.directory import Entry
from cipherdump.ondisk.dirent import dirent_name_problem
from cipherdump.repo import Id, Node
from cipherdump.repo.tree import NodeSpan

if TYPE_CHECKING:
    from cipherdump.engine.backup.reuse import ParentReuse

# What a located ``source`` attr (a record key) starts with: a 16-byte bytes value.
_RECORD_KEY_PREFIX = b"\x04\x10"
# What an entry at a position is, once the parts are read.
_WALK, _REUSE, _SAME = 0, 1, 2

Kids = list[ImageNode | Problem | Same | None]


def reusable_key(span: NodeSpan) -> bytes | None:
    """The record key of a parent node that may be reused as encoded (its ``source``
    attr located, and its ``order`` to be patched), else None."""
    key = span.attr("source")
    if key is not None and key[:2] == _RECORD_KEY_PREFIX and "order" in span.found:
        return key[2:]
    return None


def _by_key(spans: Sequence[NodeSpan]) -> dict[bytes, NodeSpan]:
    """The spans that may be reused as encoded, by record key."""
    out: dict[bytes, NodeSpan] = {}
    for span in spans:
        key = reusable_key(span)
        if key is not None:
            out[key] = span
    return out


def _name(listed: Sequence[Listed], position: int) -> bytes:
    if isinstance(listed, PackedListing):
        return listed.name(position)  # (without making the entry again)
    return listed[position].entry.name


def _is_dir(listed: Sequence[Listed], position: int) -> bool:
    if isinstance(listed, PackedListing):
        return listed.is_dir(position)
    return listed[position].peek.is_dir


def list_by_parts(
    reuse: ParentReuse,
    frame: Frame,
    listed: Sequence[Listed],
    parts: Sequence[tuple[bytes, Id]],
) -> Kids:
    """The entries as :meth:`.reuse.ParentReuse.list_with_reuse` lists them, but the
    reused nodes handed to the directory's writer (``frame.spill``), not to
    ``frame.nodes``."""
    index = reuse.index
    keys = frame.record_keys
    firsts = [first for first, _ in parts]
    # Entries by the part that may hold their name, in position order.
    groups = [array("I") for _ in parts]
    for position in range(len(listed)):
        at = bisect_right(firsts, _name(listed, position)) - 1
        if at >= 0:
            groups[at].append(position)
    marks = bytearray(len(listed))
    for (_, part), group in zip(parts, groups, strict=True):
        spans = index.part_spans(part)
        if spans is None:
            continue
        by_key = _by_key(spans)
        used: set[bytes] = set()
        names: set[bytes] = set()
        for position in group:
            name = _name(listed, position)
            key = keys[position]
            if key in by_key and not _is_dir(listed, position):
                # A second entry of a name is left to the walk, which reports it.
                marks[position] = _SAME if name in names else _REUSE
                used.add(key)
            names.add(name)
        index.index_spans(s for s in spans if (s.attr("source") or b"")[2:] not in used)
    try:
        out = _walked(reuse, frame, listed, marks)
    except CipherdumpError:
        # As list_with_reuse: nothing is reused, every file of the parent is indexed.
        for _, part in parts:
            index.index_spans(index.part_spans(part) or ())
        return list(reuse.ns.iter_children(frame.node))
    _hand_over(reuse, frame, listed, parts, groups, marks, out)
    reuse.on_progress(frame.node.path)
    return out


def _walked(reuse: ParentReuse, frame: Frame, listed: Sequence[Listed], marks: bytearray) -> Kids:
    """The entries to walk (None in place of the others); raises CipherdumpError if
    the inode of one cannot be read."""
    out: Kids = [None] * len(listed)
    for position, mark in enumerate(marks):
        if mark == _WALK:
            out[position] = _kid(reuse, frame, listed[position].entry)
    return out


def _kid(reuse: ParentReuse, frame: Frame, e: Entry) -> ImageNode | Problem:
    """An entry to walk, as :meth:`Namespace.iter_children` lists it; raises
    CipherdumpError if its inode cannot be read."""
    node = frame.node
    directory = node.inode
    bad = dirent_name_problem(e.name, encrypted=directory.is_encrypted)
    if bad is not None:
        return Problem(child_path(node.path, e.name), bad_entry(bad, directory.ino))
    child = reuse.fs.inode(e.ino)
    name = reuse.ns.display_name(directory, e)
    path = child_path(node.path, name)
    return ImageNode(path, name, e.name, child, directory.is_encrypted, e.hash)


def _hand_over(
    reuse: ParentReuse,
    frame: Frame,
    listed: Sequence[Listed],
    parts: Sequence[tuple[bytes, Id]],
    groups: Sequence[array[int]],
    marks: bytearray,
    out: Kids,
) -> None:
    """Read the parts again and hand the reused nodes to the directory's writer (or
    to the walk, as :class:`Same`, or as a problem)."""
    if frame.spill is None:
        frame.spill = reuse.maker.directory_writer()
    writer = frame.spill
    keys = frame.record_keys
    for (_, part), group in zip(parts, groups, strict=True):
        if not any(marks[p] for p in group):
            continue
        spans = reuse.index.part_spans(part)
        by_key = _by_key(spans or ())
        writer.add(_reused(reuse, frame, listed, group, marks, by_key, keys, out))


def _reused(
    reuse: ParentReuse,
    frame: Frame,
    listed: Sequence[Listed],
    group: array[int],
    marks: bytearray,
    by_key: dict[bytes, NodeSpan],
    keys: Sequence[bytes],
    out: Kids,
) -> Iterator[tuple[bytes, Node | NodeSpan]]:
    directory = frame.node.inode
    for position in group:
        mark = marks[position]
        if mark == _WALK:
            continue
        e, peek = listed[position]
        span = by_key.get(keys[position])
        try:
            if span is None:  # the part could not be read the second time: walked
                out[position] = _kid(reuse, frame, e)
                continue
            if mark == _SAME:
                out[position] = Same(e, peek, span)
                continue
            frame.files += 1  # (as list_with_reuse counts them)
            made = reuse.reuse_node(e.ino, peek, span, frame.order(position), frame)
        except CipherdumpError as err:
            name = reuse.ns.display_name(directory, e)
            out[position] = Problem(child_path(frame.node.path, name), err)
            continue
        yield e.name, made
