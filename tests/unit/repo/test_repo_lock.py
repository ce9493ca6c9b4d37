"""The exclusive lock: contention, stale locks, refresh, damaged locks."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time

import pytest

from cipherdump.repo import FileType, Handle, KdfParams, LockedError, MemoryBackend, Repository
from cipherdump.repo.crypto import MasterKey, file_id
from cipherdump.repo.lock import (
    REFRESH_EVERY_NS,
    STALE_AFTER_NS,
    Lock,
    LockInfo,
    encode_lock,
)

KDF = KdfParams.insecure_for_tests()


def _locks(backend: MemoryBackend) -> list[str]:
    return [i.name for i in backend.list(FileType.LOCK)]


def _plant(backend: MemoryBackend, key: MasterKey, info: LockInfo) -> str:
    data = encode_lock(key, info)
    name = file_id(data).hex
    backend.save(Handle(FileType.LOCK, name), io.BytesIO(data))
    return name


def test_second_writer_is_refused() -> None:
    backend = MemoryBackend()
    first = Repository.init(backend, b"pw", kdf=KDF)
    with pytest.raises(LockedError, match="locked by pid"):
        Repository.open(backend, b"pw")
    assert len(_locks(backend)) == 1
    reader = Repository.open(backend, b"pw", lock=False)
    reader.close()
    first.close()
    assert _locks(backend) == []
    Repository.open(backend, b"pw").close()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_locks_are_removed() -> None:
    backend = MemoryBackend()
    key = MasterKey.generate()
    host = socket.gethostname()
    dead = _plant(backend, key, LockInfo(time.time_ns(), host, _dead_pid()))
    old = _plant(backend, key, LockInfo(time.time_ns() - STALE_AFTER_NS - 1, "elsewhere", 1))
    live = _plant(backend, key, LockInfo(time.time_ns(), "elsewhere", 1))
    with pytest.raises(LockedError):
        Lock.acquire(backend, key)
    assert set(_locks(backend)) == {live}  # the stale ones went anyway
    backend.remove(Handle(FileType.LOCK, live))
    lock = Lock.acquire(backend, key)
    assert _locks(backend) == [lock.name]
    lock.release()
    assert dead and old


def test_refresh_replaces_the_lock_file() -> None:
    backend = MemoryBackend()
    key = MasterKey.generate()
    now = [time.time_ns()]
    lock = Lock.acquire(backend, key, clock=lambda: now[0])
    first = lock.name
    lock.refresh_if_due()
    assert lock.name == first
    now[0] += REFRESH_EVERY_NS
    lock.refresh_if_due()
    assert lock.name != first and _locks(backend) == [lock.name]
    lock.release()


def test_damaged_lock_blocks_until_unlocked() -> None:
    backend = MemoryBackend()
    Repository.init(backend, b"pw", kdf=KDF).close()
    backend.save(Handle(FileType.LOCK, "ab" * 32), io.BytesIO(b"garbage"))
    with pytest.raises(LockedError, match="cannot be read") as info:
        Repository.open(backend, b"pw")
    assert "\n" not in str(info.value)
    with Repository.open(backend, b"pw", lock=False) as repo:
        report = repo.check()
        assert any(f.file == f"locks/{'ab' * 32}" for f in report.errors)
        assert repo.unlock() == []  # not provably stale
        assert repo.unlock(all_locks=True) == ["ab" * 32]
    Repository.open(backend, b"pw").close()
    assert os.getpid() > 0
