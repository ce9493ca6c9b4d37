"""The target image of ``clone`` and ``restore --to-image``: who may write it, its mode,
its size, and what a kill at any write leaves of it.

The writer is killed with ``strace -e inject=pwrite64:signal=KILL:when=N`` (the writer
writes the image with ``pwrite64`` only, which the first test checks), then e2fsck and
cipherdump's reader look at what is left, and a rerun finishes the job.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from cipherdump.cli.main import cli
from cipherdump.engine.restore_image import TargetFacts, make_image
from cipherdump.errors import OutputError
from cipherdump.ext4 import open_filesystem
from shared_data import REPO

SAMPLE = REPO / "examples" / "sample.img"
CLI = [sys.executable, "-c", "from cipherdump.cli.main import main; main()"]
OLD = {"/old.txt": b"old text\n", "/olddir/data.bin": bytes(range(256)) * 20}

needs_e2fsprogs = pytest.mark.skipif(
    shutil.which("mke2fs") is None or shutil.which("debugfs") is None, reason="no e2fsprogs"
)
needs_strace = pytest.mark.skipif(shutil.which("strace") is None, reason="no strace")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    src = str(REPO / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _clone(
    out: Path, *extra: str, strace: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [*(strace or []), *CLI, "clone", str(SAMPLE), str(out), *extra]
    return subprocess.run(
        argv, env=_env(), capture_output=True, text=True, timeout=120, check=False
    )


def _cat(image: Path, path: str) -> bytes:
    result = CliRunner().invoke(cli, ["cat", str(image), path])
    assert result.exit_code == 0, result.output
    return result.stdout_bytes


def _names(image: Path) -> set[str]:
    result = CliRunner().invoke(cli, ["ls", str(image), "/"])
    assert result.exit_code == 0, result.output
    return set(result.output.split())


def _fsck(image: Path, *flags: str) -> tuple[int, str]:
    proc = subprocess.run(
        ["e2fsck", *flags, str(image)], capture_output=True, text=True, timeout=120, check=False
    )
    return proc.returncode, proc.stdout + proc.stderr


def _make_existing(root: Path, size: str, *layout: str) -> Path:
    """An ext4 image (1 KiB blocks like the sample, encrypt) holding files of its own,
    with a deleted file's free inode below the used ones."""
    if shutil.which("mke2fs") is None or shutil.which("debugfs") is None:
        pytest.skip("no e2fsprogs")
    tree = root / "tree"
    (tree / "olddir").mkdir(parents=True)
    for path, data in OLD.items():
        (tree / path.lstrip("/")).write_bytes(data)
    (tree / "gone.txt").write_bytes(b"deleted\n")
    (tree / "zz.txt").write_bytes(b"after\n")
    image = root / "existing.img"
    subprocess.run(
        ["mke2fs", "-q", "-F", "-t", "ext4", "-b", "1024", "-O", "encrypt", *layout,
         "-d", str(tree), str(image), size],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        ["debugfs", "-w", "-R", "rm gone.txt", str(image)], check=True, capture_output=True
    )
    assert _fsck(image, "-fn")[0] == 0
    return image


@pytest.fixture(scope="module")
def existing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One block group: the new inodes fit its unused tail."""
    return _make_existing(tmp_path_factory.mktemp("existing"), "4M")


@pytest.fixture(scope="module")
def existing_groups(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four groups of 16 inodes: the new inodes spill into INODE_UNINIT groups, and
    the link names inodes of several groups' tails."""
    return _make_existing(tmp_path_factory.mktemp("groups"), "8M", "-N", "64", "-g", "2048")


def _old_intact(image: Path) -> None:
    for path, data in OLD.items():
        assert _cat(image, path) == data, path


# -- mode --------------------------------------------------------------------------


def test_new_image_is_created_0600(tmp_path: Path) -> None:
    """A key-less image holds every unencrypted file of its source: only its owner may
    read it, from the moment it exists (whatever the umask)."""
    out = tmp_path / "new.img"
    old = os.umask(0o022)
    try:
        result = CliRunner().invoke(cli, ["clone", str(SAMPLE), str(out)])
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert not Path(f"{out}.partial").exists()


# -- size ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["70K", "100T"])
def test_bad_size_is_one_line_and_leaves_nothing(tmp_path: Path, size: str) -> None:
    out = tmp_path / "sized.img"
    result = CliRunner().invoke(cli, ["clone", str(SAMPLE), str(out), "--size", size])
    assert result.exit_code == 7, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert "Traceback" not in result.output
    assert sorted(os.listdir(tmp_path)) == []
    again = CliRunner().invoke(cli, ["clone", str(SAMPLE), str(out), "--size", "2M"])
    assert again.exit_code == 0, again.output
    assert out.stat().st_size == 2 << 20


def test_mke2fs_failure_is_one_line(tmp_path: Path) -> None:
    """What mke2fs refuses comes back as one line, without its line breaks."""
    with open_filesystem(str(SAMPLE)) as fs:
        facts = TargetFacts.from_filesystem(fs)
    image = tmp_path / "tiny.img"
    image.write_bytes(bytes(70 << 10))
    with pytest.raises(OutputError) as info:
        make_image(str(image), facts, size=70 << 10, keep_uuid=True, min_inodes=300)
    message = str(info.value)
    assert "\n" not in message and "mke2fs" in message and "inode" in message


# -- two writers ---------------------------------------------------------------------


@needs_strace
@pytest.mark.parametrize("target", ["new", "existing"])
def test_second_writer_is_refused(existing: Path, tmp_path: Path, target: str) -> None:
    """A first clone, held at its first fsync, keeps the image locked: a second one
    exits 7 with one line at once, and the first one's tree is whole."""
    out = tmp_path / "target.img"
    if target == "existing":
        shutil.copy(existing, out)
    log = tmp_path / "first.log"
    hold = ["strace", "-f", "-o", str(log), "-e", "trace=pwrite64,fsync",
            "-e", "inject=fsync:delay_enter=2500000:when=1"]  # fmt: skip
    first = subprocess.Popen(
        [*hold, *CLI, "clone", str(SAMPLE), str(out)], env=_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # The lock is taken before the first write; the first fsync then waits 2.5 s.
        for _ in range(400):
            if log.exists() and "pwrite64(" in log.read_text():
                break
            time.sleep(0.02)
        second = _clone(out)
        assert second.returncode == 7, second.stderr
        assert second.stderr.count("\n") == 1, second.stderr
        assert "another cipherdump is writing this image" in second.stderr
    finally:
        _, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    assert _fsck(out, "-fn")[0] == 0
    assert _cat(out, "/README.txt") == _cat(SAMPLE, "/README.txt")
    if target == "existing":
        _old_intact(out)


# -- kills ---------------------------------------------------------------------------


def _image_writes(out: Path, log: Path) -> tuple[int, int]:
    """Clone once under strace: the image sees no write call but pwrite64, and
    ``(pwrite64 calls of cipherdump's own process, most of any child's)``.  strace
    counts ``when=N`` per process, and mke2fs runs as a child for a new image."""
    result = _clone(
        out,
        strace=["strace", "-f", "-y", "-o", str(log), "-e",
                "trace=pwrite64,pwritev,pwritev2,write,writev"],
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = log.read_text().splitlines()
    touching = [ln for ln in lines if f"<{out}" in ln]
    assert touching and all(ln.split(None, 1)[1].startswith("pwrite64(") for ln in touching), (
        touching[:3]
    )
    counts: dict[str, int] = {}
    for ln in lines:
        pid, call = ln.split(None, 1)
        if call.startswith("pwrite64("):
            counts[pid] = counts.get(pid, 0) + 1
    main = lines[0].split(None, 1)[0]
    return counts.get(main, 0), max([c for p, c in counts.items() if p != main], default=0)


# What e2fsck -fn may report after a kill: blocks and inodes marked in use that nothing
# uses (never the reverse), counts, bitmap checksums, and -- killed between the link
# and the descriptor write that follows it -- entries naming inodes in a group's unused
# tail (with what -n then says of them, not having been allowed to lower the tail and
# start again).
_ALLOWED = [
    r"e2fsck \d.*",
    r"Pass \d: .*",
    # Only "-": marked in use, used by nothing.  A "+" (used, marked free) would let
    # the next allocation overwrite a file.
    r"(Block|Inode) bitmap differences: ( +-(\d+|\(\d+--\d+\)))+",
    r"Fix\? no",
    r"Free (blocks|inodes) count wrong.*",
    r"Directories count wrong for group #\d+.*",
    r"(Block|Inode) bitmap differences: Group \d+ (block|inode) bitmap does not match checksum\.",
    r"IGNORED\.",
    r"Entry '[^']*' in / \(2\) references inode \d+ found in group \d+'s unused inodes area\.",
    r"Entry '[^']*' in / \(2\) has deleted/unused inode \d+\.  Clear\? no",
    r"Inode 2 ref count is \d+, should be \d+\.  Fix\? no",
    r".*: \*+ WARNING: Filesystem still has errors \*+",
    r".*: \d+/\d+ files .*",
]


def _check_fsck_after_kill(image: Path, n: int) -> None:
    rc, report = _fsck(image, "-fn")
    if rc == 0:
        return
    odd = [
        ln for ln in report.splitlines()
        if ln.strip() and not any(re.fullmatch(p, ln.strip()) for p in _ALLOWED)
    ]  # fmt: skip
    assert not odd, (n, odd, report)
    # Each of those is repaired by e2fsck -p without a question, and then it is clean.
    preened = image.with_suffix(".preened")
    shutil.copy(image, preened)
    rc, report = _fsck(preened, "-fp")
    assert rc in (0, 1), (n, report)
    assert _fsck(preened, "-fn")[0] == 0, (n, _fsck(preened, "-fn")[1])
    _old_intact(preened)
    if "README.txt" in _names(image):
        assert _cat(preened, "/README.txt") == _cat(SAMPLE, "/README.txt")
    preened.unlink()


def _kill_existing(existing: Path, tmp_path: Path, points: Iterator[int] | None) -> None:
    work = tmp_path / "t.img"
    shutil.copy(existing, work)
    total, _ = _image_writes(work, tmp_path / "count.log")
    assert total > 10
    for n in points if points is not None else range(1, total + 1):
        shutil.copy(existing, work)
        kill = ["strace", "-f", "-o", os.devnull, "-e", f"inject=pwrite64:signal=KILL:when={n}"]
        assert _clone(work, strace=kill).returncode != 0, n
        _old_intact(work)
        _check_fsck_after_kill(work, n)
        linked = "README.txt" in _names(work)
        rerun = _clone(work)
        if linked:
            # The tree is in already: the rerun says so and changes nothing.
            assert rerun.returncode == 3 and "already exists" in rerun.stderr, (n, rerun.stderr)
            continue
        assert rerun.returncode == 0, (n, rerun.stderr)
        _old_intact(work)
        assert _cat(work, "/README.txt") == _cat(SAMPLE, "/README.txt")
        # Only what the killed run had marked in use stays so: e2fsck -p gives it back.
        _check_fsck_after_kill(work, n)


def _kill_new(tmp_path: Path, points: Iterator[int] | None) -> None:
    """Kill cipherdump's own process at its writes (not following mke2fs), and once
    mke2fs at its first write."""
    out = tmp_path / "new.img"
    total, _ = _image_writes(out, tmp_path / "count.log")
    plans = [(n, False) for n in (points if points is not None else range(1, total + 1))]
    for n, follow in [*plans, (1, True)]:
        for leftover in (out, Path(f"{out}.partial")):
            leftover.unlink(missing_ok=True)
        kill = ["strace", *(["-f"] if follow else []), "-o", os.devnull,
                "-e", f"inject=pwrite64:signal=KILL:when={n}"]  # fmt: skip
        assert _clone(out, strace=kill).returncode != 0, n
        assert not out.exists(), n  # only OUT.partial may be left, never a broken OUT
        rerun = _clone(out)
        assert rerun.returncode == 0, (n, rerun.stderr)
        assert not Path(f"{out}.partial").exists()
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
        assert _fsck(out, "-fn")[0] == 0, n


@needs_strace
@needs_e2fsprogs
def test_kill_at_last_writes_into_existing_image(existing: Path, tmp_path: Path) -> None:
    """The last writes (the commit) killed one by one: the old files are intact, e2fsck
    finds at most what -p repairs unasked, and a rerun completes or finds it done."""
    work = tmp_path / "t.img"
    shutil.copy(existing, work)
    total, _ = _image_writes(work, tmp_path / "count.log")
    _kill_existing(existing, tmp_path, iter(range(total - 6, total + 1)))


@needs_strace
@needs_e2fsprogs
def test_kill_at_last_writes_into_new_image(tmp_path: Path) -> None:
    out = tmp_path / "n.img"
    total, _ = _image_writes(out, tmp_path / "count.log")
    out.unlink()
    _kill_new(tmp_path, iter(range(total - 5, total + 1)))


@pytest.mark.slow
@needs_strace
@needs_e2fsprogs
def test_kill_at_every_write_into_existing_image(existing: Path, tmp_path: Path) -> None:
    _kill_existing(existing, tmp_path, None)


@pytest.mark.slow
@needs_strace
@needs_e2fsprogs
def test_kill_at_every_write_into_image_of_groups(existing_groups: Path, tmp_path: Path) -> None:
    _kill_existing(existing_groups, tmp_path, None)


@pytest.mark.slow
@needs_strace
@needs_e2fsprogs
def test_kill_at_every_write_into_new_image(tmp_path: Path) -> None:
    _kill_new(tmp_path, None)
