"""``cipherdump ls SOURCE [PATH]``: list a directory of an image or of a snapshot."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

import click

from cipherdump.cli import keyopts, render, sources
from cipherdump.errors import CipherdumpError

if TYPE_CHECKING:
    from cipherdump.engine.views.image import Problem
    from cipherdump.engine.views.snapshot import SnapNode


@click.command()
@click.argument("image", type=click.Path(dir_okay=False, path_type=str))
@click.argument("path", default="/")
@click.option("-l", "long", is_flag=True, help="Long listing: mode, owner, size, mtime.")
@click.option("-R", "recursive", is_flag=True, help="List subdirectories recursively.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@keyopts.key_options
@sources.snapshot_options
@render.one_line_errors
def ls(
    image: str,
    path: str,
    long: bool,
    recursive: bool,
    as_json: bool,
    keying: keyopts.KeyOptions,
    repo: str | None,
    password_file: str | None,
) -> None:
    """List PATH (default /) of IMAGE.  E in the long listing marks encrypted inodes.

    PATH may contain no-key names exactly as `ls` shows them on the live system.  With
    --key, names and symlink targets under a matching policy are shown in plaintext
    (and may be typed so); the rest keep their no-key names.

    With a repository (-r/--repo or CIPHERDUMP_REPOSITORY), IMAGE is a snapshot (an id
    prefix or "latest"), listed exactly as its image was.
    """
    if repo:
        keying.refuse_for_snapshots()
        problems = _ls_snapshot(repo, password_file, image, path, long, recursive, as_json)
    else:
        problems = _ls_image(image, path, long, recursive, as_json, keying)
    if problems:
        sys.exit(render.EXIT_PARTIAL)


def _ls_image(
    image: str, path: str, long: bool, recursive: bool, as_json: bool, keying: keyopts.KeyOptions
) -> int:
    from cipherdump.engine.describe import node_record
    from cipherdump.engine.views.image import Problem

    problems = 0
    loaded = keying.load()
    with sources.open_image(image) as fs:
        keyopts.add_image_secrets(loaded, keying.secrets, fs)
        ns = keyopts.namespace(fs, loaded)
        top = ns.resolve(os.fsencode(path))
        if not top.inode.is_dir:
            items: list[Any] = [top]
        else:
            items = list(ns.walk(top, recursive=recursive))
        for item in items:
            if isinstance(item, Problem):
                problems += 1
                render.print_problem(item.path, item.error)
                continue
            try:
                rec = node_record(ns, item)
            except CipherdumpError as err:
                problems += 1
                render.print_problem(item.path, err)
                continue
            _show(rec, long, recursive, as_json)
        keyopts.report_keys(ns)
    return problems


def _ls_snapshot(
    repo: str,
    password_file: str | None,
    snapshot: str,
    path: str,
    long: bool,
    recursive: bool,
    as_json: bool,
) -> int:
    """The same lines ``ls`` printed for the image."""
    from cipherdump.engine.views.image import Problem

    problems = 0
    with sources.open_reader(repo, password_file) as repository:
        view = sources.snapshot_view(repository, snapshot)
        top = view.resolve(os.fsencode(path))
        items: list[SnapNode | Problem] = (
            list(view.walk(top, recursive=recursive)) if top.is_dir else [top]
        )
        for item in items:
            if isinstance(item, Problem):
                problems += 1
                render.print_problem(item.path, item.error)
                continue
            try:
                rec = view.record(item)
            except CipherdumpError as err:
                problems += 1
                render.print_problem(item.path, err)
                continue
            _show(rec, long, recursive, as_json)
    return problems


def _show(rec: dict[str, Any], long: bool, recursive: bool, as_json: bool) -> None:
    if as_json:
        click.echo(render.dumps(rec))
    elif long:
        click.echo(render.long_line(rec))
    else:
        click.echo(render.show_bytes(rec["path"] if recursive else rec["name"]))
