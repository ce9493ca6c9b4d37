"""DirectReader: O_DIRECT reads with read-ahead of our own return exactly what plain
reads of the same file return, whatever was hinted, dropped or still in flight."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cipherdump.blockio import direct as direct_module
from cipherdump.blockio.aio import AioContext
from cipherdump.blockio.direct import ALIGN, PIECE, DirectReader

# Not a multiple of ALIGN, so the last direct read of the file is short.
SIZE = 5 * PIECE + 3 * ALIGN + 123


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("direct") / "data.bin"
    path.write_bytes(os.urandom(SIZE))
    return path


def _open_direct(path: Path) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError as exc:  # tmpfs and a few others have no O_DIRECT
        pytest.skip(f"{path.parent} does not take O_DIRECT: {exc.strerror}")


@contextlib.contextmanager
def _reader(path: Path, aio: bool) -> Iterator[DirectReader]:
    fd = _open_direct(path)
    # Rings of a few pieces, so that hints wrap around them and push each other out.
    r = DirectReader(fd, SIZE, ring=3 * PIECE, stream_ring=2 * PIECE, threads=3, aio=aio)
    try:
        yield r
    finally:
        r.close()
        os.close(fd)


@pytest.fixture(params=["aio", "threads"])
def reader(data_file: Path, request: pytest.FixtureRequest) -> Iterator[DirectReader]:
    """Read ahead with native AIO, and with the threads used where it is missing."""
    with _reader(data_file, request.param == "aio") as r:
        if request.param == "aio" and not r.uses_aio:
            pytest.skip("no native AIO here")
        yield r


offsets = st.integers(min_value=0, max_value=SIZE + 2 * ALIGN)
lengths = st.integers(min_value=0, max_value=2 * PIECE + ALIGN)
steps = st.lists(
    st.tuples(st.sampled_from(["hint", "stream", "read"]), offsets, lengths),
    min_size=1,
    max_size=40,
)


@settings(max_examples=60, deadline=None)
@given(steps=steps, aio=st.booleans())
def test_reads_match_plain_reads_whatever_was_hinted(
    data_file: Path, steps: list[tuple[str, int, int]], aio: bool
) -> None:
    data = data_file.read_bytes()
    with _reader(data_file, aio) as reader:
        for what, offset, length in steps:
            if what == "hint":
                reader.prefetch(offset, length)
            elif what == "stream":
                reader.prefetch_stream(offset, length)
            else:
                assert reader.read_at(offset, length) == data[offset : offset + length]


def test_hinted_reads_are_served_from_the_read_ahead(
    data_file: Path, reader: DirectReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = data_file.read_bytes()
    ranges = [(7 * ALIGN + 5, 3000), (PIECE - ALIGN, 2 * ALIGN), (2 * PIECE, PIECE)]
    for offset, length in ranges:
        reader.prefetch(offset, length)

    def no_read_now(self: DirectReader, offset: int, end: int) -> bytes:
        raise AssertionError(f"read {offset}..{end} again")

    monkeypatch.setattr(DirectReader, "_read_now", no_read_now)
    for offset, length in ranges:  # across a piece boundary too
        assert reader.read_at(offset, length) == data[offset : offset + length]


def test_streaming_a_big_file_leaves_the_small_files_hinted(
    data_file: Path, reader: DirectReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A big file read (and hinted ahead) between the small files of its directory goes
    through a ring of its own: the small files' pieces after it are still there."""
    data = data_file.read_bytes()
    small = [(k * PIECE + 5 * ALIGN, 3 * ALIGN) for k in range(3)]
    for offset, length in small:
        reader.prefetch(offset, length)
    for k in range(SIZE // PIECE):  # twice the stream ring, and more
        reader.prefetch_stream(k * PIECE, PIECE)
        assert reader.read_at(k * PIECE, PIECE) == data[k * PIECE : (k + 1) * PIECE]

    def no_read_now(self: DirectReader, offset: int, end: int) -> bytes:
        raise AssertionError(f"read {offset}..{end} again")

    monkeypatch.setattr(DirectReader, "_read_now", no_read_now)
    for offset, length in small:
        assert reader.read_at(offset, length) == data[offset : offset + length]


def test_more_hints_than_reads_in_flight_wait_for_room(
    data_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With AIO, a context holds so many reads; hints beyond that wait for the oldest."""
    monkeypatch.setattr(direct_module, "AIO_DEPTH", 2)
    data = data_file.read_bytes()
    with _reader(data_file, aio=True) as reader:
        if not reader.uses_aio:
            pytest.skip("no native AIO here")
        ranges = [(k * 5 * ALIGN, 2 * ALIGN) for k in range(40)]
        for offset, length in ranges:
            reader.prefetch(offset, length)
        for offset, length in ranges:
            assert reader.read_at(offset, length) == data[offset : offset + length]


def test_a_failed_read_ahead_is_read_again(
    data_file: Path, reader: DirectReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = data_file.read_bytes()
    real_preadv, real_submit = os.preadv, AioContext.submit_read

    def failing_preadv(fd: int, buffers: list[memoryview], offset: int) -> int:
        if offset == 3 * PIECE:
            raise OSError(5, "Input/output error")
        return real_preadv(fd, buffers, offset)

    def failing_submit(self: AioContext, fd: int, address: int, n: int, at: int, tag: int) -> None:
        if at == 3 * PIECE:
            raise OSError(11, "Resource temporarily unavailable")
        real_submit(self, fd, address, n, at, tag)

    monkeypatch.setattr(direct_module.os, "preadv", failing_preadv)
    monkeypatch.setattr(AioContext, "submit_read", failing_submit)
    reader.prefetch(3 * PIECE, 4 * ALIGN)
    reader.prefetch(3 * PIECE + 8 * ALIGN, 4 * ALIGN)
    monkeypatch.setattr(direct_module.os, "preadv", real_preadv)
    for offset in (3 * PIECE, 3 * PIECE + 8 * ALIGN):
        assert reader.read_at(offset, 4 * ALIGN) == data[offset : offset + 4 * ALIGN]


def test_a_forked_child_starts_with_no_read_ahead(data_file: Path, reader: DirectReader) -> None:
    """The parent's pieces (and the threads reading them) do not exist in a child."""
    data = data_file.read_bytes()
    reader.prefetch(0, 2 * PIECE)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's result is its exit status
        ok = False
        try:
            reader.prefetch(PIECE, PIECE)
            ok = reader.read_at(ALIGN, 2 * PIECE) == data[ALIGN : ALIGN + 2 * PIECE]
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert reader.read_at(0, 2 * PIECE) == data[: 2 * PIECE]


def test_reads_past_the_end_are_short_or_empty(data_file: Path, reader: DirectReader) -> None:
    data = data_file.read_bytes()
    reader.prefetch(SIZE - 10, 100)
    assert reader.read_at(SIZE - 10, 100) == data[-10:]
    assert reader.read_at(SIZE, 10) == b""
    assert reader.read_at(SIZE + PIECE, 10) == b""
    with pytest.raises(ValueError):
        reader.read_at(-1, 10)


def test_a_ring_smaller_than_a_piece_is_refused() -> None:
    with pytest.raises(ValueError):
        DirectReader(-1, 0, ring=PIECE // 2)
