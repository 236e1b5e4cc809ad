"""yamux, sans-IO: frames in, events and frames out.

Frame header (12 bytes, big-endian): version (0), type, flags, stream id,
length.  Types: Data (0), WindowUpdate (1), Ping (2), GoAway (3).  Flags: SYN
(1), ACK (2), FIN (4), RST (8).  The dialer uses odd stream ids, the listener
even ones.  Every stream starts with a 256 KiB receive window in each
direction; a receiver grants more with window updates carrying the increase.

This core also tunes receive windows: when a stream's reader consumes half its
window faster than about two round trips (or a minimum interval when no round
trip has been measured), the next window update doubles the window, up to a
configured maximum; a reader that stops reading never grows its window.
"""

from __future__ import annotations

import struct
from typing import Final

import attrs

from switchy.stack.errors import ConnectionClosed, ProtocolError, ResourceLimitExceeded

__all__ = [
    "FLAG_ACK",
    "FLAG_FIN",
    "FLAG_RST",
    "FLAG_SYN",
    "GO_AWAY_INTERNAL_ERROR",
    "GO_AWAY_NORMAL",
    "GO_AWAY_PROTOCOL_ERROR",
    "HEADER",
    "INITIAL_WINDOW",
    "DataReceived",
    "GoAwayReceived",
    "PongReceived",
    "StreamEnded",
    "StreamOpened",
    "StreamReset",
    "WindowUpdated",
    "YamuxSession",
]

HEADER: Final = struct.Struct(">BBHII")
HEADER_SIZE: Final = 12
VERSION: Final = 0
TYPE_DATA: Final = 0
TYPE_WINDOW_UPDATE: Final = 1
TYPE_PING: Final = 2
TYPE_GO_AWAY: Final = 3
FLAG_SYN: Final = 1
FLAG_ACK: Final = 2
FLAG_FIN: Final = 4
FLAG_RST: Final = 8
GO_AWAY_NORMAL: Final = 0
GO_AWAY_PROTOCOL_ERROR: Final = 1
GO_AWAY_INTERNAL_ERROR: Final = 2
#: The spec's initial per-stream window.
INITIAL_WINDOW: Final = 256 * 1024
#: Largest payload we put in one data frame: header plus payload fill exactly one Noise
#: frame (65535 - 16 byte tag), so a receiver decodes each frame from a single chunk.
MAX_DATA_FRAME: Final = 65535 - 16 - 12
#: Shortest interval in which consuming half a window counts as "fast" (seconds).
MIN_TUNE_INTERVAL: Final = 0.05
_MAX_STREAM_ID: Final = (1 << 32) - 1
#: Frames answering the remote (ping ACKs, RSTs of refused streams) that may wait unsent.
#: A remote that keeps asking while it does not read our answers (the writer is stuck
#: behind its full receive buffer) would otherwise grow the queue without bound: past this
#: the session fails with a protocol error.
MAX_QUEUED_ANSWERS: Final = 1024
_pack_header = HEADER.pack
_unpack_header = HEADER.unpack_from


@attrs.frozen
class StreamOpened:
    """The remote opened stream ``stream_id``."""

    stream_id: int


@attrs.frozen
class DataReceived:
    """Payload for ``stream_id``."""

    stream_id: int
    data: bytes


@attrs.frozen
class StreamEnded:
    """The remote half-closed ``stream_id`` (FIN)."""

    stream_id: int


@attrs.frozen
class StreamReset:
    """``stream_id`` was reset by the remote, or refused by us (``by_us``); ``refused``:
    the remote reset a stream we opened before acknowledging it (it refused our SYN)."""

    stream_id: int
    by_us: bool = False
    refused: bool = False


@attrs.frozen
class WindowUpdated:
    """We may send more on ``stream_id`` (window update or ACK received)."""

    stream_id: int


@attrs.frozen
class PongReceived:
    """Answer to our ping ``opaque``."""

    opaque: int


@attrs.frozen
class GoAwayReceived:
    """The remote will accept no new streams."""

    code: int


Event = (
    StreamOpened
    | DataReceived
    | StreamEnded
    | StreamReset
    | WindowUpdated
    | PongReceived
    | GoAwayReceived
)


class _Stream:
    __slots__ = (
        "acked",
        "consumed",
        "last_update",
        "local_closed",
        "max_window",
        "outbound",
        "recv_credit",
        "recv_window",
        "remote_closed",
        "send_window",
    )

    def __init__(self, outbound: bool, now: float) -> None:
        self.outbound = outbound
        self.acked = False
        self.send_window = INITIAL_WINDOW
        self.recv_window = INITIAL_WINDOW
        self.recv_credit = INITIAL_WINDOW
        self.consumed = 0
        self.last_update = now
        self.local_closed = False
        self.remote_closed = False
        self.max_window = 0  # 0: the session's max_window


class YamuxSession:
    """One side of a yamux session.

    Feed received bytes to :meth:`receive_data`, write :meth:`data_to_send`.
    A fatal protocol violation raises :class:`ProtocolError` after queueing a
    GoAway; the session is then terminated.
    """

    def __init__(
        self,
        is_initiator: bool,
        *,
        max_streams: int = 1024,
        max_ack_backlog: int = 256,
        max_window: int = 16 * 1024 * 1024,
    ) -> None:
        self.is_initiator = is_initiator
        self.max_streams = max_streams
        self.max_ack_backlog = max_ack_backlog
        self.max_window = max(max_window, INITIAL_WINDOW)
        self._next_id = 1 if is_initiator else 2
        self._streams: dict[int, _Stream] = {}
        self._buf = bytearray()
        self._out: list[bytes | memoryview] = []
        self._out_size = 0
        self._next_ping = 1
        self._answers = 0  # answer frames in _out (MAX_QUEUED_ANSWERS)
        self.unacked_outbound = 0
        self.rtt: float | None = None
        self.local_go_away = False
        self.remote_go_away: int | None = None
        self.terminated = False

    # --- output ---------------------------------------------------------------------

    def _frame(self, type_: int, flags: int, stream_id: int, length: int) -> None:
        self._out.append(_pack_header(VERSION, type_, flags, stream_id, length))
        self._out_size += HEADER_SIZE

    def _answer(self, type_: int, flags: int, stream_id: int, length: int) -> None:
        """Queue a frame the remote's own frame asked for, within MAX_QUEUED_ANSWERS."""
        self._answers += 1
        if self._answers > MAX_QUEUED_ANSWERS:
            raise self._fail(
                f"remote asked for more than {MAX_QUEUED_ANSWERS} answers (pings, refused "
                "streams) without reading them"
            )
        self._frame(type_, flags, stream_id, length)

    def has_output(self) -> bool:
        """Whether :meth:`data_to_send` has anything."""
        return bool(self._out)

    @property
    def output_size(self) -> int:
        """Bytes of queued frames (headers and data) not yet taken by :meth:`data_to_send`."""
        return self._out_size

    def data_to_send(self) -> bytes:
        """All queued frames, in order."""
        out = self._out
        if not out:
            return b""
        data = out[0] if len(out) == 1 else b"".join(out)
        self._out = []
        self._out_size = 0
        self._answers = 0
        return bytes(data) if isinstance(data, memoryview) else data

    # --- application actions --------------------------------------------------------

    def open_stream(self, now: float = 0.0) -> int:
        """Open an outbound stream; returns its id (the SYN is queued)."""
        if self.terminated:
            raise ConnectionClosed("yamux session is closed")
        if self.remote_go_away is not None or self.local_go_away:
            raise ConnectionClosed("yamux session is going away: no new streams")
        if len(self._streams) >= self.max_streams:
            raise ResourceLimitExceeded(f"yamux stream limit of {self.max_streams} reached")
        if self.unacked_outbound >= self.max_ack_backlog:
            raise ResourceLimitExceeded(
                f"{self.unacked_outbound} streams await the peer's ACK "
                f"(limit {self.max_ack_backlog})"
            )
        sid = self._next_id
        if sid > _MAX_STREAM_ID:
            raise ResourceLimitExceeded("yamux stream ids exhausted")
        self._next_id += 2
        self._streams[sid] = _Stream(True, now)
        self.unacked_outbound += 1
        self._frame(TYPE_WINDOW_UPDATE, FLAG_SYN, sid, 0)
        return sid

    def accept_stream(self, stream_id: int) -> None:
        """The application accepted inbound ``stream_id``: acknowledge it (ACK).

        Unaccepted streams stay unacknowledged, which is what bounds the
        opener's backlog.
        """
        st = self._streams.get(stream_id)
        if st is not None and not st.outbound and not st.acked:
            st.acked = True
            self._frame(TYPE_WINDOW_UPDATE, FLAG_ACK, stream_id, 0)

    def send_window(self, stream_id: int) -> int:
        """Bytes we may send on ``stream_id`` now."""
        st = self._streams.get(stream_id)
        return st.send_window if st is not None else 0

    def send_data(self, stream_id: int, data: bytes | memoryview) -> int:
        """Queue as much of ``data`` as the send window allows; return how much."""
        st = self._live(stream_id)
        if st.local_closed:
            raise ConnectionClosed(f"yamux stream {stream_id} is closed for writing")
        n = min(len(data), st.send_window, MAX_DATA_FRAME)
        if n <= 0:
            return 0
        st.send_window -= n
        self._frame(TYPE_DATA, 0, stream_id, n)
        self._out.append(data if n == len(data) else data[:n])
        self._out_size += n
        return n

    def consume(self, stream_id: int, n: int, now: float = 0.0) -> None:
        """The application read ``n`` bytes of ``stream_id``: grant more window when due."""
        st = self._streams.get(stream_id)
        if st is None or st.remote_closed:
            return
        st.consumed += n
        if st.consumed < st.recv_window // 2:
            return
        delta = st.consumed
        fast_enough = now - st.last_update < max(MIN_TUNE_INTERVAL, 2 * (self.rtt or 0.0))
        limit = st.max_window or self.max_window
        if fast_enough and st.recv_window < limit:
            grow = min(st.recv_window, limit - st.recv_window)
            st.recv_window += grow
            delta += grow
        st.consumed = 0
        st.last_update = now
        st.recv_credit += delta
        self._frame(TYPE_WINDOW_UPDATE, 0, stream_id, delta)

    def limit_window(self, stream_id: int, size: int) -> None:
        """Never grow ``stream_id``'s receive window past ``size`` (nor shrink it: a window
        granted stays, and none is below :data:`INITIAL_WINDOW`)."""
        st = self._streams.get(stream_id)
        if st is not None:
            st.max_window = max(size, INITIAL_WINDOW)

    def close_stream(self, stream_id: int) -> None:
        """Half-close our side (FIN)."""
        st = self._streams.get(stream_id)
        if st is None or st.local_closed:
            return
        st.local_closed = True
        self._frame(TYPE_WINDOW_UPDATE, FLAG_FIN, stream_id, 0)
        self._maybe_forget(stream_id, st)

    def reset_stream(self, stream_id: int, *, refused: bool = False) -> None:
        """Abort a stream (RST); ``refused``: a stream the remote just opened that we turn
        down (counts against MAX_QUEUED_ANSWERS, may raise :class:`ProtocolError`)."""
        st = self._streams.pop(stream_id, None)
        if st is None:
            return
        if st.outbound and not st.acked:
            self.unacked_outbound -= 1
        if refused:
            self._answer(TYPE_WINDOW_UPDATE, FLAG_RST, stream_id, 0)
        else:
            self._frame(TYPE_WINDOW_UPDATE, FLAG_RST, stream_id, 0)

    def ping(self) -> int:
        """Queue a ping; returns its opaque value (answered by :class:`PongReceived`)."""
        opaque = self._next_ping
        self._next_ping = (self._next_ping + 1) & 0xFFFFFFFF
        self._frame(TYPE_PING, FLAG_SYN, 0, opaque)
        return opaque

    def go_away(self, code: int = GO_AWAY_NORMAL) -> None:
        """Tell the remote we accept no new streams."""
        if not self.local_go_away:
            self.local_go_away = True
            self._frame(TYPE_GO_AWAY, 0, 0, code)

    def stream_ids(self) -> list[int]:
        """Ids of streams not yet fully closed."""
        return list(self._streams)

    # --- input ----------------------------------------------------------------------

    def _live(self, stream_id: int) -> _Stream:
        st = self._streams.get(stream_id)
        if st is None:
            raise ConnectionClosed(f"yamux stream {stream_id} is closed or reset")
        return st

    def _maybe_forget(self, stream_id: int, st: _Stream) -> None:
        if st.local_closed and st.remote_closed:
            del self._streams[stream_id]

    def _fail(self, message: str) -> ProtocolError:
        self.go_away(GO_AWAY_PROTOCOL_ERROR)
        self.terminated = True
        return ProtocolError(f"yamux: {message}")

    def receive_data(self, data: bytes, now: float = 0.0) -> list[Event]:
        """Feed received bytes; return the events they carry."""
        if self.terminated:
            return []
        buf = self._buf
        if buf:
            buf += data
            src: bytes | bytearray = buf
        else:
            src = data
        events: list[Event] = []
        pos = 0
        end = len(src)
        while end - pos >= HEADER_SIZE:
            version, type_, flags, sid, length = _unpack_header(src, pos)
            if version != VERSION:
                raise self._fail(f"unsupported version {version}")
            if type_ == TYPE_DATA:
                if end - pos - HEADER_SIZE < length:
                    st = self._streams.get(sid)
                    limit = st.recv_credit if st is not None else INITIAL_WINDOW
                    if length > limit:
                        raise self._fail(f"data frame of {length} bytes exceeds window {limit}")
                    break
                body = src[pos + HEADER_SIZE : pos + HEADER_SIZE + length]
                pos += HEADER_SIZE + length
                self._on_data(
                    flags, sid, bytes(body) if isinstance(body, bytearray) else body, events, now
                )
            elif type_ == TYPE_WINDOW_UPDATE:
                pos += HEADER_SIZE
                self._on_window_update(flags, sid, length, events, now)
            elif type_ == TYPE_PING:
                pos += HEADER_SIZE
                if sid != 0:
                    raise self._fail(f"ping on stream {sid}")
                if flags & FLAG_SYN:
                    self._answer(TYPE_PING, FLAG_ACK, 0, length)
                elif flags & FLAG_ACK:
                    events.append(PongReceived(length))
            elif type_ == TYPE_GO_AWAY:
                pos += HEADER_SIZE
                self.remote_go_away = length
                events.append(GoAwayReceived(length))
            else:
                raise self._fail(f"unknown frame type {type_}")
        if src is buf:
            del buf[:pos]
        elif pos < end:
            self._buf = bytearray(src[pos:])
        return events

    def _open_inbound(self, sid: int, events: list[Event], now: float) -> _Stream | None:
        if sid == 0 or (sid % 2 == 1) == self.is_initiator:
            raise self._fail(f"remote opened stream {sid} with our parity")
        if sid in self._streams:
            raise self._fail(f"remote reopened live stream {sid}")
        if self.local_go_away or len(self._streams) >= self.max_streams:
            self._answer(TYPE_WINDOW_UPDATE, FLAG_RST, sid, 0)
            events.append(StreamReset(sid, by_us=True))
            return None
        st = _Stream(False, now)
        self._streams[sid] = st
        events.append(StreamOpened(sid))  # acknowledged when the application accepts it
        return st

    def _flags_common(self, flags: int, sid: int, st: _Stream | None, events: list[Event]) -> bool:
        """Handle ACK/FIN/RST; return False when the stream is gone."""
        if st is None:
            return False
        if flags & FLAG_ACK and st.outbound and not st.acked:
            st.acked = True
            self.unacked_outbound -= 1
            events.append(WindowUpdated(sid))
        if flags & FLAG_RST:
            refused = st.outbound and not st.acked
            if self._streams.pop(sid, None) is not None and refused:
                self.unacked_outbound -= 1
            events.append(StreamReset(sid, refused=refused))
            return False
        return True

    def _on_data(self, flags: int, sid: int, body: bytes, events: list[Event], now: float) -> None:
        st = self._streams.get(sid)
        if flags & FLAG_SYN:
            st = self._open_inbound(sid, events, now)
        if not self._flags_common(flags, sid, st, events):
            return  # frames for unknown/reset streams are dropped, as the spec allows
        assert st is not None
        if body:
            if st.remote_closed:
                raise self._fail(f"data on stream {sid} after its FIN")
            if len(body) > st.recv_credit:
                raise self._fail(
                    f"stream {sid} sent {len(body)} bytes beyond its window ({st.recv_credit})"
                )
            st.recv_credit -= len(body)
            events.append(DataReceived(sid, body))
        if flags & FLAG_FIN:
            self._remote_fin(sid, st, events)

    def _on_window_update(
        self, flags: int, sid: int, delta: int, events: list[Event], now: float
    ) -> None:
        if sid == 0:
            raise self._fail("window update on stream 0")
        st = self._streams.get(sid)
        if flags & FLAG_SYN:
            st = self._open_inbound(sid, events, now)
        if not self._flags_common(flags, sid, st, events):
            return
        assert st is not None
        if delta:
            if st.send_window + delta > (1 << 32) - 1:
                raise self._fail(f"window update overflows the window of stream {sid}")
            st.send_window += delta
            events.append(WindowUpdated(sid))
        if flags & FLAG_FIN:
            self._remote_fin(sid, st, events)

    def _remote_fin(self, sid: int, st: _Stream, events: list[Event]) -> None:
        if not st.remote_closed:
            st.remote_closed = True
            events.append(StreamEnded(sid))
            self._maybe_forget(sid, st)
