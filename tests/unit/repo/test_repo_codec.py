"""The canonical value codec: vectors, round trips, and arbitrary bytes."""

from __future__ import annotations

import collections
import enum
import types
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cipherdump.errors import CorruptError
from cipherdump.repo import codec
from cipherdump.repo.codec import Value

INT128 = st.integers(min_value=-(2**127), max_value=2**127 - 1)
values: st.SearchStrategy[Value] = st.recursive(
    st.none() | st.booleans() | INT128 | st.binary(max_size=40) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5).map(tuple)
        | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)

# Hand-made vectors: each byte follows from the table in docs/repository-format.md.
VECTORS: list[tuple[Value, bytes]] = [
    (None, b"\x00"),
    (False, b"\x01"),
    (True, b"\x02"),
    (0, b"\x03\x00"),
    (-1, b"\x03\x01"),
    (1, b"\x03\x02"),
    (64, b"\x03\x80\x01"),
    (b"", b"\x04\x00"),
    (b"\xff\x00", b"\x04\x02\xff\x00"),
    ("é", b"\x05\x02\xc3\xa9"),
    ((1, None), b"\x06\x02\x03\x02\x00"),
    ({"b": 1, "a": b"x"}, b"\x07\x02\x01a\x04\x01x\x01b\x03\x02"),
]


@pytest.mark.parametrize(("value", "encoded"), VECTORS)
def test_vectors(value: Value, encoded: bytes) -> None:
    assert codec.encode(value) == encoded
    assert codec.decode(encoded) == value


@given(values)
def test_round_trip_is_canonical(value: Value) -> None:
    encoded = codec.encode(value)
    assert codec.decode(encoded) == value
    assert codec.encode(codec.decode(encoded)) == encoded


@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_corrupt_error(data: bytes) -> None:
    try:
        value = codec.decode(data)
    except CorruptError:
        return
    assert codec.encode(value) == data  # Whatever decodes is canonical.


@pytest.mark.parametrize(
    "bad",
    [
        b"\x03\x80\x00",  # overlong varint
        b"\x07\x02\x01b\x00\x01a\x00",  # keys out of order
        b"\x07\x02\x01a\x00\x01a\x00",  # duplicate key
        b"\x05\x01\xff",  # invalid UTF-8
        b"\x00\x00",  # trailing bytes
        b"\x08",  # unknown tag
        b"\x06\x05\x00",  # count exceeds data
        b"\x06\x01" * 40 + b"\x00",  # too deep
    ],
)
def test_rejects_non_canonical(bad: bytes) -> None:
    with pytest.raises(CorruptError):
        codec.decode(bad)


def test_refuses_unencodable() -> None:
    with pytest.raises(ValueError):
        codec.encode(2**127)
    with pytest.raises(TypeError):
        codec.encode({1: 2})  # type: ignore[dict-item]
    with pytest.raises(TypeError):
        codec.encode(1.5)  # type: ignore[arg-type]


# A straightforward encoder, written from the table in docs/repository-format.md: the
# codec's encoder (tables, caches, plans) must give exactly its bytes.
def reference_encode(value: object) -> bytes:
    def varint(n: int) -> bytes:
        out = bytearray()
        while n >= 0x80:
            out.append(n & 0x7F | 0x80)
            n >>= 7
        return bytes(out + bytes((n,)))

    if value is None or isinstance(value, bool):
        return bytes(({None: 0, False: 1, True: 2}[value],))
    if isinstance(value, int):
        return b"\x03" + varint((value << 1) ^ (value >> 127))
    if isinstance(value, bytes | bytearray | memoryview):
        return b"\x04" + varint(len(bytes(value))) + bytes(value)
    if isinstance(value, str):
        return b"\x05" + varint(len(value.encode())) + value.encode()
    if isinstance(value, Mapping):
        items = sorted((k.encode(), v) for k, v in value.items())
        body = b"".join(varint(len(k)) + k + reference_encode(v) for k, v in items)
        return b"\x07" + varint(len(items)) + body
    assert isinstance(value, Sequence)
    return b"\x06" + varint(len(value)) + b"".join(reference_encode(v) for v in value)


# Ints of every varint length, and both sides of every boundary.
EDGE_INTS = [s * ((1 << b) + d) for b in range(127) for d in (-1, 0, 1) for s in (1, -1)]
INTS = INT128 | st.sampled_from([n for n in EDGE_INTS if -(2**127) <= n < 2**127])
# Maps and lists as the engine builds them (lists, dicts of any key order, the same key
# sets again and again), with long bytes, strings and lists too.
KEYS = st.sampled_from(["ino", "mode", "atime_ns", "order", "source", "é", "k" * 130, ""])
engine_values: st.SearchStrategy[Value] = st.recursive(
    st.none() | st.booleans() | INTS | st.binary(max_size=300) | st.text(max_size=140),
    lambda children: (
        st.lists(children, max_size=10)
        | st.lists(children, max_size=3).map(tuple)
        | st.dictionaries(KEYS | st.text(max_size=8), children, max_size=8)
    ),
    max_leaves=40,
)


@given(engine_values)
def test_encoder_matches_the_reference(value: Value) -> None:
    assert codec.encode(value) == reference_encode(value)


def test_int_edges_match_the_reference() -> None:
    for n in EDGE_INTS:
        if -(2**127) <= n < 2**127:
            codec._INTS.clear()  # computed, then from the cache
            assert codec.encode(n) == reference_encode(n) == codec.encode(n), n
            assert codec.encode([n, {"a": n}]) == reference_encode([n, {"a": n}]), n
        else:
            with pytest.raises(ValueError, match="out of range"):
                codec.encode([n])


class Flag(enum.IntEnum):
    A = 300


class Text(str):
    pass


def test_int_cache_overflow() -> None:
    values = list(range(10**9, 10**9 + 3 * codec._INTS_MAX, 7))
    assert [codec.encode(v) for v in values] == [reference_encode(v) for v in values]
    assert codec.encode(values) == reference_encode(values)


def test_other_types_encode_as_their_values() -> None:
    weird: list[tuple[Value, Value]] = [
        (Flag.A, 300),
        (bytearray(b"xy"), b"xy"),
        (memoryview(b"xy"), b"xy"),
        (collections.OrderedDict([("b", 1), ("a", 2)]), {"a": 2, "b": 1}),
        (types.MappingProxyType({"k": [1]}), {"k": [1]}),
        (range(3), [0, 1, 2]),
        (Text("é"), "é"),
    ]
    for value, plain in weird:
        assert codec.encode(value) == codec.encode(plain) == reference_encode(plain)
        assert codec.encode({"x": value, "y": [value]}) == reference_encode(
            {"x": plain, "y": [plain]}
        )


def nest(depth: int, leaf: Value, kind: str) -> Value:
    value = leaf
    for _ in range(depth):
        value = [value] if kind == "list" else {"k": value}
    return value


@pytest.mark.parametrize("kind", ["list", "map"])
@pytest.mark.parametrize("leaf", [1, 1 << 70, b"x", "x", None, True, [], {}])
def test_nesting_limit(kind: str, leaf: Value) -> None:
    deepest = nest(codec.MAX_DEPTH, leaf, kind)
    assert codec.encode(deepest) == reference_encode(deepest)
    assert codec.decode(codec.encode(deepest)) is not None
    with pytest.raises(ValueError, match="nested too deeply"):
        codec.encode(nest(codec.MAX_DEPTH + 1, leaf, kind))
    parts: list[bytes] = []
    codec.encode_into(nest(2, leaf, kind), parts, codec.MAX_DEPTH - 2)
    assert b"".join(parts) == reference_encode(nest(2, leaf, kind))
    with pytest.raises(ValueError, match="nested too deeply"):
        codec.encode_into(nest(2, leaf, kind), [], codec.MAX_DEPTH - 1)
    with pytest.raises(ValueError, match="nested too deeply"):
        codec.encode_into(leaf, [], codec.MAX_DEPTH + 1)


def test_refuses_what_the_reference_cannot_encode() -> None:
    bad_keys = types.MappingProxyType({1: 2})
    for bad in [2**127, -(2**127) - 1, 1.0, 2.0, object(), {"a": {1: 2}}, ["\ud800"], bad_keys]:
        with pytest.raises((TypeError, ValueError)):
            codec.encode(bad)  # type: ignore[arg-type]
        with pytest.raises((TypeError, ValueError)):
            codec.encode({"x": [bad]})  # type: ignore[dict-item]


# A straightforward decoder, written from the same table: the codec's decoder (inlined
# varints and scalars, caches) must accept exactly what it accepts, with the same value,
# and refuse the rest with a CorruptError.
class _Refused(Exception):
    pass


def reference_decode(data: bytes) -> Value:
    def varint(pos: int) -> tuple[int, int]:
        n = shift = 0
        for i in range(19):
            if pos >= len(data):
                raise _Refused("truncated")
            b = data[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                if b == 0 and i > 0:
                    raise _Refused("overlong varint")
                return n, pos
        raise _Refused("varint too long")

    def value(pos: int, depth: int) -> tuple[Value, int]:
        if depth > codec.MAX_DEPTH:
            raise _Refused("nested too deeply")
        if pos >= len(data):
            raise _Refused("truncated")
        tag = data[pos]
        pos += 1
        if tag in (0, 1, 2):
            return (None, False, True)[tag], pos
        if tag > 7:
            raise _Refused("unknown tag")
        n, pos = varint(pos)
        if tag == 3:
            if n >= 1 << 128:
                raise _Refused("integer out of range")
            return (n >> 1) ^ -(n & 1), pos
        if tag in (4, 5):
            if pos + n > len(data):
                raise _Refused("truncated")
            raw = data[pos : pos + n]
            if tag == 4:
                return raw, pos + n
            try:
                return raw.decode("utf-8"), pos + n
            except UnicodeDecodeError:
                raise _Refused("invalid UTF-8") from None
        if tag == 6:
            items = []
            for _ in range(n):
                item, pos = value(pos, depth + 1)
                items.append(item)
            return tuple(items), pos
        out: dict[str, Value] = {}
        previous = None
        for _ in range(n):
            klen, pos = varint(pos)
            if pos + klen > len(data):
                raise _Refused("truncated")
            raw_key = data[pos : pos + klen]
            pos += klen
            if previous is not None and raw_key <= previous:
                raise _Refused("map keys not strictly increasing")
            previous = raw_key
            try:
                key = raw_key.decode("utf-8")
            except UnicodeDecodeError:
                raise _Refused("invalid UTF-8") from None
            out[key], pos = value(pos, depth + 1)
        return out, pos

    result, end = value(0, 0)
    if end != len(data):
        raise _Refused("trailing bytes")
    return result


def _decoded_or_refused(decode: object, data: bytes) -> object:
    try:
        return ("value", decode(data))  # type: ignore[operator]
    except (CorruptError, _Refused):
        return "refused"


@st.composite
def damaged_encodings(draw: st.DrawFn) -> bytes:
    """The encoding of a value, then a few bytes overwritten, inserted, removed or cut:
    mostly well-formed up to the damage, which is where a decoder's shortcuts hide."""
    data = bytearray(codec.encode(draw(engine_values)))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(data)))
        how = draw(st.sampled_from(["set", "insert", "delete", "cut"]))
        byte = draw(st.integers(0, 255) | st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 0x7F, 0x80]))
        if how == "set" and at < len(data):
            data[at] = byte
        elif how == "insert":
            data.insert(at, byte)
        elif how == "delete" and at < len(data):
            del data[at]
        elif how == "cut":
            del data[at:]
    return bytes(data)


@given(damaged_encodings())
def test_decoder_matches_the_reference(data: bytes) -> None:
    assert _decoded_or_refused(codec.decode, data) == _decoded_or_refused(reference_decode, data)


@pytest.mark.parametrize(
    "data",
    [
        b"\x06\x02\x04\x02ab",  # a list whose first item takes the bytes the count allowed
        b"\x07\x01\x01a" + b"\x03\x02",
        codec.encode(nest(codec.MAX_DEPTH, 1, "map")),
        codec.encode(nest(codec.MAX_DEPTH - 1, [1], "list")),
        # A container at the nesting limit holding scalars: past the limit, refused
        # whatever the scalar (the encoder never writes it).
        codec.encode(nest(codec.MAX_DEPTH, None, "map")).replace(b"\x00", b"\x06\x01\x03\x02"),
        codec.encode(nest(codec.MAX_DEPTH, None, "map")).replace(b"\x00", b"\x07\x01\x01k\x00"),
        codec.encode(nest(codec.MAX_DEPTH, None, "map")).replace(
            b"\x00", b"\x07\x01\x01k\x04\x01x"
        ),
        codec.encode(nest(codec.MAX_DEPTH, None, "map")).replace(b"\x00", b"\x07\x01\x01k\x03\x02"),
    ],
)
def test_decoder_matches_the_reference_on(data: bytes) -> None:
    assert _decoded_or_refused(codec.decode, data) == _decoded_or_refused(reference_decode, data)
