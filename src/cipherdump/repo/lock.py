"""Repository locks, exclusive and shared, with stale-lock handling (format §11).

A lock file is ``header("CDlk") || seal(plaintext, aad = header)``, named by the
unkeyed BLAKE3 of the file.  Plaintext (codec)::

    {"v": 1, "time_ns": int, "hostname": str, "pid": int, "exclusive": bool,
     "nonce": bytes(16), "pidns": str (optional)}

Backups and readers take *shared* locks, so that many hosts back up into one repository
at once; ``prune``, ``forget``, ``tag`` and the repairs take an *exclusive* one.  An
exclusive lock excludes every other lock; a shared one excludes exclusive ones.

A lock is *stale* when its time is more than :data:`STALE_AFTER_NS` in the past, or
when it was taken on this host (same host name and PID namespace) by a process that no
longer exists.  A stale lock blocks nobody.  Only a lock whose process is provably gone
(on this host) is ever removed without being asked: one from another host that merely
looks old may belong to a process that is suspended, not dead, and removing it is how
repositories lose data (restic #2452: refreshes that did not move a lock's time let
`unlock` delete a live lock).  Holders refresh their lock (write a new file, then remove
the old one) every :data:`REFRESH_EVERY_NS`, from a thread of their own, so a long run
that saves nothing for a while keeps its lock; a holder that finds its lock file
removed, or that could not refresh it for :data:`ABORT_AFTER_NS` (others may by now
take it for stale), stops with :class:`LockLostError` before it writes anything more.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import threading
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
# A holder that could not refresh for this long stops: past STALE_AFTER_NS others take
# its lock for stale, and this leaves a refresh interval of margin for clock skew.
ABORT_AFTER_NS = STALE_AFTER_NS - REFRESH_EVERY_NS
LOCK_VERSION = 1


class LockedError(RepositoryLockedError):
    """Another process holds the repository lock (or a lock cannot be read)."""


class LockLostError(RepositoryLockedError):
    """This process's own lock was removed, or could not be refreshed in time."""


def pid_namespace() -> str:
    """This process's PID namespace (``pid:[4026531836]``), or "" where there is none
    to read: two containers may share a host name while their pids mean different
    processes."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


@dataclass(frozen=True, slots=True)
class LockInfo:
    time_ns: int
    hostname: str
    pid: int
    exclusive: bool = True
    pidns: str = ""

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.time_ns / 1e9))
        kind = "exclusive" if self.exclusive else "shared"
        return f"pid {self.pid} on {self.hostname} since {when} ({kind} lock)"


def encode_lock(key: MasterKey, info: LockInfo) -> bytes:
    body: dict[str, Value] = {
        "v": LOCK_VERSION,
        "time_ns": info.time_ns,
        "hostname": info.hostname,
        "pid": info.pid,
        "exclusive": info.exclusive,
        "nonce": os.urandom(16),
    }
    if info.pidns:
        body["pidns"] = info.pidns
    return seal_file(key, Magic.LOCK, codec.encode(body))


def decode_lock(key: MasterKey, data: bytes, what: str) -> LockInfo:
    m = codec.expect_map(codec.decode(open_file(key, Magic.LOCK, data, what), what), what)
    if codec.get_int(m, "v", what) != LOCK_VERSION:
        raise CorruptError("unknown lock version", structure=what)
    # A lock that does not say is exclusive: the first writers' locks all were.
    exclusive = m.get("exclusive", True)
    return LockInfo(
        codec.get_int(m, "time_ns", what),
        codec.get_str(m, "hostname", what),
        codec.get_int(m, "pid", what),
        exclusive if isinstance(exclusive, bool) else True,
        codec.get_str(m, "pidns", what) if "pidns" in m else "",
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


def is_dead_here(info: LockInfo) -> bool:
    """Whether the lock's process is provably gone: it was taken on this host, in this
    PID namespace (when the lock names one), and no process has its pid."""
    if info.hostname != socket.gethostname() or info.pid <= 0:
        return False
    if info.pidns and info.pidns != pid_namespace():
        return False
    return not _pid_alive(info.pid)


def is_stale(info: LockInfo, now_ns: int) -> bool:
    return now_ns - info.time_ns > STALE_AFTER_NS or is_dead_here(info)


class Lock:
    """A lock held by this process, exclusive or shared."""

    def __init__(
        self,
        backend: Backend,
        key: MasterKey,
        clock: Callable[[], int] = time.time_ns,
        *,
        exclusive: bool = True,
    ) -> None:
        self._backend = backend
        self._key = key
        self._clock = clock
        self.exclusive = exclusive
        self._name: str | None = None
        self._written_ns = 0
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure: RepositoryLockedError | None = None
        # Whether any other live lock (shared: exclusive ones refuse) was seen, before
        # or after this one was written.
        self.others_live = False

    @classmethod
    def acquire(
        cls,
        backend: Backend,
        key: MasterKey,
        clock: Callable[[], int] = time.time_ns,
        *,
        exclusive: bool = True,
        before_write: Callable[[], None] | None = None,
    ) -> Lock:
        """``before_write()`` runs after the first look at the other locks and before
        this one is written (to list what is there before it)."""
        lock = cls(backend, key, clock, exclusive=exclusive)
        lock._check_others(remove_dead=True)
        if before_write is not None:
            before_write()
        lock._write()
        try:
            # Two processes racing both see each other here and both back off.
            lock._check_others(remove_dead=False)
        except BaseException:
            lock.release()
            raise
        return lock

    @property
    def name(self) -> str | None:
        """The lock file's name while held."""
        return self._name

    def start_refresher(self, interval_s: float = REFRESH_EVERY_NS / 1e9) -> None:
        """Refresh from a daemon thread every ``interval_s`` seconds until released; a
        failure is raised by the next :meth:`refresh_if_due` of the holder."""
        if self._thread is not None:
            return

        def run() -> None:
            while not self._stop.wait(interval_s):
                try:
                    with self._mutex:
                        if self._name is None:
                            return
                        self._refresh()
                except RepositoryLockedError as exc:
                    self._failure = exc
                    return
                except CipherdumpError:
                    continue  # the storage failed once: the holder's next try decides

        self._thread = threading.Thread(target=run, name="cipherdump-lock", daemon=True)
        self._thread.start()

    def refresh_if_due(self) -> None:
        if self._failure is not None:
            raise self._failure
        with self._mutex:
            if self._name is not None and self._clock() - self._written_ns >= REFRESH_EVERY_NS:
                self._refresh()

    def _refresh(self) -> None:
        """Write a new lock file, then remove the old; the caller holds the mutex."""
        assert self._name is not None
        where = f"{self._backend.location}: lock file locks/{self._name}"
        late = self._clock() - self._written_ns
        if late > ABORT_AFTER_NS:
            self._failure = LockLostError(
                f"{where} was not refreshed for {late // (60 * 10**9)} minutes (suspended, "
                "or the storage failed): other processes may take it for stale, so this "
                "one stops before it writes anything more"
            )
            raise self._failure
        try:
            self._backend.stat(Handle(FileType.LOCK, self._name))
        except ObjectMissing:
            self._failure = LockLostError(
                f"{where} was removed by another process (unlock --remove-all?): this one "
                "stops before it writes anything more"
            )
            raise self._failure from None
        old = self._name
        self._write()
        self._remove(old)

    def release(self) -> None:
        self._stop.set()
        with self._mutex:
            if self._name is not None:
                self._remove(self._name)
                self._name = None
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def _write(self) -> None:
        now = self._clock()
        info = LockInfo(now, socket.gethostname(), os.getpid(), self.exclusive, pid_namespace())
        data = encode_lock(self._key, info)
        name = file_id(data).hex
        self._backend.save(Handle(FileType.LOCK, name), io.BytesIO(data))
        self._name, self._written_ns = name, now

    def _remove(self, name: str) -> None:
        with contextlib.suppress(ObjectMissing):
            self._backend.remove(Handle(FileType.LOCK, name))

    def _check_others(self, *, remove_dead: bool) -> None:
        for info in list(self._backend.list(FileType.LOCK)):
            if info.name == self._name:
                continue
            try:
                other = read_lock(self._backend, self._key, info.name)
            except ObjectMissing:
                continue
            except CipherdumpError as exc:
                # It may be anyone's, exclusive or not: it blocks everyone.
                raise LockedError(
                    f"{self._backend.location}: lock file locks/{info.name} cannot be read "
                    f"({exc}); if no other process uses the repository, run unlock "
                    "--remove-all"
                ) from None
            if is_stale(other, self._clock()):
                # Only a lock whose process is provably gone is removed unasked.
                if remove_dead and is_dead_here(other):
                    self._remove(info.name)
                continue
            self.others_live = True
            if self.exclusive or other.exclusive:
                raise LockedError(
                    locked_message(self._backend.location, info.name, other, self.exclusive)
                )


def locked_message(location: str, name: str, holder: LockInfo, exclusive: bool = True) -> str:
    """Who holds the lock, since when, and what to do about it."""
    message = f"repository {location} is locked by {holder.describe()} (lock file locks/{name})"
    if exclusive and not holder.exclusive:
        message += ", and this needs it alone"
    if holder.hostname == socket.gethostname():
        # On this host a lock whose process is gone is stale and removed by itself.
        return f"{message}; wait for that process to finish"
    minutes = STALE_AFTER_NS // (60 * 10**9)
    return (
        f"{message}; wait for it (a lock not renewed for {minutes} minutes is passed "
        "over), or if that process no longer runs, run unlock --remove-all"
    )


def remove_locks(
    backend: Backend, key: MasterKey, *, all_locks: bool = False, keep: str | None = None
) -> list[tuple[str, str]]:
    """Remove stale lock files (with ``all_locks``, every one but ``keep``); returns
    (name, who held it) of each removed.  A lock file that cannot be read is removed
    only with ``all_locks``: it may be anyone's."""
    removed = []
    now = time.time_ns()
    for info in list(backend.list(FileType.LOCK)):
        if info.name == keep:
            continue
        try:
            holder = read_lock(backend, key, info.name)
            who = holder.describe()
        except ObjectMissing:
            continue
        except CipherdumpError as exc:
            holder, who = None, f"unreadable: {exc}"
        if not all_locks and (holder is None or not is_stale(holder, now)):
            continue
        try:
            backend.remove(Handle(FileType.LOCK, info.name))
            removed.append((info.name, who))
        except ObjectMissing:
            pass
    return removed
