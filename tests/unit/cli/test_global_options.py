"""Options before the command, as restic takes them (``cipherdump -r REPO snapshots``):
each reaches every command that has the option; the command's own spelling wins over
it, and it wins over the environment; commands without the option ignore it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cipherdump.cli.main import cli
from shared_data import REPO

SAMPLE = REPO / "examples" / "sample.img"
ENV = {"CIPHERDUMP_INSECURE_TEST_KDF": "1", "CIPHERDUMP_PASSWORD": "pw"}


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env={**ENV, **(env or {})})


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "r"
    assert run("-r", str(path), "init").exit_code == 0
    made = run("-r", str(path), "--json", "backup", str(SAMPLE))
    assert made.exit_code == 0, made.output
    return path


def snapshot_ids(result: Result) -> list[str]:
    assert result.exit_code == 0, result.output
    return [s["id"] for s in json.loads(result.stdout)]


def test_repo_before_the_command(repo: Path) -> None:
    before = run("-r", str(repo), "snapshots")
    assert before.exit_code == 0, before.output
    assert before.stdout == run("snapshots", "-r", str(repo)).stdout
    assert len(snapshot_ids(run("--repo", str(repo), "--json", "snapshots"))) == 1
    # A subgroup's commands take it too.
    keys = run("-r", str(repo), "--json", "key", "list")
    assert keys.exit_code == 0 and json.loads(keys.stdout)[0]["current"]
    # ls, stat and cat read a snapshot, as with CIPHERDUMP_REPOSITORY.
    listed = run("-r", str(repo), "ls", "latest", "/")
    assert listed.exit_code == 0 and "README.txt" in listed.stdout


def test_the_commands_own_spelling_wins_then_the_global_then_the_environment(
    repo: Path, tmp_path: Path
) -> None:
    missing = str(tmp_path / "missing")
    # The command's own -r over the one before it (in either order of mistakes).
    assert snapshot_ids(run("-r", missing, "--json", "snapshots", "-r", str(repo)))
    wrong = run("-r", str(repo), "snapshots", "-r", missing)
    assert wrong.exit_code == 3 and "missing" in wrong.output
    # The global -r over CIPHERDUMP_REPOSITORY; the environment when nothing is given.
    env = {"CIPHERDUMP_REPOSITORY": missing}
    assert snapshot_ids(run("-r", str(repo), "--json", "snapshots", env=env))
    assert run("snapshots", env=env).exit_code == 3
    assert snapshot_ids(run("--json", "snapshots", env={"CIPHERDUMP_REPOSITORY": str(repo)}))


def test_password_file_before_the_command(repo: Path, tmp_path: Path) -> None:
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text("pw\n")
    bad.write_text("nope\n")
    no_env = {"CIPHERDUMP_PASSWORD": ""}
    ok = run("-r", str(repo), "--password-file", str(good), "--json", "snapshots", env=no_env)
    assert snapshot_ids(ok)
    own = run(
        "--password-file", str(bad), "--json", "snapshots", "-r", str(repo),
        "--password-file", str(good), env=no_env,
    )  # fmt: skip
    assert snapshot_ids(own)
    refused = run(
        "--password-file", str(good), "snapshots", "-r", str(repo),
        "--password-file", str(bad), env=no_env,
    )  # fmt: skip
    assert refused.exit_code == 4, refused.output


def test_json_and_verbose_before_the_command_reach_the_commands_that_have_them(
    repo: Path, tmp_path: Path
) -> None:
    info = run("--json", "info", str(SAMPLE))
    assert info.exit_code == 0 and json.loads(info.stdout)["block_size"] == 1024
    assert json.loads(run("--json", "stats", "-r", str(repo)).stdout)["packs"] > 0
    restored = run(
        "-v", "--json", "-r", str(repo), "restore", "latest", "--path", "/public",
        "--target", str(tmp_path / "t"),
    )  # fmt: skip
    assert restored.exit_code == 0, restored.output
    summary = json.loads(restored.stdout)
    assert summary["target"] == str(tmp_path / "t")
    assert "hello.txt" in restored.stderr  # -v lines go to stderr beside --json
    # A command without --json (cat) or -v ignores them.
    cat = run("--json", "-v", "cat", str(SAMPLE), "/README.txt")
    assert cat.exit_code == 0 and not cat.stdout.startswith("{")


def test_commands_that_take_no_repository_ignore_a_global_one(repo: Path, tmp_path: Path) -> None:
    for args in (
        ["info", str(SAMPLE)],
        ["version"],
        ["completion", "bash"],
        ["clone", str(SAMPLE), str(tmp_path / "c.img")],
    ):
        result = run("-r", str(repo), *args)
        assert result.exit_code == 0, (args, result.output)


def test_storage_options_before_the_command(repo: Path, tmp_path: Path) -> None:
    """--cache-dir/--no-cache/--connections before the command set the same run
    settings as after it (the command's own, processed later, wins)."""
    import click

    from cipherdump.cli import sources

    seen: list[dict[str, str]] = []

    @cli.command(name="show-settings")
    @sources.repo_option
    def show(repo: str | None) -> None:
        del repo
        seen.append(sources.storage_settings())

    try:
        cache = str(tmp_path / "c1")
        args = ["--cache-dir", cache, "--no-cache", "--connections", "7", "show-settings"]
        assert run(*args).exit_code == 0
        assert run(*args, "--cache-dir", str(tmp_path / "c2")).exit_code == 0
    finally:
        del cli.commands["show-settings"]
    assert seen[0]["CIPHERDUMP_CACHE_DIR"] == cache
    assert seen[0]["CIPHERDUMP_NO_CACHE"] == "1"
    assert seen[0]["CIPHERDUMP_S3_CONNECTIONS"] == "7"
    assert seen[1]["CIPHERDUMP_CACHE_DIR"] == str(tmp_path / "c2")
    assert isinstance(cli, click.Group)


def test_quiet_and_verbose_contradict() -> None:
    result = run("-q", "-v", "version")
    assert result.exit_code == 2 and "contradict" in result.output
    assert run("-q", "version").exit_code == 0
