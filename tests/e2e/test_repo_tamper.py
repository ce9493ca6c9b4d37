"""Tampered repositories, met by every command that reads one.

Each kind of damage found by the adversarial review (issue #14) stands for a class:
packs with a changed byte, cut short, swapped with another or moved into the wrong
folder; damaged index files; damaged snapshot files.  Every command that reads a
repository must meet each with its documented exit code and one-line errors (never
an internal error, exit 70, never a traceback), and leave the repository usable: the
repairs and a backup that reads everything make it whole again.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cipherdump.cli.main import cli
from shared_data import REPO

EXAMPLES = REPO / "examples"
SAMPLE = EXAMPLES / "sample.img"
KEYS = ["--key", str(EXAMPLES / "alice.key"), "--key", str(EXAMPLES / "bob.key")]
ENV = {"CIPHERDUMP_INSECURE_TEST_KDF": "1", "CIPHERDUMP_PASSWORD": "x"}


def run(repo: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, [*args, "-r", str(repo)], env=ENV, catch_exceptions=False)


def _packs(repo: Path) -> list[Path]:
    return sorted((repo / "data").glob("*/*"), key=lambda p: (p.stat().st_size, p.name))


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


def flip_pack(repo: Path) -> None:
    pack = _packs(repo)[-1]
    _flip(pack, pack.stat().st_size // 2)


def flip_pack_header(repo: Path) -> None:
    pack = _packs(repo)[-1]
    _flip(pack, pack.stat().st_size - 20)


def truncate_pack(repo: Path) -> None:
    pack = _packs(repo)[-1]
    os.truncate(pack, pack.stat().st_size // 2)


def swap_packs(repo: Path) -> None:
    a, b = _packs(repo)[0], _packs(repo)[-1]
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)
    b.write_bytes(data_a)


def move_pack(repo: Path) -> None:
    pack = _packs(repo)[-1]
    other = repo / "data" / ("00" if pack.parent.name != "00" else "01")
    other.mkdir(exist_ok=True)
    pack.rename(other / pack.name)


def flip_index(repo: Path) -> None:
    for index_file in (repo / "index").iterdir():
        _flip(index_file, 100)


def flip_snapshot(repo: Path) -> None:
    for snapshot in (repo / "snapshots").iterdir():
        _flip(snapshot, 60)


DAMAGE: dict[str, Callable[[Path], None]] = {
    "flip-pack": flip_pack,
    "flip-pack-header": flip_pack_header,
    "truncate-pack": truncate_pack,
    "swap-packs": swap_packs,
    "move-pack": move_pack,
    "flip-index": flip_index,
    "flip-snapshot": flip_snapshot,
}

COMMANDS: dict[str, list[str]] = {
    "backup": ["backup", str(SAMPLE)],
    "restore-target": ["restore", "latest", "--target", "{tmp}/t", *KEYS],
    "restore-image": ["restore", "latest", "--to-image", "{tmp}/o.img"],
    "check": ["check"],
    "check-read-data": ["check", "--read-data"],
    "ls": ["ls", "-lR", "latest"],
    "snapshots": ["snapshots"],
}

# The documented exit code of each command on each damage.  0: the damage is not
# where the command looks (or it is passed over with a warning); 1: some objects
# could not be read, each named; 3: no snapshot to read (the only one is damaged);
# 5: repository damage.
EXPECTED: dict[str, dict[str, int]] = {
    "flip-pack": {"restore-target": 1, "restore-image": 5, "check-read-data": 5},
    "flip-pack-header": {"check-read-data": 5},
    "truncate-pack": {"restore-target": 1, "restore-image": 5, "check": 5, "check-read-data": 5},
    "swap-packs": {
        "restore-target": 1,
        "restore-image": 5,
        "check": 5,
        "check-read-data": 5,
        "ls": 1,
    },
    "move-pack": {"restore-target": 1, "restore-image": 5, "check": 5, "check-read-data": 5},
    "flip-index": {
        "restore-target": 1,
        "restore-image": 5,
        "check": 5,
        "check-read-data": 5,
        "ls": 1,
    },
    "flip-snapshot": {
        "restore-target": 3,
        "restore-image": 3,
        "check": 5,
        "check-read-data": 5,
        "ls": 3,
        "snapshots": 5,
    },
}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pristine") / "r"
    assert run(path, "init").exit_code == 0
    assert run(path, "backup", str(SAMPLE)).exit_code == 0
    return path


def _copy(src: Path, dst: Path) -> None:
    for item in src.rglob("*"):
        target = dst / item.relative_to(src)
        if item.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(item.read_bytes())


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_tampered_repository(pristine: Path, tmp_path: Path, damage: str, command: str) -> None:
    repo = tmp_path / "r"
    _copy(pristine, repo)
    DAMAGE[damage](repo)
    args = [a.replace("{tmp}", str(tmp_path)) for a in COMMANDS[command]]
    result = run(repo, *args)
    assert result.exit_code == EXPECTED[damage].get(command, 0), result.output
    assert "Traceback" not in result.output and "internal error" not in result.stderr
    for line in result.stderr.splitlines():
        assert line.startswith(("cipherdump: ", "error: ")), line
    if command == "restore-image" and result.exit_code:
        assert not (tmp_path / "o.img").exists()  # a half-written new image is removed
    _usable_again(repo, damage)


def _usable_again(repo: Path, damage: str) -> None:
    """The repairs restic would run, then a backup that reads everything: every
    snapshot readable, and check --read-data clean but for a damaged snapshot file."""
    assert run(repo, "repair", "index").exit_code in (0, 5)
    assert run(repo, "repair", "packs").exit_code in (0, 5)
    result = run(repo, "backup", "--force-reread", str(SAMPLE))
    assert result.exit_code == 0, result.output
    check = run(repo, "check", "--read-data")
    if damage == "flip-snapshot":
        assert check.exit_code == 5 and check.stderr.count("error: snapshots/") == 1
    else:
        assert check.exit_code == 0, check.output
    assert run(repo, "ls", "-R", "latest").exit_code == 0


def test_a_pack_in_the_wrong_folder_is_named_and_put_back(pristine: Path, tmp_path: Path) -> None:
    repo = tmp_path / "r"
    _copy(pristine, repo)
    pack = _packs(repo)[-1]
    move_pack(repo)
    check = run(repo, "check")
    assert check.exit_code == 5
    assert f"{pack.name}: in the wrong folder" in check.stderr
    assert "missing, but index/" in check.stderr
    result = run(repo, "repair", "packs")
    assert result.exit_code == 0 and "moved back" in result.stdout
    assert pack.exists()
    assert run(repo, "check", "--read-data").exit_code == 0


def test_check_tells_a_live_writer_from_an_interrupted_one(pristine: Path, tmp_path: Path) -> None:
    """Packs not yet indexed and temporary files are a live writer's while its lock is
    held (not stale), and leftovers of a dead one otherwise."""
    from cipherdump.repo import LocalBackend, Repository

    repo = tmp_path / "r"
    _copy(pristine, repo)
    for index_file in (repo / "index").iterdir():
        index_file.unlink()  # every pack unreferenced, as a writer's before its index
    (repo / "data" / ".tmp-0123456789abcdef").write_bytes(b"partial pack")
    # A backup's lock is shared: check, a reader, runs beside it.
    writer = Repository.open(LocalBackend(repo), b"x", lock=True, exclusive=False)
    try:
        (repo / "data" / ".tmp-0123456789abcdef").write_bytes(b"partial pack")
        live = run(repo, "check")
    finally:
        writer.close()
    assert "being written by the live writer holding locks/" in live.stdout
    assert "1 temporary files, being written by the live writer" in live.stdout
    assert "left by an interrupted run" in live.stdout  # (which one is unknown per pack)
    dead = run(repo, "check")
    assert "live writer" not in dead.stdout
    assert "unreferenced pack (left by an interrupted run)" in dead.stdout
    assert "1 temporary files left by an interrupted run" in dead.stdout
