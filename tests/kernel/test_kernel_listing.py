"""Acceptance: cipherdump lists a kernel-made encrypted tree as the kernel does without the key.

The kernel is the ground truth.  ``kernelfs`` builds each image with the running kernel and records
what ``os.listdir``/``os.lstat``/``statx``/``readlink`` showed on the mounted filesystem without the
key (``outside_view``: the whole tree, no-key names inside the encrypted directory) and with it
(``with_key``: user xattrs).  Here the CLI runs in-process on the unmounted image and every field
both sides report must agree byte for byte:

* names of ``ls -R --json`` (no-key names) and every field of ``ls --json`` and ``stat --json``
  that ``os.lstat``/``statx`` also report, for every named configuration (v1/v2, every padding,
  1 KiB/4 KiB blocks, IV_INO_LBLK_64/32 on stable_inodes, 512-byte data units, 128-byte inodes,
  the 10,000-entry htree directories, inline_data);
* hard links (same inode under every name) and ``info --json`` policy inode counts, everywhere;
* on a representative subset: ``cat --ciphertext`` against ``debugfs dump``, the ``stat --json``
  block map against ``debugfs ex``/``blocks``;
* an image attached read-only to a loop device and read through O_DIRECT lists the same as the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import kernelfs
from cipherdump.blockio import DirectDeviceSource, open_source
from cipherdump.cli.main import cli
from kernelfs import KernelImage, NodeView

pytestmark = pytest.mark.kernel

ALL_CONFIGS = sorted(kernelfs.NAMED_CONFIGS)
# One of each axis for the heavier byte-level comparisons: v1 and v2, both block sizes, a
# small and the largest padding, both IV_INO_LBLK flavours, 512-byte data units, 128-byte
# inodes (context in an xattr block), inline_data, and a 1 KiB htree whose extent tree has depth 0.
HEAVY_CONFIGS = [
    "4k-v2-pad32",
    "1k-v1-pad4",
    "4k-v1-pad16",
    "4k-stable-v2-pad32-lblk64",
    "1k-stable-v2-pad32-lblk32",
    "4k-v2-pad32-du512",
    "4k-inode128-v2-pad32",
    "4k-inline-v2-pad32",
    "1k-v2-pad32-bigdir",
]
BIGDIR_CONFIGS = [name for name in ALL_CONFIGS if "bigdir" in name]
# stat is run on every object except the entries of a big directory, of which one in this
# many is sampled (ls covers all of them).
BIGDIR_STAT_STRIDE = 500

_TYPE_NAMES = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "chardev",
    stat.S_IFBLK: "blockdev",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}

_RUNNER = CliRunner()


# --- running the CLI ----------------------------------------------------------------------------


def _cli(*args: str | bytes | os.PathLike[str]) -> bytes:
    """Run ``cipherdump ARGS`` in-process; its stdout, after asserting exit status 0."""
    argv = [os.fsdecode(a) for a in args]
    result = _RUNNER.invoke(cli, argv, catch_exceptions=False)
    assert result.exit_code == 0, (
        f"cipherdump {' '.join(argv)}: exit {result.exit_code}: {result.stderr}"
    )
    return result.stdout_bytes


def _b(text: str) -> bytes:
    """Bytes back from a JSON name (exact UTF-8, or surrogate escapes for other bytes)."""
    return text.encode("utf-8", "surrogateescape")


def _rel(path: bytes) -> bytes:
    """A cipherdump path (``/enc/x``) as a kernelfs view key (``enc/x``; root ``.``)."""
    return path.lstrip(b"/") or b"."


def _ls(target: str | os.PathLike[str], path: bytes = b"/") -> dict[bytes, dict[str, Any]]:
    out: dict[bytes, dict[str, Any]] = {}
    for line in _cli("ls", "-R", "--json", target, path).splitlines():
        rec = json.loads(line)
        out[_b(rec["path"])] = rec
    return out


def _stat(target: str | os.PathLike[str], path: bytes) -> dict[str, Any]:
    rec: dict[str, Any] = json.loads(_cli("stat", "--json", target, path))
    return rec


@dataclass(frozen=True)
class Ours:
    """What cipherdump shows for one image, keyed like the kernel's views (root ``.``)."""

    ls: dict[bytes, dict[str, Any]]
    stat: dict[bytes, dict[str, Any]]


_OURS: dict[Path, Ours] = {}


def _ours(ki: KernelImage) -> Ours:
    """``ls -R --json /`` and ``stat --json`` of (nearly) every object, once per image."""
    if ki.image in _OURS:
        return _OURS[ki.image]
    listing = {
        _rel(p): rec
        for p, rec in _ls(ki.image).items()
        if p != b"/lost+found" and not p.startswith(b"/lost+found/")
    }
    big = _big_dir(ki)
    stats: dict[bytes, dict[str, Any]] = {b".": _stat(ki.image, b"/")}
    in_big = 0
    for rel in listing:
        if big is not None and rel.startswith(big + b"/"):
            in_big += 1
            if in_big % BIGDIR_STAT_STRIDE:
                continue
        stats[rel] = _stat(ki.image, b"/" + rel)
    _OURS[ki.image] = Ours(listing, stats)
    return _OURS[ki.image]


def _big_dir(ki: KernelImage) -> bytes | None:
    """The no-key path of the big directory (view key), if the image has one."""
    if ki.tree.big_dir is None:
        return None
    return ki.config.encrypted_dir + b"/" + _nokey_path(ki, ki.tree.big_dir)


def _nokey_path(ki: KernelImage, with_key_rel: bytes) -> bytes:
    """The no-key path (relative to the encrypted dir) of a with-key path, matched by inode."""
    ino = ki.with_key[with_key_rel].ino
    (path,) = [rel for rel, v in ki.no_key.items() if v.ino == ino]
    return path


# --- what both sides report ---------------------------------------------------------------------


def _kernel_fields(v: NodeView, full: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": _TYPE_NAMES.get(stat.S_IFMT(v.mode), "unknown"),
        "mode": v.mode & 0o7777,
        "uid": v.uid,
        "gid": v.gid,
        "size": v.size,
        "inode": v.ino,
        "links": v.nlink,
        "mtime_ns": v.mtime_ns,
        "encrypted": v.encrypted,
        "target": v.link_target,
        "rdev": v.rdev,
    }
    if full:
        out.update(atime_ns=v.atime_ns, ctime_ns=v.ctime_ns, crtime_ns=v.crtime_ns, blocks=v.blocks)
    return out


def _our_fields(rec: dict[str, Any], full: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        k: rec[k]
        for k in ("type", "mode", "uid", "gid", "size", "inode", "links", "mtime_ns", "encrypted")
    }
    out["target"] = _b(rec["target"]) if "target" in rec else None
    out["rdev"] = os.makedev(*rec["rdev"]) if "rdev" in rec else 0
    if full:
        out.update({k: rec[k] for k in ("atime_ns", "ctime_ns", "crtime_ns", "blocks")})
    return out


def _diff(ours: dict[str, Any], kernel: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    return {k: (ours.get(k), kernel[k]) for k in kernel if ours.get(k) != kernel[k]}


def _user_xattrs(ki: KernelImage) -> dict[int, tuple[tuple[bytes, bytes], ...]]:
    """User xattrs by inode: the with-key view inside the encrypted tree, no-key view outside."""
    out = {v.ino: v.xattrs for v in ki.outside_view.values()}
    out.update({v.ino: v.xattrs for v in ki.with_key.values()})
    return out


def _our_user_xattrs(rec: dict[str, Any]) -> tuple[tuple[bytes, bytes], ...]:
    return tuple(
        sorted(
            (_b(x["name"]), bytes.fromhex(x["value_hex"]))
            for x in rec["xattrs"]
            if _b(x["name"]).startswith(b"user.")
        )
    )


def _encrypted_inodes(view: dict[bytes, NodeView]) -> set[int]:
    return {v.ino for v in view.values() if v.encrypted}


# --- names, ls and stat fields: every configuration ---------------------------------------------


@pytest.mark.parametrize("kernel_image", ALL_CONFIGS, indirect=True)
def test_names_equal_kernel_nokey_listing(kernel_image: KernelImage) -> None:
    ki = kernel_image
    ours = _ours(ki)
    kernel = set(ki.outside_view) - {b"."}
    assert set(ours.ls) == kernel
    # The encrypted directory alone, listed from its own path, gives the no-key view too.
    enc = ki.config.encrypted_dir
    sub = {_rel(p) for p in _ls(ki.image, b"/" + enc)}
    assert sub == {enc + b"/" + rel for rel in ki.no_key if rel != b"."}
    # Same number of names with and without the key: nothing lost to a decoding failure.
    assert len(ki.with_key) == len(ki.no_key)
    # The 255-byte name takes the long no-key form (149 bytes of ciphertext + SHA-256: 252
    # characters); the non-ASCII ones the short form.  All appear as the kernel spelled them.
    assert len(_nokey_path(ki, kernelfs.LONG_NAME)) == 252
    for name in (kernelfs.UTF8_NAME, kernelfs.BAD_UTF8_NAME):
        assert enc + b"/" + _nokey_path(ki, name) in ours.ls
    if ki.plain_tree is not None:
        # Unencrypted: the same names in plaintext, byte for byte.
        for name in (kernelfs.LONG_NAME, kernelfs.UTF8_NAME, kernelfs.BAD_UTF8_NAME):
            assert _b(ours.ls[ki.config.plain_dir + b"/" + name]["name"]) == name


@pytest.mark.parametrize("kernel_image", ALL_CONFIGS, indirect=True)
def test_ls_and_stat_fields_equal_os_stat(kernel_image: KernelImage) -> None:
    ki = kernel_image
    ours = _ours(ki)
    xattrs = _user_xattrs(ki)
    bad: dict[bytes, Any] = {}
    for rel, rec in ours.ls.items():
        d = _diff(_our_fields(rec, False), _kernel_fields(ki.outside_view[rel], False))
        if d:
            bad[b"ls " + rel] = d
    for rel, rec in ours.stat.items():
        v = ki.outside_view[rel]
        d = _diff(_our_fields(rec, True), _kernel_fields(v, True))
        if _our_user_xattrs(rec) != xattrs[v.ino]:
            d["user xattrs"] = (_our_user_xattrs(rec), xattrs[v.ino])
        if _b(rec["path"]) != (b"/" + rel if rel != b"." else b"/"):
            d["path"] = (rec["path"], rel)
        if d:
            bad[b"stat " + rel] = d
    assert not bad


@pytest.mark.parametrize("kernel_image", ALL_CONFIGS, indirect=True)
def test_hard_links_share_one_inode(kernel_image: KernelImage) -> None:
    ki = kernel_image
    ours: dict[int, list[bytes]] = {}
    for rel, rec in _ours(ki).ls.items():
        ours.setdefault(rec["inode"], []).append(rel)
    kernel = {
        ino: sorted(v.path for v in views)
        for ino, views in kernelfs.by_ino(ki.outside_view).items()
        if ino != ki.outside_view[b"."].ino
    }
    assert {ino: sorted(paths) for ino, paths in ours.items()} == kernel
    enc = ki.config.encrypted_dir
    linked = ki.tree.inodes[b"hardlink-source.txt"]
    assert len(ours[linked]) == 3
    assert all(p.startswith(enc + b"/") for p in ours[linked])
    assert {_ours(ki).ls[p]["links"] for p in ours[linked]} == {3}


@pytest.mark.parametrize("kernel_image", ALL_CONFIGS, indirect=True)
def test_info_counts_encrypted_inodes_per_policy(kernel_image: KernelImage) -> None:
    ki = kernel_image
    info = json.loads(_cli("info", "--json", ki.image))
    encrypted = _encrypted_inodes(ki.outside_view)
    assert encrypted == {rec["inode"] for rec in _ours(ki).ls.values() if rec["encrypted"]}
    (policy,) = info["encryption_policies"]
    assert policy["inodes"] == len(encrypted)
    assert info["encrypted_inodes_without_valid_context"] == 0
    assert info["unreadable_inodes"] == 0
    pol = ki.config.policy
    assert policy["version"] == pol.version
    spec = "key_descriptor" if pol.version == 1 else "key_identifier"
    assert bytes.fromhex(policy[spec]) == ki.key_spec
    assert policy["ties_to_filesystem"] == pol.needs_stable_inodes
    assert info["uuid"] == str(ki.uuid)
    assert info["block_size"] == ki.config.block_size


@pytest.mark.parametrize("kernel_image", ALL_CONFIGS, indirect=True)
def test_encrypted_symlink_size_is_the_nokey_target_length(kernel_image: KernelImage) -> None:
    """Without the key the kernel reports st_size = len(no-key target); i_size is 2 + ct."""
    ki = kernel_image
    enc = ki.config.encrypted_dir
    links = 0
    for rel, rec in _ours(ki).stat.items():
        if rec["type"] != "symlink" or not rec["encrypted"]:
            continue
        links += 1
        v = ki.outside_view[rel]
        assert rec["size"] == len(_b(rec["target"])) == v.size, rel
        stored = bytes.fromhex(rec["symlink_stored_hex"])
        assert rec["i_size"] == len(stored) == 2 + int.from_bytes(stored[:2], "little"), rel
        assert rel.startswith(enc + b"/")
    assert links == 5
    # Unencrypted objects: size and i_size are the same field.
    plain = _ours(ki).stat[b"plain.txt"]
    assert plain["size"] == plain["i_size"] == ki.outside_view[b"plain.txt"].size


# --- layout features ----------------------------------------------------------------------------


@pytest.mark.parametrize("kernel_image", ["4k-inode128-v2-pad32", "4k-v2-pad32"], indirect=True)
def test_context_location_follows_inode_size(kernel_image: KernelImage) -> None:
    """128-byte inodes have no room for xattrs: every context sits in an xattr block."""
    ki = kernel_image
    where = "block" if ki.config.inode_size == 128 else "inode"
    contexts = 0
    for rel, rec in _ours(ki).stat.items():
        found = [x for x in rec["xattrs"] if x["index"] == 9 and x["name"] == "encryption.c"]
        assert bool(found) == rec["encrypted"], rel
        if found:
            assert found[0]["where"] == where, rel
            assert found[0]["value_hex"] == rec["context"]["hex"], rel
            assert bytes.fromhex(rec["context"]["hex"])[1:4] == ki.policy[1:4], rel
            contexts += 1
    assert contexts == len(_encrypted_inodes(ki.outside_view)) + 2  # two extra hard-link names


@pytest.mark.parametrize("kernel_image", BIGDIR_CONFIGS, indirect=True)
def test_big_directory_is_an_htree_and_fully_listed(kernel_image: KernelImage) -> None:
    ki = kernel_image
    assert ki.htree_levels is not None
    big = _big_dir(ki)
    assert big is not None
    ours = _ours(ki)
    assert "index" in ours.stat[big]["flag_names"]
    entries = {rel for rel in ours.ls if rel.startswith(big + b"/")}
    assert len(entries) == ki.config.tree.big_dir_entries >= 10_000
    assert entries == {rel for rel in ki.outside_view if rel.startswith(big + b"/")}


@pytest.mark.parametrize("kernel_image", HEAVY_CONFIGS, indirect=True)
def test_fragmented_file_has_a_deep_extent_tree(kernel_image: KernelImage) -> None:
    ki = kernel_image
    frag = ki.tree.fragmented
    assert frag is not None
    assert ki.extent_depths[frag] >= 1
    rec = _ours(ki).stat[ki.config.encrypted_dir + b"/" + _nokey_path(ki, frag)]
    mapped = [e for e in rec["extents"] if e["pblk"] is not None]
    assert len(mapped) == ki.config.tree.fragments > 4
    assert _debugfs_extents(ki.image, rec["inode"])[0] == _our_extents(rec)


# --- block maps and ciphertext against debugfs ----------------------------------------------------

_EX_LEAF = re.compile(
    r"^\s*(\d+)/\s*(\d+)\s+\d+/\s*\d+\s+(\d+)\s*-\s*(\d+)\s+(\d+)\s*-\s*(\d+)\s+(\d+)\s*(Uninit)?\s*$"
)
_EX_INDEX = re.compile(r"^\s*(\d+)/\s*(\d+)\s+\d+/\s*\d+\s+\d+\s*-\s*\d+\s+(\d+)\s+\d+\s*$")


def _debugfs(image: Path, *commands: str) -> str:
    """Run debugfs commands on an image; the output of a single command is returned alone
    (``-R``), several run from standard input (``-f -``, which echoes each command)."""
    argv = ["debugfs", "-R", commands[0]] if len(commands) == 1 else ["debugfs", "-f", "-"]
    proc = subprocess.run(
        [*argv, os.fspath(image)],
        input="\n".join(commands) + "\n",
        capture_output=True,
        text=True,
        errors="replace",
        check=True,
    )
    return proc.stdout


def _debugfs_extents(image: Path, ino: int) -> tuple[list[tuple[int, int, int, bool]], list[int]]:
    """Leaf extents (lblk, length, pblk, unwritten) and index-node blocks from ``debugfs ex``."""
    leaves: list[tuple[int, int, int, bool]] = []
    index_blocks: list[int] = []
    for line in _debugfs(image, f"ex <{ino}>").splitlines():
        if m := _EX_LEAF.match(line):
            lstart, lend, pstart, pend, length = (int(m.group(i)) for i in range(3, 8))
            assert lend - lstart + 1 == pend - pstart + 1 == length, line
            leaves.append((lstart, length, pstart, m.group(8) is not None))
        elif m := _EX_INDEX.match(line):
            index_blocks.append(int(m.group(3)))
    return leaves, index_blocks


def _our_extents(rec: dict[str, Any]) -> list[tuple[int, int, int, bool]]:
    return [
        (e["lblk"], e["length"], e["pblk"], e["unwritten"])
        for e in rec["extents"]
        if e["pblk"] is not None
    ]


def _mapped_objects(ki: KernelImage) -> Iterable[tuple[bytes, dict[str, Any]]]:
    """Every object with a block map of its own (extents, no inline data), once per inode."""
    seen: set[int] = set()
    for rel, rec in _ours(ki).stat.items():
        if rec["inode"] in seen or "extents" not in rec["flag_names"]:
            continue
        seen.add(rec["inode"])
        yield rel, rec


@pytest.mark.parametrize("kernel_image", HEAVY_CONFIGS, indirect=True)
def test_block_maps_equal_debugfs(kernel_image: KernelImage) -> None:
    ki = kernel_image
    checked = 0
    for rel, rec in _mapped_objects(ki):
        leaves, index_blocks = _debugfs_extents(ki.image, rec["inode"])
        assert _our_extents(rec) == leaves, rel
        # ``blocks`` lists the extent tree's own blocks too; the rest is the data, in order.
        blocks = [int(b) for b in _debugfs(ki.image, f"blocks <{rec['inode']}>").split()]
        data = [b for b in blocks if b not in index_blocks]
        ours = [p + k for (_l, n, p, _u) in _our_extents(rec) for k in range(n)]
        assert ours == data, rel
        checked += 1
    assert checked >= 20
    # Holes and preallocation stay what they are: the sparse file's map, hole by hole.
    sparse = _ours(ki).stat[ki.config.encrypted_dir + b"/" + _nokey_path(ki, b"sparse.bin")]
    shape = [(e["lblk"], e["length"], e["pblk"] is None, e["unwritten"]) for e in sparse["extents"]]
    assert shape == [
        (0, 3, True, False),
        (3, 2, False, False),
        (5, 3, True, False),
        (8, 2, False, True),
        (10, 1, False, False),
        (11, 5, True, False),
    ]


@pytest.mark.parametrize("kernel_image", HEAVY_CONFIGS, indirect=True)
def test_ciphertext_equals_debugfs_dump(kernel_image: KernelImage, tmp_path: Path) -> None:
    ki = kernel_image
    files: dict[int, tuple[bytes, dict[str, Any]]] = {}
    for rel, rec in _ours(ki).stat.items():
        if rec["type"] == "file" and rec["inode"] not in files:
            files[rec["inode"]] = (rel, rec)
    _debugfs(ki.image, *(f"dump -p <{ino}> {tmp_path / str(ino)}" for ino in files))
    encrypted = 0
    for ino, (rel, rec) in files.items():
        out = _cli("cat", "--ciphertext", ki.image, b"/" + rel)
        dumped = (tmp_path / str(ino)).read_bytes()
        if rec["inline_data"]:
            # debugfs 1.47.0 dumps the whole inline area (60 bytes of i_block at least), not
            # i_size bytes; the kernel's own read of the file settles it.
            assert dumped[: rec["size"]] == out and not dumped[rec["size"] :].strip(b"\0"), rel
            assert hashlib.sha256(out).hexdigest() == ki.outside_view[rel].sha256, rel
            continue
        assert len(dumped) == rec["size"], rel
        assert out[: rec["size"]] == dumped, rel
        if rec["encrypted"]:
            encrypted += 1
            du = 1 << (rec["context"]["log2_data_unit_size"] or 0)
            if du == 1:
                du = ki.config.block_size
            assert len(out) == -(-rec["size"] // du) * du, rel
        else:
            assert len(out) == rec["size"], rel
    assert encrypted >= 15


# --- inline data ------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel_image", ["4k-inline-v2-pad32"], indirect=True)
def test_inline_data_objects_read_like_the_kernel(kernel_image: KernelImage) -> None:
    ki = kernel_image
    plain = ki.config.plain_dir
    ours = _ours(ki)
    inline: set[bytes] = set()
    for rel, rec in ours.stat.items():
        if not rel.startswith(plain + b"/"):
            continue
        assert rec["inline_data"] == kernelfs.debugfs_is_inline(ki.image, rec["inode"]), rel
        if rec["inline_data"]:
            inline.add(rel[len(plain) + 1 :])
    # What the kernel stored inline: tiny files (i_block only, and i_block + system.data),
    # and small directories (dir1 needs system.data for its entries).  Their st_blocks
    # counts the inline bytes of files, which the "blocks" field must do too (checked above).
    assert {
        b"file-0001",
        b"file-0002",
        b"file-0003",
        b"dir1",
        b"dir1/dir2",
        b"dir1/dir2/dir3",
        b"empty-dir",
    } <= inline
    # Plain files of every kind read back as the kernel read them.
    for rel, v in ki.outside_view.items():
        if rel.startswith(plain + b"/") and v.sha256 is not None:
            out = _cli("cat", ki.image, b"/" + rel)
            assert hashlib.sha256(out).hexdigest() == v.sha256, rel
    # The encrypted tree on the same filesystem is never inline (fscrypt-on-disk.md 2.9).
    enc = ki.config.encrypted_dir
    assert not any(r["inline_data"] for rel, r in ours.stat.items() if rel.startswith(enc))


# --- block device ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel_image", ["4k-v2-pad32", "1k-v2-pad32-bigdir"], indirect=True)
def test_block_device_reads_like_the_image(kernel_image: KernelImage) -> None:
    ki = kernel_image
    enc = ki.config.encrypted_dir
    frag = b"/" + enc + b"/" + _nokey_path(ki, b"fragmented.bin")
    link = b"/" + enc + b"/" + _nokey_path(ki, b"link-1000")
    from_file = _cli("ls", "-R", "--json", ki.image)
    with kernelfs.loop_device(ki.image, readonly=True) as dev:
        with open_source(dev) as src:
            assert isinstance(src, DirectDeviceSource)
        assert _cli("ls", "-R", "--json", dev) == from_file
        for path in (frag, link):
            assert _stat(dev, path) == _stat(ki.image, path)
        assert _cli("cat", "--ciphertext", dev, frag) == _cli("cat", "--ciphertext", ki.image, frag)
        info_dev = json.loads(_cli("info", "--json", dev))
    assert info_dev == json.loads(_cli("info", "--json", ki.image))


# --- end to end -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel_image", ["4k-v1-pad8"], indirect=True)
def test_cipherdump_command_prints_the_kernel_names(kernel_image: KernelImage) -> None:
    """The installed command, as a user runs it: ``cipherdump ls -R IMAGE`` and ``stat --json``."""
    ki = kernel_image
    exe = [os.path.join(os.path.dirname(sys.executable), "cipherdump")]
    if not os.path.exists(exe[0]):
        exe = ["cipherdump"]
    proc = subprocess.run([*exe, "ls", "-R", os.fspath(ki.image)], capture_output=True, check=True)
    lines = set(proc.stdout.splitlines())
    enc = ki.config.encrypted_dir
    want = {b"/" + enc + b"/" + rel for rel in ki.no_key if rel != b"."}
    assert want <= lines
    assert lines - want == {b"/" + enc, b"/plain.txt", b"/lost+found"}
    link = b"/" + enc + b"/" + _nokey_path(ki, b"link-200")
    proc = subprocess.run(
        [*exe, "stat", "--json", os.fspath(ki.image), os.fsdecode(link)],
        capture_output=True,
        check=True,
    )
    rec = json.loads(proc.stdout)
    v = ki.no_key[link[len(enc) + 2 :]]
    assert _b(rec["target"]) == v.link_target
    assert rec["size"] == v.size
    assert rec["mtime_ns"] == v.mtime_ns
