"""Every repository command against a real S3 server (SeaweedFS, started by the session
on loopback: fixture ``seaweedfs``), and the same commands against a local directory,
with the same results.  Each command runs as its own process, as a user runs it."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import seaweed
from cipherdump.repo import Backend, FileType, Handle, Repository
from cipherdump.repo.location import open_backend
from shared_data import REPO

ROOT = REPO
SAMPLE = ROOT / "examples" / "sample.img"
ALICE = ROOT / "examples" / "alice.key"
BOB = ROOT / "examples" / "bob.key"
CLI = [sys.executable, "-c", "from cipherdump.cli.main import main; main()"]


class Run:
    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.code = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    def __repr__(self) -> str:
        return f"exit {self.code}\nstdout: {self.stdout[-3000:]}\nstderr: {self.stderr[-3000:]}"

    def one_line_error(self, code: int) -> str:
        assert self.code == code, self
        assert "Traceback" not in self.stderr and "internal error" not in self.stderr, self
        lines = self.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("cipherdump: error: "), self
        return lines[0]


def run(
    *args: str | os.PathLike[str],
    env: dict[str, str],
    cwd: Path | None = None,
    timeout: float = 120,
) -> Run:
    full = {k: v for k, v in env.items() if not k.startswith("CIPHERDUMP_REPOSITORY")}
    full["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")
    full["CIPHERDUMP_INSECURE_TEST_KDF"] = "1"
    full["CIPHERDUMP_PASSWORD"] = "pw"
    full.update({k: v for k, v in env.items() if k.startswith("CIPHERDUMP_REPOSITORY")})
    proc = subprocess.run(
        [*CLI, *map(str, args)],
        env=full,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    return Run(proc)


class BackupChild:
    """``backup`` run as a user runs it, to be interrupted while it uploads: start it,
    wait until it has stored some packs, do something to it, then :meth:`finish`."""

    def __init__(self, image: Path, jobs: int, env: dict[str, str]) -> None:
        full = {
            **env,
            "PYTHONPATH": str(ROOT / "src"),
            "CIPHERDUMP_PASSWORD": "pw",
            "CIPHERDUMP_INSECURE_TEST_KDF": "1",
        }
        self.proc = subprocess.Popen(
            [*CLI, "backup", "--jobs", str(jobs), str(image)],
            env=full,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_for_packs(self, repository: Backend, count: int = 4) -> None:
        deadline = time.monotonic() + 60
        while len(list(repository.list(FileType.PACK))) < count:
            assert self.proc.poll() is None, self.proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)

    def finish(self, timeout: float = 60) -> Run:
        """How it ended (killed if it has not within ``timeout`` seconds)."""
        try:
            stdout, stderr = self.proc.communicate(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        return Run(
            subprocess.CompletedProcess(self.proc.args, self.proc.returncode, stdout, stderr)
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the reproduction -------------------------------------------------------------


def test_init_reaches_the_server(seaweedfs: seaweed.SeaweedFS, tmp_path: Path) -> None:
    """``CIPHERDUMP_REPOSITORY=s3:http://HOST:PORT/bucket/fleet cipherdump init`` made a
    local directory ``s3:http:`` and sent nothing to the server."""
    location = seaweedfs.location("fleet-" + tmp_path.name[-8:])
    env = seaweedfs.env(CIPHERDUMP_REPOSITORY=location)
    result = run("init", env=env, cwd=tmp_path)
    assert result.code == 0, result
    assert location in result.stdout
    assert list(tmp_path.iterdir()) == []  # no s3:http: directory, nothing local
    backend = open_backend(location, seaweedfs.env())
    assert [i.name for i in backend.list(FileType.CONFIG)] == [""]
    assert len(list(backend.list(FileType.KEY))) == 1
    # A second init into the same place is refused, and says why.
    again = run("init", env=env, cwd=tmp_path)
    assert "not empty" in again.one_line_error(6)
    assert run("snapshots", env=env, cwd=tmp_path).code == 0


@pytest.mark.parametrize(
    "location", ["sftp:host:/srv/repo", "rest:http://127.0.0.1:1/", "s3://bucket/prefix"]
)
def test_unknown_locations_are_usage_errors(location: str, tmp_path: Path) -> None:
    for command in (["init"], ["snapshots"], ["backup", str(SAMPLE)]):
        result = run(*command, env={**os.environ, "CIPHERDUMP_REPOSITORY": location}, cwd=tmp_path)
        assert location in result.one_line_error(2)
    assert list(tmp_path.iterdir()) == []


# -- every command, on both backends ------------------------------------------------------


def _session(location: str, env: dict[str, str], work: Path) -> dict[str, object]:
    """Run every repository command once; what each printed that should not depend on
    where the repository is."""
    env = {**env, "CIPHERDUMP_REPOSITORY": location}
    out: dict[str, object] = {}

    def ok(*args: str | os.PathLike[str], codes: tuple[int, ...] = (0,)) -> Run:
        result = run(*args, env=env, cwd=work)
        assert result.code in codes, (args, result)
        return result

    ok("init")
    first = json.loads(ok("backup", SAMPLE, "--json").stdout)
    second = json.loads(ok("backup", SAMPLE, "--json").stdout)  # incremental
    out["first"] = {k: first[k] for k in ("files_new", "dirs_new", "bytes_added")}
    out["second"] = {k: second[k] for k in ("files_new", "files_unchanged", "bytes_added")}
    assert second["parent"] == first["snapshot_id"]
    assert second["bytes_read"] == 0
    out["snapshots"] = len(json.loads(ok("snapshots", "--json").stdout))
    out["ls"] = ok("ls", "-R", "-l", "latest").stdout
    out["stat"] = json.loads(ok("stat", "--json", "latest", "/home/alice").stdout)["mode"]
    out["cat"] = ok("cat", "latest", "/public/numbers.csv").stdout
    assert out["cat"]
    out["diff"] = ok("diff", first["snapshot_id"][:12], second["snapshot_id"][:12]).stdout
    check = json.loads(ok("check", "--read-data", "--json").stdout)
    out["check"] = check.get("errors", check.get("ok"))
    image = work / "restored.img"
    ok("restore", "latest", "--to-image", image)
    ok("restore", "latest", "--target", work / "plain", "--key", ALICE, "--key", BOB)
    out["plain"] = sorted(
        str(p.relative_to(work / "plain")) + (f" {p.stat().st_size}" if p.is_file() else "")
        for p in (work / "plain").rglob("*")
    )
    out["repair"] = json.loads(ok("repair", "index", "--json").stdout).get("packs")
    ok("check")
    return out


def test_every_command_on_s3_as_on_a_local_directory(
    seaweedfs: seaweed.SeaweedFS, tmp_path: Path
) -> None:
    env = seaweedfs.env()
    (tmp_path / "local").mkdir()
    (tmp_path / "s3").mkdir()
    local = _session(str(tmp_path / "local" / "repo"), env, tmp_path / "local")
    remote = _session(seaweedfs.location(), env, tmp_path / "s3")
    assert remote == local
    # The key-less images are the same filesystem.
    a = run("ls", "-R", "-l", tmp_path / "local" / "restored.img", env=env)
    b = run("ls", "-R", "-l", tmp_path / "s3" / "restored.img", env=env)

    def tree(out: str) -> list[str]:  # (lost+found is made new, with its own time)
        return [line for line in out.splitlines() if "/lost+found" not in line]

    assert a.code == 0 and tree(a.stdout) == tree(b.stdout) and "alice" in a.stdout
    assert not (tmp_path / "s3" / "repo").exists()


# -- locks --------------------------------------------------------------------------------


def test_a_lock_on_s3_stops_a_second_writer(seaweedfs: seaweed.SeaweedFS, tmp_path: Path) -> None:
    location = seaweedfs.location()
    env = seaweedfs.env(CIPHERDUMP_REPOSITORY=location)
    assert run("init", env=env).code == 0
    backend = open_backend(location, seaweedfs.env())
    with Repository.open(backend, b"pw", lock=True):
        line = run("backup", SAMPLE, env=env).one_line_error(8)
        assert "locked" in line and location in line
        # Readers take a shared lock, which an exclusive one keeps out.
        assert "locked" in run("snapshots", env=env).one_line_error(8)
    with Repository.open(backend, b"pw", lock=True, exclusive=False):
        assert run("snapshots", env=env).code == 0  # beside a backup's shared lock
    assert list(backend.list(FileType.LOCK)) == []
    assert run("backup", SAMPLE, env=env).code == 0


# -- what goes wrong ----------------------------------------------------------------------


def test_wrong_access_key(seaweedfs: seaweed.SeaweedFS, tmp_path: Path) -> None:
    env = seaweedfs.env(CIPHERDUMP_REPOSITORY=seaweedfs.location())
    assert run("init", env=env).code == 0
    env["AWS_SECRET_ACCESS_KEY"] = "wrong"
    line = run("snapshots", env=env).one_line_error(6)
    assert "access denied" in line and "config" in line
    env["AWS_ACCESS_KEY_ID"] = "nosuchkey"
    assert "InvalidAccessKeyId" in run("backup", SAMPLE, env=env).one_line_error(6)


def test_missing_bucket(seaweedfs: seaweed.SeaweedFS, tmp_path: Path) -> None:
    location = seaweedfs.location(bucket="no-such-bucket")
    env = seaweedfs.env(CIPHERDUMP_REPOSITORY=location)
    for command in ("init", "snapshots"):
        line = run(command, env=env).one_line_error(6)
        assert "no bucket 'no-such-bucket'" in line, line


def test_wrong_endpoint_gives_up_in_bounded_time(tmp_path: Path) -> None:
    """Nothing listens there: connection refused is retried (a server may be
    restarting), for CIPHERDUMP_S3_RETRY_SECONDS, then one line."""
    location = f"s3:http://127.0.0.1:{_free_port()}/bucket/x"
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "CIPHERDUMP_S3_RETRY_SECONDS": "2",
        "CIPHERDUMP_REPOSITORY": location,
    }
    line = run("snapshots", env=env, timeout=30).one_line_error(6)
    assert "gave up after" in line and "config" in line and location in line


def test_missing_credentials(seaweedfs: seaweed.SeaweedFS, tmp_path: Path) -> None:
    env = seaweedfs.env(CIPHERDUMP_REPOSITORY=seaweedfs.location())
    del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    env["HOME"] = str(tmp_path)
    assert "no S3 credentials" in run("init", env=env).one_line_error(6)


def test_profile_credentials(seaweedfs: seaweed.SeaweedFS, tmp_path: Path) -> None:
    """Keys and endpoint from a profile in the shared files, as the AWS CLI reads them."""
    (tmp_path / "credentials").write_text(
        f"[fleet]\naws_access_key_id = {seaweed.ACCESS_KEY}\n"
        f"aws_secret_access_key = {seaweed.SECRET_KEY}\n"
    )
    (tmp_path / "config").write_text(
        f"[profile fleet]\nregion = us-east-1\nendpoint_url = {seaweedfs.endpoint}\n"
    )
    env = seaweedfs.env(
        AWS_PROFILE="fleet",
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "credentials"),
        AWS_CONFIG_FILE=str(tmp_path / "config"),
        CIPHERDUMP_REPOSITORY=f"s3:{seaweed.BUCKET}/profile-{tmp_path.name[-8:]}",
    )
    del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
    assert run("init", env=env).code == 0
    assert run("backup", SAMPLE, env=env).code == 0


def test_no_weed_leftovers_on_other_addresses(seaweedfs: seaweed.SeaweedFS) -> None:
    """Every socket the server listens on is a loopback one."""
    if shutil.which("ss") is None:
        pytest.skip("no ss")
    out = subprocess.run(
        ["ss", "-ltnp"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    mine = [line for line in out if f"pid={seaweedfs.process.pid}," in line]
    assert mine
    assert all(line.split()[3].startswith("127.0.0.1:") for line in mine), mine


# -- the local cache ----------------------------------------------------------------------


def test_cache_is_used_and_rebuilt_when_damaged(
    seaweedfs: seaweed.SeaweedFS, tmp_path: Path
) -> None:
    location = seaweedfs.location()
    env = seaweedfs.env(CIPHERDUMP_REPOSITORY=location, CIPHERDUMP_CACHE_DIR=str(tmp_path / "c"))
    assert run("init", env=env).code == 0
    assert run("backup", SAMPLE, env=env).code == 0
    assert run("ls", "-R", "latest", env=env).code == 0
    (folder,) = (tmp_path / "c").iterdir()  # one repository, by its id
    cached = [p for sub in ("index", "snapshots", "data") for p in (folder / sub).iterdir()]
    assert {p.parent.name for p in cached} == {"index", "snapshots", "data"}
    for path in cached:
        path.write_bytes(b"damaged" + path.read_bytes()[7:])
    listing = run("ls", "-R", "latest", env=env)
    assert listing.code == 0 and "alice" in listing.stdout, listing
    assert run("backup", SAMPLE, env=env).code == 0
    assert run("check", "--read-data", env=env).code == 0
    backend = open_backend(location, seaweedfs.env(CIPHERDUMP_NO_CACHE="1"))
    for path in cached:
        if path.exists():
            handle = Handle(FileType(path.parent.name), path.name)
            assert path.read_bytes() == backend.load(handle), path
    # Off: nothing is written.
    env["CIPHERDUMP_NO_CACHE"] = "1"
    env["CIPHERDUMP_CACHE_DIR"] = str(tmp_path / "off")
    assert run("snapshots", env=env).code == 0
    assert not (tmp_path / "off").exists()


def test_storage_options_on_the_command_line(seaweedfs: seaweed.SeaweedFS, tmp_path: Path) -> None:
    """--cache-dir, --no-cache and --connections do what their environment variables do,
    and win over them."""
    location = seaweedfs.location()
    env = seaweedfs.env(CIPHERDUMP_REPOSITORY=location, CIPHERDUMP_CACHE_DIR=str(tmp_path / "e"))
    assert run("init", "--cache-dir", tmp_path / "o", env=env).code == 0
    backed = run("backup", "--cache-dir", tmp_path / "o", "--connections", "2", SAMPLE, env=env)
    assert backed.code == 0, backed
    (folder,) = (tmp_path / "o").iterdir()
    assert any((folder / "snapshots").iterdir())
    assert not (tmp_path / "e").exists()
    assert run("snapshots", "--no-cache", env=env).code == 0
    assert not (tmp_path / "e").exists()
    assert "--connections" in run("snapshots", "--connections", "0", env=env).stderr


def test_check_reads_the_repository_not_the_cache(
    seaweedfs: seaweed.SeaweedFS, tmp_path: Path
) -> None:
    """An index file damaged on the server is found though the cache has a good copy."""
    location = seaweedfs.location()
    env = seaweedfs.env(CIPHERDUMP_REPOSITORY=location, CIPHERDUMP_CACHE_DIR=str(tmp_path / "c"))
    assert run("init", env=env).code == 0
    assert run("backup", SAMPLE, env=env).code == 0
    assert run("snapshots", env=env).code == 0  # the cache has every index file now
    backend = open_backend(location, seaweedfs.env(CIPHERDUMP_NO_CACHE="1"))
    (info,) = backend.list(FileType.INDEX)
    handle = Handle(FileType.INDEX, info.name)
    data = backend.load(handle)
    backend.save(handle, io.BytesIO(data[:-1] + bytes([data[-1] ^ 1])))
    line = run("check", env=env)
    assert line.code == 5 and info.name in line.stdout + line.stderr, line
