"""Stream multiplexer interface; yamux lives in :mod:`switchy.stack.mux.yamux`."""

from __future__ import annotations

import abc
import asyncio
from typing import TYPE_CHECKING, Generic, TypeVar

from switchy.stack.buffer import ChunkBuffer, shared_waiter
from switchy.stack.errors import fresh
from switchy.stack.stream import MuxedStream

if TYPE_CHECKING:
    from multiaddr import Multiaddr

    from switchy.stack.config import NetworkConfig
    from switchy.stack.errors import ConnectionClosed
    from switchy.stack.identity import PeerId
    from switchy.stack.metrics import ConnectionStats
    from switchy.stack.stream import Connection

__all__ = ["BufferedMuxedStream", "MuxedConnection", "StreamMuxer"]


class MuxedConnection(abc.ABC):
    """A secured connection carrying many independent streams."""

    local_peer: PeerId
    remote_peer: PeerId
    local_addr: Multiaddr
    remote_addr: Multiaddr
    #: True when initiated by us.
    is_initiator: bool
    #: True for connections whose use is restricted (e.g. relayed).
    is_limited: bool = False
    #: Protocol ids of the security layer and muxer in use (for info/identify).
    security_protocol: str = ""
    muxer_protocol: str = ""
    stats: ConnectionStats

    @abc.abstractmethod
    async def open_stream(self) -> MuxedStream:
        """Open a new outbound stream (not yet negotiated)."""

    @abc.abstractmethod
    async def accept_stream(self) -> MuxedStream:
        """Wait for the next inbound stream; raise ConnectionClosed once the connection ends."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close gracefully: no new streams; existing data is flushed; then release."""

    @abc.abstractmethod
    async def abort(self) -> None:
        """Close at once, resetting every stream."""

    @property
    @abc.abstractmethod
    def is_closed(self) -> bool:
        """Whether the connection is closed (or closing)."""

    @abc.abstractmethod
    async def wait_closed(self) -> None:
        """Wait until the connection is fully closed."""


class StreamMuxer(abc.ABC):
    """Factory of multiplexed connections over a secured connection."""

    #: The protocol id negotiated with multistream-select (e.g. ``/yamux/1.0.0``).
    protocol_id: str

    @abc.abstractmethod
    def create(
        self, conn: Connection, *, is_initiator: bool, config: NetworkConfig
    ) -> MuxedConnection:
        """Start multiplexing over ``conn`` (which has ``remote_peer`` set).

        Must be called from a running event loop; the connection begins
        reading at once.
        """


C = TypeVar("C", bound=MuxedConnection)


class BufferedMuxedStream(MuxedStream, Generic[C]):
    """The part every muxer's stream shares (yamux, QUIC): the receive buffer, end-of-stream
    and error state, the reader/writer waiters, and :meth:`read`.

    The connection feeds it (``_buf.append`` + :meth:`_wake_reader`); subclasses give
    :meth:`_consumed` (flow-control credit for bytes the application took) and may
    override :meth:`_before_read_wait` (e.g. flush queued frames before sleeping).
    """

    __slots__ = (
        "_buf",
        "_conn",
        "_eof",
        "_error",
        "_id",
        "_read_closed",
        "_read_waiter",
        "_write_closed",
        "_write_waiter",
        "max_message_size",
        "protocol",
    )

    def __init__(self, conn: C, stream_id: int, max_message_size: int) -> None:
        self._conn = conn
        self._id = stream_id
        self._buf = ChunkBuffer()
        self._eof = False
        self._error: ConnectionClosed | None = None
        self._read_closed = False
        self._write_closed = False
        self._read_waiter: asyncio.Future[None] | None = None
        self._write_waiter: asyncio.Future[None] | None = None
        self.protocol: str | None = None
        self.max_message_size = max_message_size

    @property
    def stream_id(self) -> int:
        """The muxer's id of this stream."""
        return self._id

    @property
    def remote_peer(self) -> PeerId:
        return self._conn.remote_peer

    @property
    def stats(self) -> ConnectionStats:
        return self._conn.stats

    @property
    def muxed_conn(self) -> MuxedConnection:
        return self._conn

    def _wake_reader(self) -> None:
        w = self._read_waiter
        if w is not None:
            self._read_waiter = None
            if not w.done():
                w.set_result(None)

    async def _wait_writer(self) -> None:
        """Wait for the next wake-up of writers (shared by concurrent writers)."""
        waiter = self._write_waiter = shared_waiter(self._write_waiter)
        await asyncio.shield(waiter)

    def _wake_writer(self) -> None:
        w = self._write_waiter
        if w is not None:
            self._write_waiter = None
            if not w.done():
                w.set_result(None)

    @abc.abstractmethod
    def _consumed(self, n: int) -> None:
        """The application took ``n`` bytes: give the peer that much credit."""

    def _before_read_wait(self) -> None:
        """Called before :meth:`read` sleeps for data (default: nothing)."""

    def _unread(self, data: bytes) -> bool:
        # The credit for these bytes was given when they were read: the buffer may exceed
        # the window by one undone read, which the next read takes first.
        self._buf.push_front(data)
        return True

    async def read(self, max_bytes: int = -1) -> bytes:
        buf = self._buf
        while not buf:
            if self._error is not None:
                raise fresh(self._error)
            if self._eof or self._read_closed:
                return b""
            self._before_read_wait()
            waiter = asyncio.get_running_loop().create_future()
            self._read_waiter = waiter
            await waiter
        data = buf.take(max_bytes)
        self._consumed(len(data))
        return data
