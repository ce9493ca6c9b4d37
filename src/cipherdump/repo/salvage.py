"""Salvaging damaged packs (``cipherdump repair packs``).

Deduplication trusts the index: a blob the index names is never stored again.  So a
pack damaged in place (a flipped byte, cut short, replaced by another file) would keep
every later backup pointing at the broken copy.  This reads every pack in full and
authenticates every blob (as ``check --read-data`` does).  The readable blobs of a
damaged pack are copied into new packs; then one new index file lists every whole
pack and the new ones, and supersedes every index file there was; only once both
are durably saved are the old index files and the damaged packs removed.  Blobs
with no readable copy left are dropped from the index, so they count as absent and
the next backup stores again whatever of them is still on its source.

Order of the writes (format §13): new packs, then the index file naming them, then
removals.  Interrupted at any point the repository stays usable: before the index is
saved the new packs are merely unreferenced; after it, the old index files are
superseded and the damaged packs named by no index.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from cipherdump.errors import CipherdumpError
from cipherdump.progress import OnProgress, Progress
from cipherdump.repo.backends.base import Backend, FileInfo, FileType, Handle
from cipherdump.repo.crypto import MasterKey
from cipherdump.repo.ids import BlobType, Id, is_hex_id
from cipherdump.repo.index import PackRecord
from cipherdump.repo.pack import (
    FLAG_ZSTD,
    PACK_VERSION,
    PackEntry,
    PackWriter,
    iter_pack,
    open_blob,
    pack_name,
)
from cipherdump.repo.repair import indexed_packs, replace_index


@dataclass
class PackRepairReport:
    packs_read: int = 0
    damaged: list[str] = field(default_factory=list)  # one line per damaged pack (named)
    salvaged: int = 0  # blobs of damaged packs copied into new packs
    lost: list[tuple[BlobType, Id]] = field(default_factory=list)  # no readable copy left
    new_packs: list[Id] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # damaged packs removed
    index_id: Id | None = None
    replaced: int = 0  # index files superseded and removed
    moved: list[str] = field(default_factory=list)  # misplaced packs (put back, or not)


class _Salvager:
    """Copies blobs into new packs of one type each, as the blob store would."""

    def __init__(self, backend: Backend, key: MasterKey, pack_size: int, dry_run: bool) -> None:
        self.backend, self.key, self.pack_size, self.dry_run = backend, key, pack_size, dry_run
        self.writers: dict[BlobType, PackWriter] = {}
        self.records: list[PackRecord] = []
        self.done: set[tuple[BlobType, Id]] = set()

    def add(self, entry: PackEntry, plaintext: bytes) -> None:
        if (entry.type, entry.id) in self.done:
            return
        self.done.add((entry.type, entry.id))
        if self.dry_run:
            return
        writer = self.writers.get(entry.type)
        if writer is None:
            writer = self.writers[entry.type] = PackWriter(self.key, version=PACK_VERSION)
        writer.add(entry.type, entry.id, plaintext, bool(entry.flags & FLAG_ZSTD))
        if writer.size >= self.pack_size:
            self.finish(entry.type)

    def finish(self, blob_type: BlobType) -> None:
        writer = self.writers.pop(blob_type, None)
        if writer is None:
            return
        try:
            if len(writer):
                pack_id, stream, entries = writer.finish()
                self.backend.save(Handle(FileType.PACK, pack_id.hex), stream)
                self.records.append(PackRecord(pack_id, writer.size, entries))
        finally:
            writer.close()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()
        self.writers.clear()


def repair_packs(
    backend: Backend,
    key: MasterKey,
    pack_size: int,
    *,
    dry_run: bool = False,
    on_progress: OnProgress | None = None,
) -> PackRepairReport:
    """Read every pack; salvage what is readable of the damaged ones, index the rest,
    remove the damaged packs (see the module's docstring).  ``dry_run`` reads and
    reports only.  ``on_progress`` counts bytes of packs read.  The
    caller holds the repository's lock.  A backend error ends it before anything is
    removed (a pack that cannot be read now is not known to be damaged)."""
    report = PackRepairReport()
    misplaced: Callable[[], list[str]] | None = getattr(backend, "misplaced", None)
    put_back: Callable[[str], bool] | None = getattr(backend, "put_back", None)
    for path in misplaced() if misplaced is not None else ():
        if dry_run or put_back is None:
            report.moved.append(f"{path}: in the wrong folder (would be moved back)")
        elif put_back(path):
            report.moved.append(f"{path}: in the wrong folder, moved back")
        else:
            report.moved.append(f"{path}: in the wrong folder, and a file is where it belongs")
    old = [info.name for info in backend.list(FileType.INDEX)]
    known = indexed_packs(backend, key, old)
    packs = sorted(
        (info for info in backend.list(FileType.PACK) if is_hex_id(info.name)),
        key=lambda i: i.name,
    )
    whole: list[PackRecord] = []
    damaged: list[Id] = []
    wanted: set[tuple[BlobType, Id]] = set()  # blobs of damaged or lost packs
    kept: set[tuple[BlobType, Id]] = set()  # blobs of whole packs
    salvager = _Salvager(backend, key, pack_size, dry_run)
    try:
        done, total = 0, sum(info.size for info in packs)
        for info in packs:
            record, entries, why = _read_pack(backend, key, info, known.get(Id.from_hex(info.name)))
            report.packs_read += 1
            if record is not None:
                whole.append(record)
                kept.update((e.type, e.id) for e in record.entries())
            else:
                damaged.append(Id.from_hex(info.name))
                saved = 0
                for entry, plaintext in entries:
                    wanted.add((entry.type, entry.id))
                    if plaintext is not None:
                        salvager.add(entry, plaintext)
                        saved += 1
                total_known = len(entries)
                report.damaged.append(
                    f"{why}; {saved} of {total_known} blobs readable"
                    + ("" if entries else " (its header and index entries are unreadable)")
                )
            done += info.size
            if on_progress is not None:
                on_progress(Progress(done, total, finished=done == total))
        present = {Id.from_hex(info.name) for info in packs}
        for pack_id, record in known.items():
            if pack_id not in present:  # named by an index file, lost outside cipherdump
                report.damaged.append(f"{Handle(FileType.PACK, pack_id.hex)}: missing")
                wanted.update((e.type, e.id) for e in record.entries())
        for blob_type in (BlobType.DATA, BlobType.TREE):
            salvager.finish(blob_type)
    finally:
        salvager.close()
    report.salvaged = len(salvager.done - kept)
    report.lost = sorted(wanted - kept - salvager.done, key=lambda b: (b[0], b[1].raw))
    report.new_packs = [r.id for r in salvager.records]
    if dry_run or not report.damaged:
        return report
    # Whole packs and the new ones, in one index file that supersedes every other.
    report.index_id, report.replaced = replace_index(backend, key, (*whole, *salvager.records), old)
    for pack_id in damaged:
        handle = Handle(FileType.PACK, pack_id.hex)
        backend.remove(handle)
        report.removed.append(str(handle))
    return report


def _read_pack(
    backend: Backend, key: MasterKey, info: FileInfo, indexed: PackRecord | None
) -> tuple[PackRecord | None, list[tuple[PackEntry, bytes | None]], str]:
    """(the pack's record if it is whole, else None; for a damaged pack each blob it
    is known to hold, from its header or else the index, with the plaintext if it
    opens; why it is damaged)."""
    handle = Handle(FileType.PACK, info.name)
    where = str(handle)
    data = backend.load(handle)
    entries: list[PackEntry] | None = None
    problems: list[str] = []
    try:
        if pack_name(data, where).hex != info.name:
            problems.append("content does not match its name")
    except CipherdumpError as exc:
        problems.append(str(exc))
    try:
        entries = [entry for entry, _ in iter_pack(key, data, where)]
    except CipherdumpError as exc:
        problems.append(f"header: {exc}")
    if indexed is not None and indexed.size != len(data):
        problems.append(f"is {len(data)} bytes, the index says {indexed.size}")
    if entries is None and indexed is not None:
        try:
            entries = list(indexed.entries(where))
        except CipherdumpError:
            entries = None
    opened: list[tuple[PackEntry, bytes | None]] = []
    bad = 0
    for entry in entries or []:
        plaintext: bytes | None = None
        if entry.offset + entry.length <= len(data):
            sealed = memoryview(data)[entry.offset : entry.offset + entry.length]
            try:
                plaintext = open_blob(key, entry, sealed, where)
            except CipherdumpError:
                plaintext = None
        bad += plaintext is None
        opened.append((entry, plaintext))
    if bad:
        problems.append(f"{bad} damaged blobs")
    if not problems and entries is not None:
        raw = b"".join(e.encode() for e in entries)
        return PackRecord(Id.from_hex(info.name), len(data), raw), [], ""
    return None, opened, f"{where}: damaged: {'; '.join(problems)}"
