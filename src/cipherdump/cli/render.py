"""Everything the commands print: on-disk bytes and records as terminal text and JSON,
sizes, warnings and error lines, progress bars, and the exit codes the README lists.

Every command module renders through here, so that a warning, a size or a partial
failure looks and exits the same whichever command met it.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import stat
import sys
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any, NoReturn, ParamSpec, TypeVar

import click

from cipherdump.cli import globalopts
from cipherdump.errors import CipherdumpError

if TYPE_CHECKING:
    from cipherdump.engine.damage import DamagedSnapshot as DamagedPaths
    from cipherdump.progress import OnProgress, Progress

# Exit codes that belong to no error class (the rest are each class's ``exit_code``).
EXIT_PARTIAL = 1  # some objects could not be read or written; the rest were
EXIT_INTERNAL = 70  # a bug: please report it

# A line naming the paths of a damaged snapshot names at most this many (--json: all).
PATHS_SHOWN = 10

P = ParamSpec("P")
R = TypeVar("R")


def warn(message: str) -> None:
    """One warning line on stderr."""
    click.echo(f"cipherdump: warning: {message}", err=True)


def fail(message: str, code: int) -> NoReturn:
    """One error line on stderr, then exit with ``code``."""
    click.echo(f"cipherdump: error: {message}", err=True)
    sys.exit(code)


def one_line_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn every error into one line on stderr and an exit code, never a traceback.

    Every command's function is wrapped by it, under its click decorators."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except CipherdumpError as err:
            fail(str(err), err.exit_code)
        except BrokenPipeError:
            # Output piped into `head` and closed: not an error worth a message.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(0)
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as err:
            if os.environ.get("CIPHERDUMP_DEBUG"):
                import traceback

                traceback.print_exc()
            fail(
                f"internal error: {type(err).__name__}: {err} (set CIPHERDUMP_DEBUG=1 "
                "for a traceback; please report it)",
                EXIT_INTERNAL,
            )

    return wrapper


def size(n: int) -> str:
    """A byte count for people: ``512 B``, ``1.5 KiB`` … ``2.0 TiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def why(err: BaseException) -> str:
    """What went wrong, without the path an ``OSError`` repeats."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err)


def show_bytes(name: bytes) -> str:
    """A name for a terminal: UTF-8 where valid, ``\\xNN`` escapes elsewhere (like ``ls -b``)."""
    text = name.decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def print_problem(path: bytes, err: BaseException) -> None:
    """One object that could not be handled, on stderr: its path and why."""
    click.echo(f"cipherdump: error: {show_bytes(path)}: {err}", err=True)


def paths_summary(paths: list[bytes]) -> str:
    """The first :data:`PATHS_SHOWN` of ``paths`` as shown, and how many more."""
    shown = ", ".join(show_bytes(p) for p in paths[:PATHS_SHOWN])
    more = len(paths) - PATHS_SHOWN
    return shown + (f" and {more} more" if more > 0 else "")


def damaged_json(damaged: Iterable[DamagedPaths]) -> list[dict[str, Any]]:
    """``--json``'s list of snapshots that use lost or damaged data, with the paths."""
    return [{"snapshot": d.id.hex, "paths": [show_bytes(p) for p in d.paths]} for d in damaged]


def problem_line(path: bytes, why: str) -> str:
    """``PATH: why``, or ``why`` alone when it already starts with that path."""
    shown = show_bytes(path)
    return why if why.startswith(shown + ":") else f"{shown}: {why}"


def json_bytes(name: bytes) -> str:
    """A name for JSON: exact UTF-8 where valid; otherwise surrogate escapes that
    Python's ``os.fsencode`` turns back into the same bytes."""
    return name.decode("utf-8", "surrogateescape")


def jsonable(rec: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in rec.items():
        if isinstance(v, bytes):
            out[k] = json_bytes(v)
            if not _is_utf8(v):
                out[k + "_hex"] = v.hex()
        elif isinstance(v, dict):
            out[k] = jsonable(v)
        elif isinstance(v, list):
            out[k] = [jsonable(x) if isinstance(x, dict) else _plain(x) for x in v]
        else:
            out[k] = v
    return out


def _plain(v: Any) -> Any:
    return json_bytes(v) if isinstance(v, bytes) else v


def _is_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def dumps(rec: dict[str, Any] | list[Any]) -> str:
    data = (
        jsonable(rec)
        if isinstance(rec, dict)
        else [jsonable(r) if isinstance(r, dict) else r for r in rec]
    )
    return json.dumps(data, ensure_ascii=True, sort_keys=False)


_TYPE_CHAR = {
    "file": "-", "dir": "d", "symlink": "l", "chardev": "c", "blockdev": "b",
    "fifo": "p", "socket": "s", "unknown": "?",
}  # fmt: skip


def mode_string(type_name: str, mode: int) -> str:
    return _TYPE_CHAR.get(type_name, "?") + stat.filemode(mode)[1:]


def time_string(ns: int) -> str:
    try:
        t = dt.datetime.fromtimestamp(ns / 1e9, tz=dt.UTC)
    except (OverflowError, OSError, ValueError):
        return str(ns // 1_000_000_000)
    return t.strftime("%Y-%m-%d %H:%M")


def long_line(rec: dict[str, Any]) -> str:
    enc = "E" if rec["encrypted"] else ("e" if rec.get("name_encrypted") else "-")
    size: str = f"{rec['rdev'][0]},{rec['rdev'][1]}" if "rdev" in rec else str(rec["size"])
    line = (
        f"{mode_string(rec['type'], rec['mode'])} {enc} {rec['links']:>3} "
        f"{rec['uid']:>5} {rec['gid']:>5} {size:>10} {time_string(rec['mtime_ns'])} "
        f"{show_bytes(rec['path'])}"
    )
    if "target" in rec:
        line += " -> " + show_bytes(rec["target"])
    return line


def stat_lines(rec: dict[str, Any]) -> list[str]:
    """``stat`` without ``--json``: one ``key: value`` line a field, lists indented."""
    lines: list[str] = []
    for key, value in jsonable(rec).items():
        if key == "extents":
            lines.append("extents:")
            for r in value:
                where = "hole" if r.get("pblk") is None else f"-> {r['pblk']}"
                flag = " unwritten" if r.get("unwritten") else ""
                lines.append(f"  {r['lblk']}+{r['length']} {where}{flag}")
        elif key == "context":
            lines.append("context:")
            lines.extend(f"  {k}: {v}" for k, v in value.items())
        elif key == "xattrs":
            lines.append("xattrs:")
            for x in value:
                where = f" ({x['where']})" if x.get("where") else ""
                lines.append(f"  {x['name']}{where}: {x['value_hex']}")
        else:
            lines.append(f"{key}: {value}")
    return lines


def parse_size(text: str | None) -> int | None:
    """A ``--size`` value such as ``512M``, ``2GiB`` or ``1048576`` in bytes."""
    if text is None:
        return None
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = 1
    if t and t[-1] in units:
        mult = units[t[-1]]
        t = t[:-1]
    try:
        return int(float(t) * mult)
    except ValueError:
        raise click.UsageError(f"--size: cannot read {text!r} as a size") from None


def progress_bar(
    description: str, *, count_inodes: bool = True
) -> tuple[OnProgress | None, AbstractContextManager[Any]]:
    """A rich progress bar on stderr, driven by the job's progress events, when stderr
    is a terminal and ``-q`` was not given; ``(None, a do-nothing context)`` otherwise,
    so that a log or a pipe gets nothing extra.

    The bar shows the share done, bytes and rate (or the items a phase counts: index
    files, snapshots, trees), the time left, and inodes if ``count_inodes``.  A job
    of several phases names each after ``description``; each starts the bar over."""
    if globalopts.quiet() or not sys.stderr.isatty():
        return None, nullcontext()
    # Imported here: rich takes a tenth of a second to import, and most runs have no bar.
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        ProgressColumn,
        Task,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.progress import Progress as Bar
    from rich.text import Text

    class Amount(ProgressColumn):
        """Bytes done of the total and the rate, or items done of the total."""

        def render(self, task: Task) -> Text:
            if task.total is None and not task.completed:
                return Text("")  # nothing known yet
            if task.fields["items"]:
                total = "?" if task.total is None else str(int(task.total))
                return Text(f"{int(task.completed)}/{total}")
            total = "?" if task.total is None else size(int(task.total))
            rate = f"  {size(int(task.speed))}/s" if task.speed else ""
            return Text(f"{size(int(task.completed))}/{total}{rate}")

    columns: list[ProgressColumn] = [
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        Amount(),
        TimeRemainingColumn(),
    ]
    if count_inodes:
        columns.append(TextColumn("{task.fields[inodes]}"))
    bar = Bar(*columns, console=Console(stderr=True), transient=True)
    task = bar.add_task(description, total=None, items=False, inodes="")
    phase = [""]

    def update(event: Progress) -> None:
        items = event.items_total is not None or event.items_done > 0
        inodes = f"{event.inodes_done} inodes"
        if event.inodes_total is not None:
            inodes = f"{event.inodes_done}/{event.inodes_total} inodes"
        shown: dict[str, Any] = {
            "completed": event.items_done if items else event.bytes_done,
            "total": (event.items_total if items else event.bytes_total) or None,
            "items": items,
            "inodes": inodes,
        }
        if event.phase != phase[0]:
            # A new phase: the bar, its rate and its time left start over.
            phase[0] = event.phase
            name = f"{description}: {event.phase}" if event.phase else description
            bar.reset(task, description=name, **shown)
        else:
            bar.update(task, **shown)

    return update, bar
