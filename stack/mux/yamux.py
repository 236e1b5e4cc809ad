"""yamux (``/yamux/1.0.0``) over a secured connection: the asyncio adapter.

One reader task per connection feeds :class:`~switchy.stack.mux.yamux_core.YamuxSession`
and routes events to streams.  Writers serialise on one lock and coalesce
queued frames into a single write; frames the reader must send (ACKs, window
updates, pong) go out from a short-lived flush task so the reader never blocks
on a congested write.  Receive buffers are bounded by each stream's window.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final

from switchy.stack.config import NetworkConfig
from switchy.stack.errors import (
    ConnectionClosed,
    P2PError,
    ResourceLimitExceeded,
    StreamRefused,
    StreamReset,
    fresh,
)
from switchy.stack.metrics import ConnectionStats, measure_clock
from switchy.stack.mux import BufferedMuxedStream, MuxedConnection, StreamMuxer
from switchy.stack.mux.yamux_core import (
    DataReceived,
    GoAwayReceived,
    PongReceived,
    StreamEnded,
    StreamOpened,
    WindowUpdated,
    YamuxSession,
)
from switchy.stack.mux.yamux_core import StreamReset as StreamResetEvent
from switchy.stack.stream import Connection, MuxedStream

__all__ = ["OUTPUT_HIGH_WATER", "YAMUX_PROTOCOL", "Yamux", "YamuxConnection", "YamuxStream"]

log = logging.getLogger(__name__)

YAMUX_PROTOCOL: Final = "/yamux/1.0.0"
#: Bytes asked from the secured connection per read.
_READ_SIZE: Final = -1
#: Frames queued for the connection below beyond which streams stop framing more data
#: (window updates and other control frames are always queued).
OUTPUT_HIGH_WATER: Final = 256 * 1024
#: How long a protocol error's GoAway may take to leave before the connection closes.
_GO_AWAY_TIMEOUT: Final = 1.0


class YamuxStream(BufferedMuxedStream["YamuxConnection"]):
    """One yamux stream, implementing the :class:`~switchy.stack.stream.Stream` contract."""

    __slots__ = ("_pending", "_pending_fin")

    def __init__(self, conn: YamuxConnection, stream_id: int) -> None:
        super().__init__(conn, stream_id, conn._config.max_message_size)
        #: Committed bytes not yet framed (at most one write's worth).
        self._pending: memoryview | None = None
        #: Send the FIN once ``_pending`` is all framed.
        self._pending_fin = False

    # --- called by the connection ---------------------------------------------------

    def _drop_pending(self) -> None:
        if self._pending is not None:
            self._pending = None
            self._conn._blocked.pop(self._id, None)

    def _deliver(self, data: bytes) -> None:
        if self._read_closed:
            self._conn._consume(self._id, len(data))
            return
        if not self._reserve(len(data)):
            self._conn._over_budget(self, len(data))
            return
        self._buf.append(data)
        self._wake_reader()

    def _on_fin(self) -> None:
        self._eof = True
        self._wake_reader()
        if self._read_closed and self._write_closed and self._pending is None:
            self._conn._forget(self._id)  # closed here before the peer's FIN came

    def _on_reset(self, error: ConnectionClosed, *, discard: bool = True) -> None:
        if self._error is None:
            self._error = error
        if discard:
            self._release(self._buf.clear())
        self._drop_pending()
        self._write_closed = True
        self._wake_reader()
        self._wake_writer()

    # --- Stream API -----------------------------------------------------------------

    def _consumed(self, n: int) -> None:
        self._conn._consume(self._id, n)

    def limit_buffering(self, size: int) -> None:
        """Cap this stream's receive window (auto-tuning) at ``size``, but not below the
        spec's initial 256 KiB; what it sends is bounded by the peer's window already."""
        self._conn._session.limit_window(self._id, size)

    def _before_read_wait(self) -> None:
        if self._conn._session.has_output():  # window updates, FINs: let them go out
            self._conn._schedule_flush()

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        await self._send(data, last=False, soon=False)

    async def write_last(self, data: bytes | bytearray | memoryview) -> None:
        """Data frames and the FIN leave in one write to the connection below."""
        if not data:
            await self.close_write()
            return
        await self._send(data, last=True, soon=False)

    async def write_soon(self, data: bytes | bytearray | memoryview) -> None:
        """Commit ``data`` and send it on the next loop turn (or with the next write)."""
        await self._send(data, last=False, soon=True)

    def try_write_nowait(self, data: bytes | bytearray | memoryview) -> bool:
        if not self._writable_now(len(data)):
            return False
        if data:
            self._commit(data, last=False)
            self._conn._kick()
        return True

    def try_write_soon_nowait(self, data: bytes | bytearray | memoryview) -> bool:
        if not self._writable_now(len(data)):
            return False
        if data:
            self._commit(data, last=False)
            self._conn._schedule_flush()
        return True

    def _writable_now(self, n: int) -> bool:
        """Whether ``n`` bytes can be committed and framed whole without waiting."""
        session = self._conn._session
        return not (
            self._write_closed
            or self._pending is not None
            or n > session.send_window(self._id)
            or session.output_size >= OUTPUT_HIGH_WATER
        )

    def _commit(self, data: bytes | bytearray | memoryview, *, last: bool) -> None:
        """Take all of ``data`` (the caller checked it is our turn) and frame what fits."""
        # A mutable buffer could change after a cancelled write returns: keep a copy.
        self._pending = memoryview(data if isinstance(data, bytes) else bytes(data))
        if last:
            self._write_closed = True
            self._pending_fin = True
        self._count_sent(len(data))
        self._conn._pump(self)

    async def _send(self, data: bytes | bytearray | memoryview, *, last: bool, soon: bool) -> None:
        if self._write_closed:
            raise fresh(self._error) or ConnectionClosed(
                f"yamux stream {self._id} is closed for writing"
            )
        if not data:
            return
        # Our turn comes once an earlier (perhaps cancelled) write is all framed; nothing
        # of ``data`` is committed until then, so a cancellation here sends none of it.
        while self._pending is not None:
            await self._wait_writer()
            if self._write_closed:
                raise fresh(self._error) or ConnectionClosed(f"yamux stream {self._id} was closed")
        self._commit(data, last=last)
        conn = self._conn
        if soon:
            conn._schedule_flush()
        else:
            conn._kick()
        # Committed: the connection frames the rest as window and output room allow, and
        # its writer sends it.  A cancellation from here on still sends all of ``data``.
        while self._pending is not None:
            await self._wait_writer()

    async def _wait_writer(self) -> None:
        """Wait for the pending write to be framed (or the stream to fail)."""
        await super()._wait_writer()
        if self._error is not None:
            raise fresh(self._error)

    async def close_write(self) -> None:
        if self._write_closed:
            return
        self._write_closed = True
        if self._pending is not None:  # the FIN follows the data still being framed
            self._pending_fin = True
            return
        self._conn._session.close_stream(self._id)
        self._conn._kick()

    async def reset(self) -> None:
        if self._error is None:
            self._error = StreamReset(f"yamux stream {self._id} was reset locally")
        self._release(self._buf.clear())
        self._drop_pending()
        self._write_closed = True
        self._read_closed = True
        self._conn._session.reset_stream(self._id)
        self._conn._forget(self._id)
        self._wake_reader()
        self._wake_writer()
        self._conn._kick()

    async def close(self) -> None:
        self._read_closed = True
        unread = self._buf.clear()
        if unread > 0:
            self._release(unread)
            self._conn._consume(self._id, unread)
        await self.close_write()
        self._wake_reader()
        if (self._eof or self._error is not None) and self._pending is None:
            self._conn._forget(self._id)

    def __repr__(self) -> str:
        return f"<YamuxStream {self._id} {self.protocol or ''} to {self.remote_peer.fmt_short()}>"


class YamuxConnection(MuxedConnection):
    """A yamux session over a secured :class:`Connection`."""

    def __init__(self, conn: Connection, *, is_initiator: bool, config: NetworkConfig) -> None:
        if conn.remote_peer is None or conn.local_peer is None:
            raise ConnectionClosed("yamux needs a secured connection (peer ids unknown)")
        self._conn = conn
        self._config = config
        self._loop = asyncio.get_running_loop()
        # times ping round trips (virtual under the simulator, else perf_counter)
        self._clock = measure_clock(self._loop)
        self._session = YamuxSession(
            is_initiator,
            max_streams=config.max_streams_per_connection,
            max_ack_backlog=config.max_ack_backlog,
            max_window=config.max_stream_window,
        )
        self._streams: dict[int, YamuxStream] = {}
        self._accept_queue: deque[YamuxStream] = deque()
        self._accept_waiter: asyncio.Future[None] | None = None
        # Set by serve_streams: inbound streams go to it instead of the accept queue.
        self._on_stream: Callable[[MuxedStream], None] | None = None
        self._on_closed: Callable[[], None] | None = None
        self._ack_waiters: list[asyncio.Future[None]] = []
        self._pings: dict[int, tuple[float, asyncio.Future[float]]] = {}
        # Streams whose committed data waits for room in the output (not for window).
        self._blocked: dict[int, YamuxStream] = {}
        # The connection's writer, while the connection below applies backpressure.
        self._writer: asyncio.Task[None] | None = None
        self._flush_scheduled = False
        self._closed = False
        self._close_reason: ConnectionClosed | None = None
        self._done = asyncio.Event()
        self.local_peer = conn.local_peer
        self.remote_peer = conn.remote_peer
        self.local_addr = conn.local_addr
        self.remote_addr = conn.remote_addr
        self.is_initiator = is_initiator
        self.is_limited = conn.is_limited
        self.muxer_protocol = YAMUX_PROTOCOL
        self.stats = ConnectionStats()
        self._reader = self._loop.create_task(self._read_loop())
        # A reader cancelled before its first step never runs its finally clause.
        self._reader.add_done_callback(lambda _: self._done.set())
        self._keepalive: asyncio.Task[None] | None = None
        if config.keepalive_interval > 0:
            self._keepalive = self._loop.create_task(self._keepalive_loop())

    # --- writing --------------------------------------------------------------------
    #
    # Streams commit whole writes and frame them into the session (``_pump``) as window
    # and output room allow; the frames go below either at once (``_kick``: the layer
    # below takes them without waiting) or from the connection's own writer task.  No
    # application task ever waits inside a write to the connection below, so no
    # cancellation can cut a batch of frames.

    def _pump(self, st: YamuxStream) -> None:
        """Frame as much of ``st``'s pending write as window and output room allow."""
        view = st._pending
        if view is None:
            return
        session = self._session
        sid = st._id
        try:
            while session.output_size < OUTPUT_HIGH_WATER:
                n = session.send_data(sid, view)
                if n == 0:
                    break
                if n == len(view):
                    view = None
                    break
                view = view[n:]
        except ConnectionClosed as exc:  # the session forgot the stream (reset, shut down)
            st._on_reset(exc)
            return
        st._pending = view
        if view is None:
            self._blocked.pop(sid, None)
            if st._pending_fin:
                session.close_stream(sid)
                if st._read_closed and (st._eof or st._error is not None):
                    self._forget(sid)
            st._wake_writer()
        elif session.send_window(sid) > 0:
            self._blocked[sid] = st  # waits for output room; a window update pumps it too

    def _repump(self) -> None:
        """Give streams waiting for output room their turn, round robin."""
        blocked = self._blocked
        session = self._session
        for sid in list(blocked):
            if session.output_size >= OUTPUT_HIGH_WATER:
                return
            st = blocked.pop(sid, None)
            if st is not None:
                self._pump(st)  # re-queued at the end if still blocked

    def _kick(self) -> None:
        """Send queued frames now, unless frames already left in this loop turn.

        The first send of a turn goes at once (a lone request or ping waits for
        nothing); it schedules a flush, and frames queued until that flush runs (other
        streams opening, closing or answering in the same turn) leave with it, in one
        write to the connection below instead of one each.
        """
        if self._flush_scheduled or self._writer is not None or self._closed:
            return
        if self._session.has_output():
            self._send_queued()
            self._schedule_flush()

    def _send_queued(self) -> None:
        """Send queued frames: synchronously if the layer below takes them, else via the writer."""
        if self._writer is not None or self._closed:
            return
        session = self._session
        conn = self._conn
        while session.has_output():
            data = session.data_to_send()
            if not conn.try_write_nowait(data):
                writer = self._writer = self._loop.create_task(self._write_loop(data))
                writer.add_done_callback(self._writer_done)  # also when cancelled unstarted
                return
            self._repump()

    async def _write_loop(self, data: bytes) -> None:
        session = self._session
        try:
            while True:
                await self._conn.write(data)
                self._repump()
                if not session.has_output():
                    self._writer = None  # now, not in the done callback a turn later
                    return
                data = session.data_to_send()
        except P2PError as exc:
            self._terminate(ConnectionClosed(f"connection lost while writing: {exc}"))

    def _writer_done(self, task: asyncio.Task[None]) -> None:
        if self._writer is task:
            self._writer = None
            self._send_queued()  # frames queued while it was ending

    async def _drain(self) -> None:
        """Send everything queued; wait until it went below (never cancels the writer)."""
        self._send_queued()
        writer = self._writer
        if writer is not None:
            await asyncio.shield(writer)
        if self._close_reason is not None:
            raise fresh(self._close_reason)

    def _schedule_flush(self) -> None:
        """Send queued control frames soon without blocking the caller.

        The flush runs a loop turn later, so tasks woken by the same events (a
        handler answering a new stream) write first and carry the control frames in
        the same packet.
        """
        if not self._flush_scheduled and not self._closed:
            self._flush_scheduled = True
            self._loop.call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self._send_queued()

    def _consume(self, stream_id: int, n: int) -> None:
        session = self._session
        session.consume(stream_id, n, self._loop.time())
        stats = self.stats
        stats.bytes_received += n
        if session.has_output():
            self._schedule_flush()

    def _forget(self, stream_id: int) -> None:
        st = self._streams.pop(stream_id, None)
        if st is not None:
            st._scope_done()

    def _over_budget(self, st: YamuxStream, n: int) -> None:
        """Data for ``st`` does not fit the memory its scopes allow: reset the stream."""
        log.debug("yamux: stream %d over its memory budget (%d bytes more); resetting", st._id, n)
        self._session.consume(st._id, n, self._loop.time())
        self._session.reset_stream(st._id)
        st._on_reset(StreamReset(f"yamux stream {st._id} reset: over its memory budget"))
        st._read_closed = True
        self._forget(st._id)
        self._schedule_flush()

    # --- reading --------------------------------------------------------------------

    async def _read_loop(self) -> None:
        conn = self._conn
        session = self._session
        loop = self._loop
        reason: ConnectionClosed = ConnectionClosed("connection closed by the remote")
        try:
            while True:
                data = await conn.read(_READ_SIZE)
                if not data:
                    break
                events = session.receive_data(data, loop.time())
                if events:
                    self._dispatch(events)
                if session.has_output():
                    self._schedule_flush()
        except P2PError as exc:
            reason = exc if isinstance(exc, ConnectionClosed) else ConnectionClosed(str(exc))
            if session.has_output():  # a GoAway explaining the protocol error
                with contextlib.suppress(P2PError, asyncio.TimeoutError):
                    async with asyncio.timeout(_GO_AWAY_TIMEOUT):
                        await self._drain()
        except asyncio.CancelledError:
            reason = ConnectionClosed("connection closed")
        finally:
            self._terminate(reason)
            with contextlib.suppress(P2PError, OSError):
                await conn.close()
            self._done.set()

    def _dispatch(self, events: Sequence[object]) -> None:
        streams = self._streams
        for ev in events:
            if isinstance(ev, DataReceived):
                st = streams.get(ev.stream_id)
                if st is not None:
                    self.stats.messages_received += 1
                    st._deliver(ev.data)
                else:
                    self._session.consume(ev.stream_id, len(ev.data), self._loop.time())
            elif isinstance(ev, WindowUpdated):
                st = streams.get(ev.stream_id)
                if st is not None and st._pending is not None:
                    self._pump(st)
                    self._schedule_flush()
                for w in self._ack_waiters:
                    if not w.done():
                        w.set_result(None)
                self._ack_waiters.clear()
            elif isinstance(ev, StreamOpened):
                # A stream object only for a SYN we accept: a refused one leaves nothing.
                sid = ev.stream_id
                if len(self._accept_queue) >= self._config.max_ack_backlog:
                    self._session.reset_stream(sid, refused=True)
                    log.debug("yamux: accept backlog full, refusing stream %d", sid)
                    continue
                try:
                    scope = self._open_stream_scope("inbound")
                except ResourceLimitExceeded as exc:
                    self._session.reset_stream(sid, refused=True)
                    log.debug("yamux: refusing stream %d: %s", sid, exc)
                    continue
                st = YamuxStream(self, sid)
                st._scope = scope
                streams[sid] = st
                on_stream = self._on_stream
                if on_stream is not None:
                    # Accepted here: the ACK leaves with the first answer or this turn's flush.
                    self._session.accept_stream(sid)
                    on_stream(st)
                    continue
                self._accept_queue.append(st)
                accept = self._accept_waiter
                if accept is not None:
                    self._accept_waiter = None
                    if not accept.done():
                        accept.set_result(None)
            elif isinstance(ev, StreamEnded):
                st = streams.get(ev.stream_id)
                if st is not None:
                    st._on_fin()
            elif isinstance(ev, StreamResetEvent):
                st = streams.pop(ev.stream_id, None)
                if st is not None:
                    st._on_reset(
                        StreamRefused(
                            f"yamux stream {ev.stream_id} was refused by the peer "
                            "(reset before it was acknowledged)"
                        )
                        if ev.refused
                        else StreamReset(f"yamux stream {ev.stream_id} was reset by the peer")
                    )
                    st._scope_done()
            elif isinstance(ev, PongReceived):
                entry = self._pings.pop(ev.opaque, None)
                if entry is not None and not entry[1].done():
                    entry[1].set_result(self._clock() - entry[0])
            elif isinstance(ev, GoAwayReceived):
                log.debug("yamux: peer %s sent go-away %d", self.remote_peer, ev.code)

    def _terminate(self, reason: ConnectionClosed) -> None:
        if self._closed:
            return
        self._closed = True
        self._close_reason = reason.with_traceback(None)  # no frames kept (see fresh)
        self._session.terminated = True
        self.stats.closed_at = self.stats.closed_at or self._loop.time()
        for st in list(self._streams.values()):
            st._on_reset(StreamReset(f"connection closed: {reason}"), discard=False)
            st._scope_done()
        self._streams.clear()
        if self.resource_scope is not None:
            self.resource_scope.done()
        w = self._accept_waiter
        if w is not None and not w.done():
            w.set_result(None)
        for w in self._ack_waiters:
            if not w.done():
                w.set_result(None)
        for _, fut in self._pings.values():
            if not fut.done():
                fut.set_exception(ConnectionClosed(str(reason)))
        self._pings.clear()
        if self._keepalive is not None:
            self._keepalive.cancel()
        on_closed, self._on_closed, self._on_stream = self._on_closed, None, None
        if on_closed is not None:  # (dropped here: the node's callback refers to us)
            self._loop.call_soon(on_closed)

    # --- MuxedConnection API --------------------------------------------------------

    async def open_stream(self) -> MuxedStream:
        while True:
            if self._closed:
                raise ConnectionClosed(f"connection to {self.remote_peer} is closed")
            if self._session.unacked_outbound < self._session.max_ack_backlog:
                break
            waiter = self._loop.create_future()
            self._ack_waiters.append(waiter)
            await waiter
        scope = self._open_stream_scope("outbound")
        try:
            sid = self._session.open_stream(self._loop.time())
        except BaseException:
            if scope is not None:
                scope.done()
            raise
        st = YamuxStream(self, sid)
        st._scope = scope
        self._streams[sid] = st
        return st

    async def accept_stream(self) -> MuxedStream:
        while not self._accept_queue:
            if self._closed:
                raise fresh(self._close_reason) or ConnectionClosed("connection closed")
            waiter = self._loop.create_future()
            self._accept_waiter = waiter
            await waiter
        stream = self._accept_queue.popleft()
        self._session.accept_stream(stream.stream_id)
        # The ACK usually leaves with the handler's first answer; flush soon in any case.
        self._schedule_flush()
        return stream

    def serve_streams(
        self, on_stream: Callable[[MuxedStream], None], on_closed: Callable[[], None]
    ) -> bool:
        """Inbound streams go to ``on_stream`` from the reader, as their SYN is dispatched."""
        self._on_stream = on_stream
        self._on_closed = on_closed
        queued = self._accept_queue
        if self._closed:  # its streams were reset with it
            queued.clear()
            self._on_stream = self._on_closed = None
            self._loop.call_soon(on_closed)
            return True
        while queued:
            st = queued.popleft()
            self._session.accept_stream(st.stream_id)
            on_stream(st)
        if self._session.has_output():
            self._schedule_flush()
        return True

    async def ping(self, timeout: float | None = None) -> float:
        """Measure one round trip with a yamux ping (also recorded in ``stats``)."""
        if self._closed:
            raise ConnectionClosed("connection closed")
        opaque = self._session.ping()
        fut: asyncio.Future[float] = self._loop.create_future()
        self._pings[opaque] = (self._clock(), fut)
        self._kick()
        async with asyncio.timeout(timeout):
            rtt = await fut
        self._session.rtt = rtt
        self.stats.record_latency(rtt)
        return rtt

    async def _keepalive_loop(self) -> None:
        interval = self._config.keepalive_interval
        while not self._closed:
            await asyncio.sleep(interval)
            try:
                await self.ping(timeout=interval)
            except (P2PError, TimeoutError):
                if not self._closed:
                    log.debug("yamux keep-alive to %s failed; closing", self.remote_peer)
                    await self.abort()
                return

    async def close(self) -> None:
        if self._closed:
            await self._done.wait()
            return
        self._session.go_away()
        with contextlib.suppress(P2PError):
            await self._drain()
        self._terminate(ConnectionClosed("connection closed locally"))
        with contextlib.suppress(P2PError, OSError):
            await self._conn.close()
        self._reader.cancel()
        await self._done.wait()

    async def abort(self) -> None:
        self._terminate(ConnectionClosed("connection aborted locally"))
        if self._writer is not None:
            self._writer.cancel()
        with contextlib.suppress(P2PError, OSError):
            await self._conn.reset()
        self._reader.cancel()
        await self._done.wait()

    @property
    def is_closed(self) -> bool:
        return self._closed

    async def wait_closed(self) -> None:
        await self._done.wait()

    def __repr__(self) -> str:
        return f"<YamuxConnection to {self.remote_peer} via {self.remote_addr}>"


class Yamux(StreamMuxer):
    """The yamux stream muxer (``/yamux/1.0.0``)."""

    protocol_id = YAMUX_PROTOCOL

    def create(
        self, conn: Connection, *, is_initiator: bool, config: NetworkConfig
    ) -> MuxedConnection:
        return YamuxConnection(conn, is_initiator=is_initiator, config=config)
