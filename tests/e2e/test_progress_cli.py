"""Progress of the long commands (backup, both restores, clone, extract, check, prune,
stats, dump): a rich bar on stderr when stderr is a terminal (run
here on a pseudo-terminal), and nothing extra when it is not (a log, a pipe) or with
``-q``."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ptyrun import run_on_terminal
from shared_data import REPO

SAMPLE = str(REPO / "examples" / "sample.img")
CIPHERDUMP = [sys.executable, "-c", "from cipherdump.cli.main import main; main()"]
BAR = "━"  # rich's bar
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def environment() -> dict[str, str]:
    env = dict(os.environ, CIPHERDUMP_INSECURE_TEST_KDF="1", CIPHERDUMP_PASSWORD="pw")
    env.update(PYTHONPATH=str(REPO / "src"), TERM="xterm-256color")
    env.pop("CIPHERDUMP_REPOSITORY", None)
    return env


def frames(stderr: str) -> list[str]:
    """The lines a terminal showed, escapes taken out (a bar redraws one line)."""
    text = _ESCAPES.sub("", stderr)
    return [line.strip() for line in re.split(r"[\r\n]", text) if line.strip()]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("progress") / "r"
    for args in (["init"], ["backup", SAMPLE], ["backup", SAMPLE]):
        done = subprocess.run(
            [*CIPHERDUMP, "-r", str(path), *args], env=environment(), capture_output=True
        )
        assert done.returncode == 0, done.stderr
    return path


def commands(repo: Path, out: Path) -> dict[str, tuple[list[str], str]]:
    """Each long command: its arguments, and what its bar is called (phases after ':')."""
    r = ["-r", str(repo)]
    return {
        "backup": ([*r, "backup", SAMPLE], "backup"),
        "restore --to-image": (
            [*r, "restore", "latest", "--to-image", str(out / "o.img")],
            "restore",
        ),
        "restore --target": (
            [*r, "restore", "latest", "--path", "/public", "--target", str(out / "t")],
            "restore",
        ),
        "clone": (["clone", SAMPLE, str(out / "c.img")], "clone"),
        "extract": (["extract", SAMPLE, "/public", str(out / "x")], "extract"),
        "check": ([*r, "check"], "check: checking trees"),
        "check --read-data": ([*r, "check", "--read-data"], "check: reading packs"),
        "prune": ([*r, "prune", "--max-unused", "0"], "prune: marking snapshots"),
        "stats": ([*r, "stats"], "stats: walking snapshots"),
        "dump": ([*r, "dump", "latest", "/public", "--output", str(out / "d.tar")], "dump"),
    }  # fmt: skip


NAMES = list(commands(Path(), Path()))


@pytest.mark.parametrize("name", NAMES)
def test_a_terminal_gets_a_progress_bar(name: str, repo: Path, tmp_path: Path) -> None:
    args, title = commands(repo, tmp_path)[name]
    ran = run_on_terminal([*CIPHERDUMP, *args], env=environment())
    assert ran.returncode == 0, ran.stderr
    shown = frames(ran.stderr)
    bars = [line for line in shown if line.startswith(title) and BAR in line]
    assert bars, shown
    # The bar shows how far (a share, bytes or items of a total) once it knows.
    assert any(re.search(r"\d+%|\d+/\d+|\d+ B", line) for line in bars), bars
    # The results still go to stdout, untouched by the bar.
    assert BAR not in ran.stdout


@pytest.mark.parametrize("name", NAMES)
def test_without_a_terminal_no_progress_is_written(name: str, repo: Path, tmp_path: Path) -> None:
    args, _ = commands(repo, tmp_path)[name]
    ran = subprocess.run(
        [*CIPHERDUMP, *args], env=environment(), capture_output=True, text=True, check=False
    )
    assert ran.returncode == 0, ran.stderr
    # Only warnings (no key given, for the plaintext restores), never a bar or escapes.
    for line in ran.stderr.splitlines():
        assert line.startswith("cipherdump: warning: "), ran.stderr
    assert "\x1b" not in ran.stderr and "\r" not in ran.stderr


def test_quiet_keeps_a_terminal_free_of_bars(repo: Path, tmp_path: Path) -> None:
    args, _ = commands(repo, tmp_path)["check --read-data"]
    ran = run_on_terminal([*CIPHERDUMP, "-q", *args], env=environment())
    assert ran.returncode == 0, ran.stderr
    assert BAR not in ran.stderr and frames(ran.stderr) == []
    assert "no errors" in ran.stdout
