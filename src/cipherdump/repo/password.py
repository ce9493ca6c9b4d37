"""Where the repository password comes from.

In order: an explicit password file (the CLI's ``--password-file``), the file named by
``CIPHERDUMP_PASSWORD_FILE``, the value of ``CIPHERDUMP_PASSWORD``, and finally an
interactive prompt supplied by the caller.  One trailing newline of a file is removed.
Passwords are bytes: environment values are encoded with ``os.fsencode``.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Mapping

from cipherdump.errors import KeyProblem

ENV_PASSWORD = "CIPHERDUMP_PASSWORD"
ENV_PASSWORD_FILE = "CIPHERDUMP_PASSWORD_FILE"


# A password longer than this is a wrong file (a disk image, /dev/zero), not a
# password: reading stops there instead of filling memory.
MAX_PASSWORD = 4096


def _read_password_file(path: str | os.PathLike[str]) -> bytes:
    try:
        # O_NONBLOCK only for the open, which would wait for a FIFO's writer: then a
        # read waits for data while a writer is there and sees the end when none is.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        with open(fd, "rb") as f:
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
            data = f.read(MAX_PASSWORD + 3)  # the longest password and a CRLF, and one more
    except OSError as exc:
        raise KeyProblem(f"cannot read password file {path}: {exc.strerror}") from None
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    if len(data) > MAX_PASSWORD:
        raise KeyProblem(
            f"password file {path} is larger than {MAX_PASSWORD} bytes: not a password file"
        )
    return data


def resolve_password(
    password_file: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    prompt: Callable[[], str | bytes] | None = None,
) -> bytes:
    """The repository password; :class:`KeyProblem` if there is none or it is empty."""
    env = os.environ if env is None else env
    password: bytes | None = None
    if password_file is not None:
        password = _read_password_file(password_file)
    elif env.get(ENV_PASSWORD_FILE):
        password = _read_password_file(env[ENV_PASSWORD_FILE])
    elif ENV_PASSWORD in env:
        password = os.fsencode(env[ENV_PASSWORD])
    elif prompt is not None:
        answer = prompt()
        password = answer if isinstance(answer, bytes) else os.fsencode(answer)
    if password is None:
        raise KeyProblem(
            f"no repository password: use --password-file, {ENV_PASSWORD_FILE} or {ENV_PASSWORD}"
        )
    if not password:
        raise KeyProblem("the repository password is empty")
    if len(password) > MAX_PASSWORD:
        raise KeyProblem(f"the repository password is longer than {MAX_PASSWORD} bytes")
    return password
