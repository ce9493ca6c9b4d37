"""``cipherdump mount`` through real FUSE, against what the kernel showed of the same tree.

Ground truth is ``kernelfs``'s record of a kernel-made image: the kernel's no-key view
(after the key was removed and the filesystem remounted) and its with-key view, walked
with ``lstat``/``readlink``/``listxattr``; and e2fsprogs (``debugfs``) for what the
kernel cannot show without the key: the stored bytes of a file and its context.

* ``mount --ciphertext IMAGE``: the no-key names the kernel listed, its modes, owners,
  ns times, inode numbers, link counts, device numbers, symlink targets and xattrs;
  encrypted files read as debugfs dumps them, padded to whole data units; the
  ``user.cipherdump.*`` records agree with the inode.
* ``mount`` of a repository holding a backup of that image: the same without keys
  (inode numbers stable per snapshot, one per hard-linked inode), and with ``--key``
  the kernel's with-key view: plaintext names, contents (SHA-256), targets, xattrs.
* the layout (``snapshots/``, ``latest``, ``ids/``, ``hosts/``, ``tags/``), SIGINT and
  SIGTERM unmounting cleanly, and a missing mfusepy as a one-line error.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import kernelfs
from cipherdump.engine import keyless_records as records
from fusemounts import CLI, require_fuse, serving
from kernelfs import NodeView, snapshot_view

pytestmark = pytest.mark.kernel

CONFIGS = [
    "4k-v2-pad32",
    "4k-v1-pad32",
    "4k-stable-v2-pad32-lblk64",
    "1k-v2-pad32",
    "4k-v2-pad32-du512",
    "4k-inline-v2-pad32",
    "4k-inode128-v2-pad32",
]
PREFIX = records.XATTR_PREFIX.encode()


@pytest.fixture(autouse=True)
def _fuse() -> None:
    require_fuse()


def _env(repo: Path | None = None) -> dict[str, str]:
    env = dict(os.environ, CIPHERDUMP_INSECURE_TEST_KDF="1", CIPHERDUMP_PASSWORD="pw")
    env.pop("CIPHERDUMP_REPOSITORY", None)
    if repo is not None:
        env["CIPHERDUMP_REPOSITORY"] = str(repo)
    return env


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run([*CLI, *args], env=env, capture_output=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc


def _debugfs_dump(image: Path, ino: int, out: Path) -> bytes:
    """The stored bytes of inode ``ino`` (up to i_size) as e2fsprogs reads them."""
    subprocess.run(
        ["debugfs", "-R", f"dump <{ino}> {out}", str(image)],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=True,
    )
    return out.read_bytes()


def _du(kernel_image: kernelfs.KernelImage) -> int:
    pol = kernel_image.config.policy
    if pol.log2_data_unit_size:
        return 1 << pol.log2_data_unit_size
    return kernel_image.config.block_size


def _nokey_bytes(nokey: bytes) -> bytes:
    """What a kernel no-key name (or symlink target) holds after its 8 hash bytes."""
    return base64.urlsafe_b64decode(nokey + b"=" * (-len(nokey) % 4))[8:]


def _records(node: NodeView) -> dict[bytes, bytes]:
    return {k[len(PREFIX) :]: v for k, v in node.xattrs if k.startswith(PREFIX)}


def _own(node: NodeView) -> tuple[tuple[bytes, bytes], ...]:
    return tuple((k, v) for k, v in node.xattrs if not k.startswith(PREFIX))


def _same_links(ours: dict[bytes, NodeView], theirs: dict[bytes, NodeView]) -> None:
    """Paths that share an inode in one view share one in the other, and only those."""

    def groups(view: dict[bytes, NodeView]) -> set[frozenset[bytes]]:
        by: dict[int, set[bytes]] = {}
        for path, node in view.items():
            by.setdefault(node.ino, set()).add(path)
        return {frozenset(paths) for paths in by.values()}

    assert groups(ours) == groups(theirs)


def _check_nokey(
    ours: dict[bytes, NodeView],
    root: Path,
    kernel_image: kernelfs.KernelImage,
    tmp_path: Path,
    *,
    same_inos: bool,
) -> None:
    """A key-less view of the encrypted tree against the kernel's no-key view."""
    kernel = kernel_image.no_key
    assert sorted(ours) == sorted(kernel)  # the no-key names the kernel listed
    du = _du(kernel_image)
    for path, k in kernel.items():
        o = ours[path]
        what = path.decode(errors="replace")
        assert (o.mode, o.uid, o.gid, o.nlink, o.rdev) == (k.mode, k.uid, k.gid, k.nlink, k.rdev), (
            what
        )
        assert (o.atime_ns, o.mtime_ns, o.ctime_ns) == (k.atime_ns, k.mtime_ns, k.ctime_ns), what
        if same_inos:
            assert o.ino == k.ino, what
        assert o.link_target == k.link_target, what
        assert _own(o) == k.xattrs, what
        rec = _records(o)
        if stat.S_ISREG(k.mode) or stat.S_ISDIR(k.mode):
            assert int(rec[b"ino"]) == k.ino, what
        if stat.S_ISREG(k.mode):
            # The exact size is the record; st_size is the padded size.
            assert int(rec[b"size"]) == k.size, what
            assert o.size == -(-k.size // du) * du, what
            assert o.read_errno is None, what
        elif not stat.S_ISDIR(k.mode):
            assert o.size == k.size, what
        if stat.S_ISREG(k.mode) or stat.S_ISDIR(k.mode):
            assert rec[b"context"] == kernelfs.debugfs_context(kernel_image.image, k.ino), what
        if stat.S_ISREG(k.mode) and path in (b"a", b"sparse.bin", b"fragmented.bin"):
            stored = _debugfs_dump(kernel_image.image, k.ino, tmp_path / "dump")
            data = (root / os.fsdecode(path)).read_bytes()
            assert data[: k.size] == stored, what
            assert len(data) == o.size
    _same_links(ours, kernel)


@pytest.mark.parametrize("kernel_image", CONFIGS, indirect=True)
def test_ciphertext_mount_shows_what_the_kernel_shows_without_the_key(
    kernel_image: kernelfs.KernelImage, tmp_path: Path
) -> None:
    mnt = tmp_path / "mnt"
    with serving(["--ciphertext", str(kernel_image.image)], mnt, env=_env()) as served:
        enc = mnt / os.fsdecode(kernel_image.config.encrypted_dir)
        ours = snapshot_view(enc)
        _check_nokey(ours, enc, kernel_image, tmp_path, same_inos=True)
        # Outside the encrypted tree everything is as the kernel shows it, records none.
        outside = snapshot_view(mnt)
        for path, k in kernel_image.outside_view.items():
            if path == b"." or path.startswith(kernel_image.config.encrypted_dir + b"/"):
                continue
            if path == kernel_image.config.encrypted_dir:
                continue
            o = outside[path]
            assert (o.mode, o.ino, o.size, o.mtime_ns, o.sha256) == (
                k.mode, k.ino, k.size, k.mtime_ns, k.sha256,
            )  # fmt: skip
            # Records on every object, as dump puts them: a copy that dropped them is caught.
            if stat.S_ISREG(k.mode) or stat.S_ISDIR(k.mode):
                assert _records(o)[b"ino"] == str(k.ino).encode()
                assert b"flags" in _records(o) and b"context" not in _records(o)
        facts = json.loads(os.getxattr(mnt, records.xattr_name(records.FILESYSTEM)))
        assert facts["block_size"] == kernel_image.config.block_size
        assert facts["uuid"] == kernel_image.uuid.hex
        # Symlinks and special files carry their records as trusted.cipherdump.*
        # (Linux keeps no user.* xattrs on them).
        enc = mnt / os.fsdecode(kernel_image.config.encrypted_dir)
        others = [p for p, n in kernel_image.no_key.items() if n.kind not in ("reg", "dir")]
        assert any(kernel_image.no_key[p].kind == "lnk" for p in others)
        for p in others:
            k = kernel_image.no_key[p]
            full = enc / os.fsdecode(p)

            def trusted(record: str, full: Path = full) -> bytes:
                return os.getxattr(full, "trusted.cipherdump." + record, follow_symlinks=False)

            assert trusted("ino") == str(k.ino).encode(), p
            assert int(trusted("flags")) >= 0
            # The name the kernel's no-key name encodes: whole, or its first 149 bytes.
            assert _nokey_bytes(os.path.basename(p))[:149] == trusted("name")[:149], p
            if k.kind == "lnk":
                assert trusted("context") == kernelfs.debugfs_context(kernel_image.image, k.ino)
                payload = trusted("symlink")
                assert int.from_bytes(payload[:2], "little") == len(payload) - 2
                assert _nokey_bytes(k.link_target or b"")[:149] == payload[2:151], p
    assert served.exit_code == 0, served.stderr()
    assert served.unmounted_cleanly


def _backup(kernel_image: kernelfs.KernelImage, repo: Path) -> str:
    env = _env(repo)
    _cli(env, "init")
    _cli(env, "backup", "--tag", "nightly", str(kernel_image.image))
    listed = json.loads(_cli(env, "snapshots", "--json").stdout)
    return str(listed[-1]["id"])


@pytest.mark.parametrize("kernel_image", ["4k-v2-pad32", "1k-v2-pad32"], indirect=True)
def test_repository_mount_without_and_with_keys(
    kernel_image: kernelfs.KernelImage, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    sid = _backup(kernel_image, repo)
    short = sid[:8]
    enc = os.fsdecode(kernel_image.config.encrypted_dir)
    mnt = tmp_path / "mnt"
    with serving(["--cache-size", "1M"], mnt, env=_env(repo), stop_signal=signal.SIGINT) as served:
        assert sorted(os.listdir(mnt)) == ["hosts", "ids", "latest", "snapshots", "tags"]
        assert os.readlink(mnt / "latest") == f"snapshots/{short}"
        assert sorted(os.listdir(mnt / "snapshots")) == sorted([short, "latest"])
        assert os.readlink(mnt / "ids" / sid) == f"../snapshots/{short}"
        assert os.listdir(mnt / "tags") == ["nightly"]
        assert os.readlink(mnt / "tags" / "nightly" / short) == f"../../snapshots/{short}"
        assert os.path.samefile(mnt / "tags" / "nightly" / "latest", mnt / "snapshots" / short)
        (host,) = os.listdir(mnt / "hosts")
        assert os.path.isdir(mnt / "hosts" / host / "latest" / enc)
        top = mnt / "snapshots" / short / enc
        ours = snapshot_view(top)
        _check_nokey(ours, top, kernel_image, tmp_path, same_inos=False)
        again = snapshot_view(mnt / "latest" / enc)
        assert {p: n.ino for p, n in again.items()} == {p: n.ino for p, n in ours.items()}
        # The mount holds a shared lock: what needs an exclusive one waits for it.
        tagging = subprocess.run(
            [*CLI, "tag", "--add", "x", short], env=_env(repo), capture_output=True, timeout=120
        )
        assert tagging.returncode == 8, tagging.stderr
    assert served.exit_code == 0, served.stderr()
    assert served.unmounted_cleanly

    key = tmp_path / "key"
    key.write_bytes(kernel_image.master_key)
    with serving(["--key", str(key)], mnt, env=_env(repo)) as served:
        ours = snapshot_view(mnt / "latest" / enc)
        kernel = kernel_image.with_key
        assert sorted(ours) == sorted(kernel)
        for path, k in kernel.items():
            o = ours[path]
            what = path.decode(errors="replace")
            assert (o.mode, o.uid, o.gid, o.nlink, o.rdev) == (
                k.mode,
                k.uid,
                k.gid,
                k.nlink,
                k.rdev,
            ), what
            assert (o.mtime_ns, o.ctime_ns) == (k.mtime_ns, k.ctime_ns), what
            assert (o.link_target, o.sha256, o.xattrs) == (k.link_target, k.sha256, k.xattrs), what
            if not stat.S_ISDIR(k.mode):
                assert o.size == k.size, what
        _same_links(ours, kernel)
    assert served.exit_code == 0, served.stderr()
    assert served.unmounted_cleanly


def test_mount_without_mfusepy_is_one_line_and_exit_2(tmp_path: Path) -> None:
    script = (
        "import sys; sys.modules['mfusepy'] = None\nfrom cipherdump.cli.main import main; main()\n"
    )
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", script, "mount", "--ciphertext", "x.img", str(mnt)],
        env=_env(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1 and "pip install 'cipherdump[mount]'" in lines[0]


def test_acls_and_other_xattrs_read_as_the_kernel_returns_them(tmp_path: Path) -> None:
    """ext4 stores ACLs in a form of its own; the view returns what getxattr(2) did."""
    # A comma in the source's name: libfuse's option list must not split at it.
    image = kernelfs.make_image(tmp_path / "acl,1.img", 16)
    acl = (2).to_bytes(4, "little") + b"".join(
        tag.to_bytes(2, "little") + perm.to_bytes(2, "little") + ident.to_bytes(4, "little")
        for tag, perm, ident in (
            (0x01, 6, 0xFFFFFFFF),
            (0x02, 4, 1234),
            (0x04, 4, 0xFFFFFFFF),
            (0x10, 4, 0xFFFFFFFF),
            (0x20, 0, 0xFFFFFFFF),
        )
    )
    with kernelfs.mounted(image) as mnt:
        (mnt / "f").write_bytes(b"x")
        os.setxattr(mnt / "f", "system.posix_acl_access", acl)
        os.setxattr(mnt / "f", "trusted.note", b"t")
        kernel = {n: os.getxattr(mnt / "f", n) for n in os.listxattr(mnt / "f")}
    with serving(["--ciphertext", str(image)], tmp_path / "mnt", env=_env()):
        f = tmp_path / "mnt" / "f"
        shown = {n: os.getxattr(f, n) for n in os.listxattr(f)}
        assert {n: v for n, v in shown.items() if not n.startswith("user.cipherdump.")} == kernel
        assert kernel["system.posix_acl_access"] == acl


def _find(root: Path, fmt: str) -> list[str]:
    proc = subprocess.run(
        ["find", ".", "-printf", fmt],
        cwd=root,
        capture_output=True,
        timeout=120,
        check=True,
    )
    return sorted(proc.stdout.decode(errors="surrogateescape").splitlines())


@pytest.mark.parametrize("kernel_image", ["4k-v2-pad32", "1k-v1-pad16"], indirect=True)
def test_find_stat_and_cmp_agree_with_the_kernel_mount(
    kernel_image: kernelfs.KernelImage, tmp_path: Path
) -> None:
    """GNU find, stat and cmp over the kernel's own mount of the image and over ours:
    without the key (``--ciphertext``) and with it (a repository mount with ``--key``)."""
    enc = os.fsdecode(kernel_image.config.encrypted_dir)
    # Sizes differ without the key (padded), inode numbers with it (per snapshot).
    nokey_fmt = "%P %y %m %U %G %n %i %T@ %C@ %l\\n"
    keyed_fmt = "%P %y %m %U %G %n %s %T@ %C@ %l\\n"
    repo = tmp_path / "repo"
    _backup(kernel_image, repo)
    key = tmp_path / "key"
    key.write_bytes(kernel_image.master_key)
    # Read-only: the image stays unchanged, and a source mounted read-write is refused.
    with kernelfs.mounted(kernel_image.image, readonly=True) as kmnt:
        kernel_nokey = _find(kmnt / enc, nokey_fmt)
        pol = kernel_image.config.policy
        descriptor = kernelfs.key_descriptor(kernel_image.master_key) if pol.version == 1 else None
        kernelfs.add_key(kmnt, kernel_image.master_key, descriptor)
        kernel_keyed = _find(kmnt / enc, keyed_fmt)
        with serving(["--ciphertext", str(kernel_image.image)], tmp_path / "ct", env=_env()):
            assert _find(tmp_path / "ct" / enc, nokey_fmt) == kernel_nokey
        with serving(["--key", str(key)], tmp_path / "mnt", env=_env(repo)):
            ours = tmp_path / "mnt" / "latest" / enc
            assert _find(ours, keyed_fmt) == kernel_keyed
            for line in _find(ours, "%y %P\\n"):
                kind, _, rel = line.partition(" ")
                if kind == "f":
                    subprocess.run(["cmp", ours / rel, kmnt / enc / rel], timeout=60, check=True)
