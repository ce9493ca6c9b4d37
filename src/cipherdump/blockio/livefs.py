"""The running kernel's side of a live backup: its mount, ``syncfs``, its clock, and what
it says of one object (``lstat`` by path, ``FS_IOC_GETVERSION`` where it can be had).

A live backup (see docs/live-backup.md) reads a mounted ext4 filesystem's device with
``O_DIRECT`` and proves each object consistent against what the kernel reports for the
same inode.  This module is the only place that asks the kernel: it never opens the
device, never writes, never freezes anything.

* :class:`LiveMount` is one mount, found in ``/proc/self/mountinfo`` and checked again
  (:meth:`LiveMount.check`) at every round: a mount that went away, was remounted
  (its options or device changed) or is not ext4 is a one-line :class:`LiveMountError`.
* :func:`ctime_clock` is the clock the kernel stamps ctime with (``CLOCK_REALTIME``,
  read coarsely: a stamp may lag the fine clock by up to one tick, the resolution of
  ``CLOCK_REALTIME_COARSE``), and :class:`StartTime` holds a start time T with what is
  needed to see the clock stepped back since.
* :func:`live_stat` is ``lstat`` of an object relative to an open directory (file
  descriptors, so no path is resolved twice), with ``FS_IOC_GETVERSION`` (the inode's
  generation) where the object can be opened: directories always (``open(O_RDONLY)``
  of an encrypted directory works without its key), unencrypted regular files; an
  encrypted regular file cannot be opened without its key (ENOKEY), so its generation
  is not obtainable, and the ctime check stands in for it (a reused inode number has a
  new ctime).  Python's ``os.lstat`` already gives nanosecond times, the inode number,
  mode, link count, owner and size: no ``statx`` through ctypes is needed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import os
import stat
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from cipherdump.errors import LiveMountError

MOUNTINFO = "/proc/self/mountinfo"
# FS_IOC_GETVERSION = _IOR('v', 1, long): the inode's i_generation.
FS_IOC_GETVERSION = 0x80087601


# -- the mount ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MountEntry:
    """One line of mountinfo: the fields a live backup depends on."""

    mount_id: int
    device: str  # "major:minor"
    root: str  # the directory of the filesystem mounted here ("/" unless a bind mount)
    mount_point: str
    fstype: str
    source: str
    super_options: str  # per-superblock options: a remount changes them
    mount_options: str

    @property
    def read_write(self) -> bool:
        return "rw" in self.super_options.split(",")


def _unescape(field: str) -> str:
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mount_entries(text: str) -> list[MountEntry]:
    """Every well-formed line of a mountinfo text."""
    out: list[MountEntry] = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-")
            if sep < 6 or len(fields) < sep + 4:
                continue
            out.append(
                MountEntry(
                    int(fields[0]),
                    fields[2],
                    _unescape(fields[3]),
                    _unescape(fields[4]),
                    fields[sep + 1],
                    _unescape(fields[sep + 2]),
                    fields[sep + 3],
                    fields[5],
                )
            )
        except ValueError:
            continue
    return out


def device_path(device: str, *, sys_dev: str = "/sys/dev/block") -> str:
    """The /dev node of block device "major:minor" (from its uevent's DEVNAME)."""
    try:
        for line in Path(sys_dev, device, "uevent").read_text().splitlines():
            if line.startswith("DEVNAME="):
                return "/dev/" + line.split("=", 1)[1]
    except OSError:
        pass
    return f"/dev/block/{device}"


class LiveMount:
    """The mount at ``mount_point`` (its own root, not a path below it), as it was when
    found; :meth:`check` says whether it still is."""

    def __init__(self, mount_point: str, *, mountinfo: str = MOUNTINFO) -> None:
        self._mountinfo = mountinfo
        wanted = os.path.realpath(mount_point)
        entries = [e for e in self._entries() if e.mount_point == wanted]
        if not entries:
            raise LiveMountError(f"{mount_point}: not a mount point")
        entry = entries[-1]  # the one on top, which path lookups reach
        self.entry = entry
        self.mount_point = wanted
        self._check_kind(entry)
        self.device = device_path(entry.device)
        st = os.stat(wanted)
        self.st_dev = st.st_dev
        self._root_fd = os.open(wanted, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def _entries(self) -> list[MountEntry]:
        try:
            return parse_mount_entries(Path(self._mountinfo).read_text())
        except OSError as e:
            raise LiveMountError(f"{self._mountinfo}: {e.strerror}") from None

    def _check_kind(self, entry: MountEntry) -> None:
        where = entry.mount_point
        if entry.fstype != "ext4":
            raise LiveMountError(f"{where}: a {entry.fstype} filesystem, not ext4")
        if entry.root != "/":
            raise LiveMountError(
                f"{where}: a bind mount of {entry.root} of its filesystem; give a mount "
                "of the filesystem's root"
            )

    @classmethod
    def of_device(cls, path: str, *, mountinfo: str = MOUNTINFO) -> LiveMount:
        """The mount of the block device (or loop-mounted image) ``path``."""
        from cipherdump.blockio.mounts import find_mounts

        mounts = find_mounts(path, mountinfo=mountinfo)
        if not mounts:
            raise LiveMountError(f"{path}: not mounted (back it up without --live)")
        return cls(mounts[0].mount_point, mountinfo=mountinfo)

    @property
    def root_fd(self) -> int:
        """An open descriptor of the mount's root directory (for :func:`live_stat`)."""
        return self._root_fd

    def check(self) -> None:
        """Raise :class:`LiveMountError` unless the mount is still the one found: the
        same mount id, device, filesystem type and superblock and mount options, and
        its mount point still reaching it."""
        before = self.entry
        now = [e for e in self._entries() if e.mount_id == before.mount_id]
        where = before.mount_point
        if not now:
            raise LiveMountError(f"{where}: the filesystem was unmounted during the backup")
        entry = now[0]
        self._check_kind(entry)
        if entry.device != before.device:
            raise LiveMountError(f"{where}: the mount now shows device {entry.device}")
        if (entry.super_options, entry.mount_options) != (
            before.super_options,
            before.mount_options,
        ):
            raise LiveMountError(
                f"{where}: remounted during the backup ({before.mount_options} "
                f"{before.super_options} -> {entry.mount_options} {entry.super_options})"
            )
        try:
            st = os.fstat(self._root_fd)
            top = os.stat(self.mount_point)
        except OSError as e:
            raise LiveMountError(f"{where}: {e.strerror}") from None
        if st.st_dev != self.st_dev or (top.st_dev, top.st_ino) != (st.st_dev, st.st_ino):
            raise LiveMountError(f"{where}: no longer reaches the filesystem backed up")

    def syncfs(self) -> None:
        """Write everything the kernel holds dirty for this filesystem and commit its
        journal (``syncfs(2)``): afterwards the device holds every change made before
        the call."""
        if _libc.syncfs(self._root_fd) != 0:
            err = ctypes.get_errno()
            raise LiveMountError(f"{self.mount_point}: syncfs: {os.strerror(err)}")

    def close(self) -> None:
        if self._root_fd >= 0:
            os.close(self._root_fd)
            self._root_fd = -1


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syncfs.argtypes = [ctypes.c_int]
_libc.syncfs.restype = ctypes.c_int


# -- the clock -------------------------------------------------------------------------


def ctime_clock_granularity_ns() -> int:
    """How far a ctime stamp may lag ``CLOCK_REALTIME``: one tick of the coarse clock
    the kernel reads for timestamps (1-10 ms; at least 1 ns)."""
    try:
        res = time.clock_getres(time.CLOCK_REALTIME_COARSE)  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        res = 0.01  # the coarsest tick Linux has (HZ=100)
    return max(int(res * 1e9), 1)


@dataclass(frozen=True, slots=True)
class StartTime:
    """T: ``CLOCK_REALTIME`` just before a ``syncfs``, with ``CLOCK_MONOTONIC`` then,
    to notice the real-time clock stepped back since (which would let a later change
    carry a ctime before T)."""

    realtime_ns: int
    monotonic_ns: int
    granularity_ns: int

    @classmethod
    def now(cls) -> StartTime:
        mono = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        real = time.clock_gettime_ns(time.CLOCK_REALTIME)
        return cls(real, mono, ctime_clock_granularity_ns())

    def limit_ns(self) -> int:
        """The newest ctime an object may have to be accepted now: T less one tick,
        less however far the real-time clock has fallen behind the monotonic one since
        T (zero unless it was stepped or slewed back)."""
        mono = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        real = time.clock_gettime_ns(time.CLOCK_REALTIME)
        behind = max((mono - self.monotonic_ns) - (real - self.realtime_ns), 0)
        return self.realtime_ns - self.granularity_ns - behind


# -- one object --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LiveStat:
    """What the kernel reports of one object (``generation`` None: not obtainable)."""

    ino: int
    dev: int
    mode: int
    links: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    ctime_ns: int
    generation: int | None


def _generation(dir_fd: int, name: bytes, mode: int) -> int | None:
    if stat.S_ISDIR(mode):
        flags = os.O_RDONLY | os.O_DIRECTORY
    elif stat.S_ISREG(mode):
        # O_NOATIME: reading the generation is no access; O_NONBLOCK: no lease waits.
        flags = os.O_RDONLY | os.O_NOATIME | os.O_NONBLOCK
    else:
        return None  # opening a FIFO or device has side effects
    try:
        fd = os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None  # ENOKEY (an encrypted file without its key), EPERM, gone
    try:
        buf = fcntl.ioctl(fd, FS_IOC_GETVERSION, b"\0" * 8)
    except OSError:
        return None
    finally:
        os.close(fd)
    return int(struct.unpack("<q", buf)[0]) & 0xFFFFFFFF


def live_stat(dir_fd: int, name: bytes, *, generation: bool = True) -> LiveStat | None:
    """``lstat`` of ``name`` in the open directory ``dir_fd`` (None if it is gone)."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ENOKEY):
            return None
        raise
    gen = _generation(dir_fd, name, st.st_mode) if generation else None
    return LiveStat(
        st.st_ino,
        st.st_dev,
        st.st_mode,
        st.st_nlink,
        st.st_uid,
        st.st_gid,
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
        gen,
    )


def open_dir_at(dir_fd: int, name: bytes) -> int | None:
    """An open descriptor of the directory ``name`` in ``dir_fd`` (None if gone)."""
    try:
        return os.open(
            name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd
        )
    except OSError:
        return None


def names_by_ino(dir_fd: int) -> dict[int, bytes]:
    """The kernel's listing of an open directory: inode number -> a name it shows.

    Names are what this process sees: no-key names where the key is absent, plaintext
    where a user's key is loaded (a v2 key is visible to every process); matching by
    inode number finds the object either way."""
    out: dict[int, bytes] = {}
    try:
        # A descriptor of its own: a dup would share (and move) the offset of dir_fd.
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return out
    try:
        with os.scandir(fd) as it:
            for entry in it:
                out.setdefault(entry.inode(), os.fsencode(entry.name))
    except OSError:
        pass
    finally:
        os.close(fd)
    return out


__all__ = [
    "LiveMount",
    "LiveMountError",
    "LiveStat",
    "MountEntry",
    "StartTime",
    "ctime_clock_granularity_ns",
    "device_path",
    "live_stat",
    "names_by_ino",
    "open_dir_at",
    "parse_mount_entries",
]
