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


def encode_varint(n: int, out: bytearray) -> None:
    """Append the varint of ``n`` >= 0 to ``out``."""
    _varint(n, out)


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


def _encode_scalar(value: object, out: bytearray) -> bool:
    """Encode an exact int in range or short bytes, the bulk of a tree; False for
    anything else (left to :func:`_encode`)."""
    kind = type(value)
    if kind is int:
        assert isinstance(value, int)
        if 0 <= value < 0x40:
            out.append(_INT)
            out.append(value << 1)
            return True
        if not _INT_MIN <= value < _INT_MAX:
            return False
        out.append(_INT)
        z = (value << 1) ^ (value >> (INT_BITS - 1))
        while z >= 0x80:
            out.append((z & 0x7F) | 0x80)
            z >>= 7
        out.append(z)
        return True
    if kind is bytes:
        assert isinstance(value, bytes)
        n = len(value)
        if n >= 0x80:
            return False
        out.append(_BYTES)
        out.append(n)
        out += value
        return True
    return False


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
        if depth >= MAX_DEPTH:  # Values would be too deep: let _encode say so.
            for index, prefix in plan:
                out += prefix
                _encode(values[index], out, depth + 1)
            return
        for index, prefix in plan:
            out += prefix
            item = values[index]
            if not _encode_scalar(item, out):
                _encode(item, out, depth + 1)
        return
    if kind is list or kind is tuple:
        assert isinstance(value, list | tuple)
        out.append(_LIST)
        _varint(len(value), out)
        if depth >= MAX_DEPTH:
            for item in value:
                _encode(item, out, depth + 1)
            return
        for item in value:
            if not _encode_scalar(item, out):
                _encode(item, out, depth + 1)
        return
    if kind is str:
        assert isinstance(value, str)
        out.append(_STR)
        _encode_str(value, out)
        return
    if kind is bool:
        out.append(_TRUE if value else _FALSE)
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


class _Fail(ValueError):
    """A decoding failure at ``pos``; :func:`decode` turns it into CorruptError."""

    def __init__(self, message: str, pos: int) -> None:
        super().__init__(message)
        self.message = message
        self.pos = pos


def _varint_at(data: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it) of the varint at ``pos``; canonical only."""
    n = shift = 0
    end = len(data)
    for i in range(_MAX_VARINT_BYTES):
        if pos >= end:
            raise _Fail("truncated", pos)
        b = data[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            if b == 0 and i > 0:
                raise _Fail("overlong varint", pos)
            return n, pos
    raise _Fail("varint too long", pos)


def decode(data: bytes, what: str = "value") -> Value:
    """Decode exactly one canonical value filling ``data``."""
    buf = bytes(data)
    try:
        value, pos = _decode(buf, 0, 0)
        if pos != len(buf):
            raise _Fail("trailing bytes", pos)
    except _Fail as fail:
        raise CorruptError(fail.message, structure=what, location=f"offset {fail.pos}") from None
    return value


def _decode(data: bytes, pos: int, depth: int) -> tuple[Value, int]:
    """(value, position after it).  One function with the one-byte varints inlined:
    trees are decoded node by node on every incremental backup."""
    if depth > MAX_DEPTH:
        raise _Fail("nested too deeply", pos)
    end = len(data)
    if pos >= end:
        raise _Fail("truncated", pos)
    tag = data[pos]
    pos += 1
    if tag > _MAP:
        raise _Fail(f"unknown tag 0x{tag:02x}", pos)
    if tag <= _TRUE:
        return (None, False, True)[tag], pos
    if pos < end and data[pos] < 0x80:
        n = data[pos]
        pos += 1
    else:
        n, pos = _varint_at(data, pos)
    if tag == _INT:
        if n >= 1 << INT_BITS:
            raise _Fail("integer out of range", pos)
        return (n >> 1) ^ -(n & 1), pos
    if tag in (_BYTES, _STR):
        stop = pos + n
        if stop > end:
            raise _Fail("truncated", pos)
        raw = data[pos:stop]
        if tag == _BYTES:
            return raw, stop
        try:
            return raw.decode("utf-8"), stop
        except UnicodeDecodeError:
            raise _Fail("invalid UTF-8", stop) from None
    if n > end - pos:  # Every element takes at least one byte.
        raise _Fail("count exceeds data", pos)
    depth += 1
    if tag == _LIST:
        items = []
        for _ in range(n):
            item, pos = _decode(data, pos, depth)
            items.append(item)
        return tuple(items), pos
    result: dict[str, Value] = {}
    previous = b""
    for i in range(n):
        if pos < end and data[pos] < 0x80:
            klen = data[pos]
            pos += 1
        else:
            klen, pos = _varint_at(data, pos)
        stop = pos + klen
        if stop > end:
            raise _Fail("truncated", pos)
        raw_key = data[pos:stop]
        pos = stop
        if i and raw_key <= previous:
            raise _Fail("map keys not strictly increasing", pos)
        key = _KEY_TEXT.get(raw_key)
        if key is None:
            try:
                key = raw_key.decode("utf-8")
            except UnicodeDecodeError:
                raise _Fail("invalid UTF-8", pos) from None
            if len(_KEY_TEXT) < _KEY_CACHE_MAX:
                _KEY_TEXT[raw_key] = key
        previous = raw_key
        result[key], pos = _decode(data, pos, depth)
    return result, pos


# Decoded map keys: few distinct names, decoded once.
_KEY_TEXT: dict[bytes, str] = {}


def skip(data: bytes, pos: int) -> int:
    """The position after the value starting at ``pos``, for data already known to be
    canonical (authenticated and decoded before, or written by this program).

    Walks the structure without building values (lists without recursion); IndexError
    or ValueError if the data is not a value after all.
    """
    left = 1
    while left:
        left -= 1
        tag = data[pos]
        pos += 1
        if tag <= _TRUE:
            continue
        if tag == _INT:
            while data[pos] & 0x80:
                pos += 1
            pos += 1
            continue
        b = data[pos]
        if b < 0x80:
            n = b
            pos += 1
        else:
            n, pos = _varint_at(data, pos)
        if tag in (_BYTES, _STR):
            pos += n
            if pos > len(data):
                raise ValueError("truncated")
        elif tag == _LIST:
            left += n
        elif tag == _MAP:
            for _ in range(n):
                b = data[pos]
                if b < 0x80:
                    pos += 1 + b
                else:
                    klen, pos = _varint_at(data, pos)
                    pos += klen
                pos = skip(data, pos)
        else:
            raise ValueError(f"unknown tag 0x{tag:02x}")
    return pos


def read_map_key(data: bytes, pos: int) -> tuple[bytes, int]:
    """(raw key, position of its value) of a map key at ``pos`` (see :func:`skip`)."""
    b = data[pos]
    if b < 0x80:
        return data[pos + 1 : pos + 1 + b], pos + 1 + b
    klen, pos = _varint_at(data, pos)
    return data[pos : pos + klen], pos + klen


def read_count(data: bytes, pos: int) -> tuple[int, int]:
    """(varint, position after it) at ``pos`` (see :func:`skip`)."""
    b = data[pos]
    if b < 0x80:
        return b, pos + 1
    try:
        return _varint_at(data, pos)
    except _Fail as fail:
        raise ValueError(fail.message) from None


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
