"""Writing a restore or a clone onto a full disk: one line and exit code 7, never an
internal error nor a line per file, and no half-written image left behind.

The destination is a tmpfs mounted (as root) at a size too small for the output, so
the kernel itself says "No space left on device" partway through.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cipherdump.cli.main import cli
from shared_data import REPO

pytestmark = pytest.mark.kernel

EXAMPLES = REPO / "examples"
SAMPLE = EXAMPLES / "sample.img"
KEYS = ["--key", str(EXAMPLES / "alice.key"), "--key", str(EXAMPLES / "bob.key")]
ENV = {"CIPHERDUMP_INSECURE_TEST_KDF": "1", "CIPHERDUMP_PASSWORD": "pw"}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Any]:
    """``small_disk(kib)``: a fresh tmpfs of that size; all are unmounted afterwards."""
    mounts: list[Path] = []

    def make(kib: int) -> Path:
        mnt = tmp_path / f"disk{len(mounts)}"
        mnt.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", mnt], check=True)
        mounts.append(mnt)
        return mnt

    try:
        yield make
    finally:
        for mnt in mounts:
            subprocess.run(["umount", mnt], check=False)


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), env=ENV, catch_exceptions=False)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("full") / "repo"
    assert run("init", "-r", str(path)).exit_code == 0
    assert run("backup", "-r", str(path), str(SAMPLE)).exit_code == 0
    return path


def _one_line_no_space(result: Any) -> None:
    assert result.exit_code == 7, result.output
    assert result.stderr.startswith("cipherdump: error: ")
    assert result.stderr.endswith("No space left on device\n")
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize("how", ["clone", "restore"])
def test_an_image_that_does_not_fit_is_one_line_and_removed(
    how: str, small_disk: Any, repo: Path
) -> None:
    out = small_disk(40) / "out.img"
    if how == "clone":
        result = run("clone", str(SAMPLE), str(out))
    else:
        result = run("restore", "-r", str(repo), "latest", "--to-image", str(out))
    _one_line_no_space(result)
    assert "cannot write at byte" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("how", ["extract", "restore"])
def test_plaintext_that_does_not_fit_is_one_line(how: str, small_disk: Any, repo: Path) -> None:
    out = small_disk(8) / "out"
    if how == "extract":
        result = run("extract", *KEYS, str(SAMPLE), "/", str(out))
    else:
        result = run("restore", "-r", str(repo), "latest", *KEYS, "--target", str(out))
    _one_line_no_space(result)
    assert str(out) in result.stderr
