"""A process that keeps changing files while a live backup reads their filesystem.

Every 4 KiB block it writes carries a header (magic, file id, block index, version) and
a filler made of the same numbers, so a restored file can be checked against the
versions the writer actually wrote: :func:`content` gives version ``v`` of a file of a
given shape, whole; a file equal to none of them (a block of another version, a torn
tail) was stored half-old, half-new.

Shapes of write (one per file, see :data:`SHAPES`):

* ``rewrite``: the same blocks rewritten in place, one ``pwrite`` per block;
* ``append``: one block appended per version (block ``i`` past the first four carries
  version ``i - 3``);
* ``truncate``: truncated to zero, then written again at another length;
* ``rename``: a new version written to a temporary name, then renamed over the file;
* ``create``: new files created and the third-oldest deleted (each file has one version);
* ``mmap``: blocks changed in place through a shared mapping, never ``msync``ed (the
  data sits in dirty pages until writeback or ``syncfs``);
* ``odirect``: blocks rewritten in place with ``O_DIRECT`` (straight to the device).

The writer pauses between versions (a few to a few hundred milliseconds, varied), so
that some files rest long enough for a round of the backup to accept them, and stops
only between versions: every version it started is complete on disk when it ends.
It records what it wrote in a JSON log outside the filesystem (:func:`read_log`).
"""

from __future__ import annotations

import json
import mmap
import multiprocessing
import os
import random
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event
from pathlib import Path

BLOCK = 4096
MAGIC = b"CDLIVE\x00\x01"
_HEADER = struct.Struct("<8sIIQ")  # magic, file id, block index, version
SHAPES = ("rewrite", "append", "truncate", "rename", "create", "mmap", "odirect")
# Blocks of a file of the in-place shapes: enough that a version takes a while to write.
IN_PLACE_BLOCKS = 48
APPEND_BASE = 4


def block(file_id: int, index: int, version: int) -> bytes:
    head = _HEADER.pack(MAGIC, file_id, index, version)
    fill = struct.pack("<IIQ", file_id ^ 0x5A5A5A5A, index, version) * (BLOCK // 16)
    return head + fill[: BLOCK - len(head)]


def blocks_of(shape: str, version: int) -> list[int]:
    """The version tag of each block of version ``version`` of a file of ``shape``."""
    if shape == "append":
        return [0] * APPEND_BASE + list(range(1, version + 1))
    if shape == "truncate":
        return [version] * (1 + (version * 7) % 23)
    if shape == "create":
        return [version] * 3
    return [version] * IN_PLACE_BLOCKS


def content(shape: str, file_id: int, version: int) -> bytes:
    return b"".join(block(file_id, i, v) for i, v in enumerate(blocks_of(shape, version)))


@dataclass
class FileLog:
    """What the writer did to one path."""

    shape: str
    file_id: int
    versions: list[int] = field(default_factory=list)
    deleted: bool = False
    created_ns: int = 0  # CLOCK_REALTIME once created (0: before the writer started)


def read_log(path: Path) -> dict[bytes, FileLog]:
    raw = json.loads(path.read_text())
    return {
        os.fsencode(k): FileLog(
            v["shape"], v["file_id"], v["versions"], v["deleted"], v.get("created_ns", 0)
        )
        for k, v in raw.items()
    }


def _write_log(path: Path, log: dict[str, FileLog]) -> None:
    data = {
        k: {
            "shape": v.shape,
            "file_id": v.file_id,
            "versions": v.versions,
            "deleted": v.deleted,
            "created_ns": v.created_ns,
        }
        for k, v in log.items()
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.rename(path)


# -- writing one version ----------------------------------------------------------------


def _pwrite_blocks(fd: int, tags: Sequence[int], file_id: int, pause: float) -> None:
    for i in range(len(tags)):
        os.pwrite(fd, block(file_id, i, tags[i]), i * BLOCK)
        _nap(pause)


def _nap(pause: float) -> None:
    if pause > 0:
        time.sleep(pause)


def _write_direct(path: Path, file_id: int, version: int, pause: float) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT wants
    try:
        for i in range(IN_PLACE_BLOCKS):
            buf.seek(0)
            buf.write(block(file_id, i, version))
            os.pwritev(fd, [buf], i * BLOCK)
            _nap(pause)
    finally:
        buf.close()
        os.close(fd)


def _write_mmap(path: Path, file_id: int, version: int, pause: float) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        with mmap.mmap(fd, IN_PLACE_BLOCKS * BLOCK, mmap.MAP_SHARED) as m:
            for i in range(IN_PLACE_BLOCKS):
                m[i * BLOCK : (i + 1) * BLOCK] = block(file_id, i, version)
                _nap(pause)
    finally:
        os.close(fd)


def write_version(
    root: Path, rel: str, shape: str, file_id: int, version: int, pause: float = 0.0
) -> None:
    """Make ``root/rel`` version ``version`` of its shape (from version ``version-1``),
    sleeping ``pause`` seconds between blocks written in place (so that a version is
    half-written for a while, as a big file's would be)."""
    path = root / rel
    tags = blocks_of(shape, version)
    if shape == "rewrite":
        fd = os.open(path, os.O_WRONLY)
        try:
            _pwrite_blocks(fd, tags, file_id, pause)
        finally:
            os.close(fd)
    elif shape == "append":
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, block(file_id, len(tags) - 1, tags[-1]))
        finally:
            os.close(fd)
    elif shape == "truncate":
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        try:
            _pwrite_blocks(fd, tags, file_id, pause)
        finally:
            os.close(fd)
    elif shape == "rename":
        tmp = path.with_name(path.name + ".new")
        tmp.write_bytes(content(shape, file_id, version))
        tmp.rename(path)
    elif shape == "mmap":
        _write_mmap(path, file_id, version, pause)
    elif shape == "odirect":
        _write_direct(path, file_id, version, pause)
    else:
        raise ValueError(shape)


def create_file(root: Path, rel: str, shape: str, file_id: int) -> None:
    """Version 0 of a file, written and synced (the state before the writer starts)."""
    (root / rel).write_bytes(content(shape, file_id, 0))


# -- the process --------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """Which files the writer works on: (path relative to ``root``, shape, file id)."""

    root: Path
    files: tuple[tuple[str, str, int], ...]
    create_dir: str | None = None  # where the ``create`` shape makes and deletes files
    seed: int = 0
    max_pause_s: float = 0.25  # between versions (varied)
    block_pause_s: float = 0.001  # between blocks of one version


def prepare(plan: Plan, log_path: Path) -> None:
    """Write version 0 of every file of ``plan``, sync, and start the log with it."""
    log: dict[str, FileLog] = {}
    for rel, shape, file_id in plan.files:
        create_file(plan.root, rel, shape, file_id)
        log[rel] = FileLog(shape, file_id, [0])
    if plan.create_dir is not None:
        (plan.root / plan.create_dir).mkdir(exist_ok=True)
    os.sync()
    _write_log(log_path, log)


def _run(plan: Plan, log_path: Path, stop: Event) -> None:
    rng = random.Random(plan.seed)
    log = {os.fsdecode(k): v for k, v in read_log(log_path).items()}
    created: list[str] = []
    next_id = 1_000_000
    versions = {rel: 0 for rel, _, _ in plan.files}
    while not stop.is_set():
        choice = rng.randrange(len(plan.files) + (1 if plan.create_dir else 0))
        if choice < len(plan.files):
            rel, shape, file_id = plan.files[choice]
            versions[rel] += 1
            write_version(plan.root, rel, shape, file_id, versions[rel], plan.block_pause_s)
            log[rel].versions.append(versions[rel])
        else:
            assert plan.create_dir is not None
            rel = f"{plan.create_dir}/c{next_id}"
            create_file(plan.root, rel, "create", next_id)
            log[rel] = FileLog("create", next_id, [0], created_ns=time.time_ns())
            created.append(rel)
            next_id += 1
            if len(created) > 3:
                old = created.pop(0)
                (plan.root / old).unlink()
                log[old].deleted = True
        _write_log(log_path, log)
        time.sleep(rng.random() * plan.max_pause_s)


@contextmanager
def running_writer(
    plan: Plan, log_path: Path, *, warmup_s: float = 0.3
) -> Iterator[Callable[[], None]]:
    """Run the writer (on a plan :func:`prepare` has written) in a forked process while
    the block runs; yields ``stop()``, which ends it between versions (also done on
    the way out, whatever happens)."""
    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()
    proc = ctx.Process(target=_run, args=(plan, log_path, stop), daemon=True)
    proc.start()
    time.sleep(warmup_s)

    def end() -> None:
        stop.set()
        proc.join(30)
        if proc.is_alive():  # pragma: no cover - a writer stuck in the kernel
            proc.kill()
            proc.join(5)
        if proc.exitcode not in (0, None):
            raise RuntimeError(f"the writer failed (exit code {proc.exitcode})")

    try:
        yield end
    finally:
        if proc.is_alive() or not stop.is_set():
            stop.set()
            proc.join(30)
            if proc.is_alive():  # pragma: no cover
                proc.kill()
                proc.join(5)


def version_of(data: bytes, shape: str, file_id: int) -> int | None:
    """The version of a file of ``shape`` whose whole content is ``data``, or None if it
    is no complete version (a block of another version, a wrong length, a torn tail)."""
    if len(data) % BLOCK or not data:
        return None
    head = _HEADER.unpack_from(data, 0)
    if head[0] != MAGIC or head[1] != file_id:
        return None
    last = _HEADER.unpack_from(data, len(data) - BLOCK)
    guess = last[3] if last[0] == MAGIC else -1
    if guess < 0:
        return None
    return guess if data == content(shape, file_id, guess) else None


__all__ = [
    "BLOCK",
    "SHAPES",
    "FileLog",
    "Plan",
    "block",
    "blocks_of",
    "content",
    "create_file",
    "prepare",
    "read_log",
    "running_writer",
    "version_of",
    "write_version",
]
