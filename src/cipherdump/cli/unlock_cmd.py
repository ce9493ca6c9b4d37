"""``cipherdump unlock``: remove stale locks (or, with --remove-all, every lock)."""

from __future__ import annotations

import click

from cipherdump.cli import render
from cipherdump.cli.sources import open_repository, password_option, repo_option


@click.command(name="unlock")
@click.option(
    "--remove-all",
    is_flag=True,
    help="Remove every lock, also of processes that may still run (dangerous).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@repo_option
@password_option
@render.one_line_errors
def unlock_cmd(
    remove_all: bool, as_json: bool, repo: str | None, password_file: str | None
) -> None:
    """Remove stale locks: those of processes gone from this host, and those not
    refreshed for 30 minutes.

    A running cipherdump refreshes its lock every 5 minutes, from a thread of its
    own, so a lock that old belongs to a process that is dead or stopped; one that
    wakes up finds its lock gone or too old and stops before it writes anything.
    --remove-all removes every lock, also those of live processes: only when you know
    no other process uses the repository (a prune running beside a backup whose lock
    was removed can lose the backup's data).  Nothing removes a lock unasked except
    one whose process is provably gone from this host.
    """
    with open_repository(repo, password_file, lock=False) as repository:
        if remove_all:
            render.warn("removing every lock, also of processes that may still be running")
        removed = repository.unlock(all_locks=remove_all)
    if as_json:
        click.echo(
            render.dumps({"removed": [{"lock": name, "holder": who} for name, who in removed]})
        )
        return
    for name, who in removed:
        click.echo(f"removed locks/{name} ({who})")
    click.echo(f"{len(removed)} locks removed")
