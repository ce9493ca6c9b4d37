"""``cipherdump version``: this program's version and what it runs on, for bug reports."""

from __future__ import annotations

import platform
import sys
from typing import Any

import click

from cipherdump import __version__
from cipherdump.cli import render

# The distributions whose versions matter to what cipherdump does (the crypto, the
# hashes, compression, checksums, S3), as pip names them.
KEY_PACKAGES = (
    "cryptography",
    "argon2-cffi",
    "blake3",
    "zstandard",
    "crc32c",
    "obstore",
    "click",
    "rich",
)
# The `mount` extra (pip install cipherdump[mount]).
MOUNT_PACKAGE = "mfusepy"


def _installed(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def version_facts() -> dict[str, Any]:
    """What ``version --json`` prints: the version, Python, the key packages (None:
    not installed) and whether ``cipherdump mount`` can run (its extra, and libfuse 3
    that it loads)."""
    from ctypes.util import find_library

    mount = _installed(MOUNT_PACKAGE)
    return {
        "cipherdump": __version__,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "packages": {name: _installed(name) for name in KEY_PACKAGES},
        "mount": {
            "installed": mount is not None,
            MOUNT_PACKAGE: mount,
            "libfuse3": find_library("fuse3") is not None,
        },
    }


@click.command(name="version")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@render.one_line_errors
def version_cmd(as_json: bool) -> None:
    """This version, Python's, those of the packages that matter, and whether the
    mount extra is installed (`--version` prints the first line only)."""
    facts = version_facts()
    if as_json:
        click.echo(render.dumps(facts))
        return
    click.echo(f"cipherdump {facts['cipherdump']}")
    click.echo(f"Python {facts['python']} ({facts['implementation']}) on {facts['platform']}")
    for name, ver in facts["packages"].items():
        click.echo(f"  {name:<14} {ver or 'not installed'}")
    mount = facts["mount"]
    if mount["installed"]:
        fuse = "" if mount["libfuse3"] else "; libfuse 3 not found, mount cannot run"
        click.echo(f"mount extra: installed ({MOUNT_PACKAGE} {mount[MOUNT_PACKAGE]}{fuse})")
    else:
        click.echo("mount extra: not installed (pip install 'cipherdump[mount]')")
    sys.stdout.flush()
