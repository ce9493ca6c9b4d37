"""Worker processes, through their seams: how many, the messages, the coordinator's
side (:class:`Crew`) against forked workers whose side is a test double."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from multiprocessing.connection import Pipe
from typing import Any

import pytest

from cipherdump.engine.backup.frame import Frame
from cipherdump.engine.backup.tally import Tally
from cipherdump.engine.backup.workers import (
    Crew,
    DirDone,
    DirJob,
    WorkerEnd,
    WorkerFailed,
    WorkerPool,
    serve,
    worker_count,
)
from cipherdump.engine.dirtable import DirRecord, DirTable
from cipherdump.engine.views.image import ImageNode, Namespace
from cipherdump.errors import CipherdumpError, CorruptError
from cipherdump.ext4 import open_filesystem
from cipherdump.progress import Progress
from cipherdump.repo import Id
from shared_data import REPO

SAMPLE = REPO / "examples" / "sample.img"


@pytest.mark.parametrize(
    ("cpus", "jobs", "inodes", "workers"),
    [
        (1, 0, 50_000, 0),  # one CPU: nothing to share it with
        (2, 0, 50_000, 2),  # one worker per CPU; the coordinator walks and hands out
        (16, 0, 50_000, 4),  # at most four
        (8, 0, 100, 0),  # too small to pay for workers
        (None, 0, 50_000, 0),  # CPUs unknown: one
        (8, 1, 50_000, 0),
        (1, 3, 50_000, 2),  # asked for: as many as asked
    ],
)
def test_worker_count(cpus: int | None, jobs: int, inodes: int, workers: int) -> None:
    assert worker_count(jobs, inodes, cpus) == workers


class FakeSide:
    """A worker's side that backs nothing up: each job's answer names its directory."""

    def __init__(self, fail: CipherdumpError | None = None) -> None:
        self.fail = fail
        self.tally = Tally.for_inodes(64)
        self.report: Callable[[Progress], None] | None = None
        self.problem: Callable[[bytes, CipherdumpError], None] | None = None

    def start_worker(
        self,
        on_progress: Callable[[Progress], None],
        on_problem: Callable[[bytes, CipherdumpError], None],
    ) -> None:
        self.report, self.problem = on_progress, on_problem

    def run_job(self, job: DirJob) -> DirDone:
        if self.fail is not None:
            raise self.fail
        assert self.report is not None and self.problem is not None
        self.tally.first_visit(job.ino)
        self.tally.stats.dirs_new += 1
        self.report(Progress(inodes_done=1, inodes_total=1, bytes_done=9, bytes_total=9))
        self.problem(job.path, CorruptError("made up", structure="inode"))
        record = DirRecord(job.ino, 0, 0, bytes(16), bytes(16), Id(bytes(32)))
        return DirDone(job.number, bytes(32), {"ino": job.ino}, 0, {b"p": 1}, DirTable.of([record]))

    def end_worker(self) -> WorkerEnd:
        return WorkerEnd(self.tally, {5: 1}, [f"from {os.getpid()}"], [])


def test_serve_answers_jobs_then_ends() -> None:
    mine, theirs = Pipe(duplex=True)
    job = DirJob(1, b"/d", b"d", b"d", 13, False, None, 0, 1, True, (2,))
    mine.send(job)
    mine.send(None)
    serve(theirs, FakeSide())
    got = []
    while mine.poll():
        got.append(mine.recv())
    kinds = [m[0] for m in got]
    assert kinds == ["progress", "problem", "done", "end"]
    assert got[0][1:] == (1, 9)  # the worker's totals so far
    assert got[2][1].number == 1 and got[3][1].tally.stats.dirs_new == 1


def test_serve_sends_a_failure_as_one_message() -> None:
    mine, theirs = Pipe(duplex=True)
    mine.send(DirJob(1, b"/d", b"d", b"d", 13, False, None, 0, 1, True, ()))
    serve(theirs, FakeSide(fail=CorruptError("the repository is gone", structure="pack")))
    kind, error = mine.recv()
    assert kind == "failed" and "the repository is gone" in str(error)


@pytest.fixture
def sample() -> Iterator[tuple[ImageNode, list[ImageNode]]]:
    with open_filesystem(str(SAMPLE)) as fs:
        ns = Namespace(fs)
        top = ns.resolve(b"/")
        yield top, [k for k in ns.iter_children(top) if isinstance(k, ImageNode)]


def test_a_crew_hands_out_leaf_directories_and_collects_them(
    sample: tuple[ImageNode, list[ImageNode]],
) -> None:
    top, kids = sample
    problems: list[bytes] = []
    waits: list[int] = []
    pool = WorkerPool(2, lambda conn: serve(conn, FakeSide()))
    try:
        crew = Crew(pool, lambda path, err: problems.append(path), lambda: waits.append(1))
        frame = Frame(top, {}, [])
        stack = [frame]
        handed = {k.raw_name: crew.hand_out(k, n, stack) for n, k in enumerate(kids)}
        # Only directories without subdirectories go (a link count of 2).
        assert handed == {
            b"lost+found": True,
            b"README.txt": False,
            b"public": True,
            b"home": False,
        }
        records = DirTable()
        crew.collect(frame, records)
        assert sorted(r.ino for r in records) == [11, 13]
        assert frame.census == {b"p": 2} and not frame.pending
        assert {n: frame.nodes[n].kind for n in frame.nodes} == {
            b"lost+found": "dir",
            b"public": "dir",
        }
        ends = crew.finish()
    finally:
        pool.kill()
    assert sorted(problems) == [b"/lost+found", b"/public"]
    assert waits
    merged = Tally.for_inodes(64)
    for end in ends:
        merged.merge(end.tally)
    assert merged.stats.dirs_new == 2 and list(merged.seen) == [11, 13]
    assert crew.remote_progress() == (0, 0)  # handed over with the tallies


def test_a_crew_raises_what_a_worker_failed_on(
    sample: tuple[ImageNode, list[ImageNode]],
) -> None:
    top, kids = sample
    fail = CorruptError("made up for the test", structure="pack")
    pool = WorkerPool(1, lambda conn: serve(conn, FakeSide(fail=fail)))
    try:
        crew = Crew(pool, None, lambda: None)
        frame = Frame(top, {}, [])
        public = next(k for k in kids if k.raw_name == b"public")
        assert crew.hand_out(public, 2, [frame])
        with pytest.raises(WorkerFailed) as caught:
            crew.collect(frame, [])
        error: Any = caught.value.error
        assert isinstance(error, CorruptError) and "made up" in str(error)
    finally:
        pool.kill()
