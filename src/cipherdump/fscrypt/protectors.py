"""The metadata of the google/fscrypt tool: protectors and policies, and unlocking them.

``fscrypt setup`` keeps, at the root of each filesystem, ``.fscrypt/protectors/<descriptor>``
and ``.fscrypt/policies/<key descriptor>``: small protobuf messages (proto3, schema
``metadata/metadata.proto`` of github.com/google/fscrypt).  Their fields, by number::

    WrappedKeyData   1 IV (16 bytes)   2 encrypted_key   3 hmac (32 bytes)
    HashingCosts     2 time  3 memory (KiB)  4 parallelism  5 truncation_fixed
    ProtectorData    1 protector_descriptor (hex)  2 source  3 name  4 costs (HashingCosts)
                     5 salt (16 bytes)  6 uid  7 wrapped_key (WrappedKeyData)
    PolicyData       1 key_descriptor (hex: v1 descriptor or v2 identifier)
                     2 options  3 wrapped_policy_keys (repeated WrappedPolicyKey)
    WrappedPolicyKey 1 protector_descriptor  2 wrapped_key (WrappedKeyData)

``source``: 1 login passphrase (``pam_passphrase``), 2 custom passphrase, 3 raw key.

A protector's secret (a 32-byte raw key, or Argon2id(passphrase, salt, costs) of 32
bytes) unwraps the protector key; the protector key unwraps the policy's master key.
Unwrapping is Encrypt-then-MAC: HKDF-SHA256 (no salt, no info) of the wrapping key
gives 64 bytes, an AES-256-CTR key and an HMAC-SHA256 key; the HMAC over
``IV || encrypted_key`` must match before AES-256-CTR with the IV decrypts.  So a
wrong passphrase is detected for certain, and it is reported as
:class:`~cipherdump.errors.KeyProblem`, never as a garbage key.

This module is our own reading of that format (a tiny protobuf wire decoder for the
five messages above); it takes bytes and returns :class:`MasterKey` objects, knowing
nothing of where the files came from.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from argon2.low_level import Type, hash_secret_raw
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cipherdump.errors import CorruptError, KeyProblem, UnsupportedError
from cipherdump.fscrypt.keys import MasterKey

__all__ = [
    "SOURCE_CUSTOM_PASSPHRASE",
    "SOURCE_PAM_PASSPHRASE",
    "SOURCE_RAW_KEY",
    "FscryptMetadata",
    "HashingCosts",
    "PolicyData",
    "ProtectorData",
    "WrappedKey",
    "decode_policy",
    "decode_protector",
    "passphrase_hash",
    "unwrap_key",
]

SOURCE_PAM_PASSPHRASE = 1
SOURCE_CUSTOM_PASSPHRASE = 2
SOURCE_RAW_KEY = 3
SOURCE_NAMES = {
    SOURCE_PAM_PASSPHRASE: "login passphrase",
    SOURCE_CUSTOM_PASSPHRASE: "custom passphrase",
    SOURCE_RAW_KEY: "raw key",
}

INTERNAL_KEY_SIZE = 32  # every wrapping key and protector key
_IV_SIZE = 16
_SALT_SIZE = 16
_HMAC_SIZE = 32
# Argon2id costs beyond these are not something fscrypt would write; refusing them
# keeps a damaged or hostile metadata file from asking for terabytes of memory.
_MAX_MEMORY_KIB = 1 << 24
_MAX_TIME = 1 << 16

# -- protobuf wire format ------------------------------------------------------------------

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5

Fields = dict[int, list[int | bytes]]


def _varint(data: bytes, pos: int, what: str) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise CorruptError("truncated or overlong varint", structure=what)
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value & 0xFFFFFFFFFFFFFFFF, pos


def _decode_fields(data: bytes, what: str) -> Fields:
    """Every field of one message: number -> values in order (varints as unsigned ints,
    length-delimited fields as bytes).  Fixed-width fields are skipped (none is used)."""
    out: Fields = {}
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos, what)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise CorruptError("field number 0", structure=what)
        if wire == _VARINT:
            value, pos = _varint(data, pos, what)
            out.setdefault(number, []).append(value)
        elif wire == _LEN:
            length, pos = _varint(data, pos, what)
            if pos + length > len(data):
                raise CorruptError("field runs past the end", structure=what)
            out.setdefault(number, []).append(bytes(data[pos : pos + length]))
            pos += length
        elif wire == _I64:
            pos += 8
        elif wire == _I32:
            pos += 4
        else:
            raise CorruptError(f"unsupported wire type {wire}", structure=what)
        if pos > len(data):
            raise CorruptError("field runs past the end", structure=what)
    return out


def _int(fields: Fields, number: int, *, signed: bool = True) -> int:
    values = fields.get(number)
    if not values or not isinstance(values[-1], int):
        return 0
    value = values[-1]
    if signed and value >= 1 << 63:
        value -= 1 << 64  # int64 on the wire is two's complement
    return value


def _bytes(fields: Fields, number: int) -> bytes:
    values = fields.get(number)
    if not values or not isinstance(values[-1], bytes):
        return b""
    return values[-1]


def _text(fields: Fields, number: int, what: str) -> str:
    try:
        return _bytes(fields, number).decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptError("a string field is not UTF-8", structure=what) from None


# -- messages ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WrappedKey:
    """A key wrapped by another: IV, ciphertext and HMAC (``WrappedKeyData``)."""

    iv: bytes
    encrypted_key: bytes
    hmac: bytes

    @classmethod
    def decode(cls, data: bytes, what: str) -> WrappedKey:
        f = _decode_fields(data, what)
        key = cls(_bytes(f, 1), _bytes(f, 2), _bytes(f, 3))
        if len(key.iv) != _IV_SIZE or len(key.hmac) != _HMAC_SIZE or not key.encrypted_key:
            raise CorruptError("bad wrapped key (IV, key or HMAC size)", structure=what)
        return key


@dataclass(frozen=True, slots=True)
class HashingCosts:
    """Argon2id costs: passes, memory in KiB and lanes, as the tool stored them."""

    time: int
    memory: int
    parallelism: int
    truncation_fixed: bool = True

    @property
    def lanes(self) -> int:
        """The parallelism Argon2id really ran with.

        Old versions of the tool passed parallelism through an 8-bit integer; metadata
        written then (``truncation_fixed`` false) keeps the wider value, and the tool
        still hashes with the low 8 bits when those are not zero.
        """
        if not self.truncation_fixed and self.parallelism & 0xFF:
            return self.parallelism & 0xFF
        return self.parallelism


@dataclass(frozen=True, slots=True)
class ProtectorData:
    descriptor: str
    source: int
    name: str
    costs: HashingCosts | None
    salt: bytes
    uid: int
    wrapped_key: WrappedKey

    @property
    def source_name(self) -> str:
        return SOURCE_NAMES.get(self.source, f"source {self.source}")

    @property
    def is_passphrase(self) -> bool:
        return self.source in (SOURCE_PAM_PASSPHRASE, SOURCE_CUSTOM_PASSPHRASE)

    def describe(self) -> str:
        label = f' "{self.name}"' if self.name else ""
        if self.source == SOURCE_PAM_PASSPHRASE:
            label = f" of uid {self.uid}"
        return f"protector {self.descriptor} ({self.source_name}{label})"


@dataclass(frozen=True, slots=True)
class PolicyData:
    key_descriptor: str
    wrapped_keys: tuple[tuple[str, WrappedKey], ...] = field(default=())

    @property
    def key_spec(self) -> bytes:
        """The v1 descriptor (8 bytes) or v2 identifier (16 bytes) the policy names."""
        try:
            return bytes.fromhex(self.key_descriptor)
        except ValueError:
            return b""


def decode_protector(data: bytes, where: str = "protector") -> ProtectorData:
    """A ``ProtectorData`` message (:class:`CorruptError` when it is not one)."""
    f = _decode_fields(data, where)
    wrapped = _bytes(f, 7)
    if not wrapped:
        raise CorruptError("protector has no wrapped key", structure=where)
    costs_raw = f.get(4)
    costs = None
    if costs_raw and isinstance(costs_raw[-1], bytes):
        c = _decode_fields(costs_raw[-1], where + " hashing costs")
        costs = HashingCosts(_int(c, 2), _int(c, 3), _int(c, 4), bool(_int(c, 5)))
    return ProtectorData(
        descriptor=_text(f, 1, where),
        source=_int(f, 2),
        name=_text(f, 3, where),
        costs=costs,
        salt=_bytes(f, 5),
        uid=_int(f, 6),
        wrapped_key=WrappedKey.decode(wrapped, where + " wrapped key"),
    )


def decode_policy(data: bytes, where: str = "policy") -> PolicyData:
    """A ``PolicyData`` message (:class:`CorruptError` when it is not one)."""
    f = _decode_fields(data, where)
    wrapped: list[tuple[str, WrappedKey]] = []
    for item in f.get(3, []):
        if not isinstance(item, bytes):
            raise CorruptError("bad wrapped policy key", structure=where)
        w = _decode_fields(item, where + " wrapped policy key")
        inner = _bytes(w, 2)
        if not inner:
            raise CorruptError("wrapped policy key is empty", structure=where)
        wrapped.append((_text(w, 1, where), WrappedKey.decode(inner, where + " wrapped key")))
    return PolicyData(_text(f, 1, where), tuple(wrapped))


# -- crypto --------------------------------------------------------------------------------


def unwrap_key(wrapping_key: bytes, wrapped: WrappedKey) -> bytes | None:
    """The key inside ``wrapped``, or None when ``wrapping_key`` is not the one (HMAC)."""
    if len(wrapping_key) != INTERNAL_KEY_SIZE:
        raise KeyProblem(f"a wrapping key is {INTERNAL_KEY_SIZE} bytes, got {len(wrapping_key)}")
    stretched = HKDF(hashes.SHA256(), 2 * INTERNAL_KEY_SIZE, None, None).derive(wrapping_key)
    enc_key, auth_key = stretched[:INTERNAL_KEY_SIZE], stretched[INTERNAL_KEY_SIZE:]
    tag = hmac.new(auth_key, wrapped.iv + wrapped.encrypted_key, "sha256").digest()
    if not hmac.compare_digest(tag, wrapped.hmac):
        return None
    dec = Cipher(algorithms.AES(enc_key), modes.CTR(wrapped.iv)).decryptor()
    return dec.update(wrapped.encrypted_key) + dec.finalize()


def passphrase_hash(passphrase: bytes, salt: bytes, costs: HashingCosts) -> bytes:
    """The 32-byte wrapping key of a passphrase protector: Argon2id v1.3."""
    if len(salt) != _SALT_SIZE:
        raise CorruptError(f"passphrase salt is {len(salt)} bytes, not {_SALT_SIZE}")
    lanes = costs.lanes
    if not (
        0 < costs.time <= _MAX_TIME
        and 0 < lanes < 1 << 24
        and 8 * lanes <= costs.memory <= _MAX_MEMORY_KIB
    ):
        raise UnsupportedError(
            f"unusable Argon2id costs (time {costs.time}, memory {costs.memory} KiB, "
            f"parallelism {costs.parallelism})"
        )
    return hash_secret_raw(
        passphrase,
        salt,
        time_cost=costs.time,
        memory_cost=costs.memory,
        parallelism=lanes,
        hash_len=INTERNAL_KEY_SIZE,
        type=Type.ID,
        version=19,
    )


# -- a filesystem's metadata ---------------------------------------------------------------


@dataclass
class FscryptMetadata:
    """The protectors and policies of one ``.fscrypt`` directory, by descriptor.

    Files that do not decode are kept in ``problems`` (name -> message) rather than
    stopping the others from being used.
    """

    protectors: dict[str, ProtectorData] = field(default_factory=dict)
    policies: dict[str, PolicyData] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)

    @classmethod
    def decode(
        cls, protectors: Mapping[str, bytes], policies: Mapping[str, bytes]
    ) -> FscryptMetadata:
        """From file name -> contents of ``protectors/`` and ``policies/``.

        ``.link`` files (protectors kept on another filesystem, such as login
        protectors on ``/``) are noted as problems: give that filesystem's metadata too.
        """
        out = cls()
        for name, data in sorted(protectors.items()):
            if name.endswith(".link"):
                out.problems[name] = (
                    "protector is linked from another filesystem's .fscrypt "
                    f"({data.strip().decode('utf-8', 'replace')}); give that metadata too"
                )
                continue
            try:
                p = decode_protector(data, f"protector {name}")
            except CorruptError as err:
                out.problems[name] = str(err)
                continue
            out.protectors[p.descriptor or name] = p
        for name, data in sorted(policies.items()):
            try:
                pol = decode_policy(data, f"policy {name}")
            except CorruptError as err:
                out.problems[name] = str(err)
                continue
            out.policies[pol.key_descriptor or name] = pol
        return out

    def merge(self, other: FscryptMetadata) -> None:
        for k, p in other.protectors.items():
            self.protectors.setdefault(k, p)
        for k, pol in other.policies.items():
            self.policies.setdefault(k, pol)
        for k, msg in other.problems.items():
            self.problems.setdefault(k, msg)

    def __bool__(self) -> bool:
        return bool(self.protectors or self.policies)

    def passphrase_protectors(self) -> list[ProtectorData]:
        return [p for p in self.protectors.values() if p.is_passphrase]

    def raw_key_protectors(self) -> list[ProtectorData]:
        return [p for p in self.protectors.values() if p.source == SOURCE_RAW_KEY]

    # -- unlocking ---------------------------------------------------------------------
    def unlock_protector(self, protector: ProtectorData, secret: bytes) -> bytes | None:
        """The protector key, or None when ``secret`` is not this protector's.

        ``secret`` is the passphrase (passphrase protectors) or the 32-byte key.
        """
        if protector.is_passphrase:
            if protector.costs is None:
                raise CorruptError(
                    "passphrase protector has no hashing costs", structure=protector.describe()
                )
            wrapping = passphrase_hash(secret, protector.salt, protector.costs)
        elif protector.source == SOURCE_RAW_KEY:
            if len(secret) != INTERNAL_KEY_SIZE:
                return None
            wrapping = secret
        else:
            raise UnsupportedError(f"{protector.describe()}: unknown protector source")
        key = unwrap_key(wrapping, protector.wrapped_key)
        if key is None or len(key) != INTERNAL_KEY_SIZE:
            return None
        return key

    def policy_keys(self, protector: ProtectorData, protector_key: bytes) -> Iterator[MasterKey]:
        """Every policy key ``protector`` (unlocked to ``protector_key``) protects."""
        for policy in self.policies.values():
            for descriptor, wrapped in policy.wrapped_keys:
                if descriptor != protector.descriptor:
                    continue
                raw = unwrap_key(protector_key, wrapped)
                if raw is None:
                    raise KeyProblem(
                        f"{protector.describe()} does not unwrap policy "
                        f"{policy.key_descriptor} (damaged metadata)"
                    )
                key = MasterKey(raw)
                if policy.key_spec not in (key.identifier, key.descriptor):
                    raise KeyProblem(
                        f"policy {policy.key_descriptor}: the unwrapped key has identifier "
                        f"{key.identifier.hex()} (damaged metadata)"
                    )
                yield key

    def keys_for_passphrase(self, passphrase: bytes) -> list[MasterKey]:
        """The policy keys every passphrase protector that accepts ``passphrase`` holds.

        :class:`KeyProblem` when there is no passphrase protector, or none accepts it.
        """
        candidates = self.passphrase_protectors()
        if not candidates:
            raise KeyProblem(self.describe_missing("passphrase"))
        return self._unlock_any(candidates, passphrase, "passphrase")

    def keys_for_raw_key(self, raw_key: bytes) -> list[MasterKey]:
        """The policy keys of every raw-key protector that ``raw_key`` (32 bytes) opens."""
        candidates = self.raw_key_protectors()
        if not candidates:
            raise KeyProblem(self.describe_missing("raw-key"))
        return self._unlock_any(candidates, raw_key, "raw key")

    def _unlock_any(
        self, candidates: list[ProtectorData], secret: bytes, what: str
    ) -> list[MasterKey]:
        keys: list[MasterKey] = []
        opened = []
        for p in candidates:
            pkey = self.unlock_protector(p, secret)
            if pkey is None:
                continue
            opened.append(p)
            keys.extend(self.policy_keys(p, pkey))
        if not opened:
            names = ", ".join(p.describe() for p in candidates)
            raise KeyProblem(f"wrong {what}: it unlocks none of {names}")
        if not keys:
            names = ", ".join(p.describe() for p in opened)
            raise KeyProblem(f"{names} protects no policy in this fscrypt metadata")
        return keys

    def describe_missing(self, kind: str) -> str:
        if not self:
            msg = "no fscrypt metadata (.fscrypt/protectors and policies) was found"
        else:
            msg = f"the fscrypt metadata has no {kind} protector"
        if self.problems:
            msg += "; " + "; ".join(f"{k}: {v}" for k, v in sorted(self.problems.items()))
        return msg
