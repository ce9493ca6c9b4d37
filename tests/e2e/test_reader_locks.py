"""Readers (ls, stat, cat, diff, snapshots of a repository) take a shared lock: an
exclusive prune or forget cannot delete what they read, so they are refused (exit 8,
one line) while one holds the repository; beside a backup's shared lock they run; a
read-only copy of a repository is still read, with a warning."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cipherdump.cli.main import cli
from cipherdump.repo import LocalBackend, Repository

ENV = {"CIPHERDUMP_INSECURE_TEST_KDF": "1", "CIPHERDUMP_PASSWORD": "pw"}


def run(repo: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, [*args, "-r", str(repo)], env=ENV, catch_exceptions=False)


def readers(sid: str) -> list[tuple[str, ...]]:
    return [
        ("snapshots",),
        ("ls", sid, "/"),
        ("stat", sid, "/note"),
        ("cat", sid, "/note"),
        ("diff", sid, sid),
    ]


@pytest.fixture
def repo_and_snapshot(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    if shutil.which("mke2fs") is None:
        pytest.skip("needs mke2fs")
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "note").write_text("a note\n")
    (tree / "data").write_bytes(os.urandom(50_000))
    image = tmp_path / "img.img"
    subprocess.run(
        ["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(tree), str(image), "4M"],
        check=True,
        capture_output=True,
    )
    repo = tmp_path / "r"
    assert run(repo, "init").exit_code == 0
    backup = run(repo, "backup", "--json", str(image))
    assert backup.exit_code == 0, backup.output
    yield repo, json.loads(backup.stdout.splitlines()[-1])["snapshot_id"][:12]


def test_readers_are_refused_while_an_exclusive_lock_is_held(
    repo_and_snapshot: tuple[Path, str],
) -> None:
    repo, sid = repo_and_snapshot
    pruning = Repository.open(LocalBackend(str(repo)), b"pw", exclusive=True)
    try:
        for args in readers(sid):
            result = run(repo, *args)
            assert result.exit_code == 8, (args, result.output)
            assert len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
            assert result.stderr.startswith("cipherdump: error:"), (args, result.stderr)
            assert result.stdout == "", args
    finally:
        pruning.close()
    for args in readers(sid):
        assert run(repo, *args).exit_code == 0, args
    assert not list((repo / "locks").iterdir())


def test_readers_run_beside_a_shared_lock(
    repo_and_snapshot: tuple[Path, str],
) -> None:
    repo, sid = repo_and_snapshot
    backup = Repository.open(LocalBackend(str(repo)), b"pw", exclusive=False)
    try:
        for args in readers(sid):
            result = run(repo, *args)
            assert result.exit_code == 0, (args, result.output)
            assert result.stderr == "", (args, result.stderr)
        assert run(repo, "cat", sid, "/note").stdout == "a note\n"
    finally:
        backup.close()
    # Each reader released its lock.
    assert not list((repo / "locks").iterdir())


def test_a_read_only_copy_is_read_with_a_warning(
    repo_and_snapshot: tuple[Path, str], tmp_path: Path
) -> None:
    repo, sid = repo_and_snapshot
    view = tmp_path / "ro"
    view.mkdir()
    mounted = subprocess.run(
        ["mount", "--bind", "-o", "ro", str(repo), str(view)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount read-only: {mounted.stderr!r}")
    try:
        for args in readers(sid):
            result = run(view, *args)
            assert result.exit_code == 0, (args, result.output)
            assert "reading without a lock" in result.stderr, (args, result.stderr)
        assert run(view, "cat", sid, "/note").stdout == "a note\n"
    finally:
        subprocess.run(["umount", str(view)], check=True)
