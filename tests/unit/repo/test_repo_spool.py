"""Packs assembled in place on the local backend, and made durable off the main thread."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from cipherdump.errors import BackendError
from cipherdump.repo import BlobType, FileType, KdfParams, LocalBackend, Repository
from cipherdump.repo.backends.local import LocalSpool
from cipherdump.repo.direct_file import DirectAppendFile


def make_repo(tmp_path: Path) -> Repository:
    backend = LocalBackend.create(tmp_path / "repo")
    return Repository.init(backend, b"pw", kdf=KdfParams.insecure_for_tests(), pack_size=4096)


def test_packs_are_spooled_in_place_and_check_clean(tmp_path: Path) -> None:
    repo = make_repo(tmp_path)
    ids = [repo.save_blob(BlobType.DATA, os.urandom(3000)) for _ in range(10)]
    repo.flush()
    assert not list((tmp_path / "repo").rglob(".tmp-*"))
    assert len(list(repo.backend.list(FileType.PACK))) >= 5
    for blob_id in ids:
        assert len(repo.load_blob(BlobType.DATA, blob_id)) == 3000
    report = repo.check(read_data=True)
    assert report.ok, report.text()
    repo.close()


def test_a_failed_commit_stops_the_writer_before_any_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = make_repo(tmp_path)

    def fail(self: LocalSpool, handle: object) -> None:
        raise BackendError("disk full")

    monkeypatch.setattr(LocalSpool, "commit", fail)
    for _ in range(3):
        repo.save_blob(BlobType.DATA, os.urandom(3000))
    with pytest.raises(BackendError):
        repo.flush()
    with pytest.raises(BackendError):
        repo.save_blob(BlobType.DATA, os.urandom(3000))
    assert not list(repo.backend.list(FileType.INDEX))
    repo.close()
    assert not list((tmp_path / "repo").rglob(".tmp-*"))


def test_a_failed_pack_write_stops_the_writer_before_any_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pack's last writes are waited for by the commit thread, not by the writer; a
    write that fails there (a full disk) still fails the backup before any index."""
    repo = make_repo(tmp_path)

    def fail(self: DirectAppendFile, view: memoryview) -> None:
        view.release()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(DirectAppendFile, "_write_segment", fail)
    for _ in range(3):
        repo.save_blob(BlobType.DATA, os.urandom(3000))
    with pytest.raises(BackendError, match="No space left"):
        repo.flush()
    with pytest.raises(BackendError):
        repo.save_blob(BlobType.DATA, os.urandom(3000))
    assert not list(repo.backend.list(FileType.INDEX))
    assert not list(repo.backend.list(FileType.PACK))
    repo.close()
    assert not list((tmp_path / "repo").rglob(".tmp-*"))
