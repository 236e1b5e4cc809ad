"""The relay side of circuit relay v2: the hop service (``/libp2p/circuit/relay/0.2.0/hop``).

A node running :class:`RelayService` grants reservations and relays
connections to peers that hold one.  Decisions come from
:class:`~switchy.transports.relay.resources.RelayResources` (pure); this module reads
requests, opens the stop stream to the target and forwards bytes between the
two streams, enforcing the per-connection limits: a circuit that carries more
than ``limit_data`` bytes in one direction, or lives longer than
``limit_duration``, is reset at both ends and recorded with
``RESOURCE_LIMIT_EXCEEDED``.  The relay forwards the end-to-end encrypted
bytes of the two peers; it never sees their plaintext.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Final

import attrs
from multiaddr import Multiaddr

from switchy.stack.errors import P2PError, ProtocolError, ResourceLimitExceeded
from switchy.stack.identity import PeerId
from switchy.stack.node import ConnectionEvent, Node, ProtocolService
from switchy.transports.relay.config import RelayConfig
from switchy.transports.relay.metrics import RelayMetrics
from switchy.transports.relay.pb import (
    HOP_PROTOCOL,
    MAX_ADDRS,
    MAX_MESSAGE_SIZE,
    STOP_PROTOCOL,
    HopMessage,
    HopType,
    Limit,
    Peer,
    Reservation,
    Status,
    StopMessage,
    StopType,
    decode_hop,
    decode_stop,
    encode_hop,
    encode_stop,
)
from switchy.transports.relay.resources import RelayResources
from switchy.transports.relay.voucher import seal_voucher

if TYPE_CHECKING:
    from switchy.stack.stream import MuxedStream

__all__ = ["Circuit", "ForwardTap", "RelayService", "ip_key"]

log = logging.getLogger(__name__)

#: Ended circuits kept in :attr:`RelayService.history` (newest last).
HISTORY_SIZE: Final = 64
#: The multiaddr protocol of circuit addresses.
CIRCUIT_PROTOCOL: Final = "p2p-circuit"


@attrs.define(eq=False)
class Circuit:
    """One relayed connection ``src → dst`` as the relay sees it."""

    src: PeerId
    dst: PeerId
    started: float
    #: Bytes forwarded from src to dst and from dst to src.
    forwarded: dict[str, int] = attrs.field(factory=lambda: {"src": 0, "dst": 0})
    #: ``None`` while open; ``OK`` after a clean end; else why it was cut.
    end_status: Status | None = None
    end_reason: str = ""


#: ``tap(circuit, from_src, chunk)``: sees every chunk the relay forwards (tests, metrics).
ForwardTap = Callable[[Circuit, bool, bytes], None]


class _LimitHit(Exception):
    pass


def ip_key(addr: Multiaddr) -> Hashable:
    """The "IP" a connection comes from, for per-IP limits (simulated host for ``/memory``)."""
    items = list(addr.items())
    if items:
        proto, value = items[0]
        if proto.name in ("ip4", "ip6", "dns", "dns4", "dns6"):
            return f"{proto.name}/{value}"
        if proto.name == "memory":
            from switchy.transports.sim.network import sim_host_number

            host = sim_host_number(value)
            if host is not None:
                return f"memory/{host}"
    return str(addr)


class RelayService(ProtocolService):
    """Serves the hop protocol: reservations and relayed connections, within limits."""

    service_name = "relay"
    service_protocols = (HOP_PROTOCOL,)

    def __init__(self, config: RelayConfig | None = None, *, tap: ForwardTap | None = None) -> None:
        self.config = config or RelayConfig()
        self.resources = RelayResources(self.config)
        #: Open circuits.
        self.circuits: set[Circuit] = set()
        #: Recently ended circuits, oldest first.
        self.history: deque[Circuit] = deque(maxlen=HISTORY_SIZE)
        self.tap = tap
        self.node: Node | None = None
        self._bridges: set[asyncio.Task[None]] = set()
        self._unix_offset: float | None = None
        self.metrics: RelayMetrics | None = None

    def attach(self, node: Node) -> None:
        """Serve the hop protocol on ``node`` and watch disconnects."""
        self.node = node
        node.handle(HOP_PROTOCOL, self._handle_hop)
        node.on_connection_event(self._on_event)
        self.metrics = RelayMetrics(
            node.metrics, lambda: len(self.resources.reservations), lambda: len(self.circuits)
        )

    async def start(self) -> None:
        """Report the service as running (``libp2p_relaysvc_status``)."""
        if self.metrics is not None:
            self.metrics.status.set(1)

    async def stop(self) -> None:
        """Cut every circuit (the node is closing)."""
        if self.metrics is not None:
            self.metrics.status.set(0)
        for task in list(self._bridges):
            task.cancel()
        if self._bridges:
            await asyncio.wait(list(self._bridges))

    @property
    def limit(self) -> Limit | None:
        """The per-connection limit announced to clients (``None``: unlimited)."""
        c = self.config
        if not c.limit_duration and not c.limit_data:
            return None
        return Limit(c.limit_duration, c.limit_data)

    def _on_event(self, event: ConnectionEvent) -> None:
        assert self.node is not None
        if event.kind == "disconnected" and not any(
            not c.is_limited for c in self.node.connections(event.peer)
        ):
            # The spec: a reservation is valid only while the peer stays connected.
            self.resources.drop(event.peer)

    def _unix(self, loop_time: float) -> int:
        loop = asyncio.get_running_loop()
        if self._unix_offset is None:
            self._unix_offset = time.time() - loop.time()
        return int(loop_time + self._unix_offset)

    # --- hop requests ---------------------------------------------------------------------

    async def _reply(
        self,
        stream: MuxedStream,
        status: Status,
        *,
        reservation: Reservation | None = None,
        limit: Limit | None = None,
    ) -> None:
        msg = HopMessage(HopType.STATUS, reservation=reservation, limit=limit, status=status)
        await stream.send_message(encode_hop(msg), max_size=MAX_MESSAGE_SIZE)

    async def _handle_hop(self, stream: MuxedStream) -> None:
        peer = stream.remote_peer
        if not self.resources.begin_request(peer):
            log.debug("relay: too many pending hop requests from %s", peer)
            await self._reply(stream, Status.RESOURCE_LIMIT_EXCEEDED)
            return
        pending = True
        try:
            try:
                async with asyncio.timeout(self.config.handshake_timeout):
                    data = await stream.recv_message(max_size=MAX_MESSAGE_SIZE)
                msg = decode_hop(data)
            except ProtocolError as exc:
                log.debug("relay: malformed hop message from %s: %s", peer, exc)
                await self._reply(stream, Status.MALFORMED_MESSAGE)
                return
            except TimeoutError:
                log.debug("relay: %s sent no hop request in time", peer)
                await stream.reset()
                return
            if stream.muxed_conn.is_limited:
                # The spec: no reservations or circuits over relayed connections.
                await self._reply(stream, Status.PERMISSION_DENIED)
                return
            if msg.type == HopType.RESERVE:
                await self._reserve(stream, peer)
            elif msg.type == HopType.CONNECT:
                if msg.peer is None:
                    await self._reply(stream, Status.MALFORMED_MESSAGE)
                    return
                pending = False
                self.resources.end_request(peer)
                await self._connect(stream, peer, msg.peer.id)
            else:
                await self._reply(stream, Status.UNEXPECTED_MESSAGE)
        finally:
            if pending:
                self.resources.end_request(peer)

    def _relay_addrs(self) -> tuple[Multiaddr, ...]:
        assert self.node is not None
        addrs = [
            a
            for a in self.node.full_addrs
            if all(p.name != CIRCUIT_PROTOCOL for p in a.protocols())
        ]
        return tuple(addrs[: MAX_ADDRS // 2])

    async def _reserve(self, stream: MuxedStream, peer: PeerId) -> None:
        assert self.node is not None
        now = asyncio.get_running_loop().time()
        ip = ip_key(stream.muxed_conn.remote_addr)
        renewed = self.resources.has_reservation(peer, now)
        status, expires = self.resources.reserve(peer, ip, now)
        if self.metrics is not None:
            self.metrics.reservation(status, renewed=renewed)
        if status != Status.OK:
            log.info("relay: refused a reservation for %s: %s", peer, status.name)
            await self._reply(stream, status)
            return
        expire = self._unix(expires)
        voucher = seal_voucher(self.node.key, peer, expire)
        reservation = Reservation(expire, self._relay_addrs(), voucher)
        await self._reply(stream, Status.OK, reservation=reservation, limit=self.limit)
        log.info("relay: granted %s a reservation for %.0f s", peer, expires - now)

    async def _connect(self, stream: MuxedStream, src: PeerId, dst: PeerId) -> None:
        assert self.node is not None
        now = asyncio.get_running_loop().time()
        targets = [c for c in self.node.connections(dst) if not c.is_limited]
        if not targets:
            self.resources.drop(dst)
        src_ip = ip_key(stream.muxed_conn.remote_addr)
        status = self.resources.open_circuit(src, dst, now, src_ip)
        buffers: int | None = 0
        if status == Status.OK:
            buffers = self._reserve_circuit_buffers(stream, src, dst)
            if buffers is None:  # the memory budget refused it: a rejection like the others
                self.resources.close_circuit(src, dst, src_ip)
                status = Status.RESOURCE_LIMIT_EXCEEDED
        if self.metrics is not None:
            self.metrics.circuit_request(status)
        if status != Status.OK or buffers is None:
            if buffers is not None:  # a memory refusal was logged naming its scope
                log.info("relay: refused a circuit %s -> %s: %s", src, dst, status.name)
            await self._reply(stream, status)
            return
        try:
            dst_stream = await self._open_stop(targets[0], src)
            if isinstance(dst_stream, Status):
                await self._reply(stream, dst_stream)
                return
            try:
                await self._reply(stream, Status.OK, limit=self.limit)
            except P2PError:
                await dst_stream.reset()
                raise
            circuit = Circuit(src, dst, asyncio.get_running_loop().time())
            log.info("relay: circuit %s -> %s opened", src, dst)
            task = asyncio.ensure_future(self._bridge(circuit, stream, dst_stream))
            self._bridges.add(task)
            task.add_done_callback(self._bridges.discard)
            await task
        finally:
            self.resources.close_circuit(src, dst, src_ip)
            if stream.resource_scope is not None:
                stream.resource_scope.release_memory(buffers)

    def _reserve_circuit_buffers(self, stream: MuxedStream, src: PeerId, dst: PeerId) -> int | None:
        """Charge the two chunks a circuit holds in flight (one per direction, up to
        ``buffer_size`` each) to the source's stream scope (its peer, the hop protocol, the
        system); the bytes charged, ``None`` when a scope is full (logged)."""
        scope = stream.resource_scope
        if scope is None:
            return 0
        need = 2 * self.config.buffer_size
        try:
            scope.reserve_memory(need)
        except ResourceLimitExceeded as exc:
            log.info("relay: refused a circuit %s -> %s: %s", src, dst, exc)
            return None
        return need

    async def _open_stop(self, conn: object, src: PeerId) -> MuxedStream | Status:
        """The stop stream to the target, accepted; else the status to answer the source
        (``RESOURCE_LIMIT_EXCEEDED`` when our limits refuse the stream, logged naming the
        scope; ``CONNECTION_FAILED`` when the target fails or declines)."""
        from switchy.stack.mux import MuxedConnection

        assert isinstance(conn, MuxedConnection) and self.node is not None
        stream: MuxedStream | None = None
        try:
            async with asyncio.timeout(self.config.handshake_timeout):
                stream = await self.node.open_protocol_stream(conn, STOP_PROTOCOL)
                request = StopMessage(StopType.CONNECT, peer=Peer(src), limit=self.limit)
                await stream.send_message(encode_stop(request), max_size=MAX_MESSAGE_SIZE)
                reply = decode_stop(await stream.recv_message(max_size=MAX_MESSAGE_SIZE))
        except (P2PError, TimeoutError, OSError) as exc:
            if stream is None and isinstance(exc, ResourceLimitExceeded):
                # Our limits refused the stop stream (open_protocol_stream reset it).
                log.info("relay: refused a circuit %s -> %s: %s", src, conn.remote_peer, exc)
                return Status.RESOURCE_LIMIT_EXCEEDED
            log.debug("relay: stop request to %s failed: %s", conn.remote_peer, exc or "timeout")
            if stream is not None:
                await stream.reset()
            return Status.CONNECTION_FAILED
        if reply.type != StopType.STATUS or reply.status != Status.OK:
            log.debug("relay: %s declined the circuit: %s", conn.remote_peer, reply.status)
            await stream.reset()
            return Status.CONNECTION_FAILED
        return stream

    # --- forwarding -----------------------------------------------------------------------

    async def _pump(
        self,
        circuit: Circuit,
        reader: MuxedStream,
        writer: MuxedStream,
        from_src: bool,
        idle: asyncio.Timeout | None = None,
    ) -> None:
        limit = self.config.limit_data
        idle_for = self.config.circuit_idle_timeout
        loop = asyncio.get_running_loop()
        size = self.config.buffer_size
        key = "src" if from_src else "dst"
        tap = self.tap
        sent = 0
        while True:
            chunk = await reader.read(size if not limit else min(size, limit - sent + 1))
            if idle is not None:
                idle.reschedule(loop.time() + idle_for)  # traffic: not idle
            if not chunk:
                await writer.close_write()
                return
            if limit and sent + len(chunk) > limit:
                allowed = limit - sent
                if allowed:
                    if tap is not None:
                        tap(circuit, from_src, chunk[:allowed])
                    await writer.write(chunk[:allowed])
                    circuit.forwarded[key] += allowed
                side = "source" if from_src else "target"
                raise _LimitHit(f"data limit of {limit} bytes reached from the {side}")
            if tap is not None:
                tap(circuit, from_src, chunk)
            await writer.write(chunk)
            sent += len(chunk)
            circuit.forwarded[key] += len(chunk)

    async def _bridge(self, circuit: Circuit, src: MuxedStream, dst: MuxedStream) -> None:
        self.circuits.add(circuit)
        if self.metrics is not None:
            self.metrics.circuit_opened()
        for s in (src, dst):  # backpressure from the slower leg reaches the sender
            s.limit_buffering(self.config.circuit_window)
        idle_for = self.config.circuit_idle_timeout
        loop = asyncio.get_running_loop()
        idle = asyncio.timeout_at(loop.time() + idle_for if idle_for else None)
        pumps = [
            asyncio.ensure_future(self._pump(circuit, src, dst, True, idle if idle_for else None)),
            asyncio.ensure_future(self._pump(circuit, dst, src, False, idle if idle_for else None)),
        ]
        duration = self.config.limit_duration or None
        status, reason = Status.OK, "both sides closed"
        try:
            async with asyncio.timeout(duration), idle:
                await asyncio.gather(*pumps)
        except TimeoutError:
            if idle.expired():
                status, reason = Status.CONNECTION_FAILED, f"idle for {idle_for}s"
            else:
                status, reason = Status.RESOURCE_LIMIT_EXCEEDED, f"duration limit of {duration}s"
        except _LimitHit as exc:
            status, reason = Status.RESOURCE_LIMIT_EXCEEDED, str(exc)
        except P2PError as exc:
            status, reason = Status.CONNECTION_FAILED, f"a side went away: {exc}"
        except asyncio.CancelledError:
            status, reason = Status.CONNECTION_FAILED, "the relay is shutting down"
        finally:
            for p in pumps:
                p.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            circuit.end_status, circuit.end_reason = status, reason
            self.circuits.discard(circuit)
            self.history.append(circuit)
            if self.metrics is not None:
                loop_now = asyncio.get_running_loop().time()
                forwarded = sum(circuit.forwarded.values())
                self.metrics.circuit_closed(loop_now - circuit.started, forwarded)
            for s in (src, dst):
                with contextlib.suppress(P2PError, OSError):
                    await (s.close() if status == Status.OK else s.reset())
        log.info("relay: circuit %s -> %s ended: %s", circuit.src, circuit.dst, reason)
