"""``cipherdump extract IMAGE PATH DEST``: a plaintext copy of a tree of an image,
decrypted with the owners' keys (``restore --target`` does the same for a snapshot)."""

from __future__ import annotations

import os
import sys
from contextlib import nullcontext
from typing import TYPE_CHECKING

import click

from cipherdump.cli import keyopts, mounted, render, sources

if TYPE_CHECKING:
    from cipherdump.progress import Progress


@click.command(name="extract")
@click.argument("image", type=click.Path(dir_okay=False, path_type=str))
@click.argument("path")
@click.argument("dest", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary object.")
@click.option("-v", "--verbose", is_flag=True, help="Print each path as it is written.")
@mounted.allow_mounted_option("Extract from")
@keyopts.key_options
@render.one_line_errors
def extract_cmd(
    image: str,
    path: str,
    dest: str,
    as_json: bool,
    verbose: bool,
    allow_mounted: bool,
    keying: keyopts.KeyOptions,
) -> None:
    """Write a plaintext copy of PATH of IMAGE to DEST, decrypting with --key.

    DEST receives the contents of PATH, as `cp -a PATH/. DEST` would: modes, owners,
    nanosecond times, xattrs, symlinks, hard links, special files, and sparse files
    kept sparse.  Give --key once per user whose tree is inside PATH.  Objects no key
    given can decrypt are skipped with an error (exit 1); nothing is written outside
    DEST, and ciphertext is never written as if it were plaintext.
    """
    from cipherdump.engine.extract import extract
    from cipherdump.engine.views.image_keyed import KeyedNamespace

    mounted.check_mounted(image, allow_mounted=allow_mounted, doing="extract from it")
    loaded = keying.load()

    # -v prints each path instead of a bar (which has no total: the tree is not counted first).
    update, bar = (None, nullcontext()) if verbose else render.progress_bar("extract")

    def show(ev: Progress) -> None:
        if verbose:
            click.echo(render.show_bytes(ev.path), err=as_json)
        elif update is not None:
            update(ev)

    with sources.open_image(image) as fs:
        keyopts.add_image_secrets(loaded, keying.secrets, fs)
        ns = keyopts.namespace(fs, loaded)
        if not isinstance(ns, KeyedNamespace):
            ns = KeyedNamespace(fs, loaded.ring)
        top = ns.resolve(os.fsencode(path))
        with bar:
            result = extract(ns, top, dest, on_progress=show)
        for p in result.problems:
            click.echo(
                f"cipherdump: error: {render.problem_line(p.source_path, render.why(p.error))}",
                err=True,
            )
        keyopts.report_keys(ns)
    if as_json:
        click.echo(render.dumps(result.summary()))
    if result.problems:
        sys.exit(render.EXIT_PARTIAL)
