"""Directory entries whose names ext4 forbids, and directory loops, in a source image.

A crafted image holds, beside good entries, one live entry named ``.``, ``..``, empty,
with a NUL or with a '/'.  e2fsck calls each broken and the kernel cannot show it; every
reader must report it as a problem naming the path (exit 1) and go on with the rest:
``ls``, ``backup`` and ``clone``, whose copy must be one e2fsck calls clean.  A directory
hard-linked into its own subtree is reported as such by ``clone`` too, never as a target
without free inodes.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cipherdump.blockio import MemorySource
from cipherdump.cli.main import cli
from cipherdump.ext4 import Filesystem
from cipherdump.ondisk.dirent import EXT4_NAME_LEN, dirent_name_problem
from restore_checks import e2fsck_clean
from shared_data import REPO

GOOD = [b"good-one", b"good-two", b"victim-1"]

# What the victim entry's name becomes: same rec_len, other name bytes.
BAD = {
    "dot": b".",
    "dotdot": b"..",
    "empty": b"",
    "nul": b"vic\0im-1",
    "slash": b"vic/im-1",
}


def run(*args: str) -> Result:
    env = {"CIPHERDUMP_INSECURE_TEST_KDF": "1", "CIPHERDUMP_PASSWORD": "x"}
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def _mkfs(tmp: Path, tree: Path, name: str) -> Path:
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 unavailable")
    image = tmp / name
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-b", "1024", "-O", "^has_journal,^metadata_csum",
         "-d", str(tree), str(image), "2M"],
        check=True, capture_output=True,
    )  # fmt: skip
    return image


def crafted(tmp: Path, new_name: bytes) -> Path:
    """An image with /d holding GOOD, the last of them renamed in place to ``new_name``."""
    tree = tmp / "tree"
    (tree / "d").mkdir(parents=True)
    for name in GOOD:
        (tree / "d" / os.fsdecode(name)).write_bytes(name)
    image = _mkfs(tmp, tree, "crafted.img")
    buf = bytearray(image.read_bytes())
    fs = Filesystem(MemorySource(bytes(buf)))
    d = fs.inode(fs.root.entry_named(b"d").ino)  # type: ignore[union-attr]
    bs = fs.block_size
    (run,) = [r for r in d.runs if r.pblk is not None]
    assert run.pblk is not None
    start = run.pblk * bs
    at = buf.index(b"victim-1", start, start + bs) - 8
    assert buf[at + 6] == len(b"victim-1")
    buf[at + 6] = len(new_name)
    buf[at + 8 : at + 8 + len(b"victim-1")] = new_name.ljust(len(b"victim-1"), b"\0")
    image.write_bytes(buf)
    return image


# -- the one rule ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "encrypted", "bad"),
    [
        (b"ok", False, False),
        (b"", False, True),
        (b"", True, True),
        (b".", False, True),
        (b"..", True, True),
        (b"a/b", False, True),
        (b"a\0b", False, True),
        (b"x" * EXT4_NAME_LEN, False, False),
        (b"x" * (EXT4_NAME_LEN + 1), False, True),
        (b"x" * (EXT4_NAME_LEN + 1), True, True),
        # Ciphertext may hold any byte, '/' and NUL included, but is at least 16 bytes.
        (b"/\0" * 8, True, False),
        (b"a" * 15, True, True),
        (b"a" * 16, True, False),
    ],
)
def test_dirent_name_rule(name: bytes, encrypted: bool, bad: bool) -> None:
    assert (dirent_name_problem(name, encrypted=encrypted) is not None) == bad


# -- a crafted source image --------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(BAD))
def test_ls_reports_a_forbidden_name(tmp_path: Path, kind: str) -> None:
    image = crafted(tmp_path, BAD[kind])
    result = run("ls", "-R", str(image), "/d")
    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines() == ["/d/good-one", "/d/good-two"]
    (line,) = result.stderr.splitlines()
    assert line.startswith("cipherdump: error: /d/") and "directory entry" in line


@pytest.mark.parametrize("kind", sorted(BAD))
def test_backup_reports_a_forbidden_name(tmp_path: Path, kind: str) -> None:
    image = crafted(tmp_path, BAD[kind])
    repo = tmp_path / "repo"
    assert run("init", "-r", str(repo)).exit_code == 0
    result = run("backup", "-r", str(repo), str(image))
    assert result.exit_code == 1, result.output
    assert "cipherdump: error: /d/" in result.stderr
    listed = run("ls", "-R", "-r", str(repo), "latest", "/d")
    assert listed.stdout.splitlines() == ["/d/good-one", "/d/good-two"]


@pytest.mark.parametrize("kind", sorted(BAD))
def test_clone_leaves_out_a_forbidden_name(tmp_path: Path, kind: str) -> None:
    image = crafted(tmp_path, BAD[kind])
    out = tmp_path / "out.img"
    result = run("clone", str(image), str(out))
    assert result.exit_code == 1, result.output
    assert "cipherdump: error: /d/" in result.stderr
    clean, report = e2fsck_clean(out)
    assert clean, report
    listed = run("ls", "-R", str(out), "/d")
    assert listed.exit_code == 0 and listed.stdout.splitlines() == ["/d/good-one", "/d/good-two"]


def test_clone_reports_a_directory_loop(tmp_path: Path) -> None:
    """/a/b/up is a second name of /a (made with debugfs ``ln``): a loop."""
    if shutil.which("debugfs") is None:
        pytest.skip("debugfs unavailable")
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "f").write_bytes(b"hi")
    image = _mkfs(tmp_path, tree, "loop.img")
    subprocess.run(["debugfs", "-w", "-R", "ln /a /a/b/up", str(image)],
                   check=True, capture_output=True)  # fmt: skip
    out = tmp_path / "out.img"
    result = run("clone", str(image), str(out))
    assert result.exit_code == 1, result.output
    assert "no free inode" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert line.startswith("cipherdump: error: /a/b/up: ") and "reachable twice" in line
    clean, report = e2fsck_clean(out)
    assert clean, report
    listed = run("ls", "-R", str(out), "/a")
    assert listed.stdout.splitlines() == ["/a/b", "/a/b/f"]


def test_entry_header_offsets_are_the_kernel_ones() -> None:
    """The crafting above patches name_len at +6 and the name at +8 (ext4_dir_entry_2)."""
    assert struct.calcsize("<IHBB") == 8


@pytest.mark.kernel
def test_index_flag_on_a_linear_directory_hides_nothing(tmp_path: Path) -> None:
    """EXT4_INDEX_FL set on a one-block linear directory: its block 0 is no htree root,
    and the kernel's readdir falls back to a linear read that shows every entry."""
    import kernelfs

    if shutil.which("debugfs") is None:
        pytest.skip("debugfs unavailable")
    tree = tmp_path / "tree"
    (tree / "d").mkdir(parents=True)
    for name in ("a", "b", "c"):
        (tree / "d" / name).write_text(name)
    image = _mkfs(tmp_path, tree, "index.img")
    fs = Filesystem(MemorySource(image.read_bytes()))
    d = fs.inode(fs.root.entry_named(b"d").ino)  # type: ignore[union-attr]
    flags = d.flags | 0x1000  # EXT4_INDEX_FL
    subprocess.run(["debugfs", "-w", "-R", f"set_inode_field /d flags {flags:#x}", str(image)],
                   check=True, capture_output=True)  # fmt: skip
    with kernelfs.mounted(image, readonly=True) as mnt:
        kernel = sorted(os.listdir(mnt / "d"))
    assert kernel == ["a", "b", "c"]
    result = run("ls", str(image), "/d")
    assert result.exit_code == 0
    assert sorted(result.stdout.splitlines()) == kernel
    assert "not laid out as an htree root" in result.stderr


def test_clone_leaves_out_a_second_entry_of_the_same_name(tmp_path: Path) -> None:
    """Two entries named alike (e2fsck: "duplicate entry"): the first is copied, the
    second is a problem, as backup reports it."""
    image = crafted(tmp_path, b"good-one")
    out = tmp_path / "out.img"
    result = run("clone", str(image), str(out))
    assert result.exit_code == 1, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith("cipherdump: error: /d/good-one: a second entry with the same name")
    clean, report = e2fsck_clean(out)
    assert clean, report
    listed = run("ls", "-R", str(out), "/d")
    assert listed.stdout.splitlines() == ["/d/good-one", "/d/good-two"]


@pytest.mark.parametrize("spill_at", [1, 2, 8192])
def test_backup_reports_a_second_entry_of_the_same_name_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spill_at: int
) -> None:
    """Found as the walk goes, or (its nodes spilled to the directory's writer before
    the second entry: a large directory) when the tree is stored: one problem, the
    first entry kept."""
    from cipherdump.engine.backup import frame
    from cipherdump.repo import dirwriter

    monkeypatch.setattr(frame, "SPILL_AT", spill_at)
    monkeypatch.setattr(dirwriter, "RUN_NODES", 1)
    image = crafted(tmp_path, b"good-one")
    repo = tmp_path / "repo"
    assert run("init", "-r", str(repo)).exit_code == 0
    result = run("backup", "-r", str(repo), "--jobs", "1", str(image))
    assert result.exit_code == 1, result.output
    (line,) = [x for x in result.stderr.splitlines() if x.startswith("cipherdump: error")]
    assert line.startswith("cipherdump: error: /d/good-one: a second entry with the same name")
    listed = run("cat", "-r", str(repo), "latest", "/d/good-one")
    assert listed.stdout == "good-one"
    listed = run("ls", "-R", "-r", str(repo), "latest", "/d")
    assert listed.stdout.splitlines() == ["/d/good-one", "/d/good-two"]


def test_a_too_short_ciphertext_name_hides_no_sibling(tmp_path: Path) -> None:
    """An entry of an encrypted directory whose name_len is cut to 5 (the kernel would
    refuse the whole directory, EUCLEAN): it is a problem named by its bytes, and every
    other entry is listed, backed up and cloned, with or without the key."""
    if shutil.which("tune2fs") is None or shutil.which("e2fsck") is None:
        pytest.skip("e2fsprogs unavailable")
    sample = REPO / "examples"
    image = tmp_path / "s.img"
    shutil.copyfile(sample / "sample.img", image)
    # Without checksums, so that the edit below is the only damage.
    subprocess.run(["tune2fs", "-O", "^metadata_csum", str(image)],
                   check=True, capture_output=True)  # fmt: skip
    buf = bytearray(image.read_bytes())
    fs = Filesystem(MemorySource(bytes(buf)))
    home = fs.inode(fs.root.entry_named(b"home").ino)  # type: ignore[union-attr]
    alice = fs.inode(home.entry_named(b"alice").ino)  # type: ignore[union-attr]
    before = len(alice.entries())
    victim = alice.entries()[0].name
    (run_,) = [r for r in alice.runs if r.pblk is not None]
    assert run_.pblk is not None
    start = run_.pblk * fs.block_size
    at = buf.index(victim, start, start + fs.block_size) - 8
    buf[at + 6] = 5
    image.write_bytes(buf)

    listed = run("ls", str(image), "/home/alice")
    assert listed.exit_code == 1
    assert len(listed.stdout.splitlines()) == before - 1
    (line,) = listed.stderr.splitlines()
    assert "encrypted name of 5 bytes is shorter than 16" in line
    keyed = run("ls", "--key", str(sample / "alice.key"), str(image), "/home/alice")
    assert keyed.exit_code == 1 and len(keyed.stdout.splitlines()) == before - 1
    repo = tmp_path / "repo"
    assert run("init", "-r", str(repo)).exit_code == 0
    backup = run("backup", "-r", str(repo), str(image))
    assert backup.exit_code == 1 and "shorter than 16" in backup.stderr
    assert run("ls", "-r", str(repo), "latest", "/home/alice").stdout == listed.stdout
    out = tmp_path / "out.img"
    cloned = run("clone", str(image), str(out))
    assert cloned.exit_code == 1 and "shorter than 16" in cloned.stderr
    assert run("ls", str(out), "/home/alice").stdout == listed.stdout
