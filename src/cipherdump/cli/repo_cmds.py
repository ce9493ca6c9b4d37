"""Repository commands: ``init``, ``backup``, ``snapshots``, ``diff``, ``check``, and the
snapshot side of ``ls``, ``stat`` and ``cat`` (used when a repository is given).

The repository comes from ``-r/--repo`` or ``CIPHERDUMP_REPOSITORY``; its password from
``--password-file``, ``CIPHERDUMP_PASSWORD_FILE``, ``CIPHERDUMP_PASSWORD`` or a prompt.
A snapshot is named by a unique prefix of its id or by ``latest``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from cipherdump.cli import mounted, render
from cipherdump.errors import (
    CipherdumpError,
    InputError,
    IntegrityError,
    KeyProblem,
    NotFoundError,
)

if TYPE_CHECKING:
    from cipherdump.engine.backup import BackupProgress, BackupResult
    from cipherdump.engine.snapshot_view import SnapNode, SnapshotView
    from cipherdump.repo import Id, Repository, Snapshot

# The repository (cryptography, argon2, blake3, zstandard), the backup engine and the
# ext4 reader are imported inside the commands that use them: `--help` and the image
# commands start without them.

ENV_REPOSITORY = "CIPHERDUMP_REPOSITORY"
EXIT_PARTIAL = 1

F = TypeVar("F", bound=Callable[..., Any])


def repo_option(fn: F) -> F:
    """``-r/--repo``, also from ``CIPHERDUMP_REPOSITORY``."""
    return click.option(
        "-r",
        "--repo",
        "repo",
        envvar=ENV_REPOSITORY,
        metavar="DIR",
        help=f"Repository directory (or set {ENV_REPOSITORY}).",
    )(fn)


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


def _warn(message: str) -> None:
    click.echo(f"cipherdump: warning: {message}", err=True)


def _error_line(path: bytes, err: CipherdumpError) -> None:
    click.echo(f"cipherdump: error: {render.show_bytes(path)}: {err}", err=True)


def _need_repo(repo: str | None) -> str:
    if not repo:
        raise click.UsageError(f"no repository: give -r/--repo or set {ENV_REPOSITORY}")
    return repo


def _password(password_file: str | None, *, confirm: bool = False) -> bytes:
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
    from cipherdump.errors import BackendError
    from cipherdump.repo import LocalBackend, Repository

    path = _need_repo(repo)
    if not Path(path).is_dir():
        raise NotFoundError(f"no repository at {path}")
    password = _password(password_file)
    try:
        # Readers (lock_optional) leave temporary files alone: check reports them.
        repository = Repository.open(
            LocalBackend(path), password, lock=lock, exclusive=exclusive, tidy=not lock_optional
        )
    except BackendError as exc:
        if not (lock and lock_optional):
            raise
        _warn(f"{exc}: reading without a lock")
        repository = Repository.open(LocalBackend(path), password, lock=False)
    repository.set_warning_handler(_warn)
    return repository


def _find(repository: Repository, ref: str) -> SnapshotView:
    from cipherdump.engine.snapshot_view import SnapshotView

    return SnapshotView(repository, *find_snapshot(repository, ref))


def find_snapshot(repository: Repository, ref: str) -> tuple[Id, Snapshot]:
    """The snapshot ``ref`` names; ``latest`` passes over damaged snapshot files, with
    a warning for each."""
    damaged: list[CipherdumpError] = []
    found = repository.find_snapshot(ref, damaged)
    for err in damaged:
        _warn(f"{err} (a damaged snapshot, passed over; run check)")
    return found


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _time(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9))


# -- init -------------------------------------------------------------------------------------


# --cipher's names, and the Cipher members they stand for (named, not imported: the
# repository's modules load only when a command runs).
_CIPHERS = {"aes-256-gcm": "AES_256_GCM", "chacha20-poly1305": "CHACHA20_POLY1305"}


class _PackSizeOption(click.Option):
    """``--pack-size``: its default is the repository format's, looked up only when
    ``init`` runs or shows its help (the format module imports the repository's ciphers)."""

    def get_default(self, ctx: click.Context, call: bool = True) -> Any:
        value = super().get_default(ctx, call=call)
        if isinstance(value, int | str):
            return value  # given in a default map
        from cipherdump.repo.config import DEFAULT_PACK_SIZE

        return DEFAULT_PACK_SIZE


@click.command()
@repo_option
@password_option
@click.option(
    "--pack-size",
    cls=_PackSizeOption,
    type=click.IntRange(4096, 1 << 30),
    show_default=True,
    help="Target size of pack files in bytes.",
)
@click.option(
    "--cipher",
    type=click.Choice(sorted(_CIPHERS)),
    default="aes-256-gcm",
    show_default=True,
    help="AEAD sealing everything stored. ChaCha20-Poly1305 is faster only on CPUs "
    "without AES instructions.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def init(
    repo: str | None, password_file: str | None, pack_size: int, cipher: str, as_json: bool
) -> None:
    """Create a new, empty repository (a directory) protected by a password."""
    from cipherdump.repo import Cipher, KdfParams, LocalBackend, Repository

    path = _need_repo(repo)
    password = _password(password_file, confirm=True)
    backend = LocalBackend.create(path)
    chosen = Cipher[_CIPHERS[cipher]]
    kdf = KdfParams.default()
    with Repository.init(backend, password, kdf=kdf, pack_size=pack_size, cipher=chosen) as r:
        repo_id = r.config.repo_id
    if as_json:
        click.echo(render.dumps({"repository": path, "id": repo_id.hex, "cipher": cipher}))
    else:
        click.echo(f"created repository {repo_id.short} at {path} ({cipher})")
        click.echo("keep the password safe: without it the repository cannot be read")


# -- backup -----------------------------------------------------------------------------------


def _progress_bar() -> tuple[Callable[[BackupProgress], None] | None, AbstractContextManager[Any]]:
    """The backup's progress bar on stderr when it is a terminal; nothing otherwise."""
    update, bar = render.progress_bar("backup")
    if update is None:
        return None, bar
    show = update

    def on_event(event: BackupProgress) -> None:
        show(event.bytes_done, event.bytes_total, event.inodes_done)

    return on_event, bar


def _backup_summary(result: BackupResult, source: str) -> dict[str, Any]:
    s = result.stats
    out: dict[str, Any] = {
        "snapshot_id": result.snapshot_id.hex,
        "parent": result.parent_id.hex if result.parent_id is not None else None,
        "source": result.snapshot.attrs.get("source", source),
        "path": result.snapshot.attrs.get("path", b"/"),
    }
    out.update(s.as_dict())
    out["policies"] = [
        {k: (v.hex() if isinstance(v, bytes) else v) for k, v in p.items()} for p in result.policies
    ]
    out["warnings"] = result.warnings
    return out


@click.command(name="backup")
@click.argument("source", type=click.Path(dir_okay=False, path_type=str))
@click.option(
    "--path",
    "path",
    default="/",
    show_default=True,
    help="Back up only this directory (no-key names as Linux shows them are accepted).",
)
@click.option("--force-reread", is_flag=True, help="Read every file, even unchanged ones.")
@click.option(
    "--parent",
    default=None,
    help="Compare with this snapshot (default: latest "
    "snapshot of the same filesystem UUID and path).",
)
@click.option("--no-parent", is_flag=True, help="Do not compare with any earlier snapshot.")
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(min=0),
    default=0,
    metavar="N",
    help="Processes sharing the work: 1 backs up in this process alone; N > 1 starts N-1 "
    "workers; 0 (the default) one worker per CPU (at most 4), when there are two or more "
    "and the filesystem has more than 2,000 inodes in use.",
)
@click.option("--tag", "tags", multiple=True, help="Tag the snapshot (repeatable).")
@mounted.allow_mounted_option("Back up")
@click.option("--json", "as_json", is_flag=True, help="End with one JSON summary object.")
@repo_option
@password_option
def backup_cmd(
    source: str,
    path: str,
    force_reread: bool,
    parent: str | None,
    no_parent: bool,
    jobs: int,
    tags: tuple[str, ...],
    allow_mounted: bool,
    as_json: bool,
    repo: str | None,
    password_file: str | None,
) -> None:
    """Back up SOURCE (an image, an unmounted device or a snapshot) without any key.

    Unchanged files (same inode number, generation, ctime, mtime, size and extent map as
    in the parent snapshot) are not read again; only changed data is stored.
    """
    from cipherdump.engine.backup import BackupOptions, backup
    from cipherdump.ext4 import open_filesystem

    _need_repo(repo)
    mounted.check_mounted(source, allow_mounted=allow_mounted, doing="back it up")
    problems = 0

    def on_problem(p: bytes, err: CipherdumpError) -> None:
        nonlocal problems
        problems += 1
        _error_line(p, err)

    fs = open_filesystem(source)
    try:
        for w in fs.warnings:
            _warn(w)
        shown = len(fs.warnings)
        # Shared: other hosts may back up into the repository at the same time.
        repository = open_repository(repo, password_file, lock=True, exclusive=False)
        try:
            options = BackupOptions(
                path=os.fsencode(path),
                parent=parent,
                no_parent=no_parent,
                force_reread=force_reread,
                jobs=jobs,
                source_name=os.path.abspath(source),
                tags=tags,
            )
            on_progress, bar = _progress_bar()
            with bar:
                result = backup(
                    repository, fs, options, on_progress=on_progress, on_problem=on_problem
                )
        finally:
            repository.close()
        for w in fs.warnings[shown:]:  # met while reading (damaged htree indexes, say)
            _warn(w)
        for w in result.repository_warnings:
            _warn(w)
    finally:
        fs.close()
    summary = _backup_summary(result, source)
    if as_json:
        click.echo(render.dumps(summary))
    else:
        s = result.stats
        parent_text = f" (parent {result.parent_id.short})" if result.parent_id else ""
        click.echo(f"snapshot {result.snapshot_id.short} saved{parent_text}")
        click.echo(
            f"files: {s.files_new} new, {s.files_changed} changed, "
            f"{s.files_unchanged} unchanged, {s.files_removed} removed"
        )
        click.echo(
            f"dirs:  {s.dirs_new} new, {s.dirs_changed} changed, "
            f"{s.dirs_unchanged} unchanged, {s.dirs_removed} removed"
        )
        click.echo(
            f"data:  {_size(s.bytes_read)} read, {_size(s.bytes_reused)} reused unread, "
            f"{_size(s.bytes_added)} added ({_size(s.bytes_stored)} stored)"
        )
        replayed = fs.journal.replay if fs.journal is not None else None
        if replayed is not None:
            click.echo(
                f"journal: replayed in memory ({replayed.transactions} transactions,"
                f" {len(replayed.overlay)} blocks), as the kernel would on mount"
            )
        for p in result.policies:
            click.echo(f"policy: {p.get('inodes')} inodes  {p.get('policy')}")
            click.echo(f"        {p.get('restore')}")
    if problems:
        sys.exit(EXIT_PARTIAL)


# -- snapshots --------------------------------------------------------------------------------


@click.command()
@repo_option
@password_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array.")
def snapshots(repo: str | None, password_file: str | None, as_json: bool) -> None:
    """List the snapshots in the repository, oldest first."""
    from cipherdump.engine.backup import snapshot_summary

    damaged: list[CipherdumpError] = []
    with open_repository(repo, password_file, lock=False) as repository:
        items = [snapshot_summary(i, s) for i, s in repository.list_snapshots(damaged)]
    _list_snapshots(items, as_json)
    for err in damaged:
        click.echo(f"cipherdump: error: {err}", err=True)
    if damaged:
        sys.exit(IntegrityError.exit_code)


def _list_snapshots(items: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        click.echo(render.dumps(items))
        return
    click.echo(f"{'ID':<8}  {'time':<19}  {'host':<12}  {'files':>7}  {'added':>10}  source  path")
    for item in items:
        stats = item.get("stats", {})
        files = sum(stats.get(k, 0) for k in ("files_new", "files_changed", "files_unchanged"))
        click.echo(
            f"{item['short_id']:<8}  {_time(item['time_ns']):<19}  {item['hostname'][:12]:<12}  "
            f"{files:>7}  {_size(stats.get('bytes_added', 0)):>10}  {item['source']}  "
            f"{render.show_bytes(item['path'])}"
        )


# -- diff -------------------------------------------------------------------------------------


def _iter_diff(
    view1: SnapshotView, view2: SnapshotView, a: SnapNode | None, b: SnapNode | None
) -> Iterator[tuple[str, bytes, str]]:
    """(change, path, kind) below two directories; equal subtrees are skipped unread."""
    if (
        a is not None
        and b is not None
        and a.node.subtree is not None
        and a.node.subtree == b.node.subtree
        and a.chain is None
        and b.chain is None
    ):
        return
    kids1 = {k.raw_name: k for k in view1.children(a)} if a is not None else {}
    kids2 = {k.raw_name: k for k in view2.children(b)} if b is not None else {}
    for name in sorted(kids1.keys() | kids2.keys()):
        k1, k2 = kids1.get(name), kids2.get(name)
        if k1 is not None and (k2 is None or k1.kind != k2.kind):
            yield "-", k1.path, k1.kind
            if k1.is_dir:
                yield from _iter_diff(view1, view2, k1, None)
            k1 = None
        if k2 is not None and k1 is None:
            yield "+", k2.path, k2.kind
            if k2.is_dir:
                yield from _iter_diff(view1, view2, None, k2)
            continue
        if k1 is None or k2 is None:
            continue
        if k1.node.content != k2.node.content:
            yield "M", k2.path, k2.kind
        elif _meta(k1) != _meta(k2):
            yield "U", k2.path, k2.kind
        if k1.is_dir:
            yield from _iter_diff(view1, view2, k1, k2)


def _meta(node: SnapNode) -> dict[str, Any]:
    from cipherdump.engine.nodeattrs import VOLATILE_ATTRS

    # The listing position and atime are not changes a user means by "modified".
    return {k: v for k, v in node.attrs.items() if k not in VOLATILE_ATTRS}


@click.command()
@click.argument("snapshot1")
@click.argument("snapshot2")
@repo_option
@password_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def diff(
    snapshot1: str, snapshot2: str, repo: str | None, password_file: str | None, as_json: bool
) -> None:
    """What changed from SNAPSHOT1 to SNAPSHOT2: + added, - removed, M contents
    modified, U metadata only."""
    with open_repository(repo, password_file, lock=False) as repository:
        v1, v2 = _find(repository, snapshot1), _find(repository, snapshot2)
        changes = list(_iter_diff(v1, v2, v1.root_node(), v2.root_node()))
    counts = {c: sum(1 for x in changes if x[0] == c) for c in "+-MU"}
    if as_json:
        click.echo(
            render.dumps(
                {
                    "snapshot1": v1.id.hex,
                    "snapshot2": v2.id.hex,
                    "changes": [{"change": c, "path": p, "type": k} for c, p, k in changes],
                    "added": counts["+"],
                    "removed": counts["-"],
                    "modified": counts["M"],
                    "metadata": counts["U"],
                }
            )
        )
        return
    for change, path, kind in changes:
        suffix = "/" if kind == "dir" else ""
        click.echo(f"{change}  {render.show_bytes(path)}{suffix}")
    click.echo(
        f"{counts['+']} added, {counts['-']} removed, {counts['M']} modified, "
        f"{counts['U']} metadata only"
    )


# -- check ------------------------------------------------------------------------------------

# A check names at most this many paths of each damaged snapshot on its line (--json: all).
_PATHS_SHOWN = 10


@click.command()
@click.option("--read-data", is_flag=True, help="Also read and verify every byte of every pack.")
@repo_option
@password_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def check(read_data: bool, repo: str | None, password_file: str | None, as_json: bool) -> None:
    """Verify the repository; exit code 5 names damage if any is found."""
    update, bar = (
        render.progress_bar("check", count_inodes=False) if read_data else (None, nullcontext())
    )

    def on_progress(done: int, total: int) -> None:
        if update is not None:
            update(done, total, 0)

    from cipherdump.engine.damage import damaged_snapshots
    from cipherdump.repo import Finding

    shared = {"lock": True, "exclusive": False, "lock_optional": True}
    with open_repository(repo, password_file, **shared) as repository, bar:
        report = repository.check(read_data=read_data, on_progress=on_progress)
        damaged = damaged_snapshots(repository, report.bad_blobs)
    for snap in damaged:
        shown = [render.show_bytes(p) for p in snap.paths]
        more = f" and {len(shown) - _PATHS_SHOWN} more" if len(shown) > _PATHS_SHOWN else ""
        report.errors.append(
            Finding(
                f"{len(shown)} paths use lost or damaged data: "
                f"{', '.join(shown[:_PATHS_SHOWN])}{more}",
                f"snapshots/{snap.id.hex}",
            )
        )
    if as_json:
        click.echo(
            render.dumps(
                {
                    "ok": report.ok,
                    "errors": [str(f) for f in report.errors],
                    "infos": [str(f) for f in report.infos],
                    "snapshots": report.snapshots,
                    "trees": report.trees,
                    "packs_read": report.packs_read,
                    "blobs_checked": report.blobs_checked,
                    "damaged_snapshots": [
                        {"snapshot": d.id.hex, "paths": [render.show_bytes(p) for p in d.paths]}
                        for d in damaged
                    ],
                }
            )
        )
    else:
        for f in report.infos:
            click.echo(f"info: {f}")
        for f in report.errors:
            click.echo(f"error: {f}", err=True)
        what = f"{report.snapshots} snapshots, {report.trees} trees"
        if read_data:
            what += f", {report.packs_read} packs, {report.blobs_checked} blobs read"
        click.echo(f"{'no errors' if report.ok else f'{len(report.errors)} errors'} ({what})")
    if not report.ok:
        sys.exit(IntegrityError.exit_code)


# -- repair -------------------------------------------------------------------------------------


@click.group()
def repair() -> None:
    """Repair a damaged repository."""


@repair.command(name="index")
@repo_option
@password_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def repair_index(repo: str | None, password_file: str | None, as_json: bool) -> None:
    """Rebuild the index from the packs themselves.

    For index files that were lost or damaged, or that name packs that are gone: every
    pack's header is read and authenticated, one new index file lists every pack
    found, and the old index files are removed.  A damaged pack is named (exit code
    5) and keeps the entries an old index file gives it, else it is left out; run
    `check` afterwards to see what the snapshots still lack.
    """
    update, bar = render.progress_bar("repair", count_inodes=False)

    def on_progress(done: int, total: int) -> None:
        if update is not None:
            update(done, total, 0)

    with open_repository(repo, password_file, lock=True) as repository, bar:
        report = repository.repair_index(on_progress)
    if as_json:
        click.echo(
            render.dumps(
                {
                    "index": report.index_id.hex if report.index_id else None,
                    "packs": report.packs,
                    "blobs": report.blobs,
                    "replaced": report.replaced,
                    "damaged": report.damaged,
                }
            )
        )
    else:
        for why in report.damaged:
            click.echo(f"error: {why}", err=True)
        click.echo(
            f"indexed {report.blobs} blobs in {report.packs} packs; "
            f"{report.replaced} index files replaced"
        )
    if report.damaged:
        sys.exit(IntegrityError.exit_code)


@repair.command(name="packs")
@repo_option
@password_option
@click.option("--dry-run", is_flag=True, help="Read and report only; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def repair_packs(repo: str | None, password_file: str | None, dry_run: bool, as_json: bool) -> None:
    """Salvage damaged packs, so that backups store their lost data again.

    Every pack is read and every blob authenticated.  The readable blobs of a damaged
    pack are copied into new packs, one new index file lists every whole pack and the
    new ones, and only then are the damaged packs and old index files removed.  Blobs
    with no readable copy left are dropped from the index: the next backup stores
    again what of them is still on its source (and so heals the snapshots that name
    them); `repair snapshots` removes what is lost from the snapshots instead.  A
    pack in the wrong data/ folder is moved back first.  Exit code 5 if blobs were
    lost (or, with --dry-run, if any pack is damaged).
    """
    update, bar = render.progress_bar("repair", count_inodes=False)

    def on_progress(done: int, total: int) -> None:
        if update is not None:
            update(done, total, 0)

    from cipherdump.engine.damage import damaged_snapshots

    with open_repository(repo, password_file, lock=True) as repository, bar:
        report = repository.repair_packs(dry_run=dry_run, on_progress=on_progress)
        affected = damaged_snapshots(repository, set(report.lost))
    lost = [f"{t.name.lower()} blob {i}" for t, i in report.lost]
    if as_json:
        click.echo(
            render.dumps(
                {
                    "dry_run": dry_run,
                    "packs_read": report.packs_read,
                    "damaged": report.damaged,
                    "salvaged": report.salvaged,
                    "lost": lost,
                    "new_packs": [p.hex for p in report.new_packs],
                    "removed": report.removed,
                    "index": report.index_id.hex if report.index_id else None,
                    "replaced": report.replaced,
                    "misplaced": report.moved,
                    "damaged_snapshots": [
                        {"snapshot": d.id.hex, "paths": [render.show_bytes(p) for p in d.paths]}
                        for d in affected
                    ],
                }
            )
        )
    else:
        for what in report.moved:
            click.echo(f"info: {what}")
        for why in report.damaged:
            click.echo(f"error: {why}", err=True)
        for what in lost:
            click.echo(f"error: {what}: no readable copy left", err=True)
        for snap in affected:
            shown = ", ".join(render.show_bytes(p) for p in snap.paths[:_PATHS_SHOWN])
            more = len(snap.paths) - _PATHS_SHOWN
            tail = f" and {more} more" if more > 0 else ""
            click.echo(
                f"error: snapshots/{snap.id.hex}: {len(snap.paths)} paths use lost data: "
                f"{shown}{tail}",
                err=True,
            )
        if not report.damaged:
            click.echo(f"read {report.packs_read} packs: none is damaged")
        elif dry_run:
            click.echo(
                f"read {report.packs_read} packs: {len(report.damaged)} damaged; would "
                f"salvage {report.salvaged} blobs, {len(lost)} lost (dry run: nothing changed)"
            )
        else:
            click.echo(
                f"read {report.packs_read} packs: {len(report.damaged)} damaged, "
                f"{len(report.removed)} removed; salvaged {report.salvaged} blobs into "
                f"{len(report.new_packs)} new packs, {len(lost)} lost"
            )
            if lost:
                click.echo(
                    "the next backup stores again what is still on the source (and so "
                    "heals these snapshots); repair snapshots saves them without it"
                )
    if lost or (dry_run and report.damaged):
        sys.exit(IntegrityError.exit_code)


@repair.command(name="snapshots")
@click.argument("refs", nargs=-1, metavar="[SNAPSHOT]...")
@repo_option
@password_option
@click.option("--dry-run", is_flag=True, help="Report what would be removed; change nothing.")
@click.option("--forget", is_flag=True, help="Remove each original once its repair is saved.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def repair_snapshots(
    refs: tuple[str, ...],
    repo: str | None,
    password_file: str | None,
    dry_run: bool,
    forget: bool,
    as_json: bool,
) -> None:
    """Save snapshots that use lost data again, without what they lost.

    For each snapshot (every one if none is named) whose trees use blobs the index
    lacks, a new snapshot is saved: files whose contents lost data are removed, and
    directories whose own tree is lost are kept empty; each is named.  The original
    stays unless --forget is given.  Run `repair index` and `repair packs` first: this
    trusts the index.  When the lost files are still on the source, a backup
    (`--force-reread`) is the better repair: it stores them again and heals the old
    snapshots too.
    """
    from cipherdump.engine.snapshot_repair import repair_snapshots as run_repair

    with open_repository(repo, password_file, lock=True) as repository:
        repairs = run_repair(repository, list(refs), dry_run=dry_run, forget=forget)
    if as_json:
        click.echo(
            render.dumps(
                {
                    "dry_run": dry_run,
                    "repaired": [
                        {
                            "snapshot": r.old.hex,
                            "new": r.new.hex if r.new is not None else None,
                            "forgotten": forget and not dry_run,
                            "removed": [render.show_bytes(p) for p in r.removed],
                        }
                        for r in repairs
                    ],
                }
            )
        )
        return
    for r in repairs:
        for path in r.removed:
            what = "emptied (its tree is lost)" if path.endswith(b"/") else "removed"
            click.echo(f"snapshot {r.old.short}: {render.show_bytes(path)}: {what}")
        if r.new is not None:
            gone = "; the original removed" if forget else ""
            click.echo(f"snapshot {r.old.short} saved again as {r.new.short}{gone}")
    if not repairs:
        click.echo("no snapshot uses lost data")
    elif dry_run:
        click.echo(f"{len(repairs)} snapshots would be repaired (dry run: nothing changed)")


# -- the snapshot side of ls, stat and cat -------------------------------------------------------


def ls_snapshot(
    repo: str,
    password_file: str | None,
    snapshot: str,
    path: str,
    long: bool,
    recursive: bool,
    as_json: bool,
) -> None:
    """``ls`` of a snapshot: the same lines ``ls`` printed for the image."""
    from cipherdump.engine.namespace import Problem

    problems = 0
    with open_repository(repo, password_file, lock=False) as repository:
        view = _find(repository, snapshot)
        top = view.resolve(os.fsencode(path))
        items: list[SnapNode | Problem] = (
            list(view.walk(top, recursive=recursive)) if top.is_dir else [top]
        )
        for item in items:
            if isinstance(item, Problem):
                problems += 1
                _error_line(item.path, item.error)
                continue
            try:
                rec = view.record(item)
            except CipherdumpError as err:
                problems += 1
                _error_line(item.path, err)
                continue
            if as_json:
                click.echo(render.dumps(rec))
            elif long:
                click.echo(render.long_line(rec))
            else:
                click.echo(render.show_bytes(rec["path"] if recursive else rec["name"]))
    if problems:
        sys.exit(EXIT_PARTIAL)


def stat_snapshot(
    repo: str, password_file: str | None, snapshot: str, path: str, as_json: bool
) -> None:
    with open_repository(repo, password_file, lock=False) as repository:
        view = _find(repository, snapshot)
        rec = view.stat_record(view.resolve(os.fsencode(path)))
    if as_json:
        click.echo(render.dumps(rec))
        return
    for line in render.stat_lines(rec):
        click.echo(line)


def cat_snapshot(
    repo: str, password_file: str | None, snapshot: str, path: str, ciphertext: bool
) -> None:
    """``cat`` of a file in a snapshot: plaintext of unencrypted files, or with
    ``--ciphertext`` the stored whole data units."""
    from cipherdump.engine.nodeattrs import int_attr

    with open_repository(repo, password_file, lock=False) as repository:
        view = _find(repository, snapshot)
        node = view.resolve(os.fsencode(path))
        if node.kind != "file":
            raise InputError(f"{path}: not a regular file")
        size = int_attr(node.attrs, "size")
        out = sys.stdout.buffer
        if ciphertext:
            du = view.data_unit_size(node) if node.is_encrypted else 1
            for chunk in view.iter_stored(node, -(-size // du) * du):
                out.write(chunk)
            if node.is_encrypted:
                click.echo(f"cipherdump: {path}: size {size}, data unit {du}", err=True)
        else:
            if node.is_encrypted:
                raise KeyProblem(
                    f"{path} is encrypted and no key was given; use --ciphertext for the "
                    "stored bytes"
                )
            for chunk in view.iter_stored(node, size):
                out.write(chunk)
        out.flush()


COMMANDS = (init, backup_cmd, snapshots, diff, check)
GROUPS = (repair,)
