"""The deduplicating blob store.

Write ordering (the format's restartability rules): a pack is saved completely before
any index file names it; index deltas are saved before anything (a tree or snapshot
written later) depends on them.  A crash therefore leaves at worst packs that no
index names; they are ignored, and their blobs are written again by the next run.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

from cipherdump.errors import BackendError, CorruptError, IntegrityError
from cipherdump.repo.backends.base import (
    Backend,
    FileType,
    Handle,
    ObjectMissing,
    ShortFile,
    Spool,
    open_spool,
)
from cipherdump.repo.crypto import MasterKey, file_id
from cipherdump.repo.ids import BlobType, Id, is_hex_id
from cipherdump.repo.index import IndexFile, PackRecord, decode_index, encode_index
from cipherdump.repo.leanindex import LeanIndex
from cipherdump.repo.memindex import MemoryIndex
from cipherdump.repo.pack import PACK_VERSION, PackWriter, open_blob

INDEX_EVERY_PACKS = 16
INDEX_MAX_ENTRIES = 65536
READ_AHEAD_WINDOWS = 8


def _commit_spool(spool: Spool, writer: PackWriter, handle: Handle) -> None:
    try:
        spool.commit(handle)
    finally:
        writer.close()
        spool.discard()


def load_index_file(backend: Backend, key: MasterKey, name: str) -> IndexFile:
    """Read, hash-check and decrypt one index file."""
    handle = Handle(FileType.INDEX, name)
    data = backend.load(handle)
    if file_id(data).hex != name:
        raise IntegrityError(f"{handle}: content does not match its name")
    try:
        return decode_index(key, data, str(handle))
    except CorruptError as exc:
        raise IntegrityError(f"{handle}: {exc}") from None


class BlobStore:
    def __init__(
        self,
        backend: Backend,
        key: MasterKey,
        pack_size: int,
        *,
        pack_version: int = PACK_VERSION,
        index_every_packs: int = INDEX_EVERY_PACKS,
        index_max_entries: int = INDEX_MAX_ENTRIES,
        spool_dir: str | None = None,
    ) -> None:
        self._backend = backend
        self._key = key
        self._pack_size = pack_size
        self._pack_version = pack_version
        self._index_every_packs = index_every_packs
        self._index_max_entries = index_max_entries
        self._spool_dir = spool_dir
        self._writers: dict[BlobType, PackWriter] = {}
        # Where a writer's pack is assembled, when the backend keeps it in place.
        self._spools: dict[BlobType, Spool] = {}
        # Packs being made durable by the commit thread, and that thread.
        self._pending: dict[Id, Future[None]] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._broken: BaseException | None = None
        self._unindexed: list[PackRecord] = []
        # Index files this store saved (a worker hands their names to the coordinator).
        self.index_files_saved: list[str] = []
        self._index: MemoryIndex | LeanIndex | None = None
        # Load the index as a LeanIndex (a backup's: far less memory, lookups that
        # read the disk) rather than a MemoryIndex; set before it is first needed.
        self.lean = False
        # Packs the index files name that the backend does not have.
        self._missing: list[Id] = []
        # Index files passed over as damaged (their errors, which name them).
        self._damaged: list[str] = []
        self._repairs: list[str] = []
        # Windows of remote packs read ahead (see _read), oldest first.
        self._windows: OrderedDict[tuple[Id, int], bytes] = OrderedDict()
        self._windows_lock = threading.Lock()
        # What loading the index met and passed over: given to ``on_warning`` if set
        # (the CLI prints it at once), else kept for whoever asks.
        self.warnings: list[str] = []
        self.on_warning: Callable[[str], None] | None = None

    @property
    def index(self) -> MemoryIndex | LeanIndex:
        """The index of every blob in an index file or a pack saved by this store: a
        :class:`~.leanindex.LeanIndex` if :attr:`lean` was set before it was first
        needed, else a :class:`~.memindex.MemoryIndex`.

        Packs an index file names but the backend does not have (deleted or lost
        outside cipherdump) are left out (see :attr:`missing_packs`): their blobs count
        as absent, so a backup stores them again, and a blob stored again is found
        where it now is, not where it was.  An index file that fails its hash or
        authentication is passed over as if it were lost (see
        :attr:`damaged_index_files`; ``check`` names it and ``repair index`` makes the
        index again): the blobs only it named count as absent too."""
        if self._index is None:
            lean = LeanIndex(self._spool_dir) if self.lean else None
            # Per index file in listing order: what it supersedes, and its packs as
            # (id, size, entries) for a MemoryIndex, or as (id, size, first row,
            # count) for a LeanIndex, which has written the entries to its file so
            # that only one index file is in memory at a time.
            supersedes: dict[str, tuple[Id, ...]] = {}
            packs: dict[str, list[tuple[Id, int, bytes]]] = {}
            staged: dict[str, list[tuple[Id, int, int, int]]] = {}
            damaged: dict[str, IntegrityError] = {}
            for info in self._backend.list(FileType.INDEX):
                try:
                    index_file = load_index_file(self._backend, self._key, info.name)
                except IntegrityError as exc:
                    damaged[info.name] = exc
                    continue
                supersedes[info.name] = index_file.supersedes
                if lean is not None:
                    staged[info.name] = [
                        (p.id, p.size, lean.stage(p.raw_entries), p.count) for p in index_file.packs
                    ]
                else:
                    packs[info.name] = [(p.id, p.size, p.raw_entries) for p in index_file.packs]
                del index_file
            superseded = {i.hex for s in supersedes.values() for i in s}
            # (One a repair left superseded is no loss at all.)
            passed_over = [str(e) for n, e in damaged.items() if n not in superseded]
            listed = self._backend.list(FileType.PACK)
            present = {Id.from_hex(i.name) for i in listed if is_hex_id(i.name)}
            missing = []
            in_use = [n for n in supersedes if n not in superseded]
            index: MemoryIndex | LeanIndex
            if lean is not None:
                chosen = []
                for name in in_use:
                    for pack_id, size, first, count in staged[name]:
                        if pack_id in present:
                            chosen.append((pack_id, size, first, count))
                        else:
                            missing.append(pack_id)
                lean.build(chosen)
                index = lean
            else:
                index = MemoryIndex()
                for name in in_use:
                    for pack_id, size, raw_entries in packs[name]:
                        if pack_id in present:
                            index.add_pack(pack_id, size, raw_entries)
                        else:
                            missing.append(pack_id)
            # Index files a repair wrote (the only ones that supersede others).
            self._repairs = sorted(n for n in in_use if supersedes[n])
            self._index, self._missing, self._damaged = index, missing, passed_over
            for why in passed_over:
                message = (
                    f"{why}: a damaged index file, passed over (the blobs it lists count "
                    "as absent; run check, then repair index)"
                )
                if self.on_warning is not None:
                    self.on_warning(message)
                else:
                    self.warnings.append(message)
        return self._index

    def forget_index(self) -> None:
        """Read the index files again when next needed (they were rewritten)."""
        if isinstance(self._index, LeanIndex):
            self._index.close()
        self._index = None
        with self._windows_lock:
            self._windows.clear()

    @property
    def missing_packs(self) -> list[Id]:
        """The packs index files name that the backend does not have."""
        _ = self.index
        return list(self._missing)

    @property
    def index_repairs(self) -> list[str]:
        """The names of the index files in use that a repair wrote (they supersede
        others), sorted."""
        _ = self.index
        return list(self._repairs)

    @property
    def damaged_index_files(self) -> list[str]:
        """Why each index file that was passed over as damaged was (names it)."""
        _ = self.index
        return list(self._damaged)

    def has(self, blob_type: BlobType, blob_id: Id) -> bool:
        writer = self._writers.get(blob_type)
        if writer is not None and writer.get(blob_id) is not None:
            return True
        return self.index.has(blob_type, blob_id)

    def save(self, blob_type: BlobType, data: bytes, *, compress: bool) -> tuple[Id, bool]:
        """Store a blob unless present; returns (id, whether it was new)."""
        if self._broken is not None:
            self._wait_pending()  # raises
        blob_id = self._key.blob_id(data)
        if self.has(blob_type, blob_id):
            return blob_id, False
        try:  # (a try block costs nothing; a context manager per blob would)
            writer = self._writers.get(blob_type)
            if writer is None:
                writer = self._new_writer(blob_type)
            writer.add(blob_type, blob_id, data, compress)
            if writer.size >= self._pack_size:
                self._flush_pack(blob_type)
        except OSError as exc:
            raise self._pack_error(exc) from exc
        return blob_id, True

    def _pack_error(self, exc: OSError) -> BackendError:
        """A pack being assembled in its file is the backend's business: a full disk
        or an I/O error there is a BackendError, as any other write of the backend's."""
        return BackendError(
            f"cannot write a pack in {self._backend.location}: {exc.strerror or exc}"
        )

    def _new_writer(self, blob_type: BlobType) -> PackWriter:
        spool = open_spool(self._backend, FileType.PACK) if self._spool_dir is None else None
        if spool is None:
            writer = PackWriter(self._key, self._spool_dir, version=self._pack_version)
        else:
            writer = PackWriter(self._key, file=spool.file, version=self._pack_version)
            self._spools[blob_type] = spool
        self._writers[blob_type] = writer
        return writer

    def load(self, blob_type: BlobType, blob_id: Id) -> bytes:
        writer = self._writers.get(blob_type)
        entry = writer.get(blob_id) if writer is not None else None
        if writer is not None and entry is not None:
            try:
                unfinished = writer.read(entry)
            except OSError as exc:
                raise self._pack_error(exc) from exc
            return open_blob(self._key, entry, unfinished, "the unfinished pack")
        found = self.index.lookup(blob_type, blob_id)
        if found is None:
            raise IntegrityError(f"{blob_type.name.lower()} blob {blob_id} is not in the index")
        pack_id, entry = found
        self._wait_pending(pack_id)
        handle = Handle(FileType.PACK, pack_id.hex)
        cached = False
        try:
            sealed: bytes | memoryview | None = None
            if blob_type is BlobType.TREE:
                # A local cache keeps tree packs whole (see repo/cache.py).
                load_pack = getattr(self._backend, "load_pack", None)
                size = self.index.pack_size(pack_id)
                if load_pack is not None and size is not None:
                    whole = load_pack(handle, size)
                    if whole is not None:
                        sealed = memoryview(whole)[entry.offset : entry.offset + entry.length]
                        cached = True
            if sealed is None:
                sealed = self._read(handle, pack_id, entry.offset, entry.length)
        except (ShortFile, ObjectMissing) as exc:
            # The index says the blob is there: a pack cut short, replaced by another
            # or gone since is damage to the repository, not a failing disk.
            raise IntegrityError(
                f"{blob_type.name.lower()} blob {blob_id}: {exc} (damaged or lost; run check)"
            ) from None
        try:
            return open_blob(self._key, entry, sealed, str(handle))
        except IntegrityError:
            if cached:
                self._backend.forget(handle)  # type: ignore[attr-defined]
            elif not self._forget_windows(pack_id):
                raise
        # A window read ahead or a cached pack is never trusted past a failure: read
        # the blob alone from the repository.
        sealed = self._backend.load(handle, entry.offset, entry.length)
        return open_blob(self._key, entry, sealed, str(handle))

    def _forget_windows(self, pack_id: Id) -> bool:
        """Drop the windows of a pack; whether there were any."""
        with self._windows_lock:
            keys = [k for k in self._windows if k[0] == pack_id]
            for k in keys:
                del self._windows[k]
        return bool(keys)

    def _read(self, handle: Handle, pack_id: Id, offset: int, length: int) -> bytes:
        """A blob's bytes; from a remote backend, through a window read ahead.

        Why: a blob of a remote pack costs a request, and restoring many small files,
        or walking a tree, asks for the blobs of a pack one after another in about
        the order they were written.  A backend with a ``read_ahead`` (S3: 4 MiB) is
        read that much from the blob on, up to the end of the pack, and the last
        few windows are kept (:data:`READ_AHEAD_WINDOWS`).  A window is the backend's
        bytes, not a blob: each blob is still authenticated when it is opened."""
        window = int(getattr(self._backend, "read_ahead", 0))
        if window <= length:
            return self._backend.load(handle, offset, length)
        with self._windows_lock:
            for (pack, start), data in self._windows.items():
                if pack == pack_id and start <= offset and offset + length <= start + len(data):
                    self._windows.move_to_end((pack, start))
                    return data[offset - start : offset - start + length]
        size = self.index.pack_size(pack_id)
        end = offset + window if size is None else max(min(size, offset + window), offset + length)
        data = self._backend.load(handle, offset, end - offset)
        with self._windows_lock:
            self._windows[(pack_id, offset)] = data
            while len(self._windows) > READ_AHEAD_WINDOWS:
                self._windows.popitem(last=False)
        return data[:length]

    def flush(self) -> None:
        """Save every unfinished pack, data before trees, then the index delta."""
        try:
            for blob_type in (BlobType.DATA, BlobType.TREE):
                if blob_type in self._writers:
                    self._flush_pack(blob_type)
        except OSError as exc:
            raise self._pack_error(exc) from exc
        self._write_index()

    def close(self) -> None:
        """Discard unfinished packs (what :meth:`flush` did not save is lost)."""
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
        if isinstance(self._index, LeanIndex):
            self.forget_index()  # (its temporary file)
        for spool in self._spools.values():
            spool.discard()
        self._spools.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True)  # packs being committed are finished
            self._executor = None
        self._pending.clear()

    def stop_threads(self) -> None:
        """Stop the commit thread once what it was given is saved (it starts again when
        needed); a process about to fork must not leave a thread the child lacks."""
        self._wait_pending()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def _flush_pack(self, blob_type: BlobType) -> None:
        writer = self._writers.pop(blob_type)
        spool = self._spools.pop(blob_type, None)
        committing = False
        try:
            if not len(writer):
                return
            pack_id, stream, entries = writer.finish(flush=spool is None)
            size = writer.size
            handle = Handle(FileType.PACK, pack_id.hex)
            if spool is not None:
                # The pack is already in the backend's directory; making it durable
                # (fsync, rename, fsync) overlaps the next pack's assembly.
                self._pending[pack_id] = self._committer().submit(
                    _commit_spool, spool, writer, handle
                )
                committing = True
            else:
                self._backend.save(handle, stream)
        finally:
            if not committing:
                writer.close()
                if spool is not None:
                    spool.discard()
        record = PackRecord(pack_id, size, entries)
        self.index.add_pack(record.id, record.size, record.raw_entries)
        self._unindexed.append(record)
        # Each pack waiting for its commit is a file of its own (for S3, a local
        # temporary file): at most twice as many as commit at once may wait, so a slow
        # upload slows the backup down instead of filling the disk.
        while len(self._pending) > 2 * self._commit_workers():
            self._wait_pending(next(iter(self._pending)))
        pending = sum(r.count for r in self._unindexed)
        if len(self._unindexed) >= self._index_every_packs or pending >= self._index_max_entries:
            self._write_index()

    def _commit_workers(self) -> int:
        """A remote backend uploads several packs at once (its ``connections``); a
        local one renames each in turn."""
        return max(1, int(getattr(self._backend, "connections", 1)))

    def _committer(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self._commit_workers(), thread_name_prefix="pack-commit"
            )
        return self._executor

    def _wait_pending(self, pack_id: Id | None = None) -> None:
        """Wait until the pack ``pack_id`` (every pack if None) is saved; re-raise the
        first failure."""
        if self._broken is not None:
            raise BackendError(f"a pack could not be saved earlier: {self._broken}")
        if pack_id is not None:
            future = self._pending.pop(pack_id, None)
            pending = {pack_id: future} if future is not None else {}
        else:
            pending, self._pending = self._pending, {}
        for future in pending.values():
            error = future.exception()
            if error is not None:
                # Its blobs are in the memory index already: nothing more may be
                # written, lest an index file name a pack that is not there.
                self._broken = error
                raise error

    def _write_index(self) -> None:
        # A pack is completely saved before any index file names it.
        self._wait_pending()
        if not self._unindexed:
            return
        data = encode_index(self._key, IndexFile(tuple(self._unindexed)))
        name = file_id(data).hex
        self._backend.save(Handle(FileType.INDEX, name), io.BytesIO(data))
        self.index_files_saved.append(name)
        self._unindexed.clear()

    def use_backend(self, backend: Backend) -> None:
        """From now on read and write through ``backend`` (a forked worker's relay to
        the coordinator's backend: the same storage)."""
        self._backend = backend

    def absorb_index_files(self, names: list[str]) -> None:
        """Add to the index in memory what index files another process (a backup's
        worker, on a fork of this store) saved: without it this store would not find
        their blobs until it read the index again."""
        if self._index is None:
            return  # read whole when first needed, these files included
        for name in names:
            for pack in load_index_file(self._backend, self._key, name).packs:
                self._index.add_pack(pack.id, pack.size, pack.raw_entries)
