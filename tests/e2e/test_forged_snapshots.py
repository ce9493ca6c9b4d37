"""Forged snapshots: authentic files (written with the password) holding values no ext4
inode or directory entry can hold.

Each forgery changes or adds one node of ``/public`` of a backup of the bundled sample.
Every command that reads the snapshot must refuse that one entry as a problem naming
its path (exit 1 for listings and restores, 3 for reading the entry itself), write and
list everything else, and never stop with an internal error (exit 70), hang or write a
value into an image that e2fsck would call broken.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cipherdump.cli.main import cli
from cipherdump.repo import LocalBackend, Repository
from cipherdump.repo.tree import Node, Tree
from restore_checks import e2fsck_clean
from shared_data import REPO

SAMPLE = REPO / "examples" / "sample.img"
PASSWORD = "x"

Forgery = Callable[[list[Node]], list[Node]]


def run(*args: str) -> Result:
    env = {"CIPHERDUMP_INSECURE_TEST_KDF": "1", "CIPHERDUMP_PASSWORD": PASSWORD}
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("forged") / "repo"
    assert run("init", "-r", str(repo)).exit_code == 0
    assert run("backup", "-r", str(repo), str(SAMPLE)).exit_code == 0
    return repo


def with_attrs(node: Node, **changes: object) -> Node:
    attrs = dict(node.attrs)
    attrs.update(changes)  # type: ignore[arg-type]
    return dataclasses.replace(node, attrs=attrs)


def change_hello(**changes: object) -> Forgery:
    return lambda nodes: [with_attrs(n, **changes) if n.name == b"hello.txt" else n for n in nodes]


def add_copy(name: bytes) -> Forgery:
    """A second entry for hello.txt under ``name`` (a hard link, as a snapshot has them)."""
    return lambda nodes: [*nodes, dataclasses.replace(nodes[0], name=name)]


VALUES: dict[str, Forgery] = {
    "gid 2^40": change_hello(gid=1 << 40),
    "uid -1": change_hello(uid=-1),
    "size 2^63": change_hello(size=1 << 63),
    "mode 2^40": change_hello(mode=1 << 40),
    "mtime 2^80": change_hello(mtime_ns=1 << 80),
    "ino 2^40": change_hello(ino=1 << 40),
    "ino 0": change_hello(ino=0),
    "links 2^40": change_hello(links=1 << 40),
    "flags 2^40": change_hello(flags=1 << 40),
    "extent length 2^40": change_hello(extents=((0, 1 << 40, 5, False),)),
    "chunk size 0": change_hello(chunk_size=0),
    "inline 61 bytes": change_hello(inline=bytes(61)),
    "xattr index 300": change_hello(xattrs=((300, b"x", b"y"),)),
    "kind dir, mode of a file": lambda nodes: [
        dataclasses.replace(n, kind="dir") if n.name == b"hello.txt" else n for n in nodes
    ],
    "kind unheard of": lambda nodes: [
        dataclasses.replace(n, kind="weird") if n.name == b"hello.txt" else n for n in nodes
    ],
}
NAMES: dict[str, bytes] = {
    "../x": b"../x",
    "/abs": b"/abs",
    "a/b": b"a/b",
    ".": b".",
    "..": b"..",
    "empty": b"",
    "NUL": b"a\0b",
    "300 bytes": b"L" * 300,
}
CASES: dict[str, tuple[Forgery, bytes]] = {
    **{k: (f, b"/public/hello.txt") for k, f in VALUES.items()},
    **{k: (add_copy(n), b"/public/" + n) for k, n in NAMES.items()},
}


@pytest.fixture
def forged(pristine: Path, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[Path, str]:
    repo = tmp_path / "repo"
    shutil.copytree(pristine, repo)
    edit, _path = CASES[request.param]
    return repo, forge(repo, [b"public"], edit)


def _error_lines(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("cipherdump: error:")]


def _names_path(lines: list[str], path: bytes) -> bool:
    shown = path.decode("utf-8", "backslashreplace").replace("\0", "\\x00")
    return any(shown.lstrip("/") in line for line in lines)


@pytest.mark.parametrize("forged", sorted(CASES), indirect=True)
def test_restore_to_image_refuses_the_entry(forged: tuple[Path, str], tmp_path: Path) -> None:
    repo, snap = forged
    out = tmp_path / "out.img"
    result = run("restore", "-r", str(repo), snap, "--to-image", str(out))
    assert result.exit_code == 1, result.output
    lines = _error_lines(result)
    assert len(lines) == 1 and lines[0].startswith("cipherdump: error: /public/"), lines
    clean, report = e2fsck_clean(out)
    assert clean, report
    listed = run("ls", "-R", str(out), "/public")
    assert listed.exit_code == 0
    assert {"/public/numbers.csv", "/public/latest"} <= set(listed.stdout.splitlines())


@pytest.mark.parametrize("forged", sorted(CASES), indirect=True)
def test_restore_to_target_refuses_the_entry(forged: tuple[Path, str], tmp_path: Path) -> None:
    repo, snap = forged
    target = tmp_path / "target"
    result = run("restore", "-r", str(repo), snap, "--target", str(target), "--path", "/public")
    assert result.exit_code == 1, result.output
    lines = _error_lines(result)
    assert len(lines) == 1, lines
    assert (target / "numbers.csv").is_file()
    assert sorted(os.listdir(target)) in (
        ["hello.txt", "latest", "numbers.csv"],  # a forged second name of hello.txt
        ["latest", "numbers.csv"],  # a forged hello.txt
    )


@pytest.mark.parametrize("forged", sorted(CASES), indirect=True)
def test_ls_of_snapshot_reports_the_entry(forged: tuple[Path, str]) -> None:
    repo, snap = forged
    result = run("ls", "-r", str(repo), "-lR", snap, "/public")
    assert result.exit_code == 1, result.output
    assert len(_error_lines(result)) == 1
    assert len(result.stdout.splitlines()) >= 2


@pytest.mark.parametrize("forged", sorted(VALUES), indirect=True)
def test_cat_and_stat_of_a_forged_entry_are_refused(forged: tuple[Path, str]) -> None:
    repo, snap = forged
    for args in (["cat"], ["stat"], ["cat", "--ciphertext"]):
        result = run(*args, "-r", str(repo), snap, "/public/hello.txt")
        assert result.exit_code == 3, (args, result.output)
        (line,) = _error_lines(result)
        assert "/public/hello.txt" in line
    good = run("cat", "-r", str(repo), snap, "/public/numbers.csv")
    assert good.exit_code == 0 and good.stdout


def test_ciphertext_names_may_hold_any_byte(pristine: Path, tmp_path: Path) -> None:
    """In an encrypted directory a name is ciphertext: '/' and NUL are written as they
    are; only a name shorter than one cipher block is refused (the kernel could not list
    the directory: EUCLEAN)."""
    repo = tmp_path / "repo"
    shutil.copytree(pristine, repo)

    # /home/alice's own name is plaintext; the names of her entries are ciphertext.
    snap_id = forge(repo, [b"home", b"alice"], lambda nodes: [
        *nodes,
        dataclasses.replace(_a_file(nodes), name=b"/\0" * 8),
        dataclasses.replace(_a_file(nodes), name=b"short"),
    ])  # fmt: skip
    out = tmp_path / "out.img"
    result = run("restore", "-r", str(repo), snap_id, "--to-image", str(out))
    assert result.exit_code == 1, result.output
    (line,) = _error_lines(result)
    assert "shorter than 16" in line
    clean, report = e2fsck_clean(out)
    assert clean, report
    from cipherdump.ext4 import open_filesystem

    with open_filesystem(str(out)) as fs:
        d = fs.inode(fs.root.entry_named(b"home").ino)  # type: ignore[union-attr]
        a = fs.inode(d.entry_named(b"alice").ino)  # type: ignore[union-attr]
        assert a.entry_named(b"/\0" * 8) is not None
        assert a.entry_named(b"short") is None


def _a_file(nodes: list[Node]) -> Node:
    return next(n for n in nodes if n.kind == "file")


def forge(repo: Path, parts: list[bytes], edit: Forgery) -> str:
    """A new snapshot: the latest with the tree of the directory at ``parts`` replaced
    by ``edit`` of its nodes, and every tree above it anew.  Returns its id."""
    with Repository.open(LocalBackend(repo), PASSWORD.encode()) as r:
        parent_id, snap = r.find_snapshot("latest")
        trees = [r.load_tree(snap.tree)]
        for part in parts:
            sub = trees[-1][part].subtree
            assert sub is not None
            trees.append(r.load_tree(sub))
        new = r.save_tree(Tree.of(edit(list(trees[-1].nodes))))
        for tree, part in zip(reversed(trees[:-1]), reversed(parts), strict=True):
            new = r.save_tree(
                Tree.of(dataclasses.replace(n, subtree=new) if n.name == part else n
                        for n in tree.nodes)
            )  # fmt: skip
        snap_id = r.save_snapshot(
            dataclasses.replace(snap, tree=new, time_ns=snap.time_ns + 1, parent=parent_id)
        )
    return snap_id.hex


# -- any field, any value -------------------------------------------------------------------

_FIELDS = [
    "ino", "mode", "uid", "gid", "size", "links", "flags", "generation", "project_id",
    "version", "blocks", "atime_ns", "mtime_ns", "ctime_ns", "crtime_ns", "chunk_size",
    "extents", "chunks", "rdev", "xattrs", "inline", "symlink", "hash", "context",
]  # fmt: skip
_VALUES = st.one_of(
    st.sampled_from([-1, 0, 1 << 15, 1 << 16, 1 << 31, 1 << 32, 1 << 48, 1 << 63, 1 << 64]),
    st.integers(min_value=-(1 << 80), max_value=1 << 80),
    st.sampled_from([None, "x", b"", b"\0" * 300, True, (), ((0, 1 << 40, 0, False),),
                     ((1 << 33, 1, 0, False),), ((300, b"n", b"v"),), (1 << 40, 0)]),
)  # fmt: skip


@settings(max_examples=25, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(field=st.sampled_from(_FIELDS), value=_VALUES, target=st.sampled_from(["file", "dir"]))
def test_any_forged_field_is_never_an_internal_error(
    pristine: Path, tmp_path_factory: pytest.TempPathFactory, field: str, value: object,
    target: str,
) -> None:  # fmt: skip
    """Whatever one field of a file (or of a directory) holds, every command that reads
    the snapshot ends with a documented exit code: never 70, never a hang."""
    work = tmp_path_factory.mktemp("any")
    repo = work / "repo"
    shutil.copytree(pristine, repo)
    if target == "file":
        snap = forge(repo, [b"public"], change_hello(**{field: value}))
        path = "/public/hello.txt"
    else:
        snap = forge(repo, [], lambda nodes: [
            with_attrs(n, **{field: value}) if n.name == b"public" else n for n in nodes
        ])  # fmt: skip
        path = "/public"
    commands = [
        ["restore", "-r", str(repo), snap, "--to-image", str(work / "out.img")],
        ["restore", "-r", str(repo), snap, "--target", str(work / "t"), "--path", "/public"],
        ["ls", "-r", str(repo), "-lR", snap, "/"],
        ["stat", "-r", str(repo), snap, path],
    ]
    if target == "file":
        commands.append(["cat", "-r", str(repo), snap, path])
    for argv in commands:
        result = run(*argv)
        assert result.exit_code in (0, 1, 3), (argv[0], field, value, result.output)
