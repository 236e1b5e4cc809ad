"""Sans-IO codecs of circuit relay v2 messages (libp2p specs, ``relay/circuit-v2.md``).

The messages are protobufs, written by hand on :mod:`switchy.stack.codec`:
fields in number order, minimal varints, ``type`` always present.  Each
message travels on its stream prefixed by its length as an unsigned varint
(:meth:`switchy.stack.stream.Stream.send_message` / ``recv_message`` with
:data:`MAX_MESSAGE_SIZE`); :func:`encode_frame` / :func:`decode_frame` are the
same framing for byte buffers.

Decoders never trust the input: the message size, every length and every
count is checked against an explicit limit, a known field with the wrong wire
type is an error, and errors name what was wrong.  Unknown fields are skipped
(protobuf semantics); a repeated scalar keeps its last value.  Status codes
unknown to us are kept as plain integers, so a newer peer's refusal still
reads as a refusal.
"""

from __future__ import annotations

import enum
from typing import Final

import attrs
from multiaddr import Multiaddr

from switchy.stack.codec import frame_message, pb_bytes, pb_fields, pb_varint, split_frame
from switchy.stack.errors import InvalidPeerId, MessageTooLarge, SerializationError
from switchy.stack.identity import PeerId

__all__ = [
    "HOP_PROTOCOL",
    "MAX_ADDRS",
    "MAX_ADDR_SIZE",
    "MAX_MESSAGE_SIZE",
    "MAX_UINT32",
    "STOP_PROTOCOL",
    "HopMessage",
    "HopType",
    "Limit",
    "Peer",
    "Reservation",
    "Status",
    "StopMessage",
    "StopType",
    "Voucher",
    "decode_frame",
    "decode_hop",
    "decode_stop",
    "decode_voucher",
    "encode_frame",
    "encode_hop",
    "encode_stop",
    "encode_voucher",
    "status_name",
]

#: The hop protocol: reservations and connection requests, client to relay.
HOP_PROTOCOL: Final = "/libp2p/circuit/relay/0.2.0/hop"
#: The stop protocol: the relay hands a relayed connection to its target.
STOP_PROTOCOL: Final = "/libp2p/circuit/relay/0.2.0/stop"
#: Largest relay message accepted or sent (bytes, without the length prefix).
MAX_MESSAGE_SIZE: Final = 4096
#: Most addresses in one ``Peer`` or ``Reservation``.
MAX_ADDRS: Final = 32
#: Longest single address (bytes).
MAX_ADDR_SIZE: Final = 512
#: ``Limit.duration`` is a uint32.
MAX_UINT32: Final = (1 << 32) - 1
#: Largest varint value (63 bits, the multiformats limit).
_MAX_UINT63: Final = (1 << 63) - 1


class HopType(enum.IntEnum):
    """``HopMessage.Type``."""

    RESERVE = 0
    CONNECT = 1
    STATUS = 2


class StopType(enum.IntEnum):
    """``StopMessage.Type``."""

    CONNECT = 0
    STATUS = 1


class Status(enum.IntEnum):
    """The spec's ``Status`` codes."""

    UNUSED = 0
    OK = 100
    RESERVATION_REFUSED = 200
    RESOURCE_LIMIT_EXCEEDED = 201
    PERMISSION_DENIED = 202
    CONNECTION_FAILED = 203
    NO_RESERVATION = 204
    MALFORMED_MESSAGE = 400
    UNEXPECTED_MESSAGE = 401


def status_name(code: int | None) -> str:
    """A readable name of a status code (``NO_RESERVATION (204)``; unknown codes by number)."""
    if code is None:
        return "no status"
    try:
        return f"{Status(code).name} ({int(code)})"
    except ValueError:
        return f"unknown status {int(code)}"


def _status(value: int) -> Status | int:
    try:
        return Status(value)
    except ValueError:
        return value


def _check_addrs(
    _inst: object, attribute: attrs.Attribute[tuple[Multiaddr, ...]], value: tuple[Multiaddr, ...]
) -> None:
    if len(value) > MAX_ADDRS:
        raise MessageTooLarge(f"{attribute.name}: {len(value)} addresses, at most {MAX_ADDRS}")


@attrs.frozen
class Peer:
    """``Peer``: a peer id and (for active relaying, deprecated) its addresses."""

    id: PeerId
    addrs: tuple[Multiaddr, ...] = attrs.field(default=(), validator=_check_addrs)


@attrs.frozen
class Limit:
    """``Limit``: per relayed connection; 0 means "no limit" for each field."""

    #: Longest life of a relayed connection, seconds (uint32).
    duration: int = 0
    #: Bytes allowed in each direction (uint64).
    data: int = 0

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.duration <= MAX_UINT32:
            raise SerializationError(f"Limit.duration {self.duration} is not a uint32")
        if not 0 <= self.data <= _MAX_UINT63:
            raise SerializationError(f"Limit.data {self.data} is out of range")


@attrs.frozen
class Reservation:
    """``Reservation``: expiry (UNIX seconds), the relay's addresses, an optional voucher."""

    expire: int
    addrs: tuple[Multiaddr, ...] = attrs.field(default=(), validator=_check_addrs)
    voucher: bytes | None = None

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.expire <= _MAX_UINT63:
            raise SerializationError(f"Reservation.expire {self.expire} is out of range")


@attrs.frozen
class HopMessage:
    """``HopMessage`` (protocol ``/libp2p/circuit/relay/0.2.0/hop``)."""

    type: HopType
    peer: Peer | None = None
    reservation: Reservation | None = None
    limit: Limit | None = None
    status: Status | int | None = None


@attrs.frozen
class StopMessage:
    """``StopMessage`` (protocol ``/libp2p/circuit/relay/0.2.0/stop``)."""

    type: StopType
    peer: Peer | None = None
    limit: Limit | None = None
    status: Status | int | None = None


@attrs.frozen
class Voucher:
    """The payload of a reservation voucher (a signed envelope, ``libp2p-relay-rsvp``)."""

    relay: PeerId
    peer: PeerId
    expiration: int


# --- encoding -----------------------------------------------------------------------------


def _encode_peer(p: Peer) -> bytes:
    out = bytearray(pb_bytes(1, p.id.to_bytes()))
    for a in p.addrs:
        out += pb_bytes(2, a.to_bytes())
    return bytes(out)


def _encode_limit(limit: Limit) -> bytes:
    out = b""
    if limit.duration:
        out += pb_varint(1, limit.duration)
    if limit.data:
        out += pb_varint(2, limit.data)
    return out


def _encode_reservation(r: Reservation) -> bytes:
    out = bytearray(pb_varint(1, r.expire))
    for a in r.addrs:
        out += pb_bytes(2, a.to_bytes())
    if r.voucher is not None:
        out += pb_bytes(3, r.voucher)
    return bytes(out)


def _checked(kind: str, data: bytes) -> bytes:
    if len(data) > MAX_MESSAGE_SIZE:
        raise MessageTooLarge(f"{kind} of {len(data)} bytes exceeds {MAX_MESSAGE_SIZE} bytes")
    return data


def encode_hop(msg: HopMessage) -> bytes:
    """Encode a ``HopMessage``; :class:`MessageTooLarge` above :data:`MAX_MESSAGE_SIZE`."""
    out = bytearray(pb_varint(1, int(msg.type)))
    if msg.peer is not None:
        out += pb_bytes(2, _encode_peer(msg.peer))
    if msg.reservation is not None:
        out += pb_bytes(3, _encode_reservation(msg.reservation))
    if msg.limit is not None:
        out += pb_bytes(4, _encode_limit(msg.limit))
    if msg.status is not None:
        out += pb_varint(5, int(msg.status))
    return _checked("HopMessage", bytes(out))


def encode_stop(msg: StopMessage) -> bytes:
    """Encode a ``StopMessage``; :class:`MessageTooLarge` above :data:`MAX_MESSAGE_SIZE`."""
    out = bytearray(pb_varint(1, int(msg.type)))
    if msg.peer is not None:
        out += pb_bytes(2, _encode_peer(msg.peer))
    if msg.limit is not None:
        out += pb_bytes(3, _encode_limit(msg.limit))
    if msg.status is not None:
        out += pb_varint(4, int(msg.status))
    return _checked("StopMessage", bytes(out))


def encode_voucher(v: Voucher) -> bytes:
    """Encode a ``Voucher`` payload, canonically (fields in number order)."""
    return (
        pb_bytes(1, v.relay.to_bytes())
        + pb_bytes(2, v.peer.to_bytes())
        + pb_varint(3, v.expiration)
    )


def encode_frame(message: bytes) -> bytes:
    """``message`` prefixed by its length as an unsigned varint."""
    return frame_message(message, MAX_MESSAGE_SIZE, "relay message")


def decode_frame(data: bytes | bytearray) -> tuple[bytes, int] | None:
    """Split one length-prefixed message off ``data``: ``(message, bytes used)``.

    Returns ``None`` while more bytes are needed; raises :class:`MessageTooLarge`
    as soon as the prefix announces more than :data:`MAX_MESSAGE_SIZE` bytes.
    """
    return split_frame(data, MAX_MESSAGE_SIZE, "relay message")


# --- decoding -----------------------------------------------------------------------------


def _want_int(where: str, value: int | bytes) -> int:
    if not isinstance(value, int):
        raise SerializationError(f"{where} must be a varint field")
    return value


def _want_bytes(where: str, value: int | bytes) -> bytes:
    if not isinstance(value, bytes):
        raise SerializationError(f"{where} must be a length-delimited field")
    return value


def _peer_id(where: str, raw: bytes) -> PeerId:
    try:
        return PeerId.from_bytes(raw)
    except InvalidPeerId as exc:
        raise SerializationError(f"{where} is not a valid peer id: {exc}") from None


def _addr(where: str, raw: bytes, out: list[Multiaddr], count: int) -> None:
    if count > MAX_ADDRS:
        raise MessageTooLarge(f"{where}: more than {MAX_ADDRS} addresses")
    if len(raw) > MAX_ADDR_SIZE:
        raise MessageTooLarge(f"{where}: address of {len(raw)} bytes exceeds {MAX_ADDR_SIZE}")
    try:
        addr = Multiaddr(raw)
        str(addr)  # parsing from bytes is lazy: validate now
    except Exception:  # the multiaddr package raises several types; skip what we cannot parse
        return
    out.append(addr)


def _decode_peer(data: bytes) -> Peer:
    pid: PeerId | None = None
    addrs: list[Multiaddr] = []
    count = 0
    for field, value in pb_fields(data, max_size=MAX_MESSAGE_SIZE):
        if field == 1:
            pid = _peer_id("Peer.id", _want_bytes("Peer.id", value))
        elif field == 2:
            count += 1
            _addr("Peer.addrs", _want_bytes("Peer.addrs", value), addrs, count)
    if pid is None:
        raise SerializationError("Peer.id is missing")
    return Peer(pid, tuple(addrs))


def _decode_limit(data: bytes) -> Limit:
    duration = 0
    size = 0
    for field, value in pb_fields(data, max_size=MAX_MESSAGE_SIZE):
        if field == 1:
            duration = _want_int("Limit.duration", value)
            if duration > MAX_UINT32:
                raise SerializationError(f"Limit.duration {duration} is not a uint32")
        elif field == 2:
            size = _want_int("Limit.data", value)
    return Limit(duration, size)


def _decode_reservation(data: bytes) -> Reservation:
    expire: int | None = None
    addrs: list[Multiaddr] = []
    voucher: bytes | None = None
    count = 0
    for field, value in pb_fields(data, max_size=MAX_MESSAGE_SIZE):
        if field == 1:
            expire = _want_int("Reservation.expire", value)
        elif field == 2:
            count += 1
            _addr("Reservation.addrs", _want_bytes("Reservation.addrs", value), addrs, count)
        elif field == 3:
            voucher = _want_bytes("Reservation.voucher", value)
    if expire is None:
        raise SerializationError("Reservation.expire is missing")
    return Reservation(expire, tuple(addrs), voucher)


def _check_size(kind: str, data: bytes) -> None:
    if len(data) > MAX_MESSAGE_SIZE:
        raise MessageTooLarge(f"{kind} of {len(data)} bytes exceeds {MAX_MESSAGE_SIZE} bytes")


def decode_hop(data: bytes) -> HopMessage:
    """Decode a ``HopMessage``.

    Raises :class:`SerializationError` (malformed, unknown type, bad peer id)
    or :class:`MessageTooLarge` (size or counts over the limits).
    """
    _check_size("HopMessage", data)
    mtype: int | None = None
    peer = reservation = limit = None
    status: Status | int | None = None
    for field, value in pb_fields(data, max_size=MAX_MESSAGE_SIZE):
        if field == 1:
            mtype = _want_int("HopMessage.type", value)
        elif field == 2:
            peer = _decode_peer(_want_bytes("HopMessage.peer", value))
        elif field == 3:
            reservation = _decode_reservation(_want_bytes("HopMessage.reservation", value))
        elif field == 4:
            limit = _decode_limit(_want_bytes("HopMessage.limit", value))
        elif field == 5:
            status = _status(_want_int("HopMessage.status", value))
    if mtype is None:
        raise SerializationError("HopMessage.type is missing")
    try:
        htype = HopType(mtype)
    except ValueError:
        raise SerializationError(f"unknown HopMessage.type {mtype}") from None
    return HopMessage(htype, peer, reservation, limit, status)


def decode_stop(data: bytes) -> StopMessage:
    """Decode a ``StopMessage`` (errors as :func:`decode_hop`)."""
    _check_size("StopMessage", data)
    mtype: int | None = None
    peer = limit = None
    status: Status | int | None = None
    for field, value in pb_fields(data, max_size=MAX_MESSAGE_SIZE):
        if field == 1:
            mtype = _want_int("StopMessage.type", value)
        elif field == 2:
            peer = _decode_peer(_want_bytes("StopMessage.peer", value))
        elif field == 3:
            limit = _decode_limit(_want_bytes("StopMessage.limit", value))
        elif field == 4:
            status = _status(_want_int("StopMessage.status", value))
    if mtype is None:
        raise SerializationError("StopMessage.type is missing")
    try:
        stype = StopType(mtype)
    except ValueError:
        raise SerializationError(f"unknown StopMessage.type {mtype}") from None
    return StopMessage(stype, peer, limit, status)


def decode_voucher(data: bytes) -> Voucher:
    """Decode a ``Voucher`` payload; every field is required."""
    _check_size("Voucher", data)
    relay: PeerId | None = None
    peer: PeerId | None = None
    expiration: int | None = None
    for field, value in pb_fields(data, max_size=MAX_MESSAGE_SIZE):
        if field == 1:
            relay = _peer_id("Voucher.relay", _want_bytes("Voucher.relay", value))
        elif field == 2:
            peer = _peer_id("Voucher.peer", _want_bytes("Voucher.peer", value))
        elif field == 3:
            expiration = _want_int("Voucher.expiration", value)
    if relay is None or peer is None or expiration is None:
        missing = [
            n
            for n, v in (("relay", relay), ("peer", peer), ("expiration", expiration))
            if v is None
        ]
        raise SerializationError(f"Voucher is missing {', '.join(missing)}")
    return Voucher(relay, peer, expiration)
