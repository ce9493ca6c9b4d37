"""Locks, exclusive and shared: contention, stale locks, refresh, lost locks, damaged locks."""

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


def test_only_locks_of_processes_provably_gone_are_removed_unasked() -> None:
    backend = MemoryBackend()
    key = MasterKey.generate()
    host = socket.gethostname()
    dead = _plant(backend, key, LockInfo(time.time_ns(), host, _dead_pid()))
    old = _plant(backend, key, LockInfo(time.time_ns() - STALE_AFTER_NS - 1, "elsewhere", 1))
    live = _plant(backend, key, LockInfo(time.time_ns(), "elsewhere", 1))
    with pytest.raises(LockedError):
        Lock.acquire(backend, key)
    # The dead one went; the old one from elsewhere may be a suspended process's: it
    # blocks nobody, but only unlock removes it.
    assert set(_locks(backend)) == {live, old}
    backend.remove(Handle(FileType.LOCK, live))
    lock = Lock.acquire(backend, key)
    assert set(_locks(backend)) == {lock.name, old}
    lock.release()
    assert dead


def test_a_dead_pid_in_another_pid_namespace_is_not_dead() -> None:
    # Two containers may share a host name; a pid in another namespace says nothing.
    from cipherdump.repo.lock import is_dead_here, pid_namespace

    host = socket.gethostname()
    gone = _dead_pid()
    assert is_dead_here(LockInfo(time.time_ns(), host, gone, True, pid_namespace()))
    assert not is_dead_here(LockInfo(time.time_ns(), host, gone, True, "pid:[1]"))
    assert not is_dead_here(LockInfo(time.time_ns(), "elsewhere", gone))


def test_shared_locks_coexist_and_exclude_an_exclusive_one() -> None:
    backend = MemoryBackend()
    key = MasterKey.generate()
    first = Lock.acquire(backend, key, exclusive=False)
    second = Lock.acquire(backend, key, exclusive=False)
    with pytest.raises(LockedError, match=r"shared lock.*needs it alone"):
        Lock.acquire(backend, key)
    first.release()
    second.release()
    alone = Lock.acquire(backend, key)
    with pytest.raises(LockedError, match="exclusive lock"):
        Lock.acquire(backend, key, exclusive=False)
    alone.release()
    assert _locks(backend) == []


def test_old_lock_files_without_the_field_are_exclusive() -> None:
    from cipherdump.repo import codec
    from cipherdump.repo.envelope import Magic, seal_file
    from cipherdump.repo.lock import decode_lock

    key = MasterKey.generate()
    body = {"v": 1, "time_ns": 5, "hostname": "h", "pid": 3, "nonce": bytes(16)}
    info = decode_lock(key, seal_file(key, Magic.LOCK, codec.encode(body)), "lock")
    assert info.exclusive and info.pidns == ""


def test_a_removed_lock_stops_its_holder() -> None:
    from cipherdump.repo.lock import LockLostError

    backend = MemoryBackend()
    key = MasterKey.generate()
    now = [time.time_ns()]
    lock = Lock.acquire(backend, key, clock=lambda: now[0], exclusive=False)
    assert lock.name is not None
    backend.remove(Handle(FileType.LOCK, lock.name))  # unlock --remove-all, say
    now[0] += REFRESH_EVERY_NS
    with pytest.raises(LockLostError, match="was removed"):
        lock.refresh_if_due()
    with pytest.raises(LockLostError):  # and stays stopped
        lock.refresh_if_due()


def test_a_lock_not_refreshed_in_time_stops_its_holder() -> None:
    from cipherdump.repo.lock import ABORT_AFTER_NS, LockLostError

    backend = MemoryBackend()
    key = MasterKey.generate()
    now = [time.time_ns()]
    lock = Lock.acquire(backend, key, clock=lambda: now[0])
    now[0] += ABORT_AFTER_NS + 1  # suspended, say
    with pytest.raises(LockLostError, match="not refreshed for 25 minutes"):
        lock.refresh_if_due()
    lock.release()


def test_the_refresher_thread_keeps_the_lock_fresh() -> None:
    backend = MemoryBackend()
    key = MasterKey.generate()
    now = [time.time_ns()]
    lock = Lock.acquire(backend, key, clock=lambda: now[0], exclusive=False)
    first = lock.name
    lock.start_refresher(interval_s=0.01)
    now[0] += REFRESH_EVERY_NS
    deadline = time.monotonic() + 5
    while lock.name == first and time.monotonic() < deadline:
        time.sleep(0.01)
    assert lock.name != first and _locks(backend) == [lock.name]
    lock.release()
    assert _locks(backend) == []


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
        assert [name for name, _ in repo.unlock(all_locks=True)] == ["ab" * 32]
    Repository.open(backend, b"pw").close()
    assert os.getpid() > 0
