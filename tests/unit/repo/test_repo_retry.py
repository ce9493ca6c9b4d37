"""RetryBackend: transient failures are retried with growing, jittered waits, bounded in
total time; every other failure is raised at once."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import BinaryIO

import pytest

from cipherdump.errors import BackendError
from cipherdump.repo.backends.base import (
    FileInfo,
    FileType,
    Handle,
    ObjectMissing,
    ShortFile,
    TransientError,
)
from cipherdump.repo.backends.memory import MemoryBackend
from cipherdump.repo.backends.retry import RetryBackend

H = Handle(FileType.INDEX, "a" * 64)


class Flaky(MemoryBackend):
    """Fails the next ``failures`` calls with ``error``; optionally does the work first
    (the answer is lost, not the request)."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 0
        self.error: BackendError = TransientError("HTTP 503 SlowDown")
        self.work_then_fail = False
        self.calls = 0

    def _maybe_fail(self) -> None:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise self.error

    def save(self, handle: Handle, source: BinaryIO) -> None:
        if self.work_then_fail:
            super().save(handle, source)
        self._maybe_fail()
        super().save(handle, source)

    def load(self, handle: Handle, offset: int = 0, length: int | None = None) -> bytes:
        self._maybe_fail()
        return super().load(handle, offset, length)

    def remove(self, handle: Handle) -> None:
        if self.work_then_fail:
            super().remove(handle)
        self._maybe_fail()
        super().remove(handle)

    def list(self, file_type: FileType) -> Iterator[FileInfo]:
        yield from super().list(file_type)
        self._maybe_fail()  # half-way through, as a dropped listing


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def _wrap(inner: Flaky, max_seconds: float = 60) -> tuple[RetryBackend, Clock]:
    clock = Clock()
    return (
        RetryBackend(inner, max_seconds=max_seconds, sleep=clock.sleep, clock=lambda: clock.now),
        clock,
    )


def test_transient_failures_are_retried_with_growing_waits() -> None:
    inner = Flaky()
    backend, clock = _wrap(inner)
    inner.failures = 5
    backend.save(H, io.BytesIO(b"data"))
    assert inner.load(H) == b"data"
    assert backend.retries == 5 and len(clock.waits) == 5
    for i, wait in enumerate(clock.waits):  # equal jitter: between half and all of the step
        step = min(15.0, 0.5 * 2**i)
        assert step / 2 <= wait <= step
    inner.failures = 2
    assert backend.load(H) == b"data"
    inner.failures = 1
    assert [i.name for i in backend.list(FileType.INDEX)] == [H.name]


def test_giving_up_is_bounded_and_names_the_operation() -> None:
    inner = Flaky()
    backend, clock = _wrap(inner, max_seconds=30)
    inner.failures = 10_000
    with pytest.raises(BackendError) as caught:
        backend.save(H, io.BytesIO(b"x"))
    assert not isinstance(caught.value, TransientError)
    assert "HTTP 503 SlowDown" in str(caught.value) and "gave up after" in str(caught.value)
    assert clock.now <= 30
    assert inner.calls < 20


@pytest.mark.parametrize(
    "error",
    [BackendError("HTTP 403 AccessDenied"), ObjectMissing("gone"), ShortFile("short")],
)
def test_other_failures_are_not_retried(error: BackendError) -> None:
    inner = Flaky()
    inner.save(H, io.BytesIO(b"data"))
    backend, clock = _wrap(inner)
    inner.failures, inner.error, inner.calls = 3, error, 0
    with pytest.raises(type(error)):
        backend.load(H)
    assert inner.calls == 1 and clock.waits == []


def test_a_save_is_sent_whole_on_every_try() -> None:
    """The source is read once: a retry sends the same bytes, not the rest of a stream."""
    inner = Flaky()
    backend, _ = _wrap(inner)
    inner.failures = 2
    backend.save(H, io.BytesIO(b"0123456789" * 1000))
    assert inner.load(H) == b"0123456789" * 1000


def test_a_remove_whose_answer_was_lost() -> None:
    inner = Flaky()
    inner.save(H, io.BytesIO(b"x"))
    backend, _ = _wrap(inner)
    inner.failures, inner.work_then_fail = 1, True
    backend.remove(H)  # the retry finds it gone: done
    with pytest.raises(ObjectMissing):
        backend.remove(H)  # but a first try that finds nothing says so
