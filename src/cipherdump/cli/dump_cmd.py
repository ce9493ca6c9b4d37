"""``cipherdump dump SNAPSHOT PATH``: a file or subtree of a snapshot as a PAX tar stream.

With keys, plaintext; without, refused for anything encrypted unless ``--ciphertext``,
which writes the key-less archive ``restore --from-tar`` reads
(:mod:`cipherdump.engine.dump`).  A tar is never written to a terminal, and
``--output`` is written under a temporary name and renamed once complete.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import BinaryIO

import click

from cipherdump.cli import keyopts, render, sources
from cipherdump.errors import KeyProblem, OutputError


@click.command(name="dump")
@click.argument("snapshot")
@click.argument("path")
@click.option(
    "-o",
    "--output",
    metavar="FILE",
    help="Write the archive to FILE (made under a temporary name, renamed when complete) "
    "instead of standard output.",
)
@click.option(
    "--ciphertext",
    is_flag=True,
    help="No key: the filesystem as stored (encrypted files as ciphertext under no-key "
    "names, with CIPHERDUMP.* records), for restore --from-tar.",
)
@keyopts.key_options
@sources.snapshot_options
@render.one_line_errors
def dump_cmd(
    snapshot: str,
    path: str,
    output: str | None,
    ciphertext: bool,
    keying: keyopts.KeyOptions,
    repo: str | None,
    password_file: str | None,
) -> None:
    """Write PATH of SNAPSHOT as a tar archive (PAX) to standard output or --output.

    With --key/--passphrase: plaintext members named after PATH (./ for /), with
    modes, numeric owners, nanosecond times, xattrs and ACLs (SCHILY.*), hard links,
    device nodes, FIFOs and sparse files (GNU sparse 1.0); what no key given decrypts
    is left out with an error (exit 1).  Without a key, an encrypted object is refused
    (exit 4) unless --ciphertext is given: then the archive holds the stored
    ciphertext under no-key names with the records restore --from-tar needs, rooted
    at ./ with the directories down to PATH, and says so in its global header.
    Sockets cannot be in a tar and are left out with a warning.
    """
    if ciphertext and keying:
        raise click.UsageError("--ciphertext writes the stored bytes; it takes no key")
    if output is None and sys.stdout.isatty():
        raise click.UsageError(
            "refusing to write a tar archive to a terminal; redirect it or give --output FILE"
        )
    from cipherdump.engine import dump as engine

    on_progress, bar = render.progress_bar("dump")
    with sources.open_reader(repo, password_file) as repository:
        view = sources.snapshot_view(repository, snapshot)
        wanted = os.fsencode(path)
        if ciphertext:
            view.resolve(wanted)  # a missing path is refused before any output
            with _output(output) as out, bar:
                result = engine.dump_ciphertext(view, wanted, out, on_progress=on_progress)
            source = None
        else:
            from cipherdump.engine.views.snapshot_keyed import KeyedSnapshotView

            if not keying:
                found = engine.first_encrypted(view, view.resolve(wanted))
                if found is not None:
                    raise KeyProblem(
                        f"{render.show_bytes(found)} is encrypted and no key was given; "
                        "give --key/--passphrase for plaintext, or --ciphertext for the "
                        "stored ciphertext"
                    )
            source = KeyedSnapshotView(view, sources.snapshot_keys(view, keying))
            top = source.resolve(wanted)
            if top.snap.is_dir and top.snap.is_encrypted:
                source.require_decryptable(top, path)  # nothing to dump: exit 4
            with _output(output) as out, bar:
                result = engine.dump_plain(source, top, out, on_progress=on_progress)
        for where, why in result.skipped:
            render.warn(why if why.startswith(render.show_bytes(where)) else
                        f"{render.show_bytes(where)}: {why}")  # fmt: skip
        for where, err in result.problems:
            click.echo(
                f"cipherdump: error: {render.problem_line(where, render.why(err))}", err=True
            )
        if source is not None:
            sources.report_snapshot_keys(source)
    if result.problems:
        sys.exit(render.EXIT_PARTIAL)


@contextlib.contextmanager
def _output(output: str | None) -> Iterator[BinaryIO]:
    """Standard output, or ``output`` made under a temporary name in its directory
    (mode 0600: it may hold plaintext or ciphertext) and renamed over it once complete
    and synced; an error or interruption removes the temporary file."""
    if output is None:
        out = sys.stdout.buffer
        try:
            yield out
            out.flush()
        except BrokenPipeError:
            raise
        except OSError as err:
            raise OutputError(f"standard output: {err.strerror or err}") from None
        return
    where = os.path.dirname(os.path.abspath(output))
    try:
        fd, tmp = tempfile.mkstemp(
            dir=where, prefix="." + os.path.basename(output) + ".", suffix=".partial"
        )
    except OSError as err:
        raise OutputError(f"{output}: cannot create it: {err.strerror}") from None
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, output)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise OutputError(f"{output}: {err.strerror or err}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
