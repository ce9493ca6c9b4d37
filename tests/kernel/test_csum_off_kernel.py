"""Filesystems whose metadata_csum was switched off with ``tune2fs -O ^metadata_csum``.

tune2fs leaves each directory block's old 12-byte checksum tail in place and lets the last
entry's ``rec_len`` span it, so the tail bytes become slack inside that entry.  The kernel
looks for the tail only while the feature is on; cipherdump must do the same.  The kernel's
listing of the image, mounted read-only, is the oracle; a backup of it must succeed.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import kernelfs
from cipherdump.cli.main import cli
from shared_data import REPO

pytestmark = pytest.mark.kernel

SAMPLE = REPO / "examples" / "sample.img"

_TYPES = {
    "file": stat.S_IFREG,
    "dir": stat.S_IFDIR,
    "symlink": stat.S_IFLNK,
    "chardev": stat.S_IFCHR,
    "blockdev": stat.S_IFBLK,
    "fifo": stat.S_IFIFO,
    "socket": stat.S_IFSOCK,
}

Listing = dict[bytes, tuple[int, int, int, int]]


def run(*args: str) -> Result:
    env = {"CIPHERDUMP_INSECURE_TEST_KDF": "1", "CIPHERDUMP_PASSWORD": "x"}
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def csum_off(image: Path) -> None:
    """Switch metadata_csum off as an administrator would, and check e2fsck calls it clean.

    tune2fs wants a check newer than the last mount first (else "Please run e2fsck -f").
    """
    subprocess.run(["e2fsck", "-fp", os.fspath(image)], check=True, capture_output=True)
    subprocess.run(["tune2fs", "-O", "^metadata_csum", os.fspath(image)], check=True,
                   capture_output=True)  # fmt: skip
    fsck = subprocess.run(["e2fsck", "-fn", os.fspath(image)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    dump = subprocess.run(["dumpe2fs", "-h", os.fspath(image)], capture_output=True, text=True)
    assert "metadata_csum" not in dump.stdout


def kernel_listing(image: Path) -> Listing:
    """(inode, mode, size, links) of every path, as the kernel lists the image read-only."""
    out: Listing = {}
    with kernelfs.mounted(image, readonly=True) as mnt:
        root = os.fsencode(mnt)
        for top, dirs, files in os.walk(root):
            for name in dirs + files:
                full = os.path.join(top, name)
                st = os.lstat(full)
                size = st.st_size if not stat.S_ISDIR(st.st_mode) else 0
                out[full[len(root) :]] = (st.st_ino, st.st_mode, size, st.st_nlink)
    return out


def our_listing(image: Path) -> Listing:
    result = run("ls", "-R", "--json", os.fspath(image), "/")
    assert result.exit_code == 0, result.output
    out: Listing = {}
    for line in result.output.splitlines():
        rec = json.loads(line)
        mode = _TYPES[rec["type"]] | rec["mode"]
        size = rec["size"] if rec["type"] != "dir" else 0
        out[rec["path"].encode("utf-8", "surrogateescape")] = (
            rec["inode"], mode, size, rec["links"],
        )  # fmt: skip
    return out


def test_sample_with_metadata_csum_off_lists_as_the_kernel_does(tmp_path: Path) -> None:
    image = tmp_path / "n.img"
    shutil.copyfile(SAMPLE, image)
    csum_off(image)
    kernel = kernel_listing(image)
    assert len(kernel) > 15
    assert our_listing(image) == kernel


def test_backup_of_sample_with_metadata_csum_off_succeeds(tmp_path: Path) -> None:
    image = tmp_path / "n.img"
    shutil.copyfile(SAMPLE, image)
    csum_off(image)
    repo = tmp_path / "repo"
    assert run("init", "-r", os.fspath(repo)).exit_code == 0
    result = run("backup", "-r", os.fspath(repo), os.fspath(image), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.splitlines()[-1])
    assert summary["files_new"] == 11
    listed = run("ls", "-r", os.fspath(repo), "latest", "-R")
    assert listed.exit_code == 0
    assert listed.output == run("ls", "-R", os.fspath(image)).output


def test_htree_directory_with_metadata_csum_off(tmp_path: Path) -> None:
    """An indexed directory made with checksums on (dx tails, leaf tails), then turned off:
    both a full listing and a lookup through the htree match the kernel."""
    image = kernelfs.make_image(tmp_path / "h.img", 8, block_size=1024, features=())
    with kernelfs.mounted(image) as mnt:
        big = mnt / "big"
        big.mkdir()
        for i in range(400):
            (big / f"file-with-a-longish-name-{i}").write_bytes(b"%d" % i)
        (big / "sub").mkdir()
    assert kernelfs.htree_levels(image, _ino(image, "/big")) is not None
    csum_off(image)
    kernel = kernel_listing(image)
    assert our_listing(image) == kernel
    one = run("cat", os.fspath(image), "/big/file-with-a-longish-name-377")
    assert one.exit_code == 0 and one.output == "377"


def _ino(image: Path, path: str) -> int:
    result = run("stat", "--json", os.fspath(image), path)
    assert result.exit_code == 0, result.output
    ino: int = json.loads(result.output)["inode"]
    return ino


def test_clone_of_sample_with_metadata_csum_off(tmp_path: Path) -> None:
    """The key-less copy of such an image lists, through the kernel, as the original."""
    image = tmp_path / "n.img"
    shutil.copyfile(SAMPLE, image)
    csum_off(image)
    out = tmp_path / "clone.img"
    result = run("clone", os.fspath(image), os.fspath(out))
    assert result.exit_code == 0, result.output

    def without_lost_found(listing: Listing) -> Listing:
        return {p: v for p, v in listing.items() if not p.startswith(b"/lost+found")}

    assert without_lost_found(kernel_listing(out)) == without_lost_found(kernel_listing(image))
