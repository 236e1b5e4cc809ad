"""Sans-IO codec of ``/switchy/discovery/1.0.0`` (see ``specs/discovery.md``).

Each message is a msgpack map prefixed with its length as an unsigned
varint.  Requests (``REGISTER``, ``REFRESH``, ``UNREGISTER``, ``LOOKUP``) go
from client to registry, one ``RESPONSE`` comes back per request, in order.
:class:`ServerCore` and :class:`ClientCore` are the two ends as pure state
machines: bytes in, messages out; messages in, bytes out.
"""

from __future__ import annotations

import enum
from typing import Any, Final, TypeAlias

import attrs
import msgpack

from switchy.stack.codec import decode_uvarint, encode_uvarint
from switchy.stack.errors import MessageTooLarge, ProtocolError, SerializationError

__all__ = [
    "DISCOVERY_PROTOCOL",
    "MAX_CLAIM_SIZE",
    "MAX_FRAME_SIZE",
    "MAX_NAME_LENGTH",
    "MAX_PIPELINED_REQUESTS",
    "MAX_TTL",
    "ClientCore",
    "Lookup",
    "Message",
    "Refresh",
    "Register",
    "Request",
    "Response",
    "ServerCore",
    "Status",
    "Unregister",
    "decode_message",
    "encode_frame",
    "encode_message",
    "validate_name",
]

#: The protocol id.
DISCOVERY_PROTOCOL: Final = "/switchy/discovery/1.0.0"
#: Longest name, in UTF-8 bytes.
MAX_NAME_LENGTH: Final = 64
#: Largest signed name claim (envelope bytes) carried in a message.
MAX_CLAIM_SIZE: Final = 4096
#: Largest message body (msgpack bytes after the length prefix).
MAX_FRAME_SIZE: Final = 8192
#: Largest TTL a message may carry, in seconds (one day); registries may grant less.
MAX_TTL: Final = 86400
#: Most requests a client may send before reading their responses.
MAX_PIPELINED_REQUESTS: Final = 8
#: Longest status message, in characters.
MAX_STATUS_MESSAGE: Final = 512
_MAX_PREFIX: Final = 3  # MAX_FRAME_SIZE fits in a 2-byte varint; a 3rd byte is already too big


class Status(enum.IntEnum):
    """Status codes of a ``RESPONSE``."""

    OK = 0
    NOT_FOUND = 1
    NAME_TAKEN = 2
    NOT_OWNER = 3
    BAD_REQUEST = 4
    BAD_RECORD = 5
    LIMIT_EXCEEDED = 6


def validate_name(name: object) -> str:
    """Return ``name`` if it is a valid name, else raise :class:`SerializationError`.

    A name is 1 to :data:`MAX_NAME_LENGTH` bytes of UTF-8, printable, without
    whitespace.  Names are compared exactly (case-sensitive, no normalisation).
    """
    if not isinstance(name, str):
        raise SerializationError(f"a name is a string, not {type(name).__name__}")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise SerializationError(f"name {name!r} is not valid UTF-8") from None
    if not 1 <= size <= MAX_NAME_LENGTH:
        raise SerializationError(f"a name is 1 to {MAX_NAME_LENGTH} UTF-8 bytes, got {size}")
    if not name.isprintable() or any(c.isspace() for c in name):
        raise SerializationError(f"name {name!r} contains whitespace or control characters")
    return name


@attrs.frozen
class Register:
    """Claim ``name`` for ``ttl`` seconds with a signed name claim."""

    name: str
    ttl: int
    claim: bytes


@attrs.frozen
class Refresh:
    """Extend the caller's registration of ``name`` to ``ttl`` seconds from now."""

    name: str
    ttl: int


@attrs.frozen
class Unregister:
    """Give up the caller's registration of ``name``."""

    name: str


@attrs.frozen
class Lookup:
    """Ask who holds ``name``."""

    name: str


@attrs.frozen
class Response:
    """The answer to one request."""

    status: Status
    message: str = ""
    #: Granted TTL (REGISTER, REFRESH) or remaining TTL (LOOKUP), in seconds; else 0.
    ttl: int = 0
    #: The signed name claim (LOOKUP answered OK), else empty.
    claim: bytes = b""


Request: TypeAlias = Register | Refresh | Unregister | Lookup
Message: TypeAlias = Request | Response

_TYPES: dict[type[Any], str] = {
    Register: "REGISTER",
    Refresh: "REFRESH",
    Unregister: "UNREGISTER",
    Lookup: "LOOKUP",
    Response: "RESPONSE",
}


def encode_message(msg: Message) -> bytes:
    """The msgpack body of ``msg`` (no length prefix).

    Raises :class:`SerializationError` for an invalid field, :class:`MessageTooLarge`
    when the body exceeds :data:`MAX_FRAME_SIZE`.
    """
    body: dict[str, Any] = {"type": _TYPES[type(msg)]}
    if isinstance(msg, Response):
        body["status"] = int(msg.status)
        if msg.message:
            body["message"] = msg.message[:MAX_STATUS_MESSAGE]
        if msg.ttl:
            body["ttl"] = _check_ttl(msg.ttl, allow_zero=True)
        if msg.claim:
            body["claim"] = _check_claim(msg.claim)
    else:
        body["name"] = validate_name(msg.name)
        if isinstance(msg, Register | Refresh):
            body["ttl"] = _check_ttl(msg.ttl)
        if isinstance(msg, Register):
            body["claim"] = _check_claim(msg.claim)
    data: bytes = msgpack.packb(body, use_bin_type=True)
    if len(data) > MAX_FRAME_SIZE:
        raise MessageTooLarge(f"discovery message of {len(data)} bytes exceeds {MAX_FRAME_SIZE}")
    return data


def encode_frame(msg: Message) -> bytes:
    """``msg`` with its varint length prefix, ready for the wire."""
    body = encode_message(msg)
    return encode_uvarint(len(body)) + body


def _check_ttl(value: object, *, allow_zero: bool = False) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise SerializationError(f"ttl is an integer, not {type(value).__name__}")
    low = 0 if allow_zero else 1
    if not low <= value <= MAX_TTL:
        raise SerializationError(f"ttl {value} is not within {low}..{MAX_TTL} seconds")
    return value


def _check_claim(value: object) -> bytes:
    if not isinstance(value, bytes):
        raise SerializationError(f"claim is binary, not {type(value).__name__}")
    if not value:
        raise SerializationError("claim is empty")
    if len(value) > MAX_CLAIM_SIZE:
        raise MessageTooLarge(f"claim of {len(value)} bytes exceeds {MAX_CLAIM_SIZE}")
    return value


def decode_message(body: bytes) -> Message:
    """Parse one message body; :class:`SerializationError` names what is wrong."""
    if len(body) > MAX_FRAME_SIZE:
        raise MessageTooLarge(f"discovery message of {len(body)} bytes exceeds {MAX_FRAME_SIZE}")
    try:
        obj = msgpack.unpackb(
            body,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=MAX_FRAME_SIZE,
            max_bin_len=MAX_FRAME_SIZE,
            max_array_len=16,
            max_map_len=16,
            max_ext_len=0,
        )
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise SerializationError(f"discovery message is not one msgpack value: {exc}") from None
    if not isinstance(obj, dict):
        raise SerializationError(f"discovery message is a map, not {type(obj).__name__}")
    kind = obj.get("type")
    if kind == "RESPONSE":
        status = obj.get("status")
        if not isinstance(status, int) or isinstance(status, bool):
            raise SerializationError("RESPONSE lacks an integer status")
        try:
            code = Status(status)
        except ValueError:
            raise SerializationError(f"unknown status code {status}") from None
        message = obj.get("message", "")
        if not isinstance(message, str) or len(message) > MAX_STATUS_MESSAGE:
            raise SerializationError(f"RESPONSE message is not a string of <= {MAX_STATUS_MESSAGE}")
        claim = obj.get("claim", b"")
        return Response(
            code,
            message,
            _check_ttl(obj.get("ttl", 0), allow_zero=True),
            _check_claim(claim) if claim != b"" else b"",
        )
    if kind not in ("REGISTER", "REFRESH", "UNREGISTER", "LOOKUP"):
        raise SerializationError(f"unknown discovery message type {kind!r}")
    name = validate_name(obj.get("name"))
    if kind == "LOOKUP":
        return Lookup(name)
    if kind == "UNREGISTER":
        return Unregister(name)
    if "ttl" not in obj:
        raise SerializationError(f"{kind} lacks a ttl")
    ttl = _check_ttl(obj["ttl"])
    if kind == "REFRESH":
        return Refresh(name, ttl)
    if "claim" not in obj:
        raise SerializationError("REGISTER lacks a claim")
    return Register(name, ttl, _check_claim(obj["claim"]))


class _FrameReader:
    """Splits varint-length-prefixed frames out of a byte stream, never trusting a length."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the frames it completes (bodies without their prefix)."""
        self._buf += data
        frames: list[bytes] = []
        while self._buf:
            r = decode_uvarint(self._buf[:_MAX_PREFIX])
            if r is None:
                if len(self._buf) >= _MAX_PREFIX:
                    raise MessageTooLarge(f"discovery frame length exceeds {MAX_FRAME_SIZE}")
                break
            length, pos = r
            if length > MAX_FRAME_SIZE:
                raise MessageTooLarge(
                    f"discovery frame of {length} bytes announced, the limit is {MAX_FRAME_SIZE}"
                )
            if len(self._buf) - pos < length:
                break
            frames.append(bytes(self._buf[pos : pos + length]))
            del self._buf[: pos + length]
        return frames

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held."""
        return len(self._buf)


class ServerCore:
    """The registry end of one stream: requests out of bytes, responses into bytes.

    :meth:`receive_data` raises :class:`ProtocolError` (or a subclass) for a
    malformed frame or message, a ``RESPONSE`` sent by the client, or more than
    :data:`MAX_PIPELINED_REQUESTS` unanswered requests; the stream is then
    unusable (answer ``BAD_REQUEST`` with :meth:`fail` and close).
    """

    def __init__(self) -> None:
        self._reader = _FrameReader()
        self._out = bytearray()
        self._pending = 0
        self.failed = False

    def receive_data(self, data: bytes) -> list[Request]:
        """Feed bytes from the client; return the complete requests they finish."""
        if self.failed:
            raise ProtocolError("the discovery stream already failed")
        try:
            requests: list[Request] = []
            for frame in self._reader.feed(data):
                msg = decode_message(frame)
                if isinstance(msg, Response):
                    raise SerializationError("a client sent a RESPONSE")
                if self._pending + len(requests) >= MAX_PIPELINED_REQUESTS:
                    raise MessageTooLarge(
                        f"more than {MAX_PIPELINED_REQUESTS} requests sent without reading answers"
                    )
                requests.append(msg)
        except ProtocolError:
            self.failed = True
            raise
        self._pending += len(requests)
        return requests

    def send_response(self, response: Response) -> None:
        """Queue the answer to the oldest unanswered request."""
        if self._pending <= 0:
            raise ProtocolError("no request is waiting for a response")
        self._pending -= 1
        self._out += encode_frame(response)

    def fail(self, reason: str) -> None:
        """Queue a final ``BAD_REQUEST`` naming ``reason`` (the stream ends after it)."""
        self.failed = True
        self._pending = 0
        self._out += encode_frame(Response(Status.BAD_REQUEST, reason))

    def data_to_send(self) -> bytes:
        """Bytes to write to the client now."""
        data = bytes(self._out)
        self._out.clear()
        return data

    @property
    def pending(self) -> int:
        """Requests received and not answered yet."""
        return self._pending


class ClientCore:
    """The client end of one stream: requests into bytes, responses out of bytes."""

    def __init__(self) -> None:
        self._reader = _FrameReader()
        self._out = bytearray()
        self._pending = 0

    def send_request(self, request: Request) -> None:
        """Queue ``request`` (at most :data:`MAX_PIPELINED_REQUESTS` unanswered)."""
        if self._pending >= MAX_PIPELINED_REQUESTS:
            raise ProtocolError(f"{MAX_PIPELINED_REQUESTS} requests are already unanswered")
        self._out += encode_frame(request)
        self._pending += 1

    def receive_data(self, data: bytes) -> list[Response]:
        """Feed bytes from the registry; return the responses they complete.

        Raises :class:`ProtocolError` for a malformed frame, a request sent by
        the registry, or a response nobody asked for.
        """
        responses: list[Response] = []
        for frame in self._reader.feed(data):
            msg = decode_message(frame)
            if not isinstance(msg, Response):
                raise SerializationError(f"the registry sent a {_TYPES[type(msg)]} request")
            if self._pending <= 0:
                raise ProtocolError("the registry sent a response to no request")
            self._pending -= 1
            responses.append(msg)
        return responses

    def data_to_send(self) -> bytes:
        """Bytes to write to the registry now."""
        data = bytes(self._out)
        self._out.clear()
        return data

    @property
    def pending(self) -> int:
        """Requests sent and not answered yet."""
        return self._pending
