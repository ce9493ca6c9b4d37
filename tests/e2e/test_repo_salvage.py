"""``repair packs``: a pack damaged in place is salvaged, and what it lost is stored
again by the next backup (deduplication no longer trusts the broken copy); ``check``
names the snapshots and paths that use lost or damaged data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cipherdump.cli.main import cli
from shared_data import REPO

EXAMPLES = REPO / "examples"
SAMPLE = EXAMPLES / "sample.img"
KEYS = ["--key", str(EXAMPLES / "alice.key"), "--key", str(EXAMPLES / "bob.key")]
ENV = {"CIPHERDUMP_INSECURE_TEST_KDF": "1", "CIPHERDUMP_PASSWORD": "x"}


def run(repo: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, [*args, "-r", str(repo)], env=ENV, catch_exceptions=False)


def backup(repo: Path, *flags: str) -> dict[str, Any]:
    result = run(repo, "backup", "--json", *flags, str(SAMPLE))
    assert result.exit_code == 0, result.output
    summary: dict[str, Any] = json.loads(result.stdout)
    return summary


def files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "r"
    assert run(path, "init").exit_code == 0
    backup(path)
    return path


def biggest_pack(repo: Path) -> Path:
    return max((repo / "data").glob("*/*"), key=lambda p: p.stat().st_size)


def test_a_flipped_byte_in_a_pack_is_salvaged_and_stored_again(repo: Path, tmp_path: Path) -> None:
    original = run(repo, "restore", "latest", "--target", str(tmp_path / "t0"), *KEYS)
    assert original.exit_code == 0, original.output
    first = run(repo, "snapshots", "--json")
    (snap,) = json.loads(first.stdout)
    pack = biggest_pack(repo)
    flip(pack, pack.stat().st_size // 2)  # in a data blob

    # Deduplication trusted the index: the backup stored nothing (the bug).
    assert run(repo, "repair", "index").exit_code == 0  # sees nothing wrong
    check = run(repo, "check", "--read-data", "--json")
    assert check.exit_code == 5
    report = json.loads(check.stdout)
    (damaged,) = report["damaged_snapshots"]
    assert damaged["snapshot"] == snap["id"]
    assert damaged["paths"] and all(p.startswith("/home/") for p in damaged["paths"])
    text = run(repo, "check", "--read-data")
    assert f"snapshots/{snap['id']}" in text.stderr and damaged["paths"][0] in text.stderr

    dry = run(repo, "repair", "packs", "--dry-run", "--json")
    assert dry.exit_code == 5
    assert json.loads(dry.stdout)["removed"] == [] and pack.exists()

    result = run(repo, "repair", "packs", "--json")
    assert result.exit_code == 5, result.output  # a blob is lost for good
    out = json.loads(result.stdout)
    assert out["removed"] == [f"data/{pack.parent.name}/{pack.name}"] and not pack.exists()
    assert len(out["lost"]) == 1 and out["salvaged"] > 0 and len(out["new_packs"]) == 1
    assert [p.name for p in (repo / "index").iterdir()] == [out["index"]]

    summary = backup(repo, "--force-reread")
    assert summary["bytes_added"] > 0
    restored = run(repo, "restore", "latest", "--target", str(tmp_path / "t1"), *KEYS)
    assert restored.exit_code == 0, restored.output
    assert files(tmp_path / "t1") == files(tmp_path / "t0")
    check = run(repo, "check", "--read-data")
    assert check.exit_code == 0, check.output  # the old snapshot is whole again too
    again = run(repo, "repair", "packs")
    assert again.exit_code == 0 and "none is damaged" in again.stdout


def test_a_plain_backup_after_repair_packs_stores_the_lost_chunk(repo: Path) -> None:
    """The index was repaired since the parent: directories and unchanged nodes are
    not taken over unread (they would name the lost chunk), but each unchanged file
    whose chunks are all indexed is still not read again."""
    pack = biggest_pack(repo)
    flip(pack, pack.stat().st_size // 2)
    assert run(repo, "repair", "packs").exit_code == 5
    summary = backup(repo)
    assert summary["bytes_added"] > 0 and 0 < summary["bytes_read"] < 70000
    assert summary["files_unchanged"] == 11  # (by their metadata; one was read again)
    assert run(repo, "check", "--read-data").exit_code == 0
    again = backup(repo)  # and then incremental as ever
    assert again["bytes_read"] == 0 and again["dirs_unchanged"] == 9


def test_repair_snapshots_then_an_incremental_backup_stores_the_lost_file(repo: Path) -> None:
    """restic's order: repair packs, repair snapshots (--forget), backup.  The repaired
    snapshot lacks the file whose chunk was lost, and no directory table: the next
    (plain) backup reads everything and stores the chunk again."""
    pack = biggest_pack(repo)
    flip(pack, pack.stat().st_size // 2)
    result = run(repo, "repair", "packs", "--json")
    assert result.exit_code == 5
    (affected,) = json.loads(result.stdout)["damaged_snapshots"]
    dry = run(repo, "repair", "snapshots", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    (planned,) = json.loads(dry.stdout)["repaired"]
    assert planned["new"] is None and planned["removed"] == affected["paths"]
    done = run(repo, "repair", "snapshots", "--forget", "--json")
    (repaired,) = json.loads(done.stdout)["repaired"]
    assert repaired["snapshot"] == affected["snapshot"] and repaired["new"]
    assert run(repo, "check").exit_code == 0  # the lost file is no longer named
    listed = json.loads(run(repo, "snapshots", "--json").stdout)
    assert [s["id"] for s in listed] == [repaired["new"]]
    gone = run(repo, "ls", "latest", affected["paths"][0])
    assert gone.exit_code == 3
    summary = backup(repo)
    assert summary["bytes_added"] > 0 and summary["parent"] == repaired["new"]
    assert run(repo, "check", "--read-data").exit_code == 0
    assert run(repo, "ls", "latest", affected["paths"][0]).exit_code == 0


def test_a_damaged_pack_header_is_salvaged_from_what_the_index_says(repo: Path) -> None:
    pack = biggest_pack(repo)
    flip(pack, pack.stat().st_size - 20)  # in its sealed header: every blob is whole
    result = run(repo, "repair", "packs", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["lost"] == [] and out["salvaged"] > 0 and not pack.exists()
    assert run(repo, "check", "--read-data").exit_code == 0
    summary = backup(repo)
    assert summary["bytes_read"] == 0 and summary["warnings"] == []


@pytest.mark.parametrize("damage", ["truncate", "swap"])
def test_cut_or_swapped_packs(repo: Path, damage: str) -> None:
    packs = sorted((repo / "data").glob("*/*"), key=lambda p: p.stat().st_size)
    if damage == "truncate":
        with open(packs[-1], "r+b") as f:
            f.truncate(packs[-1].stat().st_size // 2)
    else:
        a, b = packs[0].read_bytes(), packs[-1].read_bytes()
        packs[0].write_bytes(b)
        packs[-1].write_bytes(a)
    check = run(repo, "check", "--read-data")
    assert check.exit_code == 5 and "snapshots/" in check.stderr
    result = run(repo, "repair", "packs")
    assert result.exit_code in (0, 5), result.output
    backup(repo, "--force-reread")
    assert run(repo, "check", "--read-data").exit_code == 0


def _damage(path: Path, kind: str, fraction: float) -> None:
    data = bytearray(path.read_bytes())
    at = min(int(len(data) * fraction), len(data) - 1)
    if kind == "flip":
        data[at] ^= 0x80
    elif kind == "cut":
        del data[at:]
    else:  # "grow": bytes appended after the trailer
        data += b"\0" * (1 + at % 100)
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pristine") / "r"
    assert run(path, "init").exit_code == 0
    backup(path)
    return path


# Positions across a pack: blobs, the sealed header near the end, the trailer.
FRACTIONS = (0.0, 0.1, 0.37, 0.5, 0.81, 0.97, 0.995, 0.9999)


@pytest.mark.parametrize("fraction", FRACTIONS)
@pytest.mark.parametrize("kind", ["flip", "cut", "grow"])
@pytest.mark.parametrize("which", [0, -1])  # the tree pack and the data pack
def test_any_damage_to_any_pack_is_repaired_by_repair_packs_and_a_backup(
    pristine: Path, tmp_path: Path, which: int, kind: str, fraction: float
) -> None:
    """Siblings of the flipped byte: every part of either pack, changed, cut short or
    grown.  repair packs and one plain backup make every snapshot whole again."""
    repo = tmp_path / "r"
    for item in pristine.rglob("*"):
        target = repo / item.relative_to(pristine)
        if item.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(item.read_bytes())
    packs = sorted((repo / "data").glob("*/*"), key=lambda p: p.stat().st_size)
    _damage(packs[which], kind, fraction)
    check = run(repo, "check", "--read-data")
    assert check.exit_code == 5, check.output
    result = run(repo, "repair", "packs")
    assert result.exit_code in (0, 5), result.output
    assert "internal error" not in result.stderr
    backup(repo)
    check = run(repo, "check", "--read-data")
    assert check.exit_code == 0, check.output
