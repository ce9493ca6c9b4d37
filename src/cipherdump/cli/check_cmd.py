"""``cipherdump check``: verify the repository, and name what damage costs the
snapshots."""

from __future__ import annotations

import sys

import click

from cipherdump.cli import render, sources
from cipherdump.errors import IntegrityError


@click.command()
@click.option("--read-data", is_flag=True, help="Also read and verify every byte of every pack.")
@sources.repo_option
@sources.password_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@render.one_line_errors
def check(read_data: bool, repo: str | None, password_file: str | None, as_json: bool) -> None:
    """Verify the repository; exit code 5 names damage if any is found."""
    on_progress, bar = render.progress_bar("check", count_inodes=False)

    from cipherdump.engine.damage import damaged_snapshots
    from cipherdump.repo import Finding

    shared = {"lock": True, "exclusive": False, "lock_optional": True}
    with sources.open_repository(repo, password_file, **shared) as repository, bar:
        report = repository.check(read_data=read_data, on_progress=on_progress)
        damaged = damaged_snapshots(repository, report.bad_blobs)
    for snap in damaged:
        report.errors.append(
            Finding(
                f"{len(snap.paths)} paths use lost or damaged data: "
                f"{render.paths_summary(snap.paths)}",
                f"snapshots/{snap.id.hex}",
            )
        )
    if as_json:
        click.echo(
            render.dumps(
                {
                    "ok": report.ok,
                    "errors": [str(f) for f in report.errors],
                    "infos": [str(f) for f in report.infos],
                    "snapshots": report.snapshots,
                    "trees": report.trees,
                    "packs_read": report.packs_read,
                    "blobs_checked": report.blobs_checked,
                    "damaged_snapshots": render.damaged_json(damaged),
                }
            )
        )
    else:
        for f in report.infos:
            click.echo(f"info: {f}")
        for f in report.errors:
            click.echo(f"error: {f}", err=True)
        what = f"{report.snapshots} snapshots, {report.trees} trees"
        if read_data:
            what += f", {report.packs_read} packs, {report.blobs_checked} blobs read"
        click.echo(f"{'no errors' if report.ok else f'{len(report.errors)} errors'} ({what})")
    if not report.ok:
        sys.exit(IntegrityError.exit_code)
