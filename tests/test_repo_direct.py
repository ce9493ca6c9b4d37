"""Packs written around the page cache (O_DIRECT) hold exactly the bytes written, read
back while unfinished, and fall back to ordinary writes where O_DIRECT is refused."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest

from cipherdump.repo.backends import direct
from cipherdump.repo.backends.direct import DirectAppendFile


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

    monkeypatch.setattr(direct.os, "write", refuse)
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
