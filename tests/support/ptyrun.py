"""Run a command with its stderr on a pseudo-terminal, as a person at a terminal runs it.

``run_on_terminal`` gives stderr a pty (80 columns) and stdout a pipe, and returns
both as the command left them: what a progress bar wrote (and erased) is in stderr.
"""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import termios
import threading
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def run_on_terminal(
    argv: Sequence[str], *, env: dict[str, str], timeout: float = 120, cwd: str | None = None
) -> Ran:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer of the slave has closed it
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        proc = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=slave,
            env=env,
            cwd=cwd,
            timeout=timeout,
            check=False,
        )
    finally:
        os.close(slave)
    reader.join(timeout=10)
    os.close(master)
    return Ran(
        proc.returncode,
        proc.stdout.decode(errors="replace"),
        b"".join(chunks).decode(errors="replace"),
    )
