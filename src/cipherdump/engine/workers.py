"""Forked worker processes that share the work of one backup.

Why processes and not threads: a backup is per-inode Python work plus hashing, sealing
and writing; only part of that lets go of the GIL, so threads would not use a second
CPU.  Why ``fork``: a worker starts from the parent's state at the moment of the fork
(the open source, the unlocked repository key, the loaded index, the parent snapshot's
directory table) with nothing to rebuild, send or re-derive.

Each worker talks to the parent over one duplex pipe of pickled messages.  A worker
never prints and never touches the repository lock (it is the parent's); if the parent
dies, the kernel kills the workers (``PR_SET_PDEATHSIG``), so a killed backup leaves no
process behind that could still be writing.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import warnings
from collections.abc import Callable
from multiprocessing.connection import Connection, Pipe, wait
from typing import Any

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class WorkerDied(RuntimeError):
    """A worker process ended without saying why (killed, or crashed)."""


class WorkerPool:
    """``count`` forked processes, each running ``serve(connection)``.

    ``serve`` returns when its work is over; the worker then exits without running the
    parent's exit handlers (they belong to the parent: its lock, its temporary files).
    """

    def __init__(self, count: int, serve: Callable[[Connection], None]) -> None:
        self._conns: list[Connection] = []
        self._pids: list[int] = []
        self.in_flight: list[int] = []
        self._gone: set[int] = set()
        try:
            for _ in range(count):
                self._start(serve)
        except BaseException:
            self.kill()
            raise

    def __len__(self) -> int:
        return len(self._conns)

    def _start(self, serve: Callable[[Connection], None]) -> None:
        mine, theirs = Pipe(duplex=True)
        sys.stdout.flush()
        sys.stderr.flush()
        with warnings.catch_warnings():
            # Python 3.12+ warns about fork() in a process with threads (a progress
            # display's refresh thread, say).  The child touches none of their locks.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                mine.close()
                for other in self._conns:
                    other.close()
                _die_with_parent()
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides
                serve(theirs)
            except BaseException:
                code = 70
                if os.environ.get("CIPHERDUMP_DEBUG"):
                    import traceback

                    traceback.print_exc()
            finally:
                os._exit(code)
        theirs.close()
        self._conns.append(mine)
        self._pids.append(pid)
        self.in_flight.append(0)

    def send(self, worker: int, message: Any) -> None:
        try:
            self._conns[worker].send(message)
        except OSError as exc:
            raise WorkerDied(f"backup worker {worker} is gone ({exc})") from None

    def least_busy(self, limit: int) -> int | None:
        """The worker with the fewest jobs in flight, if it has fewer than ``limit``."""
        best = min(range(len(self._conns)), key=self.in_flight.__getitem__, default=None)
        if best is None or self.in_flight[best] >= limit:
            return None
        return best

    def receive(self, timeout: float | None) -> list[tuple[int, Any]]:
        """Every message ready within ``timeout`` seconds (None: wait for one).

        A worker's end of its pipe closing (it exited) comes as the message ``None``,
        after which that worker is not listened to any more.
        """
        listening = [c for i, c in enumerate(self._conns) if i not in self._gone]
        out: list[tuple[int, Any]] = []
        for conn in wait(listening, timeout):
            assert isinstance(conn, Connection)
            worker = self._conns.index(conn)
            try:
                while True:
                    out.append((worker, conn.recv()))
                    if not conn.poll():
                        break
            except (EOFError, OSError):
                self._gone.add(worker)
                out.append((worker, None))
        return out

    def join(self) -> None:
        """Wait for every worker to exit (after each has been told to finish)."""
        for conn in self._conns:
            conn.close()
        for pid in self._pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self._conns.clear()
        self._pids.clear()

    def kill(self) -> None:
        """Stop every worker now; what they had not saved is lost, as after a crash."""
        for pid in self._pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.join()
