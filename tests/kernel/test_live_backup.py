"""``backup --live``: a mounted, in-use, encrypted ext4 backed up without keys while a
writer changes it (tests/support/livewriter.py), checked against what the writer wrote.

The filesystem: ``enc`` (encrypted, its key added so the writer can write: v2 keys are
visible to every process, so the backup sees plaintext names there, as it would on a
machine where the user is logged in) holding ``static`` (never touched) and ``work``
(the writer's); ``locked`` (encrypted with a key that is removed before any backup: the
kernel shows no-key names there) and ``plain`` (unencrypted), both never touched.

Per shape of write: a live backup with the writer stopped (must equal the tree), one
while it writes (every restored file one complete version the writer wrote; untouched
files byte-exact and untouched directories listed as the kernel lists them; every
touched file a complete version or on the "changed" list), and one after it stopped
(equal to the tree again).  Restores use the keys; the backups never have them.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import kernelfs
import livewriter as W
from cipherdump.cli.main import cli
from cipherdump.engine.views.snapshot import SnapshotView
from cipherdump.repo import LocalBackend, Repository

pytestmark = pytest.mark.kernel

ENV = {"CIPHERDUMP_PASSWORD": "live-test", "CIPHERDUMP_INSECURE_TEST_KDF": "1"}
STATIC = {f"s{i}": kernelfs.pattern(3000 * i + 1, i) for i in range(6)}
LOCKED = {f"l{i}": kernelfs.pattern(5000 * i + 7, 100 + i) for i in range(4)}
PLAIN = {f"p{i}": kernelfs.pattern(700 * i + 3, 200 + i) for i in range(3)}


@dataclass
class LiveFs:
    mnt: Path
    tmp: Path
    repo: Path
    keys: tuple[Path, Path]
    enc_key: bytes  # the identifier of enc's key (added)


def _cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), env=ENV)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def live_fs(tmp_path: Path) -> Iterator[LiveFs]:
    kernelfs.require_kernel()
    image = kernelfs.make_image(tmp_path / "fs.img", 64)
    repo = tmp_path / "repo"
    assert _cli("init", "-r", str(repo))[0] == 0
    k1, k2 = os.urandom(64), os.urandom(64)
    keys = (tmp_path / "enc.key", tmp_path / "locked.key")
    keys[0].write_bytes(k1)
    keys[1].write_bytes(k2)
    with kernelfs.mounted(image) as mnt:
        added: list[bytes] = []
        try:
            ident = kernelfs.add_key(mnt, k1)
            added.append(ident)
            locked_id = kernelfs.add_key(mnt, k2)
            added.append(locked_id)
            for name, ident_ in (("enc", ident), ("locked", locked_id)):
                (mnt / name).mkdir()
                kernelfs.set_policy(
                    mnt / name,
                    2,
                    kernelfs.MODE_AES_256_XTS,
                    kernelfs.MODE_AES_256_CTS,
                    kernelfs.PAD_32,
                    ident_,
                )
            for d, files in (("enc/static", STATIC), ("locked", LOCKED), ("plain", PLAIN)):
                (mnt / d).mkdir(exist_ok=True)
                for n, data in files.items():
                    (mnt / d / n).write_bytes(data)
            (mnt / "enc" / "work").mkdir()
            os.sync()
            kernelfs.remove_key(mnt, locked_id)
            added.remove(locked_id)
            yield LiveFs(mnt, tmp_path, repo, keys, ident)
        finally:
            for ident_ in added:
                kernelfs.remove_key(mnt, ident_)


def _links(log: dict[bytes, W.FileLog], root: Path) -> dict[bytes, W.FileLog]:
    """The writer's log with the second links of its files (``f0.link``) in it."""
    out = dict(log)
    for rel, entry in log.items():
        if (root / (os.fsdecode(rel) + ".link")).exists():
            out[rel + b".link"] = entry
    return out


def _plan(fs: LiveFs, shape: str) -> W.Plan:
    files: tuple[tuple[str, str, int], ...] = ()
    if shape != "create":
        files = tuple((f"f{i}", shape, i + 1) for i in range(3))
    return W.Plan(
        fs.mnt / "enc" / "work",
        files,
        create_dir="cr" if shape == "create" else None,
        seed=7,
        max_pause_s=0.03,
        block_pause_s=0.002,
    )


def _backup(fs: LiveFs) -> tuple[int, dict[str, Any], str]:
    code, out, err = _cli("backup", "-r", str(fs.repo), "--live", str(fs.mnt), "--json")
    assert code in (0, 1), err
    return code, json.loads(out), err


def _restore(fs: LiveFs, snap: str, name: str) -> Path:
    target = fs.tmp / name
    args = ["restore", "-r", str(fs.repo), snap, "--target", str(target)]
    for k in fs.keys:
        args += ["--key", str(k)]
    code, _, err = _cli(*args)
    assert code == 0, err
    return target


def _untouched_exact(fs: LiveFs, out: Path, snap: str) -> None:
    """Files never touched are byte-exact; untouched directories list as the kernel's."""
    for d, files in (("enc/static", STATIC), ("locked", LOCKED), ("plain", PLAIN)):
        assert sorted(os.listdir(out / d)) == sorted(files), d
        for n, data in files.items():
            assert (out / d / n).read_bytes() == data, f"{d}/{n}"
    # Listings as the kernel shows them: plaintext where the key is loaded, no-key names
    # in ``locked``, whose key is not.
    for d in ("enc/static", "plain"):
        assert sorted(os.listdir(out / d)) == sorted(os.listdir(fs.mnt / d)), d
    repository = Repository.open(LocalBackend(str(fs.repo)), b"live-test")
    try:
        snap_id, snapshot = repository.find_snapshot(snap)
        view = SnapshotView(repository, snap_id, snapshot)
        shown = sorted(os.fsdecode(n.name) for n in view.children(view.resolve(b"/locked")))
    finally:
        repository.close()
    assert shown == sorted(os.listdir(fs.mnt / "locked"))


def _tree_exact(fs: LiveFs, out: Path, log_path: Path) -> None:
    """With the writer stopped, the snapshot is the tree: the writer's files at their
    last version, nothing more, nothing less."""
    log = W.read_log(log_path)
    live = sorted(_files_under(fs.mnt / "enc" / "work"))
    assert sorted(_files_under(out / "enc" / "work")) == live
    for rel in live:
        data = (out / "enc" / "work" / os.fsdecode(rel)).read_bytes()
        assert data == (fs.mnt / "enc" / "work" / os.fsdecode(rel)).read_bytes(), rel
        entry = log.get(rel.removesuffix(b".link"))
        if entry is None:
            continue  # the untouched file
        assert W.version_of(data, entry.shape, entry.file_id) == entry.versions[-1], rel


def _files_under(root: Path) -> list[bytes]:
    out = []
    for dirpath, _, names in os.walk(root):
        for n in names:
            out.append(os.fsencode(os.path.relpath(os.path.join(dirpath, n), root)))
    return out


def _nokey_paths(fs: LiveFs) -> dict[bytes, bytes]:
    """Relative plaintext path under enc/work -> the display path a key-less backup
    gives it: the kernel's no-key names, read with enc's key removed for a moment
    (the writer has stopped; fscrypt names are deterministic per directory)."""
    work = fs.mnt / "enc" / "work"
    plain: dict[int, bytes] = {}
    for rel in [b".", *_files_under(work), *_dirs_under(work)]:
        plain[os.lstat(work / os.fsdecode(rel)).st_ino] = rel
    os.sync()
    kernelfs.remove_key(fs.mnt, fs.enc_key)
    try:
        shown: dict[bytes, bytes] = {}
        for dirpath, dirs, names in os.walk(os.fsencode(fs.mnt)):
            for n in [*dirs, *names]:
                full = os.path.join(dirpath, n)
                ino = os.lstat(full).st_ino
                if ino in plain:
                    shown[plain[ino]] = full[len(os.fsencode(fs.mnt)) :]
    finally:
        kernelfs.add_key(fs.mnt, fs.keys[0].read_bytes())
    return shown


def _dirs_under(root: Path) -> list[bytes]:
    out = []
    for dirpath, dirs, _ in os.walk(root):
        for n in dirs:
            out.append(os.fsencode(os.path.relpath(os.path.join(dirpath, n), root)))
    return out


def _check_during(fs: LiveFs, out: Path, log_path: Path, report: dict[str, Any]) -> None:
    last_round_ns = report["live"]["last_round_ns"]
    log = _links(W.read_log(log_path), fs.mnt / "enc" / "work")
    changed = {os.fsencode(c["path"]) for c in report["live"]["changed"]}
    shown = _nokey_paths(fs)
    work = out / "enc" / "work"
    restored = set(_files_under(work)) if work.exists() else set()
    for rel in restored - {b"untouched"}:
        entry = log.get(rel.removesuffix(b".link"))
        assert entry is not None, f"{rel!r} was never written"
        data = (work / os.fsdecode(rel)).read_bytes()
        version = W.version_of(data, entry.shape, entry.file_id)
        # One complete version the writer wrote: no block of another version.
        assert version is not None, f"{rel!r}: mixed or torn"
        assert version in entry.versions, (rel, version)
    for rel, entry in log.items():
        if rel in restored or entry.deleted or entry.created_ns >= last_round_ns:
            continue  # made after the last round began: stored or not, as it was read
        # Touched and not stored: it (or a directory above it) must be on the list.
        path = shown.get(rel)
        assert path is not None, rel
        above = [path[:i] for i in range(len(path)) if path[i : i + 1] == b"/"]
        assert path in changed or any(a in changed for a in above), (rel, path, changed)


@pytest.mark.parametrize("shape", W.SHAPES)
def test_live_backup_while_writing(live_fs: LiveFs, shape: str) -> None:
    fs = live_fs
    plan = _plan(fs, shape)
    log_path = fs.tmp / "writer.json"
    W.prepare(plan, log_path)
    if plan.files:  # one untouched file of the shape in the busy directory
        W.create_file(plan.root, "untouched", shape, 99)
    if shape in ("rewrite", "odirect"):
        # A second link: it must not take over what was read (or rejected) at the first.
        os.link(plan.root / "f0", plan.root / "f0.link")
    os.sync()

    code, first, err = _backup(fs)
    assert code == 0 and first["live"]["changed"] == [], err
    out = _restore(fs, first["snapshot_id"], "first")
    _untouched_exact(fs, out, first["snapshot_id"])
    _tree_exact(fs, out, log_path)

    with W.running_writer(plan, log_path, warmup_s=0.2) as stop:
        code, during, err = _backup(fs)
        stop()
    assert during["live"]["mode"] == "live, per-file consistent"
    assert (code == 1) == bool(during["live"]["changed"]), err
    for c in during["live"]["changed"]:
        assert c["path"].startswith("/enc/"), c  # only the writer's tree changed
        assert f"changed during backup: {c['path']}" in err
    out = _restore(fs, during["snapshot_id"], "during")
    _untouched_exact(fs, out, during["snapshot_id"])
    if plan.files:
        assert (out / "enc/work/untouched").read_bytes() == W.content(shape, 99, 0)
    _check_during(fs, out, log_path, during)

    code, after, err = _backup(fs)
    assert code == 0 and after["live"]["changed"] == [], err
    out = _restore(fs, after["snapshot_id"], "after")
    _untouched_exact(fs, out, after["snapshot_id"])
    _tree_exact(fs, out, log_path)


def test_snapshot_records_the_live_mode(live_fs: LiveFs) -> None:
    code, _, _ = _backup(live_fs)
    assert code == 0
    code, out, _ = _cli("snapshots", "-r", str(live_fs.repo), "--json")
    (snap,) = json.loads(out)
    assert snap["live"]["mode"] == "live, per-file consistent"
    assert snap["live"]["mount_point"] == os.path.realpath(live_fs.mnt)
    # (A file made within a clock tick of the first round's start is retried once.)
    assert snap["live"]["changed"] == [] and snap["live"]["rounds"] in (1, 2)


def test_the_mounted_device_is_found_and_never_opened_for_writing(live_fs: LiveFs) -> None:
    """``backup --live /dev/loopN`` backs up the mount of that device; the device's
    bytes outside what the kernel itself writes are not touched (its write counter in
    /sys does not move while cipherdump runs with the filesystem idle)."""
    fs = live_fs
    source = next(
        line.split()[-2]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if f" {os.path.realpath(fs.mnt)} " in line
    )
    os.sync()
    stat_file = Path("/sys/block", os.path.basename(source), "stat")
    writes_before = int(stat_file.read_text().split()[4])
    code, out, err = _cli("backup", "-r", str(fs.repo), "--live", source, "--json")
    assert code == 0, err
    assert json.loads(out)["live"]["mount_point"] == os.path.realpath(fs.mnt)
    # syncfs may write what the kernel held dirty (the superblock's counters); nothing
    # cipherdump reads turns into a write: allow the kernel's own few.
    writes_after = int(stat_file.read_text().split()[4])
    assert writes_after - writes_before < 64


def test_a_remount_during_the_backup_ends_it_with_one_line(
    live_fs: LiveFs, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cipherdump.blockio.livefs import LiveMount

    fs = live_fs
    real_syncfs = LiveMount.syncfs

    def syncfs_then_remount(self: LiveMount) -> None:
        real_syncfs(self)
        subprocess.run(["mount", "-o", "remount,ro", str(fs.mnt)], check=True)

    monkeypatch.setattr(LiveMount, "syncfs", syncfs_then_remount)
    try:
        code, out, err = _cli("backup", "-r", str(fs.repo), "--live", str(fs.mnt))
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(fs.mnt)], check=True)
    assert code == 3, err
    assert "remounted during the backup" in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
    code, out, _ = _cli("snapshots", "-r", str(fs.repo), "--json")
    assert json.loads(out) == []  # nothing half-made was saved


def test_not_a_mount_point_or_not_ext4_is_one_line(tmp_path: Path) -> None:
    assert _cli("init", "-r", str(tmp_path / "repo"))[0] == 0
    code, _, err = _cli("backup", "-r", str(tmp_path / "repo"), "--live", str(tmp_path))
    assert code == 3 and "not a mount point" in err
    code, _, err = _cli("backup", "-r", str(tmp_path / "repo"), "--live", "/proc")
    assert code == 3 and "proc filesystem, not ext4" in err


def test_a_directory_with_another_filesystem_mounted_on_it_is_named(live_fs: LiveFs) -> None:
    """The device holds the directory below the mount; the kernel shows the other
    filesystem's root: it cannot be checked, so it is named (and kept from the parent
    snapshot, which was made before the other mount)."""
    fs = live_fs
    code, _, _ = _backup(fs)
    assert code == 0
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(fs.mnt / "plain")],
                   check=True)  # fmt: skip
    try:
        code, report, err = _backup(fs)
    finally:
        subprocess.run(["umount", str(fs.mnt / "plain")], check=True)
    assert code == 1, err
    (entry,) = report["live"]["changed"]
    assert entry["path"] == "/plain"
    assert entry["reason"] == "another filesystem is mounted on it"
    assert entry["outcome"] == "kept from the parent snapshot"
    out = _restore(fs, report["snapshot_id"], "covered")
    _untouched_exact(fs, out, report["snapshot_id"])


@pytest.mark.slow
def test_live_backups_back_to_back_while_every_shape_writes(live_fs: LiveFs) -> None:
    """Every shape at once, for longer: five live backups in a row while the writer
    runs, each incremental on the one before, each checked as above; then the tree
    exactly once the writer stops."""
    fs = live_fs
    files = tuple(
        (f"{shape}-{i}", shape, 10 * n + i)
        for n, shape in enumerate(s for s in W.SHAPES if s != "create")
        for i in range(2)
    )
    plan = W.Plan(
        fs.mnt / "enc" / "work",
        files,
        create_dir="cr",
        seed=11,
        max_pause_s=0.2,
        block_pause_s=0.003,
    )
    log_path = fs.tmp / "writer.json"
    W.prepare(plan, log_path)
    code, _, err = _backup(fs)
    assert code == 0, err
    reports = []
    with W.running_writer(plan, log_path, warmup_s=0.5) as stop:
        for _ in range(5):
            code, report, err = _backup(fs)
            reports.append(report)
            time.sleep(0.5)
        stop()
    for n, report in enumerate(reports):
        out = _restore(fs, report["snapshot_id"], f"run{n}")
        _untouched_exact(fs, out, report["snapshot_id"])
        _check_during(fs, out, log_path, report)
    code, after, err = _backup(fs)
    assert code == 0 and after["live"]["changed"] == [], err
    out = _restore(fs, after["snapshot_id"], "after")
    _tree_exact(fs, out, log_path)


def test_a_file_whose_inode_reads_differently_afterwards_is_taken_back(
    live_fs: LiveFs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second read of the files' inodes, done per directory once its files are
    read, has the last word: here it fails for every file, so every file is taken
    back, round after round, and in the last kept from the parent snapshot, named."""
    from cipherdump.errors import CorruptError
    from cipherdump.ext4 import Filesystem

    fs = live_fs
    code, _, _ = _backup(fs)
    assert code == 0
    for n in PLAIN:  # changed, so that the next backup reads them (and checks them)
        (fs.mnt / "plain" / n).write_bytes(b"new " + PLAIN[n])
    os.sync()
    time.sleep(0.05)

    def unreadable(self: Filesystem, inos: list[int]) -> dict[int, object]:
        return {ino: CorruptError("changed", structure="inode") for ino in inos}

    monkeypatch.setattr(Filesystem, "fresh_inodes", unreadable)
    code, report, err = _backup(fs)
    assert code == 1, err
    changed = report["live"]["changed"]
    assert report["live"]["rounds"] == 4
    named = {c["path"] for c in changed}
    assert {"/plain/p0", "/plain/p1", "/plain/p2"} == named
    assert all(c["reason"] == "its inode could not be read again" for c in changed)
    assert all(c["outcome"] == "kept from the parent snapshot" for c in changed)
    out = _restore(fs, report["snapshot_id"], "taken-back")
    for n, data in PLAIN.items():
        assert (out / "plain" / n).read_bytes() == data  # the parent snapshot's version


def test_a_directory_of_a_live_filesystem_and_the_text_summary(live_fs: LiveFs) -> None:
    """``--path`` works live as it does on an image (also for a directory whose
    entries the kernel shows by no-key names, and lists as the snapshot does), and the
    text summary ends with the rounds."""
    fs = live_fs
    code, out, err = _cli("backup", "-r", str(fs.repo), "--live", str(fs.mnt), "--path", "/plain")
    assert code == 0, err
    assert out.splitlines()[-1].startswith("live: ") and "0 changed during backup" in out
    code, out, err = _cli(
        "backup", "-r", str(fs.repo), "--live", str(fs.mnt), "--path", "/locked", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["path"] == "/locked"
    code, listing, _ = _cli("ls", "-r", str(fs.repo), "latest", "/locked")
    assert sorted(line.rsplit("/", 1)[-1] for line in listing.split()) == sorted(
        os.listdir(fs.mnt / "locked")
    )


def test_a_directory_of_more_entries_than_a_batch(live_fs: LiveFs) -> None:
    """The walk lists large directories a batch at a time; a live backup lists the
    whole directory between its two looks at it, and stores every entry."""
    fs = live_fs
    many = fs.mnt / "enc" / "many"
    many.mkdir()
    for i in range(1300):
        (many / f"e{i:04d}").write_bytes(b"%d" % i)
    os.sync()
    code, out, err = _cli("backup", "-r", str(fs.repo), "--live", str(fs.mnt), "--json")
    assert code == 0 and json.loads(out)["live"]["changed"] == [], err
    restored = _restore(fs, json.loads(out)["snapshot_id"], "many")
    names = sorted(os.listdir(restored / "enc" / "many"))
    assert names == sorted(os.listdir(many)) and len(names) == 1300
    assert (restored / "enc" / "many" / "e1299").read_bytes() == b"1299"
