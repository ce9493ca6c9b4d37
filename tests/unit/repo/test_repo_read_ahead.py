"""Blobs of a remote backend (one with a ``read_ahead``) are read in windows of their
pack: fewer requests, the same bytes, and a window is never trusted past a failure."""

from __future__ import annotations

import io
import os
import threading
import time
from typing import BinaryIO

import pytest

from cipherdump.errors import IntegrityError
from cipherdump.repo import BlobType, Id, KdfParams, MemoryBackend, Repository
from cipherdump.repo.backends.base import FileType, Handle

KDF = KdfParams.insecure_for_tests()


class Remote(MemoryBackend):
    """Counts pack reads; can hand out damaged bytes ``damage_next`` times."""

    read_ahead = 64 * 1024

    def __init__(self) -> None:
        super().__init__()
        self.pack_reads = 0
        self.damage_next = 0

    def load(self, handle: Handle, offset: int = 0, length: int | None = None) -> bytes:
        data = super().load(handle, offset, length)
        if handle.type is FileType.PACK:
            self.pack_reads += 1
            if self.damage_next:
                self.damage_next -= 1
                data = bytes([data[0] ^ 1]) + data[1:] if data else data
        return data


@pytest.fixture
def stored() -> tuple[Remote, list[tuple[Id, bytes]]]:
    backend = Remote()
    blobs = [os.urandom(1000 + i) for i in range(200)]  # about 200 KiB: a few windows
    with Repository.init(backend, b"pw", kdf=KDF, lock=False) as repo:
        ids = [repo.save_blob(BlobType.DATA, b) for b in blobs]
    return backend, list(zip(ids, blobs, strict=True))


def test_windows_save_requests(stored: tuple[Remote, list[tuple[Id, bytes]]]) -> None:
    backend, blobs = stored
    repo = Repository.open(backend, b"pw", lock=False)
    backend.pack_reads = 0
    for raw, data in blobs:
        assert repo.load_blob(BlobType.DATA, raw) == data
    assert backend.pack_reads <= 6  # one per 64 KiB window, not one per blob
    repo.close()


def test_a_damaged_window_is_read_again(stored: tuple[Remote, list[tuple[Id, bytes]]]) -> None:
    backend, blobs = stored
    repo = Repository.open(backend, b"pw", lock=False)
    backend.damage_next = 1  # the window's first byte (the first blob's) is wrong
    assert repo.load_blob(BlobType.DATA, blobs[0][0]) == blobs[0][1]
    for raw, data in blobs[1:20]:  # the rest came in a good window read again
        assert repo.load_blob(BlobType.DATA, raw) == data
    backend.damage_next = 10  # damaged for good: an integrity error, as without windows
    repo.close()
    repo = Repository.open(backend, b"pw", lock=False)
    with pytest.raises(IntegrityError):
        repo.load_blob(BlobType.DATA, blobs[0][0])
    repo.close()


class Parallel(MemoryBackend):
    connections = 4


def test_check_read_data_reads_ahead_with_the_same_findings() -> None:
    """check --read-data downloads the next packs of a remote backend while it checks
    one; what it finds is the same, in the same order."""
    backend = MemoryBackend()
    with Repository.init(backend, b"pw", kdf=KDF, lock=False, pack_size=4096) as repo:
        for i in range(30):
            repo.save_blob(BlobType.DATA, os.urandom(3000 + i))
    packs = sorted((h for h in backend.files if h.type is FileType.PACK), key=str)
    assert len(packs) >= 10
    damaged, gone = packs[3], packs[7]
    backend.files[damaged] = backend.files[damaged][:100] + b"!" + backend.files[damaged][101:]
    backend.files[gone] = b""  # a pack that is empty now
    remote = Parallel()
    remote.files = dict(backend.files)
    reports = []
    for b in (backend, remote):
        with Repository.open(b, b"pw", lock=False) as repo:
            report = repo.check(read_data=True)
        reports.append([(f.message, f.file) for f in report.errors])
    assert reports[0] == reports[1]
    files = {f for _, f in reports[0]}
    assert str(damaged) in files and str(gone) in files


class SlowUploads(MemoryBackend):
    """Packs are spooled and committed slowly, two at once, as uploads to S3."""

    connections = 2

    def __init__(self) -> None:
        super().__init__()
        self.waiting = 0  # spools opened and not yet committed or discarded
        self.most_waiting = 0
        self._lock = threading.Lock()

    def open_spool(self, file_type: FileType) -> _SlowSpool:
        with self._lock:
            self.waiting += 1
            self.most_waiting = max(self.most_waiting, self.waiting)
        return _SlowSpool(self)


class _SlowSpool:
    def __init__(self, backend: SlowUploads) -> None:
        self._backend = backend
        self._file: BinaryIO = io.BytesIO()
        self._done = False

    @property
    def file(self) -> BinaryIO:
        return self._file

    def commit(self, handle: Handle) -> None:
        time.sleep(0.02)
        self._file.seek(0)
        self._backend.files[handle] = self._file.read()
        self._finish()

    def discard(self) -> None:
        self._finish()

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            with self._backend._lock:
                self._backend.waiting -= 1


def test_slow_uploads_hold_the_writer_back() -> None:
    """Packs waiting for a slow commit are bounded (twice the commits at once, plus
    the packs being filled), not the whole backup spooled on local disk."""
    backend = SlowUploads()
    with Repository.init(backend, b"pw", kdf=KDF, lock=False, pack_size=4096) as repo:
        ids = [repo.save_blob(BlobType.DATA, os.urandom(3000 + i)) for i in range(60)]
    assert backend.most_waiting <= 2 * 2 + 2
    with Repository.open(backend, b"pw", lock=False) as repo:
        assert all(repo.has_blob(BlobType.DATA, i) for i in ids)
