"""Options given before the command, as restic takes them: ``cipherdump -r REPO snapshots``.

``-r/--repo``, ``--password-file``, ``--json`` and ``-v/--verbose`` before the command
are the command's own options of the same name given once for all: each command that
has the option takes the value, a command that has not ignores it (as it ignores
``CIPHERDUMP_REPOSITORY``).  Where both are given, the command's own spelling wins:
it is the later and the nearer of the two, as with any option given twice.  Order of
precedence for the repository: ``cmd -r``, then ``-r cmd``, then the environment.

``-q/--quiet`` (no progress bars) exists only before the command.
The storage settings (``--cache-dir``, ``--no-cache``, ``--connections``) go into the
same per-run settings as the command's own spelling, which, processed later, wins.

Nothing here imports more than click: every run, ``--help`` included, loads it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import click
from click.core import ParameterSource

ENV_REPOSITORY = "CIPHERDUMP_REPOSITORY"

# Keys of ``ctx.meta``, which every context of one run shares.
_STORAGE_SETTINGS = "cipherdump.storage_settings"
_QUIET = "cipherdump.quiet"
_GIVEN_BEFORE = "cipherdump.given_before"

# The global options that stand for a command's own option of the same parameter name.
INHERITED = ("repo", "password_file", "as_json", "verbose")

F = TypeVar("F", bound=Callable[..., Any])


# -- storage settings -------------------------------------------------------------------------


def storage_setting(variable: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    """A callback keeping an option's value as the setting ``variable`` of this run
    (which overrides the environment variable of that name)."""

    def keep(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        if value is not None and value is not False:
            shown = "1" if value is True else str(value)
            ctx.meta.setdefault(_STORAGE_SETTINGS, {})[variable] = shown

    return keep


def storage_settings() -> dict[str, str]:
    """The environment with the storage options of this command line applied."""
    ctx = click.get_current_context(silent=True)
    given: dict[str, str] = ctx.meta.get(_STORAGE_SETTINGS, {}) if ctx is not None else {}
    return {**os.environ, **given}


def storage_options(fn: F) -> F:
    """``--connections``, ``--cache-dir`` and ``--no-cache``: settings of the storage
    behind a repository, each overriding its environment variable."""
    fn = click.option(
        "--connections",
        type=click.IntRange(1, 64),
        expose_value=False,
        callback=storage_setting("CIPHERDUMP_S3_CONNECTIONS"),
        help="S3: transfers in flight at once (default 5; or set CIPHERDUMP_S3_CONNECTIONS).",
    )(fn)
    fn = click.option(
        "--cache-dir",
        type=click.Path(file_okay=False, path_type=str),
        expose_value=False,
        callback=storage_setting("CIPHERDUMP_CACHE_DIR"),
        help="S3: where the local cache of index, snapshots and trees lives "
        "(default $XDG_CACHE_HOME/cipherdump; or set CIPHERDUMP_CACHE_DIR).",
    )(fn)
    return click.option(
        "--no-cache",
        is_flag=True,
        expose_value=False,
        callback=storage_setting("CIPHERDUMP_NO_CACHE"),
        help="S3: read everything from the storage, keep no local cache.",
    )(fn)


# -- options before the command ---------------------------------------------------------------


def global_options(fn: F) -> F:
    """The options the ``cipherdump`` group takes before the command."""
    fn = storage_options(fn)
    fn = click.option(
        "-v",
        "--verbose",
        is_flag=True,
        default=None,
        help="Commands that can: print each path as it is handled (as their own -v).",
    )(fn)
    fn = click.option(
        "-q",
        "--quiet",
        is_flag=True,
        help="No progress bars (results, warnings and errors still show).",
    )(fn)
    fn = click.option(
        "--json",
        "as_json",
        is_flag=True,
        default=None,
        help="Commands that can: print JSON (as their own --json).",
    )(fn)
    fn = click.option(
        "--password-file",
        type=click.Path(dir_okay=False, path_type=str),
        help="Read the repository password from this file (as a command's own --password-file).",
    )(fn)
    return click.option(
        "-r",
        "--repo",
        "repo",
        metavar="LOCATION",
        help="Repository for every command that takes one (as its own -r; that one wins; "
        f"before {ENV_REPOSITORY}).",
    )(fn)


def take_global_options(ctx: click.Context, quiet: bool, given: Mapping[str, Any]) -> None:
    """Keep the options given before the command for the command to take.

    ``given`` maps the parameter names in :data:`INHERITED` to their values (None: not
    given).  The flags go to the command through click's ``default_map`` (a value
    there comes after the command line and before the option's default); the
    repository is taken by :class:`RepoOption` instead, since it must also come before
    ``CIPHERDUMP_REPOSITORY``, which click would read first."""
    if quiet and given.get("verbose"):
        raise click.UsageError("-q/--quiet and -v/--verbose contradict each other")
    ctx.meta[_QUIET] = quiet
    kept = {name: given[name] for name in INHERITED if given.get(name) is not None}
    ctx.meta[_GIVEN_BEFORE] = kept
    defaults = {name: value for name, value in kept.items() if name != "repo"}
    if defaults:
        group = ctx.command
        assert isinstance(group, click.Group)
        # Read by click when it makes the command's context.
        ctx.default_map = _defaults_for(group, defaults)


def _defaults_for(group: click.Group, defaults: dict[str, Any]) -> dict[str, Any]:
    """``defaults`` for every command of ``group``, nested as click's ``default_map``
    nests them (a command of a subgroup under the subgroup's name)."""
    out: dict[str, Any] = {}
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            out[name] = _defaults_for(command, defaults)
        else:
            own = {p.name for p in command.params}
            out[name] = {k: v for k, v in defaults.items() if k in own}
    return out


class RepoOption(click.Option):
    """A command's ``-r/--repo``: its own if given, else the one given before the
    command, else ``CIPHERDUMP_REPOSITORY``."""

    def consume_value(
        self, ctx: click.Context, opts: Mapping[str, Any]
    ) -> tuple[Any, ParameterSource]:
        value, source = super().consume_value(ctx, opts)
        if source is ParameterSource.COMMANDLINE:
            return value, source
        before = ctx.meta.get(_GIVEN_BEFORE, {}).get("repo")
        if before is not None:
            # As click marks what comes from the group's default_map.
            return before, ParameterSource.DEFAULT_MAP
        return value, source


def quiet() -> bool:
    """Whether ``-q/--quiet`` was given: no progress bars."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.meta.get(_QUIET))
