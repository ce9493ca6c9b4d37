"""The one conformance suite every Backend must pass (local, memory, S3 on SeaweedFS).

To add a backend, add a factory to ``BACKENDS``; every test here then runs against it.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import seaweed
from cipherdump.errors import BackendError
from cipherdump.repo.backends.base import Backend, FileType, Handle, ObjectMissing
from cipherdump.repo.backends.local import LocalBackend
from cipherdump.repo.backends.memory import MemoryBackend
from cipherdump.repo.cache import CachingBackend
from cipherdump.repo.location import create_backend

BACKENDS: dict[str, Callable[[Path], Backend]] = {
    "local": lambda tmp: LocalBackend.create(tmp / "repo"),
    "memory": lambda tmp: MemoryBackend(),
}
# Backends on a server the session starts: made from the fixture ``seaweedfs``.
SERVER_BACKENDS: dict[str, Callable[[seaweed.SeaweedFS], Backend]] = {
    # Through the location parser, the retry wrapper and all, as the CLI opens it.
    "s3": lambda server: create_backend(server.location(), server.env()),
    # The same with its local cache in use (repo/cache.py), as after a repository opens.
    "s3-cached": lambda server: _attached(create_backend(server.location(), server.env())),
}


def _attached(backend: Backend) -> Backend:
    assert isinstance(backend, CachingBackend)
    backend.attach_cache("c" * 64)
    return backend


NAME_A = "a" * 64
NAME_B = "0123456789abcdef" * 4


@pytest.fixture(params=sorted(BACKENDS) + sorted(SERVER_BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param in SERVER_BACKENDS:
        server = request.getfixturevalue("seaweedfs")
        b = SERVER_BACKENDS[request.param](server)
    else:
        b = BACKENDS[request.param](tmp_path)
    yield b
    b.close()


def _save(b: Backend, h: Handle, data: bytes) -> None:
    b.save(h, io.BytesIO(data))


ALL_HANDLES = [Handle(FileType.CONFIG)] + [
    Handle(t, NAME_A) for t in FileType if t is not FileType.CONFIG
]


@pytest.mark.parametrize("handle", ALL_HANDLES, ids=str)
def test_save_load_stat_remove(backend: Backend, handle: Handle) -> None:
    data = bytes(range(256)) * 10
    _save(backend, handle, data)
    assert backend.load(handle) == data
    assert backend.stat(handle) == len(data)
    assert [(i.name, i.size) for i in backend.list(handle.type)] == [(handle.name, len(data))]
    backend.remove(handle)
    with pytest.raises(ObjectMissing):
        backend.load(handle)
    assert list(backend.list(handle.type)) == []


def test_ranged_loads(backend: Backend) -> None:
    h = Handle(FileType.PACK, NAME_A)
    data = bytes(i % 251 for i in range(10_000))
    _save(backend, h, data)
    assert backend.load(h, 0, 10) == data[:10]
    assert backend.load(h, 9_990, 10) == data[9_990:]
    assert backend.load(h, 5_000) == data[5_000:]
    assert backend.load(h, 10_000, 0) == b""
    assert backend.load(h, 10_000) == b""
    for offset, length in [(9_995, 10), (10_001, 0), (-1, 5), (0, -1)]:
        with pytest.raises(BackendError):
            backend.load(h, offset, length)


def test_missing_files(backend: Backend) -> None:
    h = Handle(FileType.SNAPSHOT, NAME_B)
    with pytest.raises(ObjectMissing):
        backend.load(h)
    with pytest.raises(ObjectMissing):
        backend.stat(h)
    with pytest.raises(ObjectMissing):
        backend.remove(h)
    assert issubclass(ObjectMissing, BackendError)


def test_list_is_per_type_and_complete(backend: Backend) -> None:
    names = [f"{i:02x}" * 32 for i in range(40)]
    for n in names:
        _save(backend, Handle(FileType.PACK, n), n.encode())
    _save(backend, Handle(FileType.INDEX, NAME_A), b"x")
    assert sorted(i.name for i in backend.list(FileType.PACK)) == names
    assert all(i.size == 64 for i in backend.list(FileType.PACK))
    assert [i.name for i in backend.list(FileType.INDEX)] == [NAME_A]
    assert list(backend.list(FileType.SNAPSHOT)) == []
    assert list(backend.list(FileType.CONFIG)) == []


def test_list_gives_modification_times(backend: Backend) -> None:
    # prune deletes an unindexed pack only when it is old: the time must be the save's.
    import time

    before = time.time_ns()
    _save(backend, Handle(FileType.PACK, NAME_A), b"pack")
    after = time.time_ns()
    (info,) = backend.list(FileType.PACK)
    assert info.mtime_ns is not None
    # Filesystem timestamps are coarse (allow one tick of the kernel's clock), and S3
    # listings give the time to the second: the save's second is as good for prune.
    earliest = before // 1_000_000_000 * 1_000_000_000 - 20_000_000
    assert earliest <= info.mtime_ns <= after + 20_000_000


def test_overwrite_replaces(backend: Backend) -> None:
    h = Handle(FileType.LOCK, NAME_A)
    _save(backend, h, b"first version")
    _save(backend, h, b"second")
    assert backend.load(h) == b"second"
    assert len(list(backend.list(FileType.LOCK))) == 1


def test_empty_and_large_streams(backend: Backend, tmp_path: Path) -> None:
    _save(backend, Handle(FileType.KEY, NAME_A), b"")
    assert backend.load(Handle(FileType.KEY, NAME_A)) == b""
    big = bytes(range(256)) * (3 * 4096 + 7)  # > 3 MiB: several copy chunks
    src = tmp_path / "big"
    src.write_bytes(b"skip me" + big)
    with open(src, "rb") as f:
        f.seek(7)  # save() stores from the stream's current position
        backend.save(Handle(FileType.PACK, NAME_B), f)
    assert backend.stat(Handle(FileType.PACK, NAME_B)) == len(big)
    assert backend.load(Handle(FileType.PACK, NAME_B), 1 << 20, 4) == big[1 << 20 : (1 << 20) + 4]


class _Failing(io.RawIOBase):
    """A stream that fails after yielding some bytes, like a dying producer."""

    def __init__(self) -> None:
        self.sent = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self.sent >= 3 << 20:
            raise OSError("producer died")
        self.sent += 1 << 20
        return b"z" * (1 << 20)


def test_failed_save_leaves_nothing(backend: Backend) -> None:
    h = Handle(FileType.PACK, NAME_A)
    _save(backend, h, b"old")
    with pytest.raises((OSError, BackendError)):
        backend.save(h, _Failing())  # type: ignore[arg-type]
    assert backend.load(h) == b"old"
    h2 = Handle(FileType.PACK, NAME_B)
    with pytest.raises((OSError, BackendError)):
        backend.save(h2, _Failing())  # type: ignore[arg-type]
    with pytest.raises(ObjectMissing):
        backend.stat(h2)
    assert [i.name for i in backend.list(FileType.PACK)] == [NAME_A]


@pytest.mark.parametrize(
    ("file_type", "name"),
    [
        (FileType.PACK, "../" + "a" * 61),
        (FileType.PACK, "A" * 64),
        (FileType.PACK, "a" * 63),
        (FileType.INDEX, ""),
        (FileType.CONFIG, NAME_A),
        (FileType.KEY, "a" * 63 + "/"),
    ],
)
def test_handles_reject_bad_names(file_type: FileType, name: str) -> None:
    with pytest.raises(BackendError):
        Handle(file_type, name)


def test_location_is_a_string(backend: Backend) -> None:
    assert isinstance(backend.location, str) and backend.location
