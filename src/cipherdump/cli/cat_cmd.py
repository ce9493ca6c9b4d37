"""``cipherdump cat SOURCE PATH``: the contents of a file of an image or of a snapshot
on standard output -- plaintext, decrypted with keys, or the stored ciphertext."""

from __future__ import annotations

import os
import sys
from typing import BinaryIO

import click

from cipherdump.cli import keyopts, render, sources
from cipherdump.errors import InputError, KeyProblem

# Holes are written from this run of zeros, a slice at a time.
_ZEROS = bytes(1 << 20)


@click.command()
@click.argument("image", type=click.Path(dir_okay=False, path_type=str))
@click.argument("path")
@click.option(
    "--ciphertext",
    is_flag=True,
    help="Write the stored bytes in whole data units (ciphertext of encrypted files).",
)
@keyopts.key_options
@sources.snapshot_options
@render.one_line_errors
def cat(
    image: str,
    path: str,
    ciphertext: bool,
    keying: keyopts.KeyOptions,
    repo: str | None,
    password_file: str | None,
) -> None:
    """Write the contents of PATH to standard output.

    With --key, an encrypted file is decrypted (exit 4 if no key given matches it).
    Without a key, an encrypted file can only be read with --ciphertext: its whole
    data units (the last one padded, as stored); the exact size is on stderr and in
    `stat`.  With a repository (-r/--repo or CIPHERDUMP_REPOSITORY), IMAGE is a
    snapshot.
    """
    out = sys.stdout.buffer
    if not repo:
        _cat_image(image, path, ciphertext, keying, out)
    elif not ciphertext and keying:
        _cat_snapshot_keyed(repo, password_file, image, path, keying, out)
    else:
        _cat_snapshot(repo, password_file, image, path, ciphertext, out)
    out.flush()


def _no_key(path: str) -> KeyProblem:
    return KeyProblem(
        f"{path} is encrypted and no key was given; use --ciphertext for the stored bytes"
    )


def _cat_image(
    image: str, path: str, ciphertext: bool, keying: keyopts.KeyOptions, out: BinaryIO
) -> None:
    from cipherdump.engine.describe import data_unit_size, iter_ciphertext
    from cipherdump.ext4.inode import InodeType

    loaded = keying.load()
    with sources.open_image(image) as fs:
        keyopts.add_image_secrets(loaded, keying.secrets, fs)
        ns = keyopts.namespace(fs, loaded)
        node = ns.resolve(os.fsencode(path))
        inode = node.inode
        if inode.type is not InodeType.FILE:
            raise InputError(f"{path}: not a regular file")
        if ciphertext:
            du = data_unit_size(inode) if inode.is_encrypted else 1
            for chunk in iter_ciphertext(inode, du):
                out.write(chunk)
            if inode.is_encrypted:
                click.echo(f"cipherdump: {path}: size {inode.size}, data unit {du}", err=True)
        elif (keyed := keyopts.as_keyed(ns)) is not None:
            if inode.is_encrypted:
                keyed.require_cipher(inode, path)  # the message names the path
            # Decrypts by data unit; holes come out as zeros without decryption.
            for seg in keyed.iter_segments(inode):
                if seg.data is not None:
                    out.write(seg.data)
                    continue
                left = seg.length
                while left:
                    n = min(left, len(_ZEROS))
                    out.write(_ZEROS[:n])
                    left -= n
        else:
            if inode.is_encrypted:
                raise _no_key(path)
            pos = 0
            step = 1 << 20
            while pos < inode.size:
                out.write(inode.read(pos, step))
                pos += step


def _cat_snapshot(
    repo: str,
    password_file: str | None,
    snapshot: str,
    path: str,
    ciphertext: bool,
    out: BinaryIO,
) -> None:
    """Plaintext of an unencrypted file, or with ``--ciphertext`` the stored whole data
    units."""
    from cipherdump.engine.nodeattrs import int_attr

    with sources.open_reader(repo, password_file) as repository:
        view = sources.snapshot_view(repository, snapshot)
        node = view.resolve(os.fsencode(path))
        if node.kind != "file":
            raise InputError(f"{path}: not a regular file")
        size = int_attr(node.attrs, "size")
        if ciphertext:
            du = view.data_unit_size(node) if node.is_encrypted else 1
            for chunk in view.iter_stored(node, -(-size // du) * du):
                out.write(chunk)
            if node.is_encrypted:
                click.echo(f"cipherdump: {path}: size {size}, data unit {du}", err=True)
        else:
            if node.is_encrypted:
                raise _no_key(path)
            for chunk in view.iter_stored(node, size):
                out.write(chunk)


def _cat_snapshot_keyed(
    repo: str,
    password_file: str | None,
    snapshot: str,
    path: str,
    keying: keyopts.KeyOptions,
    out: BinaryIO,
) -> None:
    """``--key/--passphrase``: the plaintext of a file in a snapshot."""
    from cipherdump.engine.views.snapshot_keyed import KeyedSnapshotView

    with sources.open_reader(repo, password_file) as repository:
        view = sources.snapshot_view(repository, snapshot)
        ring = sources.snapshot_keys(view, keying)
        source = KeyedSnapshotView(view, ring)
        node = source.resolve(os.fsencode(path))
        if node.snap.kind != "file":
            raise InputError(f"{path}: not a regular file")
        if node.snap.is_encrypted:
            try:
                source.cipher(node.snap, path)
            except KeyProblem:
                sources.report_snapshot_keys(source)
                raise
        for piece in source.read_plaintext(node):
            out.write(piece)
