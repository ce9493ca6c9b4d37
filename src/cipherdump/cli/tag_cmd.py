"""``cipherdump tag``: add, remove or set the tags of existing snapshots."""

from __future__ import annotations

import click

from cipherdump.cli import render
from cipherdump.cli.sources import find_snapshot, open_repository, password_option, repo_option


@click.command(name="tag")
@click.argument("refs", nargs=-1, required=True, metavar="SNAPSHOT...")
@click.option("--add", "add", multiple=True, metavar="TAG", help="Add TAG (repeatable).")
@click.option("--remove", "remove", multiple=True, metavar="TAG", help="Remove TAG (repeatable).")
@click.option(
    "--set", "set_to", multiple=True, metavar="TAG", help="Replace all tags by these (repeatable)."
)
@click.option("--dry-run", is_flag=True, help="Say what would change; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@repo_option
@password_option
@render.one_line_errors
def tag_cmd(
    refs: tuple[str, ...],
    add: tuple[str, ...],
    remove: tuple[str, ...],
    set_to: tuple[str, ...],
    dry_run: bool,
    as_json: bool,
    repo: str | None,
    password_file: str | None,
) -> None:
    """Change the tags of snapshots (ids, unique prefixes or "latest").

    A changed snapshot is saved again with its new tags, so it gets a new id; the new
    file is written before the old one is removed.  --set replaces every tag, then
    --add and --remove apply.  Takes the repository's exclusive lock.
    """
    from cipherdump.engine.forget import retag

    if not (add or remove or set_to):
        raise click.UsageError("give --add, --remove or --set")
    with open_repository(repo, password_file, lock=not dry_run) as repository:
        targets = dict(find_snapshot(repository, ref) for ref in refs)
        changes = retag(
            repository,
            list(targets.items()),
            add=add,
            remove=remove,
            set_to=set_to or None,
            dry_run=dry_run,
        )
    if as_json:
        click.echo(
            render.dumps(
                {
                    "dry_run": dry_run,
                    "snapshots": [
                        {
                            "snapshot": c.old.hex,
                            "new": c.new.hex if c.new is not None else None,
                            "tags": list(c.tags),
                        }
                        for c in changes
                    ],
                }
            )
        )
        return
    for c in changes:
        tags = ",".join(c.tags) or "no tags"
        if c.new is not None:
            click.echo(f"snapshot {c.old.short} saved again as {c.new.short} ({tags})")
        elif targets[c.old].tags == c.tags:
            click.echo(f"snapshot {c.old.short} unchanged ({tags})")
        else:
            click.echo(f"snapshot {c.old.short} would get {tags} (dry run)")
