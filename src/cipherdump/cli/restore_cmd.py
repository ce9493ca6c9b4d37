"""``restore``: a snapshot back as a plaintext tree (with keys), or as an ext4 image.

``restore SNAPSHOT --target DIR`` decrypts in user space with the owners' keys
(``--key``, ``--key-dir``, ``--passphrase``, ``--passphrase-file``, ``--protector-key``)
and writes plaintext under DIR only.  ``restore SNAPSHOT --to-image OUT.img`` writes a
new ext4 image holding the ciphertext as it was (no key needed); that engine lives in
:mod:`cipherdump.engine.restore_image`.  ``restore --from-tar FILE`` and ``--from-dir
DIR`` (with ``--to-image``) make the same image from a key-less copy made outside the
repository (``dump --ciphertext``, a copy of the ciphertext view).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import click

from cipherdump.cli import keyopts, render, sources
from cipherdump.errors import InputError

if TYPE_CHECKING:
    from cipherdump.progress import Progress

# The restore engines, the repository and fscrypt are imported inside the functions
# that use them, so that every other command starts without them.


@click.command(name="restore")
@click.argument("snapshot", required=False)
@click.option(
    "--from-tar",
    "from_tar",
    metavar="FILE",
    help="Instead of a snapshot: a key-less tar of dump --ciphertext (- for standard "
    "input); needs --to-image.",
)
@click.option(
    "--from-dir",
    "from_dir",
    metavar="DIR",
    help="Instead of a snapshot: a tree copied from the ciphertext view with its xattrs "
    "(cp -a, rsync -aAX, tar --xattrs, restic); needs --to-image.",
)
@click.option(
    "--target",
    metavar="DIR",
    help="Write the decrypted plaintext tree under DIR (created if missing).",
)
@click.option(
    "--to-image",
    "to_image",
    metavar="OUT.img",
    help="Write a new ext4 image holding the snapshot as it was (no key needed).",
)
@click.option("--size", "size", default=None, help="Size of the --to-image image (bytes or K/M/G).")
@click.option(
    "--path",
    "path",
    default="/",
    show_default=True,
    help="Restore only this path (plaintext names where a key matches, or no-key names).",
)
@click.option("--json", "as_json", is_flag=True, help="End with one JSON summary object.")
@click.option("-v", "--verbose", is_flag=True, help="Print each path as it is written.")
@keyopts.key_options
@sources.snapshot_options
@render.one_line_errors
def restore_cmd(
    snapshot: str | None,
    from_tar: str | None,
    from_dir: str | None,
    target: str | None,
    to_image: str | None,
    size: str | None,
    path: str,
    as_json: bool,
    verbose: bool,
    keying: keyopts.KeyOptions,
    repo: str | None,
    password_file: str | None,
) -> None:
    """Restore SNAPSHOT: decrypted into --target DIR, or as an image with --to-image.

    With --target, the owners' keys (--key, --key-dir) or passphrases (--passphrase,
    --passphrase-file, CIPHERDUMP_FSCRYPT_PASSPHRASE; unlocked with the snapshot's own
    .fscrypt metadata) decrypt in user space; DIR gets modes, owners, nanosecond times,
    xattrs and ACLs, symlinks, hard links, special files and sparse files.  Parts no
    key given can decrypt are skipped with an error (exit 1); unencrypted parts are
    restored as they are.  Files already in DIR and identical are skipped, so an
    interrupted restore can be run again.  Nothing is written outside DIR.

    --from-tar FILE and --from-dir DIR make the same image from a key-less copy made
    outside the repository (docs/keyless-records.md): its records must all be there and
    agree, or each missing or inconsistent one is named and nothing is written (exit 3).
    """
    sources_given = [x for x in (snapshot, from_tar, from_dir) if x is not None]
    if len(sources_given) != 1:
        raise click.UsageError("give exactly one of SNAPSHOT, --from-tar FILE or --from-dir DIR")
    if from_tar is not None or from_dir is not None:
        if to_image is None or target is not None:
            raise click.UsageError("--from-tar and --from-dir restore with --to-image OUT.img")
        if keying:
            raise click.UsageError("--to-image restores ciphertext; it takes no key")
        if path != "/":
            raise click.UsageError("--path goes with a snapshot")
        _restore_copy(from_tar, from_dir, to_image, size, as_json)
        return
    assert snapshot is not None
    if (target is None) == (to_image is None):
        raise click.UsageError("give exactly one of --target DIR or --to-image OUT.img")
    if to_image is not None:
        if keying:
            raise click.UsageError("--to-image restores ciphertext; it takes no key")
        _restore_to_image(repo, password_file, snapshot, to_image, path, size, as_json)
        return
    if size is not None:
        raise click.UsageError("--size goes with --to-image")
    assert target is not None
    from cipherdump.engine.restore_plain import restore_plain
    from cipherdump.engine.views.snapshot import SnapshotView

    if not keying:
        render.warn(
            "no key or passphrase given: only unencrypted parts can be restored to plaintext"
        )

    # -v prints each path instead of a bar.
    update, bar = (None, nullcontext()) if verbose else render.progress_bar("restore")
    totals: tuple[int, int] | None = None

    def show(ev: Progress) -> None:
        if verbose:
            click.echo(render.show_bytes(ev.path), err=as_json)
        elif update is not None:
            if totals is not None:
                total_bytes, total_inodes = totals
                ev = replace(
                    ev,
                    bytes_total=max(total_bytes, ev.bytes_done),
                    inodes_total=max(total_inodes, ev.inodes_done),
                )
            update(ev)

    with sources.open_repository(
        repo, password_file, lock=True, exclusive=False, lock_optional=True
    ) as repository:
        snap_id, snap = sources.find_snapshot(repository, snapshot)
        view = SnapshotView(repository, snap_id, snap)
        ring = sources.snapshot_keys(view, keying)
        if os.fsencode(path).strip(b"/") == b"":
            totals = _snapshot_totals(snap.attrs.get("stats"))
        with bar:
            result, source = restore_plain(
                view, ring, target, path=os.fsencode(path), on_progress=show
            )
        for p in result.problems:
            click.echo(
                f"cipherdump: error: {render.problem_line(p.source_path, render.why(p.error))}",
                err=True,
            )
        sources.report_snapshot_keys(source)
    summary = result.summary()
    if as_json:
        click.echo(render.dumps({"snapshot": snap_id.hex, "target": target, **summary}))
    else:
        click.echo(
            f"restored {result.files} files ({render.size(result.bytes)}), "
            f"{result.dirs} dirs, {result.symlinks} symlinks, {result.hardlinks} hard links, "
            f"{result.specials} special files; {result.skipped} already there"
            + (f"; {len(result.problems)} problems" if result.problems else "")
        )
    if result.problems:
        sys.exit(render.EXIT_PARTIAL)


def _snapshot_totals(stats: object) -> tuple[int, int] | None:
    """What the backup of a snapshot counted (its data bytes, its files and directories):
    the totals a restore of all of it works towards, for the time left.  Estimates:
    symlinks, special files and links are not counted, and parts no key opens are
    skipped."""
    if not isinstance(stats, Mapping):
        return None
    counts = {k: v for k, v in stats.items() if isinstance(v, int)}
    data = counts.get("bytes_read", 0) + counts.get("bytes_reused", 0)
    inodes = sum(
        counts.get(f"{kind}_{how}", 0)
        for kind in ("files", "dirs")
        for how in ("new", "changed", "unchanged")
    )
    return data, inodes


def _restore_copy(
    from_tar: str | None, from_dir: str | None, out: str, size: str | None, as_json: bool
) -> None:
    """``--from-tar``/``--from-dir``: each missing or inconsistent record on a line of
    its own, then the error that ends the run."""
    from cipherdump.blockio.kinds import check_image_target
    from cipherdump.engine.keyless_ingest import CopyRefused
    from cipherdump.engine.restore_image import restore_copy_to_image

    check_image_target(out)
    on_progress, bar = render.progress_bar("restore")
    try:
        if from_tar is not None:
            from cipherdump.engine.keyless_tar import open_tar_copy

            opened = open_tar_copy(from_tar, os.path.dirname(os.path.abspath(out)))
        else:
            assert from_dir is not None
            from cipherdump.engine.keyless_dir import open_dir_copy

            opened = open_dir_copy(from_dir)
        with opened as copy, bar:
            report = restore_copy_to_image(copy, out, size=render.parse_size(size),
                                           on_progress=on_progress,
                                           on_problem=render.print_problem)  # fmt: skip
    except CopyRefused as err:
        for line in err.shown:
            click.echo(f"cipherdump: error: {line}", err=True)
        raise
    if as_json:
        click.echo(render.dumps(dict(report)))
    else:
        for k, v in report.items():
            click.echo(f"{k}: {v}")
    if report.get("problems"):
        sys.exit(render.EXIT_PARTIAL)


def _restore_to_image(
    repo: str | None,
    password_file: str | None,
    snapshot: str,
    out: str,
    path: str,
    size: str | None,
    as_json: bool,
) -> None:
    try:
        module: Any = importlib.import_module("cipherdump.engine.restore_image")
    except ModuleNotFoundError as err:
        if err.name != "cipherdump.engine.restore_image":
            raise
        raise InputError("restore --to-image is not implemented yet") from None
    restore_to_image = getattr(module, "restore_to_image", None)
    if restore_to_image is None:
        raise InputError("restore --to-image is not implemented yet")
    from cipherdump.blockio.kinds import check_image_target

    check_image_target(out)  # before the password is asked for and the snapshot read
    on_progress, bar = render.progress_bar("restore")
    with (
        sources.open_repository(
            repo, password_file, lock=True, exclusive=False, lock_optional=True
        ) as repository,
        bar,
    ):
        snap_id, snap = sources.find_snapshot(repository, snapshot)
        wanted = os.fsencode(path)
        report = restore_to_image(
            repository,
            snap_id,
            snap,
            out,
            path=None if wanted in (b"/", b"") else wanted,
            size=render.parse_size(size),
            on_progress=on_progress,
            on_problem=render.print_problem,
        )
    if as_json:
        rec = dict(report) if isinstance(report, Mapping) else {"result": report}
        click.echo(render.dumps(rec))
    elif isinstance(report, Mapping):
        for k, v in report.items():
            click.echo(f"{k}: {v}")
    if isinstance(report, Mapping) and report.get("problems"):
        sys.exit(render.EXIT_PARTIAL)
