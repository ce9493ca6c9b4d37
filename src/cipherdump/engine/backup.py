"""Key-less backup of an ext4 filesystem (or one directory of it) into a repository.

The walk goes through :class:`~cipherdump.engine.views.image.Namespace`, so names are the
raw bytes stored on disk and the no-key names Linux shows are computed on the way.
Directories become trees bottom-up: a directory's tree is saved once all its entries
are, so memory holds only the directories on the current path, and an unchanged
directory encodes to the same tree blob and is stored once.  What each node keeps is
described in :mod:`cipherdump.engine.nodeattrs`.

Incremental (see :mod:`cipherdump.engine.parent`): against the parent snapshot (by
default the latest one of the same filesystem UUID and path), a directory whose entries
and child inodes are byte-for-byte unchanged reuses its tree unread (only its child
directories are walked); in any other directory a regular file whose inode number,
generation, ctime, mtime, size and extent map match reuses the parent's chunk list
without reading a byte, and its metadata is taken afresh from the inode.  Where the
entry and every on-disk byte its node is made from are unchanged (its *source key*, see
``entries_key``), the parent's encoded node is reused as it is, without decoding it or
describing the inode again, so unchanged files in changed directories cost little more
than reading their inodes.

The engine never prints: progress and per-object problems go to callbacks.
"""

from __future__ import annotations

import os
import pickle
import posixpath
import socket
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

from cipherdump import __version__
from cipherdump.engine.chunker import DEFAULT_CHUNK_SIZE, check_chunk_size, iter_chunks
from cipherdump.engine.chunker import stored_length as stored_length_of
from cipherdump.engine.describe import node_record
from cipherdump.engine.filenode import file_context, file_node
from cipherdump.engine.gctune import few_collections
from cipherdump.engine.live_check import LiveCheck
from cipherdump.engine.nodeattrs import (
    NODE_ATTRS_VERSION,
    blake2b,
    derived_record,
    file_fingerprint,
    fingerprint,
    int_attr,
)
from cipherdump.engine.parent import (
    LOCATED_ATTRS,
    Census,
    DirRecord,
    ParentIndex,
    encode_dir_table,
)
from cipherdump.engine.policies import PolicyCensus, uuid_text
from cipherdump.engine.readahead import (
    DIRECT_GAP,
    PREFETCH_BYTES,
    PREFETCH_GAP,
    STREAM_AHEAD,
    Prefetcher,
    merge_in_order,
    merge_ranges,
)
from cipherdump.engine.views.image import MAX_DEPTH, ImageNode, Namespace, Problem, bad_entry
from cipherdump.engine.views.paths import child_path
from cipherdump.engine.workers import WorkerDied, WorkerPool
from cipherdump.errors import CipherdumpError, CorruptError, InputError, UnsupportedError
from cipherdump.ext4 import Filesystem, Inode, Run
from cipherdump.ext4.directory import Entry
from cipherdump.ext4.inode import InodeType
from cipherdump.ondisk.dirent import dirent_name_problem
from cipherdump.ondisk.inode import (
    EXT4_CASEFOLD_FL,
    EXT4_ENCRYPT_FL,
    EXT4_INDEX_FL,
    EXT4_INLINE_DATA_FL,
    InodePeek,
)
from cipherdump.ondisk.xattr import EXT4_XATTR_INDEX_ENCRYPTION
from cipherdump.progress import OnProgress, Progress
from cipherdump.repo import BlobType, FileType, Id, Node, Repository, Snapshot
from cipherdump.repo.codec import Value, decode, encode
from cipherdump.repo.pack import BlobTooLargeError
from cipherdump.repo.tree import NodeSpan, join_nodes

SNAPSHOT_FORMAT = 1
_PROGRESS_EVERY_S = 0.1
# Below this many used inodes a backup is over before workers would pay off.
_PARALLEL_MIN_INODES = 2000
_AUTO_MAX_WORKERS = 4
# Directories a worker holds at once: one being backed up, one waiting, so it never idles.
_JOBS_PER_WORKER = 2
_WAIT_S = 0.2
# The encoded ``order`` attrs of the first entries of a directory, to patch reused nodes.
_ORDERS = tuple(encode(i) for i in range(4096))


# -- options, results, events -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BackupOptions:
    """``path`` is a directory as typed (no-key names allowed); ``parent`` a snapshot
    reference, ``None`` for the latest snapshot of the same filesystem and path."""

    path: bytes = b"/"
    parent: str | None = None
    no_parent: bool = False
    force_reread: bool = False
    chunk_size: int = DEFAULT_CHUNK_SIZE
    # Processes sharing the work, this one included (see worker_count); 0 picks one
    # worker per CPU (at most four) for a filesystem of more than a few thousand
    # inodes, else none.
    jobs: int = 0
    source_name: str = ""
    hostname: str = field(default_factory=socket.gethostname)
    tags: tuple[str, ...] = ()


@dataclass(slots=True)
class BackupStats:
    files_new: int = 0
    files_changed: int = 0
    files_unchanged: int = 0
    files_removed: int = 0
    dirs_new: int = 0
    dirs_changed: int = 0
    dirs_unchanged: int = 0
    dirs_removed: int = 0
    bytes_read: int = 0  # data bytes read from the source
    bytes_reused: int = 0  # data bytes taken over from the parent without reading
    bytes_added: int = 0  # plaintext bytes of blobs new to the repository
    data_blobs_added: int = 0
    tree_blobs_added: int = 0
    bytes_stored: int = 0  # growth of the repository's files
    errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(slots=True)
class _WorkerCounts:
    """What the worker processes have reported done so far (for progress events)."""

    inodes: int = 0
    bytes: int = 0


@dataclass(frozen=True, slots=True)
class BackupResult:
    snapshot_id: Id
    snapshot: Snapshot
    parent_id: Id | None
    stats: BackupStats
    policies: list[dict[str, Value]]
    warnings: list[str]  # the source's, then the repository's
    repository_warnings: list[str] = field(default_factory=list)


ProblemFn = Callable[[bytes, CipherdumpError], None]


# -- superblock facts and policies ----------------------------------------------------------


def filesystem_facts(fs: Filesystem) -> dict[str, Value]:
    """What a restore needs to know about the source filesystem."""
    sb = fs.sb
    return {
        "uuid": sb.s_uuid,
        "volume_name": sb.s_volume_name.rstrip(b"\0"),
        "block_size": fs.block_size,
        "cluster_size": sb.cluster_size,
        "inode_size": sb.inode_size,
        "inodes_count": sb.s_inodes_count,
        "inodes_per_group": sb.s_inodes_per_group,
        "blocks_count": sb.s_blocks_count,
        "blocks_per_group": sb.s_blocks_per_group,
        "first_data_block": sb.s_first_data_block,
        "first_ino": sb.first_ino,
        "rev_level": sb.s_rev_level,
        "feature_compat": sb.s_feature_compat,
        "feature_incompat": sb.s_feature_incompat,
        "feature_ro_compat": sb.s_feature_ro_compat,
        "features": list(sb.feature_names),
        "hash_seed": sb.s_hash_seed,
        "def_hash_version": sb.s_def_hash_version,
        "hash_unsigned": sb.dirhash_unsigned,
        "s_flags": sb.s_flags,
        "encoding": sb.s_encoding,
        "encoding_flags": sb.s_encoding_flags,
        "csum_seed": fs.csum_seed,
        "desc_size": sb.desc_size,
        "log_groups_per_flex": sb.s_log_groups_per_flex,
        "min_extra_isize": sb.s_min_extra_isize,
        "want_extra_isize": sb.s_want_extra_isize,
        "mkfs_time": sb.s_mkfs_time,
        "lpf_ino": sb.s_lpf_ino,
        # Public salt of e4crypt passphrases: lets a keyed restore derive e4crypt keys.
        "encrypt_pw_salt": sb.s_encrypt_pw_salt,
        # The source needed recovery and was read with its journal replayed in memory.
        "journal_replayed": _journal_replayed(fs),
    }


def _journal_replayed(fs: Filesystem) -> dict[str, Value] | None:
    plan = fs.journal.replay if fs.journal is not None else None
    if plan is None:
        return None
    return {
        "transactions": plan.transactions,
        "blocks": len(plan.overlay),
        "first_transaction": plan.first_transaction,
        "end_transaction": plan.end_transaction,
    }


# -- the parent snapshot ------------------------------------------------------------


def find_parent(
    repo: Repository,
    fs: Filesystem,
    path: bytes,
    ref: str | None,
    warnings: list[str] | None = None,
) -> tuple[Id, Snapshot] | None:
    """The snapshot named by ``ref``, or the latest of the same filesystem UUID and path
    (damaged snapshot files are passed over, each with a line in ``warnings``)."""
    if ref is not None:
        return repo.find_snapshot(ref)
    damaged: list[CipherdumpError] = []
    snaps = repo.list_snapshots(damaged)
    if warnings is not None:
        warnings += [f"{err} (a damaged snapshot, passed over; run check)" for err in damaged]
    for snap_id, snap in reversed(snaps):
        facts = snap.attrs.get("fs")
        if (
            isinstance(facts, Mapping)
            and facts.get("uuid") == fs.uuid
            and snap.attrs.get("path") == path
            and snap.attrs.get("format") == SNAPSHOT_FORMAT
        ):
            return snap_id, snap
    return None


# -- the walk -------------------------------------------------------------------------------------

# Bits of a directory's i_flags that decide how its entries are shown (no-key names).
_NAME_FLAGS = EXT4_ENCRYPT_FL | EXT4_INDEX_FL | EXT4_INLINE_DATA_FL | EXT4_CASEFOLD_FL
# 2: the entries key hashes each entry's source key (see entries_key); 3: source keys
# depend on the checksum seed, as unchanged records are no longer checked again.
_KEY_VERSION = 3
_ENTRY = struct.Struct("<IIBB")
_HASH = struct.Struct("<II")


@dataclass(frozen=True, slots=True)
class _DirJob:
    """A directory handed to a worker, and where it sits in the parent's walk."""

    number: int
    path: bytes
    name: bytes
    raw_name: bytes
    ino: int
    name_encrypted: bool
    stored_hash: tuple[int, int] | None
    order: int
    depth: int
    count_census: bool  # False in a reused directory (see open_dir)
    ancestors: tuple[int, ...]  # directory inodes from the top down to its parent


@dataclass(frozen=True, slots=True)
class _DirDone:
    """A worker's answer to a :class:`_DirJob`."""

    number: int
    tree: bytes | None  # None: the directory could not be opened (a problem was sent)
    attrs: dict[str, Value]
    errors: int
    census: Census  # the directory's own context, to count in its parent's census
    records: list[DirRecord]


@dataclass(frozen=True, slots=True)
class _WorkerEnd:
    """What a worker counted over all its jobs, sent once its packs are saved."""

    stats: BackupStats
    census: Census
    seen: bytes
    seen_dirs: set[int]
    loaded: dict[int, int]  # the parent's files it looked at: number -> generation
    unmatched: dict[int, int]  # see _Backup.unmatched
    warnings: list[str]  # the filesystem's (see Filesystem.warn)


class _WorkerFailed(Exception):
    """A worker stopped on an error of the whole backup (the repository, say)."""

    def __init__(self, error: CipherdumpError | str) -> None:
        super().__init__(str(error))
        self.error = error


def _picklable(err: CipherdumpError) -> CipherdumpError:
    try:
        pickle.loads(pickle.dumps(err))
    except Exception:  # any failure: send the message only
        return CipherdumpError(str(err))
    return err


@dataclass(frozen=True, slots=True)
class _Same:
    """An entry of a changed directory whose node is the parent's, reused as encoded;
    its inode's record is the one that node was made from, so it is not decoded."""

    entry: Entry
    inode: InodePeek
    span: NodeSpan

    @property
    def raw_name(self) -> bytes:
        return self.entry.name


class _Listed(NamedTuple):
    """A directory entry and what entries_key peeked at of its inode's record (the
    record itself is hashed, not decoded)."""

    entry: Entry
    peek: InodePeek


@dataclass(slots=True)
class _Frame:
    """A directory being backed up.

    ``reuse`` is set when its entries key equals the parent snapshot's: then only its
    child directories are walked (their trees may differ) and its files are taken as
    they were.
    """

    node: ImageNode
    attrs: dict[str, Value]
    kids: list[ImageNode | Problem | _Same | None]
    key: bytes | None = None
    reuse: DirRecord | None = None
    orders: dict[bytes, int] = field(default_factory=dict)
    nodes: dict[bytes, Node | NodeSpan] = field(default_factory=dict)
    # Per entry position, the source key of its node (see entries_key); empty if the
    # entries could not all be read.
    sources: list[bytes] = field(default_factory=list)
    # Encoded nodes of the parent's tree whose source key is unchanged, by source key.
    reusable: dict[bytes, NodeSpan] = field(default_factory=dict)
    census: Census = field(default_factory=dict)
    files: int = 0
    errors: int = 0
    pos: int = 0
    # Child directories handed to a worker: entry name -> job number.
    pending: dict[bytes, int] = field(default_factory=dict)
    # A live backup's verdict on the directory's entries (see open_live_dir).
    live_ok: bool = True


class _Backup:
    def __init__(
        self,
        repo: Repository,
        fs: Filesystem,
        options: BackupOptions,
        on_progress: OnProgress | None,
        on_problem: ProblemFn | None,
    ) -> None:
        self.repo = repo
        self.fs = fs
        self.ns = Namespace(fs)
        self.options = options
        self.chunk_size = check_chunk_size(options.chunk_size)
        self.on_progress = on_progress
        self.on_problem = on_problem
        # A live backup's round (see engine/live_backup.py): checks each object read.
        self.live: LiveCheck | None = None
        self.stats = BackupStats()
        self.census = PolicyCensus(fs)
        self.total_census: Census = {}
        self.parent: ParentIndex | None = None
        # False when the index was repaired since the parent was made: only chunk
        # lists the index has in full are reused then (see backup()).
        self.trust_parent_trees = True
        self.dir_records: list[DirRecord] = []
        self.seen_dirs: set[int] = set()
        sb = fs.sb
        self.seen = bytearray(sb.s_inodes_count // 8 + 1)
        # Data of hard-linked files read in this run, so a second link does not re-read.
        self._links: dict[int, tuple[tuple[int, ...], tuple[Id, ...]]] = {}
        # New files whose number the parent index did not know when they were met (see
        # ParentIndex.removed): number -> generation.
        self.unmatched: dict[int, int] = {}
        self._inodes_total = max(sb.s_inodes_count - sb.s_free_inodes_count, 1)
        used = max(sb.s_blocks_count - sb.s_free_blocks_count, 0)
        self._bytes_total = used * fs.block_size
        self._inodes_done = 0
        self._bytes_done = 0
        self._last_progress = 0.0
        # Policy census keys of encoded context attrs, by all but their nonce.
        self._policy_keys: dict[bytes, bytes] = {}
        # Set while run_walk runs, if the source takes read-ahead hints, with how much
        # to hint at once for a directory's files, and ahead of a big file's reads (0:
        # the kernel reads ahead in those).
        self._prefetcher: Prefetcher | None = None
        self._prefetch_window = PREFETCH_BYTES
        self._stream_ahead = 0
        # Worker processes (see hand_out), what they sent back, what they counted.
        self.pool: WorkerPool | None = None
        self._jobs = 0
        self._done: dict[int, _DirDone] = {}
        self._remote = _WorkerCounts()
        self._ends: list[_WorkerEnd] = []
        self._ended: set[int] = set()
        # What every source key starts from: the facts of this run and filesystem that
        # change how any inode is described.
        self._source_base = blake2b(
            repr(
                (
                    _KEY_VERSION,
                    NODE_ATTRS_VERSION,
                    self.chunk_size,
                    fs.block_size,
                    sb.cluster_size,
                    sb.s_hash_seed,
                    sb.s_flags,
                    sb.s_def_hash_version,
                    sb.s_feature_compat,
                    sb.s_feature_incompat,
                    sb.s_feature_ro_compat,
                    sb.s_encoding,
                    sb.s_encoding_flags,
                    # An unchanged record passed its checksum check when its node was
                    # made; with the same seed it passes it again (see entries_key).
                    fs.csum_seed,
                )
            ).encode(),
            digest_size=16,
        )

    # -- events ---------------------------------------------------------------------
    def problem(self, path: bytes, err: CipherdumpError, frame: _Frame | None = None) -> None:
        if self.live is not None and self.live.absorb(path, err):
            if frame is not None:
                frame.errors += 1  # read again in the next round
            return
        self.stats.errors += 1
        if frame is not None:
            frame.errors += 1
        if self.on_problem is not None:
            self.on_problem(path, err)

    def progress(self, path: bytes, *, force: bool = False, finished: bool = False) -> None:
        if self.on_progress is None:
            return
        now = time.monotonic()
        if not force and now - self._last_progress < _PROGRESS_EVERY_S:
            return
        self._last_progress = now
        inodes_done = self._inodes_done + self._remote.inodes
        bytes_done = self._bytes_done + self._remote.bytes
        total = bytes_done if finished else max(self._bytes_total, bytes_done)
        self.on_progress(
            Progress(
                inodes_done=inodes_done,
                inodes_total=max(self._inodes_total, inodes_done),
                bytes_done=bytes_done,
                bytes_total=total,
                path=path,
                finished=finished,
            )
        )

    # -- nodes ------------------------------------------------------------------------
    def attrs_of(self, kid: ImageNode, order: int, census: Census | None) -> dict[str, Value]:
        """Every metadata field of the inode, and the ls record (see nodeattrs)."""
        ino = kid.inode
        raw = ino.raw
        attrs: dict[str, Value] = {
            "ino": ino.ino,
            "mode": ino.mode,
            "uid": ino.uid,
            "gid": ino.gid,
            "size": ino.size,
            "links": ino.links,
            "flags": ino.flags,
            "generation": ino.generation,
            "project_id": ino.project_id,
            "version": raw.i_version,
            "blocks": ino.blocks_512,
            "atime_ns": ino.atime_ns,
            "mtime_ns": ino.mtime_ns,
            "ctime_ns": ino.ctime_ns,
            "order": order,
        }
        crtime = ino.crtime_ns
        if crtime is not None:
            attrs["crtime_ns"] = crtime
        if kid.name_encrypted:
            attrs["name_encrypted"] = True
            attrs["display"] = kid.name
        if kid.stored_hash is not None:
            attrs["hash"] = list(kid.stored_hash)
        xattrs: list[Value] = []
        for x in ino.xattrs:
            if x.index == EXT4_XATTR_INDEX_ENCRYPTION and x.name == b"c":
                attrs["context"] = x.value
            else:
                xattrs.append([x.index, x.name, x.value])
        if xattrs:
            attrs["xattrs"] = xattrs
        context = attrs.get("context")
        if isinstance(context, bytes) and ino.is_encrypted and census is not None:
            self.census.add(census, context)
        if ino.device is not None:
            attrs["rdev"] = list(ino.device)
        if ino.has_inline_data:
            attrs["inline"] = raw.i_block
        if ino.type is InodeType.SYMLINK:
            attrs["symlink"] = ino.symlink_data()
        extents = [[r.lblk, r.length, r.pblk, r.unwritten] for r in ino.runs if r.pblk is not None]
        if extents:
            attrs["extents"] = extents
        if ino.type is not InodeType.SYMLINK:
            # Only a symlink's record (its target, and the size Linux shows for an
            # encrypted one) can differ from the one derived from the fields above:
            # every other field of node_record is one of them by construction.
            return attrs
        try:
            rec = node_record(self.ns, kid)
        except CipherdumpError as err:
            attrs["ls_error"] = str(err)
        else:
            del rec["path"]
            if "target" in rec:
                attrs["target"] = rec["target"]
            derived = derived_record(ino.type.value, kid.raw_name, attrs)
            if rec != derived or list(rec) != list(derived):
                attrs["ls"] = [[k, v] for k, v in rec.items()]
        return attrs

    def first_visit(self, ino: int) -> bool:
        if ino >= len(self.seen) * 8:
            return True
        byte, bit = ino >> 3, 1 << (ino & 7)
        if self.seen[byte] & bit:
            return False
        self.seen[byte] |= bit
        self._inodes_done += 1
        return True

    def classify_file(self, ino: Inode, fp: Callable[[], bytes]) -> bool:
        """Count a non-directory as new, changed or unchanged; True if unchanged.
        ``fp`` makes its fingerprint (only needed if the parent has the file)."""
        s = self.stats
        parent = self.parent
        before = parent.file(ino.ino, ino.generation) if parent is not None else None
        if before is None:
            if parent is not None:
                if parent.file_generation(ino.ino) is not None:
                    s.files_removed += 1  # the number now belongs to a new inode
                else:  # perhaps the parent's tree that has it is not loaded (yet)
                    self.unmatched[ino.ino] = ino.generation & 0xFFFFFFFF
            s.files_new += 1
            return False
        if before[0] == fp():
            s.files_unchanged += 1
            return True
        s.files_changed += 1
        return False

    def classify_dir(self, ino: Inode, fp: bytes) -> None:
        s = self.stats
        rec = self.parent.dirs.get(ino.ino) if self.parent is not None else None
        if rec is None:
            s.dirs_new += 1
        elif rec.generation != ino.generation & 0xFFFFFFFF:
            s.dirs_removed += 1
            s.dirs_new += 1
        elif rec.fingerprint == fp:
            s.dirs_unchanged += 1
        else:
            s.dirs_changed += 1

    def file_data(
        self, kid: ImageNode, unchanged: bool, first: bool
    ) -> tuple[tuple[int, ...], tuple[Id, ...]]:
        """The chunk indices and ids of a regular file: reused, or read and stored."""
        ino = kid.inode
        if not first and ino.ino in self._links:
            return self._links[ino.ino]
        # Most files are one run from block 0, within one chunk: their one chunk is the
        # run (what iter_chunks finds, without its bookkeeping).
        runs = ino.runs
        whole: Run | None = runs[0] if len(runs) == 1 else None
        bs = self.fs.block_size
        if (
            whole is not None
            and whole.lblk == 0
            and whole.pblk is not None
            and not whole.unwritten
            and whole.length * bs <= self.chunk_size
        ):
            length = whole.length * bs
        else:
            whole = None
            length = stored_length_of(ino)
        refs: tuple[tuple[int, ...], tuple[Id, ...]] | None = None
        if unchanged and not self.options.force_reread and self.parent is not None:
            before = self.parent.file(ino.ino, ino.generation)
            if (
                before is not None
                and self.parent.chunk_size == self.chunk_size
                and all(self.repo.has_blob(BlobType.DATA, i) for i in before[2])
            ):
                refs = before[1], before[2]
                self.stats.bytes_reused += length
                self._bytes_done += length
        if refs is None:
            chunks: list[int] = []
            ids: list[Id] = []
            ahead = self._prefetcher.put_stream if self._prefetcher and self._stream_ahead else None
            pieces: Iterable[tuple[int, bytes]] = (
                iter_chunks(ino, self.chunk_size, ahead, self._stream_ahead)
                if whole is None or whole.pblk is None
                else ((0, self.fs.read_block(whole.pblk, whole.length)),)
            )
            for index, data in pieces:
                blob_id, new = self.repo.add_blob(
                    BlobType.DATA, data, compress=not ino.is_encrypted
                )
                chunks.append(index)
                ids.append(blob_id)
                self.stats.bytes_read += len(data)
                self._bytes_done += len(data)
                if new:
                    self.stats.bytes_added += len(data)
                    self.stats.data_blobs_added += 1
                self.progress(kid.path)
            refs = tuple(chunks), tuple(ids)
        if ino.links > 1:
            self._links[ino.ino] = refs
        return refs

    def make_node(self, kid: ImageNode, order: int, frame: _Frame) -> Node | NodeSpan:
        """A non-directory's node (directories get theirs when their tree is done)."""
        ino = kid.inode
        plain, context = file_context(ino)
        if plain:
            return self.make_file_node(kid, order, frame, context)
        attrs = self.attrs_of(kid, order, frame.census)
        if order < len(frame.sources):
            attrs["source"] = frame.sources[order]
        first = self.first_visit(ino.ino)
        unchanged = self.classify_file(ino, lambda: fingerprint(attrs)) if first else False
        content: tuple[Id, ...] = ()
        if ino.type is InodeType.FILE and not ino.has_inline_data:
            chunks, content = self.file_data(kid, unchanged, first)
            if content:
                attrs["chunk_size"] = self.chunk_size
                attrs["chunks"] = list(chunks)
        self.progress(kid.path)
        return Node(kid.raw_name, ino.type.value, content=content, attrs=attrs)

    def make_file_node(
        self, kid: ImageNode, order: int, frame: _Frame, context: bytes | None
    ) -> NodeSpan:
        """:meth:`make_node` of a regular file of the shape :mod:`.filenode` encodes:
        the same counts and the same node, without an attrs dict."""
        ino = kid.inode
        if context is not None and ino.is_encrypted and frame.census is not None:
            self.census.add(frame.census, context)
        extents = [(r.lblk, r.length, r.pblk, r.unwritten) for r in ino.runs if r.pblk is not None]
        first = self.first_visit(ino.ino)
        unchanged = False
        if first:
            raw = ino.raw

            def fp() -> bytes:
                runs = tuple(extents)
                return file_fingerprint(
                    ino.ino, raw.i_generation, ino.ctime_ns, ino.mtime_ns, raw.i_size, runs
                )

            unchanged = self.classify_file(ino, fp)
        chunks, content = self.file_data(kid, unchanged, first)
        self.progress(kid.path)
        return file_node(
            kid,
            order,
            LOCATED_ATTRS,
            context=context,
            extents=extents,
            source=frame.sources[order] if order < len(frame.sources) else None,
            chunk_size=self.chunk_size,
            chunks=chunks,
            content=content,
        )

    def reuse_node(
        self, ino: int, child: InodePeek, span: NodeSpan, order: int, frame: _Frame
    ) -> NodeSpan:
        """The parent's encoded node of an entry whose source key is unchanged: the node
        made now would be byte for byte the same but for its position (``order``), so
        only that is patched and the counts kept."""
        if self.first_visit(ino):
            self.stats.files_unchanged += 1
            if child.is_file and not child.has_inline_data:
                bs = self.fs.block_size
                stored = -(-child.size // bs) * bs  # as in reuse_dir
                self.stats.bytes_reused += stored
                self._bytes_done += stored
            if child.links > 1 and child.is_file:
                self.remember_links(ino, span)
        context = span.attr("context")
        if context is not None and child.is_encrypted:
            self.count_context(frame.census, context)
        position = _ORDERS[order] if order < len(_ORDERS) else encode(order)
        if span.attr("order") == position:
            return span
        return span.with_attr("order", position)

    def remember_links(self, ino: int, span: NodeSpan) -> None:
        """Keep the chunks of a hard-linked file whose node was reused, as file_data
        does for one it describes, so that its other links are not read again."""
        node = decode(span.data, "tree node")
        if not isinstance(node, Mapping):
            return
        attrs, content = node.get("attrs"), node.get("content", ())
        chunks = attrs.get("chunks", ()) if isinstance(attrs, Mapping) else ()
        if (
            isinstance(content, tuple)
            and isinstance(chunks, tuple)
            and len(chunks) == len(content)
            and all(isinstance(c, bytes) and len(c) == 32 for c in content)
            and all(isinstance(c, int) for c in chunks)
        ):
            self._links[ino] = (
                tuple(c for c in chunks if isinstance(c, int)),
                tuple(Id(c) for c in content if isinstance(c, bytes)),
            )

    def count_context(self, census: Census, encoded: bytes) -> None:
        """Count an encoded ``context`` attr in ``census`` as :meth:`PolicyCensus.add`
        does.  The policy a context decodes to does not depend on its nonce (the last
        16 bytes of every context version), so it is decoded once per policy."""
        key: bytes | str | None = self._policy_keys.get(encoded[:-16])
        if key is None:
            value = decode(encoded, "context attr")
            if not isinstance(value, bytes):
                return
            probe: Census = {}
            self.census.add(probe, value)
            (key,) = probe
            if isinstance(key, bytes):  # decoded: the same for every nonce
                self._policy_keys[encoded[:-16]] = key
        census[key] = census.get(key, 0) + 1

    def save_tree(self, nodes: Iterable[tuple[bytes, Node | NodeSpan]]) -> Id:
        data = join_nodes(nodes, LOCATED_ATTRS)
        tree_id, new = self.repo.add_blob(BlobType.TREE, data, compress=True)
        if new:
            self.stats.bytes_added += len(data)
            self.stats.tree_blobs_added += 1
        return tree_id

    # -- directories --------------------------------------------------------------------
    def entries_key(self, directory: Inode) -> tuple[bytes, list[_Listed], list[bytes]]:
        """(entries key, entries with their inodes' records, source key of each entry).

        An entry's *source key* hashes every on-disk byte its node is made from: the
        entry, the child's raw inode, xattr block and symlink block, the
        bits of the directory that decide no-key names, and the filesystem facts that
        change how an inode reads.  Equal source keys mean equal nodes, apart from
        the position (``order``) and a directory's subtree.  The entries key
        (everything the directory's tree is made of but child subtrees) hashes the
        directory's facts and every source key in entry order.

        Inodes are read as records, not decoded: an entry whose source key is the
        parent's needs nothing more (its record is the very one, checksum and all,
        that was decoded and checked when its node was made).
        """
        fs = self.fs
        entries = directory.entries()  # first: it keeps the htree root's hash version
        dx = (
            directory.directory.hash_version(fs.sb.s_def_hash_version)
            if directory.is_indexed_dir
            else 0
        )
        flags = directory.flags & _NAME_FLAGS
        facts = (_KEY_VERSION, self.chunk_size, flags, directory.size, dx)
        h = blake2b(repr(facts).encode(), digest_size=16)
        base = self._source_base.copy()
        base.update(repr((flags, directory.size == fs.block_size, dx)).encode())
        listed: list[_Listed] = []
        sources: list[bytes] = []
        pack_entry, pack_hash, record = _ENTRY.pack, _HASH.pack, fs.inode_record
        for e in entries:
            raw, peek = record(e.ino)
            stored = e.hash or (0, 0)
            k = base.copy()
            k.update(pack_entry(e.ino, len(e.name), e.file_type, e.hash is not None))
            k.update(e.name)
            k.update(pack_hash(*stored))
            k.update(raw)
            if peek.file_acl:
                k.update(fs.read_block(peek.file_acl))
            if peek.is_symlink:
                child = fs.inode(e.ino)
                if not child.is_fast_symlink and not child.has_inline_data:
                    k.update(child.symlink_storage())
            source = k.digest()
            h.update(source)
            sources.append(source)
            listed.append(_Listed(e, peek))
        return h.digest(), listed, sources

    def open_dir(self, node: ImageNode, order: int, depth: int, census: Census | None) -> _Frame:
        """``census``: where the directory's own context is counted (None in a reused
        directory, whose census is the parent snapshot's)."""
        attrs = self.attrs_of(node, order, census)
        ino = node.inode
        if self.first_visit(ino.ino):
            self.classify_dir(ino, fingerprint(attrs))
        frame = _Frame(node, attrs, [])
        if ino.ino in self.seen_dirs or depth > MAX_DEPTH:
            why = (
                f"directory inode {ino.ino} is reachable twice (cycle)"
                if ino.ino in self.seen_dirs
                else f"directory tree is deeper than {MAX_DEPTH} levels"
            )
            err = CorruptError(why, structure="directory tree")
            attrs["list_error"] = str(err)
            self.problem(node.path, err, frame)
            return frame
        self.seen_dirs.add(ino.ino)
        try:
            # Kept for the next run even when not compared now (first or forced run).
            frame.key, listed, frame.sources = self.entries_key(ino)
        except CipherdumpError:
            frame.key, listed = None, []  # listed below, one problem per bad entry
        parent = self.parent
        if (
            frame.key is not None
            and parent is not None
            and not self.options.force_reread
            and self.trust_parent_trees
        ):
            rec = parent.dir_record(ino.ino, ino.generation)
            # (Its tree must be indexed too: reusing one whose index file was lost
            # would make a snapshot that cannot be read.)
            if (
                rec is not None
                and rec.key == frame.key
                and self.repo.has_blob(BlobType.TREE, rec.tree)
            ):
                self.reuse_dir(frame, rec, listed)
                return frame
        try:
            if parent is not None:
                self.load_parent_dir(parent, frame, listed)
            if frame.reusable:
                frame.kids = self.list_with_reuse(frame, listed)
            else:
                frame.kids = list(self.ns.iter_children(node))
            self.prefetch_data(frame)
        except InputError as err:
            attrs["list_error"] = str(err)
            self.problem(node.path, err, frame)
        return frame

    def load_parent_dir(self, parent: ParentIndex, frame: _Frame, listed: list[_Listed]) -> None:
        """Find the parent's nodes of a changed directory: those of unchanged entries
        to reuse as encoded, the others indexed for the per-file comparison."""
        ino = frame.node.inode
        spans = None
        if frame.sources and not self.options.force_reread and self.trust_parent_trees:
            spans = parent.split_dir(ino.ino)
        if spans is None:
            parent.load_dir(ino.ino)
            return
        if parent.dir_record(ino.ino, ino.generation) is None:
            parent.index_spans(spans)  # another directory under the same number
            return
        wanted = {
            source
            for item, source in zip(listed, frame.sources, strict=True)
            if not item.peek.is_dir
        }
        others: list[NodeSpan] = []
        for span in spans:
            source = span.attr("source")
            if (
                source is not None
                and source[2:] in wanted
                and source[:2] == b"\x04\x10"
                and "order" in span.found
            ):
                frame.reusable[source[2:]] = span
            else:
                others.append(span)
        parent.index_spans(others)

    def prefetch_data(self, frame: _Frame) -> None:
        """Have the kernel start reading the data this directory's files will need, so
        that reading it overlaps describing, hashing and sealing what comes before.

        Only files that will be read (new to the parent), and at most the source's
        window per directory (:data:`PREFETCH_BYTES` for the page cache).  Big files
        are read sequentially and get the kernel's own readahead, or, from a source
        that reads ahead itself, hints ahead of their reads (see :func:`iter_chunks`):
        of those only the start is hinted here, so that one big file does not take
        the window of all the small ones after it.
        """
        if self._prefetcher is None:
            return
        wanted: list[tuple[int, int]] = []
        parent = self.parent
        bs = self.fs.block_size
        budget = self._prefetch_window
        for kid in frame.kids:
            if not isinstance(kid, ImageNode):
                continue  # a problem, or a reused node
            child = kid.inode
            if (
                not child.is_file
                or child.has_inline_data
                or (parent is not None and parent.file(child.ino, child.generation) is not None)
            ):
                continue
            try:
                runs = child.runs
            except CipherdumpError:
                continue  # reported when the file is read
            start = self._stream_ahead or budget  # of this file
            for run in runs:
                if run.pblk is None or run.unwritten:
                    continue
                length = min(run.length * bs, budget, start)
                wanted.append((run.pblk * bs, length))
                budget -= length
                start -= length
                if budget <= 0 or start <= 0:
                    break
            if budget <= 0:
                break
        if self._stream_ahead:
            # A source reading ahead itself keeps what it read in the order it was
            # hinted, and makes room by dropping the oldest: hints in the walk's order,
            # merged only where the bytes between are few (it reads what it is told).
            self._prefetcher.put(merge_in_order(wanted, DIRECT_GAP))
        else:
            self._prefetcher.put(merge_ranges(wanted, PREFETCH_GAP))

    def list_with_reuse(
        self, frame: _Frame, listed: list[_Listed]
    ) -> list[ImageNode | Problem | _Same | None]:
        """The entries as :meth:`Namespace.iter_children` lists them, but those with a
        reusable node put in ``frame.nodes`` at once, in one batch, without a display
        name nor a decoded inode (None holds their place in the list: an entry's
        position is its ``order``).

        An entry with the name of an earlier one is left to the walk as :class:`_Same`,
        which reports it in its turn, as a directory listed without reuse would.  If
        the inode of another entry cannot be read, the directory is listed as
        :meth:`Namespace.iter_children` lists it (one problem per bad entry) and
        nothing is reused, as in a backup without a parent."""
        out: list[ImageNode | Problem | _Same | None] = []
        node = frame.node
        directory = node.inode
        reusable = frame.reusable
        names: set[bytes] = set()
        batch: list[tuple[int, Entry, InodePeek, NodeSpan]] = []
        for order, ((e, peek), source) in enumerate(zip(listed, frame.sources, strict=True)):
            span = reusable.get(source)
            if span is not None and not peek.is_dir:
                if e.name in names:
                    out.append(_Same(e, peek, span))
                else:
                    names.add(e.name)
                    batch.append((order, e, peek, span))
                    out.append(None)
                continue
            names.add(e.name)
            bad = dirent_name_problem(e.name, encrypted=directory.is_encrypted)
            if bad is not None:
                # As iter_children: no path can hold such a name.
                out.append(Problem(child_path(node.path, e.name), bad_entry(bad, directory.ino)))
                continue
            try:
                child = self.fs.inode(e.ino)
            except CipherdumpError:
                assert self.parent is not None
                self.parent.index_spans(reusable.values())
                reusable.clear()
                return list(self.ns.iter_children(node))
            name = self.ns.display_name(directory, e)
            path = child_path(node.path, name)
            out.append(ImageNode(path, name, e.name, child, directory.is_encrypted, e.hash))
        # Reused in one go: the walk would spend more on each than the reuse costs.
        nodes, reuse = frame.nodes, self.reuse_node
        frame.files += len(batch)
        for order, e, peek, span in batch:
            try:
                nodes[e.name] = reuse(e.ino, peek, span, order, frame)
            except CipherdumpError as err:
                name = self.ns.display_name(directory, e)
                out[order] = Problem(posixpath.join(node.path, name), err)
        self.progress(node.path)
        return out

    def reuse_dir(self, frame: _Frame, rec: DirRecord, listed: list[_Listed]) -> None:
        """Take an unchanged directory's entries as they were; walk only its subdirs."""
        frame.reuse = rec
        frame.census = dict(rec.census)
        directory = frame.node.inode
        bs = self.fs.block_size
        for position, (e, peek) in enumerate(listed):
            if peek.is_dir:
                frame.orders[e.name] = position
                name = self.ns.display_name(directory, e)
                frame.kids.append(
                    ImageNode(
                        posixpath.join(frame.node.path, name),
                        name,
                        e.name,
                        self.fs.inode(e.ino),
                        directory.is_encrypted,
                        e.hash,
                    )
                )
                continue
            frame.files += 1
            if self.first_visit(e.ino):
                self.stats.files_unchanged += 1
                if peek.is_file and not peek.has_inline_data:
                    stored = -(-peek.size // bs) * bs  # what stored_length gives, bar oddities
                    self.stats.bytes_reused += stored
                    self._bytes_done += stored
        self.progress(frame.node.path)

    def close_dir(self, frame: _Frame) -> Id:
        """Save (or reuse) the directory's tree and record it in the directory table."""
        if frame.pending:
            self.collect(frame)
        try:
            tree_id = self.tree_of(frame)
        except BlobTooLargeError as err:
            # The directory's own node is kept, marked, with an empty tree: the rest of
            # the backup goes on, and a listing of the snapshot reports it.
            why = UnsupportedError(f"its entries cannot be stored: {err}")
            self.problem(frame.node.path, why, frame)
            frame.attrs["list_error"] = str(why)
            frame.census.clear()
            tree_id = self.save_tree(())
        for key, n in frame.census.items():
            self.total_census[key] = self.total_census.get(key, 0) + n
        if frame.key is not None and not frame.errors:
            ino = frame.node.inode
            self.dir_records.append(
                DirRecord(
                    ino.ino,
                    ino.generation,
                    frame.files,
                    fingerprint(frame.attrs),
                    frame.key,
                    tree_id,
                    tuple(sorted(frame.census.items(), key=lambda kv: str(kv[0]))),
                )
            )
        return tree_id

    def tree_of(self, frame: _Frame) -> Id:
        """The tree of a directory whose entries are all done: saved, or the parent's."""
        if frame.reuse is None:
            return self.save_tree(frame.nodes.items())
        same = len(frame.nodes) == len(frame.kids) and all(
            isinstance(n, Node)
            and (rec := self.parent_dir(n)) is not None
            and n.subtree == rec.tree
            for n in frame.nodes.values()
        )
        if same:
            return frame.reuse.tree
        # Only subtrees of child directories differ: patch the old tree.
        old = self.repo.load_tree(frame.reuse.tree)
        return self.save_tree((n.name, frame.nodes.get(n.name, n)) for n in old.nodes)

    def parent_dir(self, node: Node) -> DirRecord | None:
        if self.parent is None:
            return None
        return self.parent.dirs.get(int_attr(node.attrs, "ino", -1))

    def run_walk(self, top: ImageNode) -> tuple[Id, dict[str, Value]]:
        """Back up the directory ``top``; returns its tree id and its own attrs."""
        workers = self.worker_count()
        if workers:
            self.start_workers(workers)  # before any thread of ours starts
        try:
            self.start_prefetcher()
            if self._prefetcher is not None and self._stream_ahead == 0:
                # Every inode is read (those of unchanged files too): have the kernel
                # read the inode tables ahead of the walk.  (Not into a source's own
                # read-ahead memory, which they would fill: the walk reads them in
                # aligned 64 KiB spans, about 4,000 reads per million inodes.)
                self._prefetcher.put(self.fs.inode_table_ranges())
            try:
                if self.live is not None:
                    opened: list[_Frame] = []
                    self.open_live_dir(top, 0, 0, self.total_census, opened)
                    first = opened[0]
                else:
                    first = self.open_dir(top, 0, 0, self.total_census)
                tree_id, frame = self.walk(first)
                if self.live is not None and not frame.live_ok:
                    # The top is never left out: kept as read, and named.
                    self.live.settle_dir(top, 0, Node(top.raw_name, "dir"), False)
            finally:
                self.stop_prefetcher()
            if self.pool is not None:
                self.finish_workers()
        except _WorkerFailed as failed:
            # Not a problem of one entry (which the walk would report and go past).
            if isinstance(failed.error, CipherdumpError):
                raise failed.error from None
            raise RuntimeError(f"a backup worker failed: {failed.error}") from None
        finally:
            if self.pool is not None:
                self.pool.kill()
                self.pool = None
        return tree_id, frame.attrs

    def start_prefetcher(self) -> None:
        source = self.fs.source
        hint: Callable[[int, int], None] | None = getattr(source, "prefetch", None)
        if hint is not None:
            stream_hint: Callable[[int, int], None] = getattr(source, "prefetch_stream", hint)
            self._prefetcher = Prefetcher(hint, stream_hint)
            # A source that reads ahead into memory of its own says how much it holds;
            # the kernel's page cache holds what it is told to.
            window: int | None = getattr(source, "readahead_window", None)
            stream: int | None = getattr(source, "stream_window", window)
            self._prefetch_window = PREFETCH_BYTES if window is None else window
            self._stream_ahead = 0 if stream is None else min(stream, STREAM_AHEAD)

    def stop_prefetcher(self) -> None:
        if self._prefetcher is not None:
            self._prefetcher.close()
            self._prefetcher = None

    def walk(self, first: _Frame) -> tuple[Id, _Frame]:
        """Back up the tree under the open directory ``first``; returns its tree id and
        its frame (its attrs and whether anything under it failed)."""
        stack = [first]
        while True:
            frame = stack[-1]
            if frame.pos < len(frame.kids):
                order = frame.pos
                kid = frame.kids[order]
                # Let go of the entry's inode once it is done: a directory of many
                # entries would otherwise hold every decoded inode until it closes.
                frame.kids[order] = None
                frame.pos += 1
                if kid is None:
                    continue  # reused by list_with_reuse
                if isinstance(kid, Problem):
                    self.problem(kid.path, kid.error, frame)
                    continue
                if isinstance(kid, _Same):
                    self.walk_same(kid, order, frame)
                    continue
                if kid.raw_name in frame.nodes:
                    err = CorruptError(
                        "a second entry with the same name",
                        structure="directory entry",
                        location=f"directory inode {frame.node.inode.ino}",
                    )
                    self.problem(kid.path, err, frame)
                    continue
                try:
                    if kid.inode.is_dir:
                        # In a reused directory the entry's position is its old one.
                        if frame.reuse is not None:
                            order = frame.orders.get(kid.raw_name, 0)
                        if self.pool is not None and self.hand_out(kid, order, stack):
                            continue
                        census = None if frame.reuse is not None else frame.census
                        if self.live is not None:
                            self.open_live_dir(kid, order, len(stack), census, stack)
                        else:
                            stack.append(self.open_dir(kid, order, len(stack), census))
                    elif self.live is not None:
                        frame.files += 1
                        self.make_live_node(kid, order, frame, self.live)
                    else:
                        frame.files += 1
                        frame.nodes[kid.raw_name] = self.make_node(kid, order, frame)
                except InputError as err:  # the source's: the repository's end the backup
                    self.problem(kid.path, err, frame)
                continue
            stack.pop()
            tree_id = self.close_dir(frame)
            if not stack:
                return tree_id, frame
            if frame.errors:
                stack[-1].errors += 1  # a damaged subtree keeps its parents from reuse
            node = Node(frame.node.raw_name, "dir", subtree=tree_id, attrs=frame.attrs)
            if self.live is not None:
                self.settle_live_dir(frame, node, stack[-1])
            else:
                stack[-1].nodes[frame.node.raw_name] = node
            self.progress(frame.node.path)

    # -- a live backup's checks (see engine/live_backup.py) ----------------------------

    def open_live_dir(
        self, kid: ImageNode, order: int, depth: int, census: Census | None, stack: list[_Frame]
    ) -> None:
        """:meth:`open_dir` between the live check's two looks at the directory."""
        live = self.live
        assert live is not None
        ok = live.before(kid)
        frame = self.open_dir(kid, order, depth, census)
        frame.live_ok = live.after(kid) if ok else False
        if not frame.live_ok:
            frame.errors += 1  # not recorded for reuse: listed again next round
        stack.append(frame)

    def make_live_node(self, kid: ImageNode, order: int, frame: _Frame, live: LiveCheck) -> None:
        """:meth:`make_node` between the live check's looks; what it settles is stored."""
        made: Node | NodeSpan | None = None
        if live.before(kid):
            node = self.make_node(kid, order, frame)
            made = node
        settled = live.settle(kid, order, made)
        if settled.node is not None:
            frame.nodes[kid.raw_name] = settled.node
        if not settled.accepted:
            frame.errors += 1

    def settle_live_dir(self, frame: _Frame, node: Node, up: _Frame) -> None:
        live = self.live
        assert live is not None
        order = int_attr(frame.attrs, "order", 0)
        settled = live.settle_dir(frame.node, order, node, frame.live_ok)
        if settled.node is not None:
            up.nodes[frame.node.raw_name] = settled.node
        if not settled.accepted:
            up.errors += 1

    def walk_same(self, kid: _Same, order: int, frame: _Frame) -> None:
        """:meth:`run_walk`'s step for an entry whose node is reused as encoded, when
        :meth:`list_with_reuse` left it to the walk (see there)."""
        err: CipherdumpError
        if kid.raw_name in frame.nodes:
            err = CorruptError(
                "a second entry with the same name",
                structure="directory entry",
                location=f"directory inode {frame.node.inode.ino}",
            )
        else:
            frame.files += 1
            try:
                frame.nodes[kid.raw_name] = self.reuse_node(
                    kid.entry.ino, kid.inode, kid.span, order, frame
                )
                self.progress(frame.node.path)
                return
            except InputError as caught:
                err = caught
        name = self.ns.display_name(frame.node.inode, kid.entry)
        self.problem(posixpath.join(frame.node.path, name), err, frame)

    # -- sharing the walk with worker processes ---------------------------------------
    #
    # The parent process walks as above, but hands directories without subdirectories
    # (a link count of 2) to a worker that has room for them; the worker backs the
    # directory up as the parent would (its own packs, its own index files) and sends
    # back the tree id and attrs, which the parent puts where the directory's node
    # goes.  Trees are content-addressed, so the snapshot's trees are the same bytes
    # whichever process made them.  What is only approximate across processes: a file
    # hard-linked from directories done by different processes is read, counted and
    # (once per process) stored for each, and a chunk new to the repository may be
    # stored once per process that meets it in the same run.

    def worker_count(self) -> int:
        """How many worker processes to start (besides this one).

        By default one per CPU (at most :data:`_AUTO_MAX_WORKERS`, none with one CPU);
        with two or more workers this process only walks and hands out directories
        (see :meth:`hand_out`).  On the 2-CPU benchmark machine two workers beat one
        that shares the work with this process by 5-10 % in a full backup: this
        process, which also starts up and saves the snapshot, no longer finishes last,
        and while one process waits for the disk another has work."""
        if not self.repo.shared_between_processes or self.live is not None:
            return 0  # a live backup's checks keep state in this process
        jobs = self.options.jobs
        if jobs <= 0:
            cpus = os.cpu_count() or 1
            if self._inodes_total < _PARALLEL_MIN_INODES or cpus < 2:
                return 0
            return min(cpus, _AUTO_MAX_WORKERS)
        return max(jobs - 1, 0)

    def start_workers(self, count: int) -> None:
        self.repo.prepare_fork()
        self.pool = WorkerPool(count, self.serve)

    def hand_out(self, kid: ImageNode, order: int, stack: list[_Frame]) -> bool:
        """Give the directory ``kid`` of ``stack[-1]`` to a worker, if it has no
        subdirectories; False to walk it here.  With one worker, this process backs the
        directory up itself if the worker has no room for it; with more, it waits for
        room (it has the walk, the hand-outs and the snapshot to do)."""
        pool = self.pool
        assert pool is not None
        if kid.inode.links != 2:
            return False
        self.pump(0)
        worker = pool.least_busy(_JOBS_PER_WORKER)
        while worker is None and len(pool) > 1:
            self.pump(_WAIT_S)
            worker = pool.least_busy(_JOBS_PER_WORKER)
        if worker is None:
            return False
        frame = stack[-1]
        self._jobs += 1
        job = _DirJob(
            self._jobs,
            kid.path,
            kid.name,
            kid.raw_name,
            kid.inode.ino,
            kid.name_encrypted,
            kid.stored_hash,
            order,
            len(stack),
            frame.reuse is None,
            tuple(f.node.inode.ino for f in stack),
        )
        pool.send(worker, job)
        pool.in_flight[worker] += 1
        frame.pending[kid.raw_name] = job.number
        # Holds the entry's place (and catches a second entry of the same name).
        frame.nodes[kid.raw_name] = Node(kid.raw_name, "dir")
        return True

    def collect(self, frame: _Frame) -> None:
        """Wait for the directories of ``frame`` that workers have, and put them in."""
        for name, number in frame.pending.items():
            while number not in self._done:
                self.pump(_WAIT_S)
            done = self._done.pop(number)
            for key, n in done.census.items():
                frame.census[key] = frame.census.get(key, 0) + n
            if done.errors:
                frame.errors += 1
            if done.tree is None:
                del frame.nodes[name]  # as the walk leaves out an entry it cannot open
                continue
            frame.nodes[name] = Node(name, "dir", subtree=Id(done.tree), attrs=done.attrs)
            self.dir_records.extend(done.records)
        frame.pending.clear()

    def pump(self, timeout: float | None) -> None:
        """Take in what the workers sent within ``timeout`` seconds."""
        pool = self.pool
        assert pool is not None
        for worker, message in pool.receive(timeout):
            if message is None:
                if worker in self._ended:
                    continue
                raise WorkerDied(f"backup worker {worker} ended unexpectedly")
            kind = message[0]
            if kind == "done":
                done: _DirDone = message[1]
                self._done[done.number] = done
                pool.in_flight[worker] -= 1
            elif kind == "progress":
                self._remote.inodes += message[1]
                self._remote.bytes += message[2]
            elif kind == "problem":
                if self.on_problem is not None:
                    self.on_problem(message[1], message[2])
            elif kind == "end":
                self._ends.append(message[1])
                self._ended.add(worker)
            elif kind == "failed":
                raise _WorkerFailed(message[1])
        self.repo.refresh_lock()
        self.progress(b"")

    def finish_workers(self) -> None:
        """Have every worker save what it holds; merge what they counted."""
        pool = self.pool
        assert pool is not None
        for worker in range(len(pool)):
            pool.send(worker, None)
        while len(self._ends) < len(pool):
            self.pump(_WAIT_S)
        pool.join()
        self.pool = None
        for end in self._ends:
            for name, value in end.stats.as_dict().items():
                setattr(self.stats, name, getattr(self.stats, name) + value)
            for key, n in end.census.items():
                self.total_census[key] = self.total_census.get(key, 0) + n
            either = int.from_bytes(self.seen, "little") | int.from_bytes(end.seen, "little")
            self.seen[:] = either.to_bytes(len(self.seen), "little")
            self.seen_dirs.update(end.seen_dirs)
            if self.parent is not None:
                self.parent.merge_loaded(end.loaded)
            self.unmatched.update(end.unmatched)
            for warning in end.warnings:
                self.fs.warn(warning)
        self._ends.clear()

    # In a worker process (a forked copy of the parent's _Backup):

    def serve(self, conn: Connection) -> None:
        """A worker's life: back up the directories it is sent, until told to stop."""
        self.pool = None
        self.repo.become_worker()
        reopen: Callable[[], None] | None = getattr(self.fs.source, "reopen", None)
        if reopen is not None:
            reopen()
        self.stats = BackupStats()
        self.total_census = {}
        self.dir_records = []
        self.unmatched = {}
        self.seen = bytearray(len(self.seen))
        self._inodes_done = self._bytes_done = 0
        sent = _WorkerCounts()

        def send_progress(event: Progress) -> None:
            # What was done since the last event: the parent adds up every worker's.
            conn.send(("progress", event.inodes_done - sent.inodes, event.bytes_done - sent.bytes))
            sent.inodes, sent.bytes = event.inodes_done, event.bytes_done

        self.on_progress = send_progress
        self.on_problem = lambda path, err: conn.send(("problem", path, _picklable(err)))
        try:
            self.start_prefetcher()
            while (job := conn.recv()) is not None:
                conn.send(("done", self.run_job(job)))
            self.stop_prefetcher()
            self.progress(b"", force=True)
            self.repo.flush()
            loaded = self.parent.loaded_files() if self.parent is not None else {}
            end = _WorkerEnd(
                self.stats,
                self.total_census,
                bytes(self.seen),
                self.seen_dirs,
                loaded,
                self.unmatched,
                self.fs.warnings,
            )
            conn.send(("end", end))
        except CipherdumpError as err:
            conn.send(("failed", _picklable(err)))
        except Exception as err:  # the parent reports it as one line
            conn.send(("failed", f"{type(err).__name__}: {err}"))

    def run_job(self, job: _DirJob) -> _DirDone:
        self.seen_dirs.update(job.ancestors)  # as the parent's walk knows them
        node = ImageNode(
            job.path,
            job.name,
            job.raw_name,
            self.fs.inode(job.ino),
            job.name_encrypted,
            job.stored_hash,
        )
        census: Census = {}
        try:
            first = self.open_dir(node, job.order, job.depth, census if job.count_census else None)
        except InputError as err:  # as the walk takes it: a problem of this entry
            self.problem(job.path, err)
            return _DirDone(job.number, None, {}, 1, census, [])
        tree_id, frame = self.walk(first)
        records, self.dir_records = self.dir_records, []
        return _DirDone(job.number, tree_id.raw, frame.attrs, frame.errors, census, records)

    def ancestors(self, top: ImageNode) -> list[Value]:
        """The directories from ``/`` down to ``top``'s parent, metadata and contexts."""
        out: list[Value] = []
        parts = [p for p in top.path.split(b"/") if p]
        for depth in range(len(parts)):
            prefix = b"/" + b"/".join(parts[:depth])
            node = self.ns.resolve(prefix)
            out.append(
                {"name": node.raw_name, "kind": "dir", "attrs": self.attrs_of(node, 0, None)}
            )
        return out


def repo_sizes(repo: Repository) -> dict[tuple[FileType, str], int]:
    sizes: dict[tuple[FileType, str], int] = {}
    for file_type in (FileType.PACK, FileType.INDEX, FileType.SNAPSHOT):
        for info in repo.backend.list(file_type):
            sizes[(file_type, info.name)] = info.size
    return sizes


def backup(
    repo: Repository,
    fs: Filesystem,
    options: BackupOptions | None = None,
    *,
    on_progress: OnProgress | None = None,
    on_problem: ProblemFn | None = None,
    live: LiveCheck | None = None,
    parent_snapshot: tuple[Id, Snapshot] | None = None,
    save: bool = True,
) -> BackupResult:
    """Back up ``fs`` (``options.path`` of it) into ``repo`` as a new snapshot.

    A live backup's round (see :mod:`cipherdump.engine.live_backup`) passes its check
    as ``live``, the previous round's snapshot as ``parent_snapshot`` (instead of the
    one :func:`find_parent` picks), and ``save=False`` for a snapshot to be saved, or
    passed to the next round, by the caller (its id is then all zeros)."""
    options = options or BackupOptions()
    job = _Backup(repo, fs, options, on_progress, on_problem)
    job.live = live
    ns = job.ns
    top = ns.resolve(options.path)
    if live is not None:
        live.top_path = top.path
    if not top.inode.is_dir:
        raise InputError(f"{options.path.decode('utf-8', 'backslashreplace')}: not a directory")
    before = repo_sizes(repo)
    warnings: list[str] = []
    missing = repo.missing_packs()
    if missing:
        # Snapshots may name blobs of those packs, the parent too: reusing its trees or
        # chunk lists would carry the loss into this snapshot.  Everything is read, and
        # what is gone is stored again.
        warnings.append(
            f"the index names {len(missing)} pack(s) the repository does not have (the "
            f"first: {missing[0].hex}): earlier snapshots may have lost data (run check); "
            "this backup reads everything and stores it again"
        )
    # An index file passed over as damaged is as good as lost: a parent tree the index
    # still has may name data blobs only that file listed.  (Its own warning is the
    # repository's, given when the index loaded.)
    lossy = bool(missing or repo.damaged_index_files())
    if lossy and not missing:
        warnings.append("this backup reads everything and stores it again (a damaged index)")
    parent = (
        None
        if options.no_parent or lossy
        else parent_snapshot or find_parent(repo, fs, top.path, options.parent, warnings)
    )
    if parent is not None and not repo.has_blob(BlobType.TREE, parent[1].tree):
        warnings.append(
            f"the parent snapshot {parent[0].hex[:8]} names trees the index does not have "
            "(index files lost?): this backup reads everything; run check"
        )
        parent = None
    repairs = repo.index_repairs()
    if parent is not None:
        job.parent = ParentIndex(repo, parent[1])
        # A repair since the parent (repair packs, say) may have dropped blobs its
        # trees name.  Each file's chunk list is still reused only if the index has
        # every chunk, but a directory's tree, or a node's encoding, would be taken
        # over unread with whatever it names: not this time.
        seen = parent[1].attrs.get("index_repairs")
        known = set(seen) if isinstance(seen, tuple | list) else set()
        job.trust_parent_trees = set(repairs) <= known
    job.progress(top.path, force=True)
    with few_collections():
        tree_id, top_attrs = job.run_walk(top)
    if job.parent is not None:
        files, dirs = job.parent.removed(job.seen, job.seen_dirs, job.unmatched)
        job.stats.files_removed += files
        job.stats.dirs_removed += dirs
    policies = job.census.summary(job.total_census)
    table, dir_census = encode_dir_table(sorted(job.dir_records, key=lambda r: r.ino))
    attrs: dict[str, Value] = {
        "format": SNAPSHOT_FORMAT,
        "node_attrs": NODE_ATTRS_VERSION,
        "cipherdump_version": __version__,
        "source": options.source_name,
        "path": top.path,
        "fs": filesystem_facts(fs),
        "chunk_size": job.chunk_size,
        "top": {"name": top.raw_name, "kind": "dir", "attrs": top_attrs},
        "ancestors": job.ancestors(top),
        "policies": list(policies),
        "warnings": list(fs.warnings),
        "dirs": table,
        "dir_census": dir_census,
        "index_repairs": list(repairs),
    }
    snapshot = Snapshot(
        tree=tree_id,
        time_ns=time.time_ns(),
        hostname=options.hostname,
        tags=options.tags,
        parent=parent[0] if parent is not None else None,
        # bytes_stored is known only once the snapshot is saved; the result has it.
        attrs={
            **attrs,
            "stats": {k: v for k, v in job.stats.as_dict().items() if k != "bytes_stored"},
        },
    )
    if not save:
        return BackupResult(
            snapshot_id=Id(bytes(32)),
            snapshot=snapshot,
            parent_id=snapshot.parent,
            stats=job.stats,
            policies=policies,
            warnings=[*fs.warnings, *warnings],
            repository_warnings=warnings,
        )
    snap_id = repo.save_snapshot(snapshot)
    after = repo_sizes(repo)
    job.stats.bytes_stored = sum(size for key, size in after.items() if key not in before)
    job.progress(top.path, force=True, finished=True)
    return BackupResult(
        snapshot_id=snap_id,
        snapshot=snapshot,
        parent_id=snapshot.parent,
        stats=job.stats,
        policies=policies,
        warnings=[*fs.warnings, *warnings],
        repository_warnings=warnings,
    )


def snapshot_summary(snap_id: Id, snap: Snapshot) -> dict[str, Any]:
    """A snapshot as ``snapshots --json`` shows it."""
    attrs = snap.attrs
    facts = attrs.get("fs")
    stats = attrs.get("stats")
    out: dict[str, Any] = {
        "id": snap_id.hex,
        "short_id": snap_id.short,
        "time_ns": snap.time_ns,
        "hostname": snap.hostname,
        "tags": list(snap.tags),
        "parent": snap.parent.hex if snap.parent is not None else None,
        "source": attrs.get("source", ""),
        "path": attrs.get("path", b"/"),
    }
    if isinstance(facts, Mapping) and isinstance(facts.get("uuid"), bytes):
        uuid = facts["uuid"]
        assert isinstance(uuid, bytes)
        out["fs_uuid"] = uuid_text(uuid)
    if isinstance(stats, Mapping):
        out["stats"] = dict(stats)
    if isinstance(facts, Mapping) and isinstance(facts.get("journal_replayed"), Mapping):
        replayed = facts["journal_replayed"]
        assert isinstance(replayed, Mapping)
        out["journal_replayed"] = dict(replayed)
    live = attrs.get("live")
    if isinstance(live, Mapping):  # a live backup (see engine/live_backup.py)
        out["live"] = dict(live)
    policies = attrs.get("policies")
    if isinstance(policies, tuple):
        out["policies"] = [
            {
                k: (v.hex() if isinstance(v, bytes) else list(v) if isinstance(v, tuple) else v)
                for k, v in p.items()
            }
            for p in policies
            if isinstance(p, Mapping)
        ]
    return out


__all__ = [
    "BackupOptions",
    "BackupResult",
    "BackupStats",
    "ParentIndex",
    "backup",
    "filesystem_facts",
    "find_parent",
    "snapshot_summary",
]
