"""A directory while it is being backed up (a frame of the walk's stack), and what
its entry list may hold besides decoded children."""

from __future__ import annotations

from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar, overload

from cipherdump.engine.dirtable import DirRecord
from cipherdump.engine.parent import Census
from cipherdump.engine.views.image import ImageNode, Problem
from cipherdump.ext4.directory import Entry
from cipherdump.ondisk.inode import InodePeek
from cipherdump.repo import Node
from cipherdump.repo.codec import Value
from cipherdump.repo.dirwriter import DirectoryWriter
from cipherdump.repo.tree import NodeSpan

# Nodes of a directory held as objects before they go to its DirectoryWriter: a
# directory of fewer entries (nearly all) is stored at once, as it always was.
SPILL_AT = 8192


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


T = TypeVar("T")


class _Packed(Sequence[T]):
    """A sequence kept packed, its items made when asked for: subclasses give
    ``__len__`` and ``_item`` (for an index already checked)."""

    __slots__ = ()

    def _item(self, i: int) -> T:
        raise NotImplementedError

    @overload
    def __getitem__(self, i: int) -> T: ...
    @overload
    def __getitem__(self, i: slice) -> list[T]: ...
    def __getitem__(self, i: int | slice) -> T | list[T]:
        if isinstance(i, slice):
            return [self._item(j) for j in range(*i.indices(len(self)))]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(i)
        return self._item(i)


class PackedKeys(_Packed[bytes]):
    """Record keys (16 bytes each) in one bytes object: a directory of a million
    entries holds 16 MB of them, not a million bytes objects (about 57 MB)."""

    __slots__ = ("_data",)
    SIZE = 16

    def __init__(self, data: bytes = b"") -> None:
        if len(data) % self.SIZE:
            raise ValueError("packed record keys are 16 bytes each")
        self._data = data

    def __len__(self) -> int:
        return len(self._data) // self.SIZE

    def _item(self, i: int) -> bytes:
        return self._data[i * self.SIZE : (i + 1) * self.SIZE]

    def __iter__(self) -> Iterator[bytes]:
        data, size = self._data, self.SIZE
        return (data[i : i + size] for i in range(0, len(data), size))


class Listed(NamedTuple):
    """A directory entry and what :meth:`.reuse.RecordKeys.of` peeked at of its
    inode's record (the record itself is hashed, not decoded)."""

    entry: Entry
    peek: InodePeek


class PackedListing(_Packed[Listed]):
    """:class:`Listed` items packed in arrays, made again when asked for: a large
    directory's listing, which as objects would be about 300 bytes an entry (a
    directory of a million entries: 300 MB), is here its names and some 70 bytes."""

    __slots__ = (
        "_acl",
        "_ends",
        "_flags",
        "_hash",
        "_hashed",
        "_ino",
        "_links",
        "_mode",
        "_names",
        "_offset",
        "_size",
        "_type",
    )

    def __init__(self, items: Iterable[Listed] = ()) -> None:
        self._names = bytearray()
        self._ends = array("Q")
        self._ino = array("I")
        self._type = bytearray()
        self._hash = array("Q")
        self._hashed = bytearray()
        self._offset = array("q")
        self._mode = array("I")
        self._flags = array("I")
        self._size = array("Q")
        self._links = array("I")
        self._acl = array("Q")
        for entry, peek in items:
            self.append(entry, peek)

    def append(self, entry: Entry, peek: InodePeek) -> None:
        self._names += entry.name
        self._ends.append(len(self._names))
        self._ino.append(entry.ino)
        self._type.append(entry.file_type)
        hashed = entry.hash is not None
        self._hashed.append(hashed)
        self._hash.append(entry.hash[0] << 32 | entry.hash[1] if entry.hash is not None else 0)
        self._offset.append(entry.offset)
        self._mode.append(peek.mode)
        self._flags.append(peek.flags)
        self._size.append(peek.size)
        self._links.append(peek.links)
        self._acl.append(peek.file_acl)

    def __len__(self) -> int:
        return len(self._ends)

    def _item(self, i: int) -> Listed:
        start = self._ends[i - 1] if i else 0
        h = self._hash[i]
        entry = Entry(
            bytes(self._names[start : self._ends[i]]),
            self._ino[i],
            self._type[i],
            (h >> 32, h & 0xFFFFFFFF) if self._hashed[i] else None,
            self._offset[i],
        )
        peek = InodePeek(self._mode[i], self._flags[i], self._size[i], self._links[i], self._acl[i])
        return Listed(entry, peek)

    def __iter__(self) -> Iterator[Listed]:
        return (self[i] for i in range(len(self)))

    def name(self, i: int) -> bytes:
        """The name of the entry at ``i`` (without making the rest)."""
        return bytes(self._names[self._ends[i - 1] if i else 0 : self._ends[i]])

    def is_dir(self, i: int) -> bool:
        return self._mode[i] & 0o170000 == 0o040000


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
    record_keys: PackedKeys = field(default_factory=PackedKeys)
    # Per entry position, the entry's offset in the directory: its ``order`` attr.
    offsets: array[int] = field(default_factory=lambda: array("q"))
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
    # Whether ``nodes`` may go to a writer (``spill``) as they grow: not in a live
    # backup, whose check takes nodes back out by name before the tree is saved.
    spillable: bool = True
    # Where the nodes of a large directory went (see spill_if_large): ``nodes`` holds
    # only those made since, so a second entry of a name is found there or, if the
    # first went before, by the writer.
    spill: DirectoryWriter | None = None

    def spill_if_large(self, writer: Callable[[], DirectoryWriter]) -> None:
        """Hand ``nodes`` to the directory's writer (made by ``writer`` the first
        time) once they are :data:`SPILL_AT`, so that a large directory's nodes are
        not all held; a reused directory keeps its few nodes (see ParentReuse), and
        the places of child directories handed to workers stay (see ``pending``)."""
        nodes, pending = self.nodes, self.pending
        if len(nodes) - len(pending) < SPILL_AT or not self.spillable or self.reuse is not None:
            return
        if self.spill is None:
            self.spill = writer()
        if pending:
            # A child directory a worker has holds its place until it is collected.
            self.spill.add((name, node) for name, node in nodes.items() if name not in pending)
            self.nodes = {name: nodes[name] for name in pending if name in nodes}
        else:
            self.spill.add(nodes.items())
            nodes.clear()

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
