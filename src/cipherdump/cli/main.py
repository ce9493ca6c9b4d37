"""``cipherdump`` commands.

Exit codes (documented in the README):
  0 success; 1 some objects could not be read (the rest was); 2 usage error;
  3 unusable input (not ext4, corrupt, unsupported, not found); 4 key problem;
  5 repository integrity; 6 storage backend; 7 the output cannot be written;
  8 the repository is locked by another process; 70 internal error (a bug: please report).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import click

from cipherdump import __version__
from cipherdump.cli import clone_cmd, keyopts, mounted, render, repo_cmds, restore_cmd
from cipherdump.cli.lifecycle import LIFECYCLE_COMMANDS, LIFECYCLE_GROUPS
from cipherdump.errors import CipherdumpError, InputError, KeyProblem

if TYPE_CHECKING:
    from cipherdump.engine.extract import ExtractEvent
    from cipherdump.ext4 import Filesystem

# Start-up: this module and the cli modules it loads import only click, the standard
# library and cipherdump.errors at the top.  The engine, the ext4 reader, fscrypt and
# the repository (and with them cryptography, argon2, blake3, zstandard, crc32c, rich)
# are imported inside the commands that use them, so `--help` and every command pay
# only for what they run.  tests/test_cli_startup.py keeps it so.

EXIT_PARTIAL = 1
EXIT_INTERNAL = 70

P = ParamSpec("P")
R = TypeVar("R")


def _fail(message: str, code: int) -> None:
    click.echo(f"cipherdump: error: {message}", err=True)
    sys.exit(code)


def one_line_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn every error into one line on stderr and an exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except CipherdumpError as err:
            _fail(str(err), err.exit_code)
        except BrokenPipeError:
            # Output piped into `head` and closed: not an error worth a message.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            sys.exit(0)
        except KeyboardInterrupt:
            _fail("interrupted", 130)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except Exception as err:
            if os.environ.get("CIPHERDUMP_DEBUG"):
                import traceback

                traceback.print_exc()
            _fail(
                f"internal error: {type(err).__name__}: {err} (set CIPHERDUMP_DEBUG=1 "
                "for a traceback; please report it)",
                EXIT_INTERNAL,
            )
        raise AssertionError("unreachable")

    return wrapper


@contextlib.contextmanager
def _open(image: str) -> Iterator[Filesystem]:
    """The filesystem of ``image``; its warnings go to stderr as they are known: those
    of opening it first, those met while reading (damaged htree indexes, say) last."""
    from cipherdump.ext4 import open_filesystem

    with open_filesystem(image) as fs:
        for w in fs.warnings:
            click.echo(f"cipherdump: warning: {w}", err=True)
        shown = len(fs.warnings)
        try:
            yield fs
        finally:
            for w in fs.warnings[shown:]:
                click.echo(f"cipherdump: warning: {w}", err=True)


def _path_arg(path: str) -> bytes:
    return os.fsencode(path)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cipherdump")
def cli() -> None:
    """Back up and inspect fscrypt-encrypted ext4 filesystems without the users' keys.

    Reads the ext4 on-disk format of an image, an unmounted device or a snapshot
    directly; the source is only ever opened read-only.  Encrypted names are shown as
    Linux shows them without the key (no-key names), and such names can be typed as
    paths.
    """


@cli.command()
@click.argument("image", type=click.Path(dir_okay=False, path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@one_line_errors
def info(image: str, as_json: bool) -> None:
    """Superblock summary, features, state and encryption policies of IMAGE."""
    from cipherdump.engine.describe import fs_info

    with _open(image) as fs:
        rec = fs_info(fs)
    if as_json:
        click.echo(render.dumps(rec))
        return
    rows = [
        ("UUID", rec["uuid"]),
        ("Volume name", render.show_bytes(rec["volume_name"]) or "<none>"),
        ("State", rec["state"] + _recovery_note(rec)),
        ("Block size", str(rec["block_size"])),
        ("Blocks", f"{rec['blocks_count']} ({rec['free_blocks']} free)"),
        ("Inodes", f"{rec['inodes_count']} ({rec['free_inodes']} free), {rec['inode_size']} bytes"),
        ("Groups", str(rec["groups"])),
        ("Features", " ".join(rec["features"])),
        (
            "Directory hash",
            f"{rec['default_hash']} ({rec['hash_signedness']}), seed {rec['hash_seed']}",
        ),
    ]
    if rec["journal"] is not None:
        rows.append(("Journal", _journal_line(rec["journal"])))
    orphans = rec["orphans"]
    if orphans["deleted"] or orphans["truncated"]:
        rows.append(
            (
                "Orphan inodes",
                f"{orphans['deleted']} deleted, {orphans['truncated']} truncated"
                " (as the kernel finishes them on mount)",
            )
        )
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(f"{k + ':':<{width + 1}} {v}")
    pols = rec["encryption_policies"]
    click.echo(f"Encryption policies: {len(pols) if pols else 'none'}")
    for p in pols:
        tie = " (tied to inode numbers and UUID)" if p["ties_to_filesystem"] else ""
        click.echo(f"  {p['inodes']:>7} inodes  {p['policy']}{tie}")
    if rec["encrypted_inodes_without_valid_context"]:
        click.echo(
            f"  {rec['encrypted_inodes_without_valid_context']} encrypted inodes have no "
            "valid encryption context"
        )


def _recovery_note(rec: dict[str, Any]) -> str:
    if not rec["needs_recovery"]:
        return ""
    journal = rec["journal"]
    if journal is not None and journal["replayed"] is not None:
        return " (journal replayed in memory)"
    return " (journal needs recovery)"


def _journal_line(journal: dict[str, Any]) -> str:
    """``info``'s line on the journal: where, how big, its features, what was replayed."""
    if journal["external"]:
        return "external device"
    parts = [f"inode {journal['inode']}"]
    if journal["version"]:
        parts.append(f"{journal['size'] / (1 << 20):g} MiB, v{journal['version']}")
        parts.append(" ".join(journal["features"]) or "no features")
    replayed = journal["replayed"]
    if replayed is not None:
        parts.append(
            f"replayed in memory: {replayed['transactions']} transactions,"
            f" {replayed['blocks']} blocks"
        )
    else:
        parts.append("empty" if journal["clean"] else "has data, not replayed")
    return "; ".join(parts)


@cli.command()
@click.argument("image", type=click.Path(dir_okay=False, path_type=str))
@click.argument("path", default="/")
@click.option("-l", "long", is_flag=True, help="Long listing: mode, owner, size, mtime.")
@click.option("-R", "recursive", is_flag=True, help="List subdirectories recursively.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@keyopts.key_options
@repo_cmds.snapshot_options
@one_line_errors
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
        return repo_cmds.ls_snapshot(repo, password_file, image, path, long, recursive, as_json)
    from cipherdump.engine.describe import node_record
    from cipherdump.engine.namespace import Problem

    problems = 0
    loaded = keying.load()
    with _open(image) as fs:
        keyopts.add_image_secrets(loaded, keying.secrets, fs)
        ns = keyopts.namespace(fs, loaded)
        top = ns.resolve(_path_arg(path))
        if not top.inode.is_dir:
            items: list[Any] = [top]
        else:
            items = list(ns.walk(top, recursive=recursive))
        for item in items:
            if isinstance(item, Problem):
                problems += 1
                click.echo(
                    f"cipherdump: error: {render.show_bytes(item.path)}: {item.error}", err=True
                )
                continue
            try:
                rec = node_record(ns, item)
            except CipherdumpError as err:
                problems += 1
                click.echo(f"cipherdump: error: {render.show_bytes(item.path)}: {err}", err=True)
                continue
            if as_json:
                click.echo(render.dumps(rec))
            elif long:
                click.echo(render.long_line(rec))
            else:
                click.echo(render.show_bytes(rec["path"] if recursive else rec["name"]))
        keyopts.report_keys(ns)
    if problems:
        sys.exit(EXIT_PARTIAL)


@cli.command(name="stat")
@click.argument("image", type=click.Path(dir_okay=False, path_type=str))
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@keyopts.key_options
@repo_cmds.snapshot_options
@one_line_errors
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
        return repo_cmds.stat_snapshot(repo, password_file, image, path, as_json)
    from cipherdump.engine.describe import stat_record

    loaded = keying.load()
    with _open(image) as fs:
        keyopts.add_image_secrets(loaded, keying.secrets, fs)
        ns = keyopts.namespace(fs, loaded)
        node = ns.resolve(_path_arg(path))
        rec = stat_record(ns, node)
        rec.update(keyopts.keyed_stat_fields(ns, node))
    if as_json:
        click.echo(render.dumps(rec))
        return
    for line in render.stat_lines(rec):
        click.echo(line)


@cli.command()
@click.argument("image", type=click.Path(dir_okay=False, path_type=str))
@click.argument("path")
@click.option(
    "--ciphertext",
    is_flag=True,
    help="Write the stored bytes in whole data units (ciphertext of encrypted files).",
)
@keyopts.key_options
@repo_cmds.snapshot_options
@one_line_errors
def cat(
    image: str,
    path: str,
    ciphertext: bool,
    keying: keyopts.KeyOptions,
    repo: str | None,
    password_file: str | None,
) -> None:
    """Write the contents of PATH to standard output.

    With --key, an encrypted file is decrypted (exit 4 if no key given matches it).
    Without a key, an encrypted file can only be read with --ciphertext: its whole
    data units (the last one padded, as stored); the exact size is on stderr and in
    `stat`.  With a repository (-r/--repo or CIPHERDUMP_REPOSITORY), IMAGE is a
    snapshot.
    """
    if repo:
        if not ciphertext and keying:
            return restore_cmd.cat_snapshot_keyed(repo, password_file, image, path, keying)
        return repo_cmds.cat_snapshot(repo, password_file, image, path, ciphertext)
    from cipherdump.engine.describe import data_unit_size, iter_ciphertext
    from cipherdump.ext4.inode import FileType

    loaded = keying.load()
    with _open(image) as fs:
        keyopts.add_image_secrets(loaded, keying.secrets, fs)
        ns = keyopts.namespace(fs, loaded)
        node = ns.resolve(_path_arg(path))
        inode = node.inode
        if inode.type is not FileType.FILE:
            raise InputError(f"{path}: not a regular file")
        out = sys.stdout.buffer
        if ciphertext:
            du = data_unit_size(inode) if inode.is_encrypted else 1
            for chunk in iter_ciphertext(inode, du):
                out.write(chunk)
            if inode.is_encrypted:
                click.echo(f"cipherdump: {path}: size {inode.size}, data unit {du}", err=True)
        elif (keyed := keyopts.as_keyed(ns)) is not None:
            if inode.is_encrypted:
                keyed.require_cipher(inode, path)  # the message names the path
            # Decrypts by data unit; holes come out as zeros without decryption.
            for seg in keyed.iter_segments(inode):
                if seg.data is not None:
                    out.write(seg.data)
                    continue
                left = seg.length
                while left:
                    n = min(left, len(_ZEROS))
                    out.write(_ZEROS[:n])
                    left -= n
        else:
            if inode.is_encrypted:
                raise KeyProblem(
                    f"{path} is encrypted and no key was given; use --ciphertext for the "
                    "stored bytes"
                )
            pos = 0
            step = 1 << 20
            while pos < inode.size:
                out.write(inode.read(pos, step))
                pos += step
        out.flush()


_ZEROS = bytes(1 << 20)


@cli.command(name="extract")
@click.argument("image", type=click.Path(dir_okay=False, path_type=str))
@click.argument("path")
@click.argument("dest", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary object.")
@click.option("-v", "--verbose", is_flag=True, help="Print each path as it is written.")
@mounted.allow_mounted_option("Extract from")
@keyopts.key_options
@one_line_errors
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
    from cipherdump.engine.keyed import KeyedNamespace

    mounted.check_mounted(image, allow_mounted=allow_mounted, doing="extract from it")
    loaded = keying.load()

    def show(ev: ExtractEvent) -> None:
        if verbose and ev.kind != "problem":
            click.echo(render.show_bytes(ev.path), err=as_json)

    with _open(image) as fs:
        keyopts.add_image_secrets(loaded, keying.secrets, fs)
        ns = keyopts.namespace(fs, loaded)
        if not isinstance(ns, KeyedNamespace):
            ns = KeyedNamespace(fs, loaded.ring)
        top = ns.resolve(_path_arg(path))
        result = extract(ns, top, dest, on_event=show)
        for p in result.problems:
            click.echo(
                f"cipherdump: error: {render.problem_line(p.source_path, _why(p.error))}", err=True
            )
        keyopts.report_keys(ns)
    if as_json:
        click.echo(render.dumps(result.summary()))
    if result.problems:
        sys.exit(EXIT_PARTIAL)


def _why(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err)


# init, backup, snapshots, diff, check: the repository commands.
for _command in (*repo_cmds.COMMANDS, *LIFECYCLE_COMMANDS):
    assert _command.callback is not None
    _command.callback = one_line_errors(_command.callback)
    cli.add_command(_command)

# repair index: the repository's own first aid.
for _group in (*repo_cmds.GROUPS, *LIFECYCLE_GROUPS):
    for _sub in _group.commands.values():
        assert _sub.callback is not None
        _sub.callback = one_line_errors(_sub.callback)
    cli.add_command(_group)

# restore: plaintext with keys (--target) or an image (--to-image).
assert restore_cmd.restore_cmd.callback is not None
restore_cmd.restore_cmd.callback = one_line_errors(restore_cmd.restore_cmd.callback)
cli.add_command(restore_cmd.restore_cmd)

# clone: image to image through the offline writer.
assert clone_cmd.clone_cmd.callback is not None
clone_cmd.clone_cmd.callback = one_line_errors(clone_cmd.clone_cmd.callback)
cli.add_command(clone_cmd.clone_cmd)


def main() -> None:
    try:
        cli(prog_name="cipherdump")
    finally:
        # On the way out CPython runs the cycle collector over everything still alive:
        # after an incremental backup, 0.1 s (a tenth of the run, measured) spent on
        # memory the exit frees anyway.  Frozen objects are not scanned; exit handlers,
        # threads and buffered output are finished as always.
        gc.freeze()
