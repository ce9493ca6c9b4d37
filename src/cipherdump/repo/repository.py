"""The repository facade: what the engine uses, and nothing of how it is stored."""

from __future__ import annotations

import io
from collections.abc import Callable, Container
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from cipherdump.errors import (
    BackendError,
    CipherdumpError,
    CorruptError,
    IntegrityError,
    KeyProblem,
    NotFoundError,
)
from cipherdump.progress import OnProgress
from cipherdump.repo.backends.base import Backend, FileType, Handle, ObjectMissing
from cipherdump.repo.backends.relay import RelayHost
from cipherdump.repo.blobstore import INDEX_EVERY_PACKS, BlobStore
from cipherdump.repo.check import Checker, CheckReport
from cipherdump.repo.config import (
    DEFAULT_CIPHER,
    DEFAULT_PACK_SIZE,
    RepoConfig,
    decode_config,
    encode_config,
)
from cipherdump.repo.crypto import Cipher, KdfParams, MasterKey, file_id
from cipherdump.repo.ids import BlobType, Id, is_hex_id
from cipherdump.repo.keyfile import decode_key_params, encode_key_file, unwrap_key_file
from cipherdump.repo.lock import Lock, remove_locks
from cipherdump.repo.pack import PACK_VERSION
from cipherdump.repo.prune import PruneOptions, PruneStats, prune
from cipherdump.repo.repair import RepairReport, rebuild_index
from cipherdump.repo.salvage import PackRepairReport, repair_packs
from cipherdump.repo.snapshot import EVERY_ATTR, Snapshot, decode_snapshot, encode_snapshot
from cipherdump.repo.stats import RepoStats, repository_stats
from cipherdump.repo.tree import Tree, decode_tree, encode_tree, join_parts


@dataclass(frozen=True, slots=True)
class KeyListing:
    """One key file as ``key list`` shows it."""

    name: str
    params: KdfParams | None
    mtime_ns: int | None
    current: bool


class Repository:
    """An open repository.  Create with :meth:`init` or :meth:`open`.

    Writes are buffered into packs; :meth:`flush` (called by :meth:`save_snapshot` and
    by leaving a ``with`` block normally) makes them durable and indexed.  :meth:`close`
    releases the lock and discards what was not flushed.
    """

    def __init__(
        self,
        backend: Backend,
        key: MasterKey,
        config: RepoConfig,
        *,
        lock: bool,
        exclusive: bool = True,
        tidy: bool = True,
        lock_optional: bool = False,
        index_every_packs: int = INDEX_EVERY_PACKS,
        spool_dir: str | None = None,
        pack_version: int = PACK_VERSION,
    ) -> None:
        """``lock``: take the repository's lock, exclusive (prune, forget, repairs) or
        shared (``exclusive=False``: backups and readers, many at once), and keep it
        fresh from a thread until :meth:`close`.  ``tidy``: with the lock, remove the
        temporary files killed writers left where that is safe (readers pass False:
        ``check`` reports them).  ``lock_optional`` (readers): where the storage
        refuses the lock file (a read-only copy), go on without one and say why in
        :attr:`lock_refused`.  ``pack_version``: of the packs it
        writes; tests write version 1, as the first writers did."""
        self.backend = backend
        self.config = config
        self._relay: RelayHost | None = None  # see prepare_fork
        self._forked_backend: Backend | None = None
        # A local cache of a remote repository is per repository id (repo/cache.py).
        attach_cache = getattr(backend, "attach_cache", None)
        if attach_cache is not None:
            attach_cache(config.repo_id.hex)
        # Everything but key files and the config is sealed with the config's cipher.
        key = key.with_cipher(config.cipher)
        self._key = key
        list_leftovers = getattr(backend, "list_leftovers", None)
        remove_leftovers = getattr(backend, "remove_leftovers", None)
        before: set[str] = set()

        def note_leftovers() -> None:
            if list_leftovers is not None and not exclusive:
                # (Not in locks/: there it may be a lock being written this instant.)
                before.update(n for n in list_leftovers() if not n.startswith("locks/"))

        # Why a lock_optional reader goes without its lock (the caller warns).
        self.lock_refused: BackendError | None = None
        self._lock: Lock | None = None
        if lock:
            try:
                self._lock = Lock.acquire(
                    backend, key, exclusive=exclusive, before_write=note_leftovers
                )
            except BackendError as exc:
                # Only the lock's own writes land here: the config and key were read
                # already, so a wrong endpoint or password fails once, before this.
                if not lock_optional:
                    raise
                self.lock_refused = exc
        if self._lock is not None:
            self._lock.start_refresher()
        if self._lock is not None and remove_leftovers is not None and tidy:
            if exclusive:
                # No one else writes now: temporary files are what killed writers left.
                remove_leftovers()
            elif before and not self._lock.others_live:
                # Under a shared lock they may be another backup's packs in the making;
                # but those there before this lock was written, when no other lock was
                # live then or after, belong to no live writer (a writer writes its
                # lock before any temporary file).
                remove_leftovers(only=before)
        self._store = BlobStore(
            backend,
            key,
            config.pack_size,
            pack_version=pack_version,
            index_every_packs=index_every_packs,
            spool_dir=spool_dir,
        )

    # Creating and opening -------------------------------------------------------------

    @classmethod
    def init(
        cls,
        backend: Backend,
        password: bytes,
        *,
        kdf: KdfParams | None = None,
        pack_size: int = DEFAULT_PACK_SIZE,
        cipher: Cipher = DEFAULT_CIPHER,
        lock: bool = True,
    ) -> Repository:
        """Create a repository in an empty backend; the key file is written before config.

        It has the current format: objects sealed with ``cipher`` (AES-256-GCM unless
        asked otherwise), version-2 packs."""
        if any(True for _ in backend.list(FileType.CONFIG)):
            raise BackendError(f"{backend.location} already holds a repository")
        key = MasterKey.generate()
        config = RepoConfig.new(pack_size, cipher)
        name = _save(
            backend, FileType.KEY, encode_key_file(key, password, kdf or KdfParams.default())
        )
        backend.save(Handle(FileType.CONFIG), io.BytesIO(encode_config(key, config)))
        repo = cls(backend, key, config, lock=lock)
        repo.key_name = name.hex
        return repo

    @classmethod
    def open(
        cls,
        backend: Backend,
        password: bytes,
        *,
        lock: bool = True,
        exclusive: bool = True,
        tidy: bool = True,
        lock_optional: bool = False,
        index_every_packs: int = INDEX_EVERY_PACKS,
        spool_dir: str | None = None,
    ) -> Repository:
        """Open with a password; :class:`KeyProblem` if no key file accepts it."""
        try:
            config_data = backend.load(Handle(FileType.CONFIG))
        except ObjectMissing:
            raise NotFoundError(f"no repository at {backend.location} (no config)") from None
        key, key_name = _unlock(backend, password)
        config = decode_config(key, config_data)
        repo = cls(
            backend,
            key,
            config,
            lock=lock,
            exclusive=exclusive,
            tidy=tidy,
            lock_optional=lock_optional,
            index_every_packs=index_every_packs,
            spool_dir=spool_dir,
        )
        repo.key_name = key_name
        return repo

    # Keys (several passwords for one master key) ----------------------------------------

    # The key file this handle was opened (or made) with.
    key_name: str | None = None

    def add_key(self, password: bytes, kdf: KdfParams | None = None) -> Id:
        """Write another key file wrapping the same master key; returns its name."""
        return _save(
            self.backend,
            FileType.KEY,
            encode_key_file(self._key, password, kdf or KdfParams.default()),
        )

    def list_keys(self) -> list[KeyListing]:
        """Every key file: name, KDF parameters (None if it cannot be parsed), when it
        was saved (if the backend says), and whether this handle was opened with it."""
        out = []
        for info in self.backend.list(FileType.KEY):
            try:
                params: KdfParams | None = decode_key_params(
                    self.backend.load(Handle(FileType.KEY, info.name))
                )[0]
            except CipherdumpError:
                params = None
            out.append(KeyListing(info.name, params, info.mtime_ns, info.name == self.key_name))
        return sorted(out, key=lambda k: (k.mtime_ns or 0, k.name))

    def find_key(self, prefix: str) -> str:
        """The key file a unique prefix of its name names."""
        names = [i.name for i in self.backend.list(FileType.KEY) if i.name.startswith(prefix)]
        if not prefix or not names:
            raise NotFoundError(f"no key file matches {prefix!r}")
        if len(names) > 1:
            raise NotFoundError(f"key prefix {prefix!r} is ambiguous ({len(names)} match)")
        return names[0]

    def remove_key(self, name: str) -> None:
        """Remove a key file (exclusive lock).  Neither the last key file nor the one
        this handle was opened with can be removed: a repository with no password, or
        a mistyped id, would lose everything."""
        self._need_exclusive("removing a key")
        names = [i.name for i in self.backend.list(FileType.KEY)]
        if name not in names:
            raise NotFoundError(f"no key file {name} in {self.backend.location}")
        if len(names) == 1:
            raise KeyProblem(f"keys/{name} is the repository's last key: it cannot be removed")
        if name == self.key_name:
            raise KeyProblem(
                f"keys/{name} is the key this password opened: to remove it, give the "
                "password of another key"
            )
        self.backend.remove(Handle(FileType.KEY, name))

    def change_password(self, password: bytes, kdf: KdfParams | None = None) -> str:
        """Replace this handle's key file by one for ``password`` (exclusive lock): the
        new file is saved before the old one is removed, so either password works at
        any instant.  Rewrites no data.  Returns the new key file's name."""
        self._need_exclusive("changing the password")
        old = self.key_name
        new = self.add_key(password, kdf).hex
        if old is not None and old != new:
            self.backend.remove(Handle(FileType.KEY, old))
        self.key_name = new
        return new

    # Blobs and trees ------------------------------------------------------------------

    def save_blob(self, blob_type: BlobType, data: bytes, *, compress: bool = False) -> Id:
        """Store a blob (deduplicated by id); returns its id."""
        if self._lock is not None:
            self._lock.refresh_if_due()
        blob_id, _ = self._store.save(blob_type, data, compress=compress)
        return blob_id

    def add_blob(
        self, blob_type: BlobType, data: bytes, *, compress: bool = False
    ) -> tuple[Id, bool]:
        """Like :meth:`save_blob`, and also say whether the blob was new to the repository."""
        if self._lock is not None:
            self._lock.refresh_if_due()
        return self._store.save(blob_type, data, compress=compress)

    def load_blob(self, blob_type: BlobType, blob_id: Id) -> bytes:
        return self._store.load(blob_type, blob_id)

    def has_blob(self, blob_type: BlobType, blob_id: Id) -> bool:
        return self._store.has(blob_type, blob_id)

    def save_tree(self, tree: Tree) -> Id:
        return self.save_blob(BlobType.TREE, encode_tree(tree), compress=True)

    def load_tree(self, tree_id: Id, *, skip_parts: Container[Id] = ()) -> Tree:
        """A directory's tree; a chunked one's parts joined (but those in
        ``skip_parts``, which a caller compares by id, such as ``diff``)."""
        what = f"tree {tree_id}"
        tree = self.load_tree_index(tree_id)
        if not tree.chunked:
            return tree
        if skip_parts:
            kept = [n for n in tree.nodes if n.subtree not in skip_parts]
            parts = [self.load_tree_index(n.subtree) for n in kept if n.subtree is not None]
            return join_parts(Tree(tuple(kept), chunked=True), parts, what)
        parts = [self.load_tree_index(n.subtree) for n in tree.nodes if n.subtree is not None]
        return join_parts(tree, parts, what)

    def load_tree_index(self, tree_id: Id) -> Tree:
        """A tree as stored: for a chunked directory, its index (parts unread)."""
        return decode_tree(self.load_blob(BlobType.TREE, tree_id), f"tree {tree_id}")

    def flush(self) -> None:
        """Save unfinished packs, then the index delta naming them."""
        self._store.flush()
        self.refresh_lock()

    def refresh_lock(self) -> None:
        """Keep the lock fresh (a no-op until it is due); for long waits."""
        if self._lock is not None:
            self._lock.refresh_if_due()

    # Sharing the work with forked processes -------------------------------------------

    @property
    def shared_between_processes(self) -> bool:
        """Whether forked copies of this handle may write at once (they each write their
        own packs and index files): true of a directory, not of memory."""
        return bool(getattr(self.backend, "shared_between_processes", False))

    @property
    def relays_for_forks(self) -> bool:
        """Whether forked copies may write at once by asking this process to make their
        storage requests (see :meth:`prepare_fork`): S3, whose client a fork cannot
        use."""
        return bool(getattr(self.backend, "relay_from_forks", False))

    def prepare_fork(self) -> RelayHost | None:
        """Make everything written so far durable, load the index and stop the store's
        threads, so that a forked copy starts from a state it can use on its own.

        For a backend a fork cannot use itself, the relay through which the forks'
        requests are to be made by this process (the caller forks with it)."""
        self._store.flush()
        self._store.stop_threads()
        _ = self._store.index
        if self.shared_between_processes:
            return None
        self._relay = RelayHost(self.backend)
        return self._relay

    def use_lean_index(self) -> None:
        """Load the index, when first needed, as a backup needs it: about 10 bytes of
        memory a blob instead of 66, its entries in a temporary file (48 bytes a blob,
        in ``TMPDIR``) that lookups read (see :mod:`.leanindex`).  No effect once the
        index is loaded."""
        self._store.lean = True

    def missing_packs(self) -> list[Id]:
        """Packs the index names that the backend does not have (deleted or lost
        outside cipherdump).  They are left out of the index: see
        :attr:`BlobStore.index`."""
        return self._store.missing_packs

    def damaged_index_files(self) -> list[str]:
        """Index files passed over as damaged, by the errors that name them (their
        blobs count as absent: see :attr:`BlobStore.index`)."""
        return self._store.damaged_index_files

    def index_repairs(self) -> list[str]:
        """The names of the index files in use that ``repair index`` or ``repair
        packs`` wrote, sorted.  A repair may have dropped blobs that snapshots made
        before it name: a writer compares these with what its parent snapshot saw."""
        return self._store.index_repairs

    def set_warning_handler(self, on_warning: Callable[[str], None] | None) -> None:
        """Have what the repository passes over (damaged index files) reported as it
        is met, instead of kept for :meth:`take_warnings`."""
        self._store.on_warning = on_warning

    def take_warnings(self) -> list[str]:
        """What the repository passed over since last asked (damaged index files), for
        the caller to report."""
        out = list(self._store.warnings)
        self._store.warnings.clear()
        return out

    def become_worker(self) -> None:
        """In a forked copy: the lock is the parent's; never refresh or release it."""
        self._lock = None
        self._store.index_files_saved.clear()
        if self._relay is not None:
            # (The coordinator's backend stays referenced, never used nor dropped here.)
            self._forked_backend = self.backend
            self.backend = self._relay.backend()
            self._store.use_backend(self.backend)

    def index_files_saved(self) -> list[str]:
        """The index files this handle saved (in a worker: since it became one)."""
        return list(self._store.index_files_saved)

    def absorb_index_files(self, names: list[str]) -> None:
        """Find the blobs that these index files (saved by workers) name from now on."""
        self._store.absorb_index_files(names)

    # Snapshots ------------------------------------------------------------------------

    def save_snapshot(self, snapshot: Snapshot) -> Id:
        """Flush, then write the snapshot: it only ever names indexed blobs."""
        self.flush()
        return _save(self.backend, FileType.SNAPSHOT, encode_snapshot(self._key, snapshot))

    def remove_snapshot(self, snapshot_id: Id) -> None:
        """Remove a snapshot file (``repair snapshots --forget``); needs the lock."""
        self._need_exclusive("removing a snapshot")
        self.backend.remove(Handle(FileType.SNAPSHOT, snapshot_id.hex))

    def load_snapshot(self, snapshot_id: Id, drop_attrs: Container[str] = ()) -> Snapshot:
        """The snapshot, without the attrs named in ``drop_attrs``."""
        handle = Handle(FileType.SNAPSHOT, snapshot_id.hex)
        data = self.backend.load(handle)
        if file_id(data) != snapshot_id:
            raise IntegrityError(f"{handle}: content does not match its name")
        return decode_snapshot(self._key, data, str(handle), drop_attrs)

    def list_snapshots(
        self, damaged: list[CipherdumpError] | None = None, drop_attrs: Container[str] = ()
    ) -> list[tuple[Id, Snapshot]]:
        """Every snapshot, oldest first.  Given ``damaged``, a snapshot file that fails
        its hash, authentication or decoding is left out and its error (which names
        it) noted there instead of raised: one bad file must not stop every listing
        and every backup (``check`` names it too).

        A listing holds every snapshot at once: ``drop_attrs`` names the attrs it
        need not keep (a backup's directory table is about 100 bytes a directory, so
        a year of nightly snapshots of a large filesystem would not fit in memory).
        """
        snaps = []
        for info in self.backend.list(FileType.SNAPSHOT):
            sid = Id.from_hex(info.name)
            try:
                snaps.append((sid, self.load_snapshot(sid, drop_attrs)))
            except (IntegrityError, CorruptError) as err:
                if damaged is None:
                    raise
                damaged.append(err)
        snaps.sort(key=lambda item: (item[1].time_ns, item[0]))
        return snaps

    def find_snapshot(
        self, ref: str, damaged: list[CipherdumpError] | None = None
    ) -> tuple[Id, Snapshot]:
        """A snapshot by unique hex prefix, full id, or ``"latest"`` (the latest
        undamaged one if ``damaged`` is given: see :meth:`list_snapshots`)."""
        if ref == "latest":
            snaps = self.list_snapshots(damaged, drop_attrs=EVERY_ATTR)
            if not snaps:
                raise NotFoundError(f"no snapshots in {self.backend.location}")
            sid = snaps[-1][0]
            return sid, self.load_snapshot(sid)
        if not ref or not is_hex_id(ref.ljust(64, "0")):
            raise NotFoundError(f"not a snapshot id or prefix: {ref!r}")
        names = [i.name for i in self.backend.list(FileType.SNAPSHOT) if i.name.startswith(ref)]
        if not names:
            raise NotFoundError(f"no snapshot matches {ref!r}")
        if len(names) > 1:
            raise NotFoundError(f"snapshot prefix {ref!r} is ambiguous ({len(names)} match)")
        sid = Id.from_hex(names[0])
        return sid, self.load_snapshot(sid)

    # Maintenance ----------------------------------------------------------------------

    def check(
        self, *, read_data: bool = False, on_progress: OnProgress | None = None
    ) -> CheckReport:
        """``on_progress`` follows ``read_data`` (bytes of packs read)."""
        own = self._lock.name if self._lock is not None else None
        checker = Checker(
            _uncached(self.backend),
            self._key,
            read_data=read_data,
            own_lock=own,
            on_progress=on_progress,
        )
        return checker.run()

    def repair_index(self, on_progress: OnProgress | None = None) -> RepairReport:
        """Rebuild the index from the packs' own headers (see :mod:`.repair`); needs
        the lock.  Blobs added but not yet flushed are flushed first."""
        self._need_exclusive("repairing the index")
        self._store.flush()
        report = rebuild_index(_uncached(self.backend), self._key, on_progress)
        self._store.forget_index()
        return report

    def repair_packs(
        self, *, dry_run: bool = False, on_progress: OnProgress | None = None
    ) -> PackRepairReport:
        """Salvage damaged packs (see :mod:`.salvage`); needs the lock.  Blobs added
        but not yet flushed are flushed first."""
        self._need_exclusive("repairing packs")
        self._store.flush()
        report = repair_packs(
            _uncached(self.backend),
            self._key,
            self.config.pack_size,
            dry_run=dry_run,
            on_progress=on_progress,
        )
        self._store.forget_index()
        return report

    def prune(
        self,
        options: PruneOptions,
        on_progress: OnProgress | None = None,
    ) -> PruneStats:
        """Free what no snapshot uses (see :mod:`.prune`); needs the lock, which is
        kept fresh throughout.  Blobs added but not yet flushed are flushed first."""
        self._need_exclusive("prune")
        self._store.flush()
        stats = prune(
            self.backend,
            self._key,
            self.config.pack_size,
            options,
            on_progress=on_progress,
            refresh=self.refresh_lock,
        )
        self._store.forget_index()
        return stats

    def stats(
        self,
        snapshots: list[tuple[Id, Snapshot]],
        on_progress: OnProgress | None = None,
    ) -> RepoStats:
        """Sizes of these snapshots, each and together, and of the packs (see
        :mod:`.stats`)."""
        self._store.flush()
        pairs = [(sid, snap.tree) for sid, snap in snapshots]
        return repository_stats(self.backend, self._key, pairs, on_progress)

    def _need_exclusive(self, what: str) -> None:
        if self._lock is None or not self._lock.exclusive:
            raise BackendError(f"{what} needs the repository's exclusive lock")

    def unlock(self, *, all_locks: bool = False) -> list[tuple[str, str]]:
        """Remove stale locks (or, with ``all_locks``, every lock but this handle's
        own); returns (name, who held it) of each removed."""
        own = self._lock.name if self._lock is not None else None
        return remove_locks(self.backend, self._key, all_locks=all_locks, keep=own)

    def close(self) -> None:
        """Release the lock; unflushed blobs are discarded."""
        self._store.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None:
                self.flush()
        finally:
            self.close()


def _uncached(backend: Backend) -> Backend:
    """The repository itself, past a local cache of it (repo/cache.py): what check
    and repairs must read."""
    inner: Backend = getattr(backend, "uncached", backend)
    return inner


def _save(backend: Backend, file_type: FileType, data: bytes) -> Id:
    """Save a whole file under the BLAKE3 of its bytes."""
    name = file_id(data)
    backend.save(Handle(file_type, name.hex), io.BytesIO(data))
    return name


def _unlock(backend: Backend, password: bytes) -> tuple[MasterKey, str]:
    """Try every key file; name damaged ones if none opens.  Returns the master key
    and the name of the key file that opened."""
    damaged: list[str] = []
    tried = 0
    for info in backend.list(FileType.KEY):
        handle = Handle(FileType.KEY, info.name)
        data = backend.load(handle)
        intact = file_id(data).hex == info.name
        if not intact:
            damaged.append(str(handle))
        tried += 1
        try:
            return unwrap_key_file(data, password), info.name
        except KeyProblem:
            continue
        except CipherdumpError:
            if intact:
                damaged.append(str(handle))
            continue
    if damaged:
        raise IntegrityError(
            f"cannot open {backend.location}: no key file accepts the password, "
            f"and these are damaged: {', '.join(damaged)}"
        )
    if not tried:
        raise KeyProblem(f"no key files in {backend.location}")
    raise KeyProblem(f"wrong password: none of the {tried} key files of {backend.location} opens")
