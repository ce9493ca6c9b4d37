"""Shared locks end to end: several backups into one repository at once, prune and
forget refused while a backup holds its lock, and ``unlock``."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cipherdump.cli.main import cli
from cipherdump.repo import FileType, Handle, LocalBackend, Repository
from cipherdump.repo.crypto import file_id
from cipherdump.repo.lock import STALE_AFTER_NS, LockInfo, encode_lock
from shared_data import REPO

ENV = {"CIPHERDUMP_INSECURE_TEST_KDF": "1", "CIPHERDUMP_PASSWORD": "pw"}
SRC = str(REPO / "src")
MAIN = "from cipherdump.cli.main import main; main()"


def run(repo: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, [*args, "-r", str(repo)], env=ENV, catch_exceptions=False)


def make_image(where: Path, seed: int) -> Path:
    """A small ext4 image of its own files (mke2fs -d), different for each seed."""
    tree = where / f"tree{seed}"
    (tree / "d").mkdir(parents=True)
    for i in range(6):
        (tree / "d" / f"f{i}").write_bytes(os.urandom(40_000 + 977 * i + seed))
    (tree / "note").write_text(f"image {seed}\n")
    image = where / f"img{seed}.img"
    subprocess.run(
        ["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(tree), str(image), "4M"],
        check=True,
        capture_output=True,
    )
    return image


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "r"
    assert run(path, "init").exit_code == 0
    return path


def _listing(*args: str) -> str:
    return CliRunner().invoke(cli, ["ls", "-R", "--json", *args], env=ENV).stdout


def _cat(image: str, path: str) -> bytes:
    result = CliRunner().invoke(cli, ["cat", image, path], env=ENV)
    assert result.exit_code == 0, result.output
    return result.stdout_bytes


@pytest.mark.parametrize("count", [2, 4])
def test_concurrent_backups_into_one_repository(repo: Path, tmp_path: Path, count: int) -> None:
    if shutil.which("mke2fs") is None:
        pytest.skip("needs mke2fs")
    images = [make_image(tmp_path, seed) for seed in range(count)]
    # A shared lock held all along: every backup must run beside another lock holder.
    beside = Repository.open(LocalBackend(str(repo)), b"pw", exclusive=False)
    try:
        env = {**os.environ, **ENV, "PYTHONPATH": SRC, "CIPHERDUMP_REPOSITORY": str(repo)}
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", MAIN, "backup", "--json", str(img)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for img in images
        ]
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        beside.close()
    for proc, (_out, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err
    ids = [json.loads(out.splitlines()[-1])["snapshot_id"] for out, _ in outs]
    check = run(repo, "check", "--read-data")
    assert check.exit_code == 0, check.output
    for image, sid in zip(images, ids, strict=True):
        assert _listing("-r", str(repo), sid[:12]) == _listing(str(image))
        restored = tmp_path / f"restored-{sid[:8]}.img"
        result = run(repo, "restore", sid[:12], "--to-image", str(restored))
        assert result.exit_code == 0, result.output
        files = [
            rec["path"]
            for rec in map(json.loads, _listing(str(image)).splitlines())
            if rec["type"] == "file"
        ]
        assert len(files) == 7
        for path in files:
            assert _cat(str(restored), path) == _cat(str(image), path)
    assert not list((repo / "locks").iterdir())


def test_prune_forget_and_repairs_refuse_while_a_backup_runs(repo: Path) -> None:
    backup = Repository.open(LocalBackend(str(repo)), b"pw", exclusive=False)
    try:
        for args in (
            ("prune",),
            ("forget", "--keep-last", "1"),
            ("repair", "index"),
            ("tag", "latest", "--add", "x"),
        ):
            result = run(repo, *args)
            assert result.exit_code == 8, (args, result.output)
            assert "(shared lock)" in result.stderr and "needs it alone" in result.stderr
            assert len(result.stderr.strip().splitlines()) == 1
        # Readers and other backups go on.
        assert run(repo, "snapshots").exit_code == 0
        assert run(repo, "check").exit_code == 0
    finally:
        backup.close()
    assert run(repo, "prune").exit_code == 0


def _plant(repo: Path, info: LockInfo) -> str:
    with Repository.open(LocalBackend(str(repo)), b"pw", lock=False) as r:
        data = encode_lock(r._key, info)
    name = file_id(data).hex
    LocalBackend(str(repo)).save(Handle(FileType.LOCK, name), io.BytesIO(data))
    return name


def test_unlock_removes_only_stale_locks_unless_told(repo: Path) -> None:
    host = socket.gethostname()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = _plant(repo, LockInfo(time.time_ns(), host, gone.pid))
    old = _plant(repo, LockInfo(time.time_ns() - STALE_AFTER_NS - 1, "elsewhere", 9))
    live = _plant(repo, LockInfo(time.time_ns(), "elsewhere", 9, exclusive=False))
    result = run(repo, "unlock", "--json")
    assert result.exit_code == 0, result.output
    removed = {r["lock"] for r in json.loads(result.stdout)["removed"]}
    assert removed == {dead, old}
    assert [p.name for p in (repo / "locks").iterdir()] == [live]
    # The live shared lock lets backups run but keeps prune out.
    assert run(repo, "prune").exit_code == 8
    forced = run(repo, "unlock", "--remove-all")
    assert forced.exit_code == 0 and "warning" in forced.stderr
    assert "pid 9 on elsewhere" in forced.stdout
    assert not list((repo / "locks").iterdir())


def test_prune_racing_backups_loses_nothing(repo: Path, tmp_path: Path) -> None:
    if shutil.which("mke2fs") is None:
        pytest.skip("needs mke2fs")
    images = [make_image(tmp_path, seed) for seed in range(3)]
    env = {**os.environ, **ENV, "PYTHONPATH": SRC, "CIPHERDUMP_REPOSITORY": str(repo)}
    for image in images[:2]:  # something to forget and prune
        assert run(repo, "backup", str(image)).exit_code == 0
    assert run(repo, "forget", "--keep-last", "1", "--group-by", "").exit_code == 0
    for round_ in range(3):
        image = images[round_]

        def start(*args: str) -> subprocess.Popen[str]:
            return subprocess.Popen(
                [sys.executable, "-c", MAIN, *args],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )

        backup = start("backup", "--json", str(image))
        prune = start("prune", "--max-unused", "0")
        b_out, b_err = backup.communicate(timeout=300)
        _, p_err = prune.communicate(timeout=300)
        # Whichever came second was refused (exit 8) or both ran one after the other.
        assert backup.returncode in (0, 8), b_err
        assert prune.returncode in (0, 8), p_err
        check = run(repo, "check", "--read-data")
        assert check.exit_code == 0, check.output
        if backup.returncode == 0:
            sid = json.loads(b_out.splitlines()[-1])["snapshot_id"]
            assert _listing("-r", str(repo), sid[:12]) == _listing(str(image))
    # Every snapshot left still reads whole.
    assert run(repo, "prune", "--max-unused", "0").exit_code == 0
    assert run(repo, "check", "--read-data").exit_code == 0


def test_a_shared_lock_sweeps_temporary_files_only_when_alone(repo: Path) -> None:
    # What a killed backup left is removed by the next one, unless another process
    # holds a lock: then it may be that process's pack in the making.
    leftover = repo / "data" / ".tmp-0123456789abcdef"
    other = Repository.open(LocalBackend(str(repo)), b"pw", exclusive=False)
    try:
        leftover.write_bytes(b"half a pack")
        Repository.open(LocalBackend(str(repo)), b"pw", exclusive=False).close()
        assert leftover.exists()
    finally:
        other.close()
    Repository.open(LocalBackend(str(repo)), b"pw", exclusive=False).close()
    assert not leftover.exists()
    # A lock being written by another process now is left alone.
    (repo / "locks" / ".tmp-0123456789abcdef").write_bytes(b"a lock")
    Repository.open(LocalBackend(str(repo)), b"pw", exclusive=False).close()
    assert (repo / "locks" / ".tmp-0123456789abcdef").exists()
