"""Backing up encrypted trees with the tools sites already run, through the ciphertext view.

A kernel-made image is mounted with ``cipherdump mount --ciphertext``; its whole tree is
copied, as root, with ``tar --xattrs --xattrs-include='*'`` (create, then extract),
``rsync -aHAX`` and restic (backup, then restore into a directory, in a temporary
repository).  Each copy must keep every ``user.cipherdump.*`` and
``trusted.cipherdump.*`` xattr and the ciphertext bytes the view showed.  Then
``cipherdump restore --from-dir COPY --to-image OUT.img`` makes an image; mounted by the
kernel with the key added, its plaintext must equal the kernel's original tree byte for
byte.  For v1, v2, IV_INO_LBLK_64 (whose ciphertext is tied to inode numbers: a copy
that lost them is refused, and the message says why) and 1 KiB blocks.  A copy by a
tool that drops xattrs (``cp -r``) is refused with a clear error.

What the tools cannot copy is named where it is allowed: GNU tar and restic leave out
sockets (``socket ignored``), which carry no data, and restic 0.14 restores no xattrs
of symlinks, whose records are ``trusted.cipherdump.*`` (Linux keeps no ``user.*``
xattrs on them): restore --from-dir then refuses each encrypted symlink, naming it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

import kernelfs
from cipherdump.engine import keyless_records as records
from fusemounts import CLI, require_fuse, serving

pytestmark = pytest.mark.kernel

CONFIGS = ["4k-v1-pad32", "4k-v2-pad32", "4k-stable-v2-pad32-lblk64", "1k-v2-pad32"]
PREFIX = records.XATTR_PREFIX.encode()


@pytest.fixture(autouse=True)
def _fuse() -> None:
    require_fuse()


def _env() -> dict[str, str]:
    env = dict(os.environ, CIPHERDUMP_INSECURE_TEST_KDF="1", CIPHERDUMP_PASSWORD="pw")
    env.pop("CIPHERDUMP_REPOSITORY", None)
    return env


def _run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(argv, capture_output=True, timeout=600, check=False, **kwargs)  # type: ignore[call-overload]
    assert proc.returncode == 0, f"{argv[0]}: {proc.stderr.decode(errors='replace')}"
    return proc  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Entry:
    mode: int
    target: bytes | None
    sha256: str | None
    xattrs: dict[bytes, bytes]
    ino: int
    nlink: int


def walk(root: Path) -> dict[bytes, Entry]:
    """Every path below ``root`` with what a copy must keep."""
    base = os.fsencode(root)
    out: dict[bytes, Entry] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, base)
            out[rel] = _entry(full)
    out[b"."] = _entry(base)
    return out


def _entry(full: bytes) -> Entry:
    st = os.lstat(full)
    target = os.readlink(full) if stat.S_ISLNK(st.st_mode) else None
    digest = None
    if stat.S_ISREG(st.st_mode):
        with open(full, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
    xattrs: dict[bytes, bytes] = {}
    for name in os.listxattr(full, follow_symlinks=False):
        # user.* (files and directories), trusted.cipherdump.* (symlinks, specials).
        if name.startswith(("user.", "trusted.cipherdump.")):
            xattrs[name.encode()] = os.getxattr(full, name, follow_symlinks=False)
    return Entry(st.st_mode, target, digest, xattrs, st.st_ino, st.st_nlink)


def _tar(view: Path, out: Path, work: Path) -> Path:
    archive = work / "copy.tar"
    # Every namespace: the records of symlinks and special files are trusted.*.
    flags = ["--xattrs", "--xattrs-include=*", "--numeric-owner"]
    _run(["tar", *flags, "-cpf", str(archive), "-C", str(view), "."])
    out.mkdir()
    _run(["tar", *flags, "-xpf", str(archive), "-C", str(out)])
    return out


def _rsync(view: Path, out: Path, work: Path) -> Path:
    _run(["rsync", "-aHAX", f"{view}/", f"{out}/"])
    return out


def _restic(view: Path, out: Path, work: Path) -> Path:
    env = dict(os.environ, RESTIC_PASSWORD="pw", RESTIC_REPOSITORY=str(work / "restic"))
    env["RESTIC_CACHE_DIR"] = str(work / "restic-cache")
    _run(["restic", "init"], env=env)
    _run(["restic", "backup", str(view)], env=env)
    _run(["restic", "restore", "latest", "--target", str(out)], env=env)
    # restic restores the absolute path below the target.
    return out / str(view).lstrip("/")


TOOLS: dict[str, tuple[Callable[[Path, Path, Path], Path], set[int], bool]] = {
    # tool: how to copy, the file types it is known to leave out, and whether it keeps
    # the xattrs of symlinks (restic 0.14 restores none: encrypted symlinks are then
    # refused by restore --from-dir, each named).
    "tar": (_tar, {stat.S_IFSOCK}, True),
    "rsync": (_rsync, set(), True),
    "restic": (_restic, {stat.S_IFSOCK}, False),
}


def _check_copy(tool: str, shown: dict[bytes, Entry], copied: dict[bytes, Entry]) -> set[bytes]:
    """The copy kept every path (but those ``tool`` leaves out), type, target, byte and
    user xattr, ``user.cipherdump.*`` included; hard links stay links.  Returns the
    paths left out."""
    _copy, dropped_kinds, symlink_xattrs = TOOLS[tool]
    left_out = set()
    for path, want in shown.items():
        got = copied.get(path)
        if got is None:
            assert stat.S_IFMT(want.mode) in dropped_kinds, f"{tool} lost {path!r}"
            left_out.add(path)
            continue
        what = f"{tool}: {path!r}"
        assert stat.S_IFMT(got.mode) == stat.S_IFMT(want.mode), what
        assert (got.target, got.sha256) == (want.target, want.sha256), what
        if stat.S_ISLNK(want.mode) and not symlink_xattrs:
            assert got.xattrs == {}, what  # known to be dropped; restore refuses these
        elif path != b"." and want.nlink > 1 and stat.S_ISREG(want.mode):
            # One inode, one set of xattrs: a copy keeps the ``name`` of one of the
            # links for all (a short no-key name holds its own name whole anyway).
            per_entry = {PREFIX + b"name", PREFIX + b"hash"}
            names = {
                shown[p].xattrs.get(PREFIX + b"name") for p in shown if shown[p].ino == want.ino
            }
            assert got.xattrs.get(PREFIX + b"name") in names, what
            mine = {k: v for k, v in got.xattrs.items() if k not in per_entry}
            assert mine == {k: v for k, v in want.xattrs.items() if k not in per_entry}, what
        elif path != b".":
            assert got.xattrs == want.xattrs, what
        else:
            assert want.xattrs.items() <= got.xattrs.items(), what
    assert not set(copied) - set(shown), f"{tool} made paths the view does not have"
    for path, want in shown.items():
        if stat.S_ISREG(want.mode) and want.nlink > 1 and path in copied:
            peers = {p for p, e in shown.items() if e.ino == want.ino}
            assert {p for p in peers if copied[p].ino == copied[path].ino} == peers, tool
    return left_out


def _plaintext_matches(
    kernel_image: kernelfs.KernelImage, image: Path, left_out: set[bytes]
) -> None:
    """OUT.img mounted by the kernel with the key: the kernel's original tree."""
    enc = kernel_image.config.encrypted_dir
    with kernelfs.mounted(image) as mnt:
        pol = kernel_image.config.policy
        descriptor = kernelfs.key_descriptor(kernel_image.master_key) if pol.version == 1 else None
        kernelfs.add_key(mnt, kernel_image.master_key, descriptor)
        ours = kernelfs.snapshot_view(mnt, enc)
    kernel = kernel_image.with_key
    gone = {p for p, n in kernel.items() if stat.S_ISSOCK(n.mode)} if left_out else set()
    assert set(ours) == set(kernel) - gone
    for path, k in kernel.items():
        if path in gone:
            continue
        o = ours[path]
        what = path.decode(errors="replace")
        assert (o.mode, o.uid, o.gid, o.nlink) == (k.mode, k.uid, k.gid, k.nlink), what
        if not stat.S_ISDIR(k.mode):  # a new image lays directories out anew
            assert o.size == k.size, what
        assert (o.sha256, o.link_target, o.mtime_ns) == (k.sha256, k.link_target, k.mtime_ns), what
        assert o.xattrs == k.xattrs, what
        if pol.flags & kernelfs.FLAG_IV_INO_LBLK_64:
            assert o.ino == k.ino, what


@pytest.mark.parametrize("tool", sorted(TOOLS))
@pytest.mark.parametrize("kernel_image", CONFIGS, indirect=True)
def test_a_tool_copies_the_view_and_the_copy_restores(
    kernel_image: kernelfs.KernelImage, tool: str, tmp_path: Path
) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (scripts/install-test-deps installs it)")
    mnt = tmp_path / "view"
    copy_with, _dropped, symlink_xattrs = TOOLS[tool]
    with serving(["--ciphertext", str(kernel_image.image)], mnt, env=_env()) as served:
        shown = walk(mnt)
        copy = copy_with(mnt, tmp_path / "copy", tmp_path)
    assert served.exit_code == 0 and served.unmounted_cleanly, served.stderr()
    enc = kernel_image.config.encrypted_dir
    assert any(k.startswith(PREFIX) for k in shown[enc].xattrs)  # the view has records
    left_out = _check_copy(tool, shown, walk(copy))

    out = tmp_path / "out.img"
    proc = subprocess.run(
        [*CLI, "restore", "--from-dir", str(copy), "--to-image", str(out)],
        capture_output=True,
        timeout=600,
        check=False,
        env=_env(),
    )
    err = proc.stderr.decode(errors="replace")
    if not symlink_xattrs:
        # Each encrypted symlink is named, with why; nothing is written.
        lines = [x for x in err.splitlines() if x.startswith("cipherdump: error")][:-1]
        symlinks = [p for p, n in kernel_image.no_key.items() if n.kind == "lnk"]
        assert proc.returncode == 3 and len(lines) == len(symlinks), err
        assert all("encrypted symlink without its context" in x for x in lines), err
        assert not out.exists()
        return
    assert proc.returncode == 0, err
    _plaintext_matches(kernel_image, out, left_out)


@pytest.mark.parametrize("kernel_image", ["4k-stable-v2-pad32-lblk64"], indirect=True)
def test_iv_ino_lblk_64_copy_without_inode_numbers_is_refused_with_the_reason(
    kernel_image: kernelfs.KernelImage, tmp_path: Path
) -> None:
    mnt = tmp_path / "view"
    with serving(["--ciphertext", str(kernel_image.image)], mnt, env=_env()):
        copy = _rsync(mnt, tmp_path / "copy", tmp_path)
    # A tool that kept the other records but not the inode number of one file.
    victim = next(
        p for p in (copy / os.fsdecode(kernel_image.config.encrypted_dir)).iterdir() if p.is_file()
    )
    os.removexattr(victim, records.xattr_name(records.INO))
    proc = subprocess.run(
        [*CLI, "restore", "--from-dir", str(copy), "--to-image", str(tmp_path / "out.img")],
        capture_output=True,
        timeout=600,
        check=False,
        env=_env(),
    )
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode not in (0, 70), err
    assert "Traceback" not in err
    assert "inode number" in err and "IV_INO_LBLK" in err, err


@pytest.mark.parametrize("kernel_image", ["4k-v2-pad32"], indirect=True)
def test_a_tool_that_drops_xattrs_is_caught(
    kernel_image: kernelfs.KernelImage, tmp_path: Path
) -> None:
    mnt = tmp_path / "view"
    copy = tmp_path / "copy"
    with serving(["--ciphertext", str(kernel_image.image)], mnt, env=_env()):
        # cp -r without -a keeps neither xattrs nor owners nor times.
        _run(["cp", "-r", f"{mnt}/.", str(copy)])
    # The filesystem record put back by hand: the files' missing records are caught.
    with serving(["--ciphertext", str(kernel_image.image)], mnt, env=_env()):
        name = records.xattr_name(records.FILESYSTEM)
        os.setxattr(copy, name, os.getxattr(mnt, name))
    enc = copy / os.fsdecode(kernel_image.config.encrypted_dir)
    assert not [n for n in os.listxattr(enc) if n.startswith(records.XATTR_PREFIX)]
    proc = subprocess.run(
        [*CLI, "restore", "--from-dir", str(copy), "--to-image", str(tmp_path / "out.img")],
        capture_output=True,
        timeout=600,
        check=False,
        env=_env(),
    )
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode not in (0, 70), err
    assert "Traceback" not in err
    lines = [x for x in err.splitlines() if x.startswith("cipherdump: error")]
    assert proc.returncode == 3 and lines, err
    assert all("no flags record (user.cipherdump.flags)" in x for x in lines[:20]), err
    assert not (tmp_path / "out.img").exists()
