"""Bad input on the command line: a clear one-line error and a documented exit code, never
a hang, an unbounded read, a traceback or an internal error (exit 70).

Every run is a separate process under a timeout and an address-space limit, so a
regression that hangs (a FIFO opened for reading) or reads without end (``/dev/zero``
as a key) fails the test instead of stalling or exhausting the machine.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cipherdump.blockio.source import FileSource
from cipherdump.errors import InputError
from shared_data import REPO
from timebound import time_limit

SRC = REPO / "src"
EXAMPLES = REPO / "examples"
SAMPLE = EXAMPLES / "sample.img"
ALICE = EXAMPLES / "alice.key"
CLI = [sys.executable, "-c", "from cipherdump.cli.main import main; main()"]

# The codes the README's table documents for failures (1 partial, 2 usage, 3 input,
# 4 key, 5 integrity, 6 backend, 7 output, 8 locked).
DOCUMENTED_FAILURES = {1, 2, 3, 4, 5, 6, 7, 8}
MEMORY_LIMIT = 1 << 30  # far above what a run needs, far below what /dev/zero gives


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


class Run:
    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.code = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    def __repr__(self) -> str:
        return f"exit {self.code}\nstdout: {self.stdout[-2000:]}\nstderr: {self.stderr[-2000:]}"

    def one_line_error(self, code: int | None = None) -> str:
        """Assert a failure with one line on stderr and no traceback; return the line."""
        assert self.code != 0 and self.code != 70, self
        if code is not None:
            assert self.code == code, self
        assert self.code in DOCUMENTED_FAILURES, self
        assert "Traceback" not in self.stderr and "internal error" not in self.stderr, self
        lines = [line for line in self.stderr.splitlines() if "warning:" not in line]
        if self.code == 2:  # click's usage errors: a usage line, a hint, the error
            assert lines and lines[-1].startswith("Error: "), self
            return lines[-1]
        assert len(lines) == 1, self
        assert lines[0].startswith("cipherdump: error: "), self
        return lines[0]


def run(
    *args: str | os.PathLike[str],
    env: dict[str, str] | None = None,
    timeout: float = 60,
    stdin: int | None = subprocess.DEVNULL,
    command: list[str] = CLI,
) -> Run:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CIPHERDUMP_")}
    full_env["PYTHONPATH"] = str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")
    full_env["CIPHERDUMP_INSECURE_TEST_KDF"] = "1"
    full_env.update(env or {})
    proc = subprocess.run(
        [*command, *map(str, args)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=stdin,
        preexec_fn=_limit_memory,
        check=False,
    )
    return Run(proc)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A repository with one snapshot of the sample; the environment that names it."""
    path = tmp_path_factory.mktemp("repo") / "repo"
    env = {"CIPHERDUMP_REPOSITORY": str(path), "CIPHERDUMP_PASSWORD": "pw"}
    assert run("init", env=env).code == 0
    assert run("backup", SAMPLE, env=env).code == 0
    yield env


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


# -- sources that are not images --------------------------------------------------------------


IMAGE_COMMANDS = [
    ("info", "{src}"),
    ("ls", "{src}"),
    ("stat", "{src}", "/"),
    ("cat", "{src}", "/README.txt"),
    ("extract", "--key", str(ALICE), "{src}", "/home/alice", "{tmp}/out"),
    ("clone", "{src}", "{tmp}/out.img"),
]


@pytest.mark.parametrize("argv", IMAGE_COMMANDS, ids=lambda a: a[0])
@pytest.mark.parametrize("kind", ["fifo", "chardev"])
def test_a_source_that_is_not_an_image_is_refused_at_once(
    argv: tuple[str, ...], kind: str, fifo: Path, tmp_path: Path
) -> None:
    src = str(fifo) if kind == "fifo" else "/dev/zero"
    args = [a.format(src=src, tmp=tmp_path) for a in argv]
    line = run(*args, timeout=30).one_line_error(3)
    assert src in line and ("FIFO" in line or "character device" in line)


def test_backup_of_a_fifo_is_refused_at_once(fifo: Path, repo: dict[str, str]) -> None:
    line = run("backup", fifo, env=repo, timeout=30).one_line_error(3)
    assert str(fifo) in line and "FIFO" in line


def test_a_fifo_swapped_in_after_the_check_does_not_block_the_open(fifo: Path) -> None:
    # open_source looks first; the open itself must not block either (a race).
    with (
        time_limit(10, TimeoutError, "opening a FIFO as a source blocked"),
        pytest.raises(InputError, match="is a FIFO"),
    ):
        FileSource(str(fifo))


# -- image targets that are not image files ---------------------------------------------------


def _target_cases(tmp_path: Path, fifo: Path) -> dict[str, str]:
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_bytes(b"x")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    return {
        "fifo": str(fifo),
        "chardev": "/dev/null",
        "directory": str(tmp_path / "dir"),
        "missing parent": str(tmp_path / "no" / "out.img"),
        "parent a file": str(tmp_path / "file" / "out.img"),
        "empty": "",
        "dangling symlink": str(tmp_path / "dangling"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "fifo",
        "chardev",
        "directory",
        "missing parent",
        "parent a file",
        "empty",
        "dangling symlink",
    ],
)
def test_clone_and_restore_refuse_a_target_that_is_not_an_image_file(
    case: str, tmp_path: Path, fifo: Path, repo: dict[str, str]
) -> None:
    out = _target_cases(tmp_path, fifo)[case]
    run("clone", SAMPLE, out, timeout=30).one_line_error(7)
    run("restore", "latest", "--to-image", out, env=repo, timeout=30).one_line_error(7)
    assert not (tmp_path / "nowhere").exists()
    assert (tmp_path / "file").read_bytes() == b"x"
    assert not os.listdir(tmp_path / "dir")


# -- plaintext destinations that cannot be written --------------------------------------------


def _dest_cases(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "file").write_bytes(b"x")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    (tmp_path / "dir").mkdir()
    os.symlink(tmp_path / "dir", tmp_path / "link")
    return {
        "file": str(tmp_path / "file"),
        "dangling symlink": str(tmp_path / "dangling"),
        "symlink": str(tmp_path / "link"),
        "missing parent": str(tmp_path / "no" / "dest"),
        "parent a file": str(tmp_path / "file" / "dest"),
        "empty": "",
    }


DEST_CASES = ["file", "dangling symlink", "symlink", "missing parent", "parent a file", "empty"]


@pytest.mark.parametrize("case", DEST_CASES)
@pytest.mark.parametrize("top", ["/home/alice", "/home/alice/diary.txt"])
def test_extract_to_an_unusable_destination_is_an_output_error(
    case: str, top: str, tmp_path: Path
) -> None:
    dest = _dest_cases(tmp_path)[case]
    line = run("extract", "--key", ALICE, SAMPLE, top, dest).one_line_error(7)
    assert (dest or "empty") in line
    assert (tmp_path / "file").read_bytes() == b"x"
    assert not (tmp_path / "nowhere").exists()
    assert not os.listdir(tmp_path / "dir")


@pytest.mark.parametrize("case", DEST_CASES)
def test_restore_to_an_unusable_target_is_an_output_error(
    case: str, tmp_path: Path, repo: dict[str, str]
) -> None:
    dest = _dest_cases(tmp_path)[case]
    args = ["restore", "latest", "--key", ALICE, "--path", "/home/alice", "--target", dest]
    line = run(*args, env=repo).one_line_error(7)
    assert (dest or "empty") in line
    assert not (tmp_path / "nowhere").exists()
    assert not os.listdir(tmp_path / "dir")


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A read-only tmpfs (root only)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a read-only tmpfs needs root")
    mnt = tmp_path / "ro"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", mnt], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", mnt], check=True)


def test_outputs_on_a_read_only_filesystem_are_output_errors(
    read_only_dir: Path, repo: dict[str, str]
) -> None:
    key = ("--key", ALICE)
    for dest in (read_only_dir / "new", read_only_dir):
        for top in ("/home/alice", "/home/alice/diary.txt"):
            line = run("extract", *key, SAMPLE, top, dest).one_line_error(7)
            assert str(dest) in line and "Read-only file system" in line
        line = run(
            "restore", "latest", *key, "--path", "/home/alice", "--target", dest, env=repo
        ).one_line_error(7)
        assert str(dest) in line and "Read-only file system" in line
    image = read_only_dir / "out.img"
    assert "read-only" in run("clone", SAMPLE, image).one_line_error(7)
    assert "read-only" in run("restore", "latest", "--to-image", image, env=repo).one_line_error(7)


# -- key, passphrase and password reads are bounded -------------------------------------------


SECRET_READS = [
    ("ls", "--key", "{zero}", str(SAMPLE)),
    ("ls", "--key", "0011223344556677:{zero}", str(SAMPLE)),
    ("ls", "--key-dir", "{big_dir}", str(SAMPLE)),
    ("cat", "--passphrase-file", "{zero}", str(SAMPLE), "/README.txt"),
    ("cat", "--protector-key", "{zero}", str(SAMPLE), "/README.txt"),
    ("extract", "--key", "{zero}", str(SAMPLE), "/home/alice", "{tmp}/out"),
    ("snapshots", "--password-file", "{zero}"),
    ("restore", "latest", "--passphrase-file", "{zero}", "--target", "{tmp}/out"),
]


@pytest.mark.parametrize("argv", SECRET_READS, ids=lambda a: " ".join(a[:3]))
def test_endless_secret_files_are_refused_after_a_few_kib(
    argv: tuple[str, ...], tmp_path: Path, repo: dict[str, str]
) -> None:
    big_dir = tmp_path / "keys"
    big_dir.mkdir()
    (big_dir / "image").write_bytes(bytes(1 << 20))  # a regular file, but no key
    args = [a.format(zero="/dev/zero", big_dir=big_dir, tmp=tmp_path) for a in argv]
    env = repo if argv[0] in ("snapshots", "restore") else None
    line = run(*args, env=env, timeout=30).one_line_error(4)
    assert "larger than 4096 bytes" in line


def test_endless_password_sources_are_refused(repo: dict[str, str]) -> None:
    env = dict(repo, CIPHERDUMP_PASSWORD_FILE="/dev/zero")
    del env["CIPHERDUMP_PASSWORD"]
    assert "larger than 4096" in run("snapshots", env=env, timeout=30).one_line_error(4)
    env = dict(repo, CIPHERDUMP_PASSWORD="p" * 5000)
    assert "longer than 4096" in run("snapshots", env=env, timeout=30).one_line_error(4)
    env = {"CIPHERDUMP_FSCRYPT_PASSPHRASE": "p" * 5000}
    line = run("cat", SAMPLE, "/README.txt", env=env, timeout=30).one_line_error(4)
    assert "longer than 4096" in line


def test_an_endless_passphrase_on_stdin_is_refused() -> None:
    with open("/dev/zero", "rb") as zero:
        result = run("cat", "--passphrase", SAMPLE, "/README.txt", stdin=zero.fileno(), timeout=30)
    assert "longer than 4096" in result.one_line_error(4)


def test_secrets_from_a_pipe_still_work(repo: dict[str, str]) -> None:
    # As --key <(command) gives them: a pipe whose writer is there, but slow.
    script = (
        "import subprocess, sys, time\n"
        "r, w = __import__('os').pipe()\n"
        "proc = subprocess.Popen(sys.argv[1:] + [f'/dev/fd/{r}'], pass_fds=[r])\n"
        "__import__('os').close(r)\n"
        "time.sleep(1)\n"
        "__import__('os').write(w, b'pw\\n')\n"
        "__import__('os').close(w)\n"
        "sys.exit(proc.wait())\n"
    )
    env = {k: v for k, v in repo.items() if k != "CIPHERDUMP_PASSWORD"}
    result = run(
        *CLI, "snapshots", "--password-file", env=env, command=[sys.executable, "-c", script]
    )
    assert result.code == 0, result


def test_secrets_up_to_the_limit_still_work(tmp_path: Path, repo: dict[str, str]) -> None:
    # A key in hex with surrounding whitespace, and a long password, are fine.
    key = tmp_path / "alice.hex"
    key.write_text("\n  " + ALICE.read_bytes().hex() + "  \n")
    assert run("cat", "--key", key, SAMPLE, "/home/alice/diary.txt").code == 0
    pw = tmp_path / "pw"
    pw.write_bytes(b"pw\r\n")
    env = {k: v for k, v in repo.items() if k != "CIPHERDUMP_PASSWORD"}
    assert run("snapshots", "--password-file", pw, env=env).code == 0


# -- repositories: damaged layout, locked ------------------------------------------------------


@pytest.mark.parametrize("sub", ["data", "keys", "index", "snapshots", "locks"])
def test_a_file_in_place_of_a_repository_folder_is_named_as_damage(
    sub: str, tmp_path: Path
) -> None:
    env = {"CIPHERDUMP_REPOSITORY": str(tmp_path / "repo"), "CIPHERDUMP_PASSWORD": "pw"}
    assert run("init", env=env).code == 0
    folder = tmp_path / "repo" / sub
    shutil.rmtree(folder)
    folder.write_bytes(b"")
    for args in (("backup", SAMPLE), ("snapshots",), ("check",)):
        line = run(*args, env=env).one_line_error(5)
        assert f"{sub} is not a directory" in line and str(tmp_path / "repo") in line


def test_init_where_a_file_or_a_full_directory_is(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_bytes(b"x")
    for where, why in (("file", "is not a directory"), ("full", "is not empty")):
        env = {"CIPHERDUMP_REPOSITORY": str(tmp_path / where), "CIPHERDUMP_PASSWORD": "pw"}
        assert why in run("init", env=env).one_line_error(6)


def test_a_locked_repository_has_its_own_exit_code_and_names_the_holder(
    repo: dict[str, str],
) -> None:
    import socket

    from cipherdump.repo import LocalBackend, Repository

    holder = Repository.open(LocalBackend(repo["CIPHERDUMP_REPOSITORY"]), b"pw", lock=True)
    try:
        # Readers too: a prune must not delete what they read.
        for args in (("backup", SAMPLE), ("repair", "index"), ("snapshots",)):
            line = run(*args, env=repo).one_line_error(8)
            assert f"pid {os.getpid()} on {socket.gethostname()} since " in line, line
            assert "(exclusive lock)" in line
            assert "lock file locks/" in line and "wait for that process" in line
    finally:
        holder.close()
    assert run("snapshots", env=repo).code == 0


def test_a_lock_held_on_another_host_says_how_to_remove_it() -> None:
    from cipherdump.repo.lock import LockInfo, locked_message

    line = locked_message("local:/r", "ab" * 32, LockInfo(0, "elsewhere", 7))
    assert "pid 7 on elsewhere" in line and "locks/" + "ab" * 32 in line
    assert "unlock --remove-all" in line


# -- a source mounted read-write --------------------------------------------------------------


@pytest.mark.kernel
def test_clone_and_extract_refuse_a_source_mounted_read_write(tmp_path: Path) -> None:
    import kernelfs

    image = tmp_path / "fs.img"
    shutil.copyfile(SAMPLE, image)
    key = ("--key", ALICE)
    with kernelfs.mounted(image) as mnt:
        for args in (
            ("clone", image, tmp_path / "copy.img"),
            ("clone", f"{image}:/home", tmp_path / "home.img"),
            ("extract", *key, image, "/home/alice", tmp_path / "out"),
        ):
            line = run(*args).one_line_error(3)
            assert "mounted read-write" in line and str(mnt) in line and str(image) in line
            assert "--allow-mounted" in line
            allowed = run(*args[:1], "--allow-mounted", *args[1:])
            assert allowed.code == 0, allowed
            assert "warning" in allowed.stderr and "mounted read-write" in allowed.stderr
    with kernelfs.mounted(image, readonly=True):
        assert run("extract", *key, image, "/home/alice", tmp_path / "again").code == 0
        assert run("clone", image, tmp_path / "again.img").code == 0


# -- error lines name the path at fault, as the user typed it ---------------------------------


def test_objects_a_key_cannot_open_are_named_by_their_source_path(
    tmp_path: Path, repo: dict[str, str]
) -> None:
    # Bob's tree cannot be decrypted with Alice's key: named /home/bob, not "bob".
    result = run("extract", "--key", ALICE, SAMPLE, "/home", tmp_path / "x")
    assert result.code == 1, result
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert errors == [errors[0]] and errors[0].startswith("cipherdump: error: /home/bob: no key")
    for path in ("/home", "/"):
        target = tmp_path / f"r{len(path)}"
        args = ["restore", "latest", "--key", ALICE, "--path", path, "--target", target]
        result = run(*args, env=repo)
        assert result.code == 1, result
        errors = [line for line in result.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1, result
        assert errors[0].startswith("cipherdump: error: /home/bob: no key"), result


def test_a_file_a_key_cannot_open_is_named_by_its_source_path(tmp_path: Path) -> None:
    listing = run("ls", SAMPLE, "/home/alice")
    name = next(n for n in listing.stdout.split() if len(n) > 40)
    result = run("extract", "--key", EXAMPLES / "bob.key", SAMPLE, f"/home/alice/{name}", tmp_path)
    line = result.one_line_error(1)
    assert line.startswith(f"cipherdump: error: /home/alice/{name}: ")


def test_an_image_that_is_not_ext4_is_named(tmp_path: Path, repo: dict[str, str]) -> None:
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"\xa5" * 100_000)
    for args in (("info", junk), ("clone", junk, tmp_path / "o.img"), ("backup", junk)):
        line = run(*args, env=repo if args[0] == "backup" else None).one_line_error(3)
        assert line.startswith(f"cipherdump: error: {junk}: no ext2/3/4 superblock"), line


def test_clone_of_a_missing_path_names_it_plainly(tmp_path: Path) -> None:
    line = run("clone", f"{SAMPLE}:/nowhere", tmp_path / "o.img").one_line_error(3)
    assert line == f"cipherdump: error: /nowhere: no such file in {SAMPLE}"


def test_cat_of_a_directory_is_unusable_input(repo: dict[str, str]) -> None:
    assert "/home: not a regular file" in run("cat", SAMPLE, "/home").one_line_error(3)
    for extra in ((), ("--key", str(ALICE))):
        line = run("cat", *extra, "latest", "/home", env=repo).one_line_error(3)
        assert "/home: not a regular file" in line


# -- every command against every class of bad input -------------------------------------------

# Each command with placeholders for what it reads or writes; the good values fill every
# placeholder but the one under test.
MATRIX_COMMANDS: dict[str, tuple[str, ...]] = {
    "info": ("info", "{src}"),
    "ls": ("ls", "{src}", "/home"),
    "ls --key": ("ls", "--key", "{key}", "{src}", "/home"),
    "stat": ("stat", "{src}", "/home"),
    "cat": ("cat", "{src}", "/README.txt"),
    "cat --key": ("cat", "--key", "{key}", "{src}", "/home/alice/diary.txt"),
    "cat --passphrase-file": ("cat", "--passphrase-file", "{key}", "{src}", "/README.txt"),
    "extract": ("extract", "--key", "{key}", "{src}", "/home/alice", "{dest}"),
    "extract file": ("extract", "--key", "{key}", "{src}", "/home/alice/diary.txt", "{dest}"),
    "clone": ("clone", "{src}", "{out}"),
    "backup": ("backup", "--password-file", "{pw}", "{src}"),
    "snapshots": ("snapshots", "--password-file", "{pw}"),
    "check": ("check", "--password-file", "{pw}"),
    "restore --target": (
        "restore", "latest", "--password-file", "{pw}", "--key", "{key}", "--target", "{dest}",
    ),
    "restore --to-image": ("restore", "latest", "--password-file", "{pw}", "--to-image", "{out}"),
    "cat snapshot --key": (
        "cat", "--password-file", "{pw}", "--key", "{key}", "latest", "/home/alice/diary.txt",
    ),
}  # fmt: skip

BAD_INPUTS: dict[str, tuple[str, str]] = {
    "FIFO source": ("src", "{fifo}"),
    "/dev/zero source": ("src", "/dev/zero"),
    "directory source": ("src", "{tmp}"),
    "missing source": ("src", "{tmp}/missing.img"),
    "empty source": ("src", "{empty}"),
    "junk source": ("src", "{junk}"),
    "/dev/zero key": ("key", "/dev/zero"),
    "FIFO key": ("key", "{fifo}"),
    "directory key": ("key", "{tmp}"),
    "missing key": ("key", "{tmp}/missing.key"),
    "empty key": ("key", "{empty}"),
    "junk key": ("key", "{junk}"),
    "/dev/zero password": ("pw", "/dev/zero"),
    "FIFO password": ("pw", "{fifo}"),
    "directory password": ("pw", "{tmp}"),
    "missing password": ("pw", "{tmp}/missing.pw"),
    "empty password": ("pw", "{empty}"),
    "wrong password": ("pw", "{junk}"),
    "DEST missing parent": ("dest", "{tmp}/no/dest"),
    "DEST a file": ("dest", "{junk}"),
    "DEST a FIFO": ("dest", "{fifo}"),
    "DEST empty": ("dest", ""),
    "DEST under a file": ("dest", "{junk}/dest"),
    "DEST dangling symlink": ("dest", "{dangling}"),
    "OUT a FIFO": ("out", "{fifo}"),
    "OUT /dev/null": ("out", "/dev/null"),
    "OUT a directory": ("out", "{tmp}"),
    "OUT missing parent": ("out", "{tmp}/no/out.img"),
    "OUT junk": ("out", "{junk}"),
    "OUT empty": ("out", ""),
}

MATRIX = [
    pytest.param(command, bad, id=f"{command}-{bad}")
    for command, argv in MATRIX_COMMANDS.items()
    for bad, (slot, _) in BAD_INPUTS.items()
    if any("{" + slot + "}" in a for a in argv)
]


@pytest.mark.parametrize(("command", "bad"), MATRIX)
def test_every_command_meets_bad_input_with_one_line_and_a_documented_code(
    command: str, bad: str, tmp_path: Path, repo: dict[str, str]
) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "junk").write_bytes(b"\x5a" * 70_000)
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    pw = tmp_path / "pw"
    pw.write_text(repo["CIPHERDUMP_PASSWORD"] + "\n")
    names = {
        "fifo": str(fifo),
        "tmp": str(tmp_path),
        "empty": str(tmp_path / "empty"),
        "junk": str(tmp_path / "junk"),
        "dangling": str(tmp_path / "dangling"),
    }
    good = {
        "src": str(SAMPLE),
        "key": str(ALICE),
        "pw": str(pw),
        "dest": str(tmp_path / "dest"),
        "out": str(tmp_path / "out.img"),
    }
    slot, value = BAD_INPUTS[bad]
    good[slot] = value.format(**names)
    args = [a.format(**good) for a in MATRIX_COMMANDS[command]]
    env = {"CIPHERDUMP_REPOSITORY": repo["CIPHERDUMP_REPOSITORY"]}
    if "{pw}" not in "".join(MATRIX_COMMANDS[command]):
        env = {}
    run(*args, env=env, timeout=60).one_line_error()
    assert not (tmp_path / "nowhere").exists()
    assert (tmp_path / "junk").read_bytes() == b"\x5a" * 70_000
