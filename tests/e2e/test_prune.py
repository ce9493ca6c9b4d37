"""``prune``: frees what no snapshot uses, keeps every byte of what they do, refuses when
it cannot know, and leaves a usable repository wherever it is killed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cipherdump.cli.main import cli
from cipherdump.repo import FileType, LocalBackend, Repository
from lifecycle_repo import PASSWORD, add_snapshot, expected_files, make_repo, read_snapshot_files
from shared_data import REPO

ENV = {"CIPHERDUMP_INSECURE_TEST_KDF": "1", "CIPHERDUMP_PASSWORD": "pw"}
DAYS = [f"2024-01-{d:02d} 12:00" for d in range(1, 9)]


def run(repo: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, [*args, "-r", str(repo)], env=ENV, catch_exceptions=False)


def tree_listing(repo: Path) -> dict[str, int]:
    return {
        str(p.relative_to(repo)): p.stat().st_size
        for p in sorted(repo.rglob("*"))
        if p.is_file() and p.parent.name != "locks"
    }


def verify(repo: Path, kept: list[str]) -> None:
    """check --read-data passes and every kept snapshot reads back byte-exact."""
    with Repository.open(LocalBackend(str(repo)), PASSWORD, lock=False) as r:
        report = r.check(read_data=True)
        assert report.ok, report.text()
        snaps = r.list_snapshots()
        times = {s.time_ns for _, s in snaps}
        from lifecycle_repo import ns

        assert {ns(d) for d in kept} <= times
        by_time = {s.time_ns: s for _, s in snaps}
        for day in kept:
            assert read_snapshot_files(r, by_time[ns(day)].tree) == expected_files(day)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "r"
    make_repo(path)
    for day in DAYS:
        add_snapshot(path, day)
    return path


def test_forget_then_prune_frees_and_keeps_every_byte(repo: Path) -> None:
    before = sum(tree_listing(repo).values())
    assert run(repo, "forget", "--keep-last", "3").exit_code == 0
    dry = run(repo, "prune", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    plan = json.loads(dry.stdout)
    assert plan["dry_run"] and plan["freed"] > 0 and plan["snapshots"] == 3
    result = run(repo, "prune", "--json", "--max-unused", "0")
    assert result.exit_code == 0, result.output
    stats: dict[str, Any] = json.loads(result.stdout)
    assert stats["packs_removed"] + stats["packs_repacked"] > 0
    assert stats["unused_after"] == 0
    after = sum(tree_listing(repo).values())
    assert after < before
    verify(repo, DAYS[-3:])
    again = json.loads(run(repo, "prune", "--json", "--max-unused", "0").stdout)
    assert again["packs_removed"] == again["packs_repacked"] == 0 and again["freed"] == 0
    text = run(repo, "prune")
    assert "free 0 B" in text.stdout
    # Nothing to do is nothing freed, not minus an empty pack's header.
    assert json.loads(run(repo, "prune", "--dry-run", "--json").stdout)["freed"] == 0


def test_dry_run_changes_nothing(repo: Path) -> None:
    assert run(repo, "forget", "--keep-last", "1").exit_code == 0
    before = tree_listing(repo)
    result = run(repo, "prune", "--dry-run")
    assert result.exit_code == 0 and "dry run" in result.stdout
    assert tree_listing(repo) == before


def test_max_repack_size_bounds_the_copying(repo: Path) -> None:
    assert run(repo, "forget", "--keep-last", "2").exit_code == 0
    stats = json.loads(
        run(repo, "prune", "--json", "--max-unused", "0", "--max-repack-size", "0").stdout
    )
    assert stats["packs_repacked"] == 0 and stats["packs_removed"] > 0
    verify(repo, DAYS[-2:])


def test_forget_prune_in_one_go(repo: Path) -> None:
    result = run(repo, "forget", "--keep-daily", "2", "--prune", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["removed"] == 6 and out["prune"]["freed"] > 0
    verify(repo, DAYS[-2:])


def test_a_needed_pack_missing_stops_prune_unchanged(repo: Path) -> None:
    assert run(repo, "forget", "--keep-last", "2").exit_code == 0
    with Repository.open(LocalBackend(str(repo)), PASSWORD, lock=False) as r:
        tree = r.list_snapshots()[-1][1].tree
        node = next(n for n in r.load_tree(tree).nodes if n.name == b"own")
        from cipherdump.repo import BlobType

        found = r._store.index.lookup(BlobType.DATA, node.content[1])
        assert found is not None
    (repo / "data" / found[0].hex[:2] / found[0].hex).unlink()
    before = tree_listing(repo)
    result = run(repo, "prune")
    assert result.exit_code == 5, result.output
    assert "prune stopped, nothing changed" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert tree_listing(repo) == before


def test_a_damaged_snapshot_stops_prune(repo: Path) -> None:
    snap = next((repo / "snapshots").iterdir())
    data = snap.read_bytes()
    snap.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # (a byte set to 0 may be 0 already)
    before = tree_listing(repo)
    result = run(repo, "prune")
    assert result.exit_code == 5 and "cannot be read" in result.stderr
    assert tree_listing(repo) == before


def test_prune_refuses_a_locked_repository(repo: Path) -> None:
    holder = Repository.open(LocalBackend(str(repo)), PASSWORD)
    try:
        result = run(repo, "prune")
        assert result.exit_code == 8 and "locked" in result.stderr
    finally:
        holder.close()


def test_unindexed_packs_go_only_when_old(repo: Path) -> None:
    # A pack no index names: a young one may be a live writer's, an old one is debris.
    packs = sorted((repo / "data").glob("*/*"))
    young, old = repo / "young", repo / "old"
    shutil.copy(packs[0], young)
    shutil.copy(packs[1], old)
    with Repository.open(LocalBackend(str(repo)), PASSWORD) as r:
        index_names = [i.name for i in r.backend.list(FileType.INDEX)]
    # Make both unindexed by giving them new names (a pack is listed by its name only).
    fake_young, fake_old = "e" * 64, "f" * 64
    for src, name in ((young, fake_young), (old, fake_old)):
        (repo / "data" / name[:2]).mkdir(exist_ok=True)
        src.rename(repo / "data" / name[:2] / name)
    hours_ago = time.time() - 2 * 3600
    os.utime(repo / "data" / fake_old[:2] / fake_old, (hours_ago, hours_ago))
    stats = json.loads(run(repo, "prune", "--json").stdout)
    assert stats["unindexed_removed"] == 1 and stats["unindexed_kept"] == 1
    assert (repo / "data" / fake_young[:2] / fake_young).exists()
    assert not (repo / "data" / fake_old[:2] / fake_old).exists()
    assert index_names


KILLER = textwrap.dedent(
    """
    import json, os, signal, sys
    from cipherdump.repo import LocalBackend, Repository
    from cipherdump.repo.prune import PruneOptions

    kill_at = int(sys.argv[2])
    ops = []

    class Killing(LocalBackend):
        def _tick(self, kind):
            ops.append(kind)
            if len(ops) == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

        def save(self, handle, source):
            self._tick("save " + handle.type.value)
            super().save(handle, source)

        def remove(self, handle):
            self._tick("remove " + handle.type.value)
            super().remove(handle)

        def load(self, handle, offset=0, length=None):
            self._tick("load " + handle.type.value)
            return super().load(handle, offset, length)

    with Repository.open(Killing(sys.argv[1]), b"pw") as repo:
        repo.prune(PruneOptions(max_unused_percent=0))
    print(json.dumps(ops))
    """
)


def _prune_killed_at(repo: Path, at: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run(
        [sys.executable, "-c", KILLER, str(repo), str(at)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def kill_points(ops: list[str], reads: int = 12) -> list[int]:
    """Every write and removal (each leaves a different state), and reads spread over
    the loading, marking and repacking phases: 1-based numbers of the op to die at."""
    changes = [i + 1 for i, op in enumerate(ops) if not op.startswith("load")]
    loads = [i + 1 for i, op in enumerate(ops) if op.startswith("load")]
    step = max(len(loads) // reads, 1)
    return sorted({*changes, *loads[::step]})


def test_prune_killed_at_many_points_leaves_a_usable_repository(tmp_path: Path) -> None:
    base = tmp_path / "base"
    make_repo(base)
    days = [f"2024-02-{d:02d} 12:00" for d in range(1, 15)]
    for day in days:
        add_snapshot(base, day)
    assert run(base, "forget", "--keep-last", "4").exit_code == 0
    probe = tmp_path / "probe"
    shutil.copytree(base, probe)
    done = _prune_killed_at(probe, 0)
    assert done.returncode == 0, done.stderr
    ops: list[str] = json.loads(done.stdout)
    points = kill_points(ops)
    kinds = {ops[p - 1] for p in points}
    # Across every phase: reading, new packs, the new index, removals.
    assert {"load index", "load data", "save data", "save index", "remove index"} <= kinds
    assert "remove data" in kinds
    assert len(points) >= 30, len(points)
    for at in points:
        work = tmp_path / f"k{at}"
        shutil.copytree(base, work)
        killed = _prune_killed_at(work, at)
        assert killed.returncode == -9, (at, killed.stdout, killed.stderr)
        # The killed process's lock is stale (its pid is gone): nothing to unlock by hand.
        verify(work, days[-4:])
        finish = run(work, "prune", "--json", "--max-unused", "0")
        assert finish.exit_code == 0, (at, finish.output)
        verify(work, days[-4:])
        assert json.loads(run(work, "prune", "--json", "--max-unused", "0").stdout)["freed"] == 0
        shutil.rmtree(work)


def test_small_index_files_while_repacking(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # New packs are indexed as they accumulate, old packs in bounded files: with a
    # limit of one entry, a file for each pack; only the last supersedes the old ones.
    import cipherdump.repo.prune as prune_module

    monkeypatch.setattr(prune_module, "INDEX_MAX_ENTRIES", 1)
    assert run(repo, "forget", "--keep-last", "3").exit_code == 0
    old_index = {p.name for p in (repo / "index").iterdir()}
    stats = json.loads(run(repo, "prune", "--json", "--max-unused", "0").stdout)
    assert stats["packs_repacked"] >= 1 and stats["new_packs"]
    assert stats["index_files_written"] > len(stats["new_packs"]) + 3
    new_index = {p.name for p in (repo / "index").iterdir()}
    assert not new_index & old_index and len(new_index) == stats["index_files_written"]
    verify(repo, DAYS[-3:])


def test_prune_reports_its_phases_as_progress_events(repo: Path) -> None:
    """Prune reports with the one progress event every job uses: its phases in order,
    items (index files, snapshots, packs removed) or bytes (repacking) towards each
    phase's total, the last event marked finished."""
    from cipherdump.progress import Progress
    from cipherdump.repo.prune import PruneOptions

    assert run(repo, "forget", "--keep-last", "2").exit_code == 0
    events: list[Progress] = []
    with Repository.open(LocalBackend(str(repo)), PASSWORD) as r:
        r.prune(PruneOptions(max_unused_percent=0), events.append)
    phases = list(dict.fromkeys(e.phase for e in events))
    assert phases == ["loading index files", "marking snapshots", "repacking", "removing packs"]
    for e in events:
        if e.phase == "repacking":
            assert e.bytes_total is not None and 0 < e.bytes_done <= e.bytes_total
        else:
            assert e.items_total is not None and 0 < e.items_done <= e.items_total
    marked = [e for e in events if e.phase == "marking snapshots"]
    assert marked[-1].items_done == marked[-1].items_total == 2
    assert events[-1].finished and not any(e.finished for e in events[:-1])
