"""Sans-IO codecs of AutoNAT v2 and v1 messages (libp2p specs ``autonat/autonat-v2.md``,
``autonat/autonat-v1.md``).

The messages are protobufs written by hand on :mod:`switchy.stack.codec`
(fields in number order, minimal varints, proto3 defaults left out for v2).
Every message travels prefixed by its length as an unsigned varint;
:func:`encode_frame` / :func:`decode_frame` do that framing for byte buffers.

Decoders never trust the input: the message size, every address's length and
the number of addresses are checked against the explicit limits below, a known
field with the wrong wire type is an error, and errors name what was wrong.
Unknown fields are skipped (protobuf semantics).  Enum values unknown to us are
kept as plain integers, so the caller decides (the spec says a client MUST
discard responses with status codes it does not understand).  Addresses are
kept as raw bytes: the index of an address in a request is part of the
protocol, so an address we cannot parse must still hold its place.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import Final

import attrs
from multiaddr import Multiaddr

from switchy.stack.addresses import multiaddr_from_bytes
from switchy.stack.codec import (
    frame_message,
    pb_bytes,
    pb_fields_typed,
    pb_fixed64,
    pb_varint,
    pb_want_bytes,
    pb_want_fixed64,
    pb_want_int,
    split_frame,
)
from switchy.stack.errors import MessageTooLarge, SerializationError

__all__ = [
    "DIAL_BACK_PROTOCOL",
    "DIAL_DATA_CHUNK",
    "DIAL_REQUEST_PROTOCOL",
    "MAX_ADDR_SIZE",
    "MAX_MESSAGE_SIZE",
    "MAX_REQUEST_ADDRS",
    "V1_PROTOCOL",
    "DialBack",
    "DialBackResponse",
    "DialDataRequest",
    "DialDataResponse",
    "DialRequest",
    "DialResponse",
    "DialStatus",
    "ResponseStatus",
    "V1DialResponse",
    "V1Message",
    "V1MessageType",
    "V1PeerInfo",
    "V1Status",
    "V2Message",
    "decode_dial_back",
    "decode_dial_back_response",
    "decode_frame",
    "decode_v1",
    "decode_v2",
    "encode_dial_back",
    "encode_dial_back_response",
    "encode_frame",
    "encode_v1",
    "encode_v2",
    "parse_addr",
]

#: AutoNAT v2: the client's requests and the server's answers.
DIAL_REQUEST_PROTOCOL: Final = "/libp2p/autonat/2/dial-request"
#: AutoNAT v2: the server's dial-back carrying the nonce.
DIAL_BACK_PROTOCOL: Final = "/libp2p/autonat/2/dial-back"
#: AutoNAT v1.
V1_PROTOCOL: Final = "/libp2p/autonat/1.0.0"

#: Largest AutoNAT message accepted or sent (bytes, without the length prefix); the
#: value go-libp2p and js-libp2p use.
MAX_MESSAGE_SIZE: Final = 8192
#: Most addresses in one request (v2 ``DialRequest`` or v1 ``PeerInfo``); a request with
#: more is refused as a whole (go-libp2p looks at the first 50 and ignores the rest).
MAX_REQUEST_ADDRS: Final = 50
#: Longest single address (bytes) in any AutoNAT message.
MAX_ADDR_SIZE: Final = 512
#: Most bytes in the ``data`` of one ``DialDataResponse`` (fixed by the v2 spec).
DIAL_DATA_CHUNK: Final = 4096
#: Longest v1 ``statusText`` (bytes).
MAX_STATUS_TEXT: Final = 1024
_MAX_UINT32: Final = (1 << 32) - 1
_MAX_UINT63: Final = (1 << 63) - 1
_WT_VARINT: Final = 0
_WT_I64: Final = 1
_WT_LEN: Final = 2


# --- v2 -------------------------------------------------------------------------------------


class DialStatus(enum.IntEnum):
    """v2 ``DialStatus``: the outcome of the dial-back."""

    UNUSED = 0
    E_DIAL_ERROR = 100
    E_DIAL_BACK_ERROR = 101
    OK = 200


class ResponseStatus(enum.IntEnum):
    """v2 ``DialResponse.ResponseStatus``."""

    E_INTERNAL_ERROR = 0
    E_REQUEST_REJECTED = 100
    E_DIAL_REFUSED = 101
    OK = 200


def _check_addr_list(
    _inst: object, attribute: attrs.Attribute[tuple[bytes, ...]], value: tuple[bytes, ...]
) -> None:
    if len(value) > MAX_REQUEST_ADDRS:
        raise MessageTooLarge(
            f"{attribute.name}: {len(value)} addresses, at most {MAX_REQUEST_ADDRS}"
        )
    for raw in value:
        if len(raw) > MAX_ADDR_SIZE:
            raise MessageTooLarge(
                f"{attribute.name}: an address of {len(raw)} bytes, at most {MAX_ADDR_SIZE}"
            )


def _uint(name: str, value: int, top: int) -> None:
    if not 0 <= value <= top:
        raise SerializationError(f"{name} {value} is out of range [0, {top}]")


@attrs.frozen
class DialRequest:
    """``DialRequest``: addresses in priority order (raw bytes) and a fixed64 nonce."""

    addrs: tuple[bytes, ...] = attrs.field(validator=_check_addr_list)
    nonce: int

    def __attrs_post_init__(self) -> None:
        _uint("DialRequest.nonce", self.nonce, (1 << 64) - 1)

    @classmethod
    def of(cls, addrs: Sequence[Multiaddr], nonce: int) -> DialRequest:
        """A request for ``addrs`` (multiaddrs) with ``nonce``."""
        return cls(tuple(a.to_bytes() for a in addrs), nonce)


@attrs.frozen
class DialResponse:
    """``DialResponse``: the request's status, the index dialed and the dial's outcome.

    ``status`` and ``dial_status`` are plain integers when the code is unknown to us.
    """

    status: ResponseStatus | int
    addr_idx: int = 0
    dial_status: DialStatus | int = DialStatus.UNUSED

    def __attrs_post_init__(self) -> None:
        _uint("DialResponse.addrIdx", self.addr_idx, _MAX_UINT32)


@attrs.frozen
class DialDataRequest:
    """``DialDataRequest``: the server asks for ``num_bytes`` before dialing ``addr_idx``."""

    addr_idx: int
    num_bytes: int

    def __attrs_post_init__(self) -> None:
        _uint("DialDataRequest.addrIdx", self.addr_idx, _MAX_UINT32)
        _uint("DialDataRequest.numBytes", self.num_bytes, _MAX_UINT63)


@attrs.frozen
class DialDataResponse:
    """``DialDataResponse``: at most :data:`DIAL_DATA_CHUNK` bytes of dial data."""

    data: bytes

    def __attrs_post_init__(self) -> None:
        if len(self.data) > DIAL_DATA_CHUNK:
            raise MessageTooLarge(
                f"DialDataResponse.data of {len(self.data)} bytes, at most {DIAL_DATA_CHUNK}"
            )


#: The v2 ``Message`` oneof on ``/libp2p/autonat/2/dial-request``.
V2Message = DialRequest | DialResponse | DialDataRequest | DialDataResponse


@attrs.frozen
class DialBack:
    """``DialBack``: the nonce, sent by the server on ``/libp2p/autonat/2/dial-back``."""

    nonce: int

    def __attrs_post_init__(self) -> None:
        _uint("DialBack.nonce", self.nonce, (1 << 64) - 1)


@attrs.frozen
class DialBackResponse:
    """``DialBackResponse``: the client's acknowledgement (status ``OK`` = 0)."""

    status: int = 0


def _checked(kind: str, data: bytes) -> bytes:
    if len(data) > MAX_MESSAGE_SIZE:
        raise MessageTooLarge(f"{kind} of {len(data)} bytes exceeds {MAX_MESSAGE_SIZE} bytes")
    return data


def _encode_dial_request(m: DialRequest) -> bytes:
    out = bytearray()
    for raw in m.addrs:
        out += pb_bytes(1, raw)
    if m.nonce:
        out += pb_fixed64(2, m.nonce)
    return bytes(out)


def _encode_dial_response(m: DialResponse) -> bytes:
    out = bytearray()
    if int(m.status):
        out += pb_varint(1, int(m.status))
    if m.addr_idx:
        out += pb_varint(2, m.addr_idx)
    if int(m.dial_status):
        out += pb_varint(3, int(m.dial_status))
    return bytes(out)


def _encode_dial_data_request(m: DialDataRequest) -> bytes:
    out = b""
    if m.addr_idx:
        out += pb_varint(1, m.addr_idx)
    if m.num_bytes:
        out += pb_varint(2, m.num_bytes)
    return out


def encode_v2(msg: V2Message) -> bytes:
    """Encode a v2 ``Message`` carrying ``msg``; :class:`MessageTooLarge` past the limit."""
    if isinstance(msg, DialRequest):
        body = pb_bytes(1, _encode_dial_request(msg))
    elif isinstance(msg, DialResponse):
        body = pb_bytes(2, _encode_dial_response(msg))
    elif isinstance(msg, DialDataRequest):
        body = pb_bytes(3, _encode_dial_data_request(msg))
    else:
        body = pb_bytes(4, pb_bytes(1, msg.data) if msg.data else b"")
    return _checked("AutoNAT v2 message", body)


def encode_dial_back(msg: DialBack) -> bytes:
    """Encode a ``DialBack``."""
    return pb_fixed64(1, msg.nonce) if msg.nonce else b""


def encode_dial_back_response(msg: DialBackResponse) -> bytes:
    """Encode a ``DialBackResponse``."""
    return pb_varint(1, msg.status) if msg.status else b""


def encode_frame(message: bytes) -> bytes:
    """``message`` prefixed by its length as an unsigned varint."""
    return frame_message(message, MAX_MESSAGE_SIZE, "AutoNAT message")


def decode_frame(data: bytes | bytearray) -> tuple[bytes, int] | None:
    """Split one length-prefixed message off ``data``: ``(message, bytes used)``.

    Returns ``None`` while more bytes are needed; raises :class:`MessageTooLarge`
    as soon as the prefix announces more than :data:`MAX_MESSAGE_SIZE` bytes.
    """
    return split_frame(data, MAX_MESSAGE_SIZE, "AutoNAT message")


def _fields(kind: str, data: bytes) -> list[tuple[int, int, int | bytes]]:
    return list(pb_fields_typed(_checked(kind, data), max_size=MAX_MESSAGE_SIZE))


def _int(where: str, wt: int, value: int | bytes, top: int) -> int:
    number = pb_want_int(where, wt, value)
    if number > top:
        raise SerializationError(f"{where} {number} is out of range [0, {top}]")
    return number


_fixed64 = pb_want_fixed64
_bytes = pb_want_bytes


def _add_addr(where: str, raw: bytes, out: list[bytes]) -> None:
    if len(out) >= MAX_REQUEST_ADDRS:
        raise MessageTooLarge(f"{where}: more than {MAX_REQUEST_ADDRS} addresses")
    if len(raw) > MAX_ADDR_SIZE:
        raise MessageTooLarge(f"{where}: an address of {len(raw)} bytes, at most {MAX_ADDR_SIZE}")
    out.append(raw)


def _enum(cls: type[enum.IntEnum], value: int) -> int:
    try:
        return cls(value)
    except ValueError:
        return value


def _decode_dial_request(data: bytes) -> DialRequest:
    addrs: list[bytes] = []
    nonce = 0
    for field, wt, value in _fields("DialRequest", data):
        if field == 1:
            _add_addr("DialRequest.addrs", _bytes("DialRequest.addrs", wt, value), addrs)
        elif field == 2:
            nonce = _fixed64("DialRequest.nonce", wt, value)
    return DialRequest(tuple(addrs), nonce)


def _decode_dial_response(data: bytes) -> DialResponse:
    status = idx = dial = 0
    for field, wt, value in _fields("DialResponse", data):
        if field == 1:
            status = _int("DialResponse.status", wt, value, _MAX_UINT32)
        elif field == 2:
            idx = _int("DialResponse.addrIdx", wt, value, _MAX_UINT32)
        elif field == 3:
            dial = _int("DialResponse.dialStatus", wt, value, _MAX_UINT32)
    return DialResponse(_enum(ResponseStatus, status), idx, _enum(DialStatus, dial))


def _decode_dial_data_request(data: bytes) -> DialDataRequest:
    idx = num = 0
    for field, wt, value in _fields("DialDataRequest", data):
        if field == 1:
            idx = _int("DialDataRequest.addrIdx", wt, value, _MAX_UINT32)
        elif field == 2:
            num = _int("DialDataRequest.numBytes", wt, value, _MAX_UINT63)
    return DialDataRequest(idx, num)


def _decode_dial_data_response(data: bytes) -> DialDataResponse:
    payload = b""
    for field, wt, value in _fields("DialDataResponse", data):
        if field == 1:
            payload = _bytes("DialDataResponse.data", wt, value)
    return DialDataResponse(payload)


def decode_v2(data: bytes) -> V2Message:
    """Decode a v2 ``Message``; the oneof must hold exactly one known message.

    Raises :class:`SerializationError` (malformed, empty oneof, wrong wire type)
    or :class:`MessageTooLarge` (size, address count or length over the limits).
    """
    found: V2Message | None = None
    decoders: dict[int, Callable[[bytes], V2Message]] = {
        1: _decode_dial_request,
        2: _decode_dial_response,
        3: _decode_dial_data_request,
        4: _decode_dial_data_response,
    }
    for field, wt, value in _fields("AutoNAT v2 message", data):
        decoder = decoders.get(field)
        if decoder is None:
            continue
        if found is not None:  # protobuf: the last member of a oneof wins; we refuse two
            raise SerializationError("AutoNAT v2 message sets more than one member of msg")
        found = decoder(_bytes(f"Message field {field}", wt, value))
    if found is None:
        raise SerializationError("AutoNAT v2 message carries no known msg")
    return found


def decode_dial_back(data: bytes) -> DialBack:
    """Decode a ``DialBack``."""
    nonce = 0
    for field, wt, value in _fields("DialBack", data):
        if field == 1:
            nonce = _fixed64("DialBack.nonce", wt, value)
    return DialBack(nonce)


def decode_dial_back_response(data: bytes) -> DialBackResponse:
    """Decode a ``DialBackResponse``."""
    status = 0
    for field, wt, value in _fields("DialBackResponse", data):
        if field == 1:
            status = _int("DialBackResponse.status", wt, value, _MAX_UINT32)
    return DialBackResponse(status)


# --- v1 -------------------------------------------------------------------------------------


class V1MessageType(enum.IntEnum):
    """v1 ``Message.MessageType``."""

    DIAL = 0
    DIAL_RESPONSE = 1


class V1Status(enum.IntEnum):
    """v1 ``Message.ResponseStatus``."""

    OK = 0
    E_DIAL_ERROR = 100
    E_DIAL_REFUSED = 101
    E_BAD_REQUEST = 200
    E_INTERNAL_ERROR = 300


@attrs.frozen
class V1PeerInfo:
    """v1 ``PeerInfo``: the requester's peer id (raw bytes) and its addresses (raw bytes)."""

    id: bytes | None = None
    addrs: tuple[bytes, ...] = attrs.field(default=(), validator=_check_addr_list)


@attrs.frozen
class V1DialResponse:
    """v1 ``DialResponse``: status, an optional text and (on success) the address dialed."""

    status: V1Status | int | None = None
    status_text: str | None = None
    addr: bytes | None = None

    def __attrs_post_init__(self) -> None:
        if self.status_text is not None and len(self.status_text.encode()) > MAX_STATUS_TEXT:
            raise MessageTooLarge(f"statusText longer than {MAX_STATUS_TEXT} bytes")
        if self.addr is not None and len(self.addr) > MAX_ADDR_SIZE:
            raise MessageTooLarge(f"DialResponse.addr longer than {MAX_ADDR_SIZE} bytes")


@attrs.frozen
class V1Message:
    """v1 ``Message``: ``type`` and a ``dial`` (its ``peer``) or a ``dial_response``."""

    type: V1MessageType | int | None = None
    dial: V1PeerInfo | None = None
    dial_response: V1DialResponse | None = None


def encode_v1(msg: V1Message) -> bytes:
    """Encode a v1 ``Message`` (proto2: fields that are set are written, in number order)."""
    out = bytearray()
    if msg.type is not None:
        out += pb_varint(1, int(msg.type))
    if msg.dial is not None:
        peer = bytearray()
        if msg.dial.id is not None:
            peer += pb_bytes(1, msg.dial.id)
        for raw in msg.dial.addrs:
            peer += pb_bytes(2, raw)
        out += pb_bytes(2, pb_bytes(1, bytes(peer)))
    if msg.dial_response is not None:
        r = msg.dial_response
        body = bytearray()
        if r.status is not None:
            body += pb_varint(1, int(r.status))
        if r.status_text is not None:
            body += pb_bytes(2, r.status_text.encode())
        if r.addr is not None:
            body += pb_bytes(3, r.addr)
        out += pb_bytes(3, bytes(body))
    return _checked("AutoNAT v1 message", bytes(out))


def _decode_v1_peer(data: bytes) -> V1PeerInfo:
    pid: bytes | None = None
    addrs: list[bytes] = []
    for field, wt, value in _fields("PeerInfo", data):
        if field == 1:
            pid = _bytes("PeerInfo.id", wt, value)
        elif field == 2:
            _add_addr("PeerInfo.addrs", _bytes("PeerInfo.addrs", wt, value), addrs)
    return V1PeerInfo(pid, tuple(addrs))


def _decode_v1_dial(data: bytes) -> V1PeerInfo:
    peer = V1PeerInfo()
    for field, wt, value in _fields("Dial", data):
        if field == 1:
            peer = _decode_v1_peer(_bytes("Dial.peer", wt, value))
    return peer


def _decode_v1_response(data: bytes) -> V1DialResponse:
    status: int | None = None
    text: str | None = None
    addr: bytes | None = None
    for field, wt, value in _fields("DialResponse", data):
        if field == 1:
            status = _enum(V1Status, _int("DialResponse.status", wt, value, _MAX_UINT32))
        elif field == 2:
            raw = _bytes("DialResponse.statusText", wt, value)
            if len(raw) > MAX_STATUS_TEXT:
                raise MessageTooLarge(f"statusText of {len(raw)} bytes, at most {MAX_STATUS_TEXT}")
            try:
                text = raw.decode()
            except UnicodeDecodeError:
                raise SerializationError("DialResponse.statusText is not UTF-8") from None
        elif field == 3:
            addr = _bytes("DialResponse.addr", wt, value)
            if len(addr) > MAX_ADDR_SIZE:
                raise MessageTooLarge(f"DialResponse.addr of {len(addr)} bytes")
    return V1DialResponse(status, text, addr)


def decode_v1(data: bytes) -> V1Message:
    """Decode a v1 ``Message`` (errors as :func:`decode_v2`)."""
    mtype: int | None = None
    dial: V1PeerInfo | None = None
    response: V1DialResponse | None = None
    for field, wt, value in _fields("AutoNAT v1 message", data):
        if field == 1:
            mtype = _enum(V1MessageType, _int("Message.type", wt, value, _MAX_UINT32))
        elif field == 2:
            dial = _decode_v1_dial(_bytes("Message.dial", wt, value))
        elif field == 3:
            response = _decode_v1_response(_bytes("Message.dialResponse", wt, value))
    return V1Message(mtype, dial, response)


def parse_addr(raw: bytes) -> Multiaddr | None:
    """The multiaddr in ``raw``, or ``None`` when it is too long or does not parse."""
    return multiaddr_from_bytes(raw, MAX_ADDR_SIZE)
