"""``ls``/``cat``/``stat``/``extract`` with ``--key`` on the bundled sample image.

Ground truth: ``examples/README.md``, which lists what the kernel was given when it made
``examples/sample.img`` (names, contents, owners, modes, mtimes, link targets).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from cipherdump.cli.main import cli
from shared_data import REPO

EXAMPLES = REPO / "examples"
IMAGE = str(EXAMPLES / "sample.img")
ALICE = str(EXAMPLES / "alice.key")
BOB = str(EXAMPLES / "bob.key")
MTIME_NS = 1_704_067_200 * 1_000_000_000  # 2024-01-01 00:00:00 UTC
pytestmark = pytest.mark.skipif(not os.path.isfile(IMAGE), reason="examples/sample.img absent")


def _run(*args: str) -> tuple[int, bytes, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout_bytes, result.stderr


def test_ls_plaintext_names_with_both_keys() -> None:
    code, out, err = _run("ls", "-R", "--key", ALICE, "--key", BOB, IMAGE, "/home")
    assert code == 0, err
    assert out.decode().splitlines() == [
        "/home/alice",
        "/home/alice/diary.txt",
        "/home/alice/diary-hardlink.txt",
        "/home/alice/link-to-diary",
        "/home/alice/projects",
        "/home/alice/projects/cipherdump",
        "/home/alice/projects/cipherdump/notes.md",
        "/home/alice/sparse.bin",
        "/home/bob",
        "/home/bob/todo.txt",
        "/home/bob/secret",
        "/home/bob/secret/plan.txt",
        "/home/bob/plan-link",
    ]
    assert "warning" not in err


def test_ls_one_key_leaves_the_other_tree_nokey_and_says_why() -> None:
    code, out, err = _run("ls", "--key", ALICE, IMAGE, "/home/bob")
    assert code == 0
    names = out.decode().split()
    assert len(names) == 3 and all(len(n) == 32 for n in names)  # no-key names
    assert "no key for policy v1" in err and "descriptor 2ca74782fb20fd90" in err
    assert "mismatch" in err


def test_key_dir_and_long_listing(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "a").write_bytes(Path(ALICE).read_bytes())
    (keys / "b").write_text(Path(BOB).read_bytes().hex() + "\n")  # hex works too
    code, out, err = _run("ls", "-l", "--key-dir", str(keys), IMAGE, "/home/bob")
    assert code == 0, err
    text = out.decode()
    assert "/home/bob/plan-link -> secret/plan.txt" in text
    assert " 1001  1001 " in text


def test_cat_plaintext_and_mixed_paths() -> None:
    code, out, _ = _run("cat", "--key", ALICE, IMAGE, "/home/alice/diary.txt")
    assert (code, out) == (0, b"Dear diary, today I encrypted my home directory.\n")
    code, out, _ = _run("cat", "--key", BOB, IMAGE, "/home/bob/secret/plan.txt")
    assert (code, out) == (0, b"The plan is to have no plan.\n")
    code, out, _ = _run("cat", "--key", ALICE, IMAGE, "/home/alice/sparse.bin")
    assert code == 0 and len(out) == 65536
    assert out[32768 : 32768 + 2048] == bytes(range(256)) * 8
    assert out.count(0) == 65536 - 2048 + 8  # zeros outside, and one per 256 inside


def test_nokey_names_are_accepted_as_paths_with_the_key() -> None:
    _, out, _ = _run("ls", IMAGE, "/home/alice")
    shown = set()
    for nokey in out.decode().split():
        code, rec, err = _run("stat", "--json", "--key", ALICE, IMAGE, "/home/alice/" + nokey)
        assert code == 0, err
        shown.add(json.loads(rec)["path"])
    assert shown == {
        "/home/alice/" + n
        for n in ("diary.txt", "diary-hardlink.txt", "link-to-diary", "projects", "sparse.bin")
    }


def test_wrong_key_is_refused_with_identifier_mismatch(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(b"\x07" * 64)
    code, out, err = _run("cat", "--key", str(wrong), IMAGE, "/home/alice/" + _first("alice"))
    assert code == 4 and out == b""
    assert "identifier mismatch" in err and "08e67a5789ba08a79d972becd8ae93cf" in err


def test_bad_key_file_is_a_key_problem(tmp_path: Path) -> None:
    short = tmp_path / "short.key"
    short.write_bytes(b"\x80" * 10)
    code, _, err = _run("ls", "--key", str(short), IMAGE)
    assert code == 4 and "16 to 64 bytes" in err


def test_v1_key_paired_by_hand(tmp_path: Path) -> None:
    """A v1 key given as DESCRIPTOR:FILE; a wrong one gives 'wrong key', never names."""
    code, out, err = _run("ls", "--key", f"2ca74782fb20fd90:{BOB}", IMAGE, "/home/bob")
    assert code == 0 and b"todo.txt" in out and "cannot be verified" not in err
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(b"\x07" * 64)
    code, out, err = _run("ls", "--key", f"2ca74782fb20fd90:{wrong}", IMAGE, "/home/bob")
    assert code == 1 and out == b""
    assert "cannot be verified" in err and "wrong key" in err


def test_stat_shows_plaintext_target() -> None:
    code, out, _ = _run("stat", "--json", "--key", ALICE, IMAGE, "/home/alice/link-to-diary")
    rec = json.loads(out)
    assert code == 0
    assert rec["target"] == "diary.txt" and rec["name"] == "link-to-diary"
    assert rec["name_decrypted"] is True and rec["key_present"] is True


def test_extract_both_homes(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    code, out, err = _run(
        "extract", "--json", "--key", ALICE, "--key", BOB, IMAGE, "/home", str(dest)
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["problems"] == 0 and summary["hardlinks"] == 1 and summary["symlinks"] == 2
    alice = dest / "alice"
    assert (alice / "diary.txt").read_bytes().startswith(b"Dear diary")
    assert os.lstat(alice / "diary.txt").st_ino == os.lstat(alice / "diary-hardlink.txt").st_ino
    assert os.readlink(alice / "link-to-diary") == "diary.txt"
    assert (dest / "bob/secret/plan.txt").read_bytes() == b"The plan is to have no plan.\n"
    st = os.lstat(dest / "bob/secret/plan.txt")
    assert stat.S_IMODE(st.st_mode) == 0o600 and (st.st_uid, st.st_gid) == (1001, 1001)
    assert st.st_mtime_ns == MTIME_NS
    assert stat.S_IMODE(os.lstat(alice).st_mode) == 0o700
    sparse = os.lstat(alice / "sparse.bin")
    assert sparse.st_size == 65536 and sparse.st_blocks * 512 <= 8192


def test_extract_without_bob_key_skips_bob(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    code, _, err = _run("extract", "--key", ALICE, IMAGE, "/home", str(dest))
    assert code == 1
    assert "bob" in err and "no key for policy v1" in err
    assert sorted(os.listdir(dest)) == ["alice"]


def _first(user: str) -> str:
    _, out, _ = _run("ls", IMAGE, f"/home/{user}")
    return out.decode().split()[0]
