"""``cipherdump stat SOURCE PATH``: every inode field, the encryption context and the
block map of one object of an image or of a snapshot."""

from __future__ import annotations

import os
from typing import Any

import click

from cipherdump.cli import keyopts, render, sources


@click.command(name="stat")
@click.argument("image", type=click.Path(dir_okay=False, path_type=str))
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@keyopts.key_options
@sources.snapshot_options
@render.one_line_errors
def stat_cmd(
    image: str,
    path: str,
    as_json: bool,
    keying: keyopts.KeyOptions,
    repo: str | None,
    password_file: str | None,
) -> None:
    """Every inode field of PATH, its encryption context and its block map.

    With --key, the name and symlink target are shown in plaintext where a key matches.
    With a repository (-r/--repo or CIPHERDUMP_REPOSITORY), IMAGE is a snapshot.
    """
    if repo:
        keying.refuse_for_snapshots()
        rec = _stat_snapshot(repo, password_file, image, path)
    else:
        rec = _stat_image(image, path, keying)
    if as_json:
        click.echo(render.dumps(rec))
        return
    for line in render.stat_lines(rec):
        click.echo(line)


def _stat_image(image: str, path: str, keying: keyopts.KeyOptions) -> dict[str, Any]:
    from cipherdump.engine.describe import stat_record

    loaded = keying.load()
    with sources.open_image(image) as fs:
        keyopts.add_image_secrets(loaded, keying.secrets, fs)
        ns = keyopts.namespace(fs, loaded)
        node = ns.resolve(os.fsencode(path))
        rec = stat_record(ns, node)
        rec.update(keyopts.keyed_stat_fields(ns, node))
    return rec


def _stat_snapshot(
    repo: str, password_file: str | None, snapshot: str, path: str
) -> dict[str, Any]:
    with sources.open_reader(repo, password_file) as repository:
        view = sources.snapshot_view(repository, snapshot)
        return view.stat_record(view.resolve(os.fsencode(path)))
