"""A snapshot read back as a namespace: listing, typed-path lookup, records and data.

Paths are those of the backed-up filesystem as Linux shows them without the key.  A
snapshot of ``--path /home/alice`` holds the whole subtree of ``/home/alice`` and the
metadata of ``/`` and ``/home``; listing ``/`` shows just ``/home``, as the chain down
to the backed-up directory.

``ls`` records come from what was kept at backup time (see
:mod:`cipherdump.engine.nodeattrs`), so a snapshot lists exactly as its image did.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cipherdump.engine.describe import context_record
from cipherdump.engine.nodeattrs import (
    bytes_attr,
    display_name,
    int_attr,
    list_attr,
    ls_record,
    node_problem,
)
from cipherdump.engine.views.image import MAX_DEPTH, Problem
from cipherdump.engine.views.paths import child_path, resolve_path, show_path
from cipherdump.errors import CipherdumpError, CorruptError, InputError, NotFoundError
from cipherdump.fscrypt.context import decode_context
from cipherdump.fscrypt.nokey import decode_nokey_name
from cipherdump.ondisk.inode import EXT4_ENCRYPT_FL, FLAG_NAMES
from cipherdump.ondisk.xattr import EXT4_XATTR_INDEX_SYSTEM, PREFIXES
from cipherdump.repo import BlobType, Id, Node, Repository, Snapshot, Tree
from cipherdump.repo.codec import Value
from cipherdump.repo.tree import check_part


class RecordedProblem(InputError):
    """A problem met at backup time and kept in the snapshot (shown as it was then)."""


@dataclass(frozen=True, slots=True)
class SnapNode:
    """One object of a snapshot.  ``chain`` is its position on the path from ``/`` to
    the backed-up directory (None below it).  ``problem`` says why the node cannot be
    an ext4 inode (a forged or damaged snapshot): listings report it, reads refuse it."""

    path: bytes
    node: Node
    chain: int | None = None
    problem: str | None = None

    def refuse(self, *, named: bool = False) -> CorruptError:
        """The error for using this node, which has a :attr:`problem` (``named``: with
        its path, for messages that do not already give it)."""
        why = f"{show_path(self.path)}: {self.problem}" if named else str(self.problem)
        return CorruptError(why, structure="snapshot node")

    @property
    def name(self) -> bytes:
        return display_name(self.node.name, self.node.attrs)

    @property
    def raw_name(self) -> bytes:
        return self.node.name

    @property
    def attrs(self) -> Mapping[str, Value]:
        return self.node.attrs

    @property
    def kind(self) -> str:
        return self.node.kind

    @property
    def is_dir(self) -> bool:
        return self.node.kind == "dir"

    @property
    def is_encrypted(self) -> bool:
        return bool(int_attr(self.attrs, "flags") & EXT4_ENCRYPT_FL)


def _node_from(value: Value, subtree: Id | None, what: str) -> Node:
    if not isinstance(value, Mapping):
        raise CorruptError("bad directory record", structure=what)
    name, kind, attrs = value.get("name"), value.get("kind"), value.get("attrs")
    if not isinstance(name, bytes) or not isinstance(kind, str) or not isinstance(attrs, Mapping):
        raise CorruptError("bad directory record", structure=what)
    return Node(name, kind, subtree=subtree, attrs=attrs)


class SnapshotView:
    def __init__(self, repo: Repository, snapshot_id: Id, snapshot: Snapshot) -> None:
        self.repo = repo
        # The last data chunk read by :meth:`read_stored`.
        self._kept: tuple[Id, bytes] | None = None
        self.id = snapshot_id
        self.snapshot = snapshot
        # The last tree parts() loaded, so that children() does not load it again.
        self._held: tuple[Id, Tree] | None = None
        attrs = snapshot.attrs
        what = f"snapshot {snapshot_id.short}"
        facts = attrs.get("fs")
        if not isinstance(facts, Mapping) or "top" not in attrs:
            raise CorruptError("not a cipherdump filesystem snapshot", structure=what)
        self.facts = facts
        self.block_size = int_attr(facts, "block_size", 4096)
        self.chunk_size = int_attr(attrs, "chunk_size", 1 << 20)
        ancestors = attrs.get("ancestors", ())
        if not isinstance(ancestors, Sequence):
            raise CorruptError("bad ancestors", structure=what)
        self._chain = [_node_from(a, None, what) for a in ancestors]
        self._chain.append(_node_from(attrs["top"], snapshot.tree, what))
        path = attrs.get("path", b"/")
        self.path = path if isinstance(path, bytes) else b"/"
        for k, n in enumerate(self._chain):
            # The root's name is no directory entry; the others' are.
            name = n.name if k else b"root"
            encrypted = k > 0 and _encrypts(self._chain[k - 1])
            bad = node_problem(name, n.kind, n.attrs, name_encrypted=encrypted,
                               block_size=self.block_size)  # fmt: skip
            if bad is not None:
                raise CorruptError(f"the path to the backed-up directory: {bad}", structure=what)

    # -- navigation -------------------------------------------------------------------
    def root_node(self) -> SnapNode:
        return SnapNode(b"/", self._chain[0], 0)

    def top_node(self) -> SnapNode:
        return SnapNode(self.path, self._chain[-1], len(self._chain) - 1)

    def parts(self, node: SnapNode) -> frozenset[Id]:
        """The part ids of a directory stored chunked (see
        :mod:`cipherdump.repo.tree`), else none: entries of a part two snapshots share
        are the same in both."""
        if not node.is_dir or node.chain is not None or node.node.subtree is None:
            return frozenset()
        index = self.repo.load_tree_index(node.node.subtree)
        self._held = (node.node.subtree, index)
        if not index.chunked:
            return frozenset()
        return frozenset(n.subtree for n in index.nodes if n.subtree is not None)

    def children(
        self, node: SnapNode, *, skip_parts: frozenset[Id] = frozenset()
    ) -> list[SnapNode]:
        """The entries of a directory, in the order its directory held them (but those
        of the parts ``skip_parts``, see :meth:`parts`)."""
        if not node.is_dir:
            return []
        error = node.attrs.get("list_error")
        if isinstance(error, str):
            raise RecordedProblem(error)
        if node.chain is not None and node.chain + 1 < len(self._chain):
            nxt = self._chain[node.chain + 1]
            name = display_name(nxt.name, nxt.attrs)
            return [SnapNode(posixpath.join(node.path, name), nxt, node.chain + 1)]
        if node.node.subtree is None:
            return []
        held, self._held = self._held, None
        if held is not None and held[0] == node.node.subtree and not held[1].chunked:
            tree = held[1]
        else:
            tree = self.repo.load_tree(node.node.subtree, skip_parts=skip_parts)
        nodes = sorted(tree.nodes, key=lambda n: int_attr(n.attrs, "order"))
        encrypted, bs = _encrypts(node.node), self.block_size
        return [
            SnapNode(
                child_path(node.path, display_name(n.name, n.attrs)),
                n,
                problem=node_problem(
                    n.name, n.kind, n.attrs, name_encrypted=encrypted, block_size=bs
                ),
            )
            for n in nodes
        ]

    def iter_children(self, node: SnapNode) -> Iterator[SnapNode]:
        """The entries of a directory, as :meth:`children` gives them, but a chunked
        directory's (see :mod:`cipherdump.repo.tree`) one part at a time, in name order:
        a directory of millions of entries is never held whole.  Parts that do not fit
        their index raise CorruptError when they are reached."""
        if not node.is_dir:
            return
        error = node.attrs.get("list_error")
        if isinstance(error, str):
            raise RecordedProblem(error)
        if node.chain is not None or node.node.subtree is None:
            yield from self.children(node)
            return
        index = self.repo.load_tree_index(node.node.subtree)
        if not index.chunked:
            self._held = (node.node.subtree, index)
            yield from self.children(node)
            return
        what = f"tree {node.node.subtree}"
        encrypted, bs = _encrypts(node.node), self.block_size
        last: bytes | None = None
        for entry in index.nodes:
            if entry.subtree is None:
                raise CorruptError("a part does not match its index", structure=what)
            part = self.repo.load_tree_index(entry.subtree)
            check_part(entry, part, last, what)
            nodes = part.nodes
            last = nodes[-1].name
            del part
            for n in nodes:
                yield SnapNode(
                    child_path(node.path, display_name(n.name, n.attrs)),
                    n,
                    problem=node_problem(
                        n.name, n.kind, n.attrs, name_encrypted=encrypted, block_size=bs
                    ),
                )

    def walk(self, top: SnapNode, *, recursive: bool) -> Iterator[SnapNode | Problem]:
        """Like :meth:`Namespace.walk`: children of ``top`` (all descendants when
        ``recursive``), depth first, problems as :class:`Problem` in line."""
        stack: list[Iterator[SnapNode | Problem]] = [self._listing(top)]
        while stack:
            kid = next(stack[-1], None)
            if kid is None:
                stack.pop()
                continue
            yield kid
            if isinstance(kid, Problem) or not recursive or not kid.is_dir:
                continue
            if len(stack) > MAX_DEPTH:
                continue
            stack.append(self._listing(kid))

    def _listing(self, node: SnapNode) -> Iterator[SnapNode | Problem]:
        try:
            kids: list[SnapNode | Problem] = [
                k if k.problem is None else Problem(k.path, k.refuse()) for k in self.children(node)
            ]
        except CipherdumpError as err:
            kids = [Problem(node.path, err)]
        return iter(kids)

    def resolve(self, path: bytes) -> SnapNode:
        """A typed path: display (no-key) names, raw names, or the kernel's no-key forms."""
        return resolve_path(
            self.root_node(),
            path,
            lookup=self._lookup,
            is_dir=lambda n: n.is_dir,
            shown_path=lambda n: n.path,
        )

    def lookup(self, parent: SnapNode, part: bytes) -> SnapNode:
        """The child ``part`` of ``parent``: display, raw or no-key name (NotFoundError)."""
        return self._lookup(parent, part)

    def _lookup(self, parent: SnapNode, part: bytes) -> SnapNode:
        kid = self._find(parent, part)
        if kid.problem is not None:
            raise kid.refuse(named=True)
        return kid

    def _find(self, parent: SnapNode, part: bytes) -> SnapNode:
        kids = self.children(parent)
        for kid in kids:
            if kid.name == part:
                return kid
        for kid in kids:
            if kid.raw_name == part:
                return kid
        wanted = decode_nokey_name(part) if parent.is_encrypted else None
        if wanted is not None:
            for kid in kids:
                stored = kid.attrs.get("hash")
                hashes: tuple[int, int] | None = None
                if isinstance(stored, tuple) and len(stored) == 2:
                    h, minor = stored
                    if isinstance(h, int) and isinstance(minor, int):
                        hashes = (h, minor)
                if wanted.matches(kid.raw_name, hashes):
                    return kid
        raise NotFoundError(f"{show_path(posixpath.join(parent.path, part))}: no such file")

    # -- records ----------------------------------------------------------------------
    def record(self, node: SnapNode) -> dict[str, Any]:
        """The ``ls --json`` record, exactly as ``ls`` of the image printed it."""
        error = node.attrs.get("ls_error")
        if isinstance(error, str):
            raise RecordedProblem(error)
        return ls_record(node.kind, node.raw_name, node.attrs, node.path)

    def stat_record(self, node: SnapNode) -> dict[str, Any]:
        """Everything the snapshot keeps about one object."""
        a = node.attrs
        try:
            rec = self.record(node)
        except CipherdumpError:
            rec = {"path": node.path, "name": node.name, "type": node.kind}
        flags = int_attr(a, "flags")
        rec.update(
            {
                "snapshot": self.id.hex,
                "i_size": int_attr(a, "size"),
                "atime_ns": int_attr(a, "atime_ns"),
                "ctime_ns": int_attr(a, "ctime_ns"),
                "crtime_ns": a.get("crtime_ns"),
                "flags": flags,
                "flag_names": [n for bit, n in FLAG_NAMES.items() if flags & bit],
                "generation": int_attr(a, "generation"),
                "project_id": int_attr(a, "project_id"),
                "version": int_attr(a, "version"),
                "blocks": int_attr(a, "blocks"),
            }
        )
        if a.get("name_encrypted"):
            rec["name_ciphertext_hex"] = node.raw_name.hex()
            stored = a.get("hash")
            if isinstance(stored, tuple):
                rec["stored_hash"] = list(stored)
        xattrs = []
        for item in list_attr(a, "xattrs"):
            if isinstance(item, tuple) and len(item) == 3:
                index, name, value = item
                if isinstance(index, int) and isinstance(name, bytes) and isinstance(value, bytes):
                    full = PREFIXES.get(index, b"index%d." % index) + name
                    xattrs.append({"name": full, "index": index, "value_hex": value.hex()})
        rec["xattrs"] = xattrs
        context = bytes_attr(a, "context")
        if context is not None:
            rec["context"] = context_record(context)
        symlink = bytes_attr(a, "symlink")
        if symlink is not None and flags & EXT4_ENCRYPT_FL:
            rec["symlink_stored_hex"] = symlink.hex()
        rec["extents"] = [
            {"lblk": e[0], "length": e[1], "pblk": e[2], "unwritten": e[3]}
            for e in list_attr(a, "extents")
            if isinstance(e, tuple) and len(e) == 4
        ]
        rec["chunks"] = len(node.node.content)
        if isinstance(a.get("list_error"), str):
            rec["list_error"] = a["list_error"]
        return rec

    # -- data -------------------------------------------------------------------------
    def data_unit_size(self, node: SnapNode) -> int:
        context = bytes_attr(node.attrs, "context")
        if context is None:
            return self.block_size
        try:
            return decode_context(context).policy.data_unit_size(self.block_size)
        except CipherdumpError:
            return self.block_size

    def read_stored(self, node: SnapNode, offset: int, length: int) -> bytes:
        """The file's stored bytes ``[offset, offset + length)`` from its chunks (chunks
        not stored read as zeros); one chunk is kept between calls."""
        a = node.attrs
        size = int_attr(a, "chunk_size", self.chunk_size)
        indices = a.get("chunks", ())
        chunk_of: dict[int, Id] = {}
        if isinstance(indices, tuple):
            for index, blob_id in zip(indices, node.node.content, strict=False):
                if isinstance(index, int):
                    chunk_of[index] = blob_id
        out = bytearray()
        pos, end = offset, offset + length
        while pos < end:
            index, within = divmod(pos, size)
            n = min(size - within, end - pos)
            found = chunk_of.get(index)
            if found is None:
                out += bytes(n)
            else:
                if self._kept is None or self._kept[0] != found:
                    self._kept = (found, self.repo.load_blob(BlobType.DATA, found))
                piece = self._kept[1][within : within + n]
                out += piece
                out += bytes(n - len(piece))
            pos += n
        return bytes(out)

    def iter_stored(self, node: SnapNode, length: int) -> Iterator[bytes]:
        """The file's stored bytes ``[0, length)``: chunks, holes and unwritten as zeros."""
        if node.problem is not None:
            raise node.refuse(named=True)
        a = node.attrs
        inline = bytes_attr(a, "inline")
        if inline is not None:
            extra = b""
            for item in list_attr(a, "xattrs"):
                if (
                    isinstance(item, tuple)
                    and len(item) == 3
                    and item[0] == EXT4_XATTR_INDEX_SYSTEM
                    and item[1] == b"data"
                    and isinstance(item[2], bytes)
                ):
                    extra = item[2]
            yield (inline + extra)[:length].ljust(length, b"\0")
            return
        size = int_attr(a, "chunk_size", self.chunk_size)
        chunk_of: dict[int, Id] = {}
        indices = a.get("chunks", ())
        if isinstance(indices, tuple):
            for index, blob_id in zip(indices, node.node.content, strict=False):
                if isinstance(index, int):
                    chunk_of[index] = blob_id
        pos = 0
        while pos < length:
            index = pos // size
            want = min(size, length - pos)
            found = chunk_of.get(index)
            if found is None:
                yield bytes(want)
            else:
                data = self.repo.load_blob(BlobType.DATA, found)
                yield data[:want].ljust(want, b"\0")
            pos += want


def _encrypts(directory: Node) -> bool:
    """Whether the directory encrypts its entries' names (its own encrypt flag)."""
    return bool(int_attr(directory.attrs, "flags") & EXT4_ENCRYPT_FL)
