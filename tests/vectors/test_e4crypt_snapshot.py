"""e4crypt passphrases on a key-less snapshot.

``f_bad_encryption`` was made with ``e4crypt add_key`` and the passphrase ``password``
(see ../shared/testdata/KNOWN_KEYS.md).  A backup keeps the superblock's public
passphrase salt, so a restore from the snapshot can derive the same key from the
passphrase alone: the names of ``/edir`` come back in plaintext.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from click.testing import CliRunner, Result

from cipherdump.cli.main import cli

ENV = {"CIPHERDUMP_INSECURE_TEST_KDF": "1", "CIPHERDUMP_PASSWORD": "pw"}


def _restore_edir(tmp_path: Path, shared_testdata: Path, passphrase: str | None) -> Result:
    """Back up f_bad_encryption key-lessly, then restore /edir with ``passphrase``
    (None: the image's real one) into ``tmp_path / "out"``."""
    entry = json.loads((shared_testdata / "known_keys.json").read_text())[
        "e2fsprogs/f_bad_encryption"
    ]
    image = tmp_path / "f_bad_encryption.img"
    image.write_bytes(gzip.decompress((shared_testdata / entry["image"]).read_bytes()))
    repo = str(tmp_path / "repo")
    runner = CliRunner()
    assert runner.invoke(cli, ["init", "-r", repo], env=ENV).exit_code == 0
    backup = runner.invoke(cli, ["backup", str(image), "-r", repo], env=ENV)
    assert backup.exit_code in (0, 1), backup.output  # some inodes are corrupt on purpose
    secret = tmp_path / "passphrase"
    secret.write_text(
        (entry["key_source"]["passphrase"] if passphrase is None else passphrase) + "\n"
    )
    args = ["restore", "latest", "-r", repo, "--target", str(tmp_path / "out")]
    args += ["--path", "/edir", "--passphrase-file", str(secret)]
    return runner.invoke(cli, args, env=ENV)


def test_e4crypt_passphrase_restores_names_from_a_snapshot(
    tmp_path: Path, shared_testdata: Path
) -> None:
    result = _restore_edir(tmp_path, shared_testdata, None)
    assert result.exit_code in (0, 1), result.output
    target = tmp_path / "out"
    restored = {p.name for p in target.iterdir()}
    assert {"encrypted_file", "encrypted_dir", "encrypted_symlink", "fifo"} <= restored
    assert (target / "encrypted_symlink").readlink() == Path("target")


def test_wrong_e4crypt_passphrase_restores_no_plaintext(
    tmp_path: Path, shared_testdata: Path
) -> None:
    result = _restore_edir(tmp_path, shared_testdata, "not the passphrase")
    assert result.exit_code != 0
    target = tmp_path / "out"
    names = {p.name for p in target.iterdir()} if target.exists() else set()
    assert "encrypted_file" not in names
