"""Where the password comes from, in which order."""

from __future__ import annotations

from pathlib import Path

import pytest

from cipherdump.errors import KeyProblem
from cipherdump.repo import resolve_password


def test_order_of_sources(tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    flag.write_bytes(b"from flag\n")
    env_file = tmp_path / "env"
    env_file.write_bytes(b"from env file\r\n")
    env = {"CIPHERDUMP_PASSWORD_FILE": str(env_file), "CIPHERDUMP_PASSWORD": "from env"}
    assert resolve_password(flag, env=env) == b"from flag"
    assert resolve_password(env=env) == b"from env file"
    assert resolve_password(env={"CIPHERDUMP_PASSWORD": "from env"}) == b"from env"
    assert resolve_password(env={}, prompt=lambda: "typed") == b"typed"


def test_only_one_newline_is_stripped(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.write_bytes(b"pass \n\n")
    assert resolve_password(f, env={}) == b"pass \n"


@pytest.mark.parametrize("env", [{}, {"CIPHERDUMP_PASSWORD": ""}])
def test_missing_or_empty_is_a_key_problem(env: dict[str, str]) -> None:
    with pytest.raises(KeyProblem) as info:
        resolve_password(env=env)
    assert "\n" not in str(info.value)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(KeyProblem, match="cannot read password file"):
        resolve_password(tmp_path / "nope", env={})
