"""Stream multiplexer interface; yamux lives in :mod:`switchy.stack.mux.yamux`."""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

from switchy.stack.buffer import ChunkBuffer, shared_waiter
from switchy.stack.errors import fresh
from switchy.stack.stream import MuxedStream

if TYPE_CHECKING:
    from multiaddr import Multiaddr

    from switchy.stack.config import NetworkConfig
    from switchy.stack.errors import ConnectionClosed
    from switchy.stack.identity import PeerId
    from switchy.stack.limits import ConnectionScope, Direction, StreamScope
    from switchy.stack.metrics import ByteCounter, ConnectionStats
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
    #: The resource manager's scope of this connection (set by the node when it keeps
    #: the connection); muxers charge their streams and receive buffers to it.
    resource_scope: ConnectionScope | None = None

    def _open_stream_scope(self, direction: Direction) -> StreamScope | None:
        """Charge a new stream to :attr:`resource_scope` (``None`` without one); raises
        :class:`~switchy.stack.errors.ResourceLimitExceeded`."""
        scope = self.resource_scope
        return None if scope is None else scope.open_stream(direction)

    @abc.abstractmethod
    async def open_stream(self) -> MuxedStream:
        """Open a new outbound stream (not yet negotiated)."""

    @abc.abstractmethod
    async def accept_stream(self) -> MuxedStream:
        """Wait for the next inbound stream; raise ConnectionClosed once the connection ends."""

    def serve_streams(
        self, on_stream: Callable[[MuxedStream], None], on_closed: Callable[[], None]
    ) -> bool:
        """Hand each inbound stream to ``on_stream`` as the muxer accepts it, and call
        ``on_closed`` (a loop turn after the end, never inside a caller's task) once the
        connection ended; return whether this muxer does (default: ``False``, use
        :meth:`accept_stream`).

        ``on_stream`` runs in the muxer's own reader, synchronously: it must not block
        (start a task for the work).  After a ``True`` answer :meth:`accept_stream`
        is not used; streams it had queued go to ``on_stream`` at once.
        """
        return False

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
        "_scope",
        "_write_closed",
        "_write_waiter",
        "max_message_size",
        "protocol",
        "traffic",
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
        self.traffic: ByteCounter | None = None
        self.max_message_size = max_message_size
        #: The resource manager's scope of this stream (its receive buffer is charged).
        self._scope: StreamScope | None = None

    @property
    def resource_scope(self) -> StreamScope | None:
        """The resource manager's scope of this stream, if its connection has one."""
        return self._scope

    def _reserve(self, n: int) -> bool:
        """Charge ``n`` received bytes to the stream's scope; ``False``: over the budget."""
        scope = self._scope
        return scope is None or scope.try_reserve_memory(n)

    def _release(self, n: int) -> None:
        """``n`` buffered bytes left the receive buffer."""
        scope = self._scope
        if scope is not None and n > 0:
            scope.release_memory(n)

    def _scope_done(self) -> None:
        """The stream is gone: release everything it held."""
        scope = self._scope
        if scope is not None:
            scope.done()

    def _count_sent(self, n: int) -> None:
        """One write committed ``n`` bytes: count them in the connection's statistics and
        the protocol's stream byte metric."""
        stats = self._conn.stats
        stats.bytes_sent += n
        stats.messages_sent += 1
        if self.traffic is not None:
            self.traffic.sent.inc(n)

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
        if self.traffic is not None:  # counted again when read again
            self.traffic.received.dec(len(data))
        if self._scope is not None:
            self._scope.try_reserve_memory(len(data))
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
        return self._take(max_bytes)

    def read_nowait(self, max_bytes: int = -1) -> bytes | None:
        if not self._buf:
            if self._error is not None:
                raise fresh(self._error)
            return b"" if self._eof or self._read_closed else None
        return self._take(max_bytes)

    def _take(self, max_bytes: int) -> bytes:
        """Take up to ``max_bytes`` of the (non-empty) buffer and account for them."""
        data = self._buf.take(max_bytes)
        if self._scope is not None:
            self._scope.release_memory(len(data))
        self._consumed(len(data))
        if self.traffic is not None:
            self.traffic.received.inc(len(data))
        return data
