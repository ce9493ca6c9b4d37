"""``key list/add/remove/passwd``: several passwords for one repository, as restic's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cipherdump.cli.main import cli
from cipherdump.repo import LocalBackend, Repository

BASE = {"CIPHERDUMP_INSECURE_TEST_KDF": "1"}


def run(repo: Path, password: str, *args: str) -> Result:
    env = {**BASE, "CIPHERDUMP_PASSWORD": password}
    return CliRunner().invoke(cli, [*args, "-r", str(repo)], env=env, catch_exceptions=False)


def pw_file(tmp: Path, text: str) -> str:
    path = tmp / f"pw-{text}"
    path.write_text(text + "\n")
    return str(path)


def keys(repo: Path, password: str) -> list[dict[str, object]]:
    out: list[dict[str, object]] = json.loads(run(repo, password, "key", "list", "--json").stdout)
    return out


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "r"
    assert run(path, "one", "init").exit_code == 0
    return path


def test_add_list_remove(repo: Path, tmp_path: Path) -> None:
    first = keys(repo, "one")
    assert len(first) == 1 and first[0]["current"]
    added = run(repo, "one", "key", "add", "--new-password-file", pw_file(tmp_path, "two"))
    assert added.exit_code == 0, added.output
    both = keys(repo, "two")
    assert len(both) == 2 and [k["current"] for k in both].count(True) == 1
    assert run(repo, "one", "snapshots").exit_code == 0
    text = run(repo, "two", "key", "list").stdout
    assert text.count("\n") == 2 and "argon2id" in text and text.count("*") == 1
    # The key the given password opens cannot be removed; with the other password it can.
    one_id = str(next(k["id"] for k in both if not k["current"]))
    refused = run(repo, "one", "key", "remove", one_id[:10])
    assert refused.exit_code == 4 and "another key" in refused.stderr
    done = run(repo, "two", "key", "remove", one_id[:10])
    assert done.exit_code == 0, done.output
    assert run(repo, "one", "snapshots").exit_code == 4
    assert run(repo, "two", "snapshots").exit_code == 0


def test_the_last_key_cannot_be_removed(repo: Path) -> None:
    only = str(keys(repo, "one")[0]["id"])
    with Repository.open(LocalBackend(str(repo)), b"one") as r:
        r.key_name = None  # as if opened otherwise: the last-key rule alone
        from cipherdump.errors import KeyProblem

        with pytest.raises(KeyProblem, match="last key"):
            r.remove_key(only)
    assert len(keys(repo, "one")) == 1


def test_passwd_changes_the_password_and_rewrites_no_data(tmp_path: Path) -> None:
    from lifecycle_repo import add_snapshot, make_repo

    repo = tmp_path / "r2"
    make_repo(repo)  # password "pw"
    add_snapshot(repo, "2024-01-01 12:00")
    before = {
        str(p.relative_to(repo)): p.read_bytes()
        for p in repo.rglob("*")
        if p.is_file() and p.parent.name not in ("keys", "locks")
    }
    result = run(repo, "pw", "key", "passwd", "--new-password-file", pw_file(tmp_path, "new"))
    assert result.exit_code == 0, result.output
    assert run(repo, "pw", "snapshots").exit_code == 4
    assert run(repo, "new", "check", "--read-data").exit_code == 0
    after = {
        str(p.relative_to(repo)): p.read_bytes()
        for p in repo.rglob("*")
        if p.is_file() and p.parent.name not in ("keys", "locks")
    }
    assert after == before
    assert len(keys(repo, "new")) == 1


def test_passwd_interrupted_leaves_either_password_working(repo: Path) -> None:
    # Interrupted after the new key file is saved and before the old one is removed.
    with Repository.open(LocalBackend(str(repo)), b"one") as r:
        r.add_key(b"new")
    assert run(repo, "one", "snapshots").exit_code == 0
    assert run(repo, "new", "snapshots").exit_code == 0


def test_new_password_needed_without_a_terminal(repo: Path, tmp_path: Path) -> None:
    result = run(repo, "one", "key", "add")
    assert result.exit_code == 2 and "--new-password-file" in result.output
    empty = tmp_path / "empty"
    empty.write_text("")
    result = run(repo, "one", "key", "add", "--new-password-file", str(empty))
    assert result.exit_code == 4 and "empty" in result.stderr
    assert len(keys(repo, "one")) == 1
    assert run(repo, "one", "key", "remove", "ffff").exit_code == 3
