"""What every command prints goes through cli/render.py: one unit ladder for sizes, one
spelling of the warning prefix, one code for a partial failure."""

from __future__ import annotations

import pytest

from cipherdump.cli import render
from shared_data import REPO


@pytest.mark.parametrize(
    ("n", "shown"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (5 << 20, "5.0 MiB"),
        (3 << 30, "3.0 GiB"),
        (2 << 40, "2.0 TiB"),
        (2048 << 40, "2048.0 TiB"),
    ],
)
def test_size_climbs_one_ladder(n: int, shown: str) -> None:
    assert render.size(n) == shown


def test_warn_spells_the_prefix(capsys: pytest.CaptureFixture[str]) -> None:
    render.warn("the disk is on fire")
    assert capsys.readouterr().err == "cipherdump: warning: the disk is on fire\n"


def test_the_prefix_and_the_partial_exit_code_live_in_render_alone() -> None:
    cli = REPO / "src" / "cipherdump"
    for path in sorted(cli.rglob("*.py")):
        text = path.read_text()
        if path.name == "render.py":
            continue
        assert "cipherdump: warning:" not in text, path
        assert "EXIT_PARTIAL =" not in text, path
