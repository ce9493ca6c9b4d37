"""One snapshot as a mounted tree, without keys or with them.

Without keys it is what ``mount --ciphertext`` of the backed-up image would show:
no-key names, encrypted files as their stored whole data units, the key-less records as
xattrs on every object.  With keys, what they open appears decrypted: plaintext names,
targets and contents of the exact size, and no records; what no key opens is shown as
without keys, with its records.

Inode numbers are stable within a snapshot and differ between snapshots: a hash of the
snapshot id and the source inode number, so every link of a hard-linked file shows one
number and a remount shows the same ones.  Blobs are read through a shared
:class:`BlobCache` bounded in bytes.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property

from cipherdump.engine.keyless_records import FILESYSTEM, xattr_name
from cipherdump.engine.mountfs.model import Attr, MountNode, listing
from cipherdump.engine.mountfs.records import ObjectFacts, filesystem_record, object_xattrs
from cipherdump.engine.nodeattrs import blake2b, bytes_attr, int_attr, list_attr
from cipherdump.engine.restore_image import TargetFacts
from cipherdump.engine.views.image import Problem
from cipherdump.engine.views.snapshot import SnapNode, SnapshotView
from cipherdump.engine.views.snapshot_keyed import KeyedSnapshotView, PlainNode
from cipherdump.errors import CipherdumpError
from cipherdump.fscrypt.keys import KeyRing
from cipherdump.repo import BlobType, Id, Repository

__all__ = ["DEFAULT_CACHE_BYTES", "BlobCache", "SnapshotTree", "snapshot_ino"]

DEFAULT_CACHE_BYTES = 64 << 20

OnProblem = Callable[[bytes, CipherdumpError], None]


class BlobCache:
    """Data blobs by id, the least recently used dropped past ``limit`` bytes."""

    def __init__(self, repo: Repository, limit: int = DEFAULT_CACHE_BYTES) -> None:
        self.repo = repo
        self.limit = max(0, limit)
        self.used = 0
        self._blobs: OrderedDict[Id, bytes] = OrderedDict()

    def get(self, blob_id: Id) -> bytes:
        data = self._blobs.get(blob_id)
        if data is not None:
            self._blobs.move_to_end(blob_id)
            return data
        data = self.repo.load_blob(BlobType.DATA, blob_id)
        if len(data) <= self.limit:
            self._blobs[blob_id] = data
            self.used += len(data)
            while self.used > self.limit:
                _, old = self._blobs.popitem(last=False)
                self.used -= len(old)
        return data


def snapshot_ino(snapshot_id: Id, ino: int) -> int:
    """The inode number a mount shows for inode ``ino`` of a snapshot: 63 bits of a
    hash, never below 1024 (room for the repository layout's own directories)."""
    digest = blake2b(snapshot_id.raw + ino.to_bytes(8, "little"), digest_size=8).digest()
    return max(int.from_bytes(digest, "little") >> 1, 1024)


class SnapshotTree:
    """The tree of one snapshot; :attr:`root` is its ``/``.

    ``keyring`` (may be None or empty) decrypts what it matches.  ``on_problem`` hears
    of each entry that cannot be shown; listings go on without it.
    """

    def __init__(
        self,
        view: SnapshotView,
        cache: BlobCache,
        *,
        keyring: KeyRing | None = None,
        on_problem: OnProblem | None = None,
    ) -> None:
        self.view = view
        self.cache = cache
        self.keyed = KeyedSnapshotView(view, keyring) if keyring else None
        self.on_problem = on_problem
        self.filesystem = filesystem_record(TargetFacts.from_mapping(view.facts))

    @cached_property
    def root(self) -> MountNode:
        snap = self.view.root_node()
        return SnapEntry(self, snap, b"/", b"/", name_shown_nokey=False, is_root=True)

    def problem(self, path: bytes, err: CipherdumpError) -> None:
        if self.on_problem is not None:
            self.on_problem(path, err)

    def ino(self, snap: SnapNode) -> int:
        return snapshot_ino(self.view.id, int_attr(snap.attrs, "ino"))

    def decrypts(self, snap: SnapNode) -> bool:
        """Whether a key given opens this encrypted object."""
        return self.keyed is not None and snap.is_encrypted and self.keyed.names_decrypted(snap)

    def stored(self, snap: SnapNode, offset: int, length: int, layout: FileLayout) -> bytes:
        """Stored bytes ``[offset, offset + length)`` of a file, through the cache;
        chunks not stored (holes, unwritten) read as zeros."""
        if bytes_attr(snap.attrs, "inline") is not None:
            data = b"".join(self.view.iter_stored(snap, offset + length))
            return data[offset:]
        chunk_size, chunk_of = layout.chunk_size, layout.chunks
        out = bytearray()
        pos, end = offset, offset + length
        while pos < end:
            index, within = divmod(pos, chunk_size)
            n = min(chunk_size - within, end - pos)
            found = chunk_of.get(index)
            piece = self.cache.get(found)[within : within + n] if found is not None else b""
            out += piece
            out += bytes(n - len(piece))
            pos += n
        return bytes(out)

    def plaintext(
        self, snap: SnapNode, path: bytes, offset: int, length: int, layout: FileLayout
    ) -> bytes:
        """Decrypted bytes ``[offset, offset + length)`` (within ``i_size``): data
        units in mapped, written runs are decrypted, the rest reads as zeros."""
        keyed = self.keyed
        assert keyed is not None
        cipher = keyed.cipher(snap, path.decode("utf-8", "backslashreplace"))
        du = cipher.data_unit_size
        first = offset // du * du
        last = -(-(offset + length) // du) * du
        out = bytearray()
        pos = first
        # The runs overlapping [first, last), found by bisection: a read costs the
        # same at the end of a file of many runs as at its start.
        i = bisect.bisect_right(layout.run_ends, first)
        for start, end in layout.runs[i:]:
            if start >= last:
                break
            start, end = max(start, pos), min(end, last)
            if start >= end:
                continue
            if start > pos:
                out += bytes(start - pos)
            # Runs are in blocks, a block holds whole data units: start is aligned.
            units = -(-(end - start) // du)
            raw = self.stored(snap, start, units * du, layout)
            out += cipher.decrypt_data_units(start // du, raw)[: end - start]
            pos = end
        if pos < last:
            out += bytes(last - pos)
        return bytes(out[offset - first : offset - first + length])


@dataclass(frozen=True, slots=True)
class FileLayout:
    """Where a file's bytes are: its chunks by index, and its written runs (byte
    ranges, sorted) with their ends for bisection; made once per file."""

    chunk_size: int
    chunks: dict[int, Id]
    runs: list[tuple[int, int]]
    run_ends: list[int]

    @classmethod
    def of(cls, snap: SnapNode, default_chunk_size: int, block_size: int) -> FileLayout:
        a = snap.attrs
        chunk_of: dict[int, Id] = {}
        indices = a.get("chunks", ())
        if isinstance(indices, tuple):
            for index, blob_id in zip(indices, snap.node.content, strict=False):
                if isinstance(index, int):
                    chunk_of[index] = blob_id
        runs: list[tuple[int, int]] = []
        for e in list_attr(a, "extents"):
            if isinstance(e, tuple | list) and len(e) == 4:
                lblk, count, _pblk, unwritten = e
                if isinstance(lblk, int) and isinstance(count, int) and not unwritten:
                    runs.append((lblk * block_size, (lblk + count) * block_size))
        if "extents" not in a and snap.node.content:
            # A snapshot without a block map but with data (no extents were kept):
            # all of it is mapped.  Without either, the file is one hole.
            runs = [(0, int_attr(a, "size"))]
        runs.sort()
        return cls(
            int_attr(a, "chunk_size", default_chunk_size), chunk_of, runs, [e for _, e in runs]
        )


def _facts(snap: SnapNode, name_encrypted: bool) -> ObjectFacts:
    a = snap.attrs
    stored = list_attr(a, "hash")
    stored_hash = None
    h, minor = (stored[0], stored[1]) if len(stored) == 2 else (None, None)
    if isinstance(h, int) and isinstance(minor, int):
        stored_hash = (h, minor)
    flags = int_attr(a, "flags")
    return ObjectFacts(
        kind=snap.kind,
        ino=int_attr(a, "ino"),
        flags=flags,
        size=int_attr(a, "size"),
        links=int_attr(a, "links", 1),
        context=bytes_attr(a, "context"),
        raw_name=snap.raw_name,
        name_encrypted=name_encrypted,
        stored_hash=stored_hash,
        symlink=bytes_attr(a, "symlink") if snap.kind == "symlink" else None,
    )


class SnapEntry(MountNode):
    """One entry of a snapshot.  ``name_shown_nokey``: its parent encrypts names and
    no key decrypted them, so the name shown is the no-key name."""

    def __init__(
        self,
        tree: SnapshotTree,
        snap: SnapNode,
        name: bytes,
        path: bytes,
        *,
        name_shown_nokey: bool,
        is_root: bool = False,
    ) -> None:
        self.tree = tree
        self.snap = snap
        self.name = name
        self.path = path
        self.name_shown_nokey = name_shown_nokey
        self.is_root = is_root
        self._attr: Attr | None = None
        self._xattrs: dict[str, bytes] | None = None

    @cached_property
    def decrypted(self) -> bool:
        return self.tree.decrypts(self.snap)

    @property
    def shows_records(self) -> bool:
        """Something of it is shown encrypted: its contents or its name."""
        return (self.snap.is_encrypted and not self.decrypted) or self.name_shown_nokey

    def _size(self) -> int:
        snap = self.snap
        size = int_attr(snap.attrs, "size")
        if snap.kind == "file" and snap.is_encrypted and not self.decrypted:
            du = self.tree.view.data_unit_size(snap)
            return -(-size // du) * du
        if snap.kind == "symlink" and snap.is_encrypted:
            return len(self.readlink())
        return size

    def attr(self) -> Attr:
        if self._attr is None:
            a = self.snap.attrs
            rdev = 0
            dev = list_attr(a, "rdev")
            if len(dev) == 2 and isinstance(dev[0], int) and isinstance(dev[1], int):
                major, minor = dev[0], dev[1]
                rdev = ((major & 0xFFF) << 8) | (minor & 0xFF) | ((minor & ~0xFF) << 12)
            self._attr = Attr(
                ino=self.tree.ino(self.snap),
                mode=int_attr(a, "mode"),
                nlink=int_attr(a, "links", 1),
                uid=int_attr(a, "uid"),
                gid=int_attr(a, "gid"),
                size=self._size(),
                blocks=int_attr(a, "blocks"),
                atime_ns=int_attr(a, "atime_ns"),
                mtime_ns=int_attr(a, "mtime_ns"),
                ctime_ns=int_attr(a, "ctime_ns"),
                rdev=rdev,
            )
        return self._attr

    def children(self) -> Mapping[bytes, MountNode]:
        snap, tree = self.snap, self.tree
        if not snap.is_dir:
            return super().children()
        kids: list[tuple[bytes, MountNode]] = []
        if self.decrypted and tree.keyed is not None:
            for item in tree.keyed.iter_children(PlainNode(snap, self.name, self.path)):
                if isinstance(item, Problem):
                    tree.problem(item.path, item.error)
                    continue
                kids.append((item.name, self._kid(item.snap, item.name, nokey=False)))
            return listing(kids)
        for kid in tree.view.children(snap):
            if kid.problem is not None:
                tree.problem(kid.path, kid.refuse())
                continue
            kids.append((kid.name, self._kid(kid, kid.name, nokey=snap.is_encrypted)))
        return listing(kids)

    def _kid(self, snap: SnapNode, name: bytes, *, nokey: bool) -> SnapEntry:
        path = self.path + name if self.path.endswith(b"/") else self.path + b"/" + name
        return SnapEntry(self.tree, snap, name, path, name_shown_nokey=nokey)

    def readlink(self) -> bytes:
        snap = self.snap
        if snap.kind != "symlink":
            return super().readlink()
        keyed = self.tree.keyed
        if snap.is_encrypted and self.decrypted and keyed is not None:
            return keyed.symlink_target(PlainNode(snap, self.name, self.path))
        a = snap.attrs
        if snap.is_encrypted:
            target = bytes_attr(a, "target")  # the no-key target, as Linux shows it
        else:
            target = bytes_attr(a, "symlink") or bytes_attr(a, "target")
        return target or b""

    def read(self, offset: int, size: int) -> bytes:
        snap = self.snap
        if snap.problem is not None:
            raise snap.refuse(named=True)
        end = min(offset + size, self.attr().size)
        if offset >= end:
            return b""
        if snap.is_encrypted and self.decrypted:
            return self.tree.plaintext(snap, self.path, offset, end - offset, self.layout)
        return self.tree.stored(snap, offset, end - offset, self.layout)

    @cached_property
    def layout(self) -> FileLayout:
        view = self.tree.view
        return FileLayout.of(self.snap, view.chunk_size, view.block_size)

    def xattrs(self) -> Mapping[str, bytes]:
        # Asked for once per name by every listxattr/getxattr: made once per entry.
        if self._xattrs is None:
            self._xattrs = self._make_xattrs()
        return self._xattrs

    def _make_xattrs(self) -> dict[str, bytes]:
        a = self.snap.attrs
        own: list[tuple[int, bytes, bytes]] = []
        for item in list_attr(a, "xattrs"):
            if isinstance(item, tuple | list) and len(item) == 3:
                index, xname, value = item
                if isinstance(index, int) and isinstance(xname, bytes) and isinstance(value, bytes):
                    own.append((index, xname, value))
        # Key-less, every object has records (as the ciphertext view of the image);
        # with keys, only what is still shown encrypted.
        keyless = self.tree.keyed is None
        facts = None
        if keyless or self.shows_records:
            facts = _facts(self.snap, self.name_shown_nokey)
        out = object_xattrs(own, facts, everywhere=keyless)
        if self.is_root:
            out[xattr_name(FILESYSTEM)] = self.tree.filesystem
        return out
