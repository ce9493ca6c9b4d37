"""The deduplicating blob store.

Write ordering (the format's restartability rules): a pack is saved completely before
any index file names it; index deltas are saved before anything (a tree or snapshot
written later) depends on them.  A crash therefore leaves at worst packs that no
index names; they are ignored, and their blobs are written again by the next run.
"""

from __future__ import annotations

import io

from cipherdump.errors import CorruptError, IntegrityError
from cipherdump.repo.backends.base import Backend, FileType, Handle
from cipherdump.repo.crypto import MasterKey, file_id
from cipherdump.repo.ids import BlobType, Id
from cipherdump.repo.index import IndexFile, PackRecord, decode_index, encode_index
from cipherdump.repo.memindex import MemoryIndex
from cipherdump.repo.pack import PackWriter, open_blob

INDEX_EVERY_PACKS = 16
INDEX_MAX_ENTRIES = 65536


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
        index_every_packs: int = INDEX_EVERY_PACKS,
        index_max_entries: int = INDEX_MAX_ENTRIES,
        spool_dir: str | None = None,
    ) -> None:
        self._backend = backend
        self._key = key
        self._pack_size = pack_size
        self._index_every_packs = index_every_packs
        self._index_max_entries = index_max_entries
        self._spool_dir = spool_dir
        self._writers: dict[BlobType, PackWriter] = {}
        self._unindexed: list[PackRecord] = []
        self._index: MemoryIndex | None = None

    @property
    def index(self) -> MemoryIndex:
        """The index of every blob in an index file or a pack saved by this store."""
        if self._index is None:
            index = MemoryIndex()
            files = {
                info.name: load_index_file(self._backend, self._key, info.name)
                for info in self._backend.list(FileType.INDEX)
            }
            superseded = {i.hex for f in files.values() for i in f.supersedes}
            for name, index_file in files.items():
                if name not in superseded:
                    for pack in index_file.packs:
                        index.add_pack(pack.id, pack.size, pack.raw_entries)
            self._index = index
        return self._index

    def has(self, blob_type: BlobType, blob_id: Id) -> bool:
        writer = self._writers.get(blob_type)
        if writer is not None and writer.get(blob_id) is not None:
            return True
        return self.index.has(blob_type, blob_id)

    def save(self, blob_type: BlobType, data: bytes, *, compress: bool) -> tuple[Id, bool]:
        """Store a blob unless present; returns (id, whether it was new)."""
        blob_id = self._key.blob_id(data)
        if self.has(blob_type, blob_id):
            return blob_id, False
        writer = self._writers.get(blob_type)
        if writer is None:
            writer = self._writers[blob_type] = PackWriter(self._key, self._spool_dir)
        writer.add(blob_type, blob_id, data, compress)
        if writer.size >= self._pack_size:
            self._flush_pack(blob_type)
        return blob_id, True

    def load(self, blob_type: BlobType, blob_id: Id) -> bytes:
        writer = self._writers.get(blob_type)
        entry = writer.get(blob_id) if writer is not None else None
        if writer is not None and entry is not None:
            return open_blob(self._key, entry, writer.read(entry), "the unfinished pack")
        found = self.index.lookup(blob_type, blob_id)
        if found is None:
            raise IntegrityError(f"{blob_type.name.lower()} blob {blob_id} is not in the index")
        pack_id, entry = found
        handle = Handle(FileType.PACK, pack_id.hex)
        sealed = self._backend.load(handle, entry.offset, entry.length)
        return open_blob(self._key, entry, sealed, str(handle))

    def flush(self) -> None:
        """Save every unfinished pack, data before trees, then the index delta."""
        for blob_type in (BlobType.DATA, BlobType.TREE):
            if blob_type in self._writers:
                self._flush_pack(blob_type)
        self._write_index()

    def close(self) -> None:
        """Discard unfinished packs (what :meth:`flush` did not save is lost)."""
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    def _flush_pack(self, blob_type: BlobType) -> None:
        writer = self._writers.pop(blob_type)
        try:
            if not len(writer):
                return
            pack_id, stream, entries = writer.finish()
            size = writer.size
            self._backend.save(Handle(FileType.PACK, pack_id.hex), stream)
        finally:
            writer.close()
        record = PackRecord.of(pack_id, size, entries)
        self.index.add_pack(record.id, record.size, record.raw_entries)
        self._unindexed.append(record)
        pending = sum(r.count for r in self._unindexed)
        if len(self._unindexed) >= self._index_every_packs or pending >= self._index_max_entries:
            self._write_index()

    def _write_index(self) -> None:
        if not self._unindexed:
            return
        data = encode_index(self._key, IndexFile(tuple(self._unindexed)))
        self._backend.save(Handle(FileType.INDEX, file_id(data).hex), io.BytesIO(data))
        self._unindexed.clear()
