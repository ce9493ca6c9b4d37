"""An encrypted directory of two million entries made by the kernel (slow tier).

Issue 19: such a directory backs up and restores exactly, both key-less and with a key.
The kernel makes an ext4 image holding one v2-policy directory of
``CIPHERDUMP_HUGE_DIR_ENTRIES`` (default 2,000,000) empty files, a few files with data, a
subdirectory and a symlink.  The CLI, in child processes whose peak RSS is measured,
backs it up without the key, restores it without the key into an image and with the key
into a directory.  The restored image must read as the source does (every record, one
at a time), list the same no-key names, and with the key added to the kernel show the
same names and contents; the keyed restore must hold what the kernel shows with the key.

Each step's time and peak RSS are printed (``pytest -s``); setting
``CIPHERDUMP_HUGE_DIR_REPORT`` to a path also writes them there as JSON.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import cipherdump
import kernelfs
from restore_checks import assert_reader_views_equal_streaming

pytestmark = [pytest.mark.kernel, pytest.mark.slow]

ENTRIES = int(os.environ.get("CIPHERDUMP_HUGE_DIR_ENTRIES", "2000000"))
KEY = kernelfs.master_key_from_label("huge encrypted directory")
# Files with data (name -> content), a subdirectory holding one, and a symlink.
DATA = {
    b"d-one": kernelfs.pattern(1, 1),
    b"d-some": kernelfs.pattern(5000, 2),
    b"d-more": kernelfs.pattern(70000, 3),
}
INNER = kernelfs.pattern(9000, 4)
LINK_TARGET = b"d-some"
SRC = str(Path(cipherdump.__file__).resolve().parents[1])
# The child writes its own peak RSS (VmHWM, KiB) to the file its first argument names:
# the rusage of a forked child would count the size of this process at the fork.
_RUN_CLI = """
import atexit, sys
from cipherdump.cli.main import main
def peak():
    with open("/proc/self/status") as f:
        hwm = [line.split()[1] for line in f if line.startswith("VmHWM:")]
    with open(out, "w") as f:
        f.write(hwm[0])
out = sys.argv.pop(1)
atexit.register(peak)
main()
"""
CLI = [sys.executable, "-c", _RUN_CLI]
ENV = {
    **os.environ,
    "PYTHONPATH": SRC,
    "CIPHERDUMP_INSECURE_TEST_KDF": "1",
    "CIPHERDUMP_PASSWORD": "pw",
}
REPORT: dict[str, dict[str, float]] = {}


def _measured(step: str, *args: str | Path) -> str:
    """Run the CLI in a child process: its stdout; time and peak RSS go to REPORT."""
    started = time.monotonic()
    with tempfile.NamedTemporaryFile() as hwm:
        proc = subprocess.run(
            [*CLI, hwm.name, *map(str, args)], env=ENV, capture_output=True, check=False
        )
        seconds = time.monotonic() - started
        assert proc.returncode == 0, (step, proc.stderr.decode(errors="replace")[-3000:])
        peak_kib = int(Path(hwm.name).read_text())
    stdout = proc.stdout.decode()
    REPORT[step] = {"seconds": round(seconds, 1), "peak_rss_mib": round(peak_kib / 1024)}
    print(f"{step}: {REPORT[step]}", flush=True)
    return stdout


def _fill(enc: Path) -> None:
    """The entries, as fast as Python makes them: one directory fd, no stat calls."""
    fd = os.open(enc, os.O_RDONLY | os.O_DIRECTORY)
    try:
        flags, op, close = os.O_WRONLY | os.O_CREAT | os.O_EXCL, os.open, os.close
        for i in range(ENTRIES):
            close(op(f"f{i:07d}", flags, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
    for name, data in DATA.items():
        (enc / os.fsdecode(name)).write_bytes(data)
    (enc / "sub").mkdir()
    (enc / "sub" / "inner").write_bytes(INNER)
    os.symlink(LINK_TARGET, enc / "link")


def _sizes(directory: Path) -> dict[bytes, tuple[int, int]]:
    """name -> (file type bits, size) of every entry, as the kernel shows them."""
    out = {}
    with os.scandir(os.fsencode(directory)) as it:
        for e in it:
            st = e.stat(follow_symlinks=False)
            out[e.name] = (stat.S_IFMT(st.st_mode), st.st_size if not e.is_dir() else 0)
    return out


def _assert_shows_plaintext(enc: Path, want: dict[bytes, tuple[int, int]]) -> None:
    """The kernel (or a plain directory) shows ``enc`` with the key as the source did."""
    got = _sizes(enc)
    assert len(got) == len(want)
    assert got == want, sorted(set(got.items()) ^ set(want.items()))[:5]
    for name, data in DATA.items():
        assert (enc / os.fsdecode(name)).read_bytes() == data
    assert (enc / "sub" / "inner").read_bytes() == INNER
    assert os.readlink(os.fsencode(enc / "link")) == LINK_TARGET


@contextmanager
def _mounted_with_key(image: Path) -> Iterator[Path]:
    with kernelfs.mounted(image) as mnt:
        key_spec = kernelfs.add_key(mnt, KEY)
        try:
            yield mnt
        finally:
            kernelfs.remove_key(mnt, key_spec)


def test_two_million_encrypted_entries_restore_exactly(tmp_path: Path) -> None:
    kernelfs.require_kernel()
    image = tmp_path / "huge.img"
    # 256-byte inodes and about 40 bytes of directory an encrypted name (padded to 32),
    # in htree leaves about three quarters full, with room to spare.
    size_mib = 96 + ENTRIES * 600 // (1 << 20)
    inodes = str(ENTRIES + 1000)
    nojournal = ("encrypt", "^has_journal")
    kernelfs.make_image(image, size_mib, features=nojournal, extra_mkfs_args=("-N", inodes))
    started = time.monotonic()
    with kernelfs.mounted(image) as mnt:
        key_spec = kernelfs.add_key(mnt, KEY)
        enc = mnt / "enc"
        enc.mkdir()
        pol = kernelfs.PolicySpec()
        kernelfs.set_policy(enc, 2, pol.contents_mode, pol.filenames_mode, pol.flags, key_spec)
        _fill(enc)
        (mnt / "plain.txt").write_bytes(b"not encrypted\n")
        os.sync()
        with_key = _sizes(enc)
        kernelfs.remove_key(mnt, key_spec)
    REPORT["make source"] = {"seconds": round(time.monotonic() - started, 1)}
    print(f"make source: {REPORT['make source']}", flush=True)
    with kernelfs.mounted(image) as mnt:
        no_key = set(os.listdir(os.fsencode(mnt / "enc")))
    assert len(with_key) == len(no_key) == ENTRIES + len(DATA) + 2
    assert b"f0000000" in with_key and b"f0000000" not in no_key

    repo = tmp_path / "repo"
    _measured("init", "init", "-r", repo)
    summary = json.loads(
        _measured("backup", "backup", image, "-r", repo, "-j", "1", "--json").splitlines()[-1]
    )
    snap = summary["snapshot_id"][:12]

    # Key-less, into an image: the same records, no-key names and, with the key, names.
    out = tmp_path / "restored.img"
    _measured("restore --to-image", "restore", snap, "-r", repo, "--to-image", out, "--json")
    started = time.monotonic()
    compared = assert_reader_views_equal_streaming(image, out)
    assert compared >= ENTRIES + 8
    REPORT["compare reader views"] = {"seconds": round(time.monotonic() - started, 1)}
    with kernelfs.mounted(out) as mnt:
        assert set(os.listdir(os.fsencode(mnt / "enc"))) == no_key
    with _mounted_with_key(out) as mnt:
        _assert_shows_plaintext(mnt / "enc", with_key)
    out.unlink()

    # With the key in user space, into a directory of a plain ext4 image.
    key_file = tmp_path / "key"
    key_file.write_text(KEY.hex())
    plain = tmp_path / "plain.img"
    kernelfs.make_image(plain, size_mib, features=("^has_journal",), extra_mkfs_args=("-N", inodes))
    with kernelfs.mounted(plain) as mnt:
        target = mnt / "out"
        _measured("restore --target --key", "restore", snap, "-r", repo, "--target", target,
                  "--key", key_file, "--json")  # fmt: skip
        _assert_shows_plaintext(target / "enc", with_key)
        assert (target / "plain.txt").read_bytes() == b"not encrypted\n"
    print(json.dumps(REPORT), flush=True)
    report = os.environ.get("CIPHERDUMP_HUGE_DIR_REPORT")
    if report:
        Path(report).write_text(json.dumps({"entries": ENTRIES, **REPORT}, indent=1))
