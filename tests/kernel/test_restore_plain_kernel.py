"""Keyed restore of key-less backups, against the kernel and the real fscrypt tool.

Ground truth is what the kernel showed *with the key* before the tree was locked: every
path, mode, owner, size, nanosecond mtime and atime, content hash, symlink target,
device number, link count, ``user.`` xattr and POSIX ACL must come back from
``restore --target`` identical.

* The google/fscrypt tool (Debian's ``fscrypt`` package) sets up a filesystem, encrypts
  one directory with a custom passphrase protector and one with a raw_key protector; the
  tool then locks both.  The key-less backup is restored with the passphrase (read from
  the image's own ``.fscrypt`` in the snapshot) and the protector key.
* Raw v1 and v2 master keys added with the ioctls (``kernelfs``) restore with ``--key``.
* Running the restore again changes nothing; an interrupted restore run again completes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import kernelfs
from cipherdump.cli.main import cli
from cipherdump.engine.restore_plain import restore_plain
from cipherdump.engine.views.snapshot import SnapshotView
from cipherdump.fscrypt.keys import KeyRing, MasterKey
from cipherdump.repo import LocalBackend, Repository

pytestmark = pytest.mark.kernel

PASSPHRASE = "correct horse battery staple"
FSCRYPT_CONF = Path("/etc/fscrypt.conf")
# Cheap Argon2id costs, so the test does not spend a second per hash as the tool's
# default calibration would.
TEST_CONF = {
    "source": "custom_passphrase",
    "hash_costs": {"time": "1", "memory": "1024", "parallelism": "1"},
    "options": {
        "padding": "32",
        "contents": "AES_256_XTS",
        "filenames": "AES_256_CTS",
        "policy_version": "2",
    },
    "use_fs_keyring_for_v1_policies": False,
    "allow_cross_user_metadata": False,
}
ENV = {"CIPHERDUMP_INSECURE_TEST_KDF": "1", "CIPHERDUMP_PASSWORD": "pw"}


def run(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=ENV, input=input, catch_exceptions=False)


def _acl(*entries: tuple[int, int, int]) -> bytes:
    """A POSIX ACL in the xattr form: (tag, perm, id) entries, id -1 where none."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


_NO_ID = 0xFFFFFFFF
ACCESS_ACL = _acl((1, 6, _NO_ID), (2, 4, 1234), (4, 4, _NO_ID), (8, 6, 4321), (0x10, 6, _NO_ID),
                  (0x20, 0, _NO_ID))  # fmt: skip
DEFAULT_ACL = _acl((1, 7, _NO_ID), (2, 5, 1234), (4, 5, _NO_ID), (0x10, 5, _NO_ID),
                   (0x20, 5, _NO_ID))  # fmt: skip


@dataclass(frozen=True)
class ToolImage:
    image: Path
    raw_key_file: Path
    views: dict[bytes, dict[bytes, kernelfs.NodeView]]  # top dir -> kernel view with the key
    acls: dict[bytes, dict[str, bytes]]  # path -> ACL xattrs as the kernel returned them


@contextlib.contextmanager
def fscrypt_conf() -> Iterator[None]:
    """A temporary /etc/fscrypt.conf with cheap hashing costs (any existing one is kept)."""
    saved = FSCRYPT_CONF.read_bytes() if FSCRYPT_CONF.exists() else None
    FSCRYPT_CONF.write_text(json.dumps(TEST_CONF))
    try:
        yield
    finally:
        if saved is None:
            FSCRYPT_CONF.unlink()
        else:
            FSCRYPT_CONF.write_bytes(saved)


def _fscrypt(*args: str | Path, stdin: str | None = None) -> None:
    subprocess.run(
        ["fscrypt", *map(str, args)],
        input=(stdin or "").encode(),
        check=True,
        capture_output=True,
    )


def _acls(path: Path) -> dict[str, bytes]:
    out = {}
    for name in ("system.posix_acl_access", "system.posix_acl_default"):
        with contextlib.suppress(OSError):
            out[name] = os.getxattr(path, name, follow_symlinks=False)
    return out


@pytest.fixture(scope="module")
def tool_image(tmp_path_factory: pytest.TempPathFactory) -> ToolImage:
    if shutil.which("fscrypt") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the fscrypt tool is missing (scripts/install-test-deps installs it)")
        pytest.skip("the fscrypt tool is not installed")
    kernelfs.require_kernel()
    root = tmp_path_factory.mktemp("fscrypt-tool")
    image = kernelfs.make_image(root / "fs.img", 64, 4096, ("encrypt",))
    raw_key_file = root / "protector.key"
    raw_key_file.write_bytes(bytes(range(7, 39)))
    views = {}
    acls: dict[bytes, dict[str, bytes]] = {}
    with fscrypt_conf(), kernelfs.mounted(image) as mnt:
        _fscrypt("setup", "--force", "--quiet", mnt)
        secret, rawdir = mnt / "secret", mnt / "rawdir"
        secret.mkdir()
        _fscrypt(
            "encrypt", secret, "--quiet", "--source=custom_passphrase", "--name=mine",
            "--no-recovery", stdin=PASSPHRASE,
        )  # fmt: skip
        kernelfs.build_tree(secret)
        os.setxattr(secret / "a", "system.posix_acl_access", ACCESS_ACL)
        os.setxattr(secret / "dir1", "system.posix_acl_default", DEFAULT_ACL)
        rawdir.mkdir()
        _fscrypt(
            "encrypt", rawdir, "--quiet", "--source=raw_key", "--name=rk",
            f"--key={raw_key_file}",
        )  # fmt: skip
        kernelfs.build_tree(rawdir, kernelfs.TreeSpec(file_sizes=(0, 1, 5000, 70000)))
        (mnt / "plain.txt").write_bytes(b"never encrypted\n")
        os.sync()
        for top in (b"secret", b"rawdir"):
            views[top] = kernelfs.snapshot_view(mnt, top)
        for rel in (b"secret/a", b"secret/dir1"):
            acls[rel] = _acls(mnt / os.fsdecode(rel))
        assert acls[b"secret/a"]["system.posix_acl_access"] == ACCESS_ACL
        assert acls[b"secret/dir1"]["system.posix_acl_default"] == DEFAULT_ACL
        _fscrypt("lock", secret)
        _fscrypt("lock", rawdir)
        with pytest.raises(OSError) as info:
            (secret / "a").read_bytes()
        assert info.value.errno in (errno.ENOENT, errno.ENOKEY)  # names are no-key names now
    return ToolImage(image, raw_key_file, views, acls)


def assert_same_tree(
    kernel: dict[bytes, kernelfs.NodeView],
    restored: Path,
    *,
    atime: bool = True,
    links: bool = True,
) -> None:
    ours = kernelfs.snapshot_view(restored)
    assert set(ours) == set(kernel)
    for path, k in kernel.items():
        o = ours[path]
        assert (o.mode, o.uid, o.gid) == (k.mode, k.uid, k.gid), path
        assert o.mtime_ns == k.mtime_ns, path
        # Reading a file through one of its hard links changes the atime the next
        # link shows, so only singly linked files and directories are compared.
        if atime and not stat.S_ISLNK(k.mode) and (k.nlink == 1 or stat.S_ISDIR(k.mode)):
            assert o.atime_ns == k.atime_ns, path
        assert o.link_target == k.link_target, path
        assert o.xattrs == k.xattrs, path
        if not stat.S_ISDIR(k.mode):
            assert (o.size, o.sha256, o.rdev) == (k.size, k.sha256, k.rdev), path
            # A subtree keeps the hard links within it, not those to files outside.
            assert o.nlink == k.nlink or not links, path
        if stat.S_ISREG(k.mode) and k.blocks * 512 < k.size:
            assert o.blocks * 512 < o.size, f"{path!r} is no longer sparse"


def _backup(image: Path, repo: Path) -> str:
    assert run("init", "-r", str(repo)).exit_code == 0
    result = run("backup", str(image), "-r", str(repo), "--json")
    assert result.exit_code == 0, result.output
    snapshot_id: str = json.loads(result.output.splitlines()[-1])["snapshot_id"]
    return snapshot_id


def test_restore_with_fscrypt_tool_passphrase(tool_image: ToolImage, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    snap = _backup(tool_image.image, repo)
    target = tmp_path / "restored"
    pw_file = tmp_path / "pw"
    pw_file.write_text(PASSPHRASE + "\n")
    args = ["restore", snap[:8], "-r", str(repo), "--target", str(target), "--json"]
    result = run(*args, "--passphrase-file", str(pw_file), "--protector-key",
                 str(tool_image.raw_key_file))  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.splitlines()[-1])
    assert summary["problems"] == 0 and summary["skipped"] == 0
    for top, view in tool_image.views.items():
        assert_same_tree(view, target / os.fsdecode(top))
    for rel, acls in tool_image.acls.items():
        assert _acls(target / os.fsdecode(rel)) == acls
    assert (target / "plain.txt").read_bytes() == b"never encrypted\n"

    # Again: nothing is written, everything is already there.
    again = run(*args, "--passphrase-file", str(pw_file), "--protector-key",
                str(tool_image.raw_key_file))  # fmt: skip
    assert again.exit_code == 0, again.output
    summary = json.loads(again.output.splitlines()[-1])
    assert (summary["files"], summary["bytes"], summary["symlinks"]) == (0, 0, 0)
    assert summary["skipped"] > 0

    # The passphrase from a pipe (no terminal), one file with cat, and a wrong passphrase.
    only = tmp_path / "only-secret"
    piped = run("restore", snap[:8], "-r", str(repo), "--target", str(only), "--passphrase",
                "--path", "/secret", input=PASSPHRASE + "\n")  # fmt: skip
    assert piped.exit_code == 0, piped.output
    assert_same_tree(tool_image.views[b"secret"], only, atime=False)
    k = tool_image.views[b"secret"][b"a"]
    cat = CliRunner().invoke(
        cli,
        ["cat", "--passphrase", "-r", str(repo), snap[:8], "/secret/a"],
        env={**ENV, "CIPHERDUMP_FSCRYPT_PASSPHRASE": PASSPHRASE},
    )
    assert cat.exit_code == 0
    assert cat.stdout_bytes == (only / "a").read_bytes() and len(cat.stdout_bytes) == k.size
    wrong = run("restore", snap[:8], "-r", str(repo), "--target", str(tmp_path / "w"),
                "--passphrase", input="not it\n")  # fmt: skip
    assert wrong.exit_code == 4
    assert "wrong passphrase" in wrong.output and "custom passphrase" in wrong.output
    assert not (tmp_path / "w").exists()


def test_metadata_from_another_directory(tool_image: ToolImage, tmp_path: Path) -> None:
    """A snapshot of ``--path /secret`` has no ``/.fscrypt``: ``--fscrypt-metadata`` gives it."""
    repo = tmp_path / "repo"
    assert run("init", "-r", str(repo)).exit_code == 0
    full = run("backup", str(tool_image.image), "-r", str(repo), "--json")
    sub = run("backup", str(tool_image.image), "-r", str(repo), "--path", "/secret", "--json")
    assert full.exit_code == 0 and sub.exit_code == 0, sub.output
    full_id = json.loads(full.output.splitlines()[-1])["snapshot_id"][:8]
    sub_id = json.loads(sub.output.splitlines()[-1])["snapshot_id"][:8]
    meta = tmp_path / "meta"
    got = run("restore", full_id, "-r", str(repo), "--target", str(meta), "--path", "/.fscrypt")
    assert got.exit_code == 0, got.output
    env_pw = ["--passphrase"]
    target = tmp_path / "t"
    args = ["restore", sub_id, "-r", str(repo), "--target", str(target), "--path", "/secret"]
    lacking = run(*args, *env_pw, input=PASSPHRASE + "\n")
    assert lacking.exit_code == 4 and "no fscrypt metadata" in lacking.output
    ok = run(*args, *env_pw, "--fscrypt-metadata", str(meta), input=PASSPHRASE + "\n")
    assert ok.exit_code == 0, ok.output
    assert_same_tree(tool_image.views[b"secret"], target, atime=False)


@pytest.mark.parametrize("version", [1, 2])
def test_restore_with_raw_ioctl_keys(
    version: int,
    kernel_image_v1: kernelfs.KernelImage,
    kernel_image_v2: kernelfs.KernelImage,
    tmp_path: Path,
) -> None:
    ki = kernel_image_v1 if version == 1 else kernel_image_v2
    repo = tmp_path / "repo"
    snap = _backup(ki.image, repo)
    key = tmp_path / "key"
    key.write_text(ki.master_key.hex())
    target = tmp_path / "restored"
    result = run("restore", snap[:8], "-r", str(repo), "--target", str(target), "--key", str(key),
                 "--path", "/enc", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert_same_tree(ki.with_key, target)
    # A subtree, typed with its plaintext name or with the no-key name Linux shows.
    ino = ki.with_key[b"dir1"].ino
    [nokey] = [p for p, v in ki.no_key.items() if v.ino == ino]
    sub = {
        (p[len(b"dir1/") :] if p != b"dir1" else b"."): v
        for p, v in ki.with_key.items()
        if p == b"dir1" or p.startswith(b"dir1/")
    }
    for typed in (b"dir1", nokey):
        out = tmp_path / f"sub-{len(typed)}"
        result = run("restore", snap[:8], "-r", str(repo), "--target", str(out), "--key",
                     str(key), "--path", "/enc/" + os.fsdecode(typed))  # fmt: skip
        assert result.exit_code == 0, result.output
        assert_same_tree(sub, out, atime=False, links=False)
    # Without the key the encrypted tree is refused, not written as ciphertext.
    bare = run("restore", snap[:8], "-r", str(repo), "--target", str(tmp_path / "b"))
    assert bare.exit_code == 1
    assert "no key for policy" in bare.output
    assert (tmp_path / "b" / "plain.txt").read_bytes() == b"not encrypted\n"
    assert not (tmp_path / "b" / "enc").exists()


class _Stop(Exception):
    pass


def test_interrupted_restore_completes(
    kernel_image_v2: kernelfs.KernelImage, tmp_path: Path
) -> None:
    ki = kernel_image_v2
    repo_dir = tmp_path / "repo"
    snap = _backup(ki.image, repo_dir)
    repo = Repository.open(LocalBackend(str(repo_dir)), b"pw")
    try:
        snap_id, snapshot = repo.find_snapshot(snap[:8])
        view = SnapshotView(repo, snap_id, snapshot)
        ring = KeyRing([MasterKey(ki.master_key)])
        target = tmp_path / "restored"
        count = 0

        def stop_after_some(ev: object) -> None:
            nonlocal count
            count += 1
            if count == 12:
                raise _Stop

        with pytest.raises(_Stop):
            restore_plain(view, ring, target, path=b"/enc", on_progress=stop_after_some)
        # A file cut short as a crash mid-write leaves it: wrong size, the current mtime.
        written = [p for p in target.rglob("*") if p.is_file() and p.stat().st_size > 1]
        assert written
        with open(written[0], "r+b") as f:
            f.truncate(1)
        result, _ = restore_plain(view, ring, target, path=b"/enc")
        assert not result.problems
        assert result.skipped > 0
        assert_same_tree(ki.with_key, target, atime=False)
    finally:
        repo.close()


def test_mount_with_fscrypt_tool_passphrase_shows_plaintext(
    tool_image: ToolImage, tmp_path: Path
) -> None:
    """``cipherdump mount --passphrase-file --protector-key``: the snapshot's own
    ``.fscrypt`` unlocks both trees, which then read as the kernel showed them."""
    from fusemounts import require_fuse, serving

    require_fuse()
    repo = tmp_path / "repo"
    _backup(tool_image.image, repo)
    pw_file = tmp_path / "pw"
    pw_file.write_text(PASSPHRASE + "\n")
    env = dict(os.environ, **ENV, CIPHERDUMP_REPOSITORY=str(repo))
    args = ["--passphrase-file", str(pw_file), "--protector-key", str(tool_image.raw_key_file)]
    with serving(args, tmp_path / "mnt", env=env) as served:
        for top, view in tool_image.views.items():
            assert_same_tree(view, tmp_path / "mnt" / "latest" / os.fsdecode(top), atime=False)
        for rel, acls in tool_image.acls.items():
            assert _acls(tmp_path / "mnt" / "latest" / os.fsdecode(rel)) == acls
    assert served.exit_code == 0, served.stderr()
