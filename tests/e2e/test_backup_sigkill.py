"""``cipherdump backup`` killed with SIGKILL at random points leaves a repository that
``check --read-data`` passes, and the next backup succeeds and lists like the image."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared_data import REPO

CLI = [sys.executable, "-c", "from cipherdump.cli.main import main; main()"]


def _env(repo: Path) -> dict[str, str]:
    env = dict(os.environ)
    src = str(REPO / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    env.update(
        CIPHERDUMP_INSECURE_TEST_KDF="1",
        CIPHERDUMP_PASSWORD="pw",
        CIPHERDUMP_REPOSITORY=str(repo),
    )
    return env


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def source_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An unencrypted ext4 image made by mke2fs -d: 40 MiB in files of many sizes."""
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 not found")
    root = tmp_path_factory.mktemp("sigkill")
    tree = root / "tree"
    rng = random.Random(42)
    for d in range(8):
        sub = tree / f"dir{d}"
        sub.mkdir(parents=True)
        for f in range(40):
            size = rng.choice([0, 100, 5000, 70_000, 400_000])
            (sub / f"file{f}").write_bytes(rng.randbytes(size))
    (tree / "big").write_bytes(rng.randbytes(12 << 20))
    image = root / "src.img"
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-b", "4096", "-d", str(tree), str(image), "96M"],
        check=True,
        capture_output=True,
    )
    return image


def _backups_still_running(image: Path) -> list[int]:
    """Processes still backing up ``image`` (a killed backup's workers, were any left)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"backup" in argv and os.fsencode(image) in argv:
                pids.append(int(entry.name))
    return pids


@pytest.mark.parametrize("jobs", ["1", "3"])
def test_sigkill_during_backup_leaves_a_clean_repository(
    source_image: Path, tmp_path: Path, jobs: str
) -> None:
    repo = tmp_path / "repo"
    env = _env(repo)
    init = _run(env, "init", "--pack-size", "65536")
    assert init.returncode == 0, init.stderr
    # How long an uninterrupted run takes, to kill the others inside that window.
    t0 = time.monotonic()
    done = _run(env, "backup", "--no-parent", "--jobs", jobs, str(source_image))
    full = time.monotonic() - t0
    assert done.returncode == 0, done.stderr
    rng = random.Random(7)
    for point in [0.25, 0.5, 0.75, *(rng.uniform(0.1, 0.95) for _ in range(2))]:
        proc = subprocess.Popen(
            [*CLI, "backup", "--force-reread", "--no-parent", "--jobs", jobs, str(source_image)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(full * point)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        # Workers die with their parent (PR_SET_PDEATHSIG): none goes on writing.
        deadline = time.monotonic() + 10
        while _backups_still_running(source_image) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _backups_still_running(source_image) == []
        check = _run(env, "check", "--read-data")
        assert check.returncode == 0, (point, check.stdout, check.stderr)
    after = _run(env, "backup", "--jobs", jobs, str(source_image), "--json")
    assert after.returncode == 0, after.stderr
    check = _run(env, "check", "--read-data")
    assert check.returncode == 0, check.stderr
    image_ls = _run(env, "ls", "-R", "--json", str(source_image), "--repo", "")
    snap_ls = _run(env, "ls", "-R", "--json", "latest")
    assert image_ls.returncode == 0, image_ls.stderr
    assert snap_ls.stdout == image_ls.stdout
