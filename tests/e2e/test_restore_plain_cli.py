"""``restore --target`` and ``cat --key`` of a snapshot, on the bundled sample image.

The reference is ``extract`` of the image itself with the same keys (which the kernel
tier checks against the kernel): restoring the key-less snapshot must give the same
plaintext tree.  Running the restore again writes nothing.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from click.testing import CliRunner, Result

from cipherdump.cli.main import cli
from shared_data import REPO

EXAMPLES = REPO / "examples"
IMAGE = str(EXAMPLES / "sample.img")
ALICE = str(EXAMPLES / "alice.key")
BOB = str(EXAMPLES / "bob.key")
ENV = {"CIPHERDUMP_INSECURE_TEST_KDF": "1", "CIPHERDUMP_PASSWORD": "pw"}


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env=ENV, catch_exceptions=False)


def _tree(root: Path) -> dict[str, tuple[object, ...]]:
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            data: object = None
            if stat.S_ISREG(st.st_mode):
                data = p.read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                data = os.readlink(p)
            out[str(p.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, data)
    return out


def _snapshot(tmp_path: Path) -> tuple[str, str]:
    repo = str(tmp_path / "repo")
    assert run("init", "-r", repo).exit_code == 0
    result = run("backup", IMAGE, "-r", repo, "--json")
    assert result.exit_code == 0, result.output
    return repo, json.loads(result.output.splitlines()[-1])["snapshot_id"][:8]


def test_restore_equals_extract(tmp_path: Path) -> None:
    repo, snap = _snapshot(tmp_path)
    extracted = tmp_path / "extracted"
    assert (
        run("extract", "--key", ALICE, "--key", BOB, IMAGE, "/home", str(extracted)).exit_code == 0
    )
    restored = tmp_path / "restored"
    args = ["restore", snap, "-r", repo, "--target", str(restored), "--path", "/home", "--json"]
    result = run(*args, "--key", ALICE, "--key", BOB)
    assert result.exit_code == 0, result.output
    first = json.loads(result.output.splitlines()[-1])
    assert first["files"] > 0 and first["problems"] == 0
    assert _tree(restored) == _tree(extracted)

    again = run(*args, "--key", ALICE, "--key", BOB)
    summary = json.loads(again.output.splitlines()[-1])
    assert (summary["files"], summary["bytes"], summary["problems"]) == (0, 0, 0)
    assert summary["skipped"] == first["files"] + first["symlinks"] + first["hardlinks"]


def test_cat_with_key_of_a_snapshot(tmp_path: Path) -> None:
    repo, snap = _snapshot(tmp_path)
    want = run("cat", "--key", ALICE, IMAGE, "/home/alice/diary.txt")
    got = run("cat", "--key", ALICE, "-r", repo, snap, "/home/alice/diary.txt")
    assert got.exit_code == 0 and got.stdout_bytes == want.stdout_bytes
    assert want.stdout_bytes
    # With only Bob's key, Alice's plaintext names cannot be typed: as for the image.
    missing = run("cat", "--key", BOB, "-r", repo, snap, "/home/alice/diary.txt")
    assert missing.exit_code == 3
    assert run("cat", "--key", BOB, IMAGE, "/home/alice/diary.txt").exit_code == 3


def test_restore_without_key_skips_encrypted_trees(tmp_path: Path) -> None:
    repo, snap = _snapshot(tmp_path)
    target = tmp_path / "t"
    result = run("restore", snap, "-r", repo, "--target", str(target), "--key", ALICE)
    assert result.exit_code == 1
    assert "no key for policy" in result.output
    assert (target / "home" / "alice").is_dir()
    assert not (target / "home" / "bob").exists()


def test_restore_usage(tmp_path: Path) -> None:
    repo, snap = _snapshot(tmp_path)
    assert run("restore", snap, "-r", repo).exit_code == 2
    both = run("restore", snap, "-r", repo, "--target", "x", "--to-image", "y")
    assert both.exit_code == 2
    keyed_image = run("restore", snap, "-r", repo, "--to-image", "y", "--key", ALICE)
    assert keyed_image.exit_code == 2
