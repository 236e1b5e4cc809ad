"""The tunnel's frames.

Request (tunnel server -> sender): a JSON text frame ``{"type": "HTTP", "request_id": u64,
"method", "path", "query": {...}, "payload", "headers": {"accept", "range"}, "encoding":
"BINARY", "profile"}``; ``{"type": "ABORT", "request_id"}`` when the client went away.

Response (sender -> tunnel server): binary frames of at most :data:`MAX_FRAME` bytes:
``request_id`` u64 BE, ``packet_id`` u32 BE (from 1), ``last`` u8; packet 1 then has
``status`` u16 BE, ``headers_len`` u32 BE and the headers as JSON; then body bytes.
Frames may arrive out of order: :class:`Reorder` puts them back in packet order.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Final

__all__ = ["MAX_FRAME", "Packet", "Reorder", "decode_frame", "encode_frames_of", "first_frame"]

#: Largest binary frame (bytes).
MAX_FRAME: Final = 64 * 1024
_HEAD = struct.Struct(">QIB")
_FIRST = struct.Struct(">HI")
#: Body bytes that fit in a frame after the common header.
BODY_ROOM: Final = MAX_FRAME - _HEAD.size
#: Most packets held for reordering per request (a bound, as every buffer has).
MAX_REORDER: Final = 256


class Packet:
    """A decoded response frame."""

    __slots__ = ("body", "headers", "last", "packet_id", "request_id", "status")

    def __init__(
        self,
        request_id: int,
        packet_id: int,
        last: bool,
        body: bytes,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.request_id = request_id
        self.packet_id = packet_id
        self.last = last
        self.body = body
        self.status = status
        self.headers = headers


def first_frame(
    request_id: int, status: int, headers: dict[str, str], body: bytes, last: bool
) -> tuple[bytes, bytes]:
    """Packet 1: the frame, and the body bytes that did not fit in it."""
    head = json.dumps(headers).encode()
    fixed = _HEAD.size + _FIRST.size + len(head)
    if fixed > MAX_FRAME:
        raise ValueError("response headers do not fit in one frame")
    room = MAX_FRAME - fixed
    part, rest = body[:room], body[room:]
    frame = (
        _HEAD.pack(request_id, 1, int(last and not rest))
        + _FIRST.pack(status, len(head))
        + head
        + part
    )
    return frame, rest


def encode_frames_of(request_id: int, packet_id: int, body: bytes, last: bool) -> list[bytes]:
    """Body frames from ``packet_id`` on (``last`` marks the final one)."""
    frames = []
    for i in range(0, max(len(body), 1), BODY_ROOM):
        part = body[i : i + BODY_ROOM]
        final = last and i + BODY_ROOM >= len(body)
        frames.append(_HEAD.pack(request_id, packet_id, int(final)) + part)
        packet_id += 1
    return frames


def decode_frame(frame: bytes) -> Packet:
    """Parse a response frame; raises ``ValueError`` for a malformed one."""
    if len(frame) < _HEAD.size or len(frame) > MAX_FRAME:
        raise ValueError(f"frame of {len(frame)} bytes")
    request_id, packet_id, last = _HEAD.unpack_from(frame)
    if packet_id == 0:
        raise ValueError("packet ids start at 1")
    if packet_id != 1:
        return Packet(request_id, packet_id, bool(last), frame[_HEAD.size :])
    if len(frame) < _HEAD.size + _FIRST.size:
        raise ValueError("short first frame")
    status, headers_len = _FIRST.unpack_from(frame, _HEAD.size)
    start = _HEAD.size + _FIRST.size
    if start + headers_len > len(frame):
        raise ValueError("headers longer than the frame")
    headers: Any = json.loads(frame[start : start + headers_len])
    if not isinstance(headers, dict):
        raise ValueError("headers are not an object")
    body = frame[start + headers_len :]
    return Packet(
        request_id, 1, bool(last), body, status, {str(k): str(v) for k, v in headers.items()}
    )


class Reorder:
    """Gives packets of one request in packet-id order, whatever order they came in."""

    def __init__(self) -> None:
        self.next_id = 1
        self.held: dict[int, Packet] = {}

    def push(self, packet: Packet) -> list[Packet]:
        """Add ``packet``; return the packets now in order (possibly none)."""
        if packet.packet_id < self.next_id or packet.packet_id in self.held:
            raise ValueError(f"duplicate packet {packet.packet_id}")
        if len(self.held) >= MAX_REORDER:
            raise ValueError("too many packets out of order")
        self.held[packet.packet_id] = packet
        ready = []
        while self.next_id in self.held:
            ready.append(self.held.pop(self.next_id))
            self.next_id += 1
        return ready
