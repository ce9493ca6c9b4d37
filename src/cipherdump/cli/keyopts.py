"""``--key`` / ``--key-dir`` options: loading the owners' keys and reporting on them.

A key file holds the raw master key (16 to 64 bytes) or its hex.  v2 policies find their
key by identifier.  v1 policies find it by the e4crypt/fscrypt descriptor convention, or
by an explicit pairing ``--key DESCRIPTOR:FILE`` (16 hex digits) for descriptors chosen
some other way -- such a pairing cannot be verified, and a warning says so.

Messages name keys by identifier or descriptor only, never by their bytes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click

from cipherdump.engine.keyed import KeyedNamespace
from cipherdump.engine.namespace import Namespace, Node
from cipherdump.errors import CipherdumpError, KeyProblem
from cipherdump.ext4 import Filesystem
from cipherdump.fscrypt.keys import KeyRing, load_key_file

F = TypeVar("F", bound=Callable[..., Any])

_PAIRED = re.compile(r"^([0-9A-Fa-f]{16}):(.+)$", re.DOTALL)


def key_options(fn: F) -> F:
    """Add ``--key FILE`` (repeatable) and ``--key-dir DIR`` to a command."""
    fn = click.option(
        "--key-dir",
        "key_dirs",
        multiple=True,
        type=click.Path(file_okay=False, exists=True, path_type=str),
        help="Load every file in DIR as a master key (repeatable).",
    )(fn)
    fn = click.option(
        "--key",
        "keys",
        multiple=True,
        metavar="FILE",
        help=(
            "Master key file: raw bytes or hex (repeatable).  For a v1 policy whose "
            "descriptor is not derived from the key, pair them: --key DESCRIPTOR:FILE."
        ),
    )(fn)
    return fn


@dataclass
class LoadedKeys:
    ring: KeyRing = field(default_factory=KeyRing)
    unverified: set[bytes] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return len(self.ring) > 0


def load_keys(keys: tuple[str, ...], key_dirs: tuple[str, ...]) -> LoadedKeys:
    """Every key given on the command line; :class:`KeyProblem` for an unusable one."""
    out = LoadedKeys()
    for arg in keys:
        m = _PAIRED.match(arg)
        if m is not None and not os.path.exists(arg):
            descriptor = bytes.fromhex(m.group(1))
            key = load_key_file(m.group(2))
            if key.descriptor != descriptor:
                out.unverified.add(descriptor)
                out.warnings.append(
                    f"v1 descriptor {descriptor.hex()} is paired by hand with key "
                    f"{key.identifier.hex()} and cannot be verified (it is not the "
                    "descriptor derived from that key); names and targets that do not "
                    "decrypt cleanly are reported as a wrong key"
                )
            out.ring.pair(descriptor, key)
        else:
            out.ring.add(load_key_file(arg))
    for directory in key_dirs:
        try:
            names = sorted(os.listdir(directory))
        except OSError as exc:
            raise KeyProblem(f"cannot read key directory {directory}: {exc.strerror}") from None
        for name in names:
            path = os.path.join(directory, name)
            if os.path.isfile(path):
                out.ring.add(load_key_file(path))
    return out


def namespace(fs: Filesystem, loaded: LoadedKeys) -> Namespace:
    """A keyed namespace when keys were given, the key-less one otherwise."""
    for w in loaded.warnings:
        click.echo(f"cipherdump: warning: {w}", err=True)
    if not loaded:
        return Namespace(fs)
    return KeyedNamespace(fs, loaded.ring, unverified_descriptors=loaded.unverified)


def report_keys(ns: Namespace) -> None:
    """Warn about policies no given key matched and about keys that matched nothing."""
    if not isinstance(ns, KeyedNamespace):
        return
    for policy in ns.missing.values():
        click.echo(f"cipherdump: warning: {ns.missing_key_error(policy)}", err=True)
    for key in ns.keyring:
        if key.identifier not in ns.used:
            click.echo(
                f"cipherdump: warning: key with identifier {key.identifier.hex()} "
                f"(v1 descriptor {key.descriptor.hex()}) decrypted nothing that was read",
                err=True,
            )


def keyed_stat_fields(ns: Namespace, node: Node) -> dict[str, Any]:
    """Extra ``stat`` fields in keyed mode: was the name decrypted, is the key present."""
    if not isinstance(ns, KeyedNamespace):
        return {}
    out: dict[str, Any] = {}
    if node.name_encrypted:
        out["name_decrypted"] = ns.name_decrypted(node)
    if node.inode.is_encrypted:
        try:
            out["key_present"] = ns.cipher_for(node.inode) is not None
        except CipherdumpError:  # an unreadable context is already shown in "context"
            out["key_present"] = False
    return out
