"""Sans-IO core of ``/switchy/router/1.0.0``: encoding and parsing of one request or response.

Wire format (``specs/router.md``)::

    message    = head [ body ]
    head       = uvarint(L) msgpack-map[L]       1 <= L <= MAX_HEAD_SIZE
    body       = *data-frame end-frame           present iff head["length"] != 0
    data-frame = uvarint(n) n*OCTET              1 <= n <= MAX_FRAME_SIZE
    end-frame  = 0x00

:class:`MessageReader` turns received bytes into events (:class:`RequestHead` or
:class:`ResponseHead`, then :class:`BodyData` chunks, then :class:`EndOfMessage`).
It never buffers body bytes: a data chunk is handed on as soon as it arrives, so what a
reader holds is bounded by what the caller feeds it.  Every length is checked before the
bytes it announces are taken, against explicit limits (named constants below).  Errors
raise :class:`~switchy.stack.errors.SerializationError` / :class:`~switchy.stack.errors.ProtocolError`
(malformed) or :class:`~switchy.stack.errors.MessageTooLarge` (a limit), each naming what was wrong.
"""

from __future__ import annotations

import re
from typing import Any, Final, Literal, TypeAlias

import attrs
import msgpack

from switchy.stack.codec import MAX_VARINT_BYTES, decode_uvarint, encode_uvarint
from switchy.stack.errors import ConnectionClosed, MessageTooLarge, ProtocolError, SerializationError

__all__ = [
    "DEFAULT_MAX_BODY_SIZE",
    "END_FRAME",
    "MAX_FRAME_SIZE",
    "MAX_HEADERS",
    "MAX_HEADER_NAME_LENGTH",
    "MAX_HEAD_SIZE",
    "MAX_METHOD_LENGTH",
    "MAX_PATH_LENGTH",
    "MAX_QUERY_PARAMS",
    "METHODS",
    "ROUTER_PROTOCOL",
    "SEND_FRAME_SIZE",
    "STATUS_REASONS",
    "BodyData",
    "EndOfMessage",
    "Event",
    "MessageReader",
    "RequestHead",
    "ResponseHead",
    "encode_body",
    "encode_data_frame",
    "encode_request_head",
    "encode_response_head",
    "reason_phrase",
]

#: The protocol id negotiated with multistream-select.
ROUTER_PROTOCOL: Final = "/switchy/router/1.0.0"
#: Largest encoded head (the msgpack map, without its length prefix).
MAX_HEAD_SIZE: Final = 16 * 1024
#: Most header fields in one head.
MAX_HEADERS: Final = 64
#: Most query parameters in one request head.
MAX_QUERY_PARAMS: Final = 64
#: Longest path, in UTF-8 bytes.
MAX_PATH_LENGTH: Final = 4096
#: Longest header name, in characters.
MAX_HEADER_NAME_LENGTH: Final = 256
#: Longest method name.
MAX_METHOD_LENGTH: Final = 16
#: Largest data frame a receiver accepts.
MAX_FRAME_SIZE: Final = 1024 * 1024
#: Size of the data frames this implementation sends.
SEND_FRAME_SIZE: Final = 256 * 1024
#: Default limit of a body that is read whole into memory (server and client).
DEFAULT_MAX_BODY_SIZE: Final = 16 * 1024 * 1024
#: The methods a router serves.
METHODS: Final = ("GET", "POST", "PUT", "DELETE", "PATCH")
#: The frame that ends a body (``uvarint(0)``).
END_FRAME: Final = b"\x00"
#: Largest declared body length (what a uvarint of 63 bits can carry).
_MAX_DECLARED: Final = (1 << 63) - 1

#: Reason phrases of the status codes the router uses (HTTP meanings).
STATUS_REASONS: Final[dict[int, str]] = {
    200: "OK",
    201: "Created",
    202: "Accepted",
    204: "No Content",
    206: "Partial Content",
    301: "Moved Permanently",
    302: "Found",
    304: "Not Modified",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
}

_METHOD_RE = re.compile(f"[A-Z]{{1,{MAX_METHOD_LENGTH}}}")


def reason_phrase(status: int) -> str:
    """The reason phrase of ``status`` (``""`` when unknown)."""
    return STATUS_REASONS.get(status, "")


# --- events ---------------------------------------------------------------------------------


@attrs.frozen
class RequestHead:
    """A parsed request head.  ``length``: ``0`` no body, ``None`` unknown size, else exact."""

    method: str
    path: str
    query: dict[str, str] = attrs.field(factory=dict)
    headers: dict[str, str] = attrs.field(factory=dict)
    length: int | None = 0


@attrs.frozen
class ResponseHead:
    """A parsed response head.  ``length`` as in :class:`RequestHead`."""

    status: int
    headers: dict[str, str] = attrs.field(factory=dict)
    length: int | None = 0


@attrs.frozen
class BodyData:
    """Some body bytes, in order (frame boundaries are not kept)."""

    data: bytes


@attrs.frozen
class EndOfMessage:
    """The message is complete (after its head when it has no body, else its end-frame)."""


Event: TypeAlias = RequestHead | ResponseHead | BodyData | EndOfMessage


# --- validation (shared by encoders and the reader) -----------------------------------------


def _check_str_map(
    value: object, what: str, max_items: int, *, names: bool = False
) -> dict[str, str]:
    if value == {}:
        return {}
    if not isinstance(value, dict):
        raise SerializationError(f"{what} must be a map, not {type(value).__name__}")
    if len(value) > max_items:
        raise MessageTooLarge(f"{len(value)} {what} exceed the limit of {max_items}")
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise SerializationError(
                f"{what} must map str to str, got {type(k).__name__} -> {type(v).__name__}"
            )
        if names:
            if not k or len(k) > MAX_HEADER_NAME_LENGTH:
                raise SerializationError(
                    f"header name must have 1 to {MAX_HEADER_NAME_LENGTH} characters, got {len(k)}"
                )
            k = k.lower()
        out[k] = v
    return out


def _check_length(value: object) -> int | None:
    if value is None:
        return None
    if type(value) is not int:
        raise SerializationError(f"length must be nil or an integer, not {type(value).__name__}")
    if value < 0:
        raise SerializationError(f"length must not be negative, got {value}")
    if value > _MAX_DECLARED:
        raise SerializationError(f"length {value} exceeds 63 bits")
    return value


def _check_method(value: object) -> str:
    if not isinstance(value, str) or not _METHOD_RE.fullmatch(value):
        raise SerializationError(
            f"method must be 1 to {MAX_METHOD_LENGTH} letters A-Z, got {value!r:.40}"
        )
    return value


def _check_path(value: object) -> str:
    if not isinstance(value, str):
        raise SerializationError(f"path must be a string, not {type(value).__name__}")
    if not value.startswith("/"):
        raise SerializationError(f"path must start with '/', got {value!r:.40}")
    if len(value) > MAX_PATH_LENGTH // 4:
        size = len(value.encode(errors="surrogatepass"))
        if size > MAX_PATH_LENGTH:
            raise MessageTooLarge(f"path of {size} bytes exceeds {MAX_PATH_LENGTH}")
    if "\x00" in value or "?" in value:
        raise SerializationError("path must not contain NUL or '?' (send the query separately)")
    return value


def _check_status(value: object) -> int:
    if type(value) is not int or not 100 <= value <= 599:
        raise SerializationError(f"status must be an integer 100-599, got {value!r:.40}")
    return value


# --- encoding -------------------------------------------------------------------------------


def _pack_head(head: dict[str, Any]) -> bytes:
    try:
        packed: bytes = msgpack.packb(head, use_bin_type=True)
    except (ValueError, TypeError, OverflowError) as exc:  # UnicodeEncodeError is a ValueError
        raise SerializationError(f"head cannot be encoded: {exc}") from None
    if len(packed) > MAX_HEAD_SIZE:
        raise MessageTooLarge(f"head of {len(packed)} bytes exceeds {MAX_HEAD_SIZE}")
    return encode_uvarint(len(packed)) + packed


def encode_request_head(
    method: str,
    path: str,
    query: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    length: int | None = 0,
) -> bytes:
    """Encode a request head (length prefix included); validates every field like a receiver."""
    head: dict[str, Any] = {"method": _check_method(method), "path": _check_path(path)}
    if query:
        head["query"] = _check_str_map(query, "query parameters", MAX_QUERY_PARAMS)
    if headers:
        head["headers"] = _check_str_map(headers, "headers", MAX_HEADERS, names=True)
    if length != 0:
        head["length"] = _check_length(length)
    return _pack_head(head)


def encode_response_head(
    status: int, headers: dict[str, str] | None = None, length: int | None = 0
) -> bytes:
    """Encode a response head (length prefix included)."""
    head: dict[str, Any] = {"status": _check_status(status)}
    if headers:
        head["headers"] = _check_str_map(headers, "headers", MAX_HEADERS, names=True)
    if length != 0:
        head["length"] = _check_length(length)
    return _pack_head(head)


def encode_data_frame(data: bytes | bytearray | memoryview) -> bytes:
    """One data frame carrying ``data`` (1 to :data:`MAX_FRAME_SIZE` bytes)."""
    n = len(data)
    if not 0 < n <= MAX_FRAME_SIZE:
        raise MessageTooLarge(f"a data frame carries 1 to {MAX_FRAME_SIZE} bytes, not {n}")
    return encode_uvarint(n) + bytes(data)


def encode_body(data: bytes) -> bytes:
    """A whole body: data frames of at most :data:`SEND_FRAME_SIZE` bytes, then the end-frame.

    An empty ``data`` gives the end-frame alone (for a head with an unknown length).
    """
    n = len(data)
    if 0 < n <= SEND_FRAME_SIZE:
        return encode_uvarint(n) + data + END_FRAME
    view = memoryview(data)
    parts = [encode_data_frame(view[i : i + SEND_FRAME_SIZE]) for i in range(0, n, SEND_FRAME_SIZE)]
    parts.append(END_FRAME)
    return b"".join(parts)


# --- parsing --------------------------------------------------------------------------------

_HEAD_LEN, _HEAD, _FRAME_LEN, _FRAME_DATA, _DONE = range(5)


class MessageReader:
    """Parses one request (``kind="request"``) or one response from received bytes.

    ``receive_data(bytes) -> list[Event]``; ``receive_eof()`` when the stream ended.
    ``max_body_size`` (``None``: no limit) may be set after the head with
    :meth:`set_max_body_size`, which refuses a larger declared length at once.
    """

    __slots__ = (
        "_buf",
        "_declared",
        "_remaining",
        "_state",
        "body_received",
        "head",
        "kind",
        "max_body_size",
    )

    def __init__(
        self, kind: Literal["request", "response"], *, max_body_size: int | None = None
    ) -> None:
        self.kind = kind
        #: Body limit in bytes (``None``: none).
        self.max_body_size = max_body_size
        #: The parsed head, once it arrived.
        self.head: RequestHead | ResponseHead | None = None
        #: Body bytes announced by the data-frame headers received so far.
        self.body_received = 0
        self._state = _HEAD_LEN
        self._buf = bytearray()
        self._remaining = 0
        self._declared: int | None = 0

    @property
    def done(self) -> bool:
        """Whether the whole message was received."""
        return self._state == _DONE

    def set_max_body_size(self, limit: int | None) -> None:
        """Set the body limit; raise :class:`MessageTooLarge` if already exceeded or declared."""
        self.max_body_size = limit
        if limit is None:
            return
        if self._declared is not None and self._declared > limit:
            raise MessageTooLarge(
                f"declared body of {self._declared} bytes exceeds the limit of {limit} bytes"
            )
        if self.body_received > limit:
            raise MessageTooLarge(f"body of more than {limit} bytes")

    def receive_eof(self) -> None:
        """The stream ended: raise :class:`ConnectionClosed` unless the message was complete."""
        if self._state != _DONE:
            where = "before its head" if self.head is None else "inside its body"
            raise ConnectionClosed(f"stream ended {where}: the {self.kind} is truncated")

    def receive_data(self, data: bytes) -> list[Event]:
        """Parse ``data``; return the events it completes."""
        events: list[Event] = []
        n = len(data)
        pos = 0
        while pos < n:
            state = self._state
            if state == _FRAME_DATA:
                take = self._remaining if self._remaining < n - pos else n - pos
                if pos == 0 and take == n:
                    events.append(BodyData(data))
                else:
                    events.append(BodyData(data[pos : pos + take]))
                pos += take
                self._remaining -= take
                if not self._remaining:
                    self._state = _FRAME_LEN
            elif state == _HEAD:
                if not self._buf and n - pos >= self._remaining:  # the whole head is here
                    end = pos + self._remaining
                    self._got_head(data[pos:end], events)
                    pos = end
                    continue
                take = min(self._remaining - len(self._buf), n - pos)
                self._buf += data[pos : pos + take]
                pos += take
                if len(self._buf) == self._remaining:
                    raw = bytes(self._buf)
                    self._buf.clear()
                    self._got_head(raw, events)
            elif state == _DONE:
                raise ProtocolError(f"{n - pos} bytes after the end of the {self.kind}")
            else:  # a varint: head length or frame length
                if not self._buf:
                    r = decode_uvarint(data, pos)
                    if r is None:
                        self._buf += data[pos:]
                        if len(self._buf) >= MAX_VARINT_BYTES:
                            raise SerializationError("frame length varint is too long")
                        break
                    value, pos = r
                else:
                    self._buf.append(data[pos])
                    pos += 1
                    r = decode_uvarint(self._buf)
                    if r is None:
                        continue
                    value = r[0]
                    self._buf.clear()
                if state == _HEAD_LEN:
                    self._start_head(value)
                elif value == 0:
                    self._end_body()
                    events.append(EndOfMessage())
                else:
                    self._start_frame(value)
        return events

    def _got_head(self, raw: bytes, events: list[Event]) -> None:
        head = self._parse_head(raw)
        self.head = head
        events.append(head)
        self._declared = head.length
        if head.length == 0:
            self._state = _DONE
            events.append(EndOfMessage())
        else:
            self._state = _FRAME_LEN

    def _start_head(self, length: int) -> None:
        if length == 0:
            raise SerializationError(f"{self.kind} head of length 0")
        if length > MAX_HEAD_SIZE:
            raise MessageTooLarge(
                f"{self.kind} head of {length} bytes exceeds the limit of {MAX_HEAD_SIZE} bytes"
            )
        self._remaining = length
        self._state = _HEAD

    def _start_frame(self, length: int) -> None:
        if length > MAX_FRAME_SIZE:
            raise ProtocolError(f"data frame of {length} bytes exceeds {MAX_FRAME_SIZE}")
        total = self.body_received + length
        if self._declared is not None and total > self._declared:
            raise ProtocolError(f"body longer than its declared length of {self._declared}")
        if self.max_body_size is not None and total > self.max_body_size:
            raise MessageTooLarge(f"body of more than {self.max_body_size} bytes")
        self.body_received = total
        self._remaining = length
        self._state = _FRAME_DATA

    def _end_body(self) -> None:
        if self._declared is not None and self.body_received != self._declared:
            raise ProtocolError(
                f"body of {self.body_received} bytes ended, {self._declared} were declared"
            )
        self._state = _DONE

    def _parse_head(self, raw: bytes) -> RequestHead | ResponseHead:
        try:
            obj = msgpack.unpackb(raw, raw=False, strict_map_key=True, timestamp=0)
        except Exception as exc:
            raise SerializationError(f"{self.kind} head is not a msgpack value: {exc}") from None
        if not isinstance(obj, dict):
            raise SerializationError(
                f"{self.kind} head must be a msgpack map, not {type(obj).__name__}"
            )
        headers = _check_str_map(obj.get("headers", {}), "headers", MAX_HEADERS, names=True)
        length = _check_length(obj.get("length", 0))
        if self.kind == "response":
            if "status" not in obj:
                raise SerializationError("response head has no status")
            return ResponseHead(_check_status(obj["status"]), headers, length)
        if "method" not in obj or "path" not in obj:
            raise SerializationError("request head needs a method and a path")
        query = _check_str_map(obj.get("query", {}), "query parameters", MAX_QUERY_PARAMS)
        return RequestHead(
            _check_method(obj["method"]), _check_path(obj["path"]), query, headers, length
        )
