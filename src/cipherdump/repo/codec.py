"""A small canonical, self-describing value encoding for trees, snapshots and locks.

Values are ``None``, ``bool``, ``int`` (-2^127 <= n < 2^127), ``bytes``, ``str``,
lists (decoded as tuples) and maps with ``str`` keys.  Each value is one tag byte
then its body; lengths and counts are unsigned LEB128 varints, minimal length::

    0x00 None        0x01 False        0x02 True
    0x03 int         zigzag varint ((n << 1) ^ (n >> 127))
    0x04 bytes       varint length, raw bytes
    0x05 str         varint length, UTF-8 bytes
    0x06 list        varint count, values
    0x07 map         varint count, (varint key length, UTF-8 key, value) pairs,
                     keys strictly increasing as UTF-8 bytes

Every value has exactly one encoding, so equal trees get equal ids; the decoder
rejects anything else with :class:`CorruptError` and raises nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeAlias

from cipherdump.errors import CorruptError

Value: TypeAlias = "bool | int | bytes | str | Sequence[Value] | Mapping[str, Value] | None"

_NONE, _FALSE, _TRUE, _INT, _BYTES, _STR, _LIST, _MAP = range(8)
INT_BITS = 128
MAX_DEPTH = 32
_MAX_VARINT_BYTES = 19  # 19 * 7 = 133 bits: enough for every length and every int.


def _varint(n: int, out: bytearray) -> None:
    if n < 0x80:  # The common case: one byte.
        out.append(n)
        return
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def encode(value: Value) -> bytes:
    """Encode ``value``; raises ``TypeError``/``ValueError`` for what cannot be encoded."""
    out = bytearray()
    _encode(value, out, 0)
    return bytes(out)


def _encode_str(text: str, out: bytearray) -> None:
    raw = text.encode("utf-8")  # Lone surrogates raise UnicodeEncodeError (a ValueError).
    _varint(len(raw), out)
    out += raw


# Map keys are few distinct names; their UTF-8 encodings are kept.
_KEY_CACHE: dict[str, bytes] = {}
_KEY_CACHE_MAX = 4096


def _first(pair: tuple[bytes, Value]) -> bytes:
    return pair[0]


# Trees hold many maps with the same keys in the same order: remember, per key tuple,
# the canonical (sorted) order and each key's encoded prefix.
_PLANS: dict[tuple[object, ...], tuple[tuple[int, bytes], ...]] = {}
_PLANS_MAX = 1024


def _map_plan(keys: tuple[object, ...]) -> tuple[tuple[int, bytes], ...]:
    raw: list[bytes] = []
    for k in keys:
        if not isinstance(k, str):
            raise TypeError(f"map keys must be str, not {type(k).__name__}")
        raw.append(k.encode("utf-8"))
    plan = []
    for index in sorted(range(len(keys)), key=raw.__getitem__):
        prefix = bytearray()
        _varint(len(raw[index]), prefix)
        plan.append((index, bytes(prefix) + raw[index]))
    result = tuple(plan)
    if len(_PLANS) < _PLANS_MAX:
        _PLANS[keys] = result
    return result


_INT_MIN = -(1 << (INT_BITS - 1))
_INT_MAX = 1 << (INT_BITS - 1)


def _encode(value: Value, out: bytearray, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    # Exact-type fast paths for what trees are made of; ABC checks below are slow.
    kind = type(value)
    if kind is int:
        assert isinstance(value, int)
        if 0 <= value < 0x40:
            out += bytes((_INT, value << 1))
            return
        if not _INT_MIN <= value < _INT_MAX:
            raise ValueError(f"integer out of range: {value}")
        out.append(_INT)
        _varint((value << 1) ^ (value >> (INT_BITS - 1)), out)
        return
    if kind is bytes:
        assert isinstance(value, bytes)
        out.append(_BYTES)
        _varint(len(value), out)
        out += value
        return
    if kind is dict:
        assert isinstance(value, dict)
        keys = tuple(value)
        plan = _PLANS.get(keys)
        if plan is None:
            plan = _map_plan(keys)
        values = tuple(value.values())
        out.append(_MAP)
        _varint(len(keys), out)
        for index, prefix in plan:
            out += prefix
            _encode(values[index], out, depth + 1)
        return
    if kind is list or kind is tuple:
        assert isinstance(value, list | tuple)
        out.append(_LIST)
        _varint(len(value), out)
        for item in value:
            _encode(item, out, depth + 1)
        return
    if value is None:
        out.append(_NONE)
    elif value is True:
        out.append(_TRUE)
    elif value is False:
        out.append(_FALSE)
    elif isinstance(value, int):
        if not -(1 << (INT_BITS - 1)) <= value < (1 << (INT_BITS - 1)):
            raise ValueError(f"integer out of range: {value}")
        out.append(_INT)
        _varint((value << 1) ^ (value >> (INT_BITS - 1)), out)
    elif isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        out.append(_BYTES)
        _varint(len(raw), out)
        out += raw
    elif kind is str or isinstance(value, str):
        assert isinstance(value, str)
        out.append(_STR)
        _encode_str(value, out)
    elif kind is dict or isinstance(value, Mapping):
        assert isinstance(value, Mapping)
        items = []
        for k, v in value.items():
            raw_key = _KEY_CACHE.get(k) if type(k) is str else None
            if raw_key is None:
                if not isinstance(k, str):
                    raise TypeError(f"map keys must be str, not {type(k).__name__}")
                raw_key = k.encode("utf-8")
                if len(_KEY_CACHE) < _KEY_CACHE_MAX:
                    _KEY_CACHE[k] = raw_key
            items.append((raw_key, v))
        # Keys are distinct, so sorting the pairs compares keys only.
        items.sort(key=_first)
        out.append(_MAP)
        _varint(len(items), out)
        for raw_key, v in items:
            _varint(len(raw_key), out)
            out += raw_key
            _encode(v, out, depth + 1)
    elif isinstance(value, Sequence):
        out.append(_LIST)
        _varint(len(value), out)
        for item in value:
            _encode(item, out, depth + 1)
    else:
        raise TypeError(f"cannot encode {type(value).__name__}")


class _Reader:
    __slots__ = ("data", "pos", "what")

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def fail(self, message: str) -> CorruptError:
        return CorruptError(message, structure=self.what, location=f"offset {self.pos}")

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise self.fail("truncated")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def varint(self) -> int:
        pos = self.pos
        if pos < len(self.data):
            b = self.data[pos]
            if b < 0x80:  # The common case: one byte, canonical by construction.
                self.pos = pos + 1
                return b
        n = shift = 0
        for i in range(_MAX_VARINT_BYTES):
            b = self.byte()
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                if b == 0 and i > 0:
                    raise self.fail("overlong varint")
                return n
        raise self.fail("varint too long")

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.pos:
            raise self.fail("truncated")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def text(self) -> str:
        raw = self.take(self.varint())
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail("invalid UTF-8") from None

    def count(self) -> int:
        n = self.varint()
        if n > len(self.data) - self.pos:  # Every element takes at least one byte.
            raise self.fail("count exceeds data")
        return n


def decode(data: bytes, what: str = "value") -> Value:
    """Decode exactly one canonical value filling ``data``."""
    reader = _Reader(bytes(data), what)
    value = _decode(reader, 0)
    if reader.pos != len(reader.data):
        raise reader.fail("trailing bytes")
    return value


def _decode(r: _Reader, depth: int) -> Value:
    if depth > MAX_DEPTH:
        raise r.fail("nested too deeply")
    pos = r.pos
    if pos >= len(r.data):
        raise r.fail("truncated")
    tag = r.data[pos]
    r.pos = pos + 1
    if tag == _NONE:
        return None
    if tag == _FALSE:
        return False
    if tag == _TRUE:
        return True
    if tag == _INT:
        z = r.varint()
        if z >= 1 << INT_BITS:
            raise r.fail("integer out of range")
        return (z >> 1) ^ -(z & 1)
    if tag == _BYTES:
        return r.take(r.varint())
    if tag == _STR:
        return r.text()
    if tag == _LIST:
        items = []
        for _ in range(r.count()):
            items.append(_decode(r, depth + 1))
        return tuple(items)
    if tag == _MAP:
        result: dict[str, Value] = {}
        previous: bytes | None = None
        for _ in range(r.count()):
            raw_key = r.take(r.varint())
            if previous is not None and raw_key <= previous:
                raise r.fail("map keys not strictly increasing")
            try:
                key = raw_key.decode("utf-8")
            except UnicodeDecodeError:
                raise r.fail("invalid UTF-8") from None
            previous = raw_key
            result[key] = _decode(r, depth + 1)
        return result
    raise r.fail(f"unknown tag 0x{tag:02x}")


def expect_map(value: Value, what: str) -> Mapping[str, Value]:
    if not isinstance(value, Mapping):
        raise CorruptError("expected a map", structure=what)
    return value


def _get(m: Mapping[str, Value], name: str, what: str) -> Value:
    if name not in m:
        raise CorruptError(f"missing field {name!r}", structure=what)
    return m[name]


def get_int(m: Mapping[str, Value], name: str, what: str) -> int:
    v = _get(m, name, what)
    if not isinstance(v, int) or isinstance(v, bool):
        raise CorruptError(f"field {name!r} is not an int", structure=what)
    return v


def get_bytes(m: Mapping[str, Value], name: str, what: str) -> bytes:
    v = _get(m, name, what)
    if not isinstance(v, bytes):
        raise CorruptError(f"field {name!r} is not bytes", structure=what)
    return v


def get_str(m: Mapping[str, Value], name: str, what: str) -> str:
    v = _get(m, name, what)
    if not isinstance(v, str):
        raise CorruptError(f"field {name!r} is not str", structure=what)
    return v


def get_list(m: Mapping[str, Value], name: str, what: str) -> Sequence[Value]:
    v = _get(m, name, what)
    if not isinstance(v, tuple):
        raise CorruptError(f"field {name!r} is not a list", structure=what)
    return v


def get_map(m: Mapping[str, Value], name: str, what: str) -> Mapping[str, Value]:
    return expect_map(_get(m, name, what), f"{what} field {name!r}")
