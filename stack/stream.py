"""The one byte-stream interface of the stack.

Every layer speaks :class:`Stream`: a raw transport connection, a secured
connection and a multiplexed stream are all ordered, reliable byte streams
with the same methods.  Implementations provide :meth:`Stream.read`,
:meth:`Stream.write`, :meth:`Stream.close_write`, :meth:`Stream.reset` and
:meth:`Stream.close`; the rest (exact reads,
iteration, length-prefixed messages) is built here once.

Contract (checked by the conformance suite):

* ``read(n)`` waits until at least one byte is available and returns at most
  ``n`` bytes (``n < 0`` means "whatever is buffered"); it returns ``b""``
  once the remote closed its write side and everything was read; it raises
  :class:`~switchy.stack.errors.StreamReset` after a reset.  No byte is ever dropped
  or duplicated.
* ``write(data)`` returns once the data is accepted by the layer below; it
  blocks (backpressure) while the remote is not reading.  Writing after
  ``close_write``/``close``/``reset`` raises :class:`~switchy.stack.errors.ConnectionClosed`.
* ``close_write()`` sends end-of-stream after all written data; reading goes on.
* ``close()`` closes the write side and stops reading; ``reset()`` aborts both
  directions at once, discarding buffered data.
* ``write_last(data)`` is ``write`` + ``close_write``; ``write_soon(data)`` is a
  ``write`` the layer may hold for one event-loop turn to coalesce it with the next.

Cancellation (checked by the conformance suite's ``cancellation`` contract): any
call may be cancelled at any ``await`` and the stream stays consistent.

* A cancelled ``write(data)`` has committed either none of ``data`` or all of it;
  what it committed is delivered in order, as if the write had completed.  A write
  waits for its turn (and for room) *before* it commits; once committed, the layer
  sends the data from its own (connection-level) code, never from the writer's
  task, so no cancellation can leave part of a frame on a connection below.
* A cancelled ``read`` takes nothing; a cancelled ``read_exactly`` or
  ``recv_message`` puts the bytes it had already taken back (on every built-in
  stream: see :meth:`Stream._unread`), so the next read sees them again.
* :meth:`try_write_nowait` lets a layer above commit without waiting at all.
* ``finish()`` ends a one-shot exchange (we wrote, expect nothing more): half-close,
  wait (at most :data:`FINISH_TIMEOUT`) for the remote's end of stream, then close.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Final

from switchy.stack.codec import decode_uvarint, encode_uvarint
from switchy.stack.errors import ConnectionClosed, MessageTooLarge, P2PError

if TYPE_CHECKING:
    from multiaddr import Multiaddr

    from switchy.stack.identity import PeerId
    from switchy.stack.limits import StreamScope
    from switchy.stack.metrics import ByteCounter, ConnectionStats
    from switchy.stack.mux import MuxedConnection

__all__ = [
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_READ_SIZE",
    "FINISH_DRAIN_LIMIT",
    "FINISH_TIMEOUT",
    "Connection",
    "MuxedStream",
    "Stream",
]

#: Chunk size used by iteration when no size is asked for.
DEFAULT_READ_SIZE: Final = 64 * 1024
#: Default limit of ``recv_message`` when no limit is passed (1 MiB, as NetworkConfig).
DEFAULT_MAX_MESSAGE_SIZE: Final = 1024 * 1024
#: Longest :meth:`Stream.finish` waits for the remote's end of stream (seconds).
FINISH_TIMEOUT: Final = 5.0
#: Most bytes :meth:`Stream.finish` reads (and discards) while it waits.
FINISH_DRAIN_LIMIT: Final = 64 * 1024


class Stream(abc.ABC):
    """An ordered, reliable, bidirectional byte stream (see the module docstring)."""

    #: Default limit of :meth:`send_message`/:meth:`recv_message`; streams of a node
    #: take it from ``NetworkConfig.max_message_size``.
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE

    @abc.abstractmethod
    async def read(self, max_bytes: int = -1) -> bytes:
        """Read at most ``max_bytes`` (any amount if negative); ``b""`` at end of stream.

        Raises :class:`~switchy.stack.errors.StreamReset` once the stream was reset.
        """

    @abc.abstractmethod
    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Write all of ``data``, waiting while the peer applies backpressure.

        Raises :class:`~switchy.stack.errors.ConnectionClosed` after ``close_write``,
        ``close`` or ``reset`` (:class:`~switchy.stack.errors.StreamReset` when reset).
        """

    @abc.abstractmethod
    async def close_write(self) -> None:
        """Half-close: signal end-of-stream to the peer after all written data."""

    @abc.abstractmethod
    async def reset(self) -> None:
        """Abort the stream in both directions."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close gracefully: half-close our side and release the stream."""

    async def write_last(self, data: bytes | bytearray | memoryview) -> None:
        """Write ``data``, then close the write side (``write`` + ``close_write``).

        A layer may send both at once (yamux: the data frames and the FIN in one
        write to the connection below).
        """
        if data:
            await self.write(data)
        await self.close_write()

    def try_write_nowait(self, data: bytes | bytearray | memoryview) -> bool:
        """Commit all of ``data`` now if that needs no waiting; return whether it did.

        ``False`` means nothing was committed (the stream is busy, backpressured or
        closed: call :meth:`write`).  Layers that frame data (Noise, yamux) use it to
        write through without a task switch.  Default: ``False``.
        """
        return False

    def try_write_soon_nowait(self, data: bytes | bytearray | memoryview) -> bool:
        """:meth:`try_write_nowait` for :meth:`write_soon`: commit all of ``data`` now, to
        leave as :meth:`write_soon` lets it, if that needs no waiting; return whether it did.

        Default: ``False`` (call :meth:`write_soon`).
        """
        return False

    def read_nowait(self, max_bytes: int = -1) -> bytes | None:
        """What :meth:`read` would return now without waiting, or ``None`` if it would wait.

        Only bytes already received (or the end of stream, ``b""``) are returned;
        ``None`` also when the stream cannot tell (the default).  Used by
        negotiation to take data that arrived with a new stream without a task switch.
        """
        return None

    def _unread(self, data: bytes) -> bool:
        """Put ``data`` back at the front of the receive buffer; return whether it could.

        Used by :meth:`read_exactly`/:meth:`recv_message` when cancelled half-way, so
        no byte is lost.  Streams with a :class:`~switchy.stack.buffer.ChunkBuffer`
        implement it; the default (``False``) loses those bytes.
        """
        return False

    async def write_soon(self, data: bytes | bytearray | memoryview) -> None:
        """Write ``data``, letting the layer hold it for a moment to send it with what follows.

        The data leaves no later than the next event-loop turn, or before this
        stream waits to read; used for answers (e.g. multistream-select's) that
        the application's first write can carry.  Default: :meth:`write`.
        """
        await self.write(data)

    async def finish(self, timeout: float = FINISH_TIMEOUT) -> None:
        """End a one-shot exchange: half-close, wait for the remote's end of stream, close.

        For a stream on which we wrote everything and expect nothing back (an
        identify push).  Closing at once stops reading while the remote may still be
        answering (its multistream-select answer to an optimistic proposal comes
        after our data): a QUIC stream answers such late bytes with STOP_SENDING,
        which peers such as js-libp2p take as a failed exchange.  So this waits, at
        most ``timeout`` seconds and :data:`FINISH_DRAIN_LIMIT` bytes (discarded),
        for the remote to end its side, then closes.  A remote that is slower than
        that only gets the plain :meth:`close`.  Errors reading (the remote reset the
        stream, or refused an optimistic proposal: :class:`NegotiationFailed`) reset
        the stream and propagate.
        """
        await self.close_write()
        drained = 0
        try:
            async with asyncio.timeout(timeout):
                while drained <= FINISH_DRAIN_LIMIT:
                    chunk = await self.read(DEFAULT_READ_SIZE)
                    if not chunk:
                        break
                    drained += len(chunk)
        except TimeoutError:
            pass
        except P2PError:
            await self.reset()
            raise
        await self.close()

    async def read_exactly(self, n: int) -> bytes:
        """Read exactly ``n`` bytes; raise :class:`ConnectionClosed` if the stream ends first."""
        if n <= 0:
            return b""
        first = await self.read(n)
        if len(first) == n:
            return first
        if not first:
            raise ConnectionClosed(f"stream ended before {n} bytes could be read (got 0)")
        buf = bytearray(first)
        try:
            while len(buf) < n:
                chunk = await self.read(n - len(buf))
                if not chunk:
                    raise ConnectionClosed(
                        f"stream ended before {n} bytes could be read (got {len(buf)})"
                    )
                buf += chunk
        except asyncio.CancelledError:
            self._unread(bytes(buf))
            raise
        return bytes(buf)

    async def read_all(self, limit: int = DEFAULT_MAX_MESSAGE_SIZE) -> bytes:
        """Read until end of stream; raise :class:`MessageTooLarge` past ``limit`` bytes."""
        buf = bytearray()
        while True:
            chunk = await self.read(DEFAULT_READ_SIZE)
            if not chunk:
                return bytes(buf)
            buf += chunk
            if len(buf) > limit:
                raise MessageTooLarge(f"stream carried more than {limit} bytes")

    async def send_message(self, data: bytes, *, max_size: int | None = None) -> None:
        """Write ``data`` prefixed by its length as an unsigned varint.

        Raises :class:`MessageTooLarge` above ``max_size`` (default: :attr:`max_message_size`).
        """
        max_size = max_size or self.max_message_size
        if len(data) > max_size:
            raise MessageTooLarge(
                f"message of {len(data)} bytes exceeds the limit of {max_size} bytes"
            )
        await self.write(encode_uvarint(len(data)) + data)

    async def recv_message(self, *, max_size: int | None = None) -> bytes:
        """Read one varint-length-prefixed message.

        Raises :class:`MessageTooLarge` when the announced length exceeds
        ``max_size`` (before reading the body), :class:`ConnectionClosed` when
        the stream ends inside a message, and
        :class:`~switchy.stack.errors.SerializationError` for a malformed prefix.
        Returns ``b""`` only for a real zero-length message; an end of stream
        before the first prefix byte raises :class:`ConnectionClosed` too.
        ``max_size`` defaults to :attr:`max_message_size`.
        """
        max_size = max_size or self.max_message_size
        prefix = bytearray()
        try:
            while True:
                b = await self.read(1)
                if not b:
                    raise ConnectionClosed(
                        "stream ended before a message"
                        if not prefix
                        else "stream ended in a length"
                    )
                prefix += b
                if b[0] < 0x80:
                    break
                if len(prefix) >= 9:
                    break
            decoded = decode_uvarint(prefix)
            assert decoded is not None
            length = decoded[0]
            if length > max_size:
                raise MessageTooLarge(
                    f"message of {length} bytes announced, the limit is {max_size} bytes"
                )
            return await self.read_exactly(length)
        except asyncio.CancelledError:
            if prefix:
                self._unread(bytes(prefix))  # read_exactly put back its part already
            raise

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._iter_chunks()

    async def _iter_chunks(self) -> AsyncIterator[bytes]:
        while True:
            chunk = await self.read(DEFAULT_READ_SIZE)
            if not chunk:
                return
            yield chunk

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            await self.close()
        else:
            await self.reset()


class Connection(Stream):
    """A point-to-point byte-stream connection as produced by a transport or a security layer.

    Raw transport connections leave ``remote_peer`` ``None``; a security
    layer's output sets it to the authenticated peer.
    """

    #: Our multiaddr of this connection (e.g. ``/ip4/127.0.0.1/tcp/4001``).
    local_addr: Multiaddr
    #: The remote's multiaddr of this connection.
    remote_addr: Multiaddr
    #: The authenticated remote peer (``None`` before security).
    remote_peer: PeerId | None = None
    #: Our own peer id on this connection (``None`` before security).
    local_peer: PeerId | None = None
    #: True for connections whose use is restricted (e.g. relayed, with limits).
    is_limited: bool = False


class MuxedStream(Stream):
    """A stream of a multiplexed connection, as handed to protocol handlers.

    What :meth:`Node.open_stream <switchy.stack.node.Node.open_stream>` returns and
    what a handler registered with :meth:`Node.handle <switchy.stack.node.Node.handle>`
    receives: one of many independent, ordered, reliable byte streams to one peer (a
    yamux stream over Noise, a native QUIC stream, a stream through a relay).

    Reading: :meth:`read`, :meth:`read_exactly`, :meth:`read_all`, :meth:`recv_message`,
    ``async for chunk in stream``.  Writing: :meth:`write`, :meth:`send_message`,
    :meth:`write_last`.  Ending: :meth:`close_write` (half-close), :meth:`close`,
    :meth:`reset` (abort).  About it: :attr:`protocol`, :attr:`remote_peer`,
    :attr:`muxed_conn`, :attr:`stats`.

    Errors (all :class:`~switchy.stack.errors.P2PError`):
    :class:`~switchy.stack.errors.StreamReset` when either side reset it,
    :class:`~switchy.stack.errors.ConnectionClosed` on writing after a close or when the
    connection went away, :class:`~switchy.stack.errors.MessageTooLarge` past a read
    limit, and, on the first read of a stream opened optimistically with one protocol
    id, :class:`~switchy.stack.errors.NegotiationFailed` when the peer does not serve it.
    """

    #: The protocol id negotiated on this stream (``None`` until negotiated).
    protocol: str | None = None
    #: Where the muxer counts this stream's payload bytes (the node's per-protocol
    #: ``libp2p_swarm_stream_bytes_total`` series); ``None``: not counted.
    traffic: ByteCounter | None = None

    @property
    def resource_scope(self) -> StreamScope | None:
        """The resource manager's scope of this stream (what holds memory for it charges
        it there: its receive buffer, a router body, a relay circuit); ``None`` where the
        stream has none."""
        return None

    @property
    @abc.abstractmethod
    def remote_peer(self) -> PeerId:
        """The authenticated peer at the other end."""

    @property
    @abc.abstractmethod
    def stats(self) -> ConnectionStats:
        """Counters of the connection this stream belongs to."""

    @property
    @abc.abstractmethod
    def muxed_conn(self) -> MuxedConnection:
        """The multiplexed connection this stream belongs to."""

    def limit_buffering(self, size: int) -> None:
        """From now on, hold about ``size`` bytes at most for this stream in each direction.

        For streams whose data is forwarded (a relay's circuit): the receive window
        (what the peer may send before we read) and the unsent write backlog shrink
        to about ``size``, so the backpressure of the slower side reaches the sender
        instead of a queue building up here.  Muxers apply what their protocol
        allows (yamux keeps its 256 KiB minimum window); the default does nothing.
        """
