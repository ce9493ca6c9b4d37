"""Where commands read from: an ext4 image (or device) and a repository's snapshots.

``open_image`` opens a filesystem and shows its warnings.  The repository comes from
``-r/--repo`` (after or before the command: see :mod:`.globalopts`) or
``CIPHERDUMP_REPOSITORY``; its password from ``--password-file`` (after or before),
``CIPHERDUMP_PASSWORD_FILE``, ``CIPHERDUMP_PASSWORD`` or a prompt.  A snapshot is named
by a unique prefix of its id or by ``latest``.  ``snapshot_keys`` gathers the keys for a
snapshot (its own ``.fscrypt`` unlocks passphrases).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import click

from cipherdump.cli import globalopts, keyopts, render

# Re-exported: commands name them through this module.
from cipherdump.cli.globalopts import ENV_REPOSITORY as ENV_REPOSITORY
from cipherdump.cli.globalopts import storage_settings as storage_settings
from cipherdump.errors import CipherdumpError

if TYPE_CHECKING:
    from cipherdump.engine.views.snapshot import SnapshotView
    from cipherdump.engine.views.snapshot_keyed import KeyedSnapshotView
    from cipherdump.ext4 import Filesystem
    from cipherdump.fscrypt.keys import KeyRing
    from cipherdump.fscrypt.protectors import FscryptMetadata
    from cipherdump.repo import Id, Repository, Snapshot

# The ext4 reader and the repository (cryptography, argon2, blake3, zstandard) are
# imported inside the functions that use them: `--help` starts without them.

F = TypeVar("F", bound=Callable[..., Any])


# -- images -----------------------------------------------------------------------------------


@contextlib.contextmanager
def open_image(image: str) -> Iterator[Filesystem]:
    """The filesystem of ``image``; its warnings go to stderr as they are known: those
    of opening it first, those met while reading (damaged htree indexes, say) last."""
    from cipherdump.ext4 import open_filesystem

    with open_filesystem(image) as fs:
        for w in fs.warnings:
            render.warn(w)
        shown = len(fs.warnings)
        try:
            yield fs
        finally:
            for w in fs.warnings[shown:]:
                render.warn(w)


# -- repositories and snapshots ---------------------------------------------------------------


def repo_option(fn: F) -> F:
    """``-r/--repo``, also from ``CIPHERDUMP_REPOSITORY`` or given before the command,
    with the storage options (``--connections``, ``--cache-dir``, ``--no-cache``)."""
    return click.option(
        "-r",
        "--repo",
        "repo",
        envvar=ENV_REPOSITORY,
        cls=globalopts.RepoOption,
        metavar="LOCATION",
        help=f"Repository: a directory, or s3:https://HOST/BUCKET/PREFIX or s3:BUCKET/PREFIX "
        f"(or set {ENV_REPOSITORY}).",
    )(globalopts.storage_options(fn))


def password_option(fn: F) -> F:
    return click.option(
        "--password-file",
        type=click.Path(dir_okay=False, path_type=str),
        help="Read the repository password from this file "
        "(or set CIPHERDUMP_PASSWORD_FILE or CIPHERDUMP_PASSWORD).",
    )(fn)


def snapshot_options(fn: F) -> F:
    """What ``ls``, ``stat`` and ``cat`` take to read a snapshot instead of an image."""
    return repo_option(password_option(fn))


def need_repo(repo: str | None) -> str:
    if not repo:
        raise click.UsageError(f"no repository: give -r/--repo or set {ENV_REPOSITORY}")
    return repo


def password(password_file: str | None, *, confirm: bool = False) -> bytes:
    prompt: Callable[[], str] | None = None
    if sys.stdin.isatty():

        def prompt() -> str:
            answer: str = click.prompt(
                "repository password", hide_input=True, confirmation_prompt=confirm, err=True
            )
            return answer

    from cipherdump.repo.password import resolve_password

    return resolve_password(password_file, prompt=prompt)


def open_repository(
    repo: str | None,
    password_file: str | None,
    *,
    lock: bool,
    exclusive: bool = True,
    lock_optional: bool = False,
) -> Repository:
    """``lock``: take the repository's lock, ``exclusive`` or shared.  With
    ``lock_optional`` (readers), a repository whose storage refuses the lock file (a
    read-only copy) is read without one, with a warning."""
    from cipherdump.repo import Repository
    from cipherdump.repo.location import open_backend

    backend = open_backend(need_repo(repo), storage_settings())
    secret = password(password_file)
    # Readers (lock_optional) leave temporary files alone: check reports them.
    repository = Repository.open(
        backend,
        secret,
        lock=lock,
        exclusive=exclusive,
        tidy=not lock_optional,
        lock_optional=lock_optional,
    )
    if repository.lock_refused is not None:
        render.warn(f"{repository.lock_refused}: reading without a lock")
    repository.set_warning_handler(render.warn)
    return repository


def open_reader(repo: str | None, password_file: str | None) -> Repository:
    """The repository under a shared lock, for a command that only reads it: a prune or
    forget (exclusive) cannot delete what it reads meanwhile, and it is refused (exit 8)
    while one runs; a read-only copy is read without a lock, with a warning."""
    return open_repository(repo, password_file, lock=True, exclusive=False, lock_optional=True)


def find_snapshot(repository: Repository, ref: str) -> tuple[Id, Snapshot]:
    """The snapshot ``ref`` names; ``latest`` passes over damaged snapshot files, with
    a warning for each."""
    damaged: list[CipherdumpError] = []
    found = repository.find_snapshot(ref, damaged)
    for err in damaged:
        render.warn(f"{err} (a damaged snapshot, passed over; run check)")
    return found


def snapshot_view(repository: Repository, ref: str) -> SnapshotView:
    """The snapshot ``ref`` names, to be read."""
    from cipherdump.engine.views.snapshot import SnapshotView

    return SnapshotView(repository, *find_snapshot(repository, ref))


def snapshot_keys(
    view: SnapshotView,
    keying: keyopts.KeyOptions,
    *,
    passphrase: bytes | keyopts.Unread | None = keyopts.UNREAD,
) -> KeyRing:
    """Every master key the options give, with passphrases unlocked against the
    snapshot's own ``.fscrypt`` (and ``--fscrypt-metadata``); ``passphrase`` as
    :func:`keyopts.add_secret_keys` takes it."""

    def own_metadata() -> FscryptMetadata:
        from cipherdump.engine.fscrypt_meta import metadata_from_snapshot

        return metadata_from_snapshot(view)

    loaded = keying.load()
    for w in loaded.warnings:
        render.warn(w)
    salt = view.facts.get("encrypt_pw_salt")
    keyopts.add_secret_keys(
        loaded,
        keying.secrets,
        own_metadata,
        e4crypt_salt=salt if isinstance(salt, bytes) else None,
        passphrase=passphrase,
    )
    return loaded.ring


def report_snapshot_keys(source: KeyedSnapshotView) -> None:
    """Warn about the policies of a snapshot that no key given matched."""
    for policy in source.missing.values():
        render.warn(f"no key for policy {policy.describe()}")
