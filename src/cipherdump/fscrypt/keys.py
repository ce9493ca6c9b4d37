"""Master keys: the trust boundary of cipherdump.

A :class:`MasterKey` is the only object that holds raw fscrypt master-key bytes.  It
offers the two key-derivation primitives fscrypt builds on (HKDF-SHA512 for v2 policies,
AES-128-ECB "nonce as key" for v1) and the two names a key is known by (the v2 key
identifier, the v1 descriptor convention), but never hands out the raw bytes and never
shows them in ``repr``.

A :class:`KeyRing` holds the keys a user supplied and picks the right one for a
:class:`~cipherdump.fscrypt.context.Policy`.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import os
import string
from collections.abc import Iterable, Iterator
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from cipherdump.errors import KeyProblem
from cipherdump.fscrypt.context import V1_DESCRIPTOR_SIZE, V2_IDENTIFIER_SIZE, Policy

__all__ = [
    "MAX_KEY_SIZE",
    "MIN_KEY_SIZE",
    "KeyRing",
    "MasterKey",
    "check_key",
    "load_key_file",
]

MIN_KEY_SIZE = 16  # uapi FSCRYPT_MIN_KEY_SIZE
MAX_KEY_SIZE = 64  # uapi FSCRYPT_MAX_KEY_SIZE

HKDF_CONTEXT_KEY_IDENTIFIER = 1
_HKDF_INFO_PREFIX = b"fscrypt\0"
_HEX_DIGITS = frozenset(string.hexdigits.encode())


class MasterKey:
    """A raw fscrypt master key of 16 to 64 bytes.

    Equality is constant-time over the raw bytes; ``repr`` shows only the identifier.
    """

    __slots__ = ("_descriptor", "_identifier", "_prk", "_raw")

    def __init__(self, raw: bytes) -> None:
        raw = bytes(raw)
        if not MIN_KEY_SIZE <= len(raw) <= MAX_KEY_SIZE:
            raise KeyProblem(
                f"a master key is {MIN_KEY_SIZE} to {MAX_KEY_SIZE} bytes, got {len(raw)}"
            )
        self._raw = raw
        # RFC 5869 Extract with no salt means an all-zero salt of the hash length; fscrypt
        # (fs/crypto/hkdf.c) uses exactly that, so the PRK is computed once per key.
        self._prk = hmac.new(b"\0" * 64, raw, "sha512").digest()
        self._identifier: bytes | None = None
        self._descriptor: bytes | None = None

    @classmethod
    def from_hex(cls, text: str) -> MasterKey:
        """A key from hex digits (whitespace ignored)."""
        try:
            raw = bytes.fromhex("".join(text.split()))
        except ValueError:
            raise KeyProblem("master key is not valid hex") from None
        return cls(raw)

    @property
    def size(self) -> int:
        return len(self._raw)

    @property
    def identifier(self) -> bytes:
        """The v2 key identifier: HKDF context 1, 16 bytes (what ADD_KEY returns)."""
        if self._identifier is None:
            self._identifier = self.hkdf(HKDF_CONTEXT_KEY_IDENTIFIER, b"", V2_IDENTIFIER_SIZE)
        return self._identifier

    @property
    def descriptor(self) -> bytes:
        """The conventional v1 descriptor: SHA-512(SHA-512(key))[:8].

        e4crypt and fscrypt(1) use this; the kernel never checks it, so a v1 policy may
        name any 8 bytes (see :meth:`KeyRing.pair`).
        """
        if self._descriptor is None:
            inner = hashlib.sha512(self._raw).digest()
            self._descriptor = hashlib.sha512(inner).digest()[:V1_DESCRIPTOR_SIZE]
        return self._descriptor

    def hkdf(self, context: int, info: bytes, length: int) -> bytes:
        """HKDF-SHA512-Expand with info ``"fscrypt\\0" || context || info`` (v2 policies)."""
        full_info = _HKDF_INFO_PREFIX + bytes([context]) + info
        return HKDFExpand(hashes.SHA512(), length, full_info).derive(self._prk)

    def v1_derive(self, nonce: bytes, length: int) -> bytes:
        """The v1 per-file key: AES-128-ECB over ``key[:length]`` with the nonce as AES key."""
        self.require_size(length, "this v1 policy")
        encryptor = Cipher(algorithms.AES(bytes(nonce)), modes.ECB()).encryptor()
        return encryptor.update(self._raw[:length]) + encryptor.finalize()

    def v1_direct(self, length: int) -> bytes:
        """The v1 DIRECT_KEY encryption key: the first ``length`` bytes of the master key."""
        self.require_size(length, "this v1 DIRECT_KEY policy")
        return self._raw[:length]

    def require_size(self, needed: int, what: str) -> None:
        if len(self._raw) < needed:
            raise KeyProblem(
                f"master key {self.label()} has {len(self._raw)} bytes, {what} needs {needed}"
            )

    def matches(self, policy: Policy) -> bool:
        """Whether this key is the one ``policy`` names (v1: by the descriptor convention)."""
        wanted = self.identifier if policy.version == 2 else self.descriptor
        return hmac.compare_digest(wanted, policy.key_spec)

    def label(self) -> str:
        """A short public name for messages: the identifier's hex (never key bytes)."""
        return self.identifier.hex()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MasterKey):
            return NotImplemented
        return hmac.compare_digest(self._raw, other._raw)

    def __hash__(self) -> int:
        return hash(self.identifier)

    def __repr__(self) -> str:
        return f"MasterKey(identifier={self.identifier.hex()}, size={len(self._raw)})"

    def __reduce__(self) -> str | tuple[object, ...]:
        # Pickling would copy key bytes out of the trust boundary.
        raise TypeError("MasterKey cannot be pickled")


# Key, passphrase and protector files hold a few dozen bytes.  Reading one stops past
# this many, so that a wrong file (a disk image, /dev/zero) is refused at once instead of
# read into memory without end.
MAX_SECRET_FILE = 4096


def read_secret_file(path: str | os.PathLike[str], what: str) -> bytes:
    """The bytes of a small file of secret material (``what`` names it in messages);
    :class:`KeyProblem` if it cannot be read or holds more than
    :data:`MAX_SECRET_FILE` bytes.  Pipes work (``--key <(command)``); a FIFO no
    process writes to reads as empty instead of waiting for ever."""
    try:
        # O_NONBLOCK only for the open, which would wait for a FIFO's writer: then a
        # read waits for data while a writer is there and sees the end when none is.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        with open(fd, "rb") as f:
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
            data = f.read(MAX_SECRET_FILE + 1)
    except OSError as exc:
        raise KeyProblem(f"cannot read {what} {os.fsdecode(path)}: {exc.strerror or exc}") from None
    if len(data) > MAX_SECRET_FILE:
        raise KeyProblem(
            f"{what} {os.fsdecode(path)} is larger than {MAX_SECRET_FILE} bytes: not a {what}"
        )
    return data


def load_key_file(path: str | os.PathLike[str]) -> MasterKey:
    """Read a master key from a file of raw bytes or of hex text.

    A file whose content (surrounding whitespace ignored) is an even number of hex digits
    is read as hex; anything else is taken as the raw key.  Either way the key must be 16
    to 64 bytes.
    """
    p = Path(path)
    data = read_secret_file(p, "key file")
    text = data.strip()
    if text and len(text) % 2 == 0 and all(c in _HEX_DIGITS for c in text):
        raw = bytes.fromhex(text.decode("ascii"))
        form = "hex"
    else:
        raw = data
        form = "raw"
    if not MIN_KEY_SIZE <= len(raw) <= MAX_KEY_SIZE:
        raise KeyProblem(
            f"key file {p} holds {len(raw)} bytes ({form}); "
            f"a master key is {MIN_KEY_SIZE} to {MAX_KEY_SIZE} bytes"
        )
    return MasterKey(raw)


class KeyRing:
    """Master keys a user supplied, looked up by the key spec in a policy.

    v2 policies name their key by identifier, which is computed from the key, so the
    lookup is exact.  v1 descriptors are whatever the tool that set the policy chose;
    keys are found by the SHA-512(SHA-512(key)) convention or by an explicit
    :meth:`pair`.
    """

    def __init__(self, keys: Iterable[MasterKey] = ()) -> None:
        self._by_identifier: dict[bytes, MasterKey] = {}
        self._by_descriptor: dict[bytes, MasterKey] = {}
        for key in keys:
            self.add(key)

    def add(self, key: MasterKey) -> None:
        self._by_identifier[key.identifier] = key
        self._by_descriptor.setdefault(key.descriptor, key)

    def pair(self, descriptor: bytes, key: MasterKey) -> None:
        """Use ``key`` for v1 policies naming ``descriptor`` (overrides the convention)."""
        if len(descriptor) != V1_DESCRIPTOR_SIZE:
            raise KeyProblem(f"a v1 key descriptor is 8 bytes, got {len(descriptor)}")
        self._by_identifier.setdefault(key.identifier, key)
        self._by_descriptor[bytes(descriptor)] = key

    def find(self, policy: Policy) -> MasterKey | None:
        table = self._by_identifier if policy.version == 2 else self._by_descriptor
        return table.get(policy.key_spec)

    def key_for(self, policy: Policy) -> MasterKey:
        """The key for ``policy``, or :class:`KeyProblem` naming the missing key spec."""
        key = self.find(policy)
        if key is None:
            kind = "identifier" if policy.version == 2 else "descriptor"
            raise KeyProblem(f"no key for policy v{policy.version} {kind} {policy.key_spec.hex()}")
        return key

    def __len__(self) -> int:
        return len(self._by_identifier)

    def __iter__(self) -> Iterator[MasterKey]:
        return iter(self._by_identifier.values())

    def __repr__(self) -> str:
        return f"KeyRing({len(self)} keys)"


def check_key(key: MasterKey, policy: Policy) -> None:
    """Raise :class:`KeyProblem` when a v2 ``policy`` names a different key than ``key``.

    v1 policies cannot be checked (descriptors are arbitrary); they pass.
    """
    if policy.version == 2 and not key.matches(policy):
        raise KeyProblem(
            f"key does not match: identifier {key.identifier.hex()}, "
            f"policy wants {policy.key_spec.hex()}"
        )
