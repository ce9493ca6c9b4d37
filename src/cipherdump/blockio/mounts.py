"""Is a source in use by the running kernel?  Mounted devices and loop-mounted images.

A backup reads a filesystem behind the kernel's back.  If the kernel has it mounted
read-write, blocks change under the reader and the result may be inconsistent, so the
engine refuses such a source unless told otherwise.  A source counts as mounted when
``/proc/self/mountinfo`` lists a filesystem on its device number, or, for an image file,
on a loop device whose backing file (``/sys/block/loopN/loop/backing_file``) is that
same file (compared by device and inode number, so hard links and other spellings of the
path count too).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = "/proc/self/mountinfo"
SYS_BLOCK = "/sys/block"


@dataclass(frozen=True, slots=True)
class Mount:
    """One mount of the source: where, through which device, and whether read-write."""

    mount_point: str
    device: str  # "major:minor"
    read_write: bool
    via: str = ""  # the loop device, when the source is an image file


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal ``\\NNN``."""
    out = []
    i = 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str) -> list[tuple[str, str, bool]]:
    """(major:minor, mount point, superblock read-write) for every line of mountinfo.

    The superblock options (after the ``-`` separator) decide read-write: a read-only
    bind mount of a filesystem that is read-write elsewhere is still read-write.
    """
    out: list[tuple[str, str, bool]] = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-")
        except ValueError:
            continue
        if sep < 6 or len(fields) < sep + 4:
            continue
        super_opts = fields[sep + 3].split(",")
        mount_opts = fields[5].split(",")
        read_write = "rw" in super_opts or ("rw" in mount_opts and "ro" not in super_opts)
        out.append((fields[2], _unescape(fields[4]), read_write))
    return out


def _loop_devices_backed_by(st: os.stat_result, sys_block: str) -> list[tuple[str, str]]:
    """(loop device name, major:minor) of every loop device over the file ``st``."""
    found: list[tuple[str, str]] = []
    try:
        names = sorted(os.listdir(sys_block))
    except OSError:
        return found
    for name in names:
        if not name.startswith("loop"):
            continue
        base = Path(sys_block) / name
        try:
            backing = (base / "loop" / "backing_file").read_text().rstrip("\n")
            dev = (base / "dev").read_text().strip()
        except OSError:
            continue
        backing = backing.removesuffix(" (deleted)")
        try:
            bst = os.stat(backing)
        except OSError:
            continue
        if (bst.st_dev, bst.st_ino) == (st.st_dev, st.st_ino):
            found.append((name, dev))
            # Partitions of the loop device (loopNp1, ...) carry filesystems too.
            try:
                for part in sorted(os.listdir(base)):
                    if part.startswith(name + "p"):
                        found.append((part, (base / part / "dev").read_text().strip()))
            except OSError:
                pass
    return found


def find_mounts(
    path: str, *, mountinfo: str = MOUNTINFO, sys_block: str = SYS_BLOCK
) -> list[Mount]:
    """Every mount of the device or image file at ``path`` (empty if none, or unknown)."""
    try:
        st = os.stat(path)
    except OSError:
        return []
    devices: list[tuple[str, str]] = []
    if stat.S_ISBLK(st.st_mode):
        devices.append(("", f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"))
    elif stat.S_ISREG(st.st_mode):
        devices += [(f"/dev/{name}", dev) for name, dev in _loop_devices_backed_by(st, sys_block)]
    if not devices:
        return []
    try:
        text = Path(mountinfo).read_text()
    except OSError:
        return []
    mounts = []
    for dev, point, read_write in parse_mountinfo(text):
        for via, wanted in devices:
            if dev == wanted:
                mounts.append(Mount(point, dev, read_write, via))
    return mounts


def mounted_read_write(path: str) -> list[Mount]:
    """The read-write mounts of ``path`` (a backup of such a source may be inconsistent)."""
    return [m for m in find_mounts(path) if m.read_write]
