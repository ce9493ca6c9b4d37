"""A directory while it is being backed up (a frame of the walk's stack), and what
its entry list may hold besides decoded children."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from cipherdump.engine.dirtable import DirRecord
from cipherdump.engine.parent import Census
from cipherdump.engine.views.image import ImageNode, Problem
from cipherdump.ext4.directory import Entry
from cipherdump.ondisk.inode import InodePeek
from cipherdump.repo import Node
from cipherdump.repo.codec import Value
from cipherdump.repo.tree import NodeSpan


@dataclass(frozen=True, slots=True)
class Same:
    """An entry of a changed directory whose node is the parent snapshot's, reused as
    encoded; its inode's record is the one that node was made from, so it is not
    decoded."""

    entry: Entry
    inode: InodePeek
    span: NodeSpan

    @property
    def raw_name(self) -> bytes:
        return self.entry.name


class Listed(NamedTuple):
    """A directory entry and what :meth:`.reuse.RecordKeys.of` peeked at of its
    inode's record (the record itself is hashed, not decoded)."""

    entry: Entry
    peek: InodePeek


@dataclass(slots=True)
class Frame:
    """A directory being backed up.

    ``reuse`` is set when its entries key equals the parent snapshot's: then only its
    child directories are walked (their trees may differ) and its files are taken as
    they were.
    """

    node: ImageNode
    attrs: dict[str, Value]
    # The entries being walked: all of them, or (see ``more``) the current batch,
    # whose first is the entry at position ``base``.
    kids: list[ImageNode | Problem | Same | None]
    # The entries after the current batch, listed a batch at a time so that a large
    # directory's decoded inodes are not all held at once (None: no more).
    more: Iterator[ImageNode | Problem] | None = None
    base: int = 0
    key: bytes | None = None
    reuse: DirRecord | None = None
    orders: dict[bytes, int] = field(default_factory=dict)
    nodes: dict[bytes, Node | NodeSpan] = field(default_factory=dict)
    # Per entry position, the record key of its node (see RecordKeys); empty if the
    # entries could not all be read.
    record_keys: list[bytes] = field(default_factory=list)
    # Per entry position, the entry's offset in the directory: its ``order`` attr.
    offsets: list[int] = field(default_factory=list)
    # Encoded nodes of the parent snapshot's tree whose record key is unchanged, by
    # record key.
    reusable: dict[bytes, NodeSpan] = field(default_factory=dict)
    census: Census = field(default_factory=dict)
    files: int = 0
    errors: int = 0
    pos: int = 0
    # Child directories handed to a worker: entry name -> job number.
    pending: dict[bytes, int] = field(default_factory=dict)
    # A live backup's verdict on the directory's entries (see Walk.open_live_dir).
    live_ok: bool = True

    def record_key(self, position: int) -> bytes | None:
        """The record key of the entry at ``position``, if the entries were all read."""
        return self.record_keys[position] if position < len(self.record_keys) else None

    def order(self, position: int) -> int:
        """The ``order`` attr of the entry at ``position``: its offset in the directory,
        which stays when entries are added or removed beside it (so that their nodes,
        and a large directory's parts, stay the same); its position if the entries
        could not all be read."""
        offsets = self.offsets
        return offsets[position] if position < len(offsets) else position
