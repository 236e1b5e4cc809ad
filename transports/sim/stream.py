"""Reliable, ordered byte streams over the simulated network (the TCP-like service).

A :class:`SimConnection` is one endpoint of a connection and implements
:class:`~switchy.stack.stream.Connection` exactly.  Writes are cut into segments of
at most :data:`~switchy.transports.sim.network.MAX_SEGMENT` bytes that travel the
route to the peer:

* latency and jitter delay a segment, but segments are delivered in order
  (a late one holds back the ones behind it, as in TCP);
* bandwidth makes segments queue behind each other on a link;
* a loss on a hop becomes a retransmission delay (RTO, doubling), never lost data;
* duplication and reordering of links do not show (TCP hides them);
* when the route is blocked (partition, link down, crashed host) segments
  wait and are retried with backoff; a connection stalled for longer than
  the config's connection timeout breaks, and both endpoints see
  :class:`~switchy.stack.errors.StreamReset`;
* segments parked by a held link wait for the release without timing out;
* ``write`` waits while more than the window (default 256 KiB) is sent but
  not yet read by the peer (window updates are instantaneous);
* data reaching an endpoint that was closed, or a host that restarted since,
  is answered with a reset.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

from multiaddr import Multiaddr

from switchy.stack.buffer import ChunkBuffer, shared_waiter
from switchy.stack.errors import ConnectionClosed, StreamReset, fresh
from switchy.stack.stream import Connection
from switchy.stack.transport import Listener
from switchy.transports.sim.network import (
    CONTROL_PACKET_SIZE,
    HELD,
    LOSS,
    MAX_RTO,
    MAX_SEGMENT,
    MIN_RTO,
)

if TYPE_CHECKING:
    from switchy.transports.sim.nat import Kind
    from switchy.transports.sim.network import Host, Link, Network, _Route

__all__ = ["SimConnection", "SimListener"]

log = logging.getLogger(__name__)

_DATA: Final = 0
_FIN: Final = 1
_RST: Final = 2

_Segment = tuple[int, bytes | str]
#: The TCP kind a NAT box sees for each segment kind.
_NAT_KINDS: Final[dict[int, Kind]] = {_DATA: "data", _FIN: "fin", _RST: "rst"}


class SimConnection(Connection):
    """One endpoint of a simulated stream connection (see the module docstring)."""

    def __init__(
        self,
        network: Network,
        conn_id: int,
        local: Host,
        local_port: int,
        remote: Host,
        remote_port: int,
        window: int,
        peer_window: int,
        *,
        peer_at: tuple[Host, int] | None = None,
        seen_by_peer: tuple[Host, int] | None = None,
        _peer: SimConnection | None = None,
    ) -> None:
        self._net = network
        self._loop = network.loop
        #: Identifier shared by both endpoints (appears in the trace as ``conn``).
        self.conn_id = conn_id
        self.local_host = local
        self.remote_host = remote
        self.local_port = local_port
        self.remote_port = remote_port
        self.local_addr = local.address(local_port)
        self.remote_addr = remote.address(remote_port)
        self._incarnation = local.incarnation
        self._tag = {"conn": conn_id}
        # receiving
        self._buf = ChunkBuffer()
        self._eof = False
        self._closed = False
        self._error: ConnectionClosed | None = None
        self._read_waiter: asyncio.Future[None] | None = None
        # sending
        self._window = window
        self._outstanding = 0
        self._write_closed = False
        self._write_waiter: asyncio.Future[None] | None = None
        #: Committed bytes not yet sent (at most one write's worth), and a FIN to follow.
        self._pending: memoryview | None = None
        self._pending_fin = False
        self._inflight: deque[tuple[float, int, bytes | str]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._last_arrival = 0.0
        self._route: _Route | None = None
        self._route_version = -1
        self._stalled: deque[_Segment] = deque()
        self._stall_since: float | None = None
        self._retry_timer: asyncio.TimerHandle | None = None
        self._rto = MIN_RTO
        self._finished = False
        #: True when segments cross NAT boxes (each one is walked through them).
        self._via_nat = False
        local._conns[id(self)] = self
        if _peer is None:
            # Where the other end really is, and what it sees as our address (they
            # differ from remote/local when NAT boxes translate between the ends).
            peer_host, peer_port = peer_at if peer_at is not None else (remote, remote_port)
            seen_host, seen_port = seen_by_peer if seen_by_peer is not None else (local, local_port)
            _peer = SimConnection(
                network,
                conn_id,
                peer_host,
                peer_port,
                seen_host,
                seen_port,
                peer_window,
                window,
                _peer=self,
            )
        self.peer: SimConnection = _peer

    # --- Stream API ---------------------------------------------------------------------

    async def read(self, max_bytes: int = -1) -> bytes:
        """Read at most ``max_bytes`` (any amount if negative); ``b""`` at end of stream."""
        buf = self._buf
        while not buf:
            if self._error is not None:
                raise fresh(self._error)
            if self._eof:
                return b""
            waiter = self._loop.create_future()
            self._read_waiter = waiter
            try:
                await waiter
            finally:
                self._read_waiter = None
        if self._error is not None:
            raise fresh(self._error)
        data = buf.take(max_bytes)
        self.peer._freed(len(data))
        return data

    def _unread(self, data: bytes) -> bool:
        self._buf.push_front(data)
        return True

    def try_write_nowait(self, data: bytes | bytearray | memoryview) -> bool:
        if self._error is not None or self._write_closed or self._pending is not None:
            return False
        if self._outstanding + len(data) > self._window:
            return False
        if data:
            self._commit(data)
        return True

    def _commit(self, data: bytes | bytearray | memoryview) -> None:
        """Take all of ``data`` (our turn) and send the segments the window allows."""
        self._pending = memoryview(data).cast("B")
        self._pump()

    def _pump(self) -> None:
        view = self._pending
        while view is not None and self._outstanding < self._window:
            n = min(len(view), MAX_SEGMENT)
            self._outstanding += n
            self._send(_DATA, bytes(view[:n]))
            view = view[n:] if n < len(view) else None
        self._pending = view
        if view is None:
            if self._pending_fin:
                self._pending_fin = False
                self._send_fin()
            self._wake_writer()

    async def _wait_writer(self) -> None:
        waiter = self._write_waiter = shared_waiter(self._write_waiter)
        await asyncio.shield(waiter)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of ``data``, waiting while the peer has a window's worth unread.

        The write waits for its turn before it commits anything; once committed, the
        connection sends the rest as the window opens, even if the writer is cancelled.
        """
        while True:
            if self._error is not None:
                raise fresh(self._error)
            if self._write_closed:
                raise ConnectionClosed(f"write after close on sim connection {self.conn_id}")
            if self._pending is None:
                break
            await self._wait_writer()
        if not data:
            return
        self._commit(data)
        while self._pending is not None:
            await self._wait_writer()
            if self._error is not None:
                raise fresh(self._error)

    async def close_write(self) -> None:
        """Send end-of-stream after everything written so far."""
        if self._write_closed or self._error is not None:
            return
        self._write_closed = True
        if self._pending is not None:  # the FIN follows the data still waiting for window
            self._pending_fin = True
            return
        self._send_fin()

    def _send_fin(self) -> None:
        self._net._record("fin", self.local_host.name, self.remote_host.name, 0, self._tag)
        self._send(_FIN, b"")
        self._wake_writer()

    async def reset(self) -> None:
        """Abort both directions: buffered data is discarded and the peer gets a reset."""
        if self._error is not None:
            return
        # Queued, not yet sent segments are discarded; the reset follows what is on the wire.
        self._fail(StreamReset(f"sim connection {self.conn_id} was reset locally"))
        self._net._record("reset", self.local_host.name, self.remote_host.name, 0, self._tag)
        self._send_rst()
        self._finish()

    async def close(self) -> None:
        """Half-close, stop reading (late data is discarded and answered with a reset)."""
        await self.close_write()
        if self._closed:
            return
        self._closed = True
        self._eof = True
        freed = self._buf.clear()
        if freed:
            self.peer._freed(freed)
        self._wake_reader()
        self._net._record("close", self.local_host.name, self.remote_host.name, 0, self._tag)
        if self.peer._write_closed or self._error is not None:
            self._finish()

    # --- properties ---------------------------------------------------------------------

    @property
    def is_closed(self) -> bool:
        """Whether the endpoint was closed, reset or broken."""
        return self._closed or self._error is not None

    @property
    def error(self) -> ConnectionClosed | None:
        """Why the connection ended abnormally (reset, timeout, crash), if it did."""
        return self._error

    # --- sending machinery --------------------------------------------------------------

    def _current_route(self) -> _Route | None:
        net = self._net
        if self._via_nat:
            return self._route  # the route of the last walk through the boxes
        if self._route_version != net.version:
            self._route = net._route(self.local_host, self.remote_host)
            self._route_version = net.version
        return self._route

    def _rto0(self, route: _Route | None) -> float:
        # About one RTO of a settled TCP: the floor plus a round trip.
        return MIN_RTO + (2.0 * route.latency if route is not None else 0.0)

    def _send(self, kind: int, payload: bytes | str) -> None:
        if self._stalled:
            self._stalled.append((kind, payload))
            return
        reason = self._try_send(kind, payload)
        if reason is not None:
            self._stalled.append((kind, payload))
            self._stall(reason)

    def _try_send(self, kind: int, payload: bytes | str) -> str | None:
        """Put one segment on the wire; return why it cannot go, or None."""
        net = self._net
        src = self.local_host
        dst = self.remote_host
        if self._via_nat:
            reason = self._walk(kind)
            if reason is not None:
                return reason
        elif self._route_version != net.version:
            self._route = net._route(self.local_host, self.remote_host)
            self._route_version = net.version
        route = self._route
        if self._via_nat:
            assert route is not None
        elif route is None or net._partitions or net._held or not src.up or not dst.up:
            reason = net._blocked(src, dst, route)
            if reason is not None:
                return reason
            assert route is not None
        size = len(payload) if kind == _DATA else CONTROL_PACKET_SIZE
        if route.simple:
            for link in route.links:
                lc = link.counters
                lc.packets += 1
                lc.bytes += size
            now = net.loop.time()
            arrival: float | None = now + route.latency
        else:
            arrival = net._transit_reliable(route, size, MIN_RTO + 2.0 * route.latency)
            if arrival is None:
                return LOSS
            now = net.loop.time()
        if kind == _DATA:
            c = src.counters
            c.packets_sent += 1
            c.bytes_sent += size
            trace = net.trace
            if trace.enabled:
                trace.record(now, "send", src.name, dst.name, size, self._tag)
        assert arrival is not None
        if arrival < self._last_arrival:
            arrival = self._last_arrival
        self._last_arrival = arrival
        self._inflight.append((arrival, kind, payload))
        if self._timer is None:
            self._timer = self._loop.call_at(arrival, self._deliver_due)
        return None

    def _walk(self, kind: int) -> str | None:
        """Take a segment through the NAT boxes on the way now; why it cannot go, or None."""
        from switchy.transports.sim.nat import NatPacket

        peer = self.peer
        packet = NatPacket(
            "tcp",
            (self.local_host.name, self.local_port),
            (self.remote_host.name, self.remote_port),
            _NAT_KINDS[kind],
        )
        walk = self._net._walk(self.local_host, packet)
        self._route = walk.route
        if walk.reason is not None:
            return str(walk.reason)
        seen = walk.packet
        if (
            walk.final is not peer.local_host
            or seen.dst != (peer.local_host.name, peer.local_port)
            or seen.src != (peer.remote_host.name, peer.remote_port)
        ):
            self._route = None
            return "nat_mismatch"  # a box translated it for another flow (mapping lost)
        return None

    def _send_rst(self) -> None:
        """Send a reset once, best effort (it is not retried when it cannot get through)."""
        net = self._net
        if self._via_nat:
            why = self._walk(_RST)
            route = self._route
            reason = why
        else:
            route = self._current_route()
            reason = net._blocked(self.local_host, self.remote_host, route)
        if reason is None:
            assert route is not None
            arrival = net._transit_reliable(route, CONTROL_PACKET_SIZE, self._rto0(route))
            if arrival is not None:
                if arrival < self._last_arrival:
                    arrival = self._last_arrival
                self._last_arrival = arrival
                self._inflight.append((arrival, _RST, "reset by peer"))
                if self._timer is None:
                    self._timer = self._loop.call_at(arrival, self._deliver_due)
                return
            reason = LOSS
        net._record(
            "drop",
            self.local_host.name,
            self.remote_host.name,
            CONTROL_PACKET_SIZE,
            self._tag | {"reason": reason, "what": "rst"},
        )

    def _stall(self, reason: str) -> None:
        net = self._net
        now = net.loop.time()
        size = sum(len(p) for k, p in self._stalled if k == _DATA)
        net._record(
            "drop",
            self.local_host.name,
            self.remote_host.name,
            size,
            self._tag | {"reason": reason},
        )
        self.local_host.counters.drops += 1
        if reason == HELD:
            # Parked on a held link: wait for the release, without a timeout.
            self._stall_since = None
            route = self._current_route()
            link: Link | None = net._held_link(route) if route is not None else None
            if link is not None:
                link._waiters[self] = None
            return
        if self._stall_since is None:
            self._stall_since = now
            self._rto = self._rto0(self._current_route())
        deadline = self._stall_since + net.config.connection_timeout
        if now >= deadline:
            self._timed_out(reason)
            return
        when = min(now + self._rto, deadline)
        self._rto = min(self._rto * 2.0, MAX_RTO)
        self._cancel_retry()
        self._retry_timer = self._loop.call_at(when, self._retry)

    def _retry(self) -> None:
        """Try to send the stalled segments again (timer, or release of a held link)."""
        self._retry_timer = None
        if self._error is not None:
            return
        stalled = self._stalled
        while stalled:
            kind, payload = stalled[0]
            if kind == _RST:
                stalled.popleft()
                self._send_rst()
                continue
            reason = self._try_send(kind, payload)
            if reason is not None:
                self._stall(reason)
                return
            stalled.popleft()
        self._stall_since = None

    def _cancel_retry(self) -> None:
        if self._retry_timer is not None:
            self._retry_timer.cancel()
            self._retry_timer = None

    def _timed_out(self, reason: str) -> None:
        net = self._net
        timeout = net.config.connection_timeout
        net._record(
            "timeout",
            self.local_host.name,
            self.remote_host.name,
            0,
            self._tag | {"reason": reason},
        )
        msg = (
            f"sim connection {self.conn_id} {self.local_host.name}<->{self.remote_host.name} "
            f"broke: nothing got through for {timeout:g}s ({reason})"
        )
        # Both ends see the failure.
        for end in (self, self.peer):
            if end._error is None:
                end._fail(StreamReset(msg))
                end._finish()

    # --- receiving machinery ------------------------------------------------------------

    def _deliver_due(self) -> None:
        """Timer: hand every segment whose arrival time has come to the peer."""
        self._timer = None
        inflight = self._inflight
        now = self._loop.time()
        peer = self.peer
        host = peer.local_host
        while inflight and inflight[0][0] <= now:
            if not host.up or host.incarnation != peer._incarnation:
                if host.up:
                    # The host restarted: it answers with a reset.
                    inflight.clear()
                    self._net._record(
                        "reset",
                        host.name,
                        self.local_host.name,
                        0,
                        self._tag | {"reason": "peer restarted"},
                    )
                    if self._error is None:
                        self._fail(
                            StreamReset(
                                f"sim connection {self.conn_id} reset: host {host.name} "
                                "restarted and lost the connection"
                            )
                        )
                        self._finish()
                    return
                # The destination crashed: what was on the wire is retransmitted.
                requeue = [(k, p) for _, k, p in inflight]
                inflight.clear()
                self._stalled.extendleft(reversed(requeue))
                self._last_arrival = 0.0
                self._stall("dst_down")
                return
            _, kind, payload = inflight.popleft()
            peer._receive(kind, payload)
        if inflight:
            self._timer = self._loop.call_at(inflight[0][0], self._deliver_due)

    def _receive(self, kind: int, payload: bytes | str) -> None:
        net = self._net
        if kind == _DATA:
            assert isinstance(payload, bytes)
            n = len(payload)
            src = self.remote_host.name
            dst = self.local_host.name
            net.trace.record(net.loop.time(), "deliver", src, dst, n, self._tag)
            c = self.local_host.counters
            c.packets_received += 1
            c.bytes_received += n
            if self._closed or self._error is not None:
                self.peer._freed(n)
                if self._closed and self._error is None:
                    # Data for an endpoint that stopped reading: answer with a reset.
                    self._fail(StreamReset(f"sim connection {self.conn_id} was closed"))
                    net._record("reset", dst, src, 0, self._tag | {"reason": "data after close"})
                    self._send_rst()
                    self._finish()
                return
            self._buf.append(payload)
            self._wake_reader()
        elif kind == _FIN:
            self._eof = True
            self._wake_reader()
            if self._closed:
                self._finish()
        else:
            if self._error is None:
                self._fail(StreamReset(f"sim connection {self.conn_id} was reset by the peer"))
                self._finish()

    def _freed(self, n: int) -> None:
        """The peer consumed ``n`` of our bytes: open the window."""
        self._outstanding -= n
        if self._outstanding < self._window:
            if self._pending is not None:
                self._pump()
            else:
                self._wake_writer()

    # --- state changes ------------------------------------------------------------------

    def _fail(self, error: ConnectionClosed) -> None:
        self._error = error
        self._write_closed = True
        self._pending = None
        self._pending_fin = False
        self._stalled.clear()
        self._stall_since = None
        self._cancel_retry()
        self._buf.clear()
        self._wake_reader()
        self._wake_writer()

    def _finish(self) -> None:
        """Forget the endpoint on its host (it no longer needs crash handling)."""
        if self._finished:
            return
        self._finished = True
        self.local_host._conns.pop(id(self), None)

    def _host_crashed(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._inflight.clear()
        if self._error is None:
            self._fail(StreamReset(f"host {self.local_host.name} crashed"))
        self._finish()

    def _wake_reader(self) -> None:
        w = self._read_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _wake_writer(self) -> None:
        w = self._write_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def __repr__(self) -> str:
        return (
            f"<SimConnection {self.conn_id} {self.local_host.name}:{self.local_port} -> "
            f"{self.remote_host.name}:{self.remote_port}>"
        )


class SimListener(Listener):
    """A listening port of a simulated host; each connection goes to the handler in a task."""

    def __init__(
        self,
        network: Network,
        host: Host,
        port: int,
        handler: Callable[[SimConnection], Awaitable[None]],
        window: int,
    ) -> None:
        self._net = network
        self.host = host
        self.port = port
        self.window = window
        self._handler = handler
        self._closed = False

    @property
    def addrs(self) -> list[Multiaddr]:
        """The sim multiaddr of this port."""
        return [self.host.address(self.port)]

    def _accept(self, conn: SimConnection) -> None:
        self.host.spawn(self._run(conn), name=f"sim-accept-{self.host.name}-{conn.conn_id}")

    async def _run(self, conn: SimConnection) -> None:
        try:
            await self._handler(conn)
        except Exception:  # the handler owns errors; never let one kill the listener
            log.exception("sim connection handler failed for %r", conn)
            await conn.reset()

    async def close(self) -> None:
        """Stop accepting; connections already accepted stay open."""
        if self._closed:
            return
        self._closed = True
        if self.host._listeners.get(self.port) is self:
            del self.host._listeners[self.port]

    def __repr__(self) -> str:
        return f"<SimListener {self.host.name}:{self.port}>"
