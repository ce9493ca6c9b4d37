"""Forked worker processes that share the work of one backup.

The coordinator (the process that started the backup) walks, and hands directories
without subdirectories (a link count of 2) to a worker that has room for them; the
worker backs the directory up as the coordinator would (its own packs, its own index
files) and sends back the tree id and attrs, which the coordinator puts where the
directory's node goes.  Trees are content-addressed, so the snapshot's trees are the
same bytes whichever process made them.  What is only approximate across processes: a
file hard-linked from directories done by different processes is read, counted and
(once per process) stored for each, and a chunk new to the repository may be stored
once per process that meets it in the same run.

Why processes and not threads: a backup is per-inode Python work plus hashing, sealing
and writing; only part of that lets go of the GIL, so threads would not use a second
CPU.  Why ``fork``: a worker starts from the coordinator's state at the moment of the
fork (the open filesystem, the unlocked repository key, the loaded index, the parent
snapshot's directory table) with nothing to rebuild, send or re-derive.

A backend a forked process cannot use itself (S3: its client's threads are not in the
fork) is reached through the coordinator: a :class:`ForkRelay` gives each worker a
second pipe, on which the coordinator's threads make the worker's storage requests
(repo/backends/relay.py).

Each worker talks to the coordinator over one duplex pipe of pickled messages.  A
worker never prints and never touches the repository lock (it is the coordinator's);
if the coordinator dies, the kernel kills the workers (``PR_SET_PDEATHSIG``), so a
killed backup leaves no process behind that could still be writing.

Messages, worker to coordinator: ``("done", DirDone)``, ``("progress", inodes,
bytes)`` (the worker's totals so far), ``("problem", path, error)``, ``("end",
WorkerEnd)`` once its packs are saved, ``("failed", error)``.  Coordinator to worker:
a :class:`DirJob`, or ``None`` to finish.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import signal
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, Pipe, wait
from typing import Any, Protocol

from cipherdump.engine.backup.frame import Frame
from cipherdump.engine.backup.tally import Tally
from cipherdump.engine.dirtable import DirTable
from cipherdump.engine.parent import Census
from cipherdump.engine.views.image import ImageNode
from cipherdump.errors import CipherdumpError
from cipherdump.progress import Progress
from cipherdump.repo import Id, Node
from cipherdump.repo.codec import Value

_PR_SET_PDEATHSIG = 1
# Below this many used inodes a backup is over before workers would pay off.
PARALLEL_MIN_INODES = 2000
AUTO_MAX_WORKERS = 4
# Directories a worker holds at once: one being backed up, one waiting, so it never idles.
_JOBS_PER_WORKER = 2
_WAIT_S = 0.2


def worker_count(jobs: int, inodes_used: int, cpus: int | None) -> int:
    """How many worker processes to start besides the coordinator, for ``jobs`` asked
    (0: pick), on a filesystem of ``inodes_used`` inodes, with ``cpus`` CPUs.

    By default one per CPU (at most :data:`AUTO_MAX_WORKERS`, none with one CPU); with
    two or more workers the coordinator only walks and hands out directories (see
    :meth:`Crew.hand_out`).  On the 2-CPU benchmark machine two workers beat one that
    shares the work with the coordinator by 5-10 % in a full backup: the coordinator,
    which also starts up and saves the snapshot, no longer finishes last, and while one
    process waits for the disk another has work."""
    if jobs <= 0:
        cpus = cpus or 1
        if inodes_used < PARALLEL_MIN_INODES or cpus < 2:
            return 0
        return min(cpus, AUTO_MAX_WORKERS)
    return max(jobs - 1, 0)


def _die_with_coordinator() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class ForkRelay(Protocol):
    """The coordinator's service of storage requests for workers that cannot use its
    backend themselves (see :class:`~cipherdump.repo.backends.relay.RelayHost`)."""

    def before_fork(self) -> None: ...

    def in_child(self) -> None: ...

    def in_parent(self) -> None: ...

    def start(self) -> None: ...

    def stop(self, *, wait: bool = True) -> None: ...


class WorkerDied(RuntimeError):
    """A worker process ended without saying why (killed, or crashed)."""


class WorkerPool:
    """``count`` forked processes, each running ``serve(connection)``.

    ``serve`` returns when its work is over; the worker then exits without running the
    coordinator's exit handlers (they belong to it: its lock, its temporary files).
    """

    def __init__(
        self,
        count: int,
        serve: Callable[[Connection], None],
        relay: ForkRelay | None = None,
    ) -> None:
        self._conns: list[Connection] = []
        self._pids: list[int] = []
        self.in_flight: list[int] = []
        self._gone: set[int] = set()
        self._relay = relay
        try:
            for _ in range(count):
                self._start(serve)
            if relay is not None:
                relay.start()  # its threads, once no more forks follow
        except BaseException:
            self.kill()
            raise

    def __len__(self) -> int:
        return len(self._conns)

    def _start(self, serve: Callable[[Connection], None]) -> None:
        mine, theirs = Pipe(duplex=True)
        if self._relay is not None:
            self._relay.before_fork()
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
                _die_with_coordinator()
                if self._relay is not None:
                    self._relay.in_child()
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # the coordinator decides
                serve(theirs)
            except BaseException:
                code = 70
                if os.environ.get("CIPHERDUMP_DEBUG"):
                    import traceback

                    traceback.print_exc()
            finally:
                os._exit(code)
        theirs.close()
        if self._relay is not None:
            self._relay.in_parent()
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

    def join(self, *, killed: bool = False) -> None:
        """Wait for every worker to exit (after each has been told to finish)."""
        for conn in self._conns:
            conn.close()
        for pid in self._pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        self._conns.clear()
        self._pids.clear()
        if self._relay is not None:
            # A worker that finished had every request answered; one killed may have
            # left one in progress, which is not waited for.
            self._relay.stop(wait=not killed)
            self._relay = None

    def kill(self) -> None:
        """Stop every worker now; what they had not saved is lost, as after a crash."""
        for pid in self._pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.join(killed=True)


# -- messages ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DirJob:
    """A directory handed to a worker, and where it sits in the coordinator's walk."""

    number: int
    path: bytes
    name: bytes
    raw_name: bytes
    ino: int
    name_encrypted: bool
    stored_hash: tuple[int, int] | None
    order: int
    depth: int
    count_census: bool  # False in a reused directory (see Walk.open_dir)
    ancestors: tuple[int, ...]  # directory inodes from the top down to the one holding it


@dataclass(frozen=True, slots=True)
class DirDone:
    """A worker's answer to a :class:`DirJob`."""

    number: int
    tree: bytes | None  # None: the directory could not be opened (a problem was sent)
    attrs: dict[str, Value]
    errors: int
    census: Census  # the directory's own context, to count in its containing directory
    records: DirTable


@dataclass(frozen=True, slots=True)
class WorkerEnd:
    """What a worker counted over all its jobs, sent once its packs are saved."""

    tally: Tally
    loaded: dict[int, int]  # the parent snapshot's files it looked at: number -> generation
    warnings: list[str]  # the filesystem's (see Filesystem.warn)
    index_files: list[str]  # the index files it saved, for the coordinator's index


class WorkerFailed(Exception):
    """A worker stopped on an error of the whole backup (the repository, say)."""

    def __init__(self, error: CipherdumpError | str) -> None:
        super().__init__(str(error))
        self.error = error


def picklable(err: CipherdumpError) -> CipherdumpError:
    try:
        pickle.loads(pickle.dumps(err))
    except Exception:  # any failure: send the message only
        return CipherdumpError(str(err))
    return err


# -- the coordinator's side ---------------------------------------------------------------------


class Crew:
    """The coordinator's side of the workers: hands out directories, takes in what
    the workers send, and at the end their :class:`WorkerEnd` messages.

    ``on_problem`` takes the problems workers report; ``on_wait`` runs whenever the
    coordinator has waited for the workers (to keep the repository lock fresh and
    report progress)."""

    def __init__(
        self,
        pool: WorkerPool,
        on_problem: Callable[[bytes, CipherdumpError], None] | None,
        on_wait: Callable[[], None],
    ) -> None:
        self.pool = pool
        self._on_problem = on_problem
        self._on_wait = on_wait
        self._jobs = 0
        self._done: dict[int, DirDone] = {}
        # Each worker's totals so far (inodes, bytes), for progress events, until its
        # end message brings its whole tally.
        self._remote: dict[int, tuple[int, int]] = {}
        self._ends: list[WorkerEnd] = []
        self._ended: set[int] = set()

    def remote_progress(self) -> tuple[int, int]:
        """(inodes, bytes) the workers have reported done and not yet handed over."""
        return (
            sum(i for i, _ in self._remote.values()),
            sum(b for _, b in self._remote.values()),
        )

    def hand_out(self, kid: ImageNode, order: int, stack: list[Frame]) -> bool:
        """Give the directory ``kid`` of ``stack[-1]`` to a worker, if it has no
        subdirectories; False to walk it here.  With one worker, the coordinator backs
        the directory up itself if the worker has no room for it; with more, it waits
        for room (it has the walk, the hand-outs and the snapshot to do)."""
        pool = self.pool
        if kid.inode.links != 2:
            return False
        self.pump(0)
        worker = pool.least_busy(_JOBS_PER_WORKER)
        while worker is None and len(pool) > 1:
            self.pump(_WAIT_S)
            worker = pool.least_busy(_JOBS_PER_WORKER)
        if worker is None:
            return False
        frame = stack[-1]
        self._jobs += 1
        job = DirJob(
            self._jobs,
            kid.path,
            kid.name,
            kid.raw_name,
            kid.inode.ino,
            kid.name_encrypted,
            kid.stored_hash,
            order,
            len(stack),
            frame.reuse is None,
            tuple(f.node.inode.ino for f in stack),
        )
        pool.send(worker, job)
        pool.in_flight[worker] += 1
        frame.pending[kid.raw_name] = job.number
        # Holds the entry's place (and catches a second entry of the same name).
        frame.nodes[kid.raw_name] = Node(kid.raw_name, "dir")
        return True

    def collect(self, frame: Frame, records: DirTable) -> None:
        """Wait for the directories of ``frame`` that workers have, put them in, and
        their directory records into ``records``."""
        for name, number in frame.pending.items():
            while number not in self._done:
                self.pump(_WAIT_S)
            done = self._done.pop(number)
            for key, n in done.census.items():
                frame.census[key] = frame.census.get(key, 0) + n
            if done.errors:
                frame.errors += 1
            if done.tree is None:
                del frame.nodes[name]  # as the walk leaves out an entry it cannot open
                continue
            frame.nodes[name] = Node(name, "dir", subtree=Id(done.tree), attrs=done.attrs)
            records.extend(done.records)
        frame.pending.clear()

    def pump(self, timeout: float | None) -> None:
        """Take in what the workers sent within ``timeout`` seconds."""
        pool = self.pool
        for worker, message in pool.receive(timeout):
            if message is None:
                if worker in self._ended:
                    continue
                raise WorkerDied(f"backup worker {worker} ended unexpectedly")
            kind = message[0]
            if kind == "done":
                done: DirDone = message[1]
                self._done[done.number] = done
                pool.in_flight[worker] -= 1
            elif kind == "progress":
                self._remote[worker] = (message[1], message[2])
            elif kind == "problem":
                if self._on_problem is not None:
                    self._on_problem(message[1], message[2])
            elif kind == "end":
                self._ends.append(message[1])
                self._ended.add(worker)
                self._remote.pop(worker, None)  # now counted in its tally
            elif kind == "failed":
                raise WorkerFailed(message[1])
        self._on_wait()

    def finish(self) -> list[WorkerEnd]:
        """Have every worker save what it holds; their end messages."""
        pool = self.pool
        for worker in range(len(pool)):
            pool.send(worker, None)
        while len(self._ends) < len(pool):
            self.pump(_WAIT_S)
        pool.join()
        ends, self._ends = self._ends, []
        return ends


# -- the worker's side ----------------------------------------------------------------------------


class WorkerSide(Protocol):
    """What a worker process does, on its fork of the coordinator's state."""

    def start_worker(
        self,
        on_progress: Callable[[Progress], None],
        on_problem: Callable[[bytes, CipherdumpError], None],
    ) -> None:
        """Forget the coordinator's counts and report through these instead."""

    def run_job(self, job: DirJob) -> DirDone: ...

    def end_worker(self) -> WorkerEnd:
        """Save what is held (packs, index files); what this worker counted."""


def serve(conn: Connection, side: WorkerSide) -> None:
    """A worker's life: back up the directories it is sent, until told to stop."""

    def send_progress(event: Progress) -> None:
        conn.send(("progress", event.inodes_done, event.bytes_done))

    def send_problem(path: bytes, err: CipherdumpError) -> None:
        conn.send(("problem", path, picklable(err)))

    try:
        side.start_worker(send_progress, send_problem)
        while (job := conn.recv()) is not None:
            conn.send(("done", side.run_job(job)))
        conn.send(("end", side.end_worker()))
    except CipherdumpError as err:
        conn.send(("failed", picklable(err)))
    except Exception as err:  # the coordinator reports it as one line
        conn.send(("failed", f"{type(err).__name__}: {err}"))
