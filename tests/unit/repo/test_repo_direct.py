"""Packs written around the page cache (O_DIRECT) hold exactly the bytes written, read
back while unfinished, and fall back to ordinary writes where O_DIRECT is refused."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest

from cipherdump.repo import direct_file
from cipherdump.repo.direct_file import DirectAppendFile


def _open(path: Path) -> DirectAppendFile:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    return DirectAppendFile(str(path), fd)


def _fill(f: DirectAppendFile, rng: random.Random, total: int) -> bytes:
    expected = bytearray()
    while len(expected) < total:
        piece = rng.randbytes(rng.choice([0, 1, 24, 4095, 4096, 70_000, 1 << 20, 3 << 20]))
        assert f.write(piece) == len(piece)
        expected += piece
    return bytes(expected)


@pytest.mark.parametrize("where", ["disk", "shm"])
def test_what_is_written_is_what_the_file_holds(tmp_path: Path, where: str) -> None:
    base = tmp_path if where == "disk" else Path("/dev/shm")
    if not base.is_dir():
        pytest.skip("no /dev/shm")
    path = base / f"cipherdump-direct-test-{os.getpid()}"
    rng = random.Random(5)
    f = _open(path)
    try:
        expected = _fill(f, rng, 9 << 20)
        for _ in range(50):  # read back from the file and from the stage alike
            at = rng.randrange(len(expected))
            n = rng.randrange(1, 2 << 20)
            f.seek(at)
            assert f.read(n) == expected[at : at + n]
        f.flush()
        os.fsync(f.fileno())
        f.flush()  # a second flush changes nothing
    finally:
        f.close()
    try:
        assert path.read_bytes() == expected
    finally:
        path.unlink()


def test_a_write_refused_midway_goes_on_through_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(fd: int, data: memoryview) -> int:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(direct_file.os, "write", refuse)
    path = tmp_path / "pack"
    f = _open(path)
    expected = _fill(f, random.Random(6), 3 << 20)
    f.flush()
    f.close()
    assert path.read_bytes() == expected


def test_nothing_may_be_written_after_flush(tmp_path: Path) -> None:
    f = _open(tmp_path / "pack")
    f.write(b"abc")
    f.flush()
    with pytest.raises(ValueError):
        f.write(b"more")
    f.close()
    assert (tmp_path / "pack").read_bytes() == b"abc"


def test_data_made_in_place_is_written_in_order(tmp_path: Path) -> None:
    """reserve/advance: a writer makes its bytes in the segment being filled when they
    fit in the rest of it; mixed with ordinary writes, the file holds them in order."""
    path = tmp_path / "pack"
    f = _open(path)
    rng = random.Random(7)
    expected = bytearray()
    in_place = 0
    try:
        while len(expected) < 3 * direct_file.SEGMENT + 12345:
            piece = rng.randbytes(rng.choice([40, 4096, 70_000, 1 << 20, (1 << 20) + 40]))
            view = f.reserve(len(piece))
            if view is None:
                assert len(piece) > direct_file.SEGMENT - f.size % direct_file.SEGMENT
                f.write(piece)
            else:
                view[:] = piece
                view.release()
                f.advance(len(piece))
                in_place += 1
            expected += piece
        assert in_place > 3
        with pytest.raises(ValueError):
            f.advance(direct_file.SEGMENT + 1)
        f.seek(len(expected) - 100)
        assert f.read(100) == expected[-100:]
        f.flush()
        with pytest.raises(ValueError):
            f.reserve(1)
    finally:
        f.close()
    assert path.read_bytes() == expected


def test_segments_are_reused_by_the_next_file(tmp_path: Path) -> None:
    """A closed file's segments serve the next one (no new pages to fault in), and what
    the first file held never shows in the second."""
    first = _open(tmp_path / "a")
    first.write(b"\xaa" * (direct_file.SEGMENT + 5000))
    first.flush()
    segments = {id(s) for s in first._segments}
    first.close()
    second = _open(tmp_path / "b")
    try:
        assert {id(s) for s in second._segments} == segments
        second.write(b"b" * 10)
        second.seek(0)
        assert second.read(1 << 20) == b"b" * 10
        second.flush()
    finally:
        second.close()
    assert (tmp_path / "b").read_bytes() == b"b" * 10


def test_a_forked_child_starts_with_no_spare_segments(tmp_path: Path) -> None:
    f = _open(tmp_path / "a")
    f.write(b"x")
    f.flush()
    f.close()
    assert direct_file._POOL._free  # the parent keeps them
    pid = os.fork()
    if pid == 0:
        os._exit(0 if direct_file._POOL._free == [] else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
