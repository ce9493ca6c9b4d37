"""``stats``: sizes per snapshot and together, checked against what the synthetic
snapshots hold (tests/lifecycle_repo.py: shared files, files of their own)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from cipherdump.cli.main import cli
from lifecycle_repo import add_snapshot, make_repo

ENV = {"CIPHERDUMP_INSECURE_TEST_KDF": "1", "CIPHERDUMP_PASSWORD": "pw"}
CHUNK = 1500


def run(repo: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, [*args, "-r", str(repo)], env=ENV, catch_exceptions=False)


def stats(repo: Path, *args: str) -> dict[str, Any]:
    result = run(repo, "stats", "--json", *args)
    assert result.exit_code == 0, result.output
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def test_sizes_and_ratios(tmp_path: Path) -> None:
    repo = tmp_path / "r"
    make_repo(repo)
    days = ["2024-01-01 12:00", "2024-01-02 12:00", "2024-01-03 12:00"]
    for day in days:
        add_snapshot(repo, day)
    out = stats(repo)
    # Each snapshot: 2 shared chunks, 3 of its own, and sub/note repeating its first.
    per = out["snapshots"]
    assert len(per) == 3
    for snap in per:
        assert snap["logical"] == (2 + 3 + 1) * CHUNK
        assert snap["raw"] > (2 + 3) * CHUNK  # five distinct chunks and two trees
        assert snap["blobs"] == 5 + 2
        assert snap["stored"] > snap["raw"]  # incompressible: sealing adds 40 bytes
    total = out["total"]
    assert total["logical"] == 3 * 6 * CHUNK
    assert total["blobs"] == 2 + 3 * (3 + 2)  # shared chunks stored once
    assert total["dedup_ratio"] > 1.3
    assert out["unused_bytes"] == 0 and out["packs"] > 0
    one = stats(repo, per[0]["id"][:10])
    assert one["snapshots"] == [per[0]]
    text = run(repo, "stats")
    assert "together" in text.stdout and "deduplication" in text.stdout
    # Forgetting a snapshot leaves its own data unused until prune.
    assert run(repo, "forget", per[0]["id"]).exit_code == 0
    after = stats(repo)
    assert after["unused_bytes"] > 3 * CHUNK
    assert run(repo, "prune", "--max-unused", "0").exit_code == 0
    assert stats(repo)["unused_bytes"] == 0
