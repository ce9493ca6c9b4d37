"""Linux native asynchronous I/O (``io_submit``), for reads with ``O_DIRECT``.

Python threads reading ahead for a CPU-bound walk each need the interpreter lock before
and after every read, and get it only as often as the walk lets go of it, so few reads
are ever in flight.  With native AIO one system call queues many reads, the kernel
keeps all of them in flight, and the walk collects the finished ones when it needs
them; no thread of ours takes part.  Only reads of files opened with ``O_DIRECT`` are
truly asynchronous, which is all we use it for.

The system calls are made through :mod:`ctypes` (the ABI in ``linux/aio_abi.h``);
:func:`open_context` returns None where they are missing (another architecture, a
kernel without AIO, the system-wide limit ``fs.aio-max-nr`` reached), and callers then
read with threads instead.
"""

from __future__ import annotations

import ctypes
import errno
import os

_IOCB_CMD_PREAD = 0

# (io_setup, io_destroy, io_submit, io_getevents) by machine.
_SYSCALLS = {
    "x86_64": (206, 207, 209, 208),
    "aarch64": (0, 1, 2, 4),
}


class _Iocb(ctypes.Structure):
    # Little-endian 64-bit layout: aio_key before aio_rw_flags.
    _fields_ = [
        ("aio_data", ctypes.c_uint64),
        ("aio_key", ctypes.c_uint32),
        ("aio_rw_flags", ctypes.c_int32),
        ("aio_lio_opcode", ctypes.c_uint16),
        ("aio_reqprio", ctypes.c_int16),
        ("aio_fildes", ctypes.c_uint32),
        ("aio_buf", ctypes.c_uint64),
        ("aio_nbytes", ctypes.c_uint64),
        ("aio_offset", ctypes.c_int64),
        ("aio_reserved2", ctypes.c_uint64),
        ("aio_flags", ctypes.c_uint32),
        ("aio_resfd", ctypes.c_uint32),
    ]


class _Event(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_uint64),
        ("obj", ctypes.c_uint64),
        ("res", ctypes.c_int64),
        ("res2", ctypes.c_int64),
    ]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class AioContext:
    """An AIO context of ``depth`` reads at most in flight.  Not for use across a
    ``fork``: a child must open one of its own."""

    def __init__(self, depth: int, calls: tuple[int, int, int, int]) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._syscall = self._libc.syscall
        self._syscall.restype = ctypes.c_long
        self._setup, self._destroy, self._submit, self._getevents = calls
        self._ctx = ctypes.c_ulong(0)
        if self._syscall(self._setup, ctypes.c_int(depth), ctypes.byref(self._ctx)) < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        self.depth = depth
        self._events = (_Event * depth)()

    def submit_read(self, fd: int, address: int, length: int, offset: int, tag: int) -> None:
        """Queue a read of ``length`` bytes at ``offset`` into memory at ``address``;
        its event carries ``tag``.  Raises OSError if the kernel does not take it."""
        iocb = _Iocb(
            aio_data=tag,
            aio_lio_opcode=_IOCB_CMD_PREAD,
            aio_fildes=fd,
            aio_buf=address,
            aio_nbytes=length,
            aio_offset=offset,
        )
        pointers = (ctypes.POINTER(_Iocb) * 1)(ctypes.pointer(iocb))
        while True:
            done = self._syscall(self._submit, self._ctx, ctypes.c_long(1), pointers)
            if done == 1:
                return
            code = ctypes.get_errno() if done < 0 else errno.EAGAIN
            if code != errno.EINTR:
                raise OSError(code, os.strerror(code))

    def reap(self, wait: bool) -> list[tuple[int, int]]:
        """``(tag, result)`` of finished reads (result: bytes read, or minus an errno);
        with ``wait``, blocks until at least one has finished."""
        zero = _Timespec(0, 0)
        while True:
            got = self._syscall(
                self._getevents,
                self._ctx,
                ctypes.c_long(1 if wait else 0),
                ctypes.c_long(self.depth),
                self._events,
                None if wait else ctypes.byref(zero),
            )
            if got >= 0:
                return [(int(e.data), int(e.res)) for e in self._events[:got]]
            code = ctypes.get_errno()
            if code != errno.EINTR:
                raise OSError(code, os.strerror(code))

    def close(self) -> None:
        """Destroy the context (waiting for the reads still in flight)."""
        if self._ctx.value:
            self._syscall(self._destroy, self._ctx)
            self._ctx = ctypes.c_ulong(0)


def open_context(depth: int) -> AioContext | None:
    """An AIO context, or None where native AIO cannot be used here."""
    calls = _SYSCALLS.get(os.uname().machine)
    if calls is None:
        return None
    try:
        return AioContext(depth, calls)
    except (OSError, AttributeError):  # refused, or a C library without syscall()
        return None


def address_of(buffer: bytearray | memoryview | object) -> int:
    """The address of a writable buffer's first byte (an mmap, say); the buffer must
    stay open as long as reads into it may be in flight."""
    anchor = ctypes.c_char.from_buffer(buffer)  # type: ignore[arg-type]
    try:
        return ctypes.addressof(anchor)
    finally:
        del anchor
