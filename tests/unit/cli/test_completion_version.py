"""``cipherdump completion SHELL`` and ``cipherdump version``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cipherdump import __version__
from cipherdump.cli.main import cli
from shared_data import REPO


def fake_cipherdump(tmp_path: Path) -> dict[str, str]:
    """An environment whose ``cipherdump`` on PATH runs this tree's sources, as the
    completion scripts call it."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "cipherdump"
    script.write_text(
        f"#!/bin/sh\nexec {sys.executable} -c "
        "'from cipherdump.cli.main import main; main()' \"$@\"\n"
    )
    script.chmod(0o755)
    env = dict(os.environ)
    env["PATH"] = f"{bindir}:{env['PATH']}"
    env["PYTHONPATH"] = str(REPO / "src")
    return env


@pytest.mark.parametrize(
    ("shell", "marker"),
    [
        ("bash", "complete -o nosort -F _cipherdump_completion cipherdump"),
        ("zsh", "compdef _cipherdump_completion cipherdump"),
        ("fish", "complete --no-files --command cipherdump"),
    ],
)
def test_each_shell_gets_its_script(shell: str, marker: str) -> None:
    result = CliRunner().invoke(cli, ["completion", shell])
    assert result.exit_code == 0, result.output
    assert marker in result.stdout
    assert "_CIPHERDUMP_COMPLETE" in result.stdout


def test_an_unknown_shell_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["completion", "tcsh"])
    assert result.exit_code == 2 and "tcsh" in result.output


def bash_complete(env: dict[str, str], script: str, *words: str) -> list[str]:
    """COMPREPLY after bash's completion function ran on ``words`` (the last being
    completed), with the script sourced as ~/.bashrc would."""
    line = " ".join(f"'{w}'" for w in words)
    code = (
        f"{script}\n"
        f"COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}\n"
        "_cipherdump_completion cipherdump\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    proc = subprocess.run(
        ["bash", "--norc", "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash here")
def test_bash_completes_commands_and_options(tmp_path: Path) -> None:
    env = fake_cipherdump(tmp_path)
    script = subprocess.run(
        ["cipherdump", "completion", "bash"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert bash_complete(env, script, "cipherdump", "sna") == ["snapshots"]
    assert set(bash_complete(env, script, "cipherdump", "re")) == {"repair", "restore"}
    # After global options, and a subcommand's options and choices.
    assert bash_complete(env, script, "cipherdump", "-r", "/srv/repo", "snap") == ["snapshots"]
    assert bash_complete(env, script, "cipherdump", "prune", "--dry") == ["--dry-run"]
    assert bash_complete(env, script, "cipherdump", "completion", "fi") == ["fish"]


def test_version_names_the_packages_and_the_mount_extra() -> None:
    text = CliRunner().invoke(cli, ["version"])
    assert text.exit_code == 0, text.output
    assert text.stdout.startswith(f"cipherdump {__version__}\nPython ")
    for name in ("cryptography", "obstore", "argon2-cffi", "zstandard", "blake3"):
        assert name in text.stdout
    assert "mount extra: " in text.stdout
    for args in (["version", "--json"], ["--json", "version"]):
        out = json.loads(CliRunner().invoke(cli, args).stdout)
        assert out["cipherdump"] == __version__
        assert out["python"] == ".".join(map(str, sys.version_info[:3]))
        from importlib.metadata import version

        assert out["packages"]["cryptography"] == version("cryptography")
        assert out["mount"]["installed"] is True  # the test extra installs mfusepy
        assert out["mount"]["mfusepy"] == version("mfusepy")
    short = CliRunner().invoke(cli, ["--version"])
    assert short.exit_code == 0 and short.stdout == text.stdout.splitlines()[0] + "\n"


@pytest.mark.parametrize(("shell", "cword"), [("bash", "1"), ("zsh", "1"), ("fish", "sna")])
def test_the_scripts_protocol_completes_a_command(shell: str, cword: str, tmp_path: Path) -> None:
    """What each script asks cipherdump (click's protocol: the words so far in
    COMP_WORDS, the one being completed in COMP_CWORD) is answered with the commands
    that fit; zsh and fish need not be installed for this."""
    env = fake_cipherdump(tmp_path)
    env.update(_CIPHERDUMP_COMPLETE=f"{shell}_complete", COMP_WORDS="cipherdump sna")
    env["COMP_CWORD"] = cword
    proc = subprocess.run(["cipherdump"], env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "snapshots" in proc.stdout.replace(",", "\n").split("\n")  # bash: type,value
    assert "restore" not in proc.stdout
