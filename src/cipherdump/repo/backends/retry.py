"""Retries of transient storage failures, around any backend (as restic's wrapper).

A :class:`~cipherdump.repo.backends.base.TransientError` (a 5xx, 499 or throttling
answer, a timeout, a connection refused or dropped) is tried again after a jittered,
exponentially growing wait, until the time since the first try would pass
``max_seconds``; then the last error is raised as a plain
:class:`~cipherdump.errors.BackendError` naming the operation, the file and how long it
was tried.  Every other error (403, 404, 412, 416, a short file) is raised at once.

Each operation is idempotent as the Backend protocol states it, so a retry is safe:
a save writes the same bytes under the same name again, and a remove whose first try
reached the storage but not its answer finds the file gone, which is what was wanted.
"""

from __future__ import annotations

import builtins
import io
import random
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO, TypeVar

from cipherdump.errors import BackendError
from cipherdump.repo.backends.base import (
    COPY_CHUNK,
    Backend,
    FileInfo,
    FileType,
    Handle,
    ObjectMissing,
    Spool,
    TransientError,
    WrappedBackend,
    open_spool,
)

T = TypeVar("T")

DEFAULT_MAX_SECONDS = 120.0
FIRST_WAIT = 0.5
LONGEST_WAIT = 15.0


class RetryBackend(WrappedBackend):
    def __init__(
        self,
        inner: Backend,
        *,
        max_seconds: float = DEFAULT_MAX_SECONDS,
        first_wait: float = FIRST_WAIT,
        longest_wait: float = LONGEST_WAIT,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self._max = max_seconds
        self._first = first_wait
        self._longest = longest_wait
        self._sleep = sleep
        self._clock = clock
        self.retries = 0  # how many tries were repeated, for tests and reports

    def call(self, fn: Callable[[], T]) -> T:
        """``fn()``, tried again on transient errors within the time bound."""
        start = self._clock()
        attempt = 0
        while True:
            try:
                return fn()
            except TransientError as exc:
                elapsed = self._clock() - start
                ceiling = min(self._longest, self._first * 2**attempt)
                # "Equal jitter": at least half the step, so waits still grow, and
                # clients that failed together do not retry together.
                wait = ceiling / 2 + random.uniform(0, ceiling / 2)
                if elapsed + wait > self._max:
                    raise BackendError(
                        f"{exc} (gave up after {attempt + 1} tries in {elapsed:.1f} s)"
                    ) from None
                self._sleep(wait)
                attempt += 1
                self.retries += 1

    def save(self, handle: Handle, source: BinaryIO) -> None:
        # Read once, so each try sends the same bytes (the source need not seek).
        buffer = io.BytesIO()
        while chunk := source.read(COPY_CHUNK):
            buffer.write(chunk)
        data = buffer.getvalue()
        self.call(lambda: self.inner.save(handle, io.BytesIO(data)))

    def load(self, handle: Handle, offset: int = 0, length: int | None = None) -> bytes:
        return self.call(lambda: self.inner.load(handle, offset, length))

    def stat(self, handle: Handle) -> int:
        return self.call(lambda: self.inner.stat(handle))

    def remove(self, handle: Handle) -> None:
        tries = 0

        def once() -> None:
            nonlocal tries
            tries += 1
            try:
                self.inner.remove(handle)
            except ObjectMissing:
                if tries == 1:
                    raise
                # An earlier try removed it and its answer was lost.

        self.call(once)

    def list(self, file_type: FileType) -> Iterator[FileInfo]:
        # A listing interrupted half-way is listed again from the start.
        yield from self.call(lambda: builtins.list(self.inner.list(file_type)))

    def open_spool(self, file_type: FileType) -> Spool | None:
        spool = open_spool(self.inner, file_type)
        return None if spool is None else _RetrySpool(self, spool)

    def close(self) -> None:
        self.inner.close()


class _RetrySpool:
    """A spool whose commit (an upload, for S3) is retried: the inner spool keeps its
    file until discarded, so each try sends it whole again."""

    def __init__(self, backend: RetryBackend, inner: Spool) -> None:
        self._backend = backend
        self._inner = inner

    @property
    def file(self) -> BinaryIO:
        return self._inner.file

    def commit(self, handle: Handle) -> None:
        self._backend.call(lambda: self._inner.commit(handle))

    def discard(self) -> None:
        self._inner.discard()
