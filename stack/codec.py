"""Unsigned varints and the few protobuf wire-format pieces libp2p needs.

libp2p uses protobuf for keys, the Noise handshake payload and identify.  Those
messages are tiny and the peer-id spec requires a deterministic encoding
(fields in number order, minimal varints), so this module encodes and decodes
the wire format directly instead of pulling a protobuf runtime into the import
path.  Decoders never trust a length: every length is checked against the bytes
present and against an explicit limit.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from typing import Any

from switchy.stack.errors import MessageTooLarge, SerializationError

__all__ = [
    "MAX_VARINT_BYTES",
    "PB_FIXED32",
    "PB_FIXED64",
    "PB_LEN",
    "PB_VARINT",
    "decode_json",
    "decode_uvarint",
    "encode_uvarint",
    "frame_message",
    "pb_bytes",
    "pb_expect",
    "pb_fields",
    "pb_fields_typed",
    "pb_fixed64",
    "pb_varint",
    "pb_want_bytes",
    "pb_want_fixed64",
    "pb_want_int",
    "split_frame",
]

#: An unsigned varint in libp2p is at most 9 bytes (63 bits) per the multiformats spec.
MAX_VARINT_BYTES = 9

_SMALL = [bytes([i]) for i in range(128)]


def encode_uvarint(value: int) -> bytes:
    """Encode a non-negative integer as an unsigned LEB128 varint."""
    if value < 128:
        if value < 0:
            raise SerializationError(f"cannot encode negative varint {value}")
        return _SMALL[value]
    if value >= 1 << 63:
        raise SerializationError(f"varint {value} exceeds 63 bits")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_uvarint(data: bytes | bytearray | memoryview, pos: int = 0) -> tuple[int, int] | None:
    """Decode a varint at ``pos``.

    Returns ``(value, new_pos)``, or ``None`` when ``data`` ends before the varint
    does.  Raises :class:`SerializationError` for a varint longer than
    :data:`MAX_VARINT_BYTES` or one that is not minimally encoded.
    """
    value = 0
    shift = 0
    end = len(data)
    start = pos
    while pos < end:
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            if b == 0 and pos - start > 1:
                raise SerializationError("varint is not minimally encoded")
            return value, pos
        shift += 7
        if pos - start >= MAX_VARINT_BYTES:
            raise SerializationError(f"varint longer than {MAX_VARINT_BYTES} bytes")
    return None


def frame_message(message: bytes, max_size: int, what: str = "message") -> bytes:
    """``message`` prefixed by its length as an unsigned varint (the libp2p framing).

    Raises :class:`MessageTooLarge` above ``max_size``; ``what`` names the message.
    """
    if len(message) > max_size:
        raise MessageTooLarge(f"{what} of {len(message)} bytes exceeds {max_size} bytes")
    return encode_uvarint(len(message)) + message


def split_frame(
    data: bytes | bytearray, max_size: int, what: str = "message"
) -> tuple[bytes, int] | None:
    """Split one varint-length-prefixed message off ``data``: ``(message, bytes used)``.

    Returns ``None`` while more bytes are needed; raises :class:`MessageTooLarge`
    as soon as the prefix announces more than ``max_size`` bytes.
    """
    r = decode_uvarint(data)
    if r is None:
        return None
    length, pos = r
    if length > max_size:
        raise MessageTooLarge(f"{what} of {length} bytes announced, the limit is {max_size}")
    if len(data) - pos < length:
        return None
    return bytes(data[pos : pos + length]), pos + length


def decode_json(data: bytes | str, what: str = "data") -> Any:
    """The JSON value in ``data`` (UTF-8 bytes or text), for input from a peer.

    Every way it can be wrong is a :class:`SerializationError` naming ``what``: not
    JSON or not UTF-8 (``ValueError``, ``UnicodeError``), nested too deep for the
    decoder (``RecursionError``: ``"[" * 100_000``).  The caller bounds the size.
    """
    try:
        return json.loads(data)
    except (ValueError, UnicodeError, RecursionError) as exc:
        raise SerializationError(f"{what} is not JSON: {exc}") from None


# --- protobuf wire format -------------------------------------------------------------

#: Protobuf wire type of a varint field (int32/uint64/enum/bool).
PB_VARINT = 0
#: Protobuf wire type of a fixed 64-bit field (fixed64/sfixed64/double).
PB_FIXED64 = 1
#: Protobuf wire type of a length-delimited field (bytes/string/sub-message).
PB_LEN = 2
#: Protobuf wire type of a fixed 32-bit field (fixed32/sfixed32/float).
PB_FIXED32 = 5
_WT_VARINT = PB_VARINT
_WT_I64 = PB_FIXED64
_WT_LEN = PB_LEN
_WT_I32 = PB_FIXED32

_WIRE_TYPE_NAMES = {
    PB_VARINT: "a varint",
    PB_FIXED64: "a fixed64",
    PB_LEN: "a length-delimited",
    PB_FIXED32: "a fixed32",
}


def pb_varint(field: int, value: int) -> bytes:
    """Encode a varint-typed protobuf field (int32/uint64/enum/bool)."""
    return encode_uvarint(field << 3 | _WT_VARINT) + encode_uvarint(value)


def pb_bytes(field: int, value: bytes) -> bytes:
    """Encode a length-delimited protobuf field (bytes/string/sub-message)."""
    return encode_uvarint(field << 3 | _WT_LEN) + encode_uvarint(len(value)) + value


def pb_fixed64(field: int, value: int) -> bytes:
    """Encode a ``fixed64`` protobuf field (8 bytes, little-endian)."""
    if not 0 <= value < 1 << 64:
        raise SerializationError(f"fixed64 value {value} is out of range")
    return encode_uvarint(field << 3 | _WT_I64) + struct.pack("<Q", value)


def pb_fields(data: bytes, *, max_size: int = 1 << 20) -> Iterator[tuple[int, int | bytes]]:
    """Iterate ``(field_number, value)`` over a protobuf message.

    Varint fields yield ``int``, length-delimited fields yield ``bytes``; fixed
    32/64-bit fields are yielded as their raw bytes.  Unknown fields are the
    caller's to ignore.  Raises :class:`SerializationError` on any malformed or
    truncated field and :class:`MessageTooLarge` when ``data`` exceeds ``max_size``.
    Use :func:`pb_fields_typed` where a fixed-width field must be told apart from
    a length-delimited one.
    """
    for field, _wire_type, value in pb_fields_typed(data, max_size=max_size):
        yield field, value


def pb_fields_typed(
    data: bytes, *, max_size: int = 1 << 20
) -> Iterator[tuple[int, int, int | bytes]]:
    """Iterate ``(field_number, wire_type, value)``: :func:`pb_fields` with the wire type.

    ``wire_type`` is 0 (varint, ``int`` value), 1 (fixed64, 8 raw bytes), 2
    (length-delimited, ``bytes``) or 5 (fixed32, 4 raw bytes).
    """
    if len(data) > max_size:
        raise MessageTooLarge(f"protobuf message of {len(data)} bytes exceeds {max_size}")
    pos = 0
    end = len(data)
    while pos < end:
        r = decode_uvarint(data, pos)
        if r is None:
            raise SerializationError("truncated protobuf field key")
        key, pos = r
        field, wire_type = key >> 3, key & 7
        if field == 0:
            raise SerializationError("protobuf field number 0 is invalid")
        if wire_type == _WT_VARINT:
            r = decode_uvarint(data, pos)
            if r is None:
                raise SerializationError(f"truncated varint in protobuf field {field}")
            value, pos = r
            yield field, wire_type, value
        elif wire_type == _WT_LEN:
            r = decode_uvarint(data, pos)
            if r is None:
                raise SerializationError(f"truncated length in protobuf field {field}")
            length, pos = r
            if length > end - pos:
                raise SerializationError(
                    f"protobuf field {field} claims {length} bytes, only {end - pos} present"
                )
            yield field, wire_type, bytes(data[pos : pos + length])
            pos += length
        elif wire_type in (_WT_I64, _WT_I32):
            size = 8 if wire_type == _WT_I64 else 4
            if size > end - pos:
                raise SerializationError(f"truncated fixed-width protobuf field {field}")
            yield field, wire_type, bytes(data[pos : pos + size])
            pos += size
        else:
            raise SerializationError(f"unsupported protobuf wire type {wire_type} (field {field})")


def pb_expect(where: str, wire_type: int, want: int) -> None:
    """Check that the field ``where`` (e.g. ``"HolePunch.ObsAddrs"``) came with wire type
    ``want``; :class:`SerializationError` naming the field and both types otherwise.

    For decoders on :func:`pb_fields_typed`: a known field sent with another wire type is
    malformed, not something to reinterpret (the raw bytes of a fixed64 are no address).
    """
    if wire_type != want:
        raise SerializationError(
            f"{where} must be {_WIRE_TYPE_NAMES.get(want, f'a wire type {want}')} field"
            f" (wire type {wire_type})"
        )


def pb_want_int(where: str, wire_type: int, value: int | bytes) -> int:
    """The value of the varint field ``where`` (see :func:`pb_expect`)."""
    pb_expect(where, wire_type, PB_VARINT)
    assert isinstance(value, int)
    return value


def pb_want_bytes(where: str, wire_type: int, value: int | bytes) -> bytes:
    """The value of the length-delimited field ``where`` (see :func:`pb_expect`)."""
    pb_expect(where, wire_type, PB_LEN)
    assert isinstance(value, bytes)
    return value


def pb_want_fixed64(where: str, wire_type: int, value: int | bytes) -> int:
    """The value of the fixed64 field ``where``, as an unsigned int (see :func:`pb_expect`)."""
    pb_expect(where, wire_type, PB_FIXED64)
    assert isinstance(value, bytes)
    return int(struct.unpack("<Q", value)[0])
