"""Repositories of each format version, and opening their objects without our code.

Version 1, the first format: a version-1 config (no cipher field), every object sealed
with ChaCha20-Poly1305, packs named by the BLAKE3 of all their bytes.  The current code
still reads such repositories and writes to them (ChaCha20-Poly1305, version-2 packs),
so tests make them as the first writers did, through explicit parameters (a version-1
:class:`RepoConfig`, version-1 packs), not with a copy of old code.  Version 2: what
``init`` makes now (AES-256-GCM, packs named by their tail).

:func:`open_sealed` opens a sealed object with ``cryptography`` and ``blake3`` alone,
following ``docs/repository-format.md`` §4, so that tests check the construction
against the contract and not only against itself.
"""

from __future__ import annotations

import io
import secrets

import blake3
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from cipherdump.repo import Backend, FileType, Handle, Id, KdfParams, Repository
from cipherdump.repo.config import DEFAULT_PACK_SIZE, RepoConfig, encode_config
from cipherdump.repo.crypto import Cipher, MasterKey, file_id
from cipherdump.repo.keyfile import encode_key_file

VERSIONS = [1, 2]
AEADS: dict[str, type[ChaCha20Poly1305] | type[AESGCM]] = {
    "chacha20-poly1305": ChaCha20Poly1305,
    "aes-256-gcm": AESGCM,
}
# The AEAD each format version seals repository objects with (§4.2, §6).
AEAD_OF_VERSION = {1: "chacha20-poly1305", 2: "aes-256-gcm"}


def init_repository(
    backend: Backend,
    password: bytes,
    *,
    version: int,
    kdf: KdfParams,
    pack_size: int = DEFAULT_PACK_SIZE,
) -> Repository:
    """A new, open repository of format ``version`` (1 or 2), writing packs of that
    version; the key file is saved before the config, as ``init`` does."""
    if version == 2:
        return Repository.init(backend, password, kdf=kdf, pack_size=pack_size)
    key = MasterKey.generate()
    key_file = encode_key_file(key, password, kdf)
    backend.save(Handle(FileType.KEY, file_id(key_file).hex), io.BytesIO(key_file))
    config = RepoConfig(Id(secrets.token_bytes(32)), pack_size, Cipher.CHACHA20_POLY1305, version=1)
    backend.save(Handle(FileType.CONFIG), io.BytesIO(encode_config(key, config)))
    return Repository(backend, key, config, lock=True, pack_version=1)


def encryption_key(material: bytes) -> bytes:
    """``K_enc`` of §4.1."""
    context = "cipherdump repository v1 object encryption key"
    return bytes(blake3.blake3(material, derive_key_context=context).digest(32))


def open_sealed(aead: str, material: bytes, sealed: bytes, aad: bytes) -> bytes:
    """Open ``seal(K_enc, plaintext, aad)`` (§4.2) with the AEAD named ``aead``; raises
    ``cryptography``'s ``InvalidTag`` if it does not open."""
    nonce = sealed[:24]
    subkey = blake3.blake3(nonce[:16], key=encryption_key(material)).digest(32)
    cipher = AEADS[aead](subkey)
    return cipher.decrypt(b"\0\0\0\0" + nonce[16:], sealed[24:], aad)
