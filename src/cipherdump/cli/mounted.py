"""``--allow-mounted``: the one check every command that copies a source's contents
makes before reading it (``backup``, ``clone``, ``extract``).

A filesystem the kernel has mounted read-write changes under a reader that goes
around the kernel, so what is copied may be inconsistent: such a source is refused
(exit code 3) unless ``--allow-mounted`` is given, which warns instead.  Listing
commands (``info``, ``ls``, ``stat``, ``cat``) read it without a word, as debugfs does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from cipherdump.cli import render
from cipherdump.errors import InputError

F = TypeVar("F", bound=Callable[..., Any])


def allow_mounted_option(what: str) -> Callable[[F], F]:
    """The ``--allow-mounted`` flag; ``what`` completes its help ("Back up", "Copy")."""

    def decorate(fn: F) -> F:
        return click.option(
            "--allow-mounted",
            is_flag=True,
            help=f"{what} a source the kernel has mounted read-write (the result may be "
            "inconsistent).",
        )(fn)

    return decorate


def check_mounted(source: str, *, allow_mounted: bool, doing: str, instead: str = "") -> None:
    """Refuse ``source`` if it is mounted read-write, or warn with ``allow_mounted``.

    ``doing`` says what the command does with it, for the messages ("back it up");
    ``instead`` names a consistent way to do it anyway, if there is one."""
    from cipherdump.blockio.mounts import mounted_read_write

    mounts = mounted_read_write(source)
    if not mounts:
        return
    where = ", ".join(m.mount_point + (f" (via {m.via})" if m.via else "") for m in mounts)
    if not allow_mounted:
        raise InputError(
            f"{source} is mounted read-write at {where}; unmount it or use a snapshot of it"
            f"{instead} (--allow-mounted would {doing} anyway, possibly inconsistent)"
        )
    render.warn(
        f"{source} is mounted read-write at {where}: files changing "
        f"while cipherdump reads them may come out inconsistent"
    )
