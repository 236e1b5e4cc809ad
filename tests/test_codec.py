"""Varint and protobuf wire helpers."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from switchy.stack.codec import (
    PB_FIXED32,
    PB_FIXED64,
    PB_LEN,
    PB_VARINT,
    decode_json,
    decode_uvarint,
    encode_uvarint,
    pb_bytes,
    pb_expect,
    pb_fields,
    pb_fields_typed,
    pb_fixed64,
    pb_varint,
    pb_want_bytes,
    pb_want_fixed64,
    pb_want_int,
)
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


_WIRE_TYPES = [PB_VARINT, PB_FIXED64, PB_LEN, PB_FIXED32]


def _encode_any(wire_type: int, value: int) -> bytes:
    if wire_type == PB_VARINT:
        return pb_varint(3, value)
    if wire_type == PB_FIXED64:
        return pb_fixed64(3, value)
    if wire_type == PB_LEN:
        return pb_bytes(3, value.to_bytes(8, "little"))
    return encode_uvarint(3 << 3 | PB_FIXED32) + (value & 0xFFFFFFFF).to_bytes(4, "little")


@given(st.sampled_from(_WIRE_TYPES), st.integers(0, (1 << 63) - 1))
def test_pb_want_takes_the_right_wire_type_and_names_the_field_otherwise(
    wire_type: int, value: int
) -> None:
    [(field, wt, item)] = list(pb_fields_typed(_encode_any(wire_type, value)))
    assert (field, wt) == (3, wire_type)
    wants = {PB_VARINT: pb_want_int, PB_LEN: pb_want_bytes, PB_FIXED64: pb_want_fixed64}
    for want, getter in wants.items():
        if want == wire_type:
            got = getter("Msg.f", wt, item)
            assert got == (value.to_bytes(8, "little") if want == PB_LEN else value)
        else:
            with pytest.raises(SerializationError, match=r"^Msg\.f must be a .* \(wire type"):
                getter("Msg.f", wt, item)
    pb_expect("Msg.f", wt, wire_type)


@pytest.mark.parametrize(
    "bad",
    [b"{not json", b"[" * 100_000, b'"\xff\xfe"', "[1,", b"", b"\xef\xbb\xbf\xff"],
)
def test_decode_json_maps_every_failure_to_the_codec_error_naming_the_input(
    bad: bytes | str,
) -> None:
    with pytest.raises(SerializationError, match=r"^the listing is not JSON"):
        decode_json(bad, "the listing")


def test_decode_json_takes_bytes_and_text() -> None:
    assert decode_json(b'{"a": [1, "\xc3\xa9"]}') == {"a": [1, "\u00e9"]}
    assert decode_json('["x"]') == ["x"]
