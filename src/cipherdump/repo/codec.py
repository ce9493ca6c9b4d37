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

from collections.abc import Callable, Mapping, Sequence
from operator import itemgetter
from typing import Any, TypeAlias

from cipherdump.errors import CorruptError

Value: TypeAlias = "bool | int | bytes | str | Sequence[Value] | Mapping[str, Value] | None"

_NONE, _FALSE, _TRUE, _INT, _BYTES, _STR, _LIST, _MAP = range(8)
INT_BITS = 128
MAX_DEPTH = 32
_MAX_VARINT_BYTES = 19  # 19 * 7 = 133 bits: enough for every length and every int.
_INT_MIN = -(1 << (INT_BITS - 1))
_INT_MAX = 1 << (INT_BITS - 1)

# Encoding is on the hot path of every backup (each node a map of some 25 scalars), so
# the common pieces come from tables: one-byte varints, the ints whose zigzag is one
# byte, and the heads (tag and one-byte length or count) of short bytes, strings and
# lists.
_VARINT1 = tuple(bytes((n,)) for n in range(0x80))
_INT1 = tuple(bytes((_INT, z)) for z in range(0x80))  # indexed by the zigzag
_BYTES_HEAD = tuple(bytes((_BYTES, n)) for n in range(0x80))
_STR_HEAD = tuple(bytes((_STR, n)) for n in range(0x80))
_LIST_HEAD = tuple(bytes((_LIST, n)) for n in range(0x80))
_BOOL = (bytes((_FALSE,)), bytes((_TRUE,)))
_NULL = bytes((_NONE,))


def varint(n: int) -> bytes:
    """The varint of ``n`` >= 0."""
    if 0 <= n < 0x80:
        return _VARINT1[n]
    if n < 0:
        raise ValueError(f"a varint is not negative: {n}")
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def bytes_head(n: int) -> bytes:
    """The tag and length of a bytes value of length ``n``."""
    return _BYTES_HEAD[n] if 0 <= n < 0x80 else bytes((_BYTES,)) + varint(n)


def list_head(n: int) -> bytes:
    """The tag and count of a list of ``n`` values."""
    return _LIST_HEAD[n] if 0 <= n < 0x80 else bytes((_LIST,)) + varint(n)


def map_head(n: int) -> bytes:
    """The tag and count of a map of ``n`` entries."""
    return bytes((_MAP,)) + varint(n)


def map_key(key: str) -> bytes:
    """A map key as the encoding of a map holds it (length, UTF-8 bytes)."""
    raw = key.encode("utf-8")
    return varint(len(raw)) + raw


def int_value(n: int) -> bytes:
    """The encoding of the int ``n`` (``encode(n)``, remembered for repeated values)."""
    return _cached_int(n) or _int(n)


def bytes_value(raw: bytes) -> bytes:
    """The encoding of the bytes ``raw`` (``encode(raw)``)."""
    n = len(raw)
    return (_BYTES_HEAD[n] if n < 0x80 else bytes_head(n)) + raw


# Encoded ints by value, tag included: the fields of a tree's nodes repeat (modes,
# owners, flags, sizes, chunk sizes, a file's equal timestamps).  Emptied when full.
_INTS: dict[int, bytes] = {}
_INTS_MAX = 4096

# Varints of ints below 2**63 are made without a loop over their bytes (and without
# bytes() of a tuple, which is slow too).  The zigzag's 7-bit groups are spread to 8-bit
# slots in up to four steps (56-bit halves to 64-bit slots, then 28 to 32, 14 to 16, 7
# to 8), each adding ``(x & upper halves) * (2**shift - 1)``, which moves the upper
# halves up by ``shift`` bits; every byte but the last then gets its continuation bit
# at once, and int.to_bytes writes them after the tag (the low byte).  _CONTINUE holds
# those bits and the tag, by the length of the varint.
_CONTINUE = tuple(int.from_bytes(b"\x80" * (n - 1), "little") << 8 | _INT for n in range(10))
_SPREAD_56 = 0x7F00000000000000
_SPREAD_28 = 0x00FFFFFFF000000000FFFFFFF0000000
_SPREAD_14 = 0x0FFFC0000FFFC0000FFFC0000FFFC000
_SPREAD_7 = 0x3F803F803F803F803F803F803F803F80
_TWO_56 = 1 << 56
_TWO_63 = 1 << 63


def _int(value: int) -> bytes:
    """The encoding of the int ``value`` (exactly an int), remembered in _INTS."""
    z = value + value if value >= 0 else ~value - value  # (n << 1) ^ (n >> 127)
    if z < 0x4000:
        if z < 0x80:
            encoded = _INT1[z]
        else:
            encoded = ((z + (z & 0x3F80)) << 8 | 0x8003).to_bytes(3, "little")
    elif z < 0x10000000:
        x = z + (z & 0xFFFC000) * 3
        x += x & 0x3F803F80
        if z < 0x200000:
            encoded = (x << 8 | 0x808003).to_bytes(4, "little")
        else:
            encoded = (x << 8 | 0x80808003).to_bytes(5, "little")
    elif z < _TWO_56:
        x = z + (z & _SPREAD_28) * 15
        x += (x & _SPREAD_14) * 3
        x += x & _SPREAD_7
        n = (z.bit_length() + 6) // 7
        encoded = (x << 8 | _CONTINUE[n]).to_bytes(n + 1, "little")
    elif z < _TWO_63:
        x = z + (z & _SPREAD_56) * 255
        x += (x & _SPREAD_28) * 15
        x += (x & _SPREAD_14) * 3
        x += x & _SPREAD_7
        encoded = (x << 8 | _CONTINUE[9]).to_bytes(10, "little")
    elif _INT_MIN <= value < _INT_MAX:
        encoded = bytes((_INT,)) + varint(z)
    else:
        raise ValueError(f"integer out of range: {value}")
    if len(_INTS) >= _INTS_MAX:
        _INTS.clear()
    _INTS[value] = encoded
    return encoded


def _str(text: str) -> bytes:
    """The encoding of a string, with its tag."""
    raw = text.encode("utf-8")  # Lone surrogates raise UnicodeEncodeError (a ValueError).
    n = len(raw)
    return (_STR_HEAD[n] if n < 0x80 else bytes((_STR,)) + varint(n)) + raw


def encode(value: Value) -> bytes:
    """Encode ``value``; raises ``TypeError``/``ValueError`` for what cannot be encoded."""
    parts: list[bytes] = []
    encode_into(value, parts, 0)
    return b"".join(parts)


# Trees hold many maps with the same keys in the same order: remember, per key tuple,
# a template of the map's encoding (its head, then each key's encoded prefix in
# canonical (sorted) order, each followed by a slot for its value) and a getter of the
# values in that order.
_Plan: TypeAlias = tuple[list[bytes], Callable[[Any], Sequence[Any]]]
_PLANS: dict[tuple[object, ...], _Plan] = {}
_PLANS_MAX = 1024


def _map_plan(keys: tuple[object, ...]) -> _Plan:
    raw: list[bytes] = []
    for k in keys:
        if not isinstance(k, str):
            raise TypeError(f"map keys must be str, not {type(k).__name__}")
        raw.append(k.encode("utf-8"))  # Lone surrogates raise UnicodeEncodeError.
    order = sorted(range(len(keys)), key=raw.__getitem__)
    template = [bytes((_MAP,)) + varint(len(keys))]
    for i in order:
        template += (varint(len(raw[i])) + raw[i], b"")
    getter: Callable[[Any], Sequence[Any]]
    if len(keys) > 1:
        getter = itemgetter(*(keys[i] for i in order))
    elif keys:
        getter = _single_getter(keys[0])
    else:
        getter = _no_values
    plan = (template, getter)
    if len(_PLANS) < _PLANS_MAX:
        _PLANS[keys] = plan
    return plan


def _single_getter(key: object) -> Callable[[Any], Sequence[Any]]:
    return lambda m: (m[key],)


def _no_values(m: object) -> Sequence[Any]:
    return ()


_cached_int: Callable[[int], bytes | None] = _INTS.get
# For encoders of many ints at once (see engine.filenode): ``cached_int(n) or
# encode_int(n)`` is int_value(n) without its call.
cached_int = _cached_int
encode_int = _int


def encode_into(value: Value, parts: list[bytes], depth: int = 0) -> None:
    """Append the encoding of ``value`` to ``parts`` (pieces to be joined), as a value
    nested ``depth`` deep in a larger one (the nesting limit counts from the top)."""
    if type(value) is dict:
        if depth > MAX_DEPTH:
            raise ValueError("value nested too deeply")
        keys = tuple(value)
        template, getter = _PLANS.get(keys) or _map_plan(keys)
        if depth == MAX_DEPTH and keys:
            raise ValueError("value nested too deeply")
        depth += 1
        encoded = template.copy()
        # The hot loop of encoding: the ints (most of a tree) inline, in one piece each.
        encoded[2::2] = [
            (_cached_int(item) or _int(item)) if type(item) is int else _item(item, depth)
            for item in getter(value)
        ]
        parts += encoded
    else:
        parts.append(_item(value, depth))


def _item(value: Any, depth: int) -> bytes:
    """The encoding of ``value``, nested ``depth`` deep, in one piece."""
    if depth > MAX_DEPTH:
        raise ValueError("value nested too deeply")
    kind = type(value)
    if kind is bytes:
        raw: bytes = value
        n = len(raw)
        return (_BYTES_HEAD[n] if n < 0x80 else bytes_head(n)) + raw
    if kind is int:
        return _cached_int(value) or _int(value)
    if kind is list or kind is tuple:
        n = len(value)
        if depth == MAX_DEPTH and n:
            raise ValueError("value nested too deeply")
        depth += 1
        return (_LIST_HEAD[n] if n < 0x80 else list_head(n)) + b"".join(
            [
                (_cached_int(item) or _int(item)) if type(item) is int else _item(item, depth)
                for item in value
            ]
        )
    if kind is bool:
        return _BOOL[value]
    if kind is str:
        return _str(value)
    if value is None:
        return _NULL
    parts: list[bytes] = []
    if kind is dict:
        encode_into(value, parts, depth)
    else:
        _encode_other(value, parts, depth)
    return b"".join(parts)


def _encode_other(value: object, parts: list[bytes], depth: int) -> None:
    """Values of other types: subclasses, other mappings and sequences."""
    if isinstance(value, int):
        parts.append(_int(int(value)))
    elif isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        n = len(raw)
        parts.append(_BYTES_HEAD[n] if n < 0x80 else bytes_head(n))
        parts.append(raw)
    elif isinstance(value, str):
        parts.append(_str(value))
    elif isinstance(value, Mapping):
        pairs = []
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"map keys must be str, not {type(k).__name__}")
            pairs.append((k.encode("utf-8"), v))
        pairs.sort(key=_first)  # Keys are distinct, so this compares keys only.
        if depth >= MAX_DEPTH and pairs:
            raise ValueError("value nested too deeply")
        parts.append(bytes((_MAP,)) + varint(len(pairs)))
        for raw_key, v in pairs:
            parts.append(varint(len(raw_key)) + raw_key)
            encode_into(v, parts, depth + 1)
    elif isinstance(value, Sequence):
        n = len(value)
        if depth >= MAX_DEPTH and n:
            raise ValueError("value nested too deeply")
        parts.append(list_head(n))
        for item in value:
            encode_into(item, parts, depth + 1)
    else:
        raise TypeError(f"cannot encode {type(value).__name__}")


def _first(pair: tuple[bytes, object]) -> bytes:
    return pair[0]


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
    # Ints in the container are decoded here, not by a call each, unless they lie past
    # the nesting limit (where the call refuses them, as the encoder never writes them).
    inline = depth <= MAX_DEPTH
    if tag == _LIST:
        items: list[Value] = []
        for _ in range(n):
            if inline and pos + 1 < end and data[pos] == _INT and data[pos + 1] < 0x80:
                z = data[pos + 1]  # a one-byte int (chunk numbers, extents)
                items.append((z >> 1) ^ -(z & 1))
                pos += 2
                continue
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
        if inline and pos < end and data[pos] == _INT:
            # An int value (most of a tree's attrs, many of them times of ten bytes),
            # decoded here: a call per value, and one per varint, cost a tenth of
            # decoding a tree.  Canonical varints only, as _varint_at reads them.
            pos += 1
            z = shift = 0
            while True:
                if pos >= end:
                    raise _Fail("truncated", pos)
                b = data[pos]
                pos += 1
                z |= (b & 0x7F) << shift
                if b < 0x80:
                    break
                shift += 7
                if shift >= 7 * _MAX_VARINT_BYTES:
                    raise _Fail("varint too long", pos)
            if b == 0 and shift:
                raise _Fail("overlong varint", pos)
            if z >= 1 << INT_BITS:
                raise _Fail("integer out of range", pos)
            result[key] = (z >> 1) ^ -(z & 1)
            continue
        result[key], pos = _decode(data, pos, depth)
    return result, pos


# Decoded map keys: few distinct names, decoded once.
_KEY_TEXT: dict[bytes, str] = {}
_KEY_CACHE_MAX = 4096


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
