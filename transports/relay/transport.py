"""The client side of circuit relay v2: the relay transport and the stop protocol.

:class:`RelayTransport` is a :class:`~switchy.stack.transport.Transport` and a
:class:`~switchy.stack.node.ProtocolService`: put it in a node's ``services`` (it adds
itself to the node's transports) and the node can

* dial ``/…/p2p/<relay>/p2p-circuit/p2p/<target>``: a hop ``CONNECT`` through
  the relay; the hop stream becomes a raw :class:`RelayedConnection`;
* listen on ``/…/p2p/<relay>/p2p-circuit``: a hop ``RESERVE``, renewed before
  it expires; relayed connections arrive as stop streams and become raw
  connections too.  When the relay goes away the listener reserves on the
  next configured relay; several listeners keep reservations on several relays.

Either way the node's upgrader then runs Noise and yamux end to end over the
relayed bytes, like over TCP.  Relayed connections are marked
``is_limited``: the relay may cut them (data and duration limits), and the
node prefers any direct connection to the same peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

import attrs
from multiaddr import Multiaddr

from switchy.stack.addresses import parse_multiaddr, split_peer
from switchy.stack.config import NetworkConfig
from switchy.stack.errors import (
    ConnectionClosed,
    ConnectionFailed,
    InvalidConfiguration,
    InvalidPeerId,
    P2PError,
    P2PTimeout,
    ProtocolError,
    RelayRefused,
    StreamReset,
    UnsupportedAddress,
)
from switchy.stack.identity import KeyPair, PeerId
from switchy.stack.node import ConnectionEvent, Node, ProtocolService
from switchy.stack.stream import Connection
from switchy.stack.transport import ConnectionHandler, Listener, Transport
from switchy.transports.relay.config import CIRCUIT_WINDOW, RelayClientConfig
from switchy.transports.relay.pb import (
    HOP_PROTOCOL,
    MAX_MESSAGE_SIZE,
    STOP_PROTOCOL,
    HopMessage,
    HopType,
    Limit,
    Peer,
    Status,
    StopMessage,
    StopType,
    decode_hop,
    decode_stop,
    encode_hop,
    encode_stop,
    status_name,
)
from switchy.transports.relay.voucher import open_voucher

if TYPE_CHECKING:
    from switchy.stack.mux import MuxedConnection
    from switchy.stack.stream import MuxedStream

__all__ = [
    "CIRCUIT",
    "ActiveReservation",
    "RelayListener",
    "RelayTransport",
    "RelayedConnection",
    "parse_circuit",
]

log = logging.getLogger(__name__)

#: The multiaddr component marking a relayed hop.
CIRCUIT: Final = "p2p-circuit"
_CIRCUIT_MA: Final = Multiaddr("/" + CIRCUIT)
#: The connection manager tag protecting connections to relays we hold a reservation on.
RESERVATION_TAG: Final = "relay-reservation"
#: Shortest pause between two reservation attempts on a relay (its expiry is in whole seconds).
MIN_RENEW_INTERVAL: Final = 1.0


def parse_circuit(addr: Multiaddr) -> tuple[Multiaddr, PeerId, PeerId | None] | None:
    """Split ``<relay addr>/p2p/<relay>/p2p-circuit[/p2p/<target>]``.

    Returns ``(relay address with its /p2p, relay id, target id or None)``, or
    ``None`` when ``addr`` is not a circuit address with exactly one relay hop
    and a known relay.
    """
    try:
        parts = addr.split()
    except Exception:
        return None
    idx = [i for i, p in enumerate(parts) if p.protocols()[0].name == CIRCUIT]
    if len(idx) != 1 or idx[0] == 0:
        return None
    i = idx[0]
    try:
        relay_addr = Multiaddr.join(*parts[:i])
        _, relay = split_peer(relay_addr)
        if relay is None:
            return None
        after = parts[i + 1 :]
        if not after:
            return relay_addr, relay, None
        if len(after) != 1:
            return None
        _, target = split_peer(after[0])
    except InvalidPeerId:
        return None
    if target is None:
        return None
    return relay_addr, relay, target


class RelayedConnection(Connection):
    """A raw connection carried by a relay: one hop or stop stream, bytes as they are.

    Marked ``is_limited``.  When the stream is reset, reads and writes raise
    :class:`StreamReset` naming the cause (the relay went away, or cut the
    circuit at its data or duration limit); :attr:`close_reason` keeps it.
    """

    is_limited = True

    def __init__(
        self,
        stream: MuxedStream,
        *,
        relay: PeerId,
        relay_addr: Multiaddr,
        remote: PeerId,
        limit: Limit | None,
        opened_at: float | None = None,
        window: int = CIRCUIT_WINDOW,
    ) -> None:
        self.stream = stream
        stream.limit_buffering(window)
        #: The relay carrying this connection.
        self.relay = relay
        #: The limits the relay announced (``None``: none).
        self.limit = limit
        #: The peer at the far end, as the relay announced it (Noise authenticates it).
        self.announced_peer = remote
        circuit = relay_addr.encapsulate(_CIRCUIT_MA)
        self.local_addr = circuit
        self.remote_addr = circuit
        self.bytes_sent = 0
        self.bytes_received = 0
        # bytes handed to write(), including a write still waiting when the relay cut in:
        # the relay counts what reached it, which can be more than the writes that returned
        self._offered = 0
        #: Loop time at which the circuit was requested: not after the relay started it,
        #: so the duration limit is recognised when the relay applies it.
        self.opened_at = asyncio.get_running_loop().time() if opened_at is None else opened_at
        #: Why the connection ended abnormally (``None`` while open or after a clean close).
        self.close_reason: str | None = None
        self._closed = asyncio.Event()
        #: Called with this connection once when it closes or resets.
        self.on_close: Callable[[RelayedConnection], object] | None = None

    def _mark_closed(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            if self.on_close is not None:
                self.on_close(self)

    def _explain(self, exc: P2PError) -> StreamReset:
        relay = self.relay
        limit = self.limit
        if self.stream.muxed_conn.is_closed:
            reason = f"relay {relay} went away (its connection closed: {exc})"
        elif limit and limit.data and max(self._offered, self.bytes_received) >= limit.data:
            reason = (
                f"relay {relay} cut the circuit at its data limit of {limit.data} bytes "
                f"per direction ({status_name(Status.RESOURCE_LIMIT_EXCEEDED)})"
            )
        elif (
            limit
            and limit.duration
            and asyncio.get_running_loop().time() - self.opened_at >= limit.duration
        ):
            reason = (
                f"relay {relay} cut the circuit at its duration limit of {limit.duration}s "
                f"({status_name(Status.RESOURCE_LIMIT_EXCEEDED)})"
            )
        else:
            reason = f"relay {relay} reset the relayed connection: {exc}"
        if self.close_reason is None:
            self.close_reason = reason
        self._mark_closed()
        return StreamReset(self.close_reason)

    async def read(self, max_bytes: int = -1) -> bytes:
        """Read relayed bytes; a reset raises :class:`StreamReset` naming its cause."""
        try:
            data = await self.stream.read(max_bytes)
        except StreamReset as exc:
            raise self._explain(exc) from None
        self.bytes_received += len(data)
        return data

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        """Write bytes to be relayed; a reset raises :class:`StreamReset` naming its cause."""
        self._offered += len(data)
        try:
            await self.stream.write(data)
        except StreamReset as exc:
            raise self._explain(exc) from None
        self.bytes_sent += len(data)

    def try_write_nowait(self, data: bytes | bytearray | memoryview) -> bool:
        if self.stream.try_write_nowait(data):
            self._offered += len(data)
            self.bytes_sent += len(data)
            return True
        return False

    def _unread(self, data: bytes) -> bool:
        if self.stream._unread(data):
            self.bytes_received -= len(data)
            return True
        return False

    async def close_write(self) -> None:
        """Half-close: the relay passes the end of stream on."""
        await self.stream.close_write()

    async def reset(self) -> None:
        """Reset the underlying stream: the relay cuts the circuit at both ends."""
        self._mark_closed()
        await self.stream.reset()

    async def close(self) -> None:
        """Close the underlying stream gracefully."""
        self._mark_closed()
        await self.stream.close()

    @property
    def is_closed(self) -> bool:
        """Whether the connection was closed or reset."""
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        """Wait until the connection is closed or reset."""
        await self._closed.wait()

    def __repr__(self) -> str:
        return f"<RelayedConnection via {self.relay.fmt_short()} to {self.announced_peer}>"


@attrs.define
class ActiveReservation:
    """A reservation we hold on a relay."""

    relay: PeerId
    #: Our circuit addresses through this relay (``…/p2p/<relay>/p2p-circuit``).
    addrs: list[Multiaddr]
    #: When the reservation ends, on the loop clock.
    expires: float
    limit: Limit | None
    voucher: bytes | None


class RelayListener(Listener):
    """Holds one reservation, on the first relay of ``candidates`` that grants it.

    Renews it before it expires; if the relay goes away or refuses, reserves
    on the next candidate (round robin, pausing ``retry_interval`` after a
    round without success).
    """

    def __init__(
        self, transport: RelayTransport, candidates: list[Multiaddr], handler: ConnectionHandler
    ) -> None:
        self.transport = transport
        self.candidates = candidates
        self.handler = handler
        #: The reservation held now (``None`` between relays).
        self.reservation: ActiveReservation | None = None
        #: Reservations made so far (first ones and renewals), for inspection.
        self.reservations_made = 0
        self._index = 0
        self._lost = asyncio.Event()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def addrs(self) -> list[Multiaddr]:
        """Our circuit addresses through the current relay (none between relays)."""
        r = self.reservation
        return list(r.addrs) if r is not None else []

    @property
    def relay(self) -> PeerId | None:
        """The relay of the current reservation."""
        return self.reservation.relay if self.reservation is not None else None

    async def start(self) -> None:
        """Reserve on the first candidate that accepts; raise if none does."""
        ok, errors = await self._reserve_round(start=0)
        if not ok:
            raise ConnectionFailed("no relay granted a reservation: " + "; ".join(errors))
        self._task = asyncio.ensure_future(self._maintain())

    async def _reserve_round(self, start: int) -> tuple[bool, list[str]]:
        errors: list[str] = []
        n = len(self.candidates)
        for k in range(n):
            i = (start + k) % n
            try:
                reservation = await self.transport.reserve(self.candidates[i])
            except (P2PError, OSError) as exc:
                errors.append(f"{self.candidates[i]}: {exc}")
                continue
            self._set_reservation(reservation)
            self._index = i
            self.reservations_made += 1
            self._notify()
            self._lost.clear()
            return True, errors
        return False, errors

    def _set_reservation(self, reservation: ActiveReservation | None) -> None:
        """Hold ``reservation`` (``None``: none) instead of the current one; the relays'
        connection protection follows (the old relay's is dropped when no listener
        holds a reservation on it any more).  A reservation not renewed by its expiry is
        dropped then, even while a renewal is still under way."""
        old, self.reservation = self.reservation, reservation
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if old is not None and (reservation is None or reservation.relay != old.relay):
            self.transport._protect_relay(old.relay)
        if reservation is not None:
            self.transport._protect_relay(reservation.relay)
            if not self._closed:
                loop = asyncio.get_running_loop()
                self._expiry = loop.call_at(reservation.expires, self._expired, reservation)

    def _expired(self, reservation: ActiveReservation) -> None:
        if self.reservation is reservation:
            log.info("reservation on relay %s expired before it was renewed", reservation.relay)
            self._set_reservation(None)
            self.transport._addresses_changed()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        self.transport._addresses_changed()

    async def wait_reservation(self, relay: PeerId | None = None) -> ActiveReservation:
        """Wait until a reservation is held (on ``relay`` if given) and return it."""
        while True:
            r = self.reservation
            if r is not None and (relay is None or r.relay == relay):
                return r
            await self._changed.wait()

    def relay_lost(self, peer: PeerId) -> None:
        """Called when our connection to ``peer`` is gone."""
        if self.reservation is not None and self.reservation.relay == peer:
            log.info("relay %s went away; reserving elsewhere", peer)
            self._set_reservation(None)
            self._lost.set()
            self.transport._addresses_changed()

    async def _maintain(self) -> None:
        loop = asyncio.get_running_loop()
        cfg = self.transport.config
        while not self._closed:
            r = self.reservation
            if r is not None:
                remaining = r.expires - loop.time()
                renew_in = max(MIN_RENEW_INTERVAL, remaining * cfg.renew_fraction)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(renew_in):
                        await self._lost.wait()
                # Renew on the same relay; after a loss, go to the next one.
                start = self._index + 1 if self._lost.is_set() else self._index
            else:
                start = self._index + 1
            ok, errors = await self._reserve_round(start)
            if not ok:
                if self.reservation is not None:
                    self._set_reservation(None)
                    self.transport._addresses_changed()
                log.warning("no relay granted a reservation: %s", "; ".join(errors))
                await asyncio.sleep(cfg.retry_interval)

    async def close(self) -> None:
        """Stop renewing; the reservation lapses at its expiry."""
        self._closed = True
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self.reservation is not None:  # a closed listener protects nothing
            self.transport._protect_relay(self.reservation.relay)
        if self._task is not None:
            self._task.cancel()
            # wait() never raises the task's CancelledError, so a cancellation of our
            # caller is not swallowed here
            await asyncio.wait([self._task])
        self.transport._listeners.discard(self)


class RelayTransport(Transport, ProtocolService):
    """Dials and listens through circuit relays (see the module docstring).

    ``relays``: relay addresses (each ending in ``/p2p/<relay>``) a listener
    falls back to when its relay goes away; listening on the bare
    ``/p2p-circuit`` reserves on the first of them that accepts.
    """

    service_name = "relay-client"
    service_protocols = (STOP_PROTOCOL,)

    name = "relay"
    limited = True

    def __init__(
        self,
        relays: Sequence[str | Multiaddr] = (),
        *,
        config: RelayClientConfig | None = None,
    ) -> None:
        self.config = config or RelayClientConfig()
        self.relays = [parse_multiaddr(a) for a in relays]
        for a in self.relays:
            if split_peer(a)[1] is None:
                raise InvalidConfiguration(f"relay address {a} must end with /p2p/<relay id>")
        self.node: Node | None = None
        self._listeners: set[RelayListener] = set()
        self._conns: set[RelayedConnection] = set()
        self._unix_offset: float | None = None

    # --- wiring -------------------------------------------------------------------------

    def attach(self, node: Node) -> None:
        """Serve the stop protocol on ``node`` and join its transports."""
        self.node = node
        node.handle(STOP_PROTOCOL, self._handle_stop)
        node.on_connection_event(self._on_event)
        if self not in node.transports:
            node.transports.append(self)
            self.bind(node.key, node.config)

    def bind(self, key: KeyPair, config: NetworkConfig) -> None:
        """Nothing to keep: the relay transport uses the node's connections."""

    async def stop(self) -> None:
        """Reset every relayed connection (the node is closing)."""
        for conn in list(self._conns):
            with contextlib.suppress(P2PError, OSError):
                await conn.reset()

    def _node(self) -> Node:
        if self.node is None:
            raise InvalidConfiguration("the relay transport must be in a node's services")
        return self.node

    def _on_event(self, event: ConnectionEvent) -> None:
        if event.kind != "disconnected" or self.node is None:
            return
        if any(not c.is_limited for c in self.node.connections(event.peer)):
            return
        for listener in list(self._listeners):
            listener.relay_lost(event.peer)

    def _protect_relay(self, relay: PeerId) -> None:
        """Protect the connection to ``relay`` from the connection manager while an open
        listener holds a reservation on it, and only then."""
        node = self.node
        if node is None:
            return
        if any(
            not lst._closed and lst.reservation is not None and lst.reservation.relay == relay
            for lst in self._listeners
        ):
            node.connmgr.protect(relay, RESERVATION_TAG)
        else:
            node.connmgr.unprotect(relay, RESERVATION_TAG)

    def _addresses_changed(self) -> None:
        """A listener's circuit addresses changed: the node re-announces."""
        if self.node is not None and not self.node.is_closed:
            self.node.addresses.check()

    def _track(self, conn: RelayedConnection) -> None:
        self._conns.add(conn)
        conn.on_close = self._conns.discard

    @property
    def connections(self) -> list[RelayedConnection]:
        """Relayed raw connections open now (dialed and accepted)."""
        return list(self._conns)

    def _unix_now(self) -> float:
        loop = asyncio.get_running_loop()
        if self._unix_offset is None:
            self._unix_offset = time.time() - loop.time()
        return loop.time() + self._unix_offset

    @property
    def listeners(self) -> list[RelayListener]:
        """Active relay listeners."""
        return list(self._listeners)

    # --- Transport ----------------------------------------------------------------------

    def can_dial(self, addr: Multiaddr) -> bool:
        """Whether ``addr`` is ``…/p2p/<relay>/p2p-circuit[/p2p/<peer>]``."""
        return parse_circuit(addr) is not None

    def can_listen(self, addr: Multiaddr) -> bool:
        """``…/p2p/<relay>/p2p-circuit``, or ``/p2p-circuit`` with configured relays."""
        if addr == _CIRCUIT_MA:
            return bool(self.relays)
        parsed = parse_circuit(addr)
        return parsed is not None and parsed[2] is None

    async def _relay_conn(self, relay_addr: Multiaddr, relay: PeerId) -> MuxedConnection:
        conn = await self._node().connect(relay_addr)
        if conn.is_limited:
            raise ConnectionFailed(f"will not use relay {relay} over a relayed connection")
        return conn

    async def _hop(
        self, conn: MuxedConnection, request: HopMessage
    ) -> tuple[MuxedStream, HopMessage]:
        stream = await self._node().open_protocol_stream(conn, HOP_PROTOCOL)
        try:
            async with asyncio.timeout(self.config.handshake_timeout):
                await stream.send_message(encode_hop(request), max_size=MAX_MESSAGE_SIZE)
                reply = decode_hop(await stream.recv_message(max_size=MAX_MESSAGE_SIZE))
        except TimeoutError:
            await stream.reset()
            raise P2PTimeout(
                f"relay {conn.remote_peer} did not answer within {self.config.handshake_timeout}s"
            ) from None
        except BaseException:
            await stream.reset()
            raise
        if reply.type != HopType.STATUS:
            await stream.reset()
            raise ProtocolError(f"relay {conn.remote_peer} answered with a {reply.type.name}")
        return stream, reply

    async def dial(
        self, addr: Multiaddr, *, remote_peer: PeerId | None = None
    ) -> Connection | MuxedConnection:
        """Connect to a peer through the relay named in ``addr``."""
        parsed = parse_circuit(addr)
        if parsed is None:
            raise UnsupportedAddress(f"the relay transport cannot dial {addr}")
        relay_addr, relay, target = parsed
        target = target or remote_peer
        if target is None:
            raise UnsupportedAddress(f"{addr} names no target peer (…/p2p-circuit/p2p/<id>)")
        if remote_peer is not None and remote_peer != target:
            raise ConnectionFailed(f"{addr} names {target}, not the expected {remote_peer}")
        conn = await self._relay_conn(relay_addr, relay)
        requested = asyncio.get_running_loop().time()
        stream, reply = await self._hop(conn, HopMessage(HopType.CONNECT, peer=Peer(target)))
        if reply.status != Status.OK:
            await stream.reset()
            raise RelayRefused(
                f"relay {relay} refused to connect us to {target}: {status_name(reply.status)}",
                int(reply.status or 0),
            )
        raw = RelayedConnection(
            stream,
            relay=relay,
            relay_addr=relay_addr,
            remote=target,
            limit=reply.limit,
            opened_at=requested,
            window=self.config.circuit_window,
        )
        self._track(raw)
        return raw

    async def reserve(self, relay_addr: Multiaddr) -> ActiveReservation:
        """Make (or renew) a reservation on the relay at ``relay_addr`` (ending in /p2p/<id>)."""
        _, relay = split_peer(relay_addr)
        if relay is None:
            raise UnsupportedAddress(f"relay address {relay_addr} must end with /p2p/<relay id>")
        conn = await self._relay_conn(relay_addr, relay)
        stream, reply = await self._hop(conn, HopMessage(HopType.RESERVE))
        with contextlib.suppress(P2PError, OSError):
            await stream.close()
        if reply.status != Status.OK:
            raise RelayRefused(
                f"relay {relay} refused the reservation: {status_name(reply.status)}",
                int(reply.status or 0),
            )
        r = reply.reservation
        if r is None:
            raise ProtocolError(f"relay {relay} accepted a reservation but sent none")
        voucher = r.voucher
        if voucher is not None:
            try:
                open_voucher(voucher, relay)
            except P2PError as exc:  # advisory: keep the reservation, drop the voucher
                log.debug("relay %s sent an invalid voucher: %s", relay, exc)
                voucher = None
        loop = asyncio.get_running_loop()
        expires = loop.time() + max(0.0, r.expire - self._unix_now())
        dialed = conn.remote_addr.encapsulate(Multiaddr(f"/p2p/{relay}"))
        seen: list[Multiaddr] = []
        for a in [dialed, relay_addr, *r.addrs]:
            if split_peer(a)[1] == relay and a not in seen:
                seen.append(a)
        addrs = [a.encapsulate(_CIRCUIT_MA) for a in seen]
        log.info(
            "reservation with relay %s for %.0f s: reachable at %s",
            relay,
            expires - loop.time(),
            ", ".join(map(str, addrs)),
        )
        return ActiveReservation(relay, addrs, expires, reply.limit, voucher)

    async def listen(self, addr: Multiaddr, handler: ConnectionHandler) -> Listener:
        """Reserve on the relay in ``addr`` (or a configured one for ``/p2p-circuit``)."""
        self._node()
        candidates: list[Multiaddr] = []
        if addr != _CIRCUIT_MA:
            parsed = parse_circuit(addr)
            if parsed is None or parsed[2] is not None:
                raise UnsupportedAddress(f"the relay transport cannot listen on {addr}")
            candidates.append(parsed[0])
        elif not self.relays:
            raise UnsupportedAddress("listening on /p2p-circuit needs configured relays")
        taken = {lst.relay for lst in self._listeners}
        first = {split_peer(c)[1] for c in candidates}
        for r in self.relays:
            peer = split_peer(r)[1]
            if peer not in first and peer not in taken:
                candidates.append(r)
                first.add(peer)
        listener = RelayListener(self, candidates, handler)
        self._listeners.add(listener)  # before reserving: a CONNECT may follow at once
        try:
            await listener.start()
        except BaseException:
            self._listeners.discard(listener)
            raise
        return listener

    # --- stop protocol (we are the target) ----------------------------------------------

    def _listener_for(self, relay: PeerId) -> RelayListener | None:
        best = None
        for lst in self._listeners:
            if lst.relay == relay:
                return lst
            best = best or lst
        return best

    async def _stop_reply(self, stream: MuxedStream, status: Status) -> None:
        msg = encode_stop(StopMessage(StopType.STATUS, status=status))
        await stream.send_message(msg, max_size=MAX_MESSAGE_SIZE)

    async def _handle_stop(self, stream: MuxedStream) -> None:
        relay = stream.remote_peer
        try:
            async with asyncio.timeout(self.config.handshake_timeout):
                data = await stream.recv_message(max_size=MAX_MESSAGE_SIZE)
            requested = asyncio.get_running_loop().time()
            msg = decode_stop(data)
        except ProtocolError as exc:
            log.debug("malformed stop message from %s: %s", relay, exc)
            await self._stop_reply(stream, Status.MALFORMED_MESSAGE)
            return
        except TimeoutError:
            await stream.reset()
            return
        if msg.type != StopType.CONNECT:
            await self._stop_reply(stream, Status.UNEXPECTED_MESSAGE)
            return
        if msg.peer is None:
            await self._stop_reply(stream, Status.MALFORMED_MESSAGE)
            return
        listener = self._listener_for(relay)
        if listener is None or stream.muxed_conn.is_limited:
            await self._stop_reply(stream, Status.CONNECTION_FAILED)
            return
        await self._stop_reply(stream, Status.OK)
        relay_addr = stream.muxed_conn.remote_addr.encapsulate(Multiaddr(f"/p2p/{relay}"))
        conn = RelayedConnection(
            stream,
            relay=relay,
            relay_addr=relay_addr,
            remote=msg.peer.id,
            limit=msg.limit,
            opened_at=requested,
            window=self.config.circuit_window,
        )
        self._track(conn)
        with contextlib.suppress(ConnectionClosed):
            await listener.handler(conn)
            await conn.wait_closed()
