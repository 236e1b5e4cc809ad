"""Varint and protobuf wire helpers."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from switchy.stack.codec import decode_uvarint, encode_uvarint, pb_bytes, pb_fields, pb_varint
from switchy.stack.errors import MessageTooLarge, SerializationError


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00"),
        (1, b"\x01"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (300, b"\xac\x02"),
        (16384, b"\x80\x80\x01"),
    ],
)
def test_varint_known_values(value: int, encoded: bytes) -> None:
    assert encode_uvarint(value) == encoded
    assert decode_uvarint(encoded) == (value, len(encoded))


@given(st.integers(min_value=0, max_value=(1 << 63) - 1))
def test_varint_round_trip(value: int) -> None:
    enc = encode_uvarint(value)
    assert decode_uvarint(enc) == (value, len(enc))
    assert decode_uvarint(enc[:-1]) is None


def test_varint_errors() -> None:
    with pytest.raises(SerializationError):
        encode_uvarint(-1)
    with pytest.raises(SerializationError):
        encode_uvarint(1 << 63)
    with pytest.raises(SerializationError, match="longer"):
        decode_uvarint(b"\xff" * 10)
    with pytest.raises(SerializationError, match="minimally"):
        decode_uvarint(b"\x80\x00")


@given(st.binary(max_size=20))
def test_varint_garbage(data: bytes) -> None:
    with contextlib.suppress(SerializationError):
        decode_uvarint(data)


@given(
    st.lists(
        st.tuples(st.integers(1, 1000), st.one_of(st.integers(0, 2**62), st.binary(max_size=50)))
    )
)
def test_protobuf_round_trip(fields: list[tuple[int, int | bytes]]) -> None:
    msg = b"".join(pb_varint(f, v) if isinstance(v, int) else pb_bytes(f, v) for f, v in fields)
    assert list(pb_fields(msg)) == fields


@pytest.mark.parametrize(
    "data", [b"\x0a\x05abc", b"\x08", b"\x0a", b"\x00\x01", b"\x0b", b"\x0d\x01\x02", b"\x80"]
)
def test_protobuf_malformed(data: bytes) -> None:
    with pytest.raises(SerializationError):
        list(pb_fields(data))


def test_protobuf_size_limit() -> None:
    with pytest.raises(MessageTooLarge):
        list(pb_fields(pb_bytes(1, b"x" * 100), max_size=50))


@given(st.binary(max_size=200))
def test_protobuf_garbage(data: bytes) -> None:
    with contextlib.suppress(SerializationError):
        list(pb_fields(data))
