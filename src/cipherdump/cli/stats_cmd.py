"""``cipherdump stats``: sizes of the repository and of its snapshots."""

from __future__ import annotations

from typing import Any

import click

from cipherdump.cli import render
from cipherdump.cli.sources import find_snapshot, open_repository, password_option, repo_option


@click.command(name="stats")
@click.argument("refs", nargs=-1, metavar="[SNAPSHOT]...")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@repo_option
@password_option
@render.one_line_errors
def stats_cmd(
    refs: tuple[str, ...], as_json: bool, repo: str | None, password_file: str | None
) -> None:
    """Sizes of the snapshots named (all if none), each and together.

    "before dedup" counts every file's data each time a snapshot has it; "raw" is the
    distinct data (deduplicated, before compression); "stored" what it takes in the
    repository (compressed and encrypted).  The repository line adds the packs and
    the bytes in them no snapshot uses (what prune can free).
    """
    on_progress, bar = render.progress_bar("stats", count_inodes=False)
    shared = {"lock": True, "exclusive": False, "lock_optional": True}
    with open_repository(repo, password_file, **shared) as repository, bar:
        if refs:
            chosen = list(dict(find_snapshot(repository, ref) for ref in refs).items())
        else:
            from cipherdump.engine.dirtable import TABLE_ATTRS

            chosen = repository.list_snapshots(drop_attrs=TABLE_ATTRS)
        result = repository.stats(chosen, on_progress)
    times = {sid: snap.time_ns for sid, snap in chosen}
    out: dict[str, Any] = {
        "total": result.total.as_dict(),
        "snapshots": [
            {"id": sid.hex, "time_ns": times[sid], **sizes.as_dict()}
            for sid, sizes in result.snapshots
        ],
        "packs": result.packs,
        "pack_bytes": result.pack_bytes,
        "indexed_blobs": result.indexed_blobs,
        "unused_bytes": result.unused_bytes,
    }
    if as_json:
        click.echo(render.dumps(out))
        return
    click.echo(f"{'snapshot':<8}  {'before dedup':>12}  {'raw':>10}  {'stored':>10}  {'blobs':>8}")
    for sid, sizes in result.snapshots:
        click.echo(
            f"{sid.short:<8}  {render.size(sizes.logical):>12}  {render.size(sizes.raw):>10}  "
            f"{render.size(sizes.stored):>10}  {sizes.blobs:>8}"
        )
    t = out["total"]
    click.echo(
        f"{'together':<8}  {render.size(result.total.logical):>12}  "
        f"{render.size(result.total.raw):>10}  {render.size(result.total.stored):>10}  "
        f"{result.total.blobs:>8}"
    )
    click.echo(
        f"deduplication {t['dedup_ratio']}x, compression {t['compression_ratio']}x; "
        f"{result.packs} packs, {render.size(result.pack_bytes)}, "
        f"{render.size(result.unused_bytes)} unused"
    )
