"""Kernel-made journals, replayed in memory, against `e2fsck -fy` and the kernel.

Each test makes a crash-consistent copy the way a volume snapshot does: it mounts an
image, writes and fsyncs (a commit to the journal; the checkpoint is left to writeback,
held off by raising vm.dirty_expire_centisecs), and copies the image file while it is
still mounted.  The copy needs recovery, and what was fsync'ed exists only in its
journal.  The reference is the same copy after `e2fsck -fy`, mounted by the kernel:
cipherdump reading the unrecovered copy must list exactly that (names, types, modes,
owners, sizes, contents), and must not change a byte of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

import kernelfs
from cipherdump.blockio import FileSource
from cipherdump.cli.main import cli
from cipherdump.ext4 import Filesystem, Inode, open_filesystem
from cipherdump.ext4.journal import load_journal
from cipherdump.ondisk import jbd2 as J

pytestmark = pytest.mark.kernel

_SYSCTLS = ("vm/dirty_expire_centisecs", "vm/dirty_writeback_centisecs")


@contextlib.contextmanager
def writeback_held_off() -> Iterator[None]:
    """Keep dirty metadata in memory (no checkpoint) until the test is done; the old
    settings come back whatever happens."""
    saved = {name: Path("/proc/sys", name).read_text() for name in _SYSCTLS}
    try:
        Path("/proc/sys/vm/dirty_expire_centisecs").write_text("360000\n")
        Path("/proc/sys/vm/dirty_writeback_centisecs").write_text("360000\n")
        yield
    finally:
        for name, value in saved.items():
            Path("/proc/sys", name).write_text(value)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def crash_copy(
    image: Path,
    copy: Path,
    work: Callable[[Path], None],
    options: tuple[str, ...] = ("noatime",),
    prepare: Callable[[Path], None] | None = None,
) -> None:
    """``copy`` becomes ``image`` as a crash would leave it right after ``work(mnt)``."""
    if prepare is not None:
        with kernelfs.mounted(image, options) as mnt:
            prepare(mnt)
    with writeback_held_off(), kernelfs.mounted(image, options) as mnt:
        work(mnt)
        shutil.copyfile(image, copy)


Truth = dict[bytes, tuple[int, int, int, int, int, int, int, str]]


def kernel_truth(copy: Path, scratch: Path) -> Truth:
    """What the kernel shows of ``copy`` once `e2fsck -fy` has recovered it (a copy)."""
    fixed = scratch / "recovered.img"
    shutil.copyfile(copy, fixed)
    proc = subprocess.run(["e2fsck", "-fy", str(fixed)], capture_output=True, text=True)
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    with kernelfs.mounted(fixed, ("noatime",), readonly=True) as mnt:
        view = kernelfs.snapshot_view(mnt)
    out = {}
    for path, n in view.items():
        if path == b".":
            continue
        size = n.size if n.kind != "dir" else 0
        out[b"/" + path] = (n.ino, n.mode, n.nlink, n.uid, n.gid, n.mtime_ns, size, n.sha256 or "")
    return out


def reader_truth(fs: Filesystem) -> Truth:
    out = {}
    stack: list[tuple[bytes, Inode]] = [(b"", fs.root)]
    while stack:
        path, node = stack.pop()
        for e in node.entries():
            if e.name in (b".", b"..") or (path == b"" and e.name == b"lost+found"):
                continue
            child = fs.inode(e.ino)
            full = path + b"/" + e.name
            digest = ""
            size = 0
            if child.is_file:
                digest = hashlib.sha256(child.read(0, child.size)).hexdigest()
                size = child.size
            elif child.is_symlink:
                size = child.size
            if child.is_dir:
                stack.append((full, child))
            out[full] = (
                child.ino,
                child.mode,
                child.links,
                child.uid,
                child.gid,
                child.mtime_ns,
                size,
                digest,
            )
    return out


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_replays_as_e2fsck(copy: Path, scratch: Path) -> Filesystem:
    """The reader's view of ``copy`` is the recovered one; ``copy`` is not changed."""
    before = sha256_file(copy)
    with open_filesystem(str(copy)) as fs:
        assert fs.needs_recovery and fs.journal_replayed, fs.journal
        assert not any("journal" in w for w in fs.warnings), fs.warnings
        got = reader_truth(fs)
    want = kernel_truth(copy, scratch)
    assert set(got) == set(want), sorted(set(got) ^ set(want))[:10]
    diff = [p for p in want if want[p] != got[p]]
    assert not diff, [(p, want[p], got[p]) for p in diff[:3]]
    assert sha256_file(copy) == before
    return fs


def unreplayed_names(copy: Path) -> set[bytes]:
    with Filesystem(FileSource(str(copy)), owns_source=True, replay=False) as fs:
        return set(reader_truth(fs))


def journal_of(copy: Path) -> tuple[J.JournalSuperblock, dict[int, tuple[int, bool]]]:
    """The journal superblock and the overlay (journal logical blocks, as planned)."""
    with Filesystem(FileSource(str(copy)), owns_source=True, replay=False) as fs:
        info, _ = load_journal(fs)
        assert info is not None and info.replay is not None
        from cipherdump.ext4.journal import _JournalFile

        return _JournalFile(fs, fs.sb.s_journal_inum).superblock, info.replay.overlay


# -- the tests ------------------------------------------------------------------------


def test_fsynced_files_that_exist_only_in_the_journal(tmp_path: Path) -> None:
    image = kernelfs.make_image(tmp_path / "fs.img", 64, features=("encrypt",))
    copy = tmp_path / "copy.img"

    def work(mnt: Path) -> None:
        d = mnt / "docs"
        d.mkdir()
        for i in range(50):
            write_synced(d / f"file-{i:03d}.txt", f"contents of {i}\n".encode() * (i + 1))
        (mnt / "link").symlink_to("docs/file-007.txt")
        fsync_path(d)
        fsync_path(mnt)

    crash_copy(image, copy, work)
    assert assert_replays_as_e2fsck(copy, tmp_path)
    # Without the replay the new names are missing: they are only in the journal.
    assert b"/docs/file-049.txt" not in unreplayed_names(copy)
    rc = CliRunner().invoke(cli, ["info", "--json", str(copy)])
    assert rc.exit_code == 0, rc.stderr
    assert '"replayed": {' in rc.stdout and "needs recovery" not in rc.stderr


@pytest.mark.parametrize(
    ("features", "options", "kind"),
    [
        pytest.param(("^64bit",), ("noatime",), "32-bit tags, csum v3", id="no-64bit"),
        pytest.param(
            ("^metadata_csum",), ("noatime",), "64-bit tags, no checksums", id="no-metadata_csum"
        ),
        pytest.param(
            ("^metadata_csum",),
            ("noatime", "journal_checksum"),
            "64-bit tags, checksum v1",
            id="no-metadata_csum-journal_checksum",
        ),
        pytest.param(
            ("^metadata_csum", "^64bit"),
            # The kernel allows async commits only where data is not ordered.
            ("noatime", "journal_checksum", "journal_async_commit", "data=writeback"),
            "32-bit tags, checksum v1, async commit",
            id="32bit-journal_async_commit",
        ),
        pytest.param((), ("noatime", "journal_checksum"), "64-bit tags, csum v3", id="default"),
    ],
)
def test_journal_formats(
    features: tuple[str, ...], options: tuple[str, ...], kind: str, tmp_path: Path
) -> None:
    image = kernelfs.make_image(tmp_path / "fs.img", 64, features=features)
    copy = tmp_path / "copy.img"

    def work(mnt: Path) -> None:
        for i in range(20):
            sub = mnt / f"d{i % 4}"
            sub.mkdir(exist_ok=True)
            write_synced(sub / f"f{i}", os.urandom(1000 * i + 1))
            fsync_path(sub)

    crash_copy(image, copy, work, options)
    jsb, _ = journal_of(copy)
    if "checksum v1" in kind:
        assert jsb.checksum_v1 and not jsb.csum_v2or3
    elif "csum v3" in kind:
        assert jsb.has_incompat(J.JBD2_FEATURE_INCOMPAT_CSUM_V3)
    else:
        assert not jsb.checksum_v1 and not jsb.csum_v2or3
    assert jsb.has_incompat(J.JBD2_FEATURE_INCOMPAT_64BIT) == ("64-bit" in kind)
    assert assert_replays_as_e2fsck(copy, tmp_path)


def test_wrapped_log(tmp_path: Path) -> None:
    image = kernelfs.make_image(
        tmp_path / "fs.img", 32, block_size=1024, features=(), extra_mkfs_args=("-J", "size=1")
    )
    copy = tmp_path / "copy.img"

    def wrapped(take_copy: bool = True) -> bool:
        if take_copy:
            shutil.copyfile(image, copy)
        with Filesystem(FileSource(str(copy)), owns_source=True, replay=False) as fs:
            info, _ = load_journal(fs)
        if info is None or info.replay is None:
            return False  # the log was empty at that moment (all checkpointed)
        jsb, overlay = journal_of(copy)
        return any(lblk < jsb.s_start for lblk, _ in overlay.values())

    def work(mnt: Path) -> None:
        # Fill the journal past its end (it checkpoints to make room), then go on
        # until the live part of the log runs across the end of the ring.
        for i in range(2000):
            sub = mnt / f"d{i % 7}"
            sub.mkdir(exist_ok=True)
            write_synced(sub / f"f{i}", b"x" * (i % 3000))
            if i >= 300 and i % 10 == 0 and wrapped():
                break

    crash_copy(image, copy, work)
    assert wrapped(take_copy=False), "the log did not wrap"
    assert assert_replays_as_e2fsck(copy, tmp_path)


def test_revoked_directory_blocks_reused_by_files(tmp_path: Path) -> None:
    image = kernelfs.make_image(tmp_path / "fs.img", 32, block_size=1024, features=())
    copy = tmp_path / "copy.img"

    def work(mnt: Path) -> None:
        d = mnt / "big"
        d.mkdir()
        for i in range(300):
            (d / f"some-long-file-name-{i:05d}").write_bytes(b"")
        fsync_path(d)
        fsync_path(mnt)
        shutil.rmtree(d)
        fsync_path(mnt)
        for i in range(40):
            write_synced(mnt / f"new{i}", bytes([i + 1]) * 3000)
        fsync_path(mnt)

    crash_copy(image, copy, work)
    with open_filesystem(str(copy)) as fs:
        assert fs.journal is not None and fs.journal.replay is not None
        assert fs.journal.replay.revokes > 0
    assert assert_replays_as_e2fsck(copy, tmp_path)


def test_escaped_blocks_of_a_data_journalled_file(tmp_path: Path) -> None:
    image = kernelfs.make_image(tmp_path / "fs.img", 32, features=())
    copy = tmp_path / "copy.img"
    magic = bytes.fromhex("c03b3998")

    def work(mnt: Path) -> None:
        f = mnt / "journalled"
        write_synced(f, (magic + b"\x00\x00\x00\x01" + os.urandom(4088)) * 3)
        fsync_path(mnt)

    # data=journal journals file data as chattr +j does for one file (which needs
    # CAP_SYS_RESOURCE, not granted where these tests run in containers).
    crash_copy(image, copy, work, ("noatime", "data=journal"))
    _, overlay = journal_of(copy)
    assert any(escaped for _, escaped in overlay.values()), "no escaped block in the journal"
    assert assert_replays_as_e2fsck(copy, tmp_path)


def test_source_with_needs_recovery_clear_but_journal_data_is_not_replayed(
    tmp_path: Path,
) -> None:
    image = kernelfs.make_image(tmp_path / "fs.img", 32, features=())
    copy = tmp_path / "copy.img"
    crash_copy(image, copy, lambda mnt: write_synced(mnt / "only-in-journal", b"x"))
    subprocess.run(
        ["debugfs", "-w", "-R", "feature ^needs_recovery", str(copy)],
        check=True,
        capture_output=True,
    )
    with open_filesystem(str(copy)) as fs:
        assert not fs.journal_replayed
        assert any("journal has data" in w for w in fs.warnings), fs.warnings
        assert b"/only-in-journal" not in reader_truth(fs)


def _debugfs(image: Path, *commands: str) -> None:
    script = "\n".join(commands) + "\n"
    proc = subprocess.run(
        ["debugfs", "-w", "-f", "-", str(image)],
        input=script,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_debugfs_written_journal(tmp_path: Path) -> None:
    """debugfs's own journal writer: a committed transaction, a revoke, and an
    uncommitted one.  The reference is e2fsck -fy and the kernel, as always."""
    image = kernelfs.make_image(tmp_path / "fs.img", 32, block_size=1024, features=())
    with kernelfs.mounted(image) as mnt:
        write_synced(mnt / "target", b"old contents\n" * 50)
    with open_filesystem(str(image)) as fs:
        inode = fs.root.entry_named(b"target")
        assert inode is not None
        blk = next(r.pblk for r in fs.inode(inode.ino).runs if r.pblk is not None)
    new = tmp_path / "new.bin"
    new.write_bytes(b"NEW contents\n" * 78 + b"..........")
    other = tmp_path / "other.bin"
    other.write_bytes(b"never committed" * 68 + b"xxxx")
    _debugfs(
        image,
        "jo -c -v 3",
        f"jw -b {blk} {new}",
        f"jw -r {blk + 1}",
        "jc",
    )
    _debugfs(image, "jo", f"jw -b {blk + 2} -c {other}", "jc")
    with open_filesystem(str(image)) as fs:
        assert fs.journal_replayed, (fs.journal, fs.warnings)
        node = fs.inode(fs.root.entry_named(b"target").ino)  # type: ignore[union-attr]
        assert node.read(0, 26) == b"NEW contents\nNEW contents\n"
    assert assert_replays_as_e2fsck(image, tmp_path)


def test_kernel_image_backs_up_replayed(tmp_path: Path) -> None:
    image = kernelfs.make_image(tmp_path / "fs.img", 32, features=())
    copy = tmp_path / "copy.img"
    crash_copy(image, copy, lambda mnt: write_synced(mnt / "fsynced", b"kept\n" * 1000))
    before = sha256_file(copy)
    env = {
        "CIPHERDUMP_INSECURE_TEST_KDF": "1",
        "CIPHERDUMP_PASSWORD": "pw",
        "CIPHERDUMP_REPOSITORY": str(tmp_path / "repo"),
    }
    runner = CliRunner()
    assert runner.invoke(cli, ["init"], env=env).exit_code == 0
    res = runner.invoke(cli, ["backup", str(copy)], env=env)
    assert res.exit_code == 0, res.stderr
    assert "journal: replayed in memory (" in res.stdout, res.stdout
    res = runner.invoke(cli, ["snapshots", "--json"], env=env)
    assert '"journal_replayed": {' in res.stdout, res.stdout
    res = runner.invoke(cli, ["ls", "-l", "latest"], env=env)
    assert "fsynced" in res.stdout, res.stdout
    out = tmp_path / "restored.img"
    res = runner.invoke(cli, ["restore", "latest", "--to-image", str(out)], env=env)
    assert res.exit_code == 0, res.stderr
    with open_filesystem(str(out)) as fs:
        node = fs.root.entry_named(b"fsynced")
        assert node is not None and fs.inode(node.ino).read(0, 5000) == b"kept\n" * 1000
    assert sha256_file(copy) == before
    assert stat.S_ISREG(os.stat(copy).st_mode)


def _cli_json_paths(*args: str) -> dict[bytes, dict[str, object]]:
    import json

    res = CliRunner().invoke(cli, ["ls", "-R", "--json", *args])
    assert res.exit_code == 0, res.stderr
    out = {}
    for line in res.stdout.splitlines():
        rec = json.loads(line)
        out[os.fsencode(rec["path"])] = rec
    return out


def test_encrypted_files_only_in_the_journal(tmp_path: Path) -> None:
    """No-key names and sizes as the kernel lists the recovered copy without the key;
    plaintext names and contents as it shows them with the key."""
    image = kernelfs.make_image(tmp_path / "fs.img", 64, features=("encrypt",))
    copy = tmp_path / "copy.img"
    master = bytes(range(64))
    keyfile = tmp_path / "alice.key"
    keyfile.write_bytes(master)

    def work(mnt: Path) -> None:
        identifier = kernelfs.add_key(mnt, master)
        enc = mnt / "enc"
        enc.mkdir()
        kernelfs.set_policy(
            enc,
            2,
            kernelfs.MODE_AES_256_XTS,
            kernelfs.MODE_AES_256_CTS,
            kernelfs.PAD_32,
            identifier,
        )
        for i in range(20):
            write_synced(enc / f"secret-{i:02d}", f"secret number {i}\n".encode() * (i * 40 + 1))
        (enc / "sub").mkdir()
        write_synced(enc / "sub" / "deep", b"deep secret\n")
        fsync_path(enc / "sub")
        fsync_path(enc)
        fsync_path(mnt)

    crash_copy(image, copy, work)
    before = sha256_file(copy)
    fixed = tmp_path / "recovered.img"
    shutil.copyfile(copy, fixed)
    subprocess.run(["e2fsck", "-fy", str(fixed)], capture_output=True, check=False)
    with kernelfs.mounted(fixed, ("noatime",), readonly=True) as mnt:
        no_key = kernelfs.snapshot_view(mnt, "enc")
    with kernelfs.mounted(fixed, ("noatime",), readonly=True) as mnt:
        kernelfs.add_key(mnt, master)
        with_key = kernelfs.snapshot_view(mnt, "enc")

    ours = _cli_json_paths(str(copy), "/enc")
    want = {b"/enc/" + p: n for p, n in no_key.items() if p != b"."}
    assert set(ours) == set(want), sorted(set(ours) ^ set(want))[:5]
    for path, n in want.items():
        if n.kind == "reg":
            assert ours[path]["size"] == n.size, path

    keyed = _cli_json_paths("--key", str(keyfile), str(copy), "/enc")
    want = {b"/enc/" + p: n for p, n in with_key.items() if p != b"."}
    assert set(keyed) == set(want), sorted(set(keyed) ^ set(want))[:5]
    for path, n in want.items():
        if n.kind == "reg":
            res = CliRunner().invoke(
                cli, ["cat", "--key", str(keyfile), str(copy), os.fsdecode(path)]
            )
            assert res.exit_code == 0, res.stderr
            assert hashlib.sha256(res.stdout_bytes).hexdigest() == n.sha256, path
    assert sha256_file(copy) == before
    assert b"/enc" not in unreplayed_names(copy)  # it exists only in the journal


def test_open_unlinked_file_is_an_orphan_deleted_as_on_mount(tmp_path: Path) -> None:
    """A file unlinked while still open is an orphan in the crash copy; the kernel's
    mount (and e2fsck) deletes it: it is counted, and not among the inodes in use."""
    image = kernelfs.make_image(tmp_path / "fs.img", 32, features=())
    copy = tmp_path / "copy.img"
    ino = 0
    with writeback_held_off(), kernelfs.mounted(image) as mnt:
        write_synced(mnt / "kept", b"kept\n")
        with open(mnt / "doomed", "wb") as f:
            f.write(b"doomed\n" * 5000)
            f.flush()
            os.fsync(f.fileno())
            ino = os.fstat(f.fileno()).st_ino
            os.unlink(mnt / "doomed")
            fsync_path(mnt)
            shutil.copyfile(image, copy)  # while the unlinked file is still open
    with open_filesystem(str(copy)) as fs:
        assert fs.orphans.deleted == {ino}, fs.orphans
        assert ino not in fs.iter_used_inodes()
        assert not fs.warnings, fs.warnings
    rc = CliRunner().invoke(cli, ["info", str(copy)])
    assert re.search(r"^Orphan inodes: +1 deleted, 0 truncated", rc.stdout, re.M), rc.stdout
    assert assert_replays_as_e2fsck(copy, tmp_path)


def test_clone_of_a_crash_copy_is_the_recovered_tree(tmp_path: Path) -> None:
    image = kernelfs.make_image(tmp_path / "fs.img", 32, features=())
    copy = tmp_path / "copy.img"

    def work(mnt: Path) -> None:
        (mnt / "dir").mkdir()
        for i in range(30):
            write_synced(mnt / "dir" / f"f{i}", os.urandom(700 * i))
        fsync_path(mnt / "dir")

    crash_copy(image, copy, work)
    before = sha256_file(copy)
    out = tmp_path / "clone.img"
    res = CliRunner().invoke(cli, ["clone", str(copy), str(out)])
    assert res.exit_code == 0, res.stderr
    with open_filesystem(str(copy)) as fs:
        want = {p: v[1:] for p, v in reader_truth(fs).items()}
    with open_filesystem(str(out)) as fs:
        assert not fs.needs_recovery
        got = {p: v[1:] for p, v in reader_truth(fs).items()}
    assert b"/dir/f29" in got and got == want
    assert sha256_file(copy) == before
