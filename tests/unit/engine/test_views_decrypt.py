"""views/decrypt.InodeCiphers: one cipher (or error) per inode, made once, within a
named bound."""

from __future__ import annotations

import pytest

from cipherdump.engine.views import decrypt
from cipherdump.engine.views.decrypt import InodeCiphers
from cipherdump.errors import CorruptError, KeyProblem
from cipherdump.fscrypt.context import EncryptionContext
from cipherdump.fscrypt.keys import KeyRing


def _ciphers() -> InodeCiphers:
    return InodeCiphers(
        KeyRing(),
        block_size=4096,
        fs_uuid=None,
        missing_error=lambda policy: KeyProblem(f"no key for {policy.describe()}"),
    )


def test_an_inode_context_is_decoded_once_and_its_error_kept() -> None:
    ciphers = _ciphers()
    calls: list[int] = []

    def context() -> EncryptionContext:
        calls.append(1)
        raise CorruptError("bad context")

    first = ciphers.get(12, context)
    assert isinstance(first, CorruptError)
    assert ciphers.get(12, context) is first
    assert calls == [1]


def test_the_cache_starts_over_at_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decrypt, "CIPHER_CACHE_SIZE", 3)
    ciphers = _ciphers()
    made: list[int] = []

    def context_of(ino: int) -> EncryptionContext:
        made.append(ino)
        raise CorruptError(f"inode {ino}")

    for ino in (1, 2, 3):
        ciphers.get(ino, lambda ino=ino: context_of(ino))
    ciphers.get(4, lambda: context_of(4))  # the bound is reached: start over
    ciphers.get(1, lambda: context_of(1))  # so inode 1 is made again
    assert made == [1, 2, 3, 4, 1]
