"""``cipherdump backup SOURCE``: back up an image, an unmounted device or a snapshot
into the repository, without any key; ``backup --live MOUNTPOINT`` backs up a mounted
filesystem in use, per-file consistent (see docs/live-backup.md)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from cipherdump.cli import mounted, render, sources
from cipherdump.errors import CipherdumpError

if TYPE_CHECKING:
    from cipherdump.engine.backup import BackupOptions, BackupResult
    from cipherdump.engine.live_backup import LiveReport
    from cipherdump.ext4 import Filesystem


def _backup_summary(
    result: BackupResult, source: str, live: LiveReport | None = None
) -> dict[str, Any]:
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
    if live is not None:
        # As the snapshot records it (see LiveReport.attrs), with the mount point.
        out["live"] = live.attrs(out["source"])
    return out


def _rate(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    from cipherdump.blockio.throttle import parse_rate

    if value is None:
        return None
    try:
        return parse_rate(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@click.command(name="backup")
@click.argument("source", type=click.Path(path_type=str))
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
    "and the filesystem has more than 2,000 inodes in use (S3: one process).",
)
@click.option("--tag", "tags", multiple=True, help="Tag the snapshot (repeatable).")
@mounted.allow_mounted_option("Back up")
@click.option(
    "--live",
    is_flag=True,
    help="SOURCE is a mounted filesystem in use (its mount point, or its mounted device): "
    "back it up per-file consistent, checking every object against the running kernel; "
    "objects that keep changing are named (exit code 1).",
)
@click.option(
    "--live-retries",
    type=click.IntRange(min=0, max=20),
    default=3,
    show_default=True,
    metavar="N",
    help="With --live: rounds after the first that retry the objects that changed.",
)
@click.option(
    "--read-rate",
    callback=_rate,
    default=None,
    metavar="RATE",
    help="Read the source at most RATE bytes a second (50M, 1G; binary units).",
)
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
    live: bool,
    live_retries: int,
    read_rate: int | None,
    as_json: bool,
    repo: str | None,
    password_file: str | None,
) -> None:
    """Back up SOURCE (an image, an unmounted device or a snapshot) without any key;
    with --live, a mounted filesystem in use (see docs/live-backup.md).

    Unchanged files (same inode number, generation, ctime, mtime, size and extent map as
    in the parent snapshot) are not read again; only changed data is stored.
    """
    from cipherdump.engine.backup import BackupOptions, backup
    from cipherdump.ext4 import open_filesystem

    sources.need_repo(repo)
    if os.path.isdir(source) and not live:
        raise click.BadParameter(
            f"{source!r} is a directory (a mounted filesystem? see --live)",
            param_hint="'SOURCE'",
        )
    if live and allow_mounted:
        raise click.UsageError("--live and --allow-mounted do not go together")
    if live and jobs > 1:
        raise click.UsageError("--live backs up in one process (leave out --jobs)")
    problems = 0

    def on_problem(p: bytes, err: CipherdumpError) -> None:
        nonlocal problems
        problems += 1
        render.print_problem(p, err)

    options = BackupOptions(
        path=os.fsencode(path),
        parent=parent,
        no_parent=no_parent,
        force_reread=force_reread,
        jobs=jobs,
        source_name=os.path.abspath(source),
        tags=tags,
    )
    if live:
        _live(source, options, live_retries, read_rate, repo, password_file, as_json, on_problem)
        return
    mounted.check_mounted(
        source,
        allow_mounted=allow_mounted,
        doing="back it up",
        instead=", or back it up per file with --live",
    )
    fs = open_filesystem(source)
    if read_rate is not None:
        fs.close()
        fs = _throttled(source, read_rate)
    try:
        for w in fs.warnings:
            render.warn(w)
        shown = len(fs.warnings)
        # Shared: other hosts may back up into the repository at the same time.
        repository = sources.open_repository(repo, password_file, lock=True, exclusive=False)
        try:
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
    _report(result, source, fs, as_json)
    if problems:
        sys.exit(render.EXIT_PARTIAL)


def _throttled(source: str, read_rate: int) -> Filesystem:
    """The filesystem of ``source`` read through ``--read-rate``'s limit."""
    from cipherdump.blockio import open_source
    from cipherdump.blockio.throttle import RateLimitedSource
    from cipherdump.ext4 import Filesystem

    raw = open_source(source)
    try:
        return Filesystem(RateLimitedSource(raw, read_rate), owns_source=True)
    except BaseException:
        raw.close()
        raise


def _live(
    source: str,
    options: BackupOptions,
    retries: int,
    read_rate: int | None,
    repo: str | None,
    password_file: str | None,
    as_json: bool,
    on_problem: Callable[[bytes, CipherdumpError], None],
) -> None:
    """``backup --live``: rounds of checked reads of a mounted filesystem."""
    from dataclasses import replace

    from cipherdump.blockio.livefs import LiveMount
    from cipherdump.engine.live_backup import live_backup

    mount = LiveMount(source) if os.path.isdir(source) else LiveMount.of_device(source)
    problems: list[bytes] = []

    def note_problem(p: bytes, err: CipherdumpError) -> None:
        problems.append(p)
        on_problem(p, err)

    try:
        options = replace(options, source_name=mount.mount_point)
        repository = sources.open_repository(repo, password_file, lock=True, exclusive=False)
        try:
            on_progress, bar = render.progress_bar("backup")
            with bar:
                result, report = live_backup(
                    repository,
                    mount,
                    options,
                    retries=retries,
                    read_rate=read_rate,
                    on_progress=on_progress,
                    on_problem=note_problem,
                )
        finally:
            repository.close()
    finally:
        mount.close()
    for w in result.warnings:
        render.warn(w)
    _report(result, mount.mount_point, None, as_json, report)
    if not as_json:
        click.echo(
            f"live: {report.rounds} round(s), {report.retried} object(s) retried, "
            f"{len(report.changed)} changed during backup"
        )
    if problems or report.changed:
        sys.exit(render.EXIT_PARTIAL)


def _report(
    result: BackupResult,
    source: str,
    fs: Filesystem | None,
    as_json: bool,
    live: LiveReport | None = None,
) -> None:
    summary = _backup_summary(result, source, live)
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
        replayed = fs.journal.replay if fs is not None and fs.journal is not None else None
        if replayed is not None:
            click.echo(
                f"journal: replayed in memory ({replayed.transactions} transactions,"
                f" {len(replayed.overlay)} blocks), as the kernel would on mount"
            )
        for p in result.policies:
            click.echo(f"policy: {p.get('inodes')} inodes  {p.get('policy')}")
            click.echo(f"        {p.get('restore')}")
