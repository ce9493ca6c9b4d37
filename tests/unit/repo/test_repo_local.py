"""Local-backend specifics: file modes, temporary files, creation rules."""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from cipherdump.errors import BackendError
from cipherdump.repo import BlobType, KdfParams, LocalBackend, Repository, Snapshot, Tree
from cipherdump.repo.backends.base import FileType, Handle, ObjectMissing

KDF = KdfParams.insecure_for_tests()


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_modes_are_0600_and_0700(tmp_path: Path, permissive_umask: None) -> None:
    root = tmp_path / "repo"
    backend = LocalBackend.create(root)
    with Repository.init(backend, b"pw", kdf=KDF, pack_size=4096) as repo:
        for i in range(50):
            repo.save_blob(BlobType.DATA, os.urandom(300) + bytes([i]))
        repo.save_snapshot(Snapshot(repo.save_tree(Tree()), time_ns=1))
    seen_files = 0
    for dirpath, _dirnames, filenames in os.walk(root):
        assert stat.S_IMODE(os.stat(dirpath).st_mode) == 0o700, dirpath
        for f in filenames:
            assert stat.S_IMODE(os.stat(os.path.join(dirpath, f)).st_mode) == 0o600, f
            seen_files += 1
    assert seen_files > 5


def test_temporary_files_are_invisible(tmp_path: Path) -> None:
    backend = LocalBackend.create(tmp_path / "repo")
    (tmp_path / "repo" / "index" / ".tmp-deadbeef").write_bytes(b"half a file")
    (tmp_path / "repo" / "index" / "not-an-id").write_bytes(b"junk")
    assert list(backend.list(FileType.INDEX)) == []
    backend.save(Handle(FileType.INDEX, "b" * 64), io.BytesIO(b"x"))
    leftovers = [p.name for p in (tmp_path / "repo" / "index").iterdir()]
    assert sorted(leftovers) == sorted([".tmp-deadbeef", "not-an-id", "b" * 64])


def test_create_refuses_non_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "file").write_text("hello")
    with pytest.raises(BackendError):
        LocalBackend.create(tmp_path / "x")
    with pytest.raises(ObjectMissing):
        LocalBackend(tmp_path / "missing")


def test_packs_are_fanned_out_by_prefix(tmp_path: Path) -> None:
    backend = LocalBackend.create(tmp_path / "repo")
    backend.save(Handle(FileType.PACK, "ab" * 32), io.BytesIO(b"p"))
    assert (tmp_path / "repo" / "data" / "ab" / ("ab" * 32)).read_bytes() == b"p"


def test_the_lock_holder_removes_what_killed_writers_left(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    with Repository.init(LocalBackend.create(root), b"pw", kdf=KDF) as repo:
        repo.save_blob(BlobType.DATA, b"x" * 100)
    (root / "data" / "ab").mkdir(mode=0o700)
    leftovers = [
        root / "data" / ".tmp-1",
        root / "data" / "ab" / ".tmp-2",
        root / "index" / ".tmp-3",
    ]
    for path in leftovers:
        path.write_bytes(b"half a pack")
    with Repository.open(LocalBackend(root), b"pw", lock=False):  # a reader leaves them
        assert all(p.exists() for p in leftovers)
    with Repository.open(LocalBackend(root), b"pw") as repo:  # a writer removes them
        assert not any(p.exists() for p in leftovers)
        assert repo.check().ok
