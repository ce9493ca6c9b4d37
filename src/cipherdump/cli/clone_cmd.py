"""``cipherdump clone IMAGE[:PATH] OUT.img``: copy a tree image to image, key-less.

The same offline writer as ``restore --to-image``: encrypted contents, names, symlink
targets and contexts are copied as stored, so the owner's key unlocks the copy.
"""

from __future__ import annotations

import os
import sys

import click

from cipherdump.cli import mounted, render


def split_source(spec: str) -> tuple[str, bytes | None]:
    """``IMAGE`` or ``IMAGE:PATH`` (an existing file named with a colon wins)."""
    if os.path.exists(spec) or ":" not in spec:
        return spec, None
    image, path = spec.rsplit(":", 1)
    return image, os.fsencode(path) if path not in ("", "/") else None


@click.command(name="clone")
@click.argument("source", metavar="IMAGE[:PATH]")
@click.argument("out")
@click.option("--size", default=None, help="Size of a new OUT image (bytes or K/M/G).")
@mounted.allow_mounted_option("Copy")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary object.")
@render.one_line_errors
def clone_cmd(source: str, out: str, size: str | None, allow_mounted: bool, as_json: bool) -> None:
    """Copy IMAGE (or its subtree PATH, with every ancestor directory) into OUT.img.

    No key is needed.  OUT.img is created with mke2fs to match IMAGE (block size, UUID,
    hash seed, features) unless it is an existing unmounted ext4 image with room.
    """
    # Imported here: the writer is heavy and every other command starts without it.
    from cipherdump.blockio.kinds import check_image_target
    from cipherdump.engine.restore_image import clone_image

    image, path = split_source(source)
    check_image_target(out)
    mounted.check_mounted(image, allow_mounted=allow_mounted, doing="copy it")
    on_progress, bar = render.progress_bar("clone")
    with bar:
        summary = clone_image(
            image, out, path=path, size=render.parse_size(size), on_progress=on_progress,
            on_problem=render.print_problem,
        )  # fmt: skip
    if as_json:
        click.echo(render.dumps(summary))
    else:
        click.echo(
            f"cloned {summary['files']} files, {summary['directories']} dirs, "
            f"{summary['symlinks']} symlinks, {summary['specials']} special files, "
            f"{summary['hardlinks']} hard links into {out}"
            + (f"; {summary['problems']} problems" if summary["problems"] else "")
        )
    if summary["problems"]:
        sys.exit(render.EXIT_PARTIAL)
