"""What the machine can do, and images, loop devices and mounts that are always undone:
every one is registered so that ``cleanup_leftovers()`` can undo it even after a crash
in a test; ``debugfs`` helpers read facts the kernel does not show."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from kernelfs.uapi import (
    MODE_AES_256_CTS,
    MODE_AES_256_XTS,
    PAD_32,
    add_key,
    master_key_from_label,
    remove_key,
    set_policy,
)

# --- capability probe -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Caps:
    """What the live tier needs, probed once; ``missing`` names what is absent."""

    root: bool
    loop: bool
    mkfs: bool
    debugfs: bool
    fscrypt: bool
    kernel: str
    missing: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.missing

    @property
    def reason(self) -> str:
        if self.ok:
            return f"kernel tier available (Linux {self.kernel})"
        return "kernel tier unavailable: " + "; ".join(self.missing)


@functools.cache
def kernel_capabilities() -> Caps:
    """Probe root, loop devices, e2fsprogs and the fscrypt ioctls (by encrypting a real dir)."""
    missing: list[str] = []
    root = os.geteuid() == 0
    if not root:
        missing.append("not running as root")
    loop = os.path.exists("/dev/loop-control") and shutil.which("losetup") is not None
    if not loop:
        missing.append("no /dev/loop-control or losetup")
    mkfs = shutil.which("mkfs.ext4") is not None
    if not mkfs:
        missing.append("mkfs.ext4 not found")
    debugfs = shutil.which("debugfs") is not None
    if not debugfs:
        missing.append("debugfs not found")
    fscrypt = False
    if root and loop and mkfs:
        try:
            _probe_fscrypt()
            fscrypt = True
        except subprocess.CalledProcessError as exc:
            tool = os.path.basename(str(exc.cmd[0]))
            missing.append(f"fscrypt probe: {tool} failed: {str(exc.stderr).strip()}")
        except OSError as exc:
            missing.append(f"fscrypt probe failed: {exc}")
    return Caps(
        root=root,
        loop=loop,
        mkfs=mkfs,
        debugfs=debugfs,
        fscrypt=fscrypt,
        kernel=os.uname().release,
        missing=tuple(missing),
    )


def _probe_fscrypt() -> None:
    """Encrypt a directory on a throwaway 8 MiB image and create a file in it."""
    with tempfile.TemporaryDirectory(prefix="kernelfs-probe-") as tmp:
        image = Path(tmp) / "probe.img"
        make_image(image, 8)
        with mounted(image) as mnt:
            key = master_key_from_label("kernelfs capability probe")
            identifier = add_key(mnt, key)
            enc = mnt / "enc"
            enc.mkdir()
            set_policy(enc, 2, MODE_AES_256_XTS, MODE_AES_256_CTS, PAD_32, identifier)
            (enc / "probe-file-name-of-some-length").write_bytes(b"probe")
            remove_key(mnt, identifier)


def require_kernel() -> None:
    """Skip the calling test when the live tier cannot run; fail instead when ``CI=true``.

    CI must not silently skip the kernel tier, so there a missing capability is an error.
    """
    import pytest

    caps = kernel_capabilities()
    if caps.ok:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{caps.reason} (CI=true: the kernel tier must run)", pytrace=False)
    pytest.skip(caps.reason)


# --- images, loop devices, mounts -----------------------------------------------------------------


@dataclass
class _Live:
    """One loop device or mount point this module set up, until it is undone.

    Records, not names: once ``cleanup_leftovers`` has undone one, a context manager finishing
    late (say, a leaked generator closed at interpreter exit) must not touch a ``/dev/loopN``
    that meanwhile belongs to someone else.
    """

    kind: str  # "loop" or "mount"
    target: str  # /dev/loopN or the mount point
    backing: str  # the image file
    done: bool = False


# Everything attached or mounted by this module and not yet undone; cleanup_leftovers() drains it.
_LIVE: list[_Live] = []


def _run(argv: Sequence[str | os.PathLike[str]], stdin: int | None = None) -> str:
    """Run a tool, return its stdout; raise CalledProcessError (with stderr) on failure."""
    proc = subprocess.run(
        [os.fspath(a) for a in argv],
        check=False,
        capture_output=True,
        text=True,
        errors="replace",  # debugfs prints raw ciphertext names
        stdin=stdin,
    )
    if proc.returncode != 0:
        raise subprocess.CalledProcessError(proc.returncode, proc.args, proc.stdout, proc.stderr)
    return str(proc.stdout)


def make_image(
    path: Path,
    size_mib: int,
    block_size: int = 4096,
    features: Sequence[str] = ("encrypt",),
    inode_size: int | None = None,
    extra_mkfs_args: Sequence[str] = (),
    extended_options: Sequence[str] = (),
) -> Path:
    """Create a sparse ``size_mib`` MiB file and ``mkfs.ext4`` it.

    Inode tables and the journal are zeroed at mkfs time (``lazy_*_init=0``): otherwise the
    kernel's ext4lazyinit thread keeps writing to the image after mount, which makes the image
    differ from run to run and can race with unmount.  On images this small it costs nothing.
    ``features`` go to ``-O`` as given (prefix ``^`` to turn one off).  ``extended_options``
    (e.g. ``hash_seed=<uuid>``) join those in the single ``-E``: mke2fs keeps only the last one.
    """
    path = Path(path)
    with open(path, "wb") as f:
        f.truncate(size_mib * 1024 * 1024)
    argv: list[str] = ["mkfs.ext4", "-F", "-q", "-b", str(block_size)]
    argv += ["-E", ",".join(["lazy_itable_init=0", "lazy_journal_init=0", *extended_options])]
    if features:
        argv += ["-O", ",".join(features)]
    if inode_size is not None:
        argv += ["-I", str(inode_size)]
    argv += list(extra_mkfs_args)
    argv.append(os.fspath(path))
    _run(argv)
    return path


@contextlib.contextmanager
def loop_device(image: Path, readonly: bool = False, direct_io: bool = False) -> Iterator[str]:
    """Attach ``image`` to a free loop device; always detach it again.  ``direct_io``:
    the device reads its file around the page cache, as a disk has none below it."""
    argv = ["losetup", "--find", "--show"]
    if readonly:
        argv.append("--read-only")
    if direct_io:
        argv.append("--direct-io=on")
    dev = _run([*argv, os.fspath(image)]).strip()
    live = _Live("loop", dev, os.path.realpath(image))
    _LIVE.append(live)
    try:
        yield dev
    finally:
        if not live.done:
            _detach(live)


def _detach(live: _Live) -> None:
    # Right after umount the device can still be busy for a moment (udev probes it).
    for _ in range(50):
        proc = subprocess.run(["losetup", "-d", live.target], capture_output=True, check=False)
        if proc.returncode == 0 or not _loop_backs(live):
            break
        time.sleep(0.1)
    else:
        raise RuntimeError(f"cannot detach {live.target}: {proc.stderr.decode(errors='replace')}")
    _forget(live)


def _forget(live: _Live) -> None:
    live.done = True
    with contextlib.suppress(ValueError):
        _LIVE.remove(live)


def _loop_backs(live: _Live) -> bool:
    """Is ``live.target`` still a loop device over ``live.backing``?"""
    name = os.path.basename(live.target)
    try:
        with open(f"/sys/block/{name}/loop/backing_file") as f:
            return f.read().strip() == live.backing
    except OSError:
        return False


@contextlib.contextmanager
def mounted(
    image: Path,
    options: Sequence[str] = ("noatime",),
    readonly: bool = False,
) -> Iterator[Path]:
    """Loop-mount ``image`` on a fresh temporary directory and yield the mount point.

    Unmounts, detaches the loop device and removes the directory on the way out, whatever
    happened inside.  ``noatime`` is the default so that walking and reading the tree (as
    ``snapshot_view`` does) does not change the timestamps it records.  Unmounting also drops
    every fscrypt key added through this mount (the keyring is per superblock).
    """
    mnt = Path(tempfile.mkdtemp(prefix="kernelfs-mnt-"))
    try:
        with loop_device(image, readonly=readonly) as dev:
            opts = list(options) + (["ro"] if readonly else [])
            argv = ["mount", "-t", "ext4"]
            if opts:
                argv += ["-o", ",".join(opts)]
            _run([*argv, dev, mnt])
            live = _Live("mount", os.fspath(mnt), os.path.realpath(image))
            _LIVE.append(live)
            try:
                yield mnt
            finally:
                if not live.done:
                    _unmount(live)
    finally:
        with contextlib.suppress(OSError):
            mnt.rmdir()


def _unmount(live: _Live) -> None:
    for _ in range(50):
        proc = subprocess.run(["umount", live.target], capture_output=True, check=False)
        if proc.returncode == 0 or not os.path.ismount(live.target):
            break
        time.sleep(0.1)
    else:
        raise RuntimeError(f"cannot unmount {live.target}: {proc.stderr.decode(errors='replace')}")
    _forget(live)


def live_resources() -> list[str]:
    """Loop devices and mount points set up by this module and not yet undone."""
    return [f"{live.kind} {live.target} ({live.backing})" for live in _LIVE]


def cleanup_leftovers() -> list[str]:
    """Unmount and detach everything this module set up and did not undo; say what was undone.

    Mounts go first (lazily, so a process still inside cannot block it), then loop devices,
    each only if it still backs the same image.
    """
    undone: list[str] = []
    for live in sorted(_LIVE, key=lambda x: x.kind != "mount"):
        if live.kind == "mount":
            if os.path.ismount(live.target):
                subprocess.run(["umount", "-l", live.target], capture_output=True, check=False)
                undone.append(f"umount {live.target}")
            with contextlib.suppress(OSError):
                os.rmdir(live.target)
        elif _loop_backs(live):
            subprocess.run(["losetup", "-d", live.target], capture_output=True, check=False)
            undone.append(f"losetup -d {live.target}")
        _forget(live)
    return undone


def read_uuid(image: Path) -> uuid.UUID:
    """``s_uuid`` straight from the superblock (offset 1024 + 0x68)."""
    with open(image, "rb") as f:
        f.seek(1024 + 0x68)
        return uuid.UUID(bytes=f.read(16))


def extent_depth(image: Path, ino: int) -> int:
    """Depth of an inode's extent tree, from ``debugfs ex`` on the unmounted image."""
    out = _run(["debugfs", "-R", f"ex <{ino}>", os.fspath(image)], stdin=subprocess.DEVNULL)
    # Rows look like " 0/ 1   1/  1     0 -   49  1234            50"; column 1 is level/max.
    levels = [int(m.group(1)) for m in re.finditer(r"^\s*\d+/\s*(\d+)\s", out, re.MULTILINE)]
    return max(levels, default=0)


def htree_levels(image: Path, ino: int) -> int | None:
    """``Indirect levels`` of an htree directory (0 = root index only), None if not indexed."""
    proc = subprocess.run(
        ["debugfs", "-R", f"htree_dump <{ino}>", os.fspath(image)],
        capture_output=True,
        text=True,
        errors="replace",  # debugfs prints raw ciphertext names
        stdin=subprocess.DEVNULL,
        check=False,
    )
    m = re.search(r"Indirect levels:\s*(\d+)", proc.stdout)
    return int(m.group(1)) if m else None


def htree_index_limits(image: Path, ino: int) -> list[tuple[int, int]]:
    """``(count, limit)`` of the htree root and then of each interior node, in the order
    ``debugfs htree_dump`` prints them (e2fsprogs reads them as stored, without judging)."""
    proc = subprocess.run(
        ["debugfs", "-R", f"htree_dump <{ino}>", os.fspath(image)],
        capture_output=True,
        text=True,
        errors="replace",
        stdin=subprocess.DEVNULL,
        check=False,
    )
    found = re.findall(
        r"\(count\):\s*(\d+)\s*\n\s*Number of entries \(limit\):\s*(\d+)", proc.stdout
    )
    return [(int(c), int(lim)) for c, lim in found]


def debugfs_is_inline(image: Path, ino: int) -> bool:
    """Whether ``debugfs stat`` shows EXT4_INLINE_DATA_FL (0x10000000) on an inode."""
    out = _run(["debugfs", "-R", f"stat <{ino}>", os.fspath(image)], stdin=subprocess.DEVNULL)
    m = re.search(r"Flags: 0x([0-9a-f]+)", out)
    if m is None:
        raise RuntimeError(f"debugfs stat <{ino}> printed no flags")
    return bool(int(m.group(1), 16) & 0x10000000)


def debugfs_context(image: Path, ino: int) -> bytes | None:
    """The raw encryption context (xattr index 9, name ``c``) as ``debugfs ea_get -x`` shows it."""
    proc = subprocess.run(
        ["debugfs", "-R", f"ea_get -x <{ino}> c", os.fspath(image)],
        capture_output=True,
        text=True,
        errors="replace",  # debugfs prints raw ciphertext names
        stdin=subprocess.DEVNULL,
        check=False,
    )
    m = re.search(r"^c \((\d+)\) = ([0-9a-f ]+)$", proc.stdout, re.MULTILINE)
    if m is None:
        return None
    value = bytes.fromhex(m.group(2))
    if len(value) != int(m.group(1)):
        raise RuntimeError(f"debugfs printed {len(value)} bytes for a {m.group(1)}-byte xattr")
    return value
