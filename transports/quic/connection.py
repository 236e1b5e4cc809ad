"""The asyncio adapter of one QUIC connection: a :class:`MuxedConnection` of native QUIC streams.

The protocol is all in :class:`~switchy.transports.quic.core.Libp2pQuicConnection`
(sans-IO); this module feeds it datagrams and timer ticks, sends what it
produces through the socket's :class:`~switchy.transports.quic.endpoint.QuicEndpoint`,
and maps its events onto streams:

* a stream's FIN is ``close_write`` / end of stream (after every byte);
* ``reset`` sends RESET_STREAM and STOP_SENDING; a peer's RESET_STREAM makes
  reads raise :class:`StreamReset`, a peer's STOP_SENDING makes writes raise it;
  ``close`` sends FIN, and STOP_SENDING only if data still arrives afterwards;
* reads grant flow-control credit as the application consumes data, and
  writes wait while more than :data:`WRITE_HIGH_WATER` bytes are unsent, so
  a peer that stops reading stops the writer (backpressure end to end);
* unreliable datagrams (RFC 9221) via :meth:`QuicConnection.send_datagram` and
  :meth:`QuicConnection.receive_datagram`.

Sends are batched: every change schedules one transmission for the next loop
turn, which drains everything aioquic has to send.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING, Final

from aioquic.quic import events
from aioquic.quic.packet import QuicErrorCode

from switchy.stack.config import NetworkConfig
from switchy.stack.errors import (
    AuthenticationFailed,
    ConnectionClosed,
    ConnectionFailed,
    FeatureNotSupported,
    MessageTooLarge,
    ResourceLimitExceeded,
    StreamReset,
    fresh,
)
from switchy.stack.identity import PeerId
from switchy.stack.metrics import ConnectionStats, measure_clock
from switchy.stack.mux import BufferedMuxedStream, MuxedConnection
from switchy.stack.stream import MuxedStream
from switchy.transports.quic.core import (
    BAD_CERTIFICATE_ERROR,
    STREAM_RESET_CODE,
    Libp2pQuicConnection,
)
from switchy.transports.quic.io import SockAddr

if TYPE_CHECKING:
    from multiaddr import Multiaddr

    from switchy.stack.limits import ConnectionScope
    from switchy.transports.quic.endpoint import QuicEndpoint

__all__ = [
    "MAX_QUEUED_DATAGRAMS",
    "QUIC_MUXER",
    "QUIC_SECURITY",
    "WRITE_CHUNK",
    "WRITE_HIGH_WATER",
    "QuicConnection",
    "QuicStream",
]

log = logging.getLogger(__name__)

#: Unsent bytes a stream may queue in aioquic before ``write`` waits (less for a stream
#: given :meth:`QuicStream.limit_buffering`).
WRITE_HIGH_WATER: Final = 512 * 1024
#: ``write`` hands aioquic at most this much at a time.
WRITE_CHUNK: Final = 256 * 1024
#: Received datagrams kept for ``receive_datagram``; newer ones are dropped beyond this.
MAX_QUEUED_DATAGRAMS: Final = 1024
#: Bytes of QUIC packet overhead around a DATAGRAM frame: short header (1 + connection id
#: + up to 4 packet number bytes), AEAD tag (16), frame type (1) and length (up to 4).
_DATAGRAM_OVERHEAD: Final = 1 + 4 + 16 + 1 + 4
#: Timers are handled this much after their deadline (see ``_on_timer``).
_TIMER_SLACK: Final = 1e-6
#: Names reported for the built-in security and multiplexing of QUIC.
QUIC_SECURITY: Final = "/tls/1.0.0"
QUIC_MUXER: Final = "quic-v1"


class QuicStream(BufferedMuxedStream["QuicConnection"]):
    """A native QUIC bidirectional stream (the :class:`~switchy.stack.stream.Stream` contract)."""

    __slots__ = (
        "_high_water",
        "_limited",
        "_pending",
        "_pending_fin",
        "_stop_sent",
        "_write_error",
        "_written",
    )

    def __init__(self, conn: QuicConnection, stream_id: int) -> None:
        super().__init__(conn, stream_id, conn._config.max_message_size)
        self._write_error: ConnectionClosed | None = None
        self._stop_sent = False
        self._written = 0
        #: Committed bytes not yet handed to aioquic (at most one write's worth).
        self._pending: memoryview | None = None
        #: Send the FIN once ``_pending`` is all handed over.
        self._pending_fin = False
        self._high_water = WRITE_HIGH_WATER
        self._limited = False

    # --- called by the connection -------------------------------------------------------

    def _deliver(self, data: bytes) -> None:
        if self._read_closed or self._error is not None:
            self._conn._credit(self._id, len(data))
            if self._read_closed and not self._stop_sent and self._error is None:
                # Data after close(): now ask the peer to stop sending.  (Not at close()
                # itself: some peers take STOP_SENDING as a reset of the whole stream.)
                self._stop_sent = True
                with contextlib.suppress(ValueError, RuntimeError, AssertionError):
                    self._conn._quic.stop_stream(self._id, STREAM_RESET_CODE)
                self._conn._schedule_transmit()
            return
        if not self._reserve(len(data)):
            self._conn._over_budget(self, len(data))
            return
        self._buf.append(data)
        self._wake_reader()

    def _on_fin(self) -> None:
        self._eof = True
        self._wake_reader()
        self._maybe_forget()

    def _on_reset(self, error: ConnectionClosed) -> None:
        """The peer reset its sending side: reads fail, unread data is dropped."""
        if self._error is None:
            self._error = error
        dropped = self._buf.clear()
        if dropped:
            self._release(dropped)
            self._conn._credit(self._id, dropped)
        self._wake_reader()
        self._maybe_forget()

    def _drop_pending(self) -> None:
        if self._pending is not None:
            self._pending = None
            self._conn._blocked_writers.discard(self)

    def _on_stop_sending(self, error: ConnectionClosed) -> None:
        """The peer stopped reading: writes fail (aioquic answers with RESET_STREAM)."""
        if not self._write_closed or self._pending is not None:
            self._write_closed = True
            self._write_error = self._write_error or error
        self._drop_pending()
        self._wake_writer()
        self._maybe_forget()

    def _on_connection_closed(self, error: ConnectionClosed) -> None:
        if self._error is None and not self._eof:
            self._error = error
        if not self._write_closed or self._pending is not None:
            self._write_closed = True
            self._write_error = self._write_error or error
        self._drop_pending()
        self._wake_reader()
        self._wake_writer()

    def _backlog(self) -> int:
        """Bytes written but not sent yet (after ``limit_buffering``: not acknowledged yet)."""
        quic = self._conn._quic
        done = quic.acked_offset(self._id) if self._limited else quic.sent_offset(self._id)
        return 0 if done is None else self._written - done

    def _maybe_forget(self) -> None:
        # After close() the stream stays known until the peer ends its side, so that data
        # it still sends is credited and answered with STOP_SENDING.
        read_done = self._eof or self._error is not None
        if read_done and self._write_closed and self._pending is None:
            self._conn._forget(self._id)

    # --- Stream API ------------------------------------------------------------------------

    def _consumed(self, n: int) -> None:
        self._conn._credit(self._id, n)

    def limit_buffering(self, size: int) -> None:
        """Receive window, and written bytes not yet acknowledged: at most ``size`` each.

        Counting what is in flight too (not only what is unsent) keeps the queue this
        stream builds in the network, behind a slow link, within ``size`` as well.
        """
        self._conn._quic.limit_stream_window(self._id, size)
        self._high_water = max(1, min(size, WRITE_HIGH_WATER))
        self._limited = True

    def try_write_nowait(self, data: bytes | bytearray | memoryview) -> bool:
        if self._write_closed or self._pending is not None:
            return False
        if len(data) > WRITE_CHUNK or self._backlog() >= self._high_water:
            return False
        if data:
            self._commit(data)
        return True

    def _commit(self, data: bytes | bytearray | memoryview) -> None:
        """Take all of ``data`` (our turn) and hand aioquic what the backlog allows."""
        # A mutable buffer could change after a cancelled write returns: keep a copy.
        self._pending = memoryview(data if isinstance(data, bytes) else bytes(data))
        self._count_sent(len(data))
        self._pump()

    def _pump(self) -> None:
        """Move pending bytes into aioquic in chunks while the unsent backlog allows."""
        view = self._pending
        conn = self._conn
        while view is not None and self._backlog() < self._high_water:
            n = min(len(view), WRITE_CHUNK)
            try:
                conn._quic.send_stream_data(self._id, view[:n])  # type: ignore[arg-type]
            except (ValueError, RuntimeError, AssertionError) as exc:
                self._pending = None
                self._write_closed = True
                self._write_error = StreamReset(f"QUIC stream {self._id} cannot send: {exc}")
                self._wake_writer()
                return
            self._written += n
            view = view[n:] if n < len(view) else None
        self._pending = view
        if view is None:
            conn._blocked_writers.discard(self)
            if self._pending_fin:
                self._send_fin()
            self._wake_writer()
        else:
            conn._blocked_writers.add(self)
        conn._schedule_transmit()

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._write_closed and not data:
            return
        # Our turn comes once an earlier (perhaps cancelled) write is all handed to aioquic;
        # nothing of ``data`` is committed before, so a cancellation there sends none of it.
        while self._pending is not None and not self._write_closed:
            await self._wait_writer()
        if self._write_closed:
            raise fresh(self._write_error) or ConnectionClosed(
                f"QUIC stream {self._id} is closed for writing"
            )
        target = self._written + len(data)
        self._commit(data)
        # Committed: the connection moves the rest as the backlog drains; a cancellation
        # from here on still sends all of ``data``.
        while self._pending is not None:
            await self._wait_writer()
        if self._written < target:  # dropped by a reset, STOP_SENDING or the connection's end
            raise fresh(self._write_error) or ConnectionClosed(
                f"QUIC stream {self._id} was closed while writing"
            )

    def _send_fin(self) -> None:
        with contextlib.suppress(ValueError, RuntimeError, AssertionError):
            self._conn._quic.send_stream_data(self._id, b"", end_stream=True)
        self._conn._schedule_transmit()
        self._maybe_forget()

    async def close_write(self) -> None:
        if self._write_closed:
            return
        self._write_closed = True
        if self._pending is not None:  # the FIN follows the data still being handed over
            self._pending_fin = True
            return
        self._send_fin()

    async def reset(self) -> None:
        if self._error is None:
            self._error = StreamReset(f"QUIC stream {self._id} was reset locally")
        conn = self._conn
        dropped = self._buf.clear()
        if dropped:
            self._release(dropped)
            conn._credit(self._id, dropped)
        quic = conn._quic
        if not self._write_closed or self._pending is not None:
            self._write_closed = True
            self._write_error = self._error
            self._drop_pending()
            with contextlib.suppress(ValueError, RuntimeError, AssertionError):
                quic.reset_stream(self._id, STREAM_RESET_CODE)
        if not self._read_closed and not self._eof:
            with contextlib.suppress(ValueError, RuntimeError, AssertionError):
                quic.stop_stream(self._id, STREAM_RESET_CODE)
        self._read_closed = True
        conn._forget(self._id)
        conn._schedule_transmit()
        self._wake_reader()
        self._wake_writer()

    async def close(self) -> None:
        if not self._read_closed:
            self._read_closed = True
            dropped = self._buf.clear()
            if dropped:
                self._release(dropped)
                self._conn._credit(self._id, dropped)
            self._wake_reader()
        await self.close_write()
        self._maybe_forget()

    def __repr__(self) -> str:
        peer = self._conn._remote_peer
        who = peer.fmt_short() if peer is not None else "?"
        return f"<QuicStream {self._id} {self.protocol or ''} to {who}>"


class QuicConnection(MuxedConnection):
    """One QUIC connection on a :class:`QuicEndpoint`: authenticated, multiplexed, datagrams."""

    def __init__(
        self,
        endpoint: QuicEndpoint,
        quic: Libp2pQuicConnection,
        *,
        remote: SockAddr,
        is_initiator: bool,
        local_peer: PeerId,
        expected_peer: PeerId | None,
        config: NetworkConfig,
    ) -> None:
        self._endpoint = endpoint
        self._quic = quic
        self._config = config
        self._loop = asyncio.get_running_loop()
        # times ping round trips (virtual under the simulator, else perf_counter)
        self._clock = measure_clock(self._loop)
        self._remote_sockaddr = remote
        self._expected_peer = expected_peer
        self._remote_peer: PeerId | None = None
        self._streams: dict[int, QuicStream] = {}
        self._accept_queue: deque[QuicStream] = deque()
        self._accept_waiter: asyncio.Future[None] | None = None
        self._datagrams: deque[bytes] = deque()
        self._datagram_waiter: asyncio.Future[None] | None = None
        self._pings: dict[int, tuple[float, asyncio.Future[float]]] = {}
        self._next_ping = 0
        self._blocked_writers: set[QuicStream] = set()
        # Peer-initiated stream ids: the next one never seen, and lower ones opened implicitly.
        self._inbound_next = 0 if not is_initiator else 1
        self._inbound_implicit: set[int] = set()
        self._transmit_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._keepalive: asyncio.TimerHandle | None = None
        self._flush_waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._terminated = False
        self._close_reason: ConnectionClosed | None = None
        self._done = asyncio.Event()
        #: Resolves once the handshake and the peer's certificate check are done.
        self.established: asyncio.Future[None] = self._loop.create_future()
        self.established.add_done_callback(_consume_exception)
        self.local_peer = local_peer
        self.is_initiator = is_initiator
        self.security_protocol = QUIC_SECURITY
        self.muxer_protocol = QUIC_MUXER
        self.stats = ConnectionStats()
        #: Received datagrams dropped because the receive queue was full.
        self.datagrams_dropped = 0
        self._local_addr: Multiaddr | None = None
        self._remote_addr: Multiaddr | None = None
        self._resource_scope: ConnectionScope | None = None

    # --- identity and addresses ---------------------------------------------------------

    @property
    def remote_peer(self) -> PeerId:  # type: ignore[override]
        """The authenticated remote peer (after the handshake)."""
        if self._remote_peer is None:
            raise ConnectionClosed("QUIC connection is not authenticated yet")
        return self._remote_peer

    @property
    def local_addr(self) -> Multiaddr:
        if self._local_addr is None:
            self._local_addr = self._endpoint.local_multiaddr
        return self._local_addr

    @property
    def remote_addr(self) -> Multiaddr:
        if self._remote_addr is None:
            self._remote_addr = self._endpoint.network.to_multiaddr(self._remote_sockaddr)
        return self._remote_addr

    # --- driving the core -------------------------------------------------------------------

    def _datagram_received(self, data: bytes, addr: SockAddr, *, transmit: bool = True) -> None:
        """Feed one datagram; ``transmit=False`` leaves sending to the end of the burst."""
        if self._terminated:
            return
        self._quic.receive_datagram(data, addr, self._loop.time())
        self._process_events()
        if transmit:
            self._transmit()

    def _schedule_transmit(self) -> None:
        if not self._transmit_scheduled and not self._terminated:
            self._transmit_scheduled = True
            self._loop.call_soon(self._transmit)

    def _transmit(self) -> None:
        self._transmit_scheduled = False
        if self._terminated:
            return
        quic = self._quic
        send = self._endpoint.send
        for data, addr in quic.datagrams_to_send(self._loop.time()):
            send(data, addr)
        self._set_timer()
        if self._blocked_writers:
            for st in list(self._blocked_writers):
                if st._pending is None:
                    self._blocked_writers.discard(st)
                    st._wake_writer()
                elif st._backlog() < st._high_water:
                    st._pump()
        if self._flush_waiter is not None and self._all_sent_acknowledged():
            w, self._flush_waiter = self._flush_waiter, None
            if not w.done():
                w.set_result(None)

    def _set_timer(self) -> None:
        at = self._quic.get_timer()
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None:
            self._timer = self._loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self._terminated:
            return
        # A hair late: aioquic recomputes a loss deadline as ``sent + delay`` and checks
        # ``sent <= now - delay``; at exactly the deadline rounding can keep that false
        # forever on a virtual clock, which does not move on by itself.
        self._quic.handle_timer(self._loop.time() + _TIMER_SLACK)
        self._process_events()
        self._transmit()

    def _process_events(self) -> None:
        quic = self._quic
        while (ev := quic.next_event()) is not None:
            if isinstance(ev, events.StreamDataReceived):
                self._on_stream_data(ev)
            elif isinstance(ev, events.StreamReset):
                st = self._streams.get(ev.stream_id)
                if st is not None:
                    st._on_reset(
                        StreamReset(
                            f"QUIC stream {ev.stream_id} was reset by the peer "
                            f"(code {ev.error_code})"
                        )
                    )
                if quic.settle(ev.stream_id):
                    self._schedule_transmit()
            elif isinstance(ev, events.StopSendingReceived):
                st = self._streams.get(ev.stream_id)
                if st is not None:
                    st._on_stop_sending(
                        StreamReset(
                            f"QUIC stream {ev.stream_id}: the peer stopped reading "
                            f"(STOP_SENDING code {ev.error_code})"
                        )
                    )
            elif isinstance(ev, events.DatagramFrameReceived):
                self._on_datagram(ev.data)
            elif isinstance(ev, events.HandshakeCompleted):
                if not self._on_handshake():
                    return
            elif isinstance(ev, events.ConnectionIdIssued):
                self._endpoint._register(ev.connection_id, self)
            elif isinstance(ev, events.ConnectionIdRetired):
                self._endpoint._unregister(ev.connection_id, self)
            elif isinstance(ev, events.PingAcknowledged):
                entry = self._pings.pop(ev.uid, None)
                if entry is not None and not entry[1].done():
                    entry[1].set_result(self._clock() - entry[0])
            elif isinstance(ev, events.ConnectionTerminated):
                self._on_terminated(ev, release=True)
                return
        if not self._closed:
            closing = quic.closing_event()
            if closing is not None:  # a CONNECTION_CLOSE was sent or received
                self._on_terminated(closing, release=False)

    def _on_handshake(self) -> bool:
        try:
            peer = self._quic.verify_peer(self._expected_peer)
        except AuthenticationFailed as exc:
            log.debug("QUIC peer at %s refused: %s", self._remote_sockaddr, exc)
            self._fail(exc)
            self._transmit()
            return False
        self._remote_peer = peer
        path_size = self._endpoint.network.path_datagram_size(self._remote_sockaddr)
        if path_size is not None:
            self._quic.raise_datagram_size(path_size)
        if not self.established.done():
            self.established.set_result(None)
        self._start_keepalive()
        self._endpoint._established(self)
        return True

    def _fail(self, exc: Exception) -> None:
        if not self.established.done():
            self.established.set_exception(exc)
        self._terminate(
            exc if isinstance(exc, ConnectionClosed) else ConnectionClosed(str(exc)), release=False
        )

    def _on_terminated(self, ev: events.ConnectionTerminated, *, release: bool) -> None:
        reason = ev.reason_phrase or "no reason given"
        if not self.established.done():
            code = ev.error_code
            if code == BAD_CERTIFICATE_ERROR or (
                QuicErrorCode.CRYPTO_ERROR <= code < QuicErrorCode.CRYPTO_ERROR + 0x100
            ):
                self.established.set_exception(
                    AuthenticationFailed(f"QUIC handshake failed (code 0x{code:x}): {reason}")
                )
            else:
                self.established.set_exception(
                    ConnectionFailed(f"QUIC connection closed during the handshake: {reason}")
                )
        self._terminate(ConnectionClosed(f"QUIC connection closed: {reason}"), release=release)

    def _on_stream_data(self, ev: events.StreamDataReceived) -> None:
        sid = ev.stream_id
        st = self._streams.get(sid)
        if st is None:
            st = self._new_inbound(sid)
            if st is None:
                if ev.data:
                    self._credit(sid, len(ev.data))
                return
        if ev.data:
            self.stats.messages_received += 1
            st._deliver(ev.data)
        if ev.end_stream:
            st._on_fin()

    def _new_inbound(self, sid: int) -> QuicStream | None:
        """The stream object of a stream the peer just opened (None if it is an old one)."""
        if (sid & 1) == (0 if self.is_initiator else 1) or sid & 2:
            return None  # ours, or unidirectional (refused by the core's limits)
        if sid >= self._inbound_next:
            self._inbound_implicit.update(range(self._inbound_next, sid, 4))
            self._inbound_next = sid + 4
        elif sid in self._inbound_implicit:
            self._inbound_implicit.discard(sid)
        else:
            return None  # a stream we already forgot
        scope = None
        refusal = "accept backlog full"
        if not self._closed and len(self._accept_queue) < self._config.max_ack_backlog:
            try:
                scope = self._open_stream_scope("inbound")
                refusal = ""
            except ResourceLimitExceeded as exc:
                refusal = str(exc)
        if refusal:
            log.debug("QUIC: refusing stream %d: %s", sid, refusal)
            with contextlib.suppress(ValueError, RuntimeError, AssertionError):
                self._quic.reset_stream(sid, STREAM_RESET_CODE)
                self._quic.stop_stream(sid, STREAM_RESET_CODE)
            return None
        st = QuicStream(self, sid)  # only for a stream we accept
        st._scope = scope
        self._streams[sid] = st
        self._accept_queue.append(st)
        w = self._accept_waiter
        if w is not None:
            self._accept_waiter = None
            if not w.done():
                w.set_result(None)
        return st

    def _on_datagram(self, data: bytes) -> None:
        if len(self._datagrams) >= MAX_QUEUED_DATAGRAMS:
            self.datagrams_dropped += 1
            return
        self._datagrams.append(data)
        w = self._datagram_waiter
        if w is not None:
            self._datagram_waiter = None
            if not w.done():
                w.set_result(None)

    def _credit(self, stream_id: int, n: int) -> None:
        self.stats.bytes_received += n
        if self._quic.consume(stream_id, n):
            self._schedule_transmit()

    def _forget(self, stream_id: int) -> None:
        st = self._streams.pop(stream_id, None)
        if st is not None:
            st._scope_done()
            self._blocked_writers.discard(st)
            self._quic.forget_stream(stream_id)

    def _over_budget(self, st: QuicStream, n: int) -> None:
        """Data for ``st`` does not fit the memory its scopes allow: reset the stream."""
        log.debug("QUIC: stream %d over its memory budget (%d bytes more); resetting", st._id, n)
        self._drop_stream(st, "over its memory budget", discarded=n)

    def _drop_stream(self, st: QuicStream, why: str, *, discarded: int = 0) -> None:
        """Reset both directions of ``st`` and forget it; ``discarded`` bytes that arrived
        for it were never buffered."""
        # Discarded, never read: those bytes and everything the stream held give their
        # connection-level credit back (else each such reset shrinks the window for good).
        held = st._buf.clear()
        st._release(held)
        self._credit(st._id, discarded + held)
        st._error = st._error or StreamReset(f"QUIC stream {st._id} reset: {why}")
        st._read_closed = True
        st._write_closed = True
        st._drop_pending()
        with contextlib.suppress(ValueError, RuntimeError, AssertionError):
            self._quic.reset_stream(st._id, STREAM_RESET_CODE)
            self._quic.stop_stream(st._id, STREAM_RESET_CODE)
        st._wake_reader()
        st._wake_writer()
        self._forget(st._id)
        self._schedule_transmit()

    @property
    def resource_scope(self) -> ConnectionScope | None:
        """The resource manager's scope of this connection (set by the node when it keeps
        the connection).  Streams the peer opened before it was set (QUIC streams can
        arrive as soon as the handshake completes, before the node's admission) are
        charged to it when it is set; those it refuses are reset and leave the accept
        queue."""
        return self._resource_scope

    @resource_scope.setter
    def resource_scope(self, scope: ConnectionScope | None) -> None:
        self._resource_scope = scope
        if scope is not None:
            for st in [st for st in self._streams.values() if st._scope is None]:
                self._charge_early_stream(scope, st)

    def _charge_early_stream(self, scope: ConnectionScope, st: QuicStream) -> None:
        """Charge ``st`` (and what it buffers) to ``scope``, or reset it if refused."""
        sid = st._id
        inbound = (sid & 1) == (1 if self.is_initiator else 0)
        try:
            st._scope = scope.open_stream("inbound" if inbound else "outbound")
        except ResourceLimitExceeded as exc:
            refusal = str(exc)
        else:
            if st._reserve(len(st._buf)):
                return
            refusal = "its buffered data is over its memory budget"
        log.debug("QUIC: refusing stream %d opened before admission: %s", sid, refusal)
        with contextlib.suppress(ValueError):
            self._accept_queue.remove(st)  # not accepted yet: the application never sees it
        self._drop_stream(st, f"refused by the resource manager: {refusal}")

    def _terminate(self, reason: ConnectionClosed, *, release: bool) -> None:
        """End local state; ``release`` also stops the core (no more packets to handle)."""
        if not self._closed:
            self._closed = True
            self._close_reason = reason.with_traceback(None)  # no frames kept (see fresh)
            self.stats.closed_at = self.stats.closed_at or self._loop.time()
            for st in list(self._streams.values()):
                st._on_connection_closed(reason)
                st._scope_done()
            self._streams.clear()
            if self.resource_scope is not None:
                self.resource_scope.done()
            self._blocked_writers.clear()
            for w in (self._accept_waiter, self._datagram_waiter, self._flush_waiter):
                if w is not None and not w.done():
                    w.set_result(None)
            for _, fut in self._pings.values():
                if not fut.done():
                    fut.set_exception(ConnectionClosed(str(reason)))
            self._pings.clear()
            if self._keepalive is not None:
                self._keepalive.cancel()
                self._keepalive = None
            if not self.established.done():
                self.established.set_exception(reason)
            self._done.set()
            self._endpoint._connection_closed(self)
        if release and not self._terminated:
            self._terminated = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._endpoint._release(self)

    def _start_keepalive(self) -> None:
        interval = self._config.keepalive_interval
        if interval > 0 and self._keepalive is None and not self._closed:
            interval = min(interval, self._quic._configuration.idle_timeout / 2)
            self._keepalive = self._loop.call_later(interval, self._keepalive_tick, interval)

    def _keepalive_tick(self, interval: float) -> None:
        self._keepalive = None
        if self._closed:
            return
        self._quic.send_ping(-1)
        self._schedule_transmit()
        self._keepalive = self._loop.call_later(interval, self._keepalive_tick, interval)

    # --- MuxedConnection API --------------------------------------------------------------

    async def open_stream(self) -> MuxedStream:
        if self._closed:
            raise fresh(self._close_reason) or ConnectionClosed("QUIC connection is closed")
        if len(self._streams) >= self._config.max_streams_per_connection:
            raise ResourceLimitExceeded(
                f"{len(self._streams)} streams open on this QUIC connection "
                f"(max_streams_per_connection={self._config.max_streams_per_connection})"
            )
        scope = self._open_stream_scope("outbound")
        quic = self._quic
        sid = quic.get_next_available_stream_id()
        quic.send_stream_data(sid, b"")  # creates the stream (sent with its first data)
        st = QuicStream(self, sid)
        st._scope = scope
        self._streams[sid] = st
        return st

    async def accept_stream(self) -> MuxedStream:
        while not self._accept_queue:
            if self._closed:
                raise fresh(self._close_reason) or ConnectionClosed("QUIC connection closed")
            waiter = self._loop.create_future()
            self._accept_waiter = waiter
            await waiter
        return self._accept_queue.popleft()

    async def ping(self, timeout: float | None = None) -> float:
        """Measure one round trip with a QUIC PING (also recorded in ``stats``)."""
        if self._closed:
            raise fresh(self._close_reason) or ConnectionClosed("QUIC connection closed")
        uid = self._next_ping
        self._next_ping += 1
        fut: asyncio.Future[float] = self._loop.create_future()
        self._pings[uid] = (self._clock(), fut)
        self._quic.send_ping(uid)
        self._schedule_transmit()
        async with asyncio.timeout(timeout):
            rtt = await fut
        self.stats.record_latency(rtt)
        return rtt

    # --- datagrams (RFC 9221) ---------------------------------------------------------------

    @property
    def datagrams_supported(self) -> bool:
        """Whether both ends support unreliable datagrams on this connection."""
        return (
            self._quic._configuration.max_datagram_frame_size is not None
            and self._quic.remote_max_datagram_frame_size is not None
        )

    @property
    def max_datagram_size(self) -> int:
        """The largest payload :meth:`send_datagram` accepts (one QUIC packet)."""
        remote = self._quic.remote_max_datagram_frame_size
        if not self.datagrams_supported or remote is None:
            raise FeatureNotSupported(
                "the peer does not support QUIC datagrams (no max_datagram_frame_size "
                "transport parameter)"
                if self._quic._configuration.max_datagram_frame_size is not None
                else "datagrams are disabled on this QUIC transport"
            )
        packet = self._quic.packet_payload_size - self._quic.peer_cid_length - _DATAGRAM_OVERHEAD
        return max(0, min(packet, remote - 1 - 4))

    def send_datagram(self, data: bytes) -> None:
        """Send one unreliable datagram; it may be lost, duplicated never, reordered maybe."""
        if self._closed:
            raise fresh(self._close_reason) or ConnectionClosed("QUIC connection closed")
        limit = self.max_datagram_size
        if len(data) > limit:
            raise MessageTooLarge(
                f"datagram of {len(data)} bytes exceeds this connection's limit of {limit}"
            )
        self._quic.send_datagram_frame(bytes(data))
        self._schedule_transmit()

    async def receive_datagram(self) -> bytes:
        """The next datagram received; ConnectionClosed once the connection ends."""
        if not self.datagrams_supported:
            self.max_datagram_size  # noqa: B018 - raises the explanatory error
        while not self._datagrams:
            if self._closed:
                raise fresh(self._close_reason) or ConnectionClosed("QUIC connection closed")
            waiter = self._loop.create_future()
            self._datagram_waiter = waiter
            await waiter
        return self._datagrams.popleft()

    # --- closing ------------------------------------------------------------------------------

    def _all_sent_acknowledged(self) -> bool:
        return self._quic.all_sent_acknowledged()

    async def close(self) -> None:
        if self._closed:
            await self._done.wait()
            return
        # Let every byte already written reach the peer (acknowledged), then close.
        if not self._all_sent_acknowledged():
            waiter = self._loop.create_future()
            self._flush_waiter = waiter
            self._schedule_transmit()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._config.close_timeout):
                    await waiter
            self._flush_waiter = None
        self._close_core(QuicErrorCode.NO_ERROR, "closed")
        self._terminate(ConnectionClosed("QUIC connection closed locally"), release=False)

    async def abort(self) -> None:
        self._close_core(QuicErrorCode.NO_ERROR, "aborted")
        self._terminate(ConnectionClosed("QUIC connection aborted locally"), release=False)

    def _close_core(self, code: int, reason: str) -> None:
        if not self._terminated:
            self._quic.close(error_code=code, reason_phrase=reason)
            self._transmit()

    @property
    def is_closed(self) -> bool:
        return self._closed

    async def wait_closed(self) -> None:
        await self._done.wait()

    def __repr__(self) -> str:
        who = self._remote_peer.fmt_short() if self._remote_peer else "?"
        return f"<QuicConnection to {who} via {self._remote_sockaddr}>"


def _consume_exception(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()
