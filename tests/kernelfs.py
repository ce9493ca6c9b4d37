"""Build real fscrypt-encrypted ext4 images with the running kernel, and record what it shows.

This is the live test tier's harness.  cipherdump reads the on-disk format without keys; the only
trustworthy reference for "what the filesystem contains" is the kernel itself, so these helpers
make images with ``mkfs.ext4``, loop-mount them, encrypt directories through the fscrypt ioctls,
populate them, and record the kernel's view both with the key (plaintext names) and without it
(no-key names, ENOKEY on open).

Needs root, loop devices, ``mkfs.ext4``/``debugfs`` and a kernel with fscrypt
(``kernel_capabilities()`` probes all of it once).  Every loop device and mount point this module
creates is registered so that ``cleanup_leftovers()`` can undo it even after a crash in a test; the
context managers undo their own work in ``finally`` blocks.

Names and paths are ``bytes`` throughout: encrypted directories hold names that are not valid UTF-8.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import functools
import hashlib
import os
import re
import shutil
import stat
import struct
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "DEFAULT_TREE",
    "FLAG_IV_INO_LBLK_32",
    "FLAG_IV_INO_LBLK_64",
    "INLINE_PLAIN_TREE",
    "MODE_AES_256_CTS",
    "MODE_AES_256_XTS",
    "NAMED_CONFIGS",
    "PAD_4",
    "PAD_8",
    "PAD_16",
    "PAD_32",
    "Caps",
    "ImageConfig",
    "KernelImage",
    "KeyStatus",
    "NodeView",
    "PolicySpec",
    "TreeInfo",
    "TreeSpec",
    "add_key",
    "build_kernel_image",
    "build_tree",
    "by_ino",
    "cleanup_leftovers",
    "debugfs_context",
    "debugfs_is_inline",
    "encode_policy",
    "expected_files",
    "extent_depth",
    "get_nonce",
    "get_policy_ex",
    "htree_levels",
    "kernel_capabilities",
    "key_descriptor",
    "key_status",
    "live_resources",
    "loop_device",
    "make_image",
    "master_key_from_label",
    "mounted",
    "pattern",
    "read_uuid",
    "remove_key",
    "require_kernel",
    "set_policy",
    "snapshot_view",
]

# --- fscrypt uapi (include/uapi/linux/fscrypt.h) -----------------------------------------------

FS_IOC_SET_ENCRYPTION_POLICY = 0x800C6613
FS_IOC_GET_ENCRYPTION_POLICY_EX = 0xC0096616
FS_IOC_ADD_ENCRYPTION_KEY = 0xC0506617
FS_IOC_REMOVE_ENCRYPTION_KEY = 0xC0406618
FS_IOC_GET_ENCRYPTION_KEY_STATUS = 0xC080661A
FS_IOC_GET_ENCRYPTION_NONCE = 0x8010661B

KEY_SPEC_TYPE_DESCRIPTOR = 1
KEY_SPEC_TYPE_IDENTIFIER = 2
KEY_SPEC_SIZE = 40  # le32 type, le32 reserved, 32-byte union
ADD_KEY_HEADER_SIZE = 80
REMOVE_KEY_ARG_SIZE = 64
KEY_STATUS_ARG_SIZE = 128

MODE_AES_256_XTS = 1
MODE_AES_256_CTS = 4
PAD_4, PAD_8, PAD_16, PAD_32 = 0x00, 0x01, 0x02, 0x03
FLAG_DIRECT_KEY = 0x04
FLAG_IV_INO_LBLK_64 = 0x08
FLAG_IV_INO_LBLK_32 = 0x10

# fallocate(2) modes; Python only wraps posix_fallocate, so punching holes goes through libc.
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

# statx(2), for the birth time and the "encrypted" attribute, which os.stat does not report.
STATX_BASIC_STATS = 0x07FF
STATX_BTIME = 0x0800
STATX_ATTR_ENCRYPTED = 0x0800
AT_SYMLINK_NOFOLLOW = 0x100

_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


# --- keys -----------------------------------------------------------------------------------------


def master_key_from_label(label: bytes | str, size: int = 64) -> bytes:
    """A deterministic, public master key: SHA-512 of ``label``, cut to ``size`` bytes.

    These keys protect nothing; they make kernel-made images reproducible in content and let a
    test (or a user of the sample image) decrypt them later.
    """
    if isinstance(label, str):
        label = label.encode()
    if not 16 <= size <= 64:
        raise ValueError("fscrypt master keys are 16..64 bytes")
    return hashlib.sha512(label).digest()[:size]


def key_descriptor(master_key: bytes) -> bytes:
    """The e4crypt/fscrypt convention for a v1 descriptor: SHA-512(SHA-512(key))[:8].

    The kernel never checks it; any 8 bytes would do.
    """
    return hashlib.sha512(hashlib.sha512(master_key).digest()).digest()[:8]


def _key_spec(key_spec: bytes) -> bytes:
    """Encode a key specifier: 8 bytes are a v1 descriptor, 16 bytes a v2 identifier."""
    if len(key_spec) == 8:
        kind = KEY_SPEC_TYPE_DESCRIPTOR
    elif len(key_spec) == 16:
        kind = KEY_SPEC_TYPE_IDENTIFIER
    else:
        raise ValueError(f"key spec must be 8 (descriptor) or 16 (identifier) bytes: {key_spec!r}")
    return struct.pack("<II32s", kind, 0, key_spec)


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


# --- fscrypt ioctls -------------------------------------------------------------------------------


def _ioctl_path(path: Path, request: int, arg: bytearray) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, request, arg, True)
    finally:
        os.close(fd)


def add_key(mnt: Path, raw_key: bytes, v1_descriptor: bytes | None = None) -> bytes:
    """FS_IOC_ADD_ENCRYPTION_KEY on the filesystem mounted at ``mnt``.

    Without ``v1_descriptor`` the key is added as a v2 key and the kernel-computed 16-byte
    identifier is returned; with it, the key is added for v1 policies under that 8-byte
    descriptor, which is returned.
    """
    if v1_descriptor is None:
        # The kernel fills in the identifier; the union goes in zeroed.
        spec = struct.pack("<II32x", KEY_SPEC_TYPE_IDENTIFIER, 0)
    else:
        spec = _key_spec(v1_descriptor)
    arg = bytearray(spec + struct.pack("<II32x", len(raw_key), 0) + raw_key)
    assert len(arg) == ADD_KEY_HEADER_SIZE + len(raw_key)
    _ioctl_path(mnt, FS_IOC_ADD_ENCRYPTION_KEY, arg)
    if v1_descriptor is not None:
        return v1_descriptor
    return bytes(arg[8:24])


@dataclass(frozen=True)
class KeyStatus:
    """FS_IOC_GET_ENCRYPTION_KEY_STATUS: status 1 absent, 2 present, 3 incompletely removed."""

    status: int
    status_flags: int
    user_count: int

    ABSENT = 1
    PRESENT = 2
    INCOMPLETELY_REMOVED = 3


def key_status(mnt: Path, key_spec: bytes) -> KeyStatus:
    arg = bytearray(_key_spec(key_spec).ljust(KEY_STATUS_ARG_SIZE, b"\0"))
    _ioctl_path(mnt, FS_IOC_GET_ENCRYPTION_KEY_STATUS, arg)
    status, flags, users = struct.unpack_from("<III", arg, KEY_SPEC_SIZE + 24)
    return KeyStatus(status, flags, users)


def remove_key(mnt: Path, key_spec: bytes) -> int:
    """FS_IOC_REMOVE_ENCRYPTION_KEY; returns the removal status flags (1 = files still busy)."""
    arg = bytearray(_key_spec(key_spec).ljust(REMOVE_KEY_ARG_SIZE, b"\0"))
    _ioctl_path(mnt, FS_IOC_REMOVE_ENCRYPTION_KEY, arg)
    return int(struct.unpack_from("<I", arg, KEY_SPEC_SIZE)[0])


@dataclass(frozen=True)
class PolicySpec:
    """What to pass to FS_IOC_SET_ENCRYPTION_POLICY, minus the key spec (known only at run time).

    ``flags`` holds the padding (PAD_*) and at most one of IV_INO_LBLK_64/32 (v2 only).
    """

    version: int = 2
    contents_mode: int = MODE_AES_256_XTS
    filenames_mode: int = MODE_AES_256_CTS
    flags: int = PAD_32
    log2_data_unit_size: int = 0

    @property
    def label(self) -> str:
        pad = 4 << (self.flags & 3)
        extra = ""
        if self.flags & FLAG_IV_INO_LBLK_64:
            extra += "_lblk64"
        if self.flags & FLAG_IV_INO_LBLK_32:
            extra += "_lblk32"
        if self.log2_data_unit_size:
            extra += f"_du{1 << self.log2_data_unit_size}"
        return f"v{self.version}_m{self.contents_mode}-{self.filenames_mode}_pad{pad}{extra}"

    @property
    def needs_stable_inodes(self) -> bool:
        return bool(self.flags & (FLAG_IV_INO_LBLK_64 | FLAG_IV_INO_LBLK_32))


def encode_policy(
    version: int,
    contents_mode: int,
    filenames_mode: int,
    flags: int,
    key_spec: bytes,
    log2_du: int = 0,
) -> bytes:
    """The ioctl policy struct: 12 bytes for v1 (version byte **0**), 24 bytes for v2."""
    if version == 1:
        if len(key_spec) != 8 or log2_du:
            raise ValueError("v1 policies take an 8-byte descriptor and no data unit size")
        return struct.pack("<BBBB8s", 0, contents_mode, filenames_mode, flags, key_spec)
    if version == 2:
        if len(key_spec) != 16:
            raise ValueError("v2 policies take a 16-byte identifier")
        return struct.pack(
            "<BBBBB3x16s", 2, contents_mode, filenames_mode, flags, log2_du, key_spec
        )
    raise ValueError(f"unknown policy version {version}")


def set_policy(
    directory: Path,
    version: int,
    contents_mode: int,
    filenames_mode: int,
    flags: int,
    key_spec: bytes,
    log2_du: int = 0,
) -> None:
    """FS_IOC_SET_ENCRYPTION_POLICY on an empty directory."""
    policy = encode_policy(version, contents_mode, filenames_mode, flags, key_spec, log2_du)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, FS_IOC_SET_ENCRYPTION_POLICY, policy)
    finally:
        os.close(fd)


def get_policy_ex(path: Path) -> bytes:
    """FS_IOC_GET_ENCRYPTION_POLICY_EX: the 12-byte (v1) or 24-byte (v2) policy struct."""
    arg = bytearray(struct.pack("<Q", 24) + b"\0" * 24)
    _ioctl_path(path, FS_IOC_GET_ENCRYPTION_POLICY_EX, arg)
    (size,) = struct.unpack_from("<Q", arg, 0)
    return bytes(arg[8 : 8 + size])


def get_nonce(path: Path) -> bytes:
    """FS_IOC_GET_ENCRYPTION_NONCE: the 16-byte nonce of a regular file or directory."""
    arg = bytearray(16)
    _ioctl_path(path, FS_IOC_GET_ENCRYPTION_NONCE, arg)
    return bytes(arg)


# --- tree builder ---------------------------------------------------------------------------------

# The sizes the task calls interesting: empty, one byte, around one 4 KiB block, and a large
# odd size that does not end on any block or data-unit boundary.
DEFAULT_FILE_SIZES: tuple[int, ...] = (0, 1, 4095, 4096, 4097, 1024 * 1024 + 3)


@dataclass(frozen=True)
class TreeSpec:
    """What ``build_tree`` creates.  Hashable, so it can key a cache of built images."""

    file_sizes: tuple[int, ...] = DEFAULT_FILE_SIZES
    sparse: bool = True
    hardlinks: bool = True
    odd_names: bool = True
    symlinks: bool = True
    specials: bool = True  # FIFO, char device, socket
    xattrs: bool = True
    metadata: bool = True  # chmod / chown / utime with nanoseconds
    subdirs: bool = True
    fragmented: bool = True
    fragments: int = 12  # extents in the fragmented file; > 4 forces depth >= 1
    big_dir_entries: int = 0  # 10_000 makes a 200+ leaf-block htree; ~2 s, so opt-in


DEFAULT_TREE = TreeSpec()

# Fixed timestamps (ns) so views are comparable across builds; odd nanoseconds on purpose.
ATIME_NS = 1_000_000_000 * 1_234_567_890 + 123_456_789
MTIME_NS = 1_000_000_000 * 1_500_000_000 + 987_654_321
LONG_NAME = b"L" * 251 + b".txt"  # 255 bytes, NAME_MAX
UTF8_NAME = "café-ünïcödé-名前-😀.txt".encode()
BAD_UTF8_NAME = b"bad\xff\xfe-not-utf8"
SHORT_TARGET = b"file-0001"  # fast symlink with every padding
MEDIUM_TARGET = b"t" * 200  # slow symlink
LONG_TARGET = b"/" + b"x" * 999  # ~1000 bytes: still fits a 1 KiB block (limit 1021)


@dataclass(frozen=True)
class TreeInfo:
    """What ``build_tree`` made that tests may want to find again (paths relative to root)."""

    files: dict[bytes, int]  # relative path -> size
    fragmented: bytes | None
    sparse: bytes | None
    big_dir: bytes | None
    inodes: dict[bytes, int] = field(default_factory=dict)  # relative path -> st_ino


def pattern(size: int, seed: int) -> bytes:
    """Deterministic non-repeating content (SHA-256 counter stream), so a misplaced block shows."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(seed.to_bytes(4, "little") + counter.to_bytes(8, "little")).digest()
        counter += 1
    return bytes(out[:size])


def _fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    fn = _LIBC.fallocate
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong]
    if fn(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"fallocate(mode={mode:#x}): {os.strerror(err)}")


def build_tree(root: Path, spec: TreeSpec = DEFAULT_TREE) -> TreeInfo:
    """Populate ``root`` (normally a freshly encrypted, empty directory) according to ``spec``.

    The first regular file is called ``a``: a one-byte name is the case where padding (to 16,
    then to the policy's multiple) matters most.  Sizes and layouts scale with the block size.
    """
    r = os.fsencode(root)
    bs = os.statvfs(r).f_bsize
    files: dict[bytes, int] = {}
    fragmented = sparse = big_dir = None

    def p(rel: bytes) -> bytes:
        return os.path.join(r, rel)

    for i, size in enumerate(spec.file_sizes):
        rel = b"file-%04d" % i if i else b"a"  # one single-letter name: maximal padding
        with open(p(rel), "wb") as f:
            f.write(pattern(size, i))
        files[rel] = size

    if spec.subdirs:
        os.makedirs(p(b"dir1/dir2/dir3"))
        os.mkdir(p(b"empty-dir"))
        with open(p(b"dir1/dir2/dir3/deep.txt"), "wb") as f:
            f.write(b"deep inside\n")
        files[b"dir1/dir2/dir3/deep.txt"] = 12
        with open(p(b"dir1/in-subdir.bin"), "wb") as f:
            f.write(pattern(3 * bs + 5, 99))
        files[b"dir1/in-subdir.bin"] = 3 * bs + 5

    if spec.hardlinks:
        src = b"hardlink-source.txt"
        with open(p(src), "wb") as f:
            f.write(b"linked three times\n")
        files[src] = 19
        os.link(p(src), p(b"hardlink-same-dir.txt"))
        if spec.subdirs:
            os.link(p(src), p(b"dir1/hardlink-in-subdir.txt"))

    if spec.odd_names:
        for name in (LONG_NAME, UTF8_NAME, BAD_UTF8_NAME):
            with open(p(name), "wb") as f:
                f.write(name)
            files[name] = len(name)

    if spec.symlinks:
        os.symlink(SHORT_TARGET, p(b"link-fast"))
        os.symlink(MEDIUM_TARGET, p(b"link-200"))
        os.symlink(LONG_TARGET, p(b"link-1000"))
        os.symlink(UTF8_NAME, p(b"link-to-utf8"))
        if spec.subdirs:
            os.symlink(b"../" + SHORT_TARGET, p(b"dir1/link-up"))

    if spec.specials:
        os.mkfifo(p(b"fifo"), 0o640)
        os.mknod(p(b"chardev-null"), stat.S_IFCHR | 0o600, os.makedev(1, 3))
        os.mknod(p(b"blockdev"), stat.S_IFBLK | 0o600, os.makedev(7, 200))
        # mknod(2) makes socket inodes too, without bind()'s 108-byte path limit.
        os.mknod(p(b"socket"), stat.S_IFSOCK | 0o755)

    if spec.sparse:
        sparse = b"sparse.bin"
        # 16 blocks: hole [0,3), data [3,5), hole [5,8), unwritten [8,10), data [10,11),
        # hole to the end (size 16 blocks).
        fd = os.open(p(sparse), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.pwrite(fd, pattern(2 * bs, 7), 3 * bs)
            _fallocate(fd, FALLOC_FL_KEEP_SIZE, 8 * bs, 2 * bs)
            os.pwrite(fd, pattern(bs - 100, 8), 10 * bs + 50)
            os.ftruncate(fd, 16 * bs)
            os.fsync(fd)
        finally:
            os.close(fd)
        files[sparse] = 16 * bs
        # A file that is nothing but preallocated (unwritten) space, size included.
        fd = os.open(p(b"falloc-only.bin"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.posix_fallocate(fd, 0, 4 * bs)
        finally:
            os.close(fd)
        files[b"falloc-only.bin"] = 4 * bs

    if spec.fragmented:
        fragmented = b"fragmented.bin"
        _make_fragmented(p(fragmented), p(b"interleaved.bin"), bs, spec.fragments)
        files[fragmented] = 2 * spec.fragments * bs
        files[b"interleaved.bin"] = spec.fragments * bs

    if spec.xattrs:
        target = p(b"file-0002") if len(spec.file_sizes) > 2 else p(b"xattr-file")
        if not os.path.exists(target):
            open(target, "wb").close()
            files[os.path.relpath(target, r)] = 0
        os.setxattr(target, b"user.comment", "plain xattr value — not encrypted".encode())
        os.setxattr(target, b"user.empty", b"")
        os.setxattr(target, b"user.binary", bytes(range(256)))
        if spec.subdirs:
            os.setxattr(p(b"dir1"), b"user.on-dir", b"dir xattr")

    if spec.metadata:
        _apply_metadata(p, spec)

    if spec.big_dir_entries:
        big_dir = b"big-dir"
        os.mkdir(p(big_dir))
        for n in range(spec.big_dir_entries):
            # Names of varying length so that the padding classes are all exercised.
            name = b"entry-%06d-" % n + b"x" * (n % 40)
            os.close(os.open(p(big_dir + b"/" + name), os.O_WRONLY | os.O_CREAT, 0o644))

    os.sync()
    inodes = {rel: os.lstat(p(rel)).st_ino for rel in files}
    for extra in (fragmented, sparse, big_dir):
        if extra is not None:
            inodes[extra] = os.lstat(p(extra)).st_ino
    return TreeInfo(
        files=files, fragmented=fragmented, sparse=sparse, big_dir=big_dir, inodes=inodes
    )


def expected_files(spec: TreeSpec, block_size: int) -> dict[bytes, bytes]:
    """The plaintext ``build_tree`` writes into each regular file, computed without a kernel.

    An oracle for decrypting readers: holes, unwritten ranges and punched blocks read as zeros.
    Hard links appear under every name.
    """
    bs = block_size
    out: dict[bytes, bytes] = {}
    for i, size in enumerate(spec.file_sizes):
        out[b"file-%04d" % i if i else b"a"] = pattern(size, i)
    if spec.subdirs:
        out[b"dir1/dir2/dir3/deep.txt"] = b"deep inside\n"
        out[b"dir1/in-subdir.bin"] = pattern(3 * bs + 5, 99)
    if spec.hardlinks:
        names = [b"hardlink-source.txt", b"hardlink-same-dir.txt"]
        if spec.subdirs:
            names.append(b"dir1/hardlink-in-subdir.txt")
        for name in names:
            out[name] = b"linked three times\n"
    if spec.odd_names:
        for name in (LONG_NAME, UTF8_NAME, BAD_UTF8_NAME):
            out[name] = name
    if spec.sparse:
        data = bytearray(16 * bs)
        data[3 * bs : 5 * bs] = pattern(2 * bs, 7)
        data[10 * bs + 50 : 11 * bs - 50] = pattern(bs - 100, 8)
        out[b"sparse.bin"] = bytes(data)
        out[b"falloc-only.bin"] = bytes(4 * bs)
    if spec.fragmented:
        frag = bytearray()
        other = bytearray()
        for i in range(2 * spec.fragments):
            frag += pattern(bs, 1000 + i) if i % 2 == 0 else bytes(bs)
            if i % 2 == 0:
                other += pattern(bs, 5000 + i)
        out[b"fragmented.bin"] = bytes(frag)
        out[b"interleaved.bin"] = bytes(other)
    if spec.xattrs and len(spec.file_sizes) <= 2:
        out[b"xattr-file"] = b""
    if spec.big_dir_entries:
        for n in range(spec.big_dir_entries):
            out[b"big-dir/entry-%06d-" % n + b"x" * (n % 40)] = b""
    return out


def _make_fragmented(path: bytes, other: bytes, bs: int, fragments: int) -> None:
    """A file with ``fragments`` separate extents, hence an extent tree of depth >= 1.

    Blocks are appended one at a time, alternating with another file and fsync'd, so that the
    allocator cannot lay the file out contiguously; then every other block is punched out, which
    splits whatever runs remain.  The inode's ``i_block`` holds at most 4 extents.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    fo = os.open(other, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i in range(2 * fragments):
            os.write(fd, pattern(bs, 1000 + i))
            os.fsync(fd)
            if i % 2 == 0:
                os.write(fo, pattern(bs, 5000 + i))
                os.fsync(fo)
        for i in range(1, 2 * fragments, 2):
            _fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, i * bs, bs)
        os.fsync(fd)
    finally:
        os.close(fd)
        os.close(fo)


def _apply_metadata(p: Callable[[bytes], bytes], spec: TreeSpec) -> None:
    """Owners, modes and nanosecond timestamps that a restore must reproduce exactly."""
    first = b"file-0001" if len(spec.file_sizes) > 1 else None
    if first is not None:
        # chown clears set-id bits, so it goes first.
        os.chown(p(first), 1234, 5678)
        os.chmod(p(first), 0o4751)  # setuid + odd permission bits
        os.utime(p(first), ns=(ATIME_NS, MTIME_NS))
    if spec.symlinks:
        os.chown(p(b"link-fast"), 4321, 8765, follow_symlinks=False)
        os.utime(p(b"link-fast"), ns=(ATIME_NS + 1, MTIME_NS + 1), follow_symlinks=False)
    if spec.specials:
        os.utime(p(b"fifo"), ns=(ATIME_NS + 2, MTIME_NS + 2))
    if spec.subdirs:
        os.chmod(p(b"empty-dir"), 0o1777)  # sticky
        os.chown(p(b"empty-dir"), 65534, 65534)
        os.utime(p(b"empty-dir"), ns=(ATIME_NS + 3, MTIME_NS + 3))
        # Directory timestamps last: creating entries above changed them.
        os.utime(p(b"dir1/dir2"), ns=(ATIME_NS + 4, MTIME_NS + 4))


# --- kernel views ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeView:
    """What the kernel reports for one path.

    ``read_errno`` is set (e.g. ``"ENOKEY"``) when a regular file could not be read; then
    ``sha256`` is None.  ``encrypted`` is STATX_ATTR_ENCRYPTED, ``crtime_ns`` the birth time
    (both None when statx is unavailable).  ``xattrs`` lists the user-visible ``user.*`` ones.
    """

    path: bytes
    mode: int
    uid: int
    gid: int
    size: int
    ino: int
    nlink: int
    rdev: int
    blocks: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    crtime_ns: int | None
    encrypted: bool | None
    link_target: bytes | None
    sha256: str | None
    read_errno: str | None
    xattrs: tuple[tuple[bytes, bytes], ...]

    @property
    def kind(self) -> str:
        return _KINDS.get(stat.S_IFMT(self.mode), "?")


_KINDS = {
    stat.S_IFREG: "reg",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "lnk",
    stat.S_IFIFO: "fifo",
    stat.S_IFCHR: "chr",
    stat.S_IFBLK: "blk",
    stat.S_IFSOCK: "sock",
}


class _StatxTimestamp(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_uint32), ("_r", ctypes.c_int32)]


class _Statx(ctypes.Structure):
    _fields_ = [
        ("stx_mask", ctypes.c_uint32),
        ("stx_blksize", ctypes.c_uint32),
        ("stx_attributes", ctypes.c_uint64),
        ("stx_nlink", ctypes.c_uint32),
        ("stx_uid", ctypes.c_uint32),
        ("stx_gid", ctypes.c_uint32),
        ("stx_mode", ctypes.c_uint16),
        ("_pad", ctypes.c_uint16),
        ("stx_ino", ctypes.c_uint64),
        ("stx_size", ctypes.c_uint64),
        ("stx_blocks", ctypes.c_uint64),
        ("stx_attributes_mask", ctypes.c_uint64),
        ("stx_atime", _StatxTimestamp),
        ("stx_btime", _StatxTimestamp),
        ("stx_ctime", _StatxTimestamp),
        ("stx_mtime", _StatxTimestamp),
        ("_rest", ctypes.c_uint8 * 128),
    ]


def _statx_extra(path: bytes) -> tuple[int | None, bool | None]:
    """(birth time ns, STATX_ATTR_ENCRYPTED) through libc statx(2); (None, None) if missing."""
    fn = getattr(_LIBC, "statx", None)
    if fn is None:
        return None, None
    buf = _Statx()
    rc = fn(-100, path, AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS | STATX_BTIME, ctypes.byref(buf))
    if rc != 0:
        return None, None
    btime = None
    if buf.stx_mask & STATX_BTIME:
        btime = buf.stx_btime.tv_sec * 1_000_000_000 + buf.stx_btime.tv_nsec
    encrypted = None
    if buf.stx_attributes_mask & STATX_ATTR_ENCRYPTED:
        encrypted = bool(buf.stx_attributes & STATX_ATTR_ENCRYPTED)
    return btime, encrypted


def _view_one(full: bytes, rel: bytes) -> NodeView:
    st = os.lstat(full)
    target = os.readlink(full) if stat.S_ISLNK(st.st_mode) else None
    digest = read_errno = None
    if stat.S_ISREG(st.st_mode):
        try:
            h = hashlib.sha256()
            with open(full, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            digest = h.hexdigest()
        except OSError as exc:
            read_errno = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    xattrs: list[tuple[bytes, bytes]] = []
    if not stat.S_ISLNK(st.st_mode):  # ext4 allows no user.* xattrs on symlinks
        for name in sorted(os.listxattr(full, follow_symlinks=False)):
            if name.startswith("user."):
                xattrs.append((name.encode(), os.getxattr(full, name, follow_symlinks=False)))
    crtime, encrypted = _statx_extra(full)
    return NodeView(
        path=rel,
        mode=st.st_mode,
        uid=st.st_uid,
        gid=st.st_gid,
        size=st.st_size,
        ino=st.st_ino,
        nlink=st.st_nlink,
        rdev=st.st_rdev,
        blocks=st.st_blocks,
        atime_ns=st.st_atime_ns,
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
        crtime_ns=crtime,
        encrypted=encrypted,
        link_target=target,
        sha256=digest,
        read_errno=read_errno,
        xattrs=tuple(xattrs),
    )


def snapshot_view(mnt: Path, path: Path | bytes | str = b".") -> dict[bytes, NodeView]:
    """Walk ``mnt/path`` with the kernel; map each relative path (root = ``b"."``) to its view.

    Names come from ``os.listdir(bytes)``: plaintext with the key, no-key names without it.
    Hard links appear once per path.  ``lost+found`` is skipped at the top of a mount.
    """
    root = os.path.join(os.fsencode(mnt), os.fsencode(path))
    view: dict[bytes, NodeView] = {b".": _view_one(root, b".")}
    stack = [b""]
    while stack:
        rel_dir = stack.pop()
        full_dir = os.path.join(root, rel_dir) if rel_dir else root
        for name in sorted(os.listdir(full_dir)):
            if not rel_dir and name == b"lost+found" and os.path.ismount(root):
                continue
            rel = os.path.join(rel_dir, name) if rel_dir else name
            node = _view_one(os.path.join(root, rel), rel)
            view[rel] = node
            if stat.S_ISDIR(node.mode):
                stack.append(rel)
    return view


def by_ino(view: dict[bytes, NodeView]) -> dict[int, list[NodeView]]:
    """Group a view by inode number: how a with-key and a no-key view are matched up."""
    out: dict[int, list[NodeView]] = {}
    for node in view.values():
        out.setdefault(node.ino, []).append(node)
    return out


# --- the whole recipe -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageConfig:
    """Everything that determines a kernel-built image; hashable, so it keys the session cache."""

    policy: PolicySpec = PolicySpec()
    tree: TreeSpec = DEFAULT_TREE
    block_size: int = 4096
    size_mib: int = 32
    inode_size: int | None = None
    stable_inodes: bool = False
    extra_features: tuple[str, ...] = ()
    key_label: str = "cipherdump kernelfs test key"
    encrypted_dir: bytes = b"enc"
    # An unencrypted tree beside the encrypted one (names and contents in plaintext, and on an
    # ``inline_data`` filesystem small files and directories that the kernel stores inline).
    plain_tree: TreeSpec | None = None
    plain_dir: bytes = b"plain"

    @property
    def features(self) -> tuple[str, ...]:
        feats = ["encrypt", *self.extra_features]
        if self.stable_inodes or self.policy.needs_stable_inodes:
            feats.append("stable_inodes")
        return tuple(feats)

    @property
    def label(self) -> str:
        parts = [f"{self.block_size // 1024}k", self.policy.label]
        if self.inode_size:
            parts.append(f"i{self.inode_size}")
        if self.tree.big_dir_entries:
            parts.append(f"big{self.tree.big_dir_entries}")
        parts += [f for f in self.extra_features if not f.startswith("^")]
        if self.plain_tree is not None:
            parts.append("plain")
        return "_".join(parts)


def _named_configs() -> dict[str, ImageConfig]:
    v2, v1 = PolicySpec(version=2), PolicySpec(version=1)
    named: dict[str, ImageConfig] = {}
    for bs in (4096, 1024):
        for pad, pad_flag in ((4, PAD_4), (8, PAD_8), (16, PAD_16), (32, PAD_32)):
            for pol in (v1, v2):
                spec = PolicySpec(version=pol.version, flags=pad_flag)
                named[f"{bs // 1024}k-v{pol.version}-pad{pad}"] = ImageConfig(
                    policy=spec, block_size=bs
                )
        for lblk, flag in (("lblk64", FLAG_IV_INO_LBLK_64), ("lblk32", FLAG_IV_INO_LBLK_32)):
            named[f"{bs // 1024}k-stable-v2-pad32-{lblk}"] = ImageConfig(
                policy=PolicySpec(flags=PAD_32 | flag), block_size=bs
            )
    named["4k-v2-pad32-du512"] = ImageConfig(policy=PolicySpec(log2_data_unit_size=9))
    named["4k-inode128-v2-pad32"] = ImageConfig(policy=v2, inode_size=128)
    named["4k-v2-pad32-bigdir"] = ImageConfig(policy=v2, tree=TreeSpec(big_dir_entries=10_000))
    named["1k-v2-pad32-bigdir"] = ImageConfig(
        policy=v2, block_size=1024, size_mib=64, tree=TreeSpec(big_dir_entries=10_000)
    )
    named["4k-inline-v2-pad32"] = ImageConfig(
        policy=v2, extra_features=("inline_data",), plain_tree=INLINE_PLAIN_TREE
    )
    return named


# The unencrypted tree of the inline_data configuration: files of 0, 1, 40 (in i_block) and 100
# bytes (i_block + system.data), small and empty directories (inline), 255-byte and non-UTF-8
# names in plaintext, and larger files, symlinks, specials, sparse and fragmented files beside them.
INLINE_PLAIN_TREE = TreeSpec(file_sizes=(0, 1, 40, 100, 4097))


# Ready-made configurations by name, for ``@pytest.mark.parametrize("kernel_image", [...],
# indirect=True)``.  Every padding x v1/v2 x 1 KiB/4 KiB, IV_INO_LBLK_64/32 on stable_inodes,
# 512-byte data units, 128-byte inodes (context in an xattr block), the big htree dirs, and an
# ``inline_data`` filesystem with an unencrypted tree of inline files and directories.
NAMED_CONFIGS: dict[str, ImageConfig] = _named_configs()


@dataclass(frozen=True)
class KernelImage:
    """A built, unmounted, clean image and the kernel's two views of its encrypted tree.

    Treat ``image`` as read-only: it is shared by every test of the session.  Views are keyed by
    paths relative to the encrypted directory (``config.encrypted_dir``; ``b"."`` is that
    directory itself).  ``outside_view`` covers the unencrypted rest of the filesystem.
    """

    config: ImageConfig
    image: Path
    master_key: bytes
    key_spec: bytes  # v1 descriptor (8 bytes) or v2 identifier (16 bytes)
    policy: bytes  # the ioctl policy struct as GET_POLICY_EX returns it
    dir_nonce: bytes
    uuid: uuid.UUID
    tree: TreeInfo
    with_key: dict[bytes, NodeView]
    no_key: dict[bytes, NodeView]
    outside_view: dict[bytes, NodeView]
    extent_depths: dict[bytes, int]  # fragmented file and big dir -> extent tree depth
    htree_levels: int | None  # big dir's htree indirect levels (None: no big dir)
    # What ``build_tree`` made in ``config.plain_dir`` (paths relative to it), if asked for.
    plain_tree: TreeInfo | None = None


def build_kernel_image(workdir: Path, config: ImageConfig = ImageConfig()) -> KernelImage:
    """Make an image per ``config``: encrypt one directory, fill it, and record both views.

    Steps: mkfs; mount; add the key; ``mkdir enc`` + SET_POLICY; ``build_tree``; an unencrypted
    file beside it (and ``config.plain_tree`` in ``config.plain_dir``); view with the key; remove
    the key; unmount; remount (no key) and view again; unmount; then read extent depths with
    debugfs.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    image = workdir / f"{config.label}.img"
    extra: list[str] = []
    if config.tree.big_dir_entries:
        # The mkfs default inode ratio leaves far too few inodes for a big directory.
        extra += ["-N", str(config.tree.big_dir_entries + 1024)]
    make_image(image, config.size_mib, config.block_size, config.features, config.inode_size, extra)
    pol = config.policy
    master_key = master_key_from_label(config.key_label)
    enc_rel = config.encrypted_dir
    with mounted(image) as mnt:
        descriptor = key_descriptor(master_key) if pol.version == 1 else None
        key_spec = add_key(mnt, master_key, descriptor)
        enc = mnt / os.fsdecode(enc_rel)
        enc.mkdir()
        set_policy(
            enc,
            pol.version,
            pol.contents_mode,
            pol.filenames_mode,
            pol.flags,
            key_spec,
            pol.log2_data_unit_size,
        )
        policy = get_policy_ex(enc)
        dir_nonce = get_nonce(enc)
        tree = build_tree(enc, config.tree)
        (mnt / "plain.txt").write_bytes(b"not encrypted\n")
        plain_tree = None
        if config.plain_tree is not None:
            plain = mnt / os.fsdecode(config.plain_dir)
            plain.mkdir()
            plain_tree = build_tree(plain, config.plain_tree)
        with_key = snapshot_view(mnt, enc_rel)
        # The key is still in use by cached inodes; removal may report "files busy" (flag 1),
        # which is fine: the unmount below forgets the key regardless.
        remove_key(mnt, key_spec)
    with mounted(image) as mnt:
        if key_status(mnt, key_spec).status != KeyStatus.ABSENT:
            raise RuntimeError("key still present after remount")
        no_key = snapshot_view(mnt, enc_rel)
        outside_view = snapshot_view(mnt)
    depths: dict[bytes, int] = {}
    levels = None
    if tree.fragmented is not None:
        depths[tree.fragmented] = extent_depth(image, tree.inodes[tree.fragmented])
    if tree.big_dir is not None:
        depths[tree.big_dir] = extent_depth(image, tree.inodes[tree.big_dir])
        levels = htree_levels(image, tree.inodes[tree.big_dir])
    return KernelImage(
        config=config,
        image=image,
        master_key=master_key,
        key_spec=key_spec,
        policy=policy,
        dir_nonce=dir_nonce,
        uuid=read_uuid(image),
        tree=tree,
        with_key=with_key,
        no_key=no_key,
        outside_view=outside_view,
        extent_depths=depths,
        htree_levels=levels,
        plain_tree=plain_tree,
    )
