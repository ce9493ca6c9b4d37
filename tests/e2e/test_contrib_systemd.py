"""contrib/: the systemd service and timer for a nightly key-less backup plus retention.

``systemd-analyze verify`` checks the units (with ExecStart pointed at an executable
that exists here, as verify demands); the service's command lines, expanded from the
example environment file as systemd expands them, back up the sample and apply the
retention rules to a repository of the test's own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shared_data import REPO

CONTRIB = REPO / "contrib"
UNITS = ("cipherdump-backup.service", "cipherdump-backup.timer")
INSTALLED = "/usr/local/bin/cipherdump"


def read_env_file(path: Path) -> dict[str, str]:
    """NAME=value lines as systemd's EnvironmentFile= reads them (comments skipped)."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            out[name.strip()] = value.strip()
    return out


def exec_lines(service: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"^ExecStart=(.*)$", service, re.MULTILINE)]


def expand(line: str, env: dict[str, str]) -> list[str]:
    """An ExecStart= line as systemd splits it: $NAME becomes as many words as its value
    has (none if empty), ${NAME} exactly one."""
    words: list[str] = []
    for word in line.split():
        if m := re.fullmatch(r"\$\{(\w+)\}", word):
            words.append(env.get(m.group(1), ""))
        elif m := re.fullmatch(r"\$(\w+)", word):
            words.extend(env.get(m.group(1), "").split())
        else:
            words.append(word)
    return words


def test_the_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here")
    # verify refuses an ExecStart= binary that does not exist: point it at a stand-in.
    stand_in = tmp_path / "bin" / "cipherdump"
    stand_in.parent.mkdir()
    stand_in.write_text("#!/bin/sh\nexit 0\n")
    stand_in.chmod(0o755)
    for unit in UNITS:
        text = (CONTRIB / unit).read_text()
        (tmp_path / unit).write_text(text.replace(INSTALLED, str(stand_in)))
    proc = subprocess.run(
        [analyze, "verify", *(str(tmp_path / u) for u in UNITS)],
        capture_output=True,
        text=True,
        check=False,
    )
    # Unknown or misspelt settings are only warnings to verify: none may name our units.
    ours = [line for line in proc.stderr.splitlines() if "cipherdump-backup" in line]
    assert proc.returncode == 0 and not ours, proc.stderr


def test_the_service_is_hardened_and_yields_to_other_work() -> None:
    service = (CONTRIB / "cipherdump-backup.service").read_text()
    for setting in (
        "Type=oneshot",
        "EnvironmentFile=/etc/cipherdump/cipherdump-backup.env",
        "Nice=19",
        "IOSchedulingClass=idle",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "ProtectHome=read-only",
    ):
        assert f"\n{setting}\n" in service, setting
    timer = (CONTRIB / "cipherdump-backup.timer").read_text()
    assert "OnCalendar=" in timer and "Persistent=true" in timer
    assert "WantedBy=timers.target" in timer
    lines = exec_lines(service)
    assert [line.split()[:2] for line in lines] == [[INSTALLED, "backup"], [INSTALLED, "forget"]]
    assert "--prune" in lines[1]


def test_the_service_commands_back_up_and_apply_the_retention(tmp_path: Path) -> None:
    """The example settings, with the test's repository, password and source: each
    ExecStart= line runs as systemd would run it (no terminal), and succeeds."""
    settings = read_env_file(CONTRIB / "cipherdump-backup.env")
    for name in ("CIPHERDUMP_REPOSITORY", "CIPHERDUMP_PASSWORD_FILE", "CIPHERDUMP_SOURCE"):
        assert settings.get(name), name
    assert settings["CIPHERDUMP_KEEP"].startswith("--keep-")
    password = tmp_path / "password"
    password.write_text("pw\n")
    settings.update(
        CIPHERDUMP_REPOSITORY=str(tmp_path / "repo"),
        CIPHERDUMP_PASSWORD_FILE=str(password),
        CIPHERDUMP_SOURCE=str(REPO / "examples" / "sample.img"),
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIPHERDUMP_")}
    env.update(settings, PYTHONPATH=str(REPO / "src"), CIPHERDUMP_INSECURE_TEST_KDF="1")
    program = [sys.executable, "-c", "from cipherdump.cli.main import main; main()"]

    def run(args: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*program, *args], env=env, capture_output=True, text=True, check=False
        )

    assert run(["init"]).returncode == 0
    service = (CONTRIB / "cipherdump-backup.service").read_text()
    for _night in range(3):
        for line in exec_lines(service):
            words = expand(line, settings)
            assert words[0] == INSTALLED
            done = run(words[1:])
            assert done.returncode == 0, (words, done.stderr)
            assert done.stderr == ""  # no progress bar in a log, no warning
    snaps = json.loads(run(["snapshots", "--json"]).stdout)
    # Three backups the same day: --keep-daily keeps the newest of the day, and (as
    # restic does) the oldest, since the rules' counts are not filled; the middle goes.
    assert len(snaps) == 2 and all(s["tags"] == ["nightly"] for s in snaps)
