"""Run ``cipherdump mount`` in a child process for a test, and always get rid of it.

``fuse_missing()`` says why FUSE mounts cannot run here (no /dev/fuse, no fusermount3,
no mfusepy or libfuse 3), or None.  ``serving()`` starts the mount, waits for it to
appear in /proc/self/mountinfo (asking the kernel, not the filesystem, so a hung daemon
cannot hang the wait), and on the way out stops it with SIGTERM, checks that it
unmounted itself, and otherwise kills it and detaches the mount lazily.  A watchdog
kills the daemon after ``timeout`` seconds: the kernel then fails every pending request
of that mount, so a test blocked in a read of a hung mount gets an error instead of
hanging the suite.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

CLI = [sys.executable, "-c", "from cipherdump.cli.main import main; main()"]


def fuse_missing() -> str | None:
    """Why FUSE mounts cannot be tested here, or None."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing (load the fuse module)"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as err:
        return f"/dev/fuse cannot be opened: {err}"
    if shutil.which("fusermount3") is None and os.geteuid() != 0:
        return "fusermount3 is missing (install fuse3)"
    try:
        import mfusepy  # noqa: F401
    except ImportError:
        return "mfusepy is missing: pip install 'cipherdump[mount]'"
    except OSError as err:
        return f"libfuse 3 cannot be loaded (install fuse3): {err}"
    return None


def require_fuse() -> None:
    """Skip the calling test when FUSE cannot run; fail instead under ``CI=true``."""
    import pytest

    why = fuse_missing()
    if why is None:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{why} (CI=true: the FUSE tests must run)", pytrace=False)
    pytest.skip(why)


def is_mounted(mountpoint: Path) -> bool:
    """Whether ``mountpoint`` is a mount point, from /proc/self/mountinfo."""
    want = os.path.realpath(mountpoint)
    with open("/proc/self/mountinfo", "rb") as f:
        for line in f:
            fields = line.split(b" ")
            if len(fields) > 4 and _unescape(fields[4]) == os.fsencode(want):
                return True
    return False


def _unescape(field: bytes) -> bytes:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    out = bytearray()
    i = 0
    while i < len(field):
        if field[i : i + 1] == b"\\" and field[i + 1 : i + 4].isdigit():
            out.append(int(field[i + 1 : i + 4], 8))
            i += 4
        else:
            out += field[i : i + 1]
            i += 1
    return bytes(out)


def _detach(mountpoint: Path) -> None:
    for argv in (["fusermount3", "-u", "-z", str(mountpoint)], ["umount", "-l", str(mountpoint)]):
        if is_mounted(mountpoint):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(argv, capture_output=True, timeout=20, check=False)


@dataclass
class Served:
    """A running mount: the process, its mount point and what it printed."""

    proc: subprocess.Popen[bytes]
    mountpoint: Path
    log: Path
    exit_code: int | None = None
    unmounted_cleanly: bool | None = None

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def serving(
    args: list[str],
    mountpoint: Path,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
    stop_signal: int = signal.SIGTERM,
) -> Iterator[Served]:
    """``cipherdump mount ARGS MOUNTPOINT`` while the block runs (see the module)."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    log = mountpoint.parent / f"{mountpoint.name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*CLI, "mount", *args, str(mountpoint)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=dict(env) if env is not None else None,
        )
    served = Served(proc, mountpoint, log)
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.daemon = True
    watchdog.start()
    try:
        deadline = time.monotonic() + 60
        while not is_mounted(mountpoint):
            if proc.poll() is not None:
                raise AssertionError(
                    f"cipherdump mount exited {proc.returncode}: {served.stderr()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"no mount after 60 s: {served.stderr()}")
            time.sleep(0.05)
        yield served
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.send_signal(stop_signal)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
        served.exit_code = proc.returncode
        served.unmounted_cleanly = not is_mounted(mountpoint)
        _detach(mountpoint)
