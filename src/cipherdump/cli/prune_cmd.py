"""``cipherdump prune``: free the data no snapshot uses."""

from __future__ import annotations

import sys
from typing import Any

import click

from cipherdump.cli import render
from cipherdump.cli.sources import open_repository, password_option, repo_option


def run_prune(
    repo: str | None,
    password_file: str | None,
    *,
    max_unused: float = 5.0,
    max_repack_size: int | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Prune under the exclusive lock, with a progress bar on a terminal; returns the
    statistics as ``--json`` prints them."""
    from cipherdump.repo.prune import PruneOptions

    options = PruneOptions(
        max_unused_percent=max_unused, max_repack_bytes=max_repack_size, dry_run=dry_run
    )
    # Each phase counts its own steps (index files, snapshots, bytes, packs): the bar
    # starts over with each.
    on_progress, bar = render.progress_bar("prune", count_inodes=False)
    # A dry run changes nothing, but still takes the lock: what it reports must be
    # what a real run would do now, not half of a backup's work.
    with open_repository(repo, password_file, lock=True) as repository, bar:
        stats = repository.prune(options, on_progress)
    return stats.as_dict()


def show_prune(stats: dict[str, Any]) -> None:
    would = "would " if stats["dry_run"] else ""
    click.echo(
        f"{stats['snapshots']} snapshots use {stats['blobs_used']} of {stats['blobs']} "
        f"blobs ({render.size(stats['used'])} of {render.size(stats['size'])} in "
        f"{stats['packs']} packs; {render.size(stats['unused_before'])} unused)"
    )
    click.echo(
        f"{would}remove {stats['packs_removed']} unused packs, repack "
        f"{stats['packs_repacked']} ({stats['blobs_repacked']} blobs, "
        f"{render.size(stats['bytes_repacked'])}), remove {stats['unindexed_removed']} packs "
        f"no index names"
        + (f" (kept {stats['unindexed_kept']} younger ones)" if stats["unindexed_kept"] else "")
    )
    click.echo(
        f"{would}free {render.size(stats['freed'])}; "
        f"{render.size(stats['unused_after'])} unused left"
        + (" (dry run: nothing changed)" if stats["dry_run"] else "")
    )


def _bytesize_text(text: str) -> int:
    units = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    number = text.strip().lower().removesuffix("b").removesuffix("i")
    unit = number[-1:] if number[-1:] in units else ""
    digits = number[: len(number) - len(unit)]
    if not digits.isdigit():
        raise click.BadParameter(f"{text!r} is not a size (as 500M or 2G)")
    return int(digits) * units[unit]


@click.command(name="prune")
@click.option(
    "--max-unused",
    type=click.FloatRange(0, 100),
    default=5.0,
    show_default=True,
    metavar="PERCENT",
    help="Repack partly used packs until the unused space is at most this share of the used.",
)
@click.option(
    "--max-repack-size",
    metavar="SIZE",
    help="Repack at most this much (as 500M or 2G) in one run.",
)
@click.option("--dry-run", is_flag=True, help="Say what would be freed; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@repo_option
@password_option
@render.one_line_errors
def prune_cmd(
    max_unused: float,
    max_repack_size: str | None,
    dry_run: bool,
    as_json: bool,
    repo: str | None,
    password_file: str | None,
) -> None:
    """Free the data no snapshot uses.

    Packs none of whose blobs a snapshot uses are removed; partly used packs are
    copied (their used blobs into new packs) until the unused space left is at most
    --max-unused percent of the used.  New packs and the new index are saved before
    anything is removed, so an interruption at any point leaves a repository that
    `check` passes and the next prune finishes.  Takes the exclusive lock (exit 8
    while a backup or another process uses the repository); a snapshot or index that
    cannot be read, or a needed blob that is in no pack, stops it before it changes
    anything (exit 5).
    """
    limit = _bytesize_text(max_repack_size) if max_repack_size is not None else None
    stats = run_prune(
        repo, password_file, max_unused=max_unused, max_repack_size=limit, dry_run=dry_run
    )
    if as_json:
        click.echo(render.dumps(stats))
    else:
        show_prune(stats)
    sys.stdout.flush()
