"""Start-up cost of the command line: what each command imports, without timing anything.

``import cipherdump.cli.main`` (every run, ``--help`` included) loads only click, the
standard library and ``cipherdump.errors``; the engine, the ext4 reader, fscrypt, the
repository and their heavy third-party modules are imported by the commands that use
them.  Each check runs in a fresh interpreter, since this one has imported everything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from cipherdump.cli.main import cli
from shared_data import REPO

SAMPLE = REPO / "examples" / "sample.img"

# Third-party modules that cost start-up time and that no command needs before it runs.
HEAVY = {"argon2", "blake3", "crc32c", "cryptography", "google", "hypothesis", "rich", "zstandard"}

_REPORT = """
import json, sys
{run}
with open({out!r}, "w") as f:
    json.dump(sorted(sys.modules), f)
"""

_RUN_CLI = """
from cipherdump.cli.main import cli
try:
    cli({args!r}, prog_name="cipherdump")
except SystemExit as exit:
    assert not exit.code, exit.code
"""


def modules_after(code: str, *, tmp_path: Path) -> set[str]:
    """Every module name in ``sys.modules`` after ``code`` ran in a fresh interpreter."""
    env = dict(os.environ, CIPHERDUMP_INSECURE_TEST_KDF="1", CIPHERDUMP_PASSWORD="pw")
    env.pop("CIPHERDUMP_REPOSITORY", None)
    out = tmp_path / "modules.json"
    script = _REPORT.format(run=code, out=str(out))
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(out.read_text()))


def modules_after_cli(*args: str, tmp_path: Path) -> set[str]:
    return modules_after(_RUN_CLI.format(args=list(args)), tmp_path=tmp_path)


def top_level(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


def test_importing_the_cli_loads_no_engine_and_no_heavy_library(tmp_path: Path) -> None:
    mods = modules_after("import cipherdump.cli.main", tmp_path=tmp_path)
    assert top_level(mods) & HEAVY == set()
    ours = {m for m in mods if m.split(".")[0] == "cipherdump"}
    assert {m for m in ours if not m.startswith("cipherdump.cli")} == {
        "cipherdump",
        "cipherdump.errors",
    }


def test_help_runs_without_the_engine(tmp_path: Path) -> None:
    mods = modules_after_cli("--help", tmp_path=tmp_path)
    assert top_level(mods) & HEAVY == set()
    assert not any(m.startswith(("cipherdump.engine", "cipherdump.repo")) for m in mods)


def test_keyless_ls_of_an_image_loads_no_repository_and_no_cipher(tmp_path: Path) -> None:
    mods = modules_after_cli("ls", "-lR", str(SAMPLE), tmp_path=tmp_path)
    assert "cipherdump.engine.views.image" in mods  # it did list
    assert top_level(mods) & HEAVY <= {"crc32c"}  # ext4 checksums need crc32c
    assert not any(m.startswith("cipherdump.repo") for m in mods)
    for lazy in (
        "cipherdump.engine.views.image_keyed",
        "cipherdump.fscrypt.keys",
        "cipherdump.fscrypt.modes",
    ):
        assert lazy not in mods
    # Nor the devices' read-ahead (native AIO through ctypes): an image needs none.
    assert "cipherdump.blockio.direct" not in mods and "ctypes" not in mods


def test_backup_loads_neither_the_keyed_engine_nor_rich(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    modules_after_cli("init", "-r", str(repo), tmp_path=tmp_path)
    mods = modules_after_cli("backup", "-r", str(repo), str(SAMPLE), tmp_path=tmp_path)
    assert "cipherdump.engine.backup" in mods
    assert "rich" not in top_level(mods)  # the progress bar is only for a terminal
    # crc32c's compiled function is loaded without its package __init__ (see ondisk.csum).
    assert "importlib.metadata" not in mods
    # Nor OpenSSL's libcrypto through hashlib: BLAKE2b comes from _blake2 (engine.nodeattrs).
    assert "_hashlib" not in mods
    for lazy in (
        "cipherdump.engine.views.image_keyed",
        "cipherdump.engine.fscrypt_meta",
        "cipherdump.engine.restore_plain",
        "cipherdump.fscrypt.protectors",
        "cipherdump.fscrypt.keys",
        "cipherdump.fscrypt.modes",  # what it could decrypt is named without the ciphers
    ):
        assert lazy not in mods


def test_crc32c_loaded_around_its_package_is_the_package_function() -> None:
    import crc32c

    from cipherdump.ondisk.csum import _crc32c, crc32c_le

    assert _crc32c.__name__ == "crc32c" and _crc32c.__module__ != __name__
    for data, value in [(b"", 0), (b"123456789", 0), (bytes(range(256)) * 3, 0x1234ABCD)]:
        assert _crc32c(data, value) == crc32c.crc32c(data, value)
    # The check value of CRC-32C (RFC 3720, B.4), through ext4's uninverted update.
    assert crc32c_le(0xFFFFFFFF, b"123456789") ^ 0xFFFFFFFF == 0xE3069283


def test_mount_help_loads_neither_fuse_nor_the_engine(tmp_path: Path) -> None:
    mods = modules_after_cli("mount", "--help", tmp_path=tmp_path)
    assert "mfusepy" not in mods
    assert not any(m.startswith(("cipherdump.engine", "cipherdump.fusemount")) for m in mods)


def test_help_lists_every_command() -> None:
    out = CliRunner().invoke(cli, ["--help"]).output
    expected = {"backup", "cat", "check", "clone", "diff", "extract", "info", "init", "ls", "mount"}
    expected |= {"repair", "restore", "snapshots", "stat"}
    expected |= {"forget", "tag", "prune", "unlock", "key", "stats"}
    expected |= {"completion", "version"}
    expected |= {"forget", "tag", "prune", "unlock", "key", "stats", "dump"}
    assert set(cli.commands) == expected
    for name in expected:
        assert f"  {name} " in out


def test_init_pack_size_default_is_the_format_default(tmp_path: Path) -> None:
    from cipherdump.repo import LocalBackend, Repository
    from cipherdump.repo.config import DEFAULT_PACK_SIZE

    helptext = " ".join(CliRunner().invoke(cli, ["init", "--help"]).output.split())
    assert f"[default: {DEFAULT_PACK_SIZE};" in helptext
    env = {"CIPHERDUMP_INSECURE_TEST_KDF": "1", "CIPHERDUMP_PASSWORD": "pw"}
    result = CliRunner().invoke(cli, ["init", "-r", str(tmp_path / "r"), "--json"], env=env)
    assert result.exit_code == 0, result.output
    with Repository.open(LocalBackend(str(tmp_path / "r")), b"pw", lock=False) as repo:
        assert repo.config.pack_size == DEFAULT_PACK_SIZE


@pytest.mark.parametrize(
    ("option", "expected"),
    [([], "AES_256_GCM"), (["--cipher", "chacha20-poly1305"], "CHACHA20_POLY1305")],
)
def test_init_cipher_is_recorded_and_used(tmp_path: Path, option: list[str], expected: str) -> None:
    from cipherdump.repo import Cipher, LocalBackend, Repository

    env = {"CIPHERDUMP_INSECURE_TEST_KDF": "1", "CIPHERDUMP_PASSWORD": "pw"}
    path = str(tmp_path / "r")
    result = CliRunner().invoke(cli, ["init", "-r", path, "--json", *option], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["cipher"] == (option[1] if option else "aes-256-gcm")
    with Repository.open(LocalBackend(path), b"pw", lock=False) as repo:
        assert repo.config.cipher is Cipher[expected]
    bad = CliRunner().invoke(cli, ["init", "-r", path + "2", "--cipher", "rot13"], env=env)
    assert bad.exit_code == 2 and "rot13" in bad.output


def test_the_cycle_collector_does_not_rescan_everything_at_exit() -> None:
    """``main`` freezes what is alive before the interpreter's final collection (which
    cost a tenth of an incremental backup); output and exit code are unchanged."""
    code = (
        "import atexit, gc, sys\n"
        "atexit.register(lambda: sys.stderr.write(f'frozen={gc.get_freeze_count() > 0}'))\n"
        "from cipherdump.cli.main import main\n"
        "main()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "--version"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() and proc.stderr == "frozen=True"


def test_every_exit_code_is_in_the_readme_table() -> None:
    """The README's table of exit codes is the contract scripts rely on: every error
    class's code is in it, and nothing else is."""
    import re

    from cipherdump import errors

    readme = (REPO / "README.md").read_text()
    table = readme.split("### Exit codes", 1)[1].split("\n\n", 2)[1]
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", table, re.MULTILINE)}
    classes = [c for c in vars(errors).values() if isinstance(c, type)]
    raised = {c.exit_code for c in classes if issubclass(c, errors.CipherdumpError)}
    assert documented == raised | {0, 2, 70}  # success, usage (click), internal error
