"""``cipherdump backup SOURCE``: back up an image, an unmounted device or a snapshot
into the repository, without any key."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

import click

from cipherdump.cli import mounted, render, sources
from cipherdump.errors import CipherdumpError

if TYPE_CHECKING:
    from cipherdump.engine.backup import BackupResult


def _backup_summary(result: BackupResult, source: str) -> dict[str, Any]:
    s = result.stats
    out: dict[str, Any] = {
        "snapshot_id": result.snapshot_id.hex,
        "parent": result.parent_id.hex if result.parent_id is not None else None,
        "source": result.snapshot.attrs.get("source", source),
        "path": result.snapshot.attrs.get("path", b"/"),
    }
    out.update(s.as_dict())
    out["policies"] = [
        {k: (v.hex() if isinstance(v, bytes) else v) for k, v in p.items()} for p in result.policies
    ]
    out["warnings"] = result.warnings
    return out


@click.command(name="backup")
@click.argument("source", type=click.Path(dir_okay=False, path_type=str))
@click.option(
    "--path",
    "path",
    default="/",
    show_default=True,
    help="Back up only this directory (no-key names as Linux shows them are accepted).",
)
@click.option("--force-reread", is_flag=True, help="Read every file, even unchanged ones.")
@click.option(
    "--parent",
    default=None,
    help="Compare with this snapshot (default: latest "
    "snapshot of the same filesystem UUID and path).",
)
@click.option("--no-parent", is_flag=True, help="Do not compare with any earlier snapshot.")
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(min=0),
    default=0,
    metavar="N",
    help="Processes sharing the work: 1 backs up in this process alone; N > 1 starts N-1 "
    "workers; 0 (the default) one worker per CPU (at most 4), when there are two or more "
    "and the filesystem has more than 2,000 inodes in use.",
)
@click.option("--tag", "tags", multiple=True, help="Tag the snapshot (repeatable).")
@mounted.allow_mounted_option("Back up")
@click.option("--json", "as_json", is_flag=True, help="End with one JSON summary object.")
@sources.repo_option
@sources.password_option
@render.one_line_errors
def backup_cmd(
    source: str,
    path: str,
    force_reread: bool,
    parent: str | None,
    no_parent: bool,
    jobs: int,
    tags: tuple[str, ...],
    allow_mounted: bool,
    as_json: bool,
    repo: str | None,
    password_file: str | None,
) -> None:
    """Back up SOURCE (an image, an unmounted device or a snapshot) without any key.

    Unchanged files (same inode number, generation, ctime, mtime, size and extent map as
    in the parent snapshot) are not read again; only changed data is stored.
    """
    from cipherdump.engine.backup import BackupOptions, backup
    from cipherdump.ext4 import open_filesystem

    sources.need_repo(repo)
    mounted.check_mounted(source, allow_mounted=allow_mounted, doing="back it up")
    problems = 0

    def on_problem(p: bytes, err: CipherdumpError) -> None:
        nonlocal problems
        problems += 1
        render.print_problem(p, err)

    fs = open_filesystem(source)
    try:
        for w in fs.warnings:
            render.warn(w)
        shown = len(fs.warnings)
        # Shared: other hosts may back up into the repository at the same time.
        repository = sources.open_repository(repo, password_file, lock=True, exclusive=False)
        try:
            options = BackupOptions(
                path=os.fsencode(path),
                parent=parent,
                no_parent=no_parent,
                force_reread=force_reread,
                jobs=jobs,
                source_name=os.path.abspath(source),
                tags=tags,
            )
            on_progress, bar = render.progress_bar("backup")
            with bar:
                result = backup(
                    repository, fs, options, on_progress=on_progress, on_problem=on_problem
                )
        finally:
            repository.close()
        for w in fs.warnings[shown:]:  # met while reading (damaged htree indexes, say)
            render.warn(w)
        for w in result.repository_warnings:
            render.warn(w)
    finally:
        fs.close()
    summary = _backup_summary(result, source)
    if as_json:
        click.echo(render.dumps(summary))
    else:
        s = result.stats
        parent_text = f" (parent {result.parent_id.short})" if result.parent_id else ""
        click.echo(f"snapshot {result.snapshot_id.short} saved{parent_text}")
        click.echo(
            f"files: {s.files_new} new, {s.files_changed} changed, "
            f"{s.files_unchanged} unchanged, {s.files_removed} removed"
        )
        click.echo(
            f"dirs:  {s.dirs_new} new, {s.dirs_changed} changed, "
            f"{s.dirs_unchanged} unchanged, {s.dirs_removed} removed"
        )
        click.echo(
            f"data:  {render.size(s.bytes_read)} read, "
            f"{render.size(s.bytes_reused)} reused unread, "
            f"{render.size(s.bytes_added)} added ({render.size(s.bytes_stored)} stored)"
        )
        replayed = fs.journal.replay if fs.journal is not None else None
        if replayed is not None:
            click.echo(
                f"journal: replayed in memory ({replayed.transactions} transactions,"
                f" {len(replayed.overlay)} blocks), as the kernel would on mount"
            )
        for p in result.policies:
            click.echo(f"policy: {p.get('inodes')} inodes  {p.get('policy')}")
            click.echo(f"        {p.get('restore')}")
    if problems:
        sys.exit(render.EXIT_PARTIAL)
