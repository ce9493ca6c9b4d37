"""A backup worker's backend that is only a pipe to the coordinator's one.

Why: a backend that cannot be used in a forked process (``shared_between_processes``
false: S3, whose client runs on threads of its own that a fork does not copy, and
which hangs in the child) still gets the work of a backup shared with workers.  A
worker assembles and seals its packs in local temporary files as before; each request
it would make of the storage (upload a pack, save an index file, read a parent's tree)
goes over a pipe of its own to the coordinator, where a thread per worker
(:class:`RelayHost`) does it with the coordinator's backend, retries and cache
included, and sends back the answer or the error.

Ordering and atomicity are the worker's own, as with a backend it could use itself:
a request is answered only once done, and the worker's blob store saves an index file
only after every pack it names has been answered, so a pack is in the repository
before the index file that names it.  A pack is handed over as an open file
descriptor of the worker's unlinked temporary file (``SCM_RIGHTS``), not by name: it
has no name that an interrupted run could leave behind, and it is not copied through
the pipe.  A worker that dies closes its end; the coordinator's thread for it then
ends, after finishing at most the one request it had taken (a whole pack no index
names yet, or an index file whose packs are all there).
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import threading
from collections.abc import Iterator
from multiprocessing.connection import Connection, Pipe
from multiprocessing.reduction import recv_handle, send_handle
from typing import Any, BinaryIO

from cipherdump.errors import BackendError, CipherdumpError
from cipherdump.repo.backends.base import Backend, FileInfo, FileType, Handle, TempFileSpool


class RelayHost:
    """The coordinator's side: the pipes to its workers and a thread serving each.

    Use: :meth:`before_fork` just before each fork; in the child
    :meth:`in_child` (then :meth:`backend` gives the worker its backend), in the parent
    :meth:`in_parent`; :meth:`start` once every worker is forked (no thread of ours may
    exist at a fork); :meth:`stop` once the workers are gone."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._ours: list[Connection] = []
        self._theirs: Connection | None = None
        self._threads: list[threading.Thread] = []
        self._mine: Connection | None = None  # in a worker: its end

    def before_fork(self) -> None:
        ours, theirs = Pipe(duplex=True)
        self._ours.append(ours)
        self._theirs = theirs

    def in_child(self) -> None:
        for conn in self._ours:
            conn.close()
        self._ours = []
        self._mine, self._theirs = self._theirs, None

    def in_parent(self) -> None:
        if self._theirs is not None:
            self._theirs.close()
            self._theirs = None

    def backend(self) -> RelayBackend:
        """In a worker: the backend that asks the coordinator."""
        assert self._mine is not None, "not a worker of this host"
        return RelayBackend(
            self._mine,
            self._backend.location,
            int(getattr(self._backend, "read_ahead", 0)),
        )

    def start(self) -> None:
        for number, conn in enumerate(self._ours):
            thread = threading.Thread(
                target=self._serve, args=(conn,), name=f"relay-{number}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def stop(self, *, wait: bool = True) -> None:
        """After the workers exited (their ends closed): let the threads end.  Without
        ``wait`` (workers killed), a thread still in a request is left to finish it."""
        if wait:
            for thread in self._threads:
                thread.join()
        self._threads.clear()
        for conn in self._ours:
            with contextlib.suppress(OSError):
                conn.close()
        self._ours.clear()

    def _serve(self, conn: Connection) -> None:
        while True:
            try:
                request = conn.recv()
                fd = recv_handle(conn) if request[0] == "save_fd" else None
            except (EOFError, OSError):
                return  # the worker is gone
            try:
                answer: tuple[str, Any] = ("ok", self._do(request, fd))
            except CipherdumpError as err:
                answer = ("error", _picklable(err))
            except Exception as err:  # anything else: a one-line backend error
                answer = ("error", BackendError(f"{type(err).__name__}: {err}"))
            finally:
                if fd is not None:
                    os.close(fd)
            try:
                conn.send(answer)
            except OSError:
                return

    def _do(self, request: tuple[Any, ...], fd: int | None) -> Any:
        backend = self._backend
        op = request[0]
        if op == "save_fd":
            assert fd is not None
            handle = request[1]
            try:
                data = _read_fd(fd)
            except OSError as exc:
                raise BackendError(f"cannot read back the pack {handle}: {exc}") from exc
            backend.save(handle, io.BytesIO(data))
            return None
        if op == "save":
            backend.save(request[1], io.BytesIO(request[2]))
            return None
        if op == "load":
            return backend.load(request[1], request[2], request[3])
        if op == "load_pack":
            load_pack = getattr(backend, "load_pack", None)
            return None if load_pack is None else load_pack(request[1], request[2])
        if op == "forget":
            forget = getattr(backend, "forget", None)
            if forget is not None:
                forget(request[1])
            return None
        if op == "stat":
            return backend.stat(request[1])
        if op == "remove":
            backend.remove(request[1])
            return None
        if op == "list":
            return list(backend.list(request[1]))
        raise BackendError(f"unknown relay request {op!r}")


class RelayBackend:
    """A worker's backend: every operation is a request to the coordinator, one at a
    time (a lock keeps the pipe's requests and answers paired)."""

    shared_between_processes = False
    connections = 1  # one request in flight: the blob store commits one pack at a time

    def __init__(self, conn: Connection, location: str, read_ahead: int) -> None:
        self._conn = conn
        self._location = location
        self.read_ahead = read_ahead
        self._lock = threading.Lock()

    @property
    def location(self) -> str:
        return self._location

    def _ask(self, *request: Any, fd: int | None = None) -> Any:
        with self._lock:
            try:
                self._conn.send(request)
                if fd is not None:
                    send_handle(self._conn, fd, os.getppid())
                kind, value = self._conn.recv()
            except (EOFError, OSError) as exc:
                raise BackendError(
                    f"cannot {request[0]} in {self._location}: the backup's coordinator "
                    f"is gone ({exc or 'pipe closed'})"
                ) from None
        if kind == "error":
            raise value
        return value

    def save(self, handle: Handle, source: BinaryIO) -> None:
        self._ask("save", handle, source.read())

    def load(self, handle: Handle, offset: int = 0, length: int | None = None) -> bytes:
        data: bytes = self._ask("load", handle, offset, length)
        return data

    def load_pack(self, handle: Handle, size: int) -> bytes | None:
        data: bytes | None = self._ask("load_pack", handle, size)
        return data

    def forget(self, handle: Handle) -> None:
        self._ask("forget", handle)

    def stat(self, handle: Handle) -> int:
        size: int = self._ask("stat", handle)
        return size

    def remove(self, handle: Handle) -> None:
        self._ask("remove", handle)

    def list(self, file_type: FileType) -> Iterator[FileInfo]:
        found: list[FileInfo] = self._ask("list", file_type)
        yield from found

    def open_spool(self, file_type: FileType) -> RelaySpool:
        return RelaySpool(self)

    def close(self) -> None:
        pass


class RelaySpool(TempFileSpool):
    """A pack assembled in an unlinked local temporary file; ``commit`` hands the
    coordinator its descriptor and waits until the pack is uploaded."""

    def __init__(self, backend: RelayBackend) -> None:
        super().__init__()
        self._backend = backend

    def commit(self, handle: Handle) -> None:
        try:
            self._file.flush()
        except (OSError, ValueError) as exc:
            raise BackendError(f"cannot write the pack {handle}: {exc}") from exc
        self._backend._ask("save_fd", handle, fd=self._file.fileno())


def _read_fd(fd: int) -> bytes:
    """The whole file behind ``fd`` (from its start; the offset is left alone)."""
    size = os.fstat(fd).st_size
    parts = []
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(size - offset, 8 << 20), offset)
        if not chunk:
            break
        parts.append(chunk)
        offset += len(chunk)
    if offset != size:
        raise OSError(f"read {offset} of {size} bytes")
    return b"".join(parts)


def _picklable(err: CipherdumpError) -> CipherdumpError:
    try:
        pickle.loads(pickle.dumps(err))
    except Exception:  # any failure: send the message only
        return BackendError(str(err))
    return err
