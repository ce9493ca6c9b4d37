"""Finding the google/fscrypt tool's metadata, and the keys a passphrase opens.

The tool keeps ``.fscrypt/protectors`` and ``.fscrypt/policies`` at the root of each
filesystem.  They are unencrypted files, so they are read from an image (without any
key), from a snapshot (backed up with the rest), or from a directory given by the user
(``--fscrypt-metadata``: a ``.fscrypt`` directory or the root that holds one, for
protectors kept on another filesystem, such as login protectors on ``/``).

:func:`passphrase_keys` turns one passphrase into master keys: every passphrase
protector that accepts it unlocks the policy keys it protects, and where the filesystem
has an e4crypt salt the e4crypt key of the passphrase is added too.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from cipherdump.engine.views.image import Namespace
from cipherdump.engine.views.snapshot import SnapshotView
from cipherdump.errors import CipherdumpError, KeyProblem
from cipherdump.ext4.inode import InodeType
from cipherdump.fscrypt.e4crypt import e4crypt_master_key
from cipherdump.fscrypt.keys import MasterKey
from cipherdump.fscrypt.protectors import FscryptMetadata

__all__ = [
    "metadata_from_dir",
    "metadata_from_image",
    "metadata_from_snapshot",
    "passphrase_keys",
]

# Metadata files are a few hundred bytes; anything much larger is not one.
_MAX_FILE = 1 << 20
_SUBDIRS = ("protectors", "policies")


def _collect(list_dir: Callable[[str], dict[str, bytes]]) -> FscryptMetadata:
    found = {sub: list_dir(sub) for sub in _SUBDIRS}
    return FscryptMetadata.decode(found["protectors"], found["policies"])


def metadata_from_image(ns: Namespace) -> FscryptMetadata:
    """``/.fscrypt`` of an image (empty when there is none)."""

    def list_dir(sub: str) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        try:
            directory = ns.resolve(b"/.fscrypt/" + sub.encode())
            kids = ns.children(directory) if directory.inode.is_dir else []
        except CipherdumpError:
            return out
        for kid in kids:
            inode = kid.inode
            if inode.is_encrypted or inode.type is not InodeType.FILE or inode.size > _MAX_FILE:
                continue
            out[kid.name.decode("utf-8", "replace")] = inode.read(0, inode.size)
        return out

    return _collect(list_dir)


def metadata_from_snapshot(view: SnapshotView) -> FscryptMetadata:
    """``/.fscrypt`` as backed up in a snapshot (empty when it was not backed up)."""

    def list_dir(sub: str) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        try:
            directory = view.resolve(b"/.fscrypt/" + sub.encode())
            kids = view.children(directory) if directory.is_dir else []
        except CipherdumpError:
            return out
        for kid in kids:
            size = kid.attrs.get("size")
            if kid.kind != "file" or kid.is_encrypted or kid.problem or not isinstance(size, int):
                continue
            if size > _MAX_FILE:
                continue
            out[kid.name.decode("utf-8", "replace")] = b"".join(view.iter_stored(kid, size))
        return out

    return _collect(list_dir)


def metadata_from_dir(path: str | os.PathLike[str]) -> FscryptMetadata:
    """A ``.fscrypt`` directory on this machine, or a directory that holds one."""
    root = os.fspath(path)
    if not os.path.isdir(os.path.join(root, "protectors")) and os.path.isdir(
        os.path.join(root, ".fscrypt")
    ):
        root = os.path.join(root, ".fscrypt")
    if not any(os.path.isdir(os.path.join(root, s)) for s in _SUBDIRS):
        raise KeyProblem(f"{root}: no fscrypt metadata (protectors/ or policies/) there")

    def list_dir(sub: str) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        directory = os.path.join(root, sub)
        try:
            names = sorted(os.listdir(directory))
        except FileNotFoundError:
            return out
        except OSError as exc:
            raise KeyProblem(f"cannot read {directory}: {exc.strerror}") from None
        for name in names:
            full = os.path.join(directory, name)
            if not os.path.isfile(full):
                continue
            try:
                with open(full, "rb") as f:
                    data = f.read(_MAX_FILE + 1)  # bounded even if the file grows meanwhile
            except OSError as exc:
                raise KeyProblem(f"cannot read {full}: {exc.strerror}") from None
            if len(data) <= _MAX_FILE:
                out[name] = data
        return out

    return _collect(list_dir)


def passphrase_keys(
    passphrase: bytes,
    metadata: FscryptMetadata,
    *,
    e4crypt_salt: bytes | None = None,
    v1_descriptors: frozenset[bytes] | None = None,
) -> tuple[list[MasterKey], list[str]]:
    """The master keys ``passphrase`` gives, and notes on how (for messages).

    Passphrase protectors of the fscrypt tool come first; a wrong passphrase for them is
    a :class:`KeyProblem` unless the e4crypt derivation gives a key.  With
    ``e4crypt_salt`` (the superblock's ``s_encrypt_pw_salt``), the e4crypt key is added
    when ``v1_descriptors`` is unknown (None) or holds its descriptor.
    """
    keys: list[MasterKey] = []
    notes: list[str] = []
    failure: KeyProblem | None = None
    if metadata.passphrase_protectors():
        try:
            got = metadata.keys_for_passphrase(passphrase)
        except KeyProblem as err:
            failure = err
        else:
            keys.extend(got)
            notes.append(
                "fscrypt passphrase protector unlocked policies "
                + ", ".join(k.identifier.hex() for k in got)
            )
    if e4crypt_salt is not None and any(e4crypt_salt):
        key = e4crypt_master_key(passphrase, e4crypt_salt)
        if v1_descriptors is None or key.descriptor in v1_descriptors:
            keys.append(key)
            notes.append(f"e4crypt passphrase key, v1 descriptor {key.descriptor.hex()}")
        elif failure is None and not keys:
            failure = KeyProblem(
                f"wrong passphrase: its e4crypt key has descriptor {key.descriptor.hex()}, "
                "which no v1 policy here uses"
            )
    if keys:
        return keys, notes
    if failure is not None:
        raise failure
    raise KeyProblem(
        "a passphrase was given but there is nothing it can unlock: "
        + metadata.describe_missing("passphrase")
        + "; and the filesystem has no e4crypt salt"
    )
