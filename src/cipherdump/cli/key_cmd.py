"""``cipherdump key``: several passwords for one repository (list, add, remove, passwd)."""

from __future__ import annotations

import sys
import time

import click

from cipherdump.cli import render
from cipherdump.cli.sources import open_repository, password_option, repo_option


def _new_password(new_password_file: str | None) -> bytes:
    """The new password: from --new-password-file, else a prompt (twice) on a terminal.
    Never from CIPHERDUMP_PASSWORD*: those name the password in use."""
    from cipherdump.repo.password import resolve_password

    if new_password_file is None and not sys.stdin.isatty():
        raise click.UsageError("give the new password with --new-password-file")

    def prompt() -> str:
        answer: str = click.prompt(
            "new password", hide_input=True, confirmation_prompt=True, err=True
        )
        return answer

    return resolve_password(new_password_file, env={}, prompt=prompt)


def _new_password_option(fn: click.decorators.FC) -> click.decorators.FC:
    return click.option(
        "--new-password-file",
        type=click.Path(dir_okay=False, path_type=str),
        help="Read the new password from this file (else it is asked for twice).",
    )(fn)


@click.group(name="key")
def key_group() -> None:
    """Manage the repository's passwords (key files wrapping one master key)."""


@key_group.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array.")
@repo_option
@password_option
@render.one_line_errors
def key_list(as_json: bool, repo: str | None, password_file: str | None) -> None:
    """List the key files; * marks the one this password opens."""
    with open_repository(repo, password_file, lock=False) as repository:
        keys = repository.list_keys()
    if as_json:
        click.echo(
            render.dumps(
                [
                    {
                        "id": k.name,
                        "current": k.current,
                        "saved_ns": k.mtime_ns,
                        "kdf": None
                        if k.params is None
                        else {
                            "time_cost": k.params.time_cost,
                            "memory_kib": k.params.memory_kib,
                            "parallelism": k.params.parallelism,
                        },
                    }
                    for k in keys
                ]
            )
        )
        return
    for k in keys:
        when = (
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(k.mtime_ns // 10**9))
            if k.mtime_ns
            else "-"
        )
        kdf = (
            "damaged"
            if k.params is None
            else f"argon2id t={k.params.time_cost} m={k.params.memory_kib} KiB "
            f"p={k.params.parallelism}"
        )
        click.echo(f"{'*' if k.current else ' '} {k.name[:8]}  {when}  {kdf}")


@key_group.command(name="add")
@_new_password_option
@repo_option
@password_option
@render.one_line_errors
def key_add(new_password_file: str | None, repo: str | None, password_file: str | None) -> None:
    """Add a password: a new key file wrapping the same master key."""
    with open_repository(repo, password_file, lock=False) as repository:
        name = repository.add_key(_new_password(new_password_file))
    click.echo(f"saved new key keys/{name.hex}")


@key_group.command(name="remove")
@click.argument("key_id")
@repo_option
@password_option
@render.one_line_errors
def key_remove(key_id: str, repo: str | None, password_file: str | None) -> None:
    """Remove the key file KEY_ID (a unique prefix).  The last key, and the one the
    given password opens, cannot be removed (exit code 4)."""
    with open_repository(repo, password_file, lock=True) as repository:
        name = repository.find_key(key_id)
        repository.remove_key(name)
    click.echo(f"removed keys/{name}")


@key_group.command(name="passwd")
@_new_password_option
@repo_option
@password_option
@render.one_line_errors
def key_passwd(new_password_file: str | None, repo: str | None, password_file: str | None) -> None:
    """Change the password: a key file for the new one is saved, then the old one
    removed (no data is rewritten; interrupted, either password works)."""
    with open_repository(repo, password_file, lock=True) as repository:
        old = repository.key_name
        name = repository.change_password(_new_password(new_password_file))
    click.echo(f"saved new key keys/{name}; removed keys/{old}")
