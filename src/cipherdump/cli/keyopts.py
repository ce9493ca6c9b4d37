"""Key options: ``--key`` / ``--key-dir`` (master keys), ``--passphrase`` /
``--passphrase-file`` / ``--protector-key`` / ``--fscrypt-metadata`` (secrets that unlock
master keys), loading them and reporting on them.

A key file holds the raw master key (16 to 64 bytes) or its hex.  v2 policies find their
key by identifier.  v1 policies find it by the e4crypt/fscrypt descriptor convention, or
by an explicit pairing ``--key DESCRIPTOR:FILE`` (16 hex digits) for descriptors chosen
some other way -- such a pairing cannot be verified, and a warning says so.

Messages name keys by identifier or descriptor only, never by their bytes.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import click

from cipherdump.cli import render
from cipherdump.errors import CipherdumpError, KeyProblem

if TYPE_CHECKING:
    from cipherdump.engine.views.image import ImageNode, Namespace
    from cipherdump.engine.views.image_keyed import KeyedNamespace
    from cipherdump.ext4 import Filesystem
    from cipherdump.fscrypt.keys import KeyRing
    from cipherdump.fscrypt.protectors import FscryptMetadata

# The engine, the ext4 reader and the fscrypt key and cipher modules (and with them
# ``cryptography`` and ``argon2``) are imported inside the functions that use them, so
# that ``--help`` and key-less commands start without them.

F = TypeVar("F", bound=Callable[..., Any])

_PAIRED = re.compile(r"^([0-9A-Fa-f]{16}):(.+)$", re.DOTALL)


def key_options(fn: F) -> F:
    """Add ``--key FILE`` (repeatable), ``--key-dir DIR`` and the secret options (see
    :func:`secret_options`); the command gets them as one ``keying``
    (:class:`KeyOptions`)."""

    @functools.wraps(fn)
    def wrapper(
        *args: Any,
        keys: tuple[str, ...],
        key_dirs: tuple[str, ...],
        secrets: SecretOptions,
        **kwargs: Any,
    ) -> Any:
        return fn(*args, keying=KeyOptions(keys, key_dirs, secrets), **kwargs)

    out: Any = secret_options(wrapper)
    out = click.option(
        "--key-dir",
        "key_dirs",
        multiple=True,
        type=click.Path(file_okay=False, exists=True, path_type=str),
        help="Load every file in DIR as a master key (repeatable).",
    )(out)
    out = click.option(
        "--key",
        "keys",
        multiple=True,
        metavar="FILE",
        help=(
            "Master key file: raw bytes or hex (repeatable).  For a v1 policy whose "
            "descriptor is not derived from the key, pair them: --key DESCRIPTOR:FILE."
        ),
    )(out)
    return out  # type: ignore[no-any-return]


@dataclass
class LoadedKeys:
    _ring: KeyRing | None = None
    unverified: set[bytes] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)

    @property
    def ring(self) -> KeyRing:
        """The keys (created on first use: no key, no key module)."""
        if self._ring is None:
            from cipherdump.fscrypt.keys import KeyRing

            self._ring = KeyRing()
        return self._ring

    def __bool__(self) -> bool:
        return self._ring is not None and len(self._ring) > 0


def load_keys(keys: tuple[str, ...], key_dirs: tuple[str, ...]) -> LoadedKeys:
    """Every key given on the command line; :class:`KeyProblem` for an unusable one."""
    out = LoadedKeys()
    if not keys and not key_dirs:
        return out
    from cipherdump.fscrypt.keys import load_key_file

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
        render.warn(w)
    if not loaded:
        from cipherdump.engine.views.image import Namespace

        return Namespace(fs)
    from cipherdump.engine.views.image_keyed import KeyedNamespace

    return KeyedNamespace(fs, loaded.ring, unverified_descriptors=loaded.unverified)


def as_keyed(ns: Namespace) -> KeyedNamespace | None:
    """``ns`` if it decrypts with keys, else None.

    Without a key the keyed engine (and its ciphers) is never imported, and then no
    namespace can be a keyed one: the check does not import it either.
    """
    if "cipherdump.engine.views.image_keyed" not in sys.modules:
        return None
    from cipherdump.engine.views.image_keyed import KeyedNamespace

    return ns if isinstance(ns, KeyedNamespace) else None


def report_keys(ns: Namespace) -> None:
    """Warn about policies no given key matched and about keys that matched nothing."""
    keyed = as_keyed(ns)
    if keyed is None:
        return
    for policy in keyed.missing.values():
        render.warn(str(keyed.missing_key_error(policy)))
    for key in keyed.keyring:
        if key.identifier not in keyed.used:
            render.warn(
                f"key with identifier {key.identifier.hex()} "
                f"(v1 descriptor {key.descriptor.hex()}) decrypted nothing that was read"
            )


def keyed_stat_fields(ns: Namespace, node: ImageNode) -> dict[str, Any]:
    """Extra ``stat`` fields in keyed mode: was the name decrypted, is the key present."""
    keyed = as_keyed(ns)
    if keyed is None:
        return {}
    out: dict[str, Any] = {}
    if node.name_encrypted:
        out["name_decrypted"] = keyed.name_decrypted(node)
    if node.inode.is_encrypted:
        try:
            out["key_present"] = keyed.cipher_for(node.inode) is not None
        except CipherdumpError:  # an unreadable context is already shown in "context"
            out["key_present"] = False
    return out


# -- passphrases and protector keys -----------------------------------------------------------

ENV_PASSPHRASE = "CIPHERDUMP_FSCRYPT_PASSPHRASE"


@dataclass(frozen=True)
class SecretOptions:
    """``--passphrase``, ``--passphrase-file``, ``--protector-key``, ``--fscrypt-metadata``."""

    passphrase: bool = False
    passphrase_file: str | None = None
    protector_keys: tuple[str, ...] = ()
    fscrypt_metadata: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(
            self.passphrase
            or self.passphrase_file
            or self.protector_keys
            or os.environ.get(ENV_PASSPHRASE) is not None
        )


def secret_options(fn: F) -> F:
    """Add the passphrase and protector options; the command gets ``secrets``."""

    @functools.wraps(fn)
    def wrapper(
        *args: Any,
        passphrase: bool,
        passphrase_file: str | None,
        protector_keys: tuple[str, ...],
        fscrypt_metadata: tuple[str, ...],
        **kwargs: Any,
    ) -> Any:
        secrets = SecretOptions(passphrase, passphrase_file, protector_keys, fscrypt_metadata)
        return fn(*args, secrets=secrets, **kwargs)

    out: Any = wrapper
    out = click.option(
        "--fscrypt-metadata",
        "fscrypt_metadata",
        multiple=True,
        type=click.Path(file_okay=False, exists=True, path_type=str),
        help=(
            "Also read fscrypt protectors and policies from DIR (a .fscrypt directory or "
            "the root holding one), e.g. the root filesystem's for login protectors."
        ),
    )(out)
    out = click.option(
        "--protector-key",
        "protector_keys",
        multiple=True,
        metavar="FILE",
        help="A 32-byte raw key of an fscrypt raw_key protector (repeatable).",
    )(out)
    out = click.option(
        "--passphrase-file",
        type=click.Path(dir_okay=False, path_type=str),
        help=f"Read the fscrypt or e4crypt passphrase from FILE (or set {ENV_PASSPHRASE}).",
    )(out)
    out = click.option(
        "--passphrase",
        is_flag=True,
        help=(
            "Unlock with an fscrypt passphrase (custom or login protector in .fscrypt) or "
            "an e4crypt passphrase; asked for on the terminal."
        ),
    )(out)
    return out  # type: ignore[no-any-return]


class Unread:
    """The passphrase has not been read yet (a default that None cannot be)."""


UNREAD = Unread()


def read_passphrase(secrets: SecretOptions) -> bytes | None:
    """The passphrase: from ``--passphrase-file``, the environment, or a prompt."""
    from cipherdump.fscrypt.keys import MAX_SECRET_FILE, read_secret_file

    if secrets.passphrase_file:
        data = read_secret_file(secrets.passphrase_file, "passphrase file")
        # One trailing newline is the file's, not the passphrase's.
        return data[:-1] if data.endswith(b"\n") else data
    env = os.environb.get(ENV_PASSPHRASE.encode())
    if env is not None:
        if len(env) > MAX_SECRET_FILE:
            raise KeyProblem(f"{ENV_PASSPHRASE} is longer than {MAX_SECRET_FILE} bytes")
        return env
    if not secrets.passphrase:
        return None
    if not sys.stdin.isatty():
        # One line, read no further than a passphrase can be long (stdin may be endless).
        line = sys.stdin.buffer.readline(MAX_SECRET_FILE + 1)
        line = line[:-1] if line.endswith(b"\n") else line
        if len(line) > MAX_SECRET_FILE:
            raise KeyProblem(
                f"the passphrase on standard input is longer than {MAX_SECRET_FILE} bytes"
            )
        return line
    answer: str = click.prompt("fscrypt passphrase", hide_input=True, err=True)
    return os.fsencode(answer)


def add_secret_keys(
    loaded: LoadedKeys,
    secrets: SecretOptions,
    own_metadata: Callable[[], FscryptMetadata],
    *,
    e4crypt_salt: bytes | None = None,
    passphrase: bytes | Unread | None = UNREAD,
) -> None:
    """Unlock what ``secrets`` can unlock and add the master keys to ``loaded``.

    ``own_metadata`` reads the source's own ``.fscrypt`` (called only when needed);
    ``--fscrypt-metadata`` directories are added to it.  ``passphrase``: one read
    before with :func:`read_passphrase` (a command that unlocks many sources asks once).
    """
    if not secrets:
        return
    from cipherdump.engine.fscrypt_meta import metadata_from_dir, passphrase_keys

    metadata = own_metadata()
    for directory in secrets.fscrypt_metadata:
        metadata.merge(metadata_from_dir(directory))
    from cipherdump.fscrypt.keys import read_secret_file

    for path in secrets.protector_keys:
        raw = read_secret_file(path, "protector key")
        if len(raw) != 32:
            raise KeyProblem(f"protector key {path} holds {len(raw)} bytes; it must be 32")
        for key in metadata.keys_for_raw_key(raw):
            loaded.ring.add(key)
    if isinstance(passphrase, Unread):
        passphrase = read_passphrase(secrets)
    if passphrase is not None:
        keys, _notes = passphrase_keys(passphrase, metadata, e4crypt_salt=e4crypt_salt)
        for key in keys:
            loaded.ring.add(key)


def add_image_secrets(loaded: LoadedKeys, secrets: SecretOptions, fs: Filesystem) -> None:
    """``add_secret_keys`` for an image: its own ``/.fscrypt`` and e4crypt salt."""

    def own_metadata() -> FscryptMetadata:
        from cipherdump.engine.fscrypt_meta import metadata_from_image
        from cipherdump.engine.views.image import Namespace

        return metadata_from_image(Namespace(fs))

    add_secret_keys(
        loaded,
        secrets,
        own_metadata,
        e4crypt_salt=fs.sb.s_encrypt_pw_salt,
    )


@dataclass(frozen=True)
class KeyOptions:
    """What a command was given to unlock encrypted files: master keys and the secrets
    that unlock master keys (see :func:`key_options`)."""

    keys: tuple[str, ...] = ()
    key_dirs: tuple[str, ...] = ()
    secrets: SecretOptions = SecretOptions()

    def __bool__(self) -> bool:
        return bool(self.keys or self.key_dirs or self.secrets)

    def load(self) -> LoadedKeys:
        """The master keys given directly (secrets are unlocked against a source)."""
        return load_keys(self.keys, self.key_dirs)

    def refuse_for_snapshots(self) -> None:
        """For the commands that read a snapshot without keys (``ls``, ``stat``)."""
        if self.keys or self.key_dirs:
            raise click.UsageError("--key is not supported with a snapshot (a repository is given)")
        if self.secrets:
            raise click.UsageError(
                "--passphrase and --protector-key with a snapshot work for cat and restore only"
            )
