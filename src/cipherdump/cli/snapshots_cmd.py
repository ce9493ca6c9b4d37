"""``cipherdump snapshots``: the snapshots in the repository, oldest first."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from cipherdump.cli import render, sources
from cipherdump.errors import CipherdumpError, IntegrityError


@click.command()
@sources.repo_option
@sources.password_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array.")
@render.one_line_errors
def snapshots(repo: str | None, password_file: str | None, as_json: bool) -> None:
    """List the snapshots in the repository, oldest first."""
    from cipherdump.engine.backup import snapshot_summary
    from cipherdump.engine.dirtable import TABLE_ATTRS

    damaged: list[CipherdumpError] = []
    with sources.open_reader(repo, password_file) as repository:
        items = [
            snapshot_summary(i, s)
            for i, s in repository.list_snapshots(damaged, drop_attrs=TABLE_ATTRS)
        ]
    _list_snapshots(items, as_json)
    for err in damaged:
        click.echo(f"cipherdump: error: {err}", err=True)
    if damaged:
        sys.exit(IntegrityError.exit_code)


def _list_snapshots(items: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        click.echo(render.dumps(items))
        return
    click.echo(f"{'ID':<8}  {'time':<19}  {'host':<12}  {'files':>7}  {'added':>10}  source  path")
    for item in items:
        stats = item.get("stats", {})
        files = sum(stats.get(k, 0) for k in ("files_new", "files_changed", "files_unchanged"))
        click.echo(
            f"{item['short_id']:<8}  {_time(item['time_ns']):<19}  {item['hostname'][:12]:<12}  "
            f"{files:>7}  {render.size(stats.get('bytes_added', 0)):>10}  {item['source']}  "
            f"{render.show_bytes(item['path'])}"
        )


def _time(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9))
