"""The repository check: structure always, every byte with ``read_data``.

Structural check: the config and every key, lock, index and snapshot file are read
and authenticated (names are the BLAKE3 of contents); every pack an index names exists
with the size the index says; every tree reachable from a snapshot is loaded and
verified, and every blob it references is indexed.

With ``read_data`` every pack is read whole: its name must be the BLAKE3 of all its bytes
(version 1) or of its header and trailer (version 2), its header must authenticate and
agree with the index, and every blob must authenticate and hash to its id.  Together
these pin every byte of a pack of either version.  Packs no index names (left by
interrupted runs, or being written by a live one) and blobs no snapshot uses are
reported as information, not as errors; a pack outside the ``data/`` folder its name
puts it in is an error.  The blobs snapshots use that cannot be read are collected in
:attr:`CheckReport.bad_blobs`, for the engine to name the snapshots and paths.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from cipherdump.errors import CipherdumpError
from cipherdump.progress import OnProgress, Progress
from cipherdump.repo.backends.base import Backend, FileType, Handle
from cipherdump.repo.blobstore import load_index_file
from cipherdump.repo.config import decode_config
from cipherdump.repo.crypto import MasterKey, file_id
from cipherdump.repo.ids import BlobType, Id
from cipherdump.repo.index import IndexFile
from cipherdump.repo.keyfile import decode_key_params
from cipherdump.repo.lock import is_stale, read_lock
from cipherdump.repo.memindex import MemoryIndex
from cipherdump.repo.pack import iter_pack, open_blob, pack_name
from cipherdump.repo.snapshot import decode_snapshot
from cipherdump.repo.tree import decode_tree

# Packs downloaded ahead by check --read-data from a remote backend, at most.
READ_AHEAD_PACKS = 4
# The walk of the trees reports every this many trees (a tree costs far more than an event).
_TREES_A_EVENT = 64


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem (or remark).  ``file`` is the repository-relative path, if any."""

    message: str
    file: str = ""
    blob: Id | None = None

    def __str__(self) -> str:
        where = " ".join(p for p in (self.file, f"blob {self.blob}" if self.blob else "") if p)
        return f"{where}: {self.message}" if where else self.message


@dataclass(slots=True)
class CheckReport:
    errors: list[Finding] = field(default_factory=list)
    infos: list[Finding] = field(default_factory=list)
    packs_read: int = 0
    blobs_checked: int = 0
    snapshots: int = 0
    trees: int = 0
    # Blobs snapshots may use that cannot be read: missing from the index, or (with
    # read_data, or trees always) failing where the index puts them.  The engine names
    # the snapshots and paths that use them (cipherdump.engine.damage).
    bad_blobs: set[tuple[BlobType, Id]] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        return not self.errors

    def text(self) -> str:
        lines = [f"error: {f}" for f in self.errors] + [f"info: {f}" for f in self.infos]
        return "\n".join(lines)


class Checker:
    def __init__(
        self,
        backend: Backend,
        key: MasterKey,
        *,
        read_data: bool,
        own_lock: str | None = None,
        on_progress: OnProgress | None = None,
    ) -> None:
        """``on_progress`` follows the walk of the trees (items: trees; every
        ``_TREES_A_EVENT``), then ``read_data`` pack by pack (bytes of packs read)."""
        self.on_progress = on_progress
        self.backend = backend
        self.key = key
        self.read_data = read_data
        self.own_lock = own_lock
        self.report = CheckReport()
        self.index = MemoryIndex()
        self._rows_per_pack: dict[Id, int] | None = None
        # The lock of a writer at work now (not stale), if any: what it names.
        self._live_writer: str | None = None

    def error(self, message: str, file: str = "", blob: Id | None = None) -> None:
        self.report.errors.append(Finding(message, file, blob))

    def info(self, message: str, file: str = "", blob: Id | None = None) -> None:
        self.report.infos.append(Finding(message, file, blob))

    def run(self) -> CheckReport:
        self._check_config()
        self._check_keys()
        self._check_locks()
        self._check_placement()
        packs = {info.name: info.size for info in self.backend.list(FileType.PACK)}
        self._load_index(packs)
        used = bytearray(len(self.index))
        self._check_snapshots(used)
        if self.read_data:
            total, done = sum(packs.values()), 0
            for name, loaded in self._loaded(sorted(packs)):
                if self.on_progress is not None:
                    self.on_progress(
                        Progress(done, total, finished=done == total, phase="reading packs")
                    )
                self._read_pack(name, loaded)
                done += packs[name]
            if self.on_progress is not None:
                self.on_progress(
                    Progress(done, total, finished=done == total, phase="reading packs")
                )
        unused = len(used) - sum(used)
        if unused:
            self.info(f"{unused} indexed blobs are used by no snapshot")
        return self.report

    def _check_config(self) -> None:
        try:
            decode_config(self.key, self.backend.load(Handle(FileType.CONFIG)))
        except CipherdumpError as exc:
            self.error(f"damaged: {exc}", "config")

    def _check_keys(self) -> None:
        for info in self.backend.list(FileType.KEY):
            handle = Handle(FileType.KEY, info.name)
            try:
                data = self.backend.load(handle)
                if file_id(data).hex != info.name:
                    self.error("damaged: content does not match its name", str(handle))
                    continue
                decode_key_params(data)
            except CipherdumpError as exc:
                self.error(f"damaged: {exc}", str(handle))

    def _check_locks(self) -> None:
        now = time.time_ns()
        for info in self.backend.list(FileType.LOCK):
            if info.name == self.own_lock:
                continue
            where = str(Handle(FileType.LOCK, info.name))
            try:
                lock = read_lock(self.backend, self.key, info.name)
            except CipherdumpError as exc:
                self.error(f"damaged: {exc}", where)
                continue
            stale = is_stale(lock, now)
            if not stale and self._live_writer is None:
                self._live_writer = f"{where}, {lock.describe()}"
            self.info(f"{'stale lock' if stale else 'lock'} held by {lock.describe()}", where)

    def _check_placement(self) -> None:
        """Packs outside the folder their name puts them in, and temporary files."""
        misplaced = getattr(self.backend, "misplaced", None)
        for path in misplaced() if misplaced is not None else ():
            name = path.rsplit("/", 1)[-1]
            self.error(
                f"in the wrong folder: cipherdump reads it only as "
                f"{Handle(FileType.PACK, name)} and takes it for absent "
                "(repair packs moves it back)",
                path,
            )
        temporary = getattr(self.backend, "temporary_files", None)
        files = temporary() if temporary is not None else []
        if files and self._live_writer is not None:
            self.info(
                f"{len(files)} temporary files, being written by the live writer holding "
                f"{self._live_writer}"
            )
        elif files:
            self.info(
                f"{len(files)} temporary files left by an interrupted run (the next "
                f"writer removes them): {', '.join(files[:5])}"
            )

    def _load_index(self, packs: dict[str, int]) -> None:
        files: dict[str, IndexFile] = {}
        damaged = 0
        for info in self.backend.list(FileType.INDEX):
            where = str(Handle(FileType.INDEX, info.name))
            try:
                files[info.name] = load_index_file(self.backend, self.key, info.name)
            except CipherdumpError as exc:
                damaged += 1
                self.error(f"damaged: {str(exc).removeprefix(where + ': ')}", where)
        superseded = {i.hex for f in files.values() for i in f.supersedes}
        for name, index_file in files.items():
            if name in superseded:
                continue
            for pack in index_file.packs:
                where = str(Handle(FileType.PACK, pack.id.hex))
                size = packs.get(pack.id.hex)
                if size is None:
                    self.error(f"missing, but index/{name} names it", where)
                    continue
                if size != pack.size:
                    self.error(f"is {size} bytes, index/{name} says {pack.size}", where)
                self.index.add_pack(pack.id, pack.size, pack.raw_entries)
        if self._live_writer is not None:
            # A writer names its packs in an index file only every few packs and at
            # its end: until then they are unreferenced, and nothing is wrong.
            why = (
                f"being written by the live writer holding {self._live_writer}, "
                "or left by an interrupted run"
            )
        elif damaged:
            why = (
                "left by an interrupted run, or listed by a damaged index file "
                "(repair index indexes it)"
            )
        else:
            why = "left by an interrupted run"
        for name in packs:
            if not self.index.has_pack(Id.from_hex(name)):
                self.info(f"unreferenced pack ({why})", str(Handle(FileType.PACK, name)))

    def _check_snapshots(self, used: bytearray) -> None:
        roots: list[tuple[Id, str]] = []
        for info in self.backend.list(FileType.SNAPSHOT):
            handle = Handle(FileType.SNAPSHOT, info.name)
            try:
                data = self.backend.load(handle)
                if file_id(data).hex != info.name:
                    self.error("damaged: content does not match its name", str(handle))
                    continue
                snap = decode_snapshot(self.key, data, str(handle))
            except CipherdumpError as exc:
                self.error(f"damaged: {exc}", str(handle))
                continue
            self.report.snapshots += 1
            roots.append((snap.tree, str(handle)))
        seen: set[Id] = set()
        # A part of a chunked directory must be what its index says: (first name,
        # number of nodes), kept per part to compare with every index naming it.
        part_shapes: dict[Id, tuple[bytes, int]] = {}
        queue: deque[tuple[Id, str, tuple[bytes, int] | None]] = deque(
            (tree, user, None) for tree, user in roots
        )
        # The trees indexed: those to walk, unless some are used by no snapshot.
        trees = self.index.count(BlobType.TREE)
        while queue:
            tree_id, parent, expect = queue.popleft()
            if tree_id in seen:
                shape = part_shapes.get(tree_id)
                if expect is not None and shape is not None and shape != expect:
                    self._bad_part(tree_id, parent)
                continue
            seen.add(tree_id)
            if self.on_progress is not None and len(seen) % _TREES_A_EVENT == 1:
                self.on_progress(
                    Progress(phase="checking trees", items_done=len(seen) - 1, items_total=trees)
                )
            tree_data = self._load_blob(BlobType.TREE, tree_id, parent, used)
            if tree_data is None:
                continue
            try:
                tree = decode_tree(tree_data, f"tree {tree_id}", check_layout=True)
            except CipherdumpError as exc:
                self.error(f"undecodable tree: {exc}", blob=tree_id)
                self.report.bad_blobs.add((BlobType.TREE, tree_id))
                continue
            self.report.trees += 1
            if expect is not None:
                shape = (tree.nodes[0].name if tree.nodes else b"", len(tree.nodes))
                part_shapes[tree_id] = shape
                if tree.chunked or shape != expect:
                    self._bad_part(tree_id, parent)
            for node in tree.nodes:
                if node.subtree is not None:
                    entries = node.attrs.get("entries")
                    part = (node.name, entries) if isinstance(entries, int) else None
                    queue.append((node.subtree, f"tree {tree_id}", part if tree.chunked else None))
                for blob_id in node.content:
                    row = self.index.row(BlobType.DATA, blob_id)
                    if row < 0:
                        self.error(
                            f"data blob missing from the index (used by tree {tree_id})",
                            blob=blob_id,
                        )
                        self.report.bad_blobs.add((BlobType.DATA, blob_id))
                    else:
                        used[row] = 1
        if self.on_progress is not None:
            self.on_progress(
                Progress(phase="checking trees", items_done=len(seen), items_total=len(seen))
            )

    def _bad_part(self, tree_id: Id, index: str) -> None:
        # (Not a damaged blob for repair to drop: the index and the part disagree.)
        self.error(f"a part of a chunked directory does not match {index}", blob=tree_id)

    def _load_blob(
        self, blob_type: BlobType, blob_id: Id, user: str, used: bytearray
    ) -> bytes | None:
        row = self.index.row(blob_type, blob_id)
        found = self.index.lookup(blob_type, blob_id)
        if row < 0 or found is None:
            self.error(
                f"{blob_type.name.lower()} blob missing from the index (used by {user})",
                blob=blob_id,
            )
            self.report.bad_blobs.add((blob_type, blob_id))
            return None
        used[row] = 1
        pack_id, entry = found
        handle = Handle(FileType.PACK, pack_id.hex)
        try:
            sealed = self.backend.load(handle, entry.offset, entry.length)
            return open_blob(self.key, entry, sealed, str(handle))
        except CipherdumpError as exc:
            self.error(f"damaged blob: {exc}", str(handle), blob_id)
            self.report.bad_blobs.add((blob_type, blob_id))
            return None

    def _loaded(self, names: list[str]) -> Iterator[tuple[str, bytes | CipherdumpError]]:
        """Each pack's bytes (or why they cannot be read), in order.  A remote backend
        (``connections`` > 1) has the next few downloaded while one is checked: a
        request's wait is then not added to each pack's checking.  At most
        :data:`READ_AHEAD_PACKS` are held at once."""
        ahead = min(int(getattr(self.backend, "connections", 1)), READ_AHEAD_PACKS) - 1
        if ahead <= 0:
            for name in names:
                yield name, self._load_pack(name)
            return
        with ThreadPoolExecutor(max_workers=ahead, thread_name_prefix="check-read") as pool:
            pending: deque[tuple[str, Future[bytes | CipherdumpError]]] = deque()
            todo = iter(names)
            for name in todo:
                pending.append((name, pool.submit(self._load_pack, name)))
                if len(pending) > ahead:
                    first, future = pending.popleft()
                    yield first, future.result()
            while pending:
                first, future = pending.popleft()
                yield first, future.result()

    def _load_pack(self, name: str) -> bytes | CipherdumpError:
        try:
            return self.backend.load(Handle(FileType.PACK, name))
        except CipherdumpError as exc:
            return exc

    def _read_pack(self, name: str, loaded: bytes | CipherdumpError) -> None:
        handle = Handle(FileType.PACK, name)
        pack_id = Id.from_hex(name)
        # The indexed blobs read whole here; those that are not are bad blobs.
        whole: set[tuple[BlobType, Id]] = set()
        self._verify_pack(handle, pack_id, whole, loaded)
        if self._rows_per_pack is None:
            self._rows_per_pack = self.index.rows_per_pack()
        if len(whole) < self._rows_per_pack.get(pack_id, 0):
            # Rare (damage): one pass over the index for this pack's blobs.
            for _, at, entry in self.index.iter_rows():
                if at == pack_id and (entry.type, entry.id) not in whole:
                    self.report.bad_blobs.add((entry.type, entry.id))

    def _verify_pack(
        self,
        handle: Handle,
        pack_id: Id,
        whole: set[tuple[BlobType, Id]],
        data: bytes | CipherdumpError,
    ) -> None:
        where = str(handle)
        name = handle.name
        if isinstance(data, CipherdumpError):
            self.error(f"unreadable: {data}", where)
            return
        self.report.packs_read += 1
        try:
            if pack_name(data, where).hex != name:
                self.error("damaged: content does not match its name", where)
        except CipherdumpError as exc:
            self.error(f"damaged: {exc}", where)
            return
        if self._rows_per_pack is None:
            self._rows_per_pack = self.index.rows_per_pack()
        indexed = self._rows_per_pack.get(pack_id, 0)
        matched = 0
        try:
            for entry, sealed in iter_pack(self.key, data, where):
                opened = False
                try:
                    open_blob(self.key, entry, sealed, where)
                    self.report.blobs_checked += 1
                    opened = True
                except CipherdumpError as exc:
                    self.error(f"damaged blob: {exc}", where, entry.id)
                found = self.index.lookup(entry.type, entry.id)
                if found is not None and found[0] == pack_id:
                    if found[1] != entry:
                        self.error("index entry disagrees with the pack header", where, entry.id)
                    elif opened:
                        whole.add((entry.type, entry.id))
                    matched += 1
        except CipherdumpError as exc:
            self.error(f"damaged: {exc}", where)
            return
        if self.index.has_pack(pack_id) and matched != indexed:
            self.error(f"the index lists {indexed} blobs here, the header has {matched}", where)
