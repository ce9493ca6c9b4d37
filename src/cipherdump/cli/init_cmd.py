"""``cipherdump init``: create a new, empty repository protected by a password."""

from __future__ import annotations

from typing import Any

import click

from cipherdump.cli import render, sources

# --cipher's names, and the Cipher members they stand for (named, not imported: the
# repository's modules load only when a command runs).
_CIPHERS = {"aes-256-gcm": "AES_256_GCM", "chacha20-poly1305": "CHACHA20_POLY1305"}


class _PackSizeOption(click.Option):
    """``--pack-size``: its default is the repository format's, looked up only when
    ``init`` runs or shows its help (the format module imports the repository's ciphers)."""

    def get_default(self, ctx: click.Context, call: bool = True) -> Any:
        value = super().get_default(ctx, call=call)
        if isinstance(value, int | str):
            return value  # given in a default map
        from cipherdump.repo.config import DEFAULT_PACK_SIZE

        return DEFAULT_PACK_SIZE


@click.command()
@sources.repo_option
@sources.password_option
@click.option(
    "--pack-size",
    cls=_PackSizeOption,
    type=click.IntRange(4096, 1 << 30),
    show_default=True,
    help="Target size of pack files in bytes.",
)
@click.option(
    "--cipher",
    type=click.Choice(sorted(_CIPHERS)),
    default="aes-256-gcm",
    show_default=True,
    help="AEAD sealing everything stored. ChaCha20-Poly1305 is faster only on CPUs "
    "without AES instructions.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@render.one_line_errors
def init(
    repo: str | None, password_file: str | None, pack_size: int, cipher: str, as_json: bool
) -> None:
    """Create a new, empty repository (a directory) protected by a password."""
    from cipherdump.repo import Cipher, KdfParams, Repository
    from cipherdump.repo.location import create_backend, parse

    path = sources.need_repo(repo)
    parse(path)  # a location cipherdump does not know is refused before the prompt
    password = sources.password(password_file, confirm=True)
    backend = create_backend(path, sources.storage_settings())
    chosen = Cipher[_CIPHERS[cipher]]
    kdf = KdfParams.default()
    with Repository.init(backend, password, kdf=kdf, pack_size=pack_size, cipher=chosen) as r:
        repo_id = r.config.repo_id
    if as_json:
        click.echo(render.dumps({"repository": path, "id": repo_id.hex, "cipher": cipher}))
    else:
        click.echo(f"created repository {repo_id.short} at {path} ({cipher})")
        click.echo("keep the password safe: without it the repository cannot be read")
