"""Tests of the live-tier harness itself, against the running kernel.

If these fail, every kernel-backed comparison elsewhere is suspect, so they check the harness
against independent facts: the key identifier against HKDF, the policy against the on-disk context
(read by debugfs), file contents against the oracle in ``kernelfs.expected_files``, and no-key
name lengths against the padding rule of the on-disk format notes (section 6.1, 7.1).
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

import kernelfs
from kernelfs import KernelImage, KeyStatus, NodeView

# Every small configuration: each padding x v1/v2 x 1 KiB/4 KiB, LBLK_64/32, 512-byte data units,
# 128-byte inodes.  Each builds in well under a second.
SMALL_CONFIGS = sorted(name for name in kernelfs.NAMED_CONFIGS if "bigdir" not in name)
NOKEY_NAME = re.compile(rb"^[A-Za-z0-9_-]+$")


def _v2_identifier(master_key: bytes) -> bytes:
    """HKDF-SHA512 with no salt, info "fscrypt\\0" || 0x01: the v2 key identifier (4.3)."""
    return HKDF(hashes.SHA512(), 16, None, b"fscrypt\0\x01").derive(master_key)


def _ct_len(plain_len: int, padding: int, cap: int) -> int:
    return min(-(-max(plain_len, 16) // padding) * padding, cap)


def _nokey_len(ct_len: int) -> int:
    return math.ceil(4 * (8 + ct_len) / 3) if ct_len <= 149 else 252


def _attached_images() -> str:
    return subprocess.run(["losetup", "-a"], capture_output=True, text=True, check=True).stdout


def _comparable(node: NodeView, seconds_only: bool) -> tuple[object, ...]:
    """What must not change when the key goes away (everything but names, targets, data)."""
    times: tuple[int | None, ...] = (node.atime_ns, node.mtime_ns, node.ctime_ns, node.crtime_ns)
    if seconds_only:
        times = tuple(None if t is None else t // 10**9 for t in times)
    size = None if stat.S_ISLNK(node.mode) else node.size
    return (
        node.mode,
        node.uid,
        node.gid,
        node.nlink,
        node.rdev,
        node.blocks,
        size,
        times,
        node.encrypted,
        node.xattrs,
    )


# --- the capability gate (no kernel needed) ---------------------------------------------------


_MISSING = kernelfs.Caps(False, False, False, False, False, "test", ("not running as root",))


def test_require_kernel_skips_with_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernelfs.devices, "kernel_capabilities", lambda: _MISSING)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not running as root"):
        kernelfs.require_kernel()


def test_require_kernel_fails_on_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernelfs.devices, "kernel_capabilities", lambda: _MISSING)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        kernelfs.require_kernel()


# --- building ------------------------------------------------------------------------------------


@pytest.mark.kernel
def test_capabilities_are_probed_once() -> None:
    caps = kernelfs.kernel_capabilities()
    assert caps is kernelfs.kernel_capabilities()
    assert caps.ok, caps.reason


@pytest.mark.kernel
def test_v2_image_builds(kernel_image_v2: KernelImage) -> None:
    ki = kernel_image_v2
    assert ki.image.is_file()
    assert str(ki.image) not in _attached_images()
    assert subprocess.run(["e2fsck", "-fn", ki.image], capture_output=True).returncode == 0
    assert ki.key_spec == _v2_identifier(ki.master_key)
    assert ki.policy == kernelfs.encode_policy(2, 1, 4, kernelfs.PAD_32, ki.key_spec)
    assert ki.uuid == kernelfs.read_uuid(ki.image)
    # The context on disk is the policy followed by the nonce GET_ENCRYPTION_NONCE returned.
    context = kernelfs.debugfs_context(ki.image, ki.with_key[b"."].ino)
    assert context == ki.policy + ki.dir_nonce
    assert kernelfs.debugfs_context(ki.image, ki.outside_view[b"plain.txt"].ino) is None


@pytest.mark.kernel
def test_v1_image_builds(kernel_image_v1: KernelImage) -> None:
    ki = kernel_image_v1
    assert subprocess.run(["e2fsck", "-fn", ki.image], capture_output=True).returncode == 0
    assert ki.key_spec == kernelfs.key_descriptor(ki.master_key)
    assert ki.policy == bytes([0, 1, 4, kernelfs.PAD_32]) + ki.key_spec
    # v1: policy version byte 0, context version byte 1 (section 3.1).
    context = kernelfs.debugfs_context(ki.image, ki.with_key[b"."].ino)
    assert context == b"\x01" + ki.policy[1:] + ki.dir_nonce


@pytest.mark.kernel
def test_build_leaves_nothing_mounted(kernel_image_v2: KernelImage) -> None:
    assert (
        "kernelfs-mnt-"
        not in subprocess.run(
            ["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True, check=True
        ).stdout
    )
    assert not kernelfs.live_resources()


# --- the two views -------------------------------------------------------------------------------


@pytest.mark.kernel
@pytest.mark.parametrize("kernel_image", SMALL_CONFIGS, indirect=True)
def test_views_differ_in_names_agree_in_metadata(kernel_image: KernelImage) -> None:
    with_key, no_key = kernelfs.by_ino(kernel_image.with_key), kernelfs.by_ino(kernel_image.no_key)
    assert with_key.keys() == no_key.keys()
    seconds_only = kernel_image.config.inode_size == 128  # no extra timestamp bits
    for ino, nodes in with_key.items():
        others = no_key[ino]
        assert len(nodes) == len(others), nodes[0].path  # hard links: one entry per name
        assert _comparable(nodes[0], seconds_only) == _comparable(others[0], seconds_only)
    plain_names = {os.path.basename(p) for p in kernel_image.with_key} - {b"."}
    nokey_names = {os.path.basename(p) for p in kernel_image.no_key} - {b"."}
    assert not plain_names & nokey_names
    assert all(NOKEY_NAME.match(name) for name in nokey_names)
    # Sizes (compared above for all but symlinks): spell out the directory and special cases.
    kinds = {node.kind for node in kernel_image.no_key.values()}
    assert {"reg", "dir", "lnk", "fifo", "chr", "blk", "sock"} <= kinds
    for node in kernel_image.no_key.values():
        if node.kind == "dir":
            assert node.size == with_key[node.ino][0].size > 0
        elif node.kind in ("fifo", "chr", "blk", "sock"):
            assert node.size == with_key[node.ino][0].size == 0


@pytest.mark.kernel
@pytest.mark.parametrize("kernel_image", SMALL_CONFIGS, indirect=True)
def test_nokey_name_lengths_follow_padding_rule(kernel_image: KernelImage) -> None:
    padding = 4 << (kernel_image.config.policy.flags & 3)

    def lengths(view: dict[bytes, NodeView], expected: bool) -> dict[bytes, list[int]]:
        # Key each directory by its inode so the two views line up.
        out: dict[bytes, list[int]] = {}
        for path in view:
            if path == b".":
                continue
            parent = view[os.path.dirname(path) or b"."].ino
            name = os.path.basename(path)
            n = _nokey_len(_ct_len(len(name), padding, 255)) if expected else len(name)
            out.setdefault(b"%d" % parent, []).append(n)
        return {k: sorted(v) for k, v in out.items()}

    assert lengths(kernel_image.with_key, True) == lengths(kernel_image.no_key, False)


@pytest.mark.kernel
@pytest.mark.parametrize("kernel_image", SMALL_CONFIGS, indirect=True)
def test_contents_with_key_and_enokey_without(kernel_image: KernelImage) -> None:
    expected = kernelfs.expected_files(kernel_image.config.tree, kernel_image.config.block_size)
    for path, data in expected.items():
        node = kernel_image.with_key[path]
        assert node.size == len(data), path
        assert node.sha256 == hashlib.sha256(data).hexdigest(), path
        assert node.read_errno is None
    regular = [n for n in kernel_image.no_key.values() if n.kind == "reg"]
    assert len(regular) == len(expected)
    assert all(n.read_errno == "ENOKEY" and n.sha256 is None for n in regular)
    assert (
        kernel_image.outside_view[b"plain.txt"].sha256
        == hashlib.sha256(b"not encrypted\n").hexdigest()
    )


@pytest.mark.kernel
@pytest.mark.parametrize("kernel_image", SMALL_CONFIGS, indirect=True)
def test_symlinks_and_special_files(kernel_image: KernelImage) -> None:
    padding = 4 << (kernel_image.config.policy.flags & 3)
    cap = kernel_image.config.block_size - 3
    no_key = kernelfs.by_ino(kernel_image.no_key)
    targets = {
        b"link-fast": kernelfs.SHORT_TARGET,
        b"link-200": kernelfs.MEDIUM_TARGET,
        b"link-1000": kernelfs.LONG_TARGET,
        b"link-to-utf8": kernelfs.UTF8_NAME,
    }
    for path, target in targets.items():
        node = kernel_image.with_key[path]
        assert node.link_target == target and node.size == len(target)
        (hidden,) = no_key[node.ino]
        assert hidden.link_target is not None and NOKEY_NAME.match(hidden.link_target)
        want = _nokey_len(_ct_len(len(target), padding, cap))
        assert hidden.size == len(hidden.link_target) == want
    for path, kind in (
        (b"fifo", "fifo"),
        (b"chardev-null", "chr"),
        (b"blockdev", "blk"),
        (b"socket", "sock"),
    ):
        node = kernel_image.with_key[path]
        assert node.kind == kind and node.encrypted is False and node.size == 0
    assert kernel_image.with_key[b"chardev-null"].rdev == os.makedev(1, 3)
    assert all(
        n.encrypted for n in kernel_image.with_key.values() if n.kind in ("reg", "dir", "lnk")
    )


@pytest.mark.kernel
@pytest.mark.parametrize("kernel_image", SMALL_CONFIGS, indirect=True)
def test_metadata_and_layout(kernel_image: KernelImage) -> None:
    wk = kernel_image.with_key
    seconds_only = kernel_image.config.inode_size == 128
    f = wk[b"file-0001"]
    assert (stat.S_IMODE(f.mode), f.uid, f.gid) == (0o4751, 1234, 5678)
    if seconds_only:
        assert f.mtime_ns == kernelfs.MTIME_NS // 10**9 * 10**9
        assert f.crtime_ns is None
    else:
        assert (f.atime_ns, f.mtime_ns) == (kernelfs.ATIME_NS, kernelfs.MTIME_NS)
        assert f.crtime_ns is not None
    assert stat.S_IMODE(wk[b"empty-dir"].mode) == 0o1777
    assert wk[b"hardlink-source.txt"].nlink == 3
    assert wk[b"dir1/hardlink-in-subdir.txt"].ino == wk[b"hardlink-source.txt"].ino
    assert dict(wk[b"file-0002"].xattrs)[b"user.binary"] == bytes(range(256))
    assert dict(wk[b"dir1"].xattrs) == {b"user.on-dir": b"dir xattr"}
    assert kernel_image.extent_depths[b"fragmented.bin"] >= 1
    # A sparse file occupies only its 3 written and 2 preallocated blocks (plus the xattr block
    # holding the context when inodes are too small for it).
    bs = kernel_image.config.block_size
    xattr_block = bs if kernel_image.config.inode_size == 128 else 0
    assert wk[b"sparse.bin"].blocks * 512 == 5 * bs + xattr_block


@pytest.mark.kernel
@pytest.mark.slow
@pytest.mark.parametrize(
    "kernel_image", ["4k-v2-pad32-bigdir", "1k-v2-pad32-bigdir"], indirect=True
)
def test_big_directory_is_an_htree(kernel_image: KernelImage) -> None:
    big = kernel_image.tree.big_dir
    assert big is not None
    assert kernel_image.htree_levels is not None  # indexed
    if kernel_image.config.block_size == 1024:
        assert kernel_image.htree_levels >= 1
    n = kernel_image.config.tree.big_dir_entries
    hidden_dir = kernelfs.by_ino(kernel_image.no_key)[kernel_image.with_key[big].ino][0].path
    assert sum(os.path.dirname(p) == big for p in kernel_image.with_key) == n
    assert sum(os.path.dirname(p) == hidden_dir for p in kernel_image.no_key) == n


# --- keys, live -----------------------------------------------------------------------------------


@pytest.mark.kernel
@pytest.mark.parametrize("version", [1, 2])
def test_key_removal_gives_enokey(tmp_path: Path, version: int) -> None:
    image = kernelfs.make_image(tmp_path / "removal.img", 8)
    key = kernelfs.master_key_from_label(f"removal test v{version}")
    descriptor = kernelfs.key_descriptor(key) if version == 1 else None
    with kernelfs.mounted(image) as mnt:
        spec = kernelfs.add_key(mnt, key, descriptor)
        assert kernelfs.key_status(mnt, spec).status == KeyStatus.PRESENT
        enc = mnt / "enc"
        enc.mkdir()
        kernelfs.set_policy(enc, version, 1, 4, kernelfs.PAD_16, spec)
        (enc / "secret.txt").write_bytes(b"top secret\n")
        assert kernelfs.remove_key(mnt, spec) == 0
        assert kernelfs.key_status(mnt, spec).status == KeyStatus.ABSENT
        (hidden,) = os.listdir(enc)
        assert hidden != "secret.txt"
        with pytest.raises(OSError) as info:
            open(enc / hidden, "rb")  # noqa: SIM115 - must fail
        assert info.value.errno == errno.ENOKEY
        with pytest.raises(OSError) as info:
            (enc / "new-file-name").write_bytes(b"")
        assert info.value.errno == errno.ENOKEY
        # Adding the key back makes the same tree readable again, without a remount.
        kernelfs.add_key(mnt, key, descriptor)
        assert (enc / "secret.txt").read_bytes() == b"top secret\n"
    assert str(image) not in _attached_images()


@pytest.mark.kernel
def test_busy_key_removal_is_incomplete(tmp_path: Path) -> None:
    image = kernelfs.make_image(tmp_path / "busy.img", 8)
    key = kernelfs.master_key_from_label("busy removal test")
    with kernelfs.mounted(image) as mnt:
        spec = kernelfs.add_key(mnt, key)
        enc = mnt / "enc"
        enc.mkdir()
        kernelfs.set_policy(enc, 2, 1, 4, kernelfs.PAD_32, spec)
        (enc / "held-open.txt").write_bytes(b"still readable\n")
        with open(enc / "held-open.txt", "rb") as held:
            assert kernelfs.remove_key(mnt, spec) == 0x1  # FILES_BUSY
            assert kernelfs.key_status(mnt, spec).status == KeyStatus.INCOMPLETELY_REMOVED
            assert held.read() == b"still readable\n"
        assert kernelfs.remove_key(mnt, spec) == 0
        assert kernelfs.key_status(mnt, spec).status == KeyStatus.ABSENT


@pytest.mark.kernel
def test_mounted_cleans_up_after_an_error(tmp_path: Path) -> None:
    image = kernelfs.make_image(tmp_path / "error.img", 8, block_size=1024)
    seen: list[Path] = []
    with pytest.raises(RuntimeError, match="boom"), kernelfs.mounted(image) as mnt:
        seen.append(mnt)
        assert os.path.ismount(mnt)
        raise RuntimeError("boom")
    assert not seen[0].exists()
    assert str(image) not in _attached_images()
    assert not kernelfs.cleanup_leftovers()
