"""The kernel's side of a live backup: mountinfo, the mount's identity, the ctime clock
and lstat by inode number (on this machine's own files; no mount needed)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from cipherdump.blockio.livefs import (
    LiveMount,
    StartTime,
    ctime_clock_granularity_ns,
    live_stat,
    names_by_ino,
    open_dir_at,
    parse_mount_entries,
)
from cipherdump.errors import InputError, LiveMountError

_LINE = "{id} 20 7:3 {root} {point} rw,noatime shared:1 - {fstype} /dev/loop3 {opts}\n"


def _mountinfo(tmp: Path, point: Path, **kw: str) -> Path:
    fields = {"id": "41", "root": "/", "point": str(point), "fstype": "ext4", "opts": "rw"}
    fields.update(kw)
    info = tmp / "mountinfo"
    info.write_text(_LINE.format(**fields))
    return info


def test_parse_mount_entries_unescapes_and_skips_bad_lines() -> None:
    text = (
        "41 20 7:3 / /mnt/a\\040b rw,noatime shared:1 - ext4 /dev/loop3 rw,errors=remount-ro\n"
        "garbage\n"
        "x 20 7:3 / /mnt rw - ext4 /dev/loop3 rw\n"
    )
    (entry,) = parse_mount_entries(text)
    assert entry.mount_id == 41 and entry.device == "7:3"
    assert entry.mount_point == "/mnt/a b" and entry.fstype == "ext4"
    assert entry.read_write and entry.super_options == "rw,errors=remount-ro"


def test_a_live_mount_must_be_ext4_its_root_and_a_mount_point(tmp_path: Path) -> None:
    point = tmp_path / "m"
    point.mkdir()
    with pytest.raises(LiveMountError, match="xfs filesystem, not ext4"):
        LiveMount(str(point), mountinfo=str(_mountinfo(tmp_path, point, fstype="xfs")))
    with pytest.raises(LiveMountError, match="bind mount of /home"):
        LiveMount(str(point), mountinfo=str(_mountinfo(tmp_path, point, root="/home")))
    with pytest.raises(LiveMountError, match="not a mount point"):
        LiveMount(str(tmp_path), mountinfo=str(_mountinfo(tmp_path, point)))
    # One error class, exit code 3 (unusable input), as the README's table says.
    assert issubclass(LiveMountError, InputError) and LiveMountError.exit_code == 3


def test_check_notices_unmount_remount_and_another_device(tmp_path: Path) -> None:
    point = tmp_path / "m"
    point.mkdir()
    info = _mountinfo(tmp_path, point)
    mount = LiveMount(str(point), mountinfo=str(info))
    try:
        mount.check()  # unchanged
        _mountinfo(tmp_path, point, opts="ro")
        with pytest.raises(LiveMountError, match="remounted during the backup"):
            mount.check()
        info.write_text(_LINE.format(id=41, root="/", point=point, fstype="ext4", opts="rw")
                        .replace("7:3", "7:4"))  # fmt: skip
        with pytest.raises(LiveMountError, match="now shows device 7:4"):
            mount.check()
        _mountinfo(tmp_path, point, id="42")
        with pytest.raises(LiveMountError, match="unmounted during the backup"):
            mount.check()
        _mountinfo(tmp_path, point, fstype="btrfs")
        with pytest.raises(LiveMountError, match="not ext4"):
            mount.check()
    finally:
        mount.close()


def test_start_time_limit_is_t_less_one_tick() -> None:
    start = StartTime.now()
    g = ctime_clock_granularity_ns()
    assert 1 <= g <= 10_000_000
    limit = start.limit_ns()
    # No clock step on this machine in a moment: T less one tick, less nothing more
    # than the two clocks' read-out jitter.
    assert start.realtime_ns - g - 1_000_000 <= limit <= start.realtime_ns - g


def test_start_time_limit_drops_when_the_clock_stepped_back() -> None:
    now = StartTime.now()
    stepped = StartTime(now.realtime_ns + 5_000_000_000, now.monotonic_ns, 1)
    # As if the real-time clock had been 5 s ahead at T and stepped back since.
    assert stepped.limit_ns() <= time.clock_gettime_ns(time.CLOCK_REALTIME)


def test_live_stat_finds_objects_by_inode_number(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"x" * 100)
    os.symlink("f", tmp_path / "d" / "l")
    root = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = open_dir_at(root, b"d")
        assert fd is not None
        try:
            names = names_by_ino(fd)
            ino = (tmp_path / "d" / "f").stat().st_ino
            assert names[ino] == b"f"
            st = live_stat(fd, names[ino])
            assert st is not None and st.size == 100 and st.ino == ino
            assert st.ctime_ns == (tmp_path / "d" / "f").stat().st_ctime_ns
            link = live_stat(fd, b"l")
            assert link is not None and link.generation is None  # a symlink is not opened
            assert live_stat(fd, b"gone") is None
            # Listed twice from the same descriptor: each listing is whole.
            assert names_by_ino(fd) == names
        finally:
            os.close(fd)
        assert open_dir_at(root, b"nothing") is None
        d = live_stat(root, b"d")
        assert d is not None and d.links == 2
    finally:
        os.close(root)


def test_pinned_overlay_copies_do_not_follow_the_journal(tmp_path: Path) -> None:
    """A live journal reuses its blocks: a pinned overlay answers with the copies as they
    were when it was made."""
    from cipherdump.blockio.overlay import OverlaySource

    class Mutable:
        def __init__(self, data: bytearray) -> None:
            self.data = data

        @property
        def size(self) -> int:
            return len(self.data)

        @property
        def name(self) -> str:
            return "mutable"

        def read_at(self, offset: int, length: int) -> bytes:
            return bytes(self.data[offset : offset + length])

        def close(self) -> None:
            pass

    data = bytearray(b"A" * 1024 + b"J" * 1024)
    inner = Mutable(data)
    lazy = OverlaySource(inner, 1024, {0: (1, False)})
    pinned = OverlaySource(inner, 1024, {0: (1, False)}, pin=True)
    data[1024:] = b"X" * 1024  # the journal block is reused
    assert pinned.read_at(0, 4) == b"JJJJ"
    assert lazy.read_at(0, 4) == b"XXXX"
