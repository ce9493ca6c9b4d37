"""``restore``: a snapshot back as a plaintext tree (with keys), or as an ext4 image.

``restore SNAPSHOT --target DIR`` decrypts in user space with the owners' keys
(``--key``, ``--key-dir``, ``--passphrase``, ``--passphrase-file``, ``--protector-key``)
and writes plaintext under DIR only.  ``restore SNAPSHOT --to-image OUT.img`` writes a
new ext4 image holding the ciphertext as it was (no key needed); that engine lives in
:mod:`cipherdump.engine.restore_image`.

Also ``snapshot_keys``: the keys for a snapshot (its own ``.fscrypt`` for passphrases),
used by ``cat --key/--passphrase`` of a snapshot too.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import click

from cipherdump.cli import keyopts, render, repo_cmds
from cipherdump.errors import InputError, KeyProblem

if TYPE_CHECKING:
    from cipherdump.engine.plainwrite import WriteEvent
    from cipherdump.engine.restore_plain import SnapshotSource
    from cipherdump.engine.snapshot_view import SnapshotView
    from cipherdump.fscrypt.keys import KeyRing
    from cipherdump.fscrypt.protectors import FscryptMetadata

# The restore engines, the repository and fscrypt are imported inside the functions
# that use them, so that every other command starts without them.

EXIT_PARTIAL = 1
EXIT_UNUSABLE = 3


def snapshot_keys(
    view: SnapshotView,
    keying: keyopts.KeyOptions,
) -> KeyRing:
    """Every master key the options give, with passphrases unlocked against the
    snapshot's own ``.fscrypt`` (and ``--fscrypt-metadata``)."""

    def own_metadata() -> FscryptMetadata:
        from cipherdump.engine.fscrypt_meta import metadata_from_snapshot

        return metadata_from_snapshot(view)

    loaded = keying.load()
    for w in loaded.warnings:
        click.echo(f"cipherdump: warning: {w}", err=True)
    salt = view.facts.get("encrypt_pw_salt")
    keyopts.add_secret_keys(
        loaded,
        keying.secrets,
        own_metadata,
        e4crypt_salt=salt if isinstance(salt, bytes) else None,
    )
    return loaded.ring


def report_snapshot_keys(source: SnapshotSource) -> None:
    for policy in source.missing.values():
        click.echo(f"cipherdump: warning: no key for policy {policy.describe()}", err=True)


def _why(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err)


@click.command(name="restore")
@click.argument("snapshot")
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
@repo_cmds.snapshot_options
def restore_cmd(
    snapshot: str,
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
    """
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
    from cipherdump.engine.snapshot_view import SnapshotView

    if not keying:
        click.echo(
            "cipherdump: warning: no key or passphrase given: only unencrypted parts can be "
            "restored to plaintext",
            err=True,
        )

    def show(ev: WriteEvent) -> None:
        if verbose and ev.kind != "problem":
            click.echo(render.show_bytes(ev.path), err=as_json)

    with repo_cmds.open_repository(
        repo, password_file, lock=True, exclusive=False, lock_optional=True
    ) as repository:
        snap_id, snap = repo_cmds.find_snapshot(repository, snapshot)
        view = SnapshotView(repository, snap_id, snap)
        ring = snapshot_keys(view, keying)
        result, source = restore_plain(view, ring, target, path=os.fsencode(path), on_event=show)
        for p in result.problems:
            click.echo(
                f"cipherdump: error: {render.problem_line(p.source_path, _why(p.error))}", err=True
            )
        report_snapshot_keys(source)
    summary = result.summary()
    if as_json:
        click.echo(render.dumps({"snapshot": snap_id.hex, "target": target, **summary}))
    else:
        click.echo(
            f"restored {result.files} files ({_size(result.bytes)}), "
            f"{result.dirs} dirs, {result.symlinks} symlinks, {result.hardlinks} hard links, "
            f"{result.specials} special files; {result.skipped} already there"
            + (f"; {len(result.problems)} problems" if result.problems else "")
        )
    if result.problems:
        sys.exit(EXIT_PARTIAL)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


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
    on_progress, bar = render.image_progress_bar("restore")
    with (
        repo_cmds.open_repository(
            repo, password_file, lock=True, exclusive=False, lock_optional=True
        ) as repository,
        bar,
    ):
        snap_id, snap = repo_cmds.find_snapshot(repository, snapshot)
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
        sys.exit(EXIT_PARTIAL)


def cat_snapshot_keyed(
    repo: str,
    password_file: str | None,
    snapshot: str,
    path: str,
    keying: keyopts.KeyOptions,
) -> None:
    """``cat --key/--passphrase`` of a file in a snapshot: its plaintext."""
    from cipherdump.engine.restore_plain import SnapshotSource
    from cipherdump.engine.snapshot_view import SnapshotView

    with repo_cmds.open_repository(repo, password_file, lock=False) as repository:
        snap_id, snap = repo_cmds.find_snapshot(repository, snapshot)
        view = SnapshotView(repository, snap_id, snap)
        ring = snapshot_keys(view, keying)
        source = SnapshotSource(view, ring)
        node = source.resolve(os.fsencode(path))
        if node.snap.kind != "file":
            raise InputError(f"{path}: not a regular file")
        if node.snap.is_encrypted:
            try:
                source.cipher(node.snap, path)
            except KeyProblem:
                report_snapshot_keys(source)
                raise
        out = sys.stdout.buffer
        for piece in source.read_plaintext(node):
            out.write(piece)
        out.flush()


__all__ = ["EXIT_UNUSABLE", "cat_snapshot_keyed", "restore_cmd", "snapshot_keys"]
