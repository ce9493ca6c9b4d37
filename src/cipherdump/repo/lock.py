"""The exclusive repository lock, with stale-lock handling.

A lock file is ``header("CDlk") || seal(plaintext, aad = header)``, named by the
unkeyed BLAKE3 of the file.  Plaintext (codec)::

    {"v": 1, "time_ns": int, "hostname": str, "pid": int, "exclusive": true,
     "nonce": bytes(16)}

A lock is *stale* when its time is more than :data:`STALE_AFTER_NS` in the past, or
when it was taken on this host by a process that no longer exists.  Holders refresh
their lock (write a new file, then remove the old one) every :data:`REFRESH_EVERY_NS`.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from cipherdump.errors import CipherdumpError, CorruptError, RepositoryLockedError
from cipherdump.repo import codec
from cipherdump.repo.backends.base import Backend, FileType, Handle, ObjectMissing
from cipherdump.repo.codec import Value
from cipherdump.repo.crypto import MasterKey, file_id
from cipherdump.repo.envelope import Magic, open_file, seal_file

STALE_AFTER_NS = 30 * 60 * 10**9
REFRESH_EVERY_NS = 5 * 60 * 10**9
LOCK_VERSION = 1


class LockedError(RepositoryLockedError):
    """Another process holds the repository lock (or a lock cannot be read)."""


@dataclass(frozen=True, slots=True)
class LockInfo:
    time_ns: int
    hostname: str
    pid: int

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.time_ns / 1e9))
        return f"pid {self.pid} on {self.hostname} since {when}"


def encode_lock(key: MasterKey, info: LockInfo) -> bytes:
    body: dict[str, Value] = {
        "v": LOCK_VERSION,
        "time_ns": info.time_ns,
        "hostname": info.hostname,
        "pid": info.pid,
        "exclusive": True,
        "nonce": os.urandom(16),
    }
    return seal_file(key, Magic.LOCK, codec.encode(body))


def decode_lock(key: MasterKey, data: bytes, what: str) -> LockInfo:
    m = codec.expect_map(codec.decode(open_file(key, Magic.LOCK, data, what), what), what)
    if codec.get_int(m, "v", what) != LOCK_VERSION:
        raise CorruptError("unknown lock version", structure=what)
    return LockInfo(
        codec.get_int(m, "time_ns", what),
        codec.get_str(m, "hostname", what),
        codec.get_int(m, "pid", what),
    )


def read_lock(backend: Backend, key: MasterKey, name: str) -> LockInfo:
    """Load, hash-check and decrypt one lock file (raises CipherdumpError subclasses)."""
    handle = Handle(FileType.LOCK, name)
    data = backend.load(handle)
    if file_id(data).hex != name:
        raise CorruptError("content does not match its name", structure=str(handle))
    return decode_lock(key, data, str(handle))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def is_stale(info: LockInfo, now_ns: int) -> bool:
    if now_ns - info.time_ns > STALE_AFTER_NS:
        return True
    return info.hostname == socket.gethostname() and info.pid > 0 and not _pid_alive(info.pid)


class Lock:
    """An exclusive lock held by this process."""

    def __init__(
        self, backend: Backend, key: MasterKey, clock: Callable[[], int] = time.time_ns
    ) -> None:
        self._backend = backend
        self._key = key
        self._clock = clock
        self._name: str | None = None
        self._written_ns = 0

    @classmethod
    def acquire(
        cls, backend: Backend, key: MasterKey, clock: Callable[[], int] = time.time_ns
    ) -> Lock:
        lock = cls(backend, key, clock)
        lock._check_others(remove_stale=True)
        lock._write()
        try:
            # Two processes racing both see each other here and both back off.
            lock._check_others(remove_stale=False)
        except BaseException:
            lock.release()
            raise
        return lock

    @property
    def name(self) -> str | None:
        """The lock file's name while held."""
        return self._name

    def refresh_if_due(self) -> None:
        if self._name is not None and self._clock() - self._written_ns >= REFRESH_EVERY_NS:
            old = self._name
            self._write()
            self._remove(old)

    def release(self) -> None:
        if self._name is not None:
            self._remove(self._name)
            self._name = None

    def _write(self) -> None:
        now = self._clock()
        data = encode_lock(self._key, LockInfo(now, socket.gethostname(), os.getpid()))
        name = file_id(data).hex
        self._backend.save(Handle(FileType.LOCK, name), io.BytesIO(data))
        self._name, self._written_ns = name, now

    def _remove(self, name: str) -> None:
        with contextlib.suppress(ObjectMissing):
            self._backend.remove(Handle(FileType.LOCK, name))

    def _check_others(self, *, remove_stale: bool) -> None:
        for info in list(self._backend.list(FileType.LOCK)):
            if info.name == self._name:
                continue
            try:
                other = read_lock(self._backend, self._key, info.name)
            except ObjectMissing:
                continue
            except CipherdumpError as exc:
                raise LockedError(
                    f"{self._backend.location}: lock file locks/{info.name} cannot be read "
                    f"({exc}); if no other process uses the repository, delete that file"
                ) from None
            if is_stale(other, self._clock()):
                if remove_stale:
                    self._remove(info.name)
                continue
            raise LockedError(locked_message(self._backend.location, info.name, other))


def locked_message(location: str, name: str, holder: LockInfo) -> str:
    """Who holds the lock, since when, and what to do about it."""
    message = f"repository {location} is locked by {holder.describe()} (lock file locks/{name})"
    if holder.hostname == socket.gethostname():
        # On this host a lock whose process is gone is stale and removed by itself.
        return f"{message}; wait for that process to finish"
    minutes = STALE_AFTER_NS // (60 * 10**9)
    return (
        f"{message}; if that process no longer runs, delete the lock file (a lock not "
        f"renewed for {minutes} minutes is passed over by itself)"
    )


def remove_locks(backend: Backend, key: MasterKey, *, all_locks: bool = False) -> list[str]:
    """Remove stale (or, with ``all_locks``, every) lock file; returns the names removed."""
    removed = []
    now = time.time_ns()
    for info in list(backend.list(FileType.LOCK)):
        if not all_locks:
            try:
                if not is_stale(read_lock(backend, key, info.name), now):
                    continue
            except ObjectMissing:
                continue
            except CipherdumpError:
                continue
        try:
            backend.remove(Handle(FileType.LOCK, info.name))
            removed.append(info.name)
        except ObjectMissing:
            pass
    return removed
