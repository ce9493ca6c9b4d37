"""Rebuilding the index from the packs themselves (``cipherdump repair index``).

The index only repeats what every pack's own header says (format §7, §8).  When index
files are lost or damaged, or name packs that are gone, it can be made again: each
pack's sealed header is read and authenticated, and its name checked against it (the
BLAKE3 of header and trailer in version 2, of the whole pack in version 1); then one
new index file lists every pack found and supersedes every index file there was, and
once it is saved those are removed.  Interrupted before that, the old files are
superseded, and readers pass over them even where they are damaged.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field

from cipherdump.errors import CorruptError, IntegrityError
from cipherdump.progress import OnProgress, Progress
from cipherdump.repo.backends.base import Backend, FileInfo, FileType, Handle
from cipherdump.repo.blobstore import load_index_file
from cipherdump.repo.crypto import MasterKey, file_id
from cipherdump.repo.ids import Id, is_hex_id
from cipherdump.repo.index import IndexFile, PackRecord, encode_index
from cipherdump.repo.pack import TRAILER_SIZE, decode_pack_header, decode_trailer, pack_name


@dataclass
class RepairReport:
    packs: int = 0  # indexed
    blobs: int = 0  # indexed
    damaged: list[str] = field(default_factory=list)  # one line per damaged pack (named)
    replaced: int = 0  # index files superseded and removed
    index_id: Id | None = None  # the new index file


def rebuild_index(
    backend: Backend, key: MasterKey, on_progress: OnProgress | None = None
) -> RepairReport:
    """Index every readable pack in one new index file that replaces all others.
    ``on_progress`` counts bytes of packs done.  The caller holds
    the repository's lock."""
    report = RepairReport()
    old = [info.name for info in backend.list(FileType.INDEX)]
    known = indexed_packs(backend, key, old)
    packs = [info for info in backend.list(FileType.PACK) if is_hex_id(info.name)]
    records = []
    done, total = 0, sum(info.size for info in packs)
    for info in packs:
        where = str(Handle(FileType.PACK, info.name))
        try:
            records.append(_pack_record(backend, key, info, where))
        except (IntegrityError, CorruptError) as exc:
            # (A backend error ends the repair before anything is written: a pack that
            # cannot be read now is not damaged, and leaving it out would lose it.)
            before = known.get(Id.from_hex(info.name))
            if before is not None and before.size == info.size:
                # Its blobs may well be whole: the old index still says where they are.
                records.append(before)
                report.damaged.append(f"{exc} (kept as the old index lists it)")
            else:
                report.damaged.append(f"{exc} (left out of the index)")
        done += info.size
        if on_progress is not None:
            on_progress(Progress(done, total, finished=done == total))
    report.index_id, report.replaced = replace_index(backend, key, records, old)
    report.packs = len(records)
    report.blobs = sum(r.count for r in records)
    return report


def replace_index(
    backend: Backend, key: MasterKey, records: Sequence[PackRecord], old: list[str]
) -> tuple[Id, int]:
    """Save one index file of ``records`` that supersedes the index files ``old``, then
    remove those: saved first, so a reader interrupted between the two steps finds the
    new file and passes over what it supersedes.  Returns its id and how many went."""
    supersedes = tuple(Id.from_hex(name) for name in old if is_hex_id(name))
    data = encode_index(key, IndexFile(tuple(records), supersedes))
    index_id = file_id(data)
    backend.save(Handle(FileType.INDEX, index_id.hex), io.BytesIO(data))
    replaced = 0
    for name in old:
        if name != index_id.hex:
            backend.remove(Handle(FileType.INDEX, name))
            replaced += 1
    return index_id, replaced


def indexed_packs(backend: Backend, key: MasterKey, names: list[str]) -> dict[Id, PackRecord]:
    """What the index files that can still be read say of each pack."""
    out: dict[Id, PackRecord] = {}
    for name in names:
        try:
            index_file = load_index_file(backend, key, name)
        except (IntegrityError, CorruptError):
            continue
        for pack in index_file.packs:
            out.setdefault(pack.id, pack)
    return out


def _pack_record(backend: Backend, key: MasterKey, info: FileInfo, where: str) -> PackRecord:
    handle = Handle(FileType.PACK, info.name)
    trailer = backend.load(handle, max(info.size - TRAILER_SIZE, 0), min(info.size, TRAILER_SIZE))
    header_len, version = decode_trailer(trailer, info.size, where)
    if version == 1:
        named = backend.load(handle)  # named by the BLAKE3 of all of it
    else:
        named = backend.load(handle, info.size - TRAILER_SIZE - header_len, header_len)
        named += trailer
    pack_id = Id.from_hex(info.name)
    if pack_name(named, where) != pack_id:
        raise IntegrityError(f"{where}: content does not match its name")
    end = len(named) - TRAILER_SIZE
    entries = decode_pack_header(key, named[end - header_len : end], trailer, info.size, where)
    return PackRecord(pack_id, info.size, b"".join(e.encode() for e in entries))
