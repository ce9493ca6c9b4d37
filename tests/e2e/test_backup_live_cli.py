"""``backup --read-rate`` and the command line of ``backup --live`` (the live runs
themselves are kernel tests: tests/kernel/test_live_backup.py)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner, Result

from cipherdump.cli.main import cli
from shared_data import REPO

SAMPLE = REPO / "examples" / "sample.img"
ENV = {"CIPHERDUMP_INSECURE_TEST_KDF": "1", "CIPHERDUMP_PASSWORD": "pw"}


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env=ENV, catch_exceptions=False)


def test_read_rate_backs_up_the_same(tmp_path: Path) -> None:
    """Throttled, the backup reads the same bytes and makes the same tree (the rate
    itself is tested on the source: tests/unit/blockio/test_throttle.py)."""
    repo = str(tmp_path / "r")
    assert run("init", "-r", repo).exit_code == 0
    plain = run("backup", "-r", repo, str(SAMPLE), "--no-parent", "--json")
    slow = run("backup", "-r", repo, str(SAMPLE), "--no-parent", "--read-rate", "64K", "--json")
    assert plain.exit_code == 0 and slow.exit_code == 0, slow.output
    a, b = json.loads(plain.output), json.loads(slow.output)
    assert a["bytes_read"] == b["bytes_read"] > 0
    listed = run("snapshots", "-r", repo, "--json")
    trees = {s["id"]: s for s in json.loads(listed.output)}
    assert len(trees) == 2
    ls_a = run("ls", "-r", repo, a["snapshot_id"][:8], "-lR").output
    ls_b = run("ls", "-r", repo, b["snapshot_id"][:8], "-lR").output
    assert ls_a == ls_b and ls_a


def test_bad_rate_is_a_usage_error(tmp_path: Path) -> None:
    result = run("backup", "-r", str(tmp_path), str(SAMPLE), "--read-rate", "fast")
    assert result.exit_code == 2 and "not a rate" in result.output


def test_live_usage_errors(tmp_path: Path) -> None:
    repo = str(tmp_path / "r")
    assert run("init", "-r", repo).exit_code == 0
    both = run("backup", "-r", repo, "--live", "--allow-mounted", str(tmp_path))
    assert both.exit_code == 2 and "do not go together" in both.output
    jobs = run("backup", "-r", repo, "--live", "-j", "2", str(tmp_path))
    assert jobs.exit_code == 2 and "one process" in jobs.output
    a_dir = run("backup", "-r", repo, str(tmp_path))
    assert a_dir.exit_code == 2 and "see --live" in a_dir.output
    not_mounted = run("backup", "-r", repo, "--live", str(SAMPLE))
    assert not_mounted.exit_code == 3 and "not mounted" in not_mounted.output
    assert len(not_mounted.output.strip().splitlines()) == 1
