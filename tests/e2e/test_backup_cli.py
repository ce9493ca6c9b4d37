"""The repository commands end to end on a local repository and the bundled sample image:
init, backup, snapshots, ls/stat/cat of a snapshot, diff, check, and damage detection."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cipherdump.cli.main import cli
from shared_data import REPO

SAMPLE = REPO / "examples" / "sample.img"


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    base = {"CIPHERDUMP_INSECURE_TEST_KDF": "1", "CIPHERDUMP_PASSWORD": "pw"}
    base.update(env or {})
    return CliRunner().invoke(cli, list(args), env=base, catch_exceptions=False)


@pytest.fixture(scope="module")
def repo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with a full backup, then one of /home/alice."""
    path = tmp_path_factory.mktemp("cli") / "repo"
    assert run("init", "-r", str(path)).exit_code == 0
    first = run("backup", "-r", str(path), str(SAMPLE), "--json")
    assert first.exit_code == 0, first.output
    second = run("backup", "-r", str(path), str(SAMPLE), "--path", "/home/alice")
    assert second.exit_code == 0, second.output
    return path


def lines(result: Result) -> list[Any]:
    return [json.loads(line) for line in result.output.splitlines()]


def test_backup_json_ends_with_one_summary(tmp_path: Path) -> None:
    repo = tmp_path / "r"
    run("init", "-r", str(repo))
    first = run("backup", str(SAMPLE), "--json", env={"CIPHERDUMP_REPOSITORY": str(repo)})
    summary = json.loads(first.output.splitlines()[-1])
    assert summary["files_new"] == 11 and summary["files_removed"] == 0
    assert summary["bytes_added"] > 0 and len(summary["snapshot_id"]) == 64
    again = run("backup", "-r", str(repo), str(SAMPLE), "--json")
    summary2 = json.loads(again.output)
    assert summary2["parent"] == summary["snapshot_id"]
    assert summary2["files_unchanged"] == 11 and summary2["bytes_read"] == 0
    assert summary2["bytes_added"] == 0


def test_snapshots_json_is_one_array(repo_dir: Path) -> None:
    result = run("snapshots", "-r", str(repo_dir), "--json")
    snaps = json.loads(result.output)
    assert isinstance(snaps, list) and len(snaps) == 2
    assert [s["path"] for s in snaps] == ["/", "/home/alice"]
    assert snaps[0]["fs_uuid"] == "c1f4e2d0-5a3b-4c6d-8e9f-0a1b2c3d4e5f"
    assert {p["version"] for p in snaps[0]["policies"]} == {1, 2}
    text = run("snapshots", "-r", str(repo_dir))
    assert snaps[1]["short_id"] in text.output


@pytest.mark.parametrize("flags", [["-R", "--json"], ["-l"], ["-lR"], []])
def test_ls_of_snapshot_equals_ls_of_image(repo_dir: Path, flags: list[str]) -> None:
    snap = json.loads(run("snapshots", "-r", str(repo_dir), "--json").output)[0]["short_id"]
    image = run("ls", str(SAMPLE), *flags)
    snapshot = run("ls", "-r", str(repo_dir), snap, *flags)
    assert image.exit_code == snapshot.exit_code == 0
    assert snapshot.output == image.output
    via_env = run("ls", snap, *flags, env={"CIPHERDUMP_REPOSITORY": str(repo_dir)})
    assert via_env.output == image.output


def test_cat_and_stat_of_snapshot(repo_dir: Path) -> None:
    r = str(repo_dir)
    names = run("ls", str(SAMPLE), "/home/alice", "--json")
    files = [rec for rec in lines(names) if rec["type"] == "file"]
    assert files
    for rec in files:
        image = run("cat", "--ciphertext", str(SAMPLE), rec["path"])
        snap = run("cat", "-r", r, "--ciphertext", "latest", rec["path"])
        assert snap.stdout_bytes == image.stdout_bytes and len(snap.stdout_bytes) >= rec["size"]
        enc = run("cat", "-r", r, "latest", rec["path"])
        assert enc.exit_code == 4  # encrypted and no key
        st = json.loads(run("stat", "-r", r, "latest", rec["path"], "--json").output)
        assert st["inode"] == rec["inode"] and st["context"]["version"] == 2
    full = json.loads(run("snapshots", "-r", r, "--json").output)[0]["id"]
    assert run("cat", "-r", r, full).exit_code == 2  # missing PATH argument
    plain = run("cat", "-r", r, full, "/README.txt")
    assert plain.stdout_bytes == run("cat", str(SAMPLE), "/README.txt").stdout_bytes


def test_diff(repo_dir: Path) -> None:
    snaps = json.loads(run("snapshots", "-r", str(repo_dir), "--json").output)
    same = run("diff", "-r", str(repo_dir), snaps[0]["id"][:10], snaps[0]["id"][:10], "--json")
    assert json.loads(same.output)["changes"] == []
    result = json.loads(
        run("diff", "-r", str(repo_dir), snaps[0]["short_id"], "latest", "--json").output
    )
    removed = {c["path"] for c in result["changes"] if c["change"] == "-"}
    assert "/README.txt" in removed and "/home/bob" in removed
    assert not any(p.startswith("/home/alice") for p in removed)


def test_check_passes(repo_dir: Path) -> None:
    result = run("check", "-r", str(repo_dir), "--read-data", "--json")
    report = json.loads(result.output)
    assert result.exit_code == 0 and report["ok"] and report["snapshots"] == 2


def test_no_repository_is_a_usage_error() -> None:
    result = run("snapshots")
    assert result.exit_code == 2 and "CIPHERDUMP_REPOSITORY" in result.output


def test_wrong_password(repo_dir: Path) -> None:
    result = run("snapshots", "-r", str(repo_dir), env={"CIPHERDUMP_PASSWORD": "nope"})
    assert result.exit_code == 4


def _repository_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".tmp-"))


def test_check_names_every_flipped_byte(repo_dir: Path, tmp_path: Path) -> None:
    files = _repository_files(repo_dir)
    kinds = {p.relative_to(repo_dir).parts[0] for p in files}
    assert {"config", "keys", "snapshots", "index", "data"} <= kinds
    for n, victim in enumerate(files):
        rel = victim.relative_to(repo_dir)
        copy = tmp_path / f"copy{n}"
        shutil.copytree(repo_dir, copy)
        target = copy / rel
        data = bytearray(target.read_bytes())
        pos = (len(data) * 7 + n) // 11 % len(data)
        data[pos] ^= 0x40
        target.write_bytes(bytes(data))
        result = run("check", "-r", str(copy), "--read-data")
        assert result.exit_code in (5, 3), (rel, result.output)
        # The damaged file is named (the config has no id to name but its own).
        assert str(rel) in result.output or (str(rel) == "config" and "config" in result.output), (
            rel,
            result.output,
        )


def test_a_backup_after_packs_were_lost_stores_their_data_again(tmp_path: Path) -> None:
    """Packs deleted outside cipherdump: the next backup warns, does not reuse the
    parent (whose trees and chunk lists may name the lost blobs), and stores what is
    gone again, so the new snapshot is whole, and so are the old snapshot's files that
    are still on the source (blobs are named by their contents); ``check`` keeps
    reporting the index files that name the lost packs."""
    repo = tmp_path / "r"
    assert run("init", "-r", str(repo)).exit_code == 0
    first = json.loads(run("backup", "-r", str(repo), "--json", str(SAMPLE)).output)
    lost = sorted((repo / "data").glob("*/*"))
    assert lost
    for pack in lost:
        pack.unlink()
    second = run("backup", "-r", str(repo), "--json", str(SAMPLE))
    assert second.exit_code == 0, second.output
    summary = json.loads(second.stdout)
    assert summary["parent"] is None and summary["files_new"] == 11
    assert summary["bytes_added"] > 0
    (warning,) = summary["warnings"]
    assert f"names {len(lost)} pack(s) the repository does not have" in warning
    assert f"cipherdump: warning: {warning}" in second.stderr
    for snap in (first["snapshot_id"], summary["snapshot_id"]):
        listed = run("ls", "-r", str(repo), "-R", "--json", snap[:12], "/")
        assert listed.exit_code == 0, listed.output
        for rec in lines(listed):
            if rec["type"] == "file":
                cat = run("cat", "-r", str(repo), "--ciphertext", snap[:12], rec["path"])
                assert cat.exit_code == 0, (rec["path"], cat.output)
    check = run("check", "-r", str(repo))
    assert check.exit_code == 5
    errors = [line for line in check.stderr.splitlines() if line.startswith("error: ")]
    assert errors and all("missing, but index/" in line for line in errors), errors
    third = json.loads(run("backup", "-r", str(repo), "--json", str(SAMPLE)).stdout)
    assert third["bytes_read"] > 0 and third["bytes_added"] == 0 and third["warnings"]


def test_a_backup_after_the_index_was_lost_stores_everything_again(tmp_path: Path) -> None:
    """Index files deleted outside cipherdump: the packs are there but nothing names
    their blobs, so the parent's trees cannot be read.  The next backup warns, does not
    reuse the parent, and stores everything again; afterwards both snapshots read back
    and ``check`` passes (the old packs are reported as unreferenced)."""
    repo = tmp_path / "r"
    assert run("init", "-r", str(repo)).exit_code == 0
    first = json.loads(run("backup", "-r", str(repo), "--json", str(SAMPLE)).stdout)
    for index_file in (repo / "index").iterdir():
        index_file.unlink()
    second = run("backup", "-r", str(repo), "--json", str(SAMPLE))
    assert second.exit_code == 0, second.output
    summary = json.loads(second.stdout)
    assert summary["parent"] is None and summary["files_new"] == 11
    (warning,) = summary["warnings"]
    assert f"the parent snapshot {first['snapshot_id'][:8]} names trees the index" in warning
    on_image = [
        r["path"] for r in lines(run("ls", "-R", "--json", str(SAMPLE))) if r["type"] == "file"
    ]
    for snap in (first["snapshot_id"], summary["snapshot_id"]):
        listed = run("ls", "-r", str(repo), "-R", "--json", snap[:12], "/")
        files = [r["path"] for r in lines(listed) if r["type"] == "file"]
        assert files == on_image
        for path in files:
            assert run("cat", "-r", str(repo), "--ciphertext", snap[:12], path).exit_code == 0
    assert run("check", "-r", str(repo)).exit_code == 0


def test_a_damaged_snapshot_file_stops_neither_listing_nor_backups(tmp_path: Path) -> None:
    """One snapshot file with a flipped byte: ``snapshots`` lists the others and names
    it (exit code 5), ``backup`` passes over it (a warning) and takes an older parent,
    and ``latest`` is the latest undamaged one."""
    repo = tmp_path / "r"
    assert run("init", "-r", str(repo)).exit_code == 0
    first = json.loads(run("backup", "-r", str(repo), "--json", str(SAMPLE)).stdout)
    second = json.loads(run("backup", "-r", str(repo), "--json", str(SAMPLE)).stdout)
    bad = repo / "snapshots" / second["snapshot_id"]
    data = bytearray(bad.read_bytes())
    data[60] ^= 0x01
    bad.write_bytes(bytes(data))
    listed = run("snapshots", "-r", str(repo), "--json")
    assert listed.exit_code == 5
    assert [s["id"] for s in json.loads(listed.stdout)] == [first["snapshot_id"]]
    assert f"cipherdump: error: snapshots/{second['snapshot_id']}: " in listed.stderr
    third = run("backup", "-r", str(repo), "--json", str(SAMPLE))
    assert third.exit_code == 0, third.output
    summary = json.loads(third.stdout)
    assert summary["parent"] == first["snapshot_id"] and summary["files_unchanged"] == 11
    (warning,) = summary["warnings"]
    assert f"snapshots/{second['snapshot_id']}" in warning and "passed over" in warning
    latest = run("ls", "-r", str(repo), "--json", "latest", "/")
    assert latest.exit_code == 0 and "passed over" in latest.stderr
    assert run("check", "-r", str(repo)).exit_code == 5
