"""The local cache of a remote repository (repo/cache.py): index files, snapshots and
tree packs are read once, used while their bytes check, and rebuilt when damaged."""

from __future__ import annotations

from pathlib import Path

from cipherdump.repo import BlobType, FileType, KdfParams, MemoryBackend, Node, Repository, Tree
from cipherdump.repo.backends.base import Handle
from cipherdump.repo.cache import CachingBackend, default_cache_root
from cipherdump.repo.snapshot import Snapshot

KDF = KdfParams.insecure_for_tests()


class Counting(MemoryBackend):
    read_ahead = 1 << 20

    def __init__(self) -> None:
        super().__init__()
        self.loads: dict[FileType, int] = {}

    def load(self, handle: Handle, offset: int = 0, length: int | None = None) -> bytes:
        self.loads[handle.type] = self.loads.get(handle.type, 0) + 1
        return super().load(handle, offset, length)


def _repository(tmp_path: Path) -> tuple[Counting, str]:
    inner = Counting()
    with Repository.init(CachingBackend(inner, tmp_path / "cache"), b"pw", kdf=KDF) as repo:
        data = repo.save_blob(BlobType.DATA, b"x" * 5000)
        tree = repo.save_tree(Tree([Node(b"f", "file", attrs={}, content=(data,))]))
        repo.save_snapshot(Snapshot(tree=tree, time_ns=1, hostname="h"))
        repo_id = repo.config.repo_id.hex
    return inner, repo_id


def _session(inner: Counting, tmp_path: Path) -> CachingBackend:
    backend = CachingBackend(inner, tmp_path / "cache")
    with Repository.open(backend, b"pw", lock=False) as repo:
        ((_, snap),) = repo.list_snapshots()
        assert repo.load_tree(snap.tree).nodes[0].name == b"f"
    return backend


def test_a_second_run_reads_nothing_it_has(tmp_path: Path) -> None:
    inner, repo_id = _repository(tmp_path)
    folder = tmp_path / "cache" / repo_id
    assert len(list((folder / "index").iterdir())) == 1  # kept when saved
    assert len(list((folder / "snapshots").iterdir())) == 1
    inner.loads.clear()
    _session(inner, tmp_path)
    assert FileType.INDEX not in inner.loads and FileType.SNAPSHOT not in inner.loads
    assert inner.loads[FileType.PACK] == 1  # the tree pack, once, whole
    inner.loads.clear()
    backend = _session(inner, tmp_path)
    assert FileType.PACK not in inner.loads
    assert backend.hits == 3
    assert oct(folder.stat().st_mode & 0o777) == "0o700"


def test_damaged_cache_files_are_rebuilt(tmp_path: Path) -> None:
    inner, repo_id = _repository(tmp_path)
    _session(inner, tmp_path)
    folder = tmp_path / "cache" / repo_id
    files = [p for sub in ("index", "snapshots", "data") for p in (folder / sub).iterdir()]
    assert len(files) == 3
    for path in files:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    inner.loads.clear()
    _session(inner, tmp_path)  # right answers in spite of the cache
    assert inner.loads[FileType.INDEX] == 1 and inner.loads[FileType.SNAPSHOT] == 1
    assert inner.loads[FileType.PACK] >= 1
    for path in files[:2]:  # fetched again and kept
        assert inner.files[Handle(FileType(path.parent.name), path.name)] == path.read_bytes()
    inner.loads.clear()
    _session(inner, tmp_path)
    assert FileType.INDEX not in inner.loads and FileType.SNAPSHOT not in inner.loads


def test_files_gone_from_the_repository_leave_the_cache(tmp_path: Path) -> None:
    inner, repo_id = _repository(tmp_path)
    _session(inner, tmp_path)
    for handle in [h for h in inner.files if h.type in (FileType.SNAPSHOT, FileType.PACK)]:
        del inner.files[handle]
    backend = CachingBackend(inner, tmp_path / "cache")
    backend.attach_cache(repo_id)
    for file_type in (FileType.SNAPSHOT, FileType.PACK):
        assert list(backend.list(file_type)) == []
        assert list((tmp_path / "cache" / repo_id / file_type.value).iterdir()) == []


def test_cache_root() -> None:
    assert default_cache_root({"HOME": "/h"}) == Path("/h/.cache/cipherdump")
    assert default_cache_root({"HOME": "/h", "XDG_CACHE_HOME": "/x"}) == Path("/x/cipherdump")
    assert default_cache_root({"CIPHERDUMP_CACHE_DIR": "/c", "HOME": "/h"}) == Path("/c")
    assert default_cache_root({"CIPHERDUMP_NO_CACHE": "1", "HOME": "/h"}) is None
