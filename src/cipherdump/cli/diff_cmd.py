"""``cipherdump diff SNAPSHOT1 SNAPSHOT2``: what changed between two snapshots."""

from __future__ import annotations

import click

from cipherdump.cli import render, sources


@click.command()
@click.argument("snapshot1")
@click.argument("snapshot2")
@sources.repo_option
@sources.password_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@render.one_line_errors
def diff(
    snapshot1: str, snapshot2: str, repo: str | None, password_file: str | None, as_json: bool
) -> None:
    """What changed from SNAPSHOT1 to SNAPSHOT2: + added, - removed, M contents
    modified, U metadata only."""
    from cipherdump.engine.views.diff import iter_diff

    with sources.open_reader(repo, password_file) as repository:
        v1, v2 = (
            sources.snapshot_view(repository, snapshot1),
            sources.snapshot_view(repository, snapshot2),
        )
        changes = list(iter_diff(v1, v2))
    counts = {c: sum(1 for x in changes if x[0] == c) for c in "+-MU"}
    if as_json:
        click.echo(
            render.dumps(
                {
                    "snapshot1": v1.id.hex,
                    "snapshot2": v2.id.hex,
                    "changes": [{"change": c, "path": p, "type": k} for c, p, k in changes],
                    "added": counts["+"],
                    "removed": counts["-"],
                    "modified": counts["M"],
                    "metadata": counts["U"],
                }
            )
        )
        return
    for change, path, kind in changes:
        suffix = "/" if kind == "dir" else ""
        click.echo(f"{change}  {render.show_bytes(path)}{suffix}")
    click.echo(
        f"{counts['+']} added, {counts['-']} removed, {counts['M']} modified, "
        f"{counts['U']} metadata only"
    )
