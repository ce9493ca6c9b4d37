"""``cipherdump`` commands.

One module a command (``cli/<name>_cmd.py``), each reading every kind of source it
takes (an image, or a snapshot with a repository); what they print goes through
:mod:`cipherdump.cli.render`, where they open sources through
:mod:`cipherdump.cli.sources`.  This module only gathers them into one group.

Exit codes (documented in the README):
  0 success; 1 some objects could not be read (the rest was); 2 usage error;
  3 unusable input (not ext4, corrupt, unsupported, not found); 4 key problem;
  5 repository integrity; 6 storage backend; 7 the output cannot be written;
  8 the repository is locked by another process; 70 internal error (a bug: please report).
"""

from __future__ import annotations

import gc

import click

from cipherdump import __version__
from cipherdump.cli import (
    backup_cmd,
    cat_cmd,
    check_cmd,
    clone_cmd,
    completion_cmd,
    diff_cmd,
    dump_cmd,
    extract_cmd,
    forget_cmd,
    globalopts,
    info_cmd,
    init_cmd,
    key_cmd,
    ls_cmd,
    mount_cmd,
    prune_cmd,
    repair_cmd,
    restore_cmd,
    snapshots_cmd,
    stat_cmd,
    stats_cmd,
    tag_cmd,
    unlock_cmd,
    version_cmd,
)

# Start-up: this module and the cli modules it loads import only click, the standard
# library and cipherdump.errors at the top.  The engine, the ext4 reader, fscrypt and
# the repository (and with them cryptography, argon2, blake3, zstandard, crc32c, rich)
# are imported inside the commands that use them, so `--help` and every command pay
# only for what they run.  tests/unit/cli/test_cli_startup.py keeps it so.


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cipherdump", message="%(prog)s %(version)s")
@globalopts.global_options
@click.pass_context
def cli(
    ctx: click.Context,
    repo: str | None,
    password_file: str | None,
    as_json: bool | None,
    quiet: bool,
    verbose: bool | None,
) -> None:
    """Back up and inspect fscrypt-encrypted ext4 filesystems without the users' keys.

    Reads the ext4 on-disk format of an image, an unmounted device or a snapshot
    directly; the source is only ever opened read-only.  Encrypted names are shown as
    Linux shows them without the key (no-key names), and such names can be typed as
    paths.

    Options before the command (-r, --password-file, --json, -v, --cache-dir, ...)
    serve every command that takes them; a command's own spelling wins over them.
    """
    given = {"repo": repo, "password_file": password_file, "as_json": as_json}
    globalopts.take_global_options(ctx, quiet, {**given, "verbose": verbose})


# Reading an image or a snapshot.
cli.add_command(info_cmd.info)
cli.add_command(ls_cmd.ls)
cli.add_command(stat_cmd.stat_cmd)
cli.add_command(cat_cmd.cat)
cli.add_command(extract_cmd.extract_cmd)
cli.add_command(mount_cmd.mount_cmd)
# The repository.
cli.add_command(init_cmd.init)
cli.add_command(backup_cmd.backup_cmd)
cli.add_command(snapshots_cmd.snapshots)
cli.add_command(diff_cmd.diff)
cli.add_command(check_cmd.check)
cli.add_command(repair_cmd.repair)
# Keeping a repository over years.
cli.add_command(forget_cmd.forget_cmd)
cli.add_command(tag_cmd.tag_cmd)
cli.add_command(prune_cmd.prune_cmd)
cli.add_command(unlock_cmd.unlock_cmd)
cli.add_command(key_cmd.key_group)
cli.add_command(stats_cmd.stats_cmd)
# Writing a snapshot or an image back out.
cli.add_command(restore_cmd.restore_cmd)
cli.add_command(clone_cmd.clone_cmd)
# Habits: the shell's completion, and the versions for a bug report.
cli.add_command(completion_cmd.completion_cmd)
cli.add_command(version_cmd.version_cmd)
cli.add_command(dump_cmd.dump_cmd)


def main() -> None:
    try:
        cli(prog_name="cipherdump")
    finally:
        # On the way out CPython runs the cycle collector over everything still alive:
        # after an incremental backup, 0.1 s (a tenth of the run, measured) spent on
        # memory the exit frees anyway.  Frozen objects are not scanned; exit handlers,
        # threads and buffered output are finished as always.
        gc.freeze()


if __name__ == "__main__":  # python3 -m cipherdump.cli.main
    main()
