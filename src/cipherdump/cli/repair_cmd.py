"""``cipherdump repair index|packs|snapshots``: the repository's own first aid."""

from __future__ import annotations

import sys

import click

from cipherdump.cli import render, sources
from cipherdump.errors import IntegrityError


@click.group()
def repair() -> None:
    """Repair a damaged repository."""


@repair.command(name="index")
@sources.repo_option
@sources.password_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@render.one_line_errors
def repair_index(repo: str | None, password_file: str | None, as_json: bool) -> None:
    """Rebuild the index from the packs themselves.

    For index files that were lost or damaged, or that name packs that are gone: every
    pack's header is read and authenticated, one new index file lists every pack
    found, and the old index files are removed.  A damaged pack is named (exit code
    5) and keeps the entries an old index file gives it, else it is left out; run
    `check` afterwards to see what the snapshots still lack.
    """
    on_progress, bar = render.progress_bar("repair", count_inodes=False)

    with sources.open_repository(repo, password_file, lock=True) as repository, bar:
        report = repository.repair_index(on_progress)
    if as_json:
        click.echo(
            render.dumps(
                {
                    "index": report.index_id.hex if report.index_id else None,
                    "packs": report.packs,
                    "blobs": report.blobs,
                    "replaced": report.replaced,
                    "damaged": report.damaged,
                }
            )
        )
    else:
        for why in report.damaged:
            click.echo(f"error: {why}", err=True)
        click.echo(
            f"indexed {report.blobs} blobs in {report.packs} packs; "
            f"{report.replaced} index files replaced"
        )
    if report.damaged:
        sys.exit(IntegrityError.exit_code)


@repair.command(name="packs")
@sources.repo_option
@sources.password_option
@click.option("--dry-run", is_flag=True, help="Read and report only; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@render.one_line_errors
def repair_packs(repo: str | None, password_file: str | None, dry_run: bool, as_json: bool) -> None:
    """Salvage damaged packs, so that backups store their lost data again.

    Every pack is read and every blob authenticated.  The readable blobs of a damaged
    pack are copied into new packs, one new index file lists every whole pack and the
    new ones, and only then are the damaged packs and old index files removed.  Blobs
    with no readable copy left are dropped from the index: the next backup stores
    again what of them is still on its source (and so heals the snapshots that name
    them); `repair snapshots` removes what is lost from the snapshots instead.  A
    pack in the wrong data/ folder is moved back first.  Exit code 5 if blobs were
    lost (or, with --dry-run, if any pack is damaged).
    """
    on_progress, bar = render.progress_bar("repair", count_inodes=False)

    from cipherdump.engine.damage import damaged_snapshots

    with sources.open_repository(repo, password_file, lock=True) as repository, bar:
        report = repository.repair_packs(dry_run=dry_run, on_progress=on_progress)
        affected = damaged_snapshots(repository, set(report.lost))
    lost = [f"{t.name.lower()} blob {i}" for t, i in report.lost]
    if as_json:
        click.echo(
            render.dumps(
                {
                    "dry_run": dry_run,
                    "packs_read": report.packs_read,
                    "damaged": report.damaged,
                    "salvaged": report.salvaged,
                    "lost": lost,
                    "new_packs": [p.hex for p in report.new_packs],
                    "removed": report.removed,
                    "index": report.index_id.hex if report.index_id else None,
                    "replaced": report.replaced,
                    "misplaced": report.moved,
                    "damaged_snapshots": render.damaged_json(affected),
                }
            )
        )
    else:
        for what in report.moved:
            click.echo(f"info: {what}")
        for why in report.damaged:
            click.echo(f"error: {why}", err=True)
        for what in lost:
            click.echo(f"error: {what}: no readable copy left", err=True)
        for snap in affected:
            click.echo(
                f"error: snapshots/{snap.id.hex}: {len(snap.paths)} paths use lost data: "
                f"{render.paths_summary(snap.paths)}",
                err=True,
            )
        if not report.damaged:
            click.echo(f"read {report.packs_read} packs: none is damaged")
        elif dry_run:
            click.echo(
                f"read {report.packs_read} packs: {len(report.damaged)} damaged; would "
                f"salvage {report.salvaged} blobs, {len(lost)} lost (dry run: nothing changed)"
            )
        else:
            click.echo(
                f"read {report.packs_read} packs: {len(report.damaged)} damaged, "
                f"{len(report.removed)} removed; salvaged {report.salvaged} blobs into "
                f"{len(report.new_packs)} new packs, {len(lost)} lost"
            )
            if lost:
                click.echo(
                    "the next backup stores again what is still on the source (and so "
                    "heals these snapshots); repair snapshots saves them without it"
                )
    if lost or (dry_run and report.damaged):
        sys.exit(IntegrityError.exit_code)


@repair.command(name="snapshots")
@click.argument("refs", nargs=-1, metavar="[SNAPSHOT]...")
@sources.repo_option
@sources.password_option
@click.option("--dry-run", is_flag=True, help="Report what would be removed; change nothing.")
@click.option("--forget", is_flag=True, help="Remove each original once its repair is saved.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@render.one_line_errors
def repair_snapshots(
    refs: tuple[str, ...],
    repo: str | None,
    password_file: str | None,
    dry_run: bool,
    forget: bool,
    as_json: bool,
) -> None:
    """Save snapshots that use lost data again, without what they lost.

    For each snapshot (every one if none is named) whose trees use blobs the index
    lacks, a new snapshot is saved: files whose contents lost data are removed, and
    directories whose own tree is lost are kept empty; each is named.  The original
    stays unless --forget is given.  Run `repair index` and `repair packs` first: this
    trusts the index.  When the lost files are still on the source, a backup
    (`--force-reread`) is the better repair: it stores them again and heals the old
    snapshots too.
    """
    from cipherdump.engine.snapshot_repair import repair_snapshots as run_repair

    with sources.open_repository(repo, password_file, lock=True) as repository:
        repairs = run_repair(repository, list(refs), dry_run=dry_run, forget=forget)
    if as_json:
        click.echo(
            render.dumps(
                {
                    "dry_run": dry_run,
                    "repaired": [
                        {
                            "snapshot": r.old.hex,
                            "new": r.new.hex if r.new is not None else None,
                            "forgotten": forget and not dry_run,
                            "removed": [render.show_bytes(p) for p in r.removed],
                        }
                        for r in repairs
                    ],
                }
            )
        )
        return
    for r in repairs:
        for path in r.removed:
            what = "emptied (its tree is lost)" if path.endswith(b"/") else "removed"
            click.echo(f"snapshot {r.old.short}: {render.show_bytes(path)}: {what}")
        if r.new is not None:
            gone = "; the original removed" if forget else ""
            click.echo(f"snapshot {r.old.short} saved again as {r.new.short}{gone}")
    if not repairs:
        click.echo("no snapshot uses lost data")
    elif dry_run:
        click.echo(f"{len(repairs)} snapshots would be repaired (dry run: nothing changed)")
