"""The repository lifecycle on the S3 backend, against the real SeaweedFS (fixture
``seaweedfs``): forget --prune, prune of unused and repacked packs followed by
``check --read-data`` and a byte-exact restore, keys, stats, unlock, and two backups
into one S3 repository at once.  Each command runs as its own process."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import seaweed
from cipherdump.repo import FileType, Handle, Repository
from cipherdump.repo.crypto import file_id
from cipherdump.repo.location import open_backend
from cipherdump.repo.lock import LockInfo, encode_lock
from shared_data import REPO

CLI = [sys.executable, "-c", "from cipherdump.cli.main import main; main()"]

pytestmark = pytest.mark.skipif(shutil.which("mke2fs") is None, reason="needs mke2fs")


def environ(env: dict[str, str], pw: str = "pw") -> dict[str, str]:
    return {
        **env,
        "PYTHONPATH": str(REPO / "src"),
        "CIPHERDUMP_INSECURE_TEST_KDF": "1",
        "CIPHERDUMP_PASSWORD": pw,
    }


def run(
    *args: str | Path, env: dict[str, str], pw: str = "pw", code: int = 0
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*CLI, *map(str, args)],
        env=environ(env, pw),
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert proc.returncode == code, (args, proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def make_image(where: Path, seed: int) -> Path:
    """A small ext4 image: one file every image shares, and files of its own."""
    tree = where / f"tree{seed}"
    (tree / "d").mkdir(parents=True)
    (tree / "shared").write_bytes(b"".join(i.to_bytes(4, "big") for i in range(30_000)))
    for i in range(4):
        (tree / "d" / f"f{i}").write_bytes(os.urandom(30_000 + 977 * i + seed))
    image = where / f"img{seed}.img"
    subprocess.run(
        ["mke2fs", "-q", "-F", "-t", "ext4", "-d", str(tree), str(image), "4M"],
        check=True,
        capture_output=True,
    )
    return image


def backup(image: Path, env: dict[str, str]) -> str:
    out = run("backup", "--json", image, env=env).stdout
    return str(json.loads(out.splitlines()[-1])["snapshot_id"])


def files_of(image: Path, env: dict[str, str]) -> dict[str, bytes]:
    """Every regular file's bytes, as cipherdump reads the image."""
    env = {k: v for k, v in env.items() if k != "CIPHERDUMP_REPOSITORY"}  # an image, not a snapshot
    listing = run("ls", "-R", "--json", image, "/", env=env).stdout
    paths = [r["path"] for r in map(json.loads, listing.splitlines()) if r["type"] == "file"]
    return {
        p: subprocess.run(
            [*CLI, "cat", str(image), p], env=environ(env), capture_output=True, check=True
        ).stdout
        for p in paths
    }


def assert_restores(sid: str, image: Path, tmp_path: Path, env: dict[str, str]) -> None:
    restored = tmp_path / f"restored-{sid[:8]}.img"
    run("restore", sid[:12], "--to-image", restored, env=env)
    expected = files_of(image, env)
    assert len(expected) == 5
    assert files_of(restored, env) == expected


@pytest.fixture
def s3(seaweedfs: seaweed.SeaweedFS) -> dict[str, str]:
    env = seaweedfs.env(CIPHERDUMP_REPOSITORY=seaweedfs.location())
    run("init", env=env)
    return env


def test_forget_prune_check_and_restore_on_s3(s3: dict[str, str], tmp_path: Path) -> None:
    images = [make_image(tmp_path, seed) for seed in range(3)]
    ids = [backup(image, s3) for image in images]
    plan = run("forget", "--keep-last", "1", "--group-by", "", "--dry-run", "--json", env=s3)
    assert "keep" in plan.stdout or "remove" in plan.stdout
    # The first pack mixes the shared file (used by all) with the first snapshot's own
    # files: forgetting that snapshot leaves it partly used, to be repacked.
    run("forget", "--keep-last", "2", "--group-by", "", env=s3)
    stats = json.loads(run("prune", "--max-unused", "0", "--json", env=s3).stdout)
    assert stats["packs_repacked"] >= 1 and stats["blobs_repacked"] >= 1, stats
    assert stats["freed"] > 0 and stats["unused_after"] == 0, stats
    run("check", "--read-data", env=s3)
    assert_restores(ids[1], images[1], tmp_path, s3)
    # The second snapshot's packs hold only what it alone used: removed whole.
    pruned = run("forget", "--keep-last", "1", "--group-by", "", "--prune", env=s3).stdout
    found = re.search(r"remove (\d+) unused packs", pruned)
    assert found is not None and int(found.group(1)) >= 1, pruned
    listed = json.loads(run("snapshots", "--json", env=s3).stdout)
    assert [s["id"] for s in listed] == [ids[2]]
    run("check", "--read-data", env=s3)
    assert_restores(ids[2], images[2], tmp_path, s3)
    again = json.loads(run("prune", "--max-unused", "0", "--json", env=s3).stdout)
    assert again["freed"] == 0 and again["packs_removed"] == 0, again


def test_keys_stats_and_unlock_on_s3(
    s3: dict[str, str], seaweedfs: seaweed.SeaweedFS, tmp_path: Path
) -> None:
    backup(make_image(tmp_path, 0), s3)
    new = tmp_path / "two"
    new.write_text("two\n")
    run("key", "add", "--new-password-file", new, env=s3)
    keys = json.loads(run("key", "list", "--json", env=s3, pw="two").stdout)
    assert len(keys) == 2
    old = next(k["id"] for k in keys if not k["current"])
    run("key", "remove", old[:10], env=s3, pw="two")
    run("snapshots", env=s3, pw="pw", code=4)
    third = tmp_path / "three"
    third.write_text("three\n")
    run("key", "passwd", "--new-password-file", third, env=s3, pw="two")
    run("snapshots", env=s3, pw="three")
    assert len(json.loads(run("key", "list", "--json", env=s3, pw="three").stdout)) == 1
    # The last key stays.
    only = json.loads(run("key", "list", "--json", env=s3, pw="three").stdout)[0]["id"]
    run("key", "remove", only[:10], env=s3, pw="three", code=4)
    run("check", "--read-data", env=s3, pw="three")
    stats = json.loads(run("stats", "--json", env=s3, pw="three").stdout)
    total = stats["total"]
    assert [snap["blobs"] for snap in stats["snapshots"]] == [total["blobs"]], stats
    assert total["blobs"] == stats["indexed_blobs"] and stats["unused_bytes"] == 0, stats
    assert stats["packs"] >= 1 and stats["pack_bytes"] >= total["stored"] > 0, stats
    assert total["logical"] >= 4 * 30_000, stats
    # unlock: a stale lock (a dead process on this host) goes, a live one stays.
    backend = open_backend(s3["CIPHERDUMP_REPOSITORY"], seaweedfs.env())
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with Repository.open(backend, b"three", lock=False) as repo:
        data = encode_lock(repo._key, LockInfo(time.time_ns(), socket.gethostname(), gone.pid))
    backend.save(Handle(FileType.LOCK, file_id(data).hex), io.BytesIO(data))
    removed = json.loads(run("unlock", "--json", env=s3, pw="three").stdout)["removed"]
    assert [r["lock"] for r in removed] == [file_id(data).hex]
    assert list(backend.list(FileType.LOCK)) == []


def test_two_backups_at_once_into_one_s3_repository(s3: dict[str, str], tmp_path: Path) -> None:
    images = [make_image(tmp_path, seed) for seed in range(2)]
    procs = [
        subprocess.Popen(
            [*CLI, "backup", "--json", str(image)],
            env=environ(s3),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for image in images
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for proc, (_out, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err
    run("check", "--read-data", env=s3)
    for image, (out, _err) in zip(images, outs, strict=True):
        assert_restores(json.loads(out.splitlines()[-1])["snapshot_id"], image, tmp_path, s3)
