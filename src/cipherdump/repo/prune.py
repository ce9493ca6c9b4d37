"""``prune``: free the data no snapshot uses (format §17).

Phases, in an order that is safe to interrupt at any instant (the caller holds the
repository's exclusive lock):

1. List the snapshots (every one must read: a snapshot that cannot be read may use
   anything), then load the index.  A damaged index file stops prune too: the blobs
   only it lists would look unused.
2. Mark the blobs in use, walking every snapshot's trees.  A needed blob that no pack
   holds stops prune with an error naming it and the snapshot: prune never repairs.
3. Plan: packs none of whose blobs is used go; partly used packs are repacked, most
   unused first, until the unused space left is at most ``max_unused_percent`` of what
   is used (restic's measure), within ``max_repack_bytes``; packs no index names go
   once they are older than :data:`UNINDEXED_GRACE_NS`.
4. Write the repacked packs (indexed as they accumulate, in files that supersede
   nothing), then the new index: files that list every pack kept and the new ones,
   the last of which supersedes every index file there was (so until it is saved, the
   old index stands, and after it, the new one).
5. Only then remove the old index files, then the packs.

Memory: the index is the lean :class:`~.markindex.MarkIndex` (about 32 bytes a data
blob: a 16-byte id prefix, pack number, sealed length, hash slots; offsets only for
trees), sized once from the entry count of the first pass, plus one byte a blob to mark
it; index files are read one at a time, three times (what they supersede and how many
entries they have, to index, to write the new index), and never all held.
"""

from __future__ import annotations

import io
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

from cipherdump.errors import InputError, IntegrityError
from cipherdump.progress import OnProgress, Progress
from cipherdump.repo.backends.base import Backend, FileInfo, FileType, Handle
from cipherdump.repo.blobstore import INDEX_MAX_ENTRIES, load_index_file
from cipherdump.repo.crypto import MasterKey, file_id
from cipherdump.repo.ids import BlobType, Id, is_hex_id
from cipherdump.repo.index import IndexFile, PackRecord, encode_index
from cipherdump.repo.markindex import MarkIndex
from cipherdump.repo.pack import (
    FLAG_ZSTD,
    PACK_VERSION,
    TRAILER_SIZE,
    PackWriter,
    decode_pack_header,
    decode_trailer,
    open_blob,
)
from cipherdump.repo.snapshot import decode_snapshot
from cipherdump.repo.tree import decode_tree

# A pack no index names may be a live writer's that has not written its index yet
# (one whose lock was lost, say, as a suspended laptop's is): twice the time after
# which a lock is stale.
UNINDEXED_GRACE_NS = 60 * 60 * 10**9
DEFAULT_MAX_UNUSED_PERCENT = 5.0
# What a pack spends besides its blobs: sealed header (40 + 48 a blob) and trailer.
_PACK_OVERHEAD = 40 + TRAILER_SIZE
_ENTRY_OVERHEAD = 48


@dataclass(frozen=True, slots=True)
class PruneOptions:
    max_unused_percent: float = DEFAULT_MAX_UNUSED_PERCENT
    max_repack_bytes: int | None = None
    dry_run: bool = False
    unindexed_grace_ns: int = UNINDEXED_GRACE_NS

    def __post_init__(self) -> None:
        if not 0 <= self.max_unused_percent <= 100:
            raise ValueError("max_unused_percent is a percentage")


@dataclass
class PruneStats:
    """What prune found and did (or, in a dry run, would do).  Sizes in bytes."""

    dry_run: bool = False
    snapshots: int = 0
    trees: int = 0
    blobs: int = 0
    blobs_used: int = 0
    packs: int = 0
    size: int = 0  # of every indexed pack
    used: int = 0  # sealed bytes of used blobs
    unused_before: int = 0
    unused_after: int = 0
    packs_removed: int = 0  # none of their blobs used
    packs_repacked: int = 0
    blobs_repacked: int = 0
    bytes_repacked: int = 0  # sealed bytes of used blobs copied
    new_packs: list[str] = field(default_factory=list)
    unindexed_removed: int = 0
    unindexed_kept: int = 0  # too young to remove
    index_files_written: int = 0
    index_files_removed: int = 0
    freed: int = 0  # bytes of packs removed less those of new packs

    def as_dict(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class _Stop(IntegrityError):
    """Prune cannot go on safely; nothing has been changed."""


def prune(
    backend: Backend,
    key: MasterKey,
    pack_size: int,
    options: PruneOptions,
    *,
    on_progress: OnProgress | None = None,
    refresh: Callable[[], None] | None = None,
    clock: Callable[[], int] = time.time_ns,
) -> PruneStats:
    """Run prune; see the module's docstring.  ``on_progress`` follows its phases:
    "loading index files", "marking snapshots" (items), "repacking" (bytes of packs),
    "removing packs" (items); ``refresh()`` is called often, to keep the caller's lock
    fresh."""
    stats = PruneStats(dry_run=options.dry_run)
    progress = on_progress or (lambda _event: None)
    keep_fresh = refresh or (lambda: None)

    # 1. Snapshots, then the index.
    roots: list[tuple[Id, str]] = []
    for info in backend.list(FileType.SNAPSHOT):
        handle = Handle(FileType.SNAPSHOT, info.name)
        try:
            data = backend.load(handle)
            if file_id(data).hex != info.name:
                raise IntegrityError("content does not match its name")
            snap = decode_snapshot(key, data, str(handle))
        except (IntegrityError, InputError) as exc:
            # A snapshot that cannot be read may use anything: nothing can be freed.
            raise _Stop(
                f"prune stopped, nothing changed: {handle} cannot be read ({exc}); "
                "run check, then forget that snapshot"
            ) from None
        roots.append((snap.tree, info.name))
    stats.snapshots = len(roots)
    index_names = [i.name for i in backend.list(FileType.INDEX) if is_hex_id(i.name)]
    listed = {i.name: i for i in backend.list(FileType.PACK) if is_hex_id(i.name)}
    superseded: set[str] = set()
    entries: dict[str, int] = {}
    for name in index_names:
        supersedes, entries[name] = _supersedes_and_entries(backend, key, name, listed)
        superseded.update(i.hex for i in supersedes)
    live = [n for n in index_names if n not in superseded]
    index = MarkIndex(expected=sum(entries[n] for n in live))
    for number, name in enumerate(live):
        for pack in _load_index(backend, key, name).packs:
            if pack.id.hex in listed:
                index.add_pack(pack.id, pack.size, pack.raw_entries)
        progress(
            Progress(phase="loading index files", items_done=number + 1, items_total=len(live))
        )
    stats.blobs = len(index)
    stats.packs = index.pack_count

    # 2. Mark.
    used = bytearray(len(index))
    for number, (tree, snap_name) in enumerate(roots):
        stats.trees += _mark(backend, key, index, used, tree, snap_name, keep_fresh)
        progress(Progress(phase="marking snapshots", items_done=number + 1, items_total=len(roots)))
    stats.blobs_used = sum(used)

    # 3. Plan.
    used_bytes, used_count = _usage(index, used)
    pack_ids = [p for p, _ in index.iter_packs()]
    sizes = [s for _, s in index.iter_packs()]
    remove: set[int] = set()
    candidates: list[tuple[float, int, int]] = []  # (-unused ratio, number, unused)
    for number, size in enumerate(sizes):
        stats.size += size
        stats.used += used_bytes[number]
        if used_count[number] == 0:
            remove.add(number)
            continue
        unused = size - used_bytes[number] - _overhead(used_count[number])
        stats.unused_before += max(unused, 0)
        if unused > 0:
            candidates.append((-unused / size, number, unused))
    stats.unused_before += sum(sizes[n] for n in remove)
    limit = options.max_unused_percent
    allowed = float("inf") if limit >= 100 else stats.used * limit / (100 - limit)
    unused_left = stats.unused_before - sum(sizes[n] for n in remove)
    repack: list[int] = []
    budget = options.max_repack_bytes
    for _, number, unused in sorted(candidates):
        if unused_left <= allowed:
            break
        if budget is not None and sizes[number] > budget:
            continue
        repack.append(number)
        unused_left -= unused
        if budget is not None:
            budget -= sizes[number]
    stats.unused_after = unused_left
    stats.packs_removed = len(remove)
    stats.packs_repacked = len(repack)
    indexed = set(pack_ids)
    unindexed: list[FileInfo] = []
    now = clock()
    for name, info in listed.items():
        if Id.from_hex(name) in indexed:
            continue
        if info.mtime_ns is not None and now - info.mtime_ns > options.unindexed_grace_ns:
            unindexed.append(info)
        else:
            stats.unindexed_kept += 1
    stats.unindexed_removed = len(unindexed)
    doomed = {pack_ids[n] for n in remove} | {pack_ids[n] for n in repack}
    freed = sum(sizes[n] for n in remove) + sum(sizes[n] for n in repack)
    freed += sum(i.size for i in unindexed)
    if options.dry_run:
        stats.bytes_repacked = sum(used_bytes[n] for n in repack)
        stats.blobs_repacked = sum(used_count[n] for n in repack)
        # The new packs will hold what is copied, with headers of their own.
        stats.freed = freed - stats.bytes_repacked
        if stats.blobs_repacked:
            stats.freed -= _overhead(stats.blobs_repacked)
        return stats

    # 4. Repacked packs, then the new index.
    # The new packs are indexed as they accumulate, in files that supersede nothing
    # (their blobs are then listed twice, which is harmless), so that their entries are
    # never all held: a prune that repacks everything would hold 48 bytes a blob.
    early: list[str] = []
    new_sizes: list[int] = []

    def index_new(records: list[PackRecord]) -> None:
        stats.new_packs.extend(r.id.hex for r in records)
        new_sizes.extend(r.size for r in records)
        data = encode_index(key, IndexFile(tuple(records)))
        name = file_id(data).hex
        backend.save(Handle(FileType.INDEX, name), io.BytesIO(data))
        early.append(name)

    sink = _PackSink(backend, key, pack_size, index_new)
    try:
        total = sum(sizes[n] for n in repack)
        done = 0
        for number in repack:
            copied, count = _repack(backend, key, index, used, pack_ids[number], number, sink)
            stats.bytes_repacked += copied
            stats.blobs_repacked += count
            done += sizes[number]
            keep_fresh()
            progress(Progress(done, total, phase="repacking"))
        sink.finish_all()
    finally:
        sink.close()
    stats.new_packs.extend(r.id.hex for r in sink.records)
    freed -= sum(new_sizes) + sum(r.size for r in sink.records)
    stats.freed = freed
    written = _write_index(backend, key, index_names, doomed, listed, sink.records, keep_fresh)
    stats.index_files_written = len(written) + len(early)

    # 5. Only now remove what the new index no longer names.
    for name in index_names:
        if name not in written:
            backend.remove(Handle(FileType.INDEX, name))
            stats.index_files_removed += 1
    gone = sorted(p.hex for p in doomed) + sorted(i.name for i in unindexed)
    for number, name in enumerate(gone):
        backend.remove(Handle(FileType.PACK, name))
        keep_fresh()
        progress(
            Progress(
                phase="removing packs",
                items_done=number + 1,
                items_total=len(gone),
                finished=number + 1 == len(gone),
            )
        )
    return stats


def _supersedes_and_entries(
    backend: Backend, key: MasterKey, name: str, listed: dict[str, FileInfo]
) -> tuple[tuple[Id, ...], int]:
    """What an index file supersedes, and how many entries it has for packs that exist
    (so that the mark index is sized once)."""
    index_file = _load_index(backend, key, name)
    return index_file.supersedes, sum(p.count for p in index_file.packs if p.id.hex in listed)


def _load_index(backend: Backend, key: MasterKey, name: str) -> IndexFile:
    try:
        return load_index_file(backend, key, name)
    except IntegrityError as exc:
        raise _Stop(f"prune stopped, nothing changed: {exc}; run repair index first") from None


def _overhead(count: int) -> int:
    return _PACK_OVERHEAD + _ENTRY_OVERHEAD * count


def _mark(
    backend: Backend,
    key: MasterKey,
    index: MarkIndex,
    used: bytearray,
    root: Id,
    snap_name: str,
    keep_fresh: Callable[[], None],
) -> int:
    """Mark every blob the tree ``root`` reaches; returns the trees read.  A tree
    marked already was walked already (with all it reaches)."""
    stack = [root]
    trees = 0
    while stack:
        tree_id = stack.pop()
        row = index.row(BlobType.TREE, tree_id)
        if row < 0:
            raise _missing(BlobType.TREE, tree_id, snap_name)
        if used[row]:
            continue
        used[row] = 1
        found = index.tree_location(tree_id)
        assert found is not None
        pack_id, entry = found
        handle = Handle(FileType.PACK, pack_id.hex)
        try:
            sealed = backend.load(handle, entry.offset, entry.length)
            tree = decode_tree(open_blob(key, entry, sealed, str(handle)), f"tree {tree_id}")
        except (IntegrityError, InputError) as exc:
            raise _Stop(
                f"prune stopped, nothing changed: tree {tree_id} of snapshots/{snap_name} "
                f"cannot be read ({exc}); run check"
            ) from None
        trees += 1
        if trees % 256 == 0:
            keep_fresh()
        for node in tree.nodes:
            if node.subtree is not None:
                stack.append(node.subtree)
            for blob_id in node.content:
                data_row = index.row(BlobType.DATA, blob_id)
                if data_row < 0:
                    raise _missing(BlobType.DATA, blob_id, snap_name)
                used[data_row] = 1
    return trees


def _missing(blob_type: BlobType, blob_id: Id, snap_name: str) -> _Stop:
    return _Stop(
        f"prune stopped, nothing changed: {blob_type.name.lower()} blob {blob_id}, used "
        f"by snapshots/{snap_name}, is in no pack the repository has; run check, then "
        "repair index or repair packs"
    )


def _usage(index: MarkIndex, used: bytearray) -> tuple[array[int], array[int]]:
    """Per pack number: the sealed bytes and the number of its used blobs."""
    used_bytes = array("Q", bytes(8 * index.pack_count))
    used_count = array("Q", bytes(8 * index.pack_count))
    for pack_number, length, row in index.iter_locations():
        if used[row]:
            used_bytes[pack_number] += length
            used_count[pack_number] += 1
    return used_bytes, used_count


class _PackSink:
    """Writes blobs into new packs of one type each, as the blob store would."""

    def __init__(
        self,
        backend: Backend,
        key: MasterKey,
        pack_size: int,
        on_index: Callable[[list[PackRecord]], None],
    ) -> None:
        self.backend, self.key, self.pack_size = backend, key, pack_size
        self.writers: dict[BlobType, PackWriter] = {}
        # Saved packs not yet in an index file; ``on_index`` is handed them (and they
        # are forgotten) once they hold INDEX_MAX_ENTRIES entries.
        self.records: list[PackRecord] = []
        self.on_index = on_index

    def add(self, blob_type: BlobType, blob_id: Id, plaintext: bytes, compress: bool) -> None:
        writer = self.writers.get(blob_type)
        if writer is None:
            writer = self.writers[blob_type] = PackWriter(self.key, version=PACK_VERSION)
        writer.add(blob_type, blob_id, plaintext, compress)
        if writer.size >= self.pack_size:
            self.finish(blob_type)

    def finish(self, blob_type: BlobType) -> None:
        writer = self.writers.pop(blob_type, None)
        if writer is None:
            return
        try:
            if len(writer):
                pack_id, stream, entries = writer.finish()
                self.backend.save(Handle(FileType.PACK, pack_id.hex), stream)
                self.records.append(PackRecord(pack_id, writer.size, entries))
                if sum(r.count for r in self.records) >= INDEX_MAX_ENTRIES:
                    self.on_index(self.records)
                    self.records = []
        finally:
            writer.close()

    def finish_all(self) -> None:
        for blob_type in list(self.writers):
            self.finish(blob_type)

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()


def _repack(
    backend: Backend,
    key: MasterKey,
    index: MarkIndex,
    used: bytearray,
    pack_id: Id,
    number: int,
    sink: _PackSink,
) -> tuple[int, int]:
    """Copy the used blobs the index locates in this pack into new packs; each is
    authenticated and checked against its id on the way (a damaged one stops prune
    before anything is removed).  A blob copied is marked 2 in ``used``, so that a
    second copy in the same pack is not copied again.  Returns (sealed bytes copied,
    blobs copied)."""
    handle = Handle(FileType.PACK, pack_id.hex)
    data = backend.load(handle)
    where = str(handle)
    header_len, _ = decode_trailer(data[-TRAILER_SIZE:], len(data), where)
    end = len(data) - TRAILER_SIZE
    entries = decode_pack_header(key, data[end - header_len : end], data[end:], len(data), where)
    copied = count = 0
    for entry in entries:
        row = index.row(entry.type, entry.id)
        if row < 0 or used[row] != 1 or index.pack_number(row) != number:
            continue  # unused, copied already, or the copy the index uses is elsewhere
        used[row] = 2
        try:
            plain = open_blob(key, entry, data[entry.offset : entry.offset + entry.length], where)
        except IntegrityError as exc:
            raise _Stop(
                f"prune stopped before removing anything: {exc}; run check --read-data, "
                "then repair packs"
            ) from None
        sink.add(entry.type, entry.id, plain, bool(entry.flags & FLAG_ZSTD))
        copied += entry.length
        count += 1
    return copied, count


def _write_index(
    backend: Backend,
    key: MasterKey,
    old_names: list[str],
    doomed: set[Id],
    listed: dict[str, FileInfo],
    new_records: list[PackRecord],
    keep_fresh: Callable[[], None],
) -> set[str]:
    """Write the index of every pack kept and the new ones, in files of at most
    ``INDEX_MAX_ENTRIES`` entries; the last supersedes every old file.  Returns the
    names written."""
    written: set[str] = set()
    batch: list[PackRecord] = []
    entries = 0
    emitted: set[Id] = set()

    def save(records: list[PackRecord], supersedes: tuple[Id, ...]) -> None:
        data = encode_index(key, IndexFile(tuple(records), supersedes))
        name = file_id(data)
        backend.save(Handle(FileType.INDEX, name.hex), io.BytesIO(data))
        written.add(name.hex)
        keep_fresh()

    def add(pack: PackRecord) -> None:
        nonlocal batch, entries
        batch.append(pack)
        entries += pack.count
        if entries >= INDEX_MAX_ENTRIES:
            save(batch, ())
            batch, entries = [], 0

    superseded = {i.hex for n in old_names for i in _load_index(backend, key, n).supersedes}
    for name in old_names:
        if name in superseded:
            continue
        for pack in _load_index(backend, key, name).packs:
            if pack.id in doomed or pack.id in emitted or pack.id.hex not in listed:
                continue
            emitted.add(pack.id)
            add(pack)
    for pack in new_records:
        add(pack)
    # The last file, however few entries it has left, supersedes every old one.
    save(batch, tuple(Id.from_hex(n) for n in old_names))
    return written
