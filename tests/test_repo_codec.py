"""The canonical value codec: vectors, round trips, and arbitrary bytes."""

from __future__ import annotations

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
