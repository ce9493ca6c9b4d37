"""The ciphers behind fscrypt mode numbers, keyed and ready to run.

Contents ciphers work on whole data units, one IV per unit; names ciphers work on one
padded name with one IV.  Built by :func:`contents_cipher` and :func:`names_cipher`
from a mode number and its derived key (see :mod:`cipherdump.fscrypt.kdf`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from cipherdump.errors import UnsupportedError
from cipherdump.fscrypt.adiantum import Adiantum
from cipherdump.fscrypt.context import (
    Mode,
    contents_mode_implemented,
    filenames_mode_implemented,
    mode_name,
)
from cipherdump.fscrypt.cts import cts_cbc_decrypt, cts_cbc_encrypt
from cipherdump.fscrypt.hctr2 import HCTR2

__all__ = [
    "ContentsCipher",
    "NamesCipher",
    "contents_cipher",
    "contents_mode_implemented",
    "filenames_mode_implemented",
    "names_cipher",
]

# XTS needs one cipher context per data unit.  ``Cipher(...)`` re-validates the
# algorithm and mode in Python each time, which costs three times the AES work on a
# 4 KiB unit; the backend's context constructors (what ``Cipher.encryptor`` calls after
# that validation) are used directly when this version of cryptography has them.  The
# key and tweak were validated once already (``algorithms.AES``, ``modes.XTS``), and
# tests compare both paths.
try:
    from cryptography.hazmat.bindings._rust import openssl as _rust_openssl

    _XTS_CONTEXTS: tuple[Any, Any] | None = (
        _rust_openssl.ciphers.create_encryption_ctx,
        _rust_openssl.ciphers.create_decryption_ctx,
    )
except (ImportError, AttributeError):  # pragma: no cover - older or other builds
    _XTS_CONTEXTS = None


class ContentsCipher(Protocol):
    def crypt_units(
        self, ivs: Sequence[bytes], data: bytes | memoryview, unit_size: int, *, encrypt: bool
    ) -> bytes:
        """En- or decrypt ``len(ivs)`` consecutive data units of ``unit_size`` bytes."""
        ...


class NamesCipher(Protocol):
    def encrypt(self, iv: bytes, data: bytes) -> bytes: ...

    def decrypt(self, iv: bytes, data: bytes) -> bytes: ...


# Tests set this to check the public-API path against the fast one.
_FORCE_PUBLIC_API = False


class _XTSContents:
    """AES-256-XTS, one XTS message per data unit (mode 1)."""

    __slots__ = ("_algorithm",)

    def __init__(self, key: bytes) -> None:
        self._algorithm = algorithms.AES(key)

    def __repr__(self) -> str:
        return "AES-256-XTS(<key hidden>)"

    def crypt_units(
        self, ivs: Sequence[bytes], data: bytes | memoryview, unit_size: int, *, encrypt: bool
    ) -> bytes:
        view = memoryview(data)
        algorithm = self._algorithm
        out = []
        offset = 0
        # One cryptography context per unit: its C code does the work, the loop only
        # pays a small constant per unit.
        if _XTS_CONTEXTS is not None and not _FORCE_PUBLIC_API:
            make = _XTS_CONTEXTS[0 if encrypt else 1]
            for iv in ivs:
                out.append(make(algorithm, modes.XTS(iv)).update(view[offset : offset + unit_size]))
                offset += unit_size
            return b"".join(out)
        for iv in ivs:
            cipher = Cipher(algorithm, modes.XTS(iv))
            ctx = cipher.encryptor() if encrypt else cipher.decryptor()
            out.append(ctx.update(view[offset : offset + unit_size]))
            offset += unit_size
        return b"".join(out)


class _EssivContents:
    """AES-128-CBC with ESSIV: IV' = AES-256(SHA-256(key)) of the fscrypt IV (mode 5)."""

    __slots__ = ("_algorithm", "_essiv")

    def __init__(self, key: bytes) -> None:
        self._algorithm = algorithms.AES(key)
        import hashlib  # only here: it loads OpenSSL's libcrypto (see fscrypt.nokey)

        self._essiv = algorithms.AES(hashlib.sha256(key).digest())

    def __repr__(self) -> str:
        return "AES-128-CBC-ESSIV(<key hidden>)"

    def crypt_units(
        self, ivs: Sequence[bytes], data: bytes | memoryview, unit_size: int, *, encrypt: bool
    ) -> bytes:
        view = memoryview(data)
        ecb = Cipher(self._essiv, modes.ECB()).encryptor()
        real = ecb.update(b"".join(ivs)) + ecb.finalize()
        out = []
        for k in range(len(ivs)):
            cipher = Cipher(self._algorithm, modes.CBC(real[16 * k : 16 * k + 16]))
            ctx = cipher.encryptor() if encrypt else cipher.decryptor()
            out.append(ctx.update(view[k * unit_size : (k + 1) * unit_size]))
            out.append(ctx.finalize())
        return b"".join(out)


class _AdiantumContents:
    """Adiantum over each whole data unit with the 32-byte IV as tweak (mode 9)."""

    __slots__ = ("_adiantum",)

    def __init__(self, key: bytes) -> None:
        self._adiantum = Adiantum(key)

    def __repr__(self) -> str:
        return "Adiantum(<key hidden>)"

    def crypt_units(
        self, ivs: Sequence[bytes], data: bytes | memoryview, unit_size: int, *, encrypt: bool
    ) -> bytes:
        view = memoryview(data)
        run = self._adiantum.encrypt if encrypt else self._adiantum.decrypt
        return b"".join(
            run(iv, bytes(view[k * unit_size : (k + 1) * unit_size])) for k, iv in enumerate(ivs)
        )


class _CtsNames:
    """AES-CBC-CTS (CS3) with a 16- or 32-byte key (modes 4 and 6)."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        self._key = key

    def __repr__(self) -> str:
        return f"AES-{8 * len(self._key)}-CTS(<key hidden>)"

    def encrypt(self, iv: bytes, data: bytes) -> bytes:
        return cts_cbc_encrypt(self._key, iv, data)

    def decrypt(self, iv: bytes, data: bytes) -> bytes:
        return cts_cbc_decrypt(self._key, iv, data)


def contents_cipher(mode: int, key: bytes) -> ContentsCipher:
    if mode == Mode.AES_256_XTS:
        return _XTSContents(key)
    if mode == Mode.AES_128_CBC:
        return _EssivContents(key)
    if mode == Mode.ADIANTUM:
        return _AdiantumContents(key)
    raise UnsupportedError(f"contents mode {mode_name(mode)} is not implemented")


def names_cipher(mode: int, key: bytes) -> NamesCipher:
    if mode in (Mode.AES_256_CTS, Mode.AES_128_CTS):
        return _CtsNames(key)
    if mode == Mode.AES_256_HCTR2:
        return HCTR2(key)
    if mode == Mode.ADIANTUM:
        return Adiantum(key)
    raise UnsupportedError(f"filenames mode {mode_name(mode)} is not implemented")
