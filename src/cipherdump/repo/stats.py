"""Repository statistics (``cipherdump stats``): sizes in total and per snapshot.

For a set of snapshots (one, or all of them):

* ``logical``: the size before deduplication, every file's chunks counted each time a
  file (or an unchanged directory shared by two snapshots) uses them;
* ``blobs``, ``raw``: the distinct blobs they use, and their plaintext size (after
  deduplication, before compression);
* ``stored``: the sealed size of those blobs (compressed, encrypted, as stored);

so ``logical / raw`` is the deduplication ratio and ``raw / stored`` the compression
ratio.  The repository's totals add the packs: their number and size, and the bytes in
them no snapshot uses (what ``prune`` could free).  The walk keeps one byte a blob for
the marks and one integer a tree for the sizes of trees already walked.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cipherdump.errors import IntegrityError
from cipherdump.progress import OnProgress, Progress
from cipherdump.repo.backends.base import Backend, FileType, Handle
from cipherdump.repo.blobstore import load_index_file
from cipherdump.repo.crypto import MasterKey
from cipherdump.repo.ids import BlobType, Id, is_hex_id
from cipherdump.repo.memindex import MemoryIndex
from cipherdump.repo.pack import open_blob
from cipherdump.repo.tree import decode_tree


@dataclass
class Sizes:
    logical: int = 0
    blobs: int = 0
    raw: int = 0
    stored: int = 0

    def as_dict(self) -> dict[str, float | int]:
        return {
            "logical": self.logical,
            "blobs": self.blobs,
            "raw": self.raw,
            "stored": self.stored,
            "dedup_ratio": round(self.logical / self.raw, 3) if self.raw else 0,
            "compression_ratio": round(self.raw / self.stored, 3) if self.stored else 0,
        }


@dataclass
class RepoStats:
    total: Sizes = field(default_factory=Sizes)
    snapshots: list[tuple[Id, Sizes]] = field(default_factory=list)
    packs: int = 0
    pack_bytes: int = 0
    indexed_blobs: int = 0
    unused_bytes: int = 0  # pack bytes no snapshot (of those asked for) uses


def load_index(backend: Backend, key: MasterKey) -> MemoryIndex:
    """The index of every pack the backend has (index files read one at a time)."""
    names = [i.name for i in backend.list(FileType.INDEX) if is_hex_id(i.name)]
    present = {i.name for i in backend.list(FileType.PACK)}
    superseded: set[str] = set()
    files = []
    for name in names:
        try:
            index_file = load_index_file(backend, key, name)
        except IntegrityError:
            continue  # as every reader: passed over (check names it)
        superseded.update(i.hex for i in index_file.supersedes)
        files.append(name)
    index = MemoryIndex()
    for name in files:
        if name in superseded:
            continue
        for pack in load_index_file(backend, key, name).packs:
            if pack.id.hex in present:
                index.add_pack(pack.id, pack.size, pack.raw_entries)
    return index


class _Walker:
    def __init__(self, backend: Backend, key: MasterKey, index: MemoryIndex) -> None:
        self.backend, self.key, self.index = backend, key, index
        self.logical: dict[Id, int] = {}  # tree -> its logical size, once walked

    def walk(self, root: Id, marks: bytearray, sizes: Sizes) -> None:
        sizes.logical += self._tree(root, marks, sizes)

    def _count(self, row: int, marks: bytearray, sizes: Sizes) -> None:
        if not marks[row]:
            marks[row] = 1
            length, raw = self.index.sizes(row)
            sizes.blobs += 1
            sizes.raw += raw
            sizes.stored += length

    def _tree(self, tree_id: Id, marks: bytearray, sizes: Sizes) -> int:
        row = self.index.row(BlobType.TREE, tree_id)
        if row < 0:
            raise IntegrityError(f"tree {tree_id} is in no pack the repository has; run check")
        if marks[row]:
            return self.logical[tree_id]  # walked whole in this set already
        self._count(row, marks, sizes)
        found = self.index.lookup(BlobType.TREE, tree_id)
        assert found is not None
        pack_id, entry = found
        handle = Handle(FileType.PACK, pack_id.hex)
        sealed = self.backend.load(handle, entry.offset, entry.length)
        tree = decode_tree(open_blob(self.key, entry, sealed, str(handle)), f"tree {tree_id}")
        total = 0
        for node in tree.nodes:
            if node.subtree is not None:
                total += self._tree(node.subtree, marks, sizes)
            for blob_id in node.content:
                data_row = self.index.row(BlobType.DATA, blob_id)
                if data_row < 0:
                    raise IntegrityError(
                        f"data blob {blob_id} is in no pack the repository has; run check"
                    )
                total += self.index.sizes(data_row)[1]
                self._count(data_row, marks, sizes)
        self.logical[tree_id] = total
        return total


def repository_stats(
    backend: Backend,
    key: MasterKey,
    snapshots: list[tuple[Id, Id]],
    on_progress: OnProgress | None = None,
) -> RepoStats:
    """Sizes of each of ``snapshots`` ((snapshot id, root tree) pairs) and of them
    together, and of the packs; ``on_progress`` counts the snapshots walked (items)."""
    index = load_index(backend, key)
    walker = _Walker(backend, key, index)
    stats = RepoStats(indexed_blobs=len(index))
    all_marks = bytearray(len(index))
    for number, (sid, tree) in enumerate(snapshots):
        marks = bytearray(len(index))
        sizes = Sizes()
        walker.walk(tree, marks, sizes)
        stats.total.logical += sizes.logical
        stats.snapshots.append((sid, sizes))
        combined = int.from_bytes(all_marks, "little") | int.from_bytes(marks, "little")
        all_marks = bytearray(combined.to_bytes(len(index), "little"))
        if on_progress is not None:
            done, total = number + 1, len(snapshots)
            on_progress(
                Progress(
                    phase="walking snapshots",
                    items_done=done,
                    items_total=total,
                    finished=done == total,
                )
            )
    used_bytes = 0
    for pack_number, length, row in index.iter_locations():
        del pack_number
        if all_marks[row]:
            raw = index.sizes(row)[1]
            stats.total.blobs += 1
            stats.total.raw += raw
            stats.total.stored += length
            used_bytes += length + 48  # and its header entry
    for _, size in index.iter_packs():
        stats.packs += 1
        stats.pack_bytes += size
    stats.unused_bytes = max(stats.pack_bytes - used_bytes - 52 * stats.packs, 0)
    return stats
