"""``repair index``: the index made again from the packs' own headers, after index
files were lost or damaged, or packs were lost or damaged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cipherdump.cli.main import cli
from shared_data import REPO

SAMPLE = REPO / "examples" / "sample.img"
ENV = {"CIPHERDUMP_INSECURE_TEST_KDF": "1", "CIPHERDUMP_PASSWORD": "pw"}


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env=ENV, catch_exceptions=False)


def backup(repo: Path) -> dict[str, Any]:
    result = run("backup", "-r", str(repo), "--json", str(SAMPLE))
    assert result.exit_code == 0, result.output
    summary: dict[str, Any] = json.loads(result.stdout)
    return summary


def repair(repo: Path) -> tuple[int, dict[str, Any]]:
    result = run("repair", "index", "-r", str(repo), "--json")
    return result.exit_code, json.loads(result.stdout)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "r"
    assert run("init", "-r", str(path)).exit_code == 0
    backup(path)
    return path


def flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def readable(repo: Path) -> None:
    """``check --read-data`` passes, with nothing unreferenced, and the next backup is
    an ordinary incremental one: nothing read again, no warning."""
    check = run("check", "-r", str(repo), "--read-data")
    assert check.exit_code == 0, check.output
    assert "unreferenced" not in check.output
    summary = backup(repo)
    assert summary["warnings"] == [] and summary["files_unchanged"] == 11
    assert summary["bytes_read"] == 0


def test_lost_index_files(repo: Path) -> None:
    for index_file in (repo / "index").iterdir():
        index_file.unlink()
    code, report = repair(repo)
    assert code == 0 and report["damaged"] == [] and report["replaced"] == 0
    assert report["packs"] == len(list((repo / "data").glob("*/*")))
    assert [p.name for p in (repo / "index").iterdir()] == [report["index"]]
    readable(repo)


def test_a_damaged_index_file(repo: Path) -> None:
    (index_file,) = (repo / "index").iterdir()
    flip(index_file, 100)
    # Passed over like a lost one, with a warning naming it: the backup stores
    # everything again (its blobs count as absent); check names the damaged file.
    result = run("backup", "-r", str(repo), str(SAMPLE))
    assert result.exit_code == 0, result.output
    assert f"warning: index/{index_file.name}" in result.stderr
    check = run("check", "-r", str(repo))
    assert check.exit_code == 5 and f"index/{index_file.name}" in check.stderr
    code, report = repair(repo)
    assert code == 0 and report["replaced"] == 2  # and the backup's own
    readable(repo)


def test_a_lost_pack_after_a_backup_stored_its_data_again(repo: Path) -> None:
    for pack in (repo / "data").glob("*/*"):
        pack.unlink()
    assert backup(repo)["warnings"]  # stores everything again (see test_backup_cli)
    code, _ = repair(repo)
    assert code == 0
    readable(repo)


def test_a_damaged_pack_keeps_what_the_old_index_says(repo: Path) -> None:
    pack = sorted((repo / "data").glob("*/*"))[0]
    flip(pack, pack.stat().st_size - 20)  # in its sealed header
    code, report = repair(repo)
    assert code == 5
    (why,) = report["damaged"]
    assert pack.name in why and "kept as the old index lists it" in why
    code, report = repair(repo)  # and again: the new index still has it
    assert code == 5 and "kept" in report["damaged"][0]
    assert run("check", "-r", str(repo)).exit_code == 0  # its blobs are whole


def test_an_interrupted_repair_leaves_a_usable_repository(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after the new index file is saved, before the old ones are removed:
    they are superseded, and passed over even when damaged."""
    from cipherdump.repo import FileType, LocalBackend

    (index_file,) = (repo / "index").iterdir()
    flip(index_file, 100)
    remove = LocalBackend.remove

    def stop(self: LocalBackend, handle: Any) -> None:
        if handle.type is FileType.INDEX:
            raise KeyboardInterrupt
        remove(self, handle)

    monkeypatch.setattr(LocalBackend, "remove", stop)
    assert run("repair", "index", "-r", str(repo)).exit_code == 130
    monkeypatch.undo()
    assert len(list((repo / "index").iterdir())) == 2
    summary = backup(repo)
    assert summary["files_unchanged"] == 11
