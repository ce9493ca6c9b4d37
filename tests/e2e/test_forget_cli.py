"""``forget`` and ``tag`` end to end on a repository of dated synthetic snapshots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cipherdump.cli.main import cli
from lifecycle_repo import add_snapshot, make_repo

ENV = {"CIPHERDUMP_INSECURE_TEST_KDF": "1", "CIPHERDUMP_PASSWORD": "pw"}
DAYS = [f"2024-01-{d:02d} 12:00" for d in range(1, 9)]


def run(repo: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, [*args, "-r", str(repo)], env=ENV, catch_exceptions=False)


def snapshots(repo: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = json.loads(run(repo, "snapshots", "--json").stdout)
    return out


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "r"
    make_repo(path)
    for day in DAYS:
        add_snapshot(path, day)
    add_snapshot(path, "2024-01-08 13:00", host="h2", tags=("keep",))
    return path


def test_policy_per_group_dry_run_then_real(repo: Path) -> None:
    before = snapshots(repo)
    dry = run(repo, "forget", "--keep-last", "2", "--utc", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    plan = json.loads(dry.stdout)
    assert plan["dry_run"] and plan["removed"] == 0
    groups = {g["group"]["host"]: g for g in plan["groups"]}
    assert len(groups["h1"]["keep"]) == 2 and len(groups["h1"]["remove"]) == 6
    assert groups["h1"]["keep"][0]["reasons"] == ["last 2"]
    assert len(groups["h2"]["keep"]) == 1 and not groups["h2"]["remove"]
    assert snapshots(repo) == before
    text = run(repo, "forget", "--keep-last", "2", "--utc", "--dry-run")
    assert "remove 6 snapshots" in text.stdout and "last 2" in text.stdout
    real = run(repo, "forget", "--keep-last", "2", "--utc")
    assert real.exit_code == 0 and "removed 6 snapshots" in real.stdout
    left = snapshots(repo)
    assert len(left) == 3
    assert run(repo, "check").exit_code == 0


def test_one_group_and_keep_tag(repo: Path) -> None:
    result = run(
        repo, "forget", "--keep-last", "1", "--keep-tag", "keep", "--group-by", "", "--json"
    )
    plan = json.loads(result.stdout)
    assert len(plan["groups"]) == 1
    kept = plan["groups"][0]["keep"]
    assert len(kept) == 1 and kept[0]["reasons"] == ["last 1", "tag keep"]
    assert len(snapshots(repo)) == 1


def test_explicit_ids(repo: Path) -> None:
    first = snapshots(repo)[0]["id"]
    result = run(repo, "forget", first[:10])
    assert result.exit_code == 0, result.output
    assert first not in {s["id"] for s in snapshots(repo)}


@pytest.mark.parametrize(
    "args",
    [
        [],  # an empty policy
        ["--keep-daily", "0"],
        ["--keep-last", "1", "latest"],  # ids and a policy
        ["--keep-within", "3weeks"],
        ["--keep-daily", "-2"],
        ["--keep-last", "1", "--group-by", "colour"],
    ],
)
def test_refusals_change_nothing(repo: Path, args: list[str]) -> None:
    before = snapshots(repo)
    result = run(repo, "forget", *args)
    assert result.exit_code in (2, 3), result.output
    assert len(result.stderr.strip().splitlines()) == 1 or result.exit_code == 2
    assert "Traceback" not in result.output
    assert snapshots(repo) == before


def test_within_and_daily_in_utc(repo: Path) -> None:
    result = run(repo, "forget", "--keep-within", "2d", "--keep-daily", "1", "--utc", "--json")
    plan = json.loads(result.stdout)
    h1 = next(g for g in plan["groups"] if g["group"]["host"] == "h1")
    assert [k["time"] for k in h1["keep"]] == ["2024-01-08 12:00:00", "2024-01-07 12:00:00"]


def test_tag_add_remove_set(repo: Path) -> None:
    target = snapshots(repo)[0]
    added = run(repo, "tag", target["id"][:12], "--add", "a", "--add", "b", "--json")
    assert added.exit_code == 0, added.output
    change = json.loads(added.stdout)["snapshots"][0]
    assert change["tags"] == ["a", "b"] and change["new"] != target["id"]
    ids = {s["id"]: s for s in snapshots(repo)}
    assert target["id"] not in ids and ids[change["new"]]["tags"] == ["a", "b"]
    assert ids[change["new"]]["time_ns"] == target["time_ns"]
    removed = json.loads(run(repo, "tag", change["new"], "--remove", "a", "--json").stdout)
    assert removed["snapshots"][0]["tags"] == ["b"]
    newest = removed["snapshots"][0]["new"]
    same = json.loads(run(repo, "tag", newest, "--add", "b", "--json").stdout)
    assert same["snapshots"][0]["new"] is None  # unchanged: not saved again
    reset = json.loads(run(repo, "tag", newest, "--set", "x", "--json").stdout)
    assert reset["snapshots"][0]["tags"] == ["x"]
    assert len(snapshots(repo)) == len(DAYS) + 1
    assert run(repo, "check").exit_code == 0
    assert run(repo, "tag", "latest").exit_code == 2
    bad = run(repo, "tag", "latest", "--add", "a,b")
    assert bad.exit_code == 3 and "bad tag" in bad.stderr


def test_forget_waits_for_no_one_but_refuses_a_locked_repository(repo: Path) -> None:
    from cipherdump.repo import LocalBackend, Repository

    holder = Repository.open(LocalBackend(str(repo)), b"pw")
    try:
        result = run(repo, "forget", "--keep-last", "1")
        assert result.exit_code == 8 and "locked" in result.stderr
    finally:
        holder.close()
    assert len(snapshots(repo)) == len(DAYS) + 1
