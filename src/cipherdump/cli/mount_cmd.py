"""``cipherdump mount``: a repository, or an image as its ciphertext, as a read-only FUSE
filesystem, served in the foreground until unmounted or interrupted."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import click

from cipherdump.cli import keyopts, mounted, render, sources
from cipherdump.errors import CipherdumpError, OutputError

if TYPE_CHECKING:
    from cipherdump.engine.mountfs.model import MountTree
    from cipherdump.engine.views.snapshot import SnapshotView
    from cipherdump.fscrypt.keys import KeyRing

# The exit code when the optional FUSE library is missing: a usage error, as for an
# option this installation cannot take.
EXIT_NO_FUSE = 2
# What fuse_main returns (as mfusepy's RuntimeError) when its loop was ended by a signal.
_LOOP_ENDED = "8"


def _cache_size(_ctx: click.Context, _param: click.Parameter, value: str) -> int:
    try:
        size = render.parse_size(value)
    except click.UsageError:
        size = None
    if size is None or size < 0:
        raise click.BadParameter(f"cannot read {value!r} as a size (e.g. 64M, 1G)")
    return size


@click.command("mount")
@click.argument("first", metavar="[SOURCE]")
@click.argument("second", metavar="MOUNTPOINT", required=False)
@click.option(
    "--ciphertext",
    is_flag=True,
    help="Mount SOURCE (an image or unmounted device) as its stored ciphertext, without keys.",
)
@click.option(
    "--cache-size",
    default="64M",
    show_default=True,
    metavar="SIZE",
    callback=_cache_size,
    help="Memory kept for data blobs read from the repository (e.g. 64M, 1G; "
    "not the S3 --cache-dir).",
)
@click.option(
    "--allow-other",
    is_flag=True,
    help="Let other users use the mount (the modes and owners shown still apply; "
    "needs user_allow_other in /etc/fuse.conf unless root).",
)
@mounted.allow_mounted_option("With --ciphertext, serve")
@keyopts.key_options
@sources.snapshot_options
@render.one_line_errors
def mount_cmd(
    first: str,
    second: str | None,
    ciphertext: bool,
    cache_size: int,
    allow_other: bool,
    allow_mounted: bool,
    keying: keyopts.KeyOptions,
    repo: str | None,
    password_file: str | None,
) -> None:
    """Mount the repository's snapshots at MOUNTPOINT, or with --ciphertext the image or
    device SOURCE, read-only; runs in the foreground until unmounted (fusermount3 -u)
    or interrupted (Ctrl-C, SIGTERM).

    \b
    A repository (-r/--repo or CIPHERDUMP_REPOSITORY) shows:
      snapshots/ID/      each snapshot's filesystem, from its /
      latest             the newest snapshot
      ids/FULL-ID        links to snapshots/ID
      hosts/HOST/ID, tags/TAG/ID   by host and by tag, each with a latest

    Modes, owners, nanosecond times, sizes, symlinks, hard links and xattrs are the
    source's.  Without keys, encrypted names appear as their no-key names (as ls shows
    them) and encrypted files read as their stored ciphertext in whole data units;
    user.cipherdump.* xattrs carry what a restore needs (the exact size, the
    encryption context, the encrypted name...; see docs/keyless-records.md).  Copies
    made with tar --xattrs, rsync -aAX or restic keep them.  With --key or
    --passphrase, what the keys open appears decrypted.

    Needs the mount extra: pip install 'cipherdump[mount]'.
    """
    if ciphertext:
        if second is None:
            raise click.UsageError("--ciphertext takes SOURCE and MOUNTPOINT")
        if keying:
            raise click.UsageError("--ciphertext shows the stored bytes: it takes no keys")
        source, mountpoint = first, second
    else:
        if second is not None:
            raise click.UsageError(
                "a SOURCE is mounted with --ciphertext; a repository mount takes MOUNTPOINT only"
            )
        source, mountpoint = None, first
    if not os.path.isdir(mountpoint):
        raise click.UsageError(f"mount point {mountpoint!r} is not a directory")
    if source is not None:
        # Other tools copy what the view serves: as for backup, a live source may
        # come out inconsistent.
        mounted.check_mounted(source, allow_mounted=allow_mounted, doing="serve it")
    serve = _fuse()
    if source is not None:
        _mount_ciphertext(serve, source, mountpoint, allow_other)
    else:
        _mount_repository(serve, repo, password_file, keying, mountpoint, cache_size, allow_other)


def _fuse() -> Any:
    """The adapter's ``serve``; one line and exit 2 when mfusepy or libfuse 3 is missing."""
    try:
        from cipherdump.fusemount import serve
    except ImportError:
        render.fail("mount needs mfusepy: pip install 'cipherdump[mount]'", EXIT_NO_FUSE)
    except OSError as err:
        # mfusepy loads libfuse when imported.
        render.fail(
            f"mount needs libfuse 3 (the fuse3 package): {err}; pip install 'cipherdump[mount]'",
            EXIT_NO_FUSE,
        )
    return serve


def _report(path: bytes, err: CipherdumpError) -> None:
    render.print_problem(path, err)


def _run(serve: Any, tree: MountTree, mountpoint: str, fsname: str, allow_other: bool) -> None:
    click.echo(
        f"cipherdump: serving {fsname} at {mountpoint} (Ctrl-C or fusermount3 -u to stop)", err=True
    )
    try:
        serve(tree, mountpoint, fsname=fsname, allow_other=allow_other, on_error=_report)
    except RuntimeError as err:
        # fuse_main's codes: 8 is "the loop ended", as a signal ends it (SIGINT, SIGTERM,
        # SIGHUP: libfuse has unmounted by now).  The others say it never served;
        # libfuse printed why on stderr already (no /dev/fuse, mount point busy...).
        if str(err) == _LOOP_ENDED:
            return
        raise OutputError(f"cannot mount at {mountpoint} (fuse_main returned {err})") from None


def _mount_ciphertext(serve: Any, source: str, mountpoint: str, allow_other: bool) -> None:
    from cipherdump.engine.mountfs.image import CiphertextImage
    from cipherdump.engine.mountfs.model import MountTree

    with sources.open_image(source) as fs:
        view = CiphertextImage(fs, on_problem=_report)
        _run(serve, MountTree(view.root), mountpoint, f"cipherdump:{source}", allow_other)


def _mount_repository(
    serve: Any,
    repo: str | None,
    password_file: str | None,
    keying: keyopts.KeyOptions,
    mountpoint: str,
    cache_size: int,
    allow_other: bool,
) -> None:
    from cipherdump.engine.mountfs.model import MountTree
    from cipherdump.engine.mountfs.repository import RepositoryLayout

    location = sources.need_repo(repo)
    keys_for = None
    if keying:
        # Read a passphrase once, now, not from inside the filesystem's loop.
        passphrase = keyopts.read_passphrase(keying.secrets)

        def keys_for(view: SnapshotView) -> KeyRing | None:
            try:
                return sources.snapshot_keys(view, keying, passphrase=passphrase)
            except CipherdumpError as err:
                render.warn(f"snapshot {view.id.short}: {err}; shown without keys")
                return None

    with sources.open_reader(location, password_file) as repository:
        layout = RepositoryLayout(
            repository, cache_bytes=cache_size, keys_for=keys_for, on_problem=_report
        )
        layout.listed()  # a repository that cannot be listed fails here, not in the mount
        _run(serve, MountTree(layout.root), mountpoint, f"cipherdump:{location}", allow_other)
