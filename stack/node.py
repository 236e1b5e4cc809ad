"""The node (host): transports, upgrader, connections, streams and protocol handlers together.

A custom stack is one expression::

    Node(key=KeyPair.generate(),
         transports=[TcpTransport()],
         security=[NoiseSecurity()],
         muxers=[Yamux()],
         services=[PingService(), IdentifyService()])

The core knows no concrete transport or protocol: a node has exactly the
transports and services it is given (security defaults to Noise and muxing to
yamux, both core parts).  The standard preset (QUIC and TCP, ping, identify,
echo, perf, the relay client) is :func:`switchy.presets.default_node`, above the
core.  Transports that bring their own security and streams (QUIC) hand over
ready multiplexed connections and skip the upgrader.  When a peer has addresses
of several transports, they are dialed in the order of ``transports``.

Protocols are reached through their own API, which takes the node: for example
``switchy.protocols.router.request(node, addr, "GET", "/")`` or
``switchy.protocols.discovery.connect_by_name(node, "living-room")``; a
protocol finds the services it was given in :attr:`Node.services`.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Sequence,
)
from functools import partial
from typing import Any, Literal, TypeAlias

import attrs
from multiaddr import Multiaddr

from switchy.stack import __version__
from switchy.stack.addrbook import AddressBook, Reachability
from switchy.stack.addresses import ip_of, parse_multiaddr, split_peer, with_peer
from switchy.stack.config import NetworkConfig
from switchy.stack.connmgr import ConnectionManager
from switchy.stack.errors import (
    ConnectionClosed,
    ConnectionFailed,
    InvalidConfiguration,
    P2PError,
    PeerNotFound,
    ResourceLimitExceeded,
    UnsupportedAddress,
)
from switchy.stack.gater import ConnectionGater
from switchy.stack.identity import Entropy, KeyPair, PeerId
from switchy.stack.limits import ConnectionScope, LimitConfig, ResourceManager
from switchy.stack.metrics import (
    MetricsRegistry,
    SwarmMetrics,
    loop_time,
    measure_clock,
    rcmgr_collector,
)
from switchy.stack.mux import MuxedConnection, StreamMuxer
from switchy.stack.negotiation import (
    confirm_protocol,
    handle_protocol,
    select_protocol,
    select_protocol_lazy,
)
from switchy.stack.peerstore import PeerStore
from switchy.stack.ratelog import RateLimitedLog
from switchy.stack.registry import ProtocolRegistry, StreamHandler
from switchy.stack.security import SecurityTransport
from switchy.stack.stream import Connection, MuxedStream
from switchy.stack.transport import Listener, Transport
from switchy.stack.upgrader import Upgrader

__all__ = ["ConnectionEvent", "Node", "PeerRouter", "ProtocolService"]

log = logging.getLogger(__name__)
#: File descriptors kept free of inbound connections (listeners, files, DNS, dials).
FD_RESERVE = 64
#: Inbound handshakes allowed at once however low the file-descriptor limit.
MIN_PENDING_HANDSHAKES = 8


def fd_budget() -> int:
    """File descriptors inbound connections may use: RLIMIT_NOFILE's soft limit less
    :data:`FD_RESERVE` (very large where there is no limit).  Inbound handshakes in
    progress are held to a quarter of it, so idle sockets that never handshake cannot run
    the process out of descriptors (asyncio's accept loop then spins on EMFILE)."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):
        return 1 << 30
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return 1 << 30
    return max(2 * MIN_PENDING_HANDSHAKES, soft - FD_RESERVE)


#: Refusals a remote can repeat at will (one line per kind per interval).
_refusals = RateLimitedLog(log)

#: Default agent version sent by identify.
AGENT_VERSION = f"switchy-p2p/{__version__}"


class ProtocolService(abc.ABC):
    """A protocol plugged into a node: registers its handlers and reacts to events.

    A service names itself and the protocols it serves or speaks: every stream, inbound
    or outbound, negotiated to one of :attr:`service_protocols` is charged to the
    resource scope ``service:<service_name>`` besides its protocol's (limits such as
    ``service:kad.streams=64``; ``node.limits.usage()`` shows its use).  A service
    without a name (the default) has no scope of its own.
    """

    #: The name of the service's resource scope (``service:<name>``); empty: none.
    service_name: str = ""
    #: The protocol ids whose streams belong to this service (in either direction).
    service_protocols: tuple[str, ...] = ()

    @abc.abstractmethod
    def attach(self, node: Node) -> None:
        """Register handlers on ``node`` (called once, before the node starts)."""

    async def start(self) -> None:  # noqa: B027
        """Begin work when the node starts, after it listens (default: nothing)."""

    async def stop(self) -> None:  # noqa: B027
        """Release resources when the node closes (default: nothing)."""


class PeerRouter(abc.ABC):
    """Finds addresses of a peer the node knows none of (a DHT, for example).

    A service registers itself with :meth:`Node.add_peer_router`; :meth:`Node.connect`
    asks the routers, in the order they were added, when it is given a peer id
    without known addresses.
    """

    @abc.abstractmethod
    async def find_peer(self, peer: PeerId) -> list[Multiaddr]:
        """Addresses of ``peer``; raise :class:`~switchy.stack.errors.P2PError` (usually
        :class:`~switchy.stack.errors.PeerNotFound`) when it cannot find any."""


@attrs.frozen
class ConnectionEvent:
    """A connection to a peer was opened or closed."""

    kind: Literal["connected", "disconnected"]
    peer: PeerId
    connection: MuxedConnection


ConnectionCallback = Callable[[ConnectionEvent], Any]
Target: TypeAlias = PeerId | Multiaddr | str


class Node:
    """A peer: listens, dials, multiplexes streams and serves protocols.

    Use as an async context manager (``async with Node(...) as node``) or call
    :meth:`start` and :meth:`close`.  The node has exactly the ``transports`` and
    ``services`` it is given (none by default; a service such as the relay client
    may join the transports); ``security`` defaults to Noise and ``muxers`` to
    yamux.  :func:`switchy.default_node` is the everyday preset.

    Streams are :class:`~switchy.stack.stream.MuxedStream` objects (``read``,
    ``write``, ``close_write``, ``close``, ``reset``; ``protocol``, ``remote_peer``).
    Every error is a :class:`~switchy.stack.errors.P2PError`; the ones a node's
    methods raise are named on each method.

    Raises :class:`~switchy.stack.errors.InvalidConfiguration` when it ends up with
    no transport.
    """

    def __init__(
        self,
        *,
        key: KeyPair | None = None,
        transports: Sequence[Transport] = (),
        security: Sequence[SecurityTransport] | None = None,
        muxers: Sequence[StreamMuxer] | None = None,
        services: Iterable[ProtocolService] = (),
        handlers: dict[str, StreamHandler] | None = None,
        config: NetworkConfig | None = None,
        listen: Iterable[str | Multiaddr] = (),
        entropy: Entropy | None = None,
        agent_version: str = AGENT_VERSION,
        limits: ResourceManager | LimitConfig | None = None,
        gater: ConnectionGater | None = None,
        connmgr: ConnectionManager | None = None,
    ) -> None:
        self.config = config or NetworkConfig()
        self.entropy = entropy
        self.key = key or KeyPair.generate(entropy)
        self.peer_id = self.key.peer_id
        self.agent_version = agent_version
        if security is None:
            from switchy.stack.security.noise import NoiseSecurity

            security = [NoiseSecurity(self.config, entropy=entropy)]
        if muxers is None:
            from switchy.stack.mux.yamux import Yamux

            muxers = [Yamux()]
        self.transports = list(transports)
        self.upgrader = Upgrader(self.key, security, muxers, self.config)
        self.registry: ProtocolRegistry[StreamHandler] = ProtocolRegistry()
        # connected peers' records are never forgotten (the store is bounded: MAX_PEERS)
        self.peerstore = PeerStore(keep=lambda peer: peer in self._connections)
        #: The node's metrics (``libp2p_swarm_*`` here; protocols register theirs);
        #: :func:`switchy.monitoring.serve_metrics` exports them for Prometheus.
        self.metrics = MetricsRegistry()
        self._swarm_metrics = SwarmMetrics(self.metrics)
        self.services = list(services)
        self._service_of = _services_by_protocol(self.services)
        self._listen_on = [parse_multiaddr(a) for a in listen]
        self._listeners: list[Listener] = []
        self._connections: dict[PeerId, list[MuxedConnection]] = {}
        self._dialing: dict[PeerId, asyncio.Task[MuxedConnection]] = {}
        self._inbound_roles: dict[bytes, PeerId] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._callbacks: list[ConnectionCallback] = []
        self._protocol_callbacks: list[Callable[[], Any]] = []
        self._peer_routers: list[PeerRouter] = []
        self._subscribers: list[asyncio.Queue[ConnectionEvent | None]] = []
        self._started = False
        self._closing = False
        self._pending_inbound = 0  # inbound connections being upgraded (_on_inbound)
        #: The same, by per-IP key, oldest first (the eviction under an idle-socket flood).
        self._pending_by_ip: dict[str | None, dict[Connection | MuxedConnection, None]] = {}
        self._closed = asyncio.Event()
        self._init_limits(limits, gater, connmgr)
        #: Our own addresses: observed, confirmed, announced; and our reachability.
        self.addresses = AddressBook(lambda: self.listen_addrs, spawn=self._spawn_callback)
        for t in self.transports:
            t.bind(self.key, self.config)
        for proto, handler in (handlers or {}).items():
            self.handle(proto, handler)
        for service in self.services:
            service.attach(self)
        if not self.transports:  # a service may have joined them (the relay client does)
            raise InvalidConfiguration(
                "a node needs at least one transport: pass transports=[...] "
                "(switchy.default_node() gives QUIC and TCP)"
            )

    # --- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Start listening on the addresses given at construction, then start the services.

        Raises what :meth:`listen` raises.
        """
        if self._started:
            return
        self._started = True
        if self._listen_on:
            await self.listen(*self._listen_on)
        for service in self.services:
            await service.start()
        self.connmgr.start()

    async def close(self) -> None:
        """Close gracefully: stop listening, let in-flight handlers finish, close connections.

        Handlers still running after ``config.close_timeout`` are cancelled and
        their streams reset.
        """
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self.connmgr.stop()
        for listener in self._listeners:
            with contextlib.suppress(Exception):
                await listener.close()
        self._listeners.clear()
        for service in self.services:
            with contextlib.suppress(Exception):
                await service.stop()
        for dial in list(self._dialing.values()):
            dial.cancel()
        handlers = {t for t in self._tasks if t.get_name().startswith("switchy-handler")}
        if handlers:
            await asyncio.wait(handlers, timeout=self.config.close_timeout)
        conns = [c for cs in self._connections.values() for c in cs]
        if conns:
            closing = [asyncio.ensure_future(c.close()) for c in conns]
            _, pending = await asyncio.wait(closing, timeout=self.config.close_timeout)
            for p in pending:
                p.cancel()
            for c in conns:
                if not c.is_closed:
                    with contextlib.suppress(Exception):
                        await c.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.config.close_timeout)
        for t in self.transports:
            with contextlib.suppress(Exception):
                await t.shutdown()
        for q in self._subscribers:
            q.put_nowait(None)
        self._closed.set()

    @property
    def is_closed(self) -> bool:
        """Whether :meth:`close` has begun."""
        return self._closing

    # --- listening ----------------------------------------------------------------------

    async def listen(self, *addrs: str | Multiaddr) -> list[Multiaddr]:
        """Listen on each address with the first transport that accepts it.

        Returns the concrete addresses (port 0 resolved), without ``/p2p``; append
        ``/p2p/<peer id>`` (see :attr:`full_addrs`) for what others dial.  Raises
        :class:`~switchy.stack.errors.UnsupportedAddress` when no transport takes an
        address, :class:`~switchy.stack.errors.InvalidConfiguration` for a malformed
        one, and :class:`OSError` when the system refuses it (e.g. the port is in use).
        """
        result: list[Multiaddr] = []
        try:
            for raw in addrs:
                listener = await self.open_listener(raw)
                result.extend(listener.addrs)
        finally:
            self.addresses.check()
        self._started = True
        return result

    async def open_listener(self, addr: str | Multiaddr) -> Listener:
        """Listen on ``addr`` with the first transport that accepts it; return the listener
        (close it with :meth:`remove_listener`).  Raises what :meth:`listen` raises."""
        addr = parse_multiaddr(addr)
        transport = next((t for t in self.transports if t.can_listen(addr)), None)
        if transport is None:
            raise UnsupportedAddress(
                f"no configured transport can listen on {addr} "
                f"(transports: {', '.join(t.name for t in self.transports)})"
            )
        listener = await transport.listen(addr, self._on_inbound)
        self._listeners.append(listener)
        for bound in listener.addrs:
            log.info("listening on %s/p2p/%s (%s)", bound, self.peer_id, transport.name)
        self.addresses.check()
        return listener

    async def remove_listener(self, listener: Listener) -> None:
        """Stop listening with ``listener`` (one of :attr:`listeners`)."""
        if listener in self._listeners:
            self._listeners.remove(listener)
        with contextlib.suppress(Exception):
            await listener.close()
        self.addresses.check()

    @property
    def listeners(self) -> list[Listener]:
        """The listeners open now."""
        return list(self._listeners)

    @property
    def listen_addrs(self) -> list[Multiaddr]:
        """Every address we listen on (without ``/p2p``), wildcards as they were given."""
        return [a for listener in self._listeners for a in listener.addrs]

    @property
    def announced_addrs(self) -> list[Multiaddr]:
        """What we tell others (identify, peer records, discovery), without ``/p2p``:
        the listen addresses with wildcards expanded to interface addresses, then the
        confirmed external addresses (:meth:`AddressBook.announced`)."""
        return self.addresses.announced()

    @property
    def full_addrs(self) -> list[Multiaddr]:
        """Every announced address with ``/p2p/<our id>`` appended: what others dial."""
        return [with_peer(a, self.peer_id) for a in self.announced_addrs]

    @property
    def reachability(self) -> Reachability:
        """Whether others can dial us, as a reachability service (AutoNAT) found; watch it
        with ``node.addresses.on_reachability_changed(callback)``."""
        return self.addresses.reachability

    def report_observed(self, conn: MuxedConnection, observed: Multiaddr) -> bool:
        """Count ``observed``, our address as the peer of ``conn`` saw it (identify calls
        this); returns whether it counted (see :class:`AddressBook`)."""
        remote = conn.remote_addr
        transport = next((t for t in self.transports if t.can_dial(remote)), None)
        group = transport.observer_group(remote) if transport is not None else None
        return self.addresses.observe(
            observed,
            local=conn.local_addr,
            remote=remote,
            group=group,
            limited=conn.is_limited,
            alive=lambda: not conn.is_closed,
        )

    # --- handlers -----------------------------------------------------------------------

    def handle(self, protocol_id: str, handler: StreamHandler) -> None:
        """Serve ``protocol_id`` on inbound streams with ``handler(stream)``.

        The handler gets a :class:`~switchy.stack.stream.MuxedStream` (its ``protocol``
        set); when it returns the stream is closed, when it raises the stream is reset.
        """
        self.registry.register(protocol_id, handler)
        self._protocols_changed()

    def unhandle(self, protocol_id: str) -> None:
        """Stop serving ``protocol_id``."""
        self.registry.unregister(protocol_id)
        self._protocols_changed()

    def on_protocols_changed(self, callback: Callable[[], Any]) -> None:
        """Call ``callback()`` (may return a coroutine) when served protocols change."""
        self._protocol_callbacks.append(callback)

    def _protocols_changed(self) -> None:
        if not self._started or self._closing:
            return
        for cb in self._protocol_callbacks:
            result = cb()
            if isinstance(result, Coroutine):
                self._spawn(result, "switchy-protocols-changed").add_done_callback(_log_failure)

    @property
    def protocols(self) -> list[str]:
        """The application protocol ids this node serves."""
        return self.registry.protocols()

    # --- events -------------------------------------------------------------------------

    def on_connection_event(self, callback: ConnectionCallback) -> None:
        """Call ``callback(event)`` on every connect and disconnect (may return an awaitable)."""
        self._callbacks.append(callback)

    async def events(self) -> AsyncIterator[ConnectionEvent]:
        """Iterate connection events until the node closes."""
        q: asyncio.Queue[ConnectionEvent | None] = asyncio.Queue()
        self._subscribers.append(q)
        try:
            while (event := await q.get()) is not None:
                yield event
        finally:
            self._subscribers.remove(q)

    def _emit(self, event: ConnectionEvent) -> None:
        for q in self._subscribers:
            q.put_nowait(event)
        for cb in self._callbacks:
            try:
                result = cb(event)
                if isinstance(result, Coroutine):
                    if self._closing:
                        result.close()
                    else:
                        task = self._spawn(result, "switchy-event")
                        task.add_done_callback(_log_failure)
            except Exception:
                log.exception("connection event callback failed")

    # --- connections --------------------------------------------------------------------

    def connections(self, peer: PeerId | None = None) -> list[MuxedConnection]:
        """Open connections, to ``peer`` or to everyone."""
        if peer is not None:
            return [c for c in self._connections.get(peer, ()) if not c.is_closed]
        return [c for cs in self._connections.values() for c in cs if not c.is_closed]

    @property
    def connected_peers(self) -> list[PeerId]:
        """Peers with at least one open connection."""
        return [p for p, cs in self._connections.items() if any(not c.is_closed for c in cs)]

    def _best_connection(self, peer: PeerId) -> MuxedConnection | None:
        best: MuxedConnection | None = None
        for c in self._connections.get(peer, ()):
            if c.is_closed:
                continue
            if not c.is_limited:
                return c
            best = best or c
        return best

    async def connect(self, target: Target) -> MuxedConnection:
        """Connect to a peer id (addresses from the peer store) or a multiaddr.

        An open connection to the peer is reused; concurrent calls for one
        peer share a single dial.  Returns a
        :class:`~switchy.stack.mux.MuxedConnection` (``open_stream()`` on it gives a
        raw :class:`~switchy.stack.stream.MuxedStream`, before any protocol).

        Raises :class:`~switchy.stack.errors.PeerNotFound` for a peer id without known
        addresses, :class:`~switchy.stack.errors.UnsupportedAddress` when no transport
        dials the address, :class:`~switchy.stack.errors.ConnectionFailed` when every
        dial failed (its message lists each address and why),
        :class:`~switchy.stack.errors.AuthenticationFailed` when the remote is not the
        peer of ``/p2p/<id>``, :class:`~switchy.stack.errors.P2PTimeout` when a dial
        takes longer than ``config.dial_timeout`` and
        :class:`~switchy.stack.errors.ConnectionClosed` once the node is closed.
        """
        if self._closing:
            raise ConnectionClosed("the node is closed")
        try:
            peer, addrs = self._resolve(target)
        except PeerNotFound:
            if not isinstance(target, PeerId) or not self._peer_routers:
                raise
            await self._route(target)
            peer, addrs = self._resolve(target)
        if peer is None:
            return await self._dial_addrs(None, addrs)
        existing = self._best_connection(peer)
        if existing is not None and (
            not existing.is_limited or isinstance(target, PeerId) or not self._direct(addrs)
        ):
            return existing  # a limited (relayed) one only until a direct address is dialed
        pending = self._dialing.get(peer)
        if pending is None:
            pending = asyncio.ensure_future(self._dial_addrs(peer, addrs))
            self._dialing[peer] = pending
            pending.add_done_callback(partial(_forget_dial, self._dialing, peer))
        return await asyncio.shield(pending)

    def add_peer_router(self, router: PeerRouter) -> None:
        """Ask ``router`` for the addresses of peers :meth:`connect` knows none of."""
        if router not in self._peer_routers:
            self._peer_routers.append(router)

    async def _route(self, peer: PeerId) -> None:
        """Find addresses of ``peer`` with the peer routers; raise :class:`PeerNotFound`
        naming what each said when none found any."""
        errors: list[str] = []
        for router in self._peer_routers:
            try:
                addrs = await router.find_peer(peer)
            except P2PError as exc:
                errors.append(f"{type(router).__name__}: {exc}")
                continue
            if addrs:
                self.peerstore.add_addrs(peer, list(addrs))
                return
            errors.append(f"{type(router).__name__}: no addresses")
        raise PeerNotFound(f"no known addresses for peer {peer} ({'; '.join(errors)})")

    def _resolve(self, target: Target) -> tuple[PeerId | None, list[Multiaddr]]:
        if isinstance(target, PeerId):
            addrs = self.peerstore.addrs(target)
            if not addrs and self._best_connection(target) is None:
                raise PeerNotFound(f"no known addresses for peer {target}")
            return target, addrs
        addr, peer = split_peer(target)
        if peer is not None:
            if not addr.to_bytes():  # a bare /p2p/<id> (str() of a multiaddr is slow)
                return self._resolve(peer)
            self.peerstore.add_addrs(peer, [addr])
        return peer, [addr]

    def _direct(self, addrs: list[Multiaddr]) -> bool:
        """Whether one of ``addrs`` is dialed by a transport of unlimited connections."""
        return any(not t.limited for a in addrs for t in self.transports if t.can_dial(a))

    def _transport_for(self, addr: Multiaddr) -> Transport:
        for t in self.transports:
            if t.can_dial(addr):
                return t
        raise UnsupportedAddress(
            f"no configured transport can dial {addr} "
            f"(transports: {', '.join(t.name for t in self.transports)})"
        )

    def _dial_rank(self, addr: Multiaddr) -> int:
        """Addresses are tried in the order of ``transports`` (the presets put TCP first)."""
        return next(
            (i for i, t in enumerate(self.transports) if t.can_dial(addr)), len(self.transports)
        )

    async def _dial_addrs(self, peer: PeerId | None, addrs: list[Multiaddr]) -> MuxedConnection:
        """Dial ``addrs`` in rank order, staggered: the next address starts when the ones
        before it failed or ``config.dial_stagger`` passed; the first connection wins and
        the other attempts are cancelled (or closed, if they also got through)."""
        ordered = sorted(addrs, key=self._dial_rank)
        errors: list[str] = []
        last: P2PError | None = None
        running: dict[asyncio.Task[MuxedConnection], Multiaddr] = {}
        winner: MuxedConnection | None = None
        stagger = self.config.dial_stagger
        i = 0
        try:
            while winner is None and (i < len(ordered) or running):
                if i < len(ordered):
                    addr = ordered[i]
                    i += 1
                    running[asyncio.ensure_future(self._dial_one(addr, peer))] = addr
                    if i < len(ordered) and stagger == 0:
                        continue
                done, _ = await asyncio.wait(
                    running,
                    timeout=stagger if i < len(ordered) else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for task in done:
                    addr = running.pop(task)
                    exc = task.exception()
                    if exc is None:
                        if winner is None:
                            winner = task.result()
                        else:  # two got through in the same turn: keep the first
                            await task.result().abort()
                    elif isinstance(exc, P2PError):
                        errors.append(f"{addr}: {exc}")
                        last = exc
                    else:
                        raise exc
        finally:
            for task in running:
                task.cancel()
            for task in running:
                with contextlib.suppress(BaseException):
                    late = await task
                    await late.abort()
        if winner is not None:
            self._add_connection(winner)
            return winner
        if len(errors) == 1 and last is not None:
            raise last
        who = str(peer) if peer else "peer"
        raise ConnectionFailed(f"could not connect to {who}: " + "; ".join(errors))

    async def connect_direct(
        self, addr: Multiaddr, peer: PeerId, *, initiator: bool = True
    ) -> MuxedConnection:
        """Dial ``addr`` of ``peer`` now, even with a connection to it open, and add the
        new connection; for hole punching.

        ``initiator=False`` upgrades the raw connection as its responder (Noise
        responder, multistream listener): after a TCP simultaneous open both sides
        dialed, and DCUtR decides that the side which accepted the relayed
        connection is the server.  Transports with their own security (QUIC) ignore
        it.  Raises what :meth:`connect` raises.
        """
        if self._closing:
            raise ConnectionClosed("the node is closed")
        conn = await self._dial_one(addr, peer, initiator=initiator)
        self._add_connection(conn)
        return conn

    @contextlib.contextmanager
    def inbound_as_initiator(self, addrs: Iterable[Multiaddr], peer: PeerId) -> Iterator[None]:
        """While inside, inbound connections from one of ``addrs`` are upgraded as if we
        had dialed them (Noise initiator, multistream dialer), expecting ``peer``.

        For hole punching: the side DCUtR makes the client may see the peer's punch
        arrive at its listener instead of meeting its own dial (its own packet got
        there late), and must still play the client.
        """
        keys = [split_peer(a)[0].to_bytes() for a in addrs]
        for key in keys:
            self._inbound_roles[key] = peer
        try:
            yield
        finally:
            for key in keys:
                if self._inbound_roles.get(key) == peer:
                    del self._inbound_roles[key]

    async def _dial_one(
        self, addr: Multiaddr, peer: PeerId | None, *, initiator: bool = True
    ) -> MuxedConnection:
        """One dial attempt: transport, upgrade, and the expected peer check."""
        transport = self._transport_for(addr)
        clock = measure_clock()
        start = clock()
        try:
            conn = await self._dial_upgrade(transport, addr, peer, initiator=initiator)
        except BaseException as exc:
            self._swarm_metrics.dial_error(transport.name, exc)
            raise
        self._swarm_metrics.handshake.labels(
            *self._swarm_metrics.connection_labels(conn, transport.name)
        ).observe(clock() - start)
        return conn

    async def _dial_upgrade(
        self, transport: Transport, addr: Multiaddr, peer: PeerId | None, *, initiator: bool
    ) -> MuxedConnection:
        scope = self._admit_outbound(addr, peer, limited=transport.limited)
        try:
            raw = await transport.dial(addr, remote_peer=peer)
            if isinstance(raw, MuxedConnection):
                conn = raw
            else:
                try:
                    conn = await (
                        self.upgrader.upgrade_outbound(raw, peer)
                        if initiator
                        else self.upgrader.upgrade_inbound(raw, peer)
                    )
                except BaseException:
                    with contextlib.suppress(Exception):
                        await raw.reset()
                    raise
        except BaseException:
            scope.done()
            raise
        if peer is not None and conn.remote_peer != peer:
            scope.done()
            await conn.abort()
            raise ConnectionFailed(f"remote is {conn.remote_peer}, expected {peer}")
        if not self._admit_peer(conn, scope, "outbound"):
            await conn.abort()
            raise ConnectionFailed(
                f"connection to {conn.remote_peer} refused: {self._last_refusal}"
            )
        return conn

    async def _on_inbound(self, raw: Connection | MuxedConnection) -> None:
        if self._closing:
            await (raw.abort() if isinstance(raw, MuxedConnection) else raw.reset())
            return
        budget = fd_budget()
        if (
            self._pending_inbound >= max(MIN_PENDING_HANDSHAKES, budget // 4)
            or len(self.connections()) + self._pending_inbound >= budget
        ) and not self._evict_pending_for(raw):
            _refusals.warning(
                "fd_budget",
                "refused inbound connection from %s: %s",
                raw.remote_addr,
                ResourceLimitExceeded(
                    f"{self._pending_inbound} handshakes in progress and "
                    f"{len(self.connections())} connections, near the limit of {budget} "
                    "file descriptors (RLIMIT_NOFILE)"
                ),
            )
            await (raw.abort() if isinstance(raw, MuxedConnection) else raw.reset())
            return
        if len(self.connections()) >= self.config.max_connections:
            _refusals.warning(
                "max_connections",
                "refused inbound connection from %s: %s",
                raw.remote_addr,
                ResourceLimitExceeded(f"max_connections={self.config.max_connections} reached"),
            )
            await (raw.abort() if isinstance(raw, MuxedConnection) else raw.reset())
            return
        scope = self._admit_inbound(raw)
        if scope is None:
            await (raw.abort() if isinstance(raw, MuxedConnection) else raw.reset())
            return
        clock = measure_clock()
        start = clock()
        self._pending_inbound += 1
        ip_key = self._limit_key(raw.remote_addr, raw.is_limited)
        self._pending_by_ip.setdefault(ip_key, {})[raw] = None
        try:
            if isinstance(raw, MuxedConnection):
                conn = raw
            elif (
                self._inbound_roles
                and (expected := self._inbound_roles.get(raw.remote_addr.to_bytes())) is not None
            ):
                conn = await self.upgrader.upgrade_outbound(raw, expected)
            else:
                conn = await self.upgrader.upgrade_inbound(raw)
        except P2PError as exc:
            scope.done()
            log.info("refused inbound connection from %s: %s", raw.remote_addr, exc)
            return
        except BaseException:
            scope.done()
            raise
        finally:
            self._pending_done(ip_key, raw)
        if not self._admit_peer(conn, scope, "inbound"):
            await conn.abort()
            return
        self._swarm_metrics.handshake.labels(
            *self._swarm_metrics.connection_labels(conn, self._transport_name(conn))
        ).observe(clock() - start)
        self._add_connection(conn)

    def _pending_done(self, ip_key: str | None, raw: Connection | MuxedConnection) -> None:
        """``raw``'s handshake ended (or it was evicted): it holds no pending slot."""
        pending = self._pending_by_ip.get(ip_key)
        if pending is None or raw not in pending:
            return  # evicted: already counted out
        del pending[raw]
        if not pending:
            del self._pending_by_ip[ip_key]
        self._pending_inbound -= 1

    def _evict_pending_for(self, raw: Connection | MuxedConnection) -> bool:
        """The pending handshakes are at their cap: make room for ``raw`` by hanging up the
        oldest pending handshake of the address holding the most, when that address holds
        more than ``raw``'s own (so a flood of idle sockets from one address cannot lock
        others out, and only delays itself).  Whether room was made."""
        if not self._pending_by_ip:
            return False
        key = self._limit_key(raw.remote_addr, raw.is_limited)
        heaviest = max(self._pending_by_ip, key=lambda k: len(self._pending_by_ip[k]))
        if len(self._pending_by_ip[heaviest]) <= len(self._pending_by_ip.get(key, ())):
            return False
        victim = next(iter(self._pending_by_ip[heaviest]))
        self._pending_done(heaviest, victim)
        _refusals.warning(
            "handshake_evicted",
            "hung up the oldest pending handshake from %s (%s holds %d): room for %s",
            victim.remote_addr,
            heaviest,
            len(self._pending_by_ip.get(heaviest, ())) + 1,
            raw.remote_addr,
        )
        self._spawn(
            victim.abort() if isinstance(victim, MuxedConnection) else victim.reset(),
            "switchy-evict-handshake",
        )
        return True

    def _transport_name(self, conn: MuxedConnection) -> str:
        """The name of the transport ``conn`` runs on (a metrics label)."""
        addr = conn.remote_addr
        return next((t.name for t in self.transports if t.can_dial(addr)), "other")

    def _add_connection(self, conn: MuxedConnection) -> None:
        peer = conn.remote_peer
        self._connections.setdefault(peer, []).append(conn)
        if conn.is_initiator:
            self.peerstore.add_addrs(peer, [conn.remote_addr])
        # Inbound streams start their handler task straight from the muxer's reader
        # (no accept-loop task in between) where the muxer offers it.
        if not conn.serve_streams(self._on_stream, lambda: self._remove_connection(conn)):
            self._spawn(self._accept_loop(conn), f"switchy-accept-{peer.fmt_short()}")
        log.info(
            "connected to %s (%s %s%s)",
            peer,
            "outbound to" if conn.is_initiator else "inbound from",
            conn.remote_addr,
            ", limited" if conn.is_limited else "",
        )
        self._swarm_metrics.opened.labels(
            *self._swarm_metrics.connection_labels(conn, self._transport_name(conn))
        ).inc()
        self._emit(ConnectionEvent("connected", peer, conn))

    def _remove_connection(self, conn: MuxedConnection) -> None:
        if conn.resource_scope is not None:
            conn.resource_scope.done()
        conns = self._connections.get(conn.remote_peer)
        if conns is not None and conn in conns:
            conns.remove(conn)
            if not conns:
                del self._connections[conn.remote_peer]
            conn.stats.closed_at = conn.stats.closed_at or asyncio.get_running_loop().time()
            log.info("disconnected from %s (%s)", conn.remote_peer, conn.remote_addr)
            labels = self._swarm_metrics.connection_labels(conn, self._transport_name(conn))
            self._swarm_metrics.closed.labels(*labels).inc()
            self._swarm_metrics.duration.labels(*labels).observe(conn.stats.duration)
            self._emit(ConnectionEvent("disconnected", conn.remote_peer, conn))

    async def _accept_loop(self, conn: MuxedConnection) -> None:
        try:
            while True:
                self._on_stream(await conn.accept_stream())
        except ConnectionClosed:
            pass
        except P2PError as exc:
            log.debug("connection to %s ended: %s", conn.remote_peer, exc)
        finally:
            self._remove_connection(conn)

    def _on_stream(self, stream: MuxedStream) -> None:
        """An inbound stream arrived (called by the muxer): serve it in a task of its own."""
        self._spawn(self._serve_stream(stream), "switchy-handler")

    async def _serve_stream(self, stream: MuxedStream) -> None:
        try:
            protocol = await handle_protocol(
                stream,
                self.registry.__contains__,
                list_protocols=self.registry.protocols,
                timeout=self.config.negotiation_timeout,
            )
        except (P2PError, OSError) as exc:
            log.debug("stream negotiation with %s failed: %s", stream.remote_peer, exc)
            await stream.reset()
            return
        handler = self.registry.get(protocol)
        if handler is None:  # unregistered between negotiation and now
            await stream.reset()
            return
        stream.protocol = protocol
        if not self._charge_protocol(stream, protocol):
            await stream.reset()
            return
        stream.traffic = self._swarm_metrics.stream_opened("inbound", protocol)
        try:
            await handler(stream)
        except asyncio.CancelledError:
            await stream.reset()
            raise
        except Exception as exc:
            if isinstance(exc, P2PError):
                log.debug("handler for %s with %s: %s", protocol, stream.remote_peer, exc)
            else:
                log.exception("handler for %s failed", protocol)
            await stream.reset()
            return
        with contextlib.suppress(P2PError, OSError):
            await stream.close()

    # --- streams ------------------------------------------------------------------------

    async def open_stream(
        self, target: Target, *protocol_ids: str, confirm: bool = False
    ) -> MuxedStream:
        """Open a stream to ``target`` and negotiate the first of ``protocol_ids`` it supports.

        With a single protocol id, negotiation is *optimistic* (as in libp2p): the
        proposal is sent and this returns at once, without waiting for the peer's
        answer, so a request costs no extra round trip.  Opening and the first writes
        then succeed even when the peer does not serve the protocol (the peer discards
        that data); the stream's first read raises
        :class:`~switchy.stack.errors.NegotiationFailed` ("the listener refused the
        optimistically proposed protocol '/x/1.0.0'").  Pass ``confirm=True`` to wait for the
        answer here (one round trip more, within ``config.negotiation_timeout``):
        an unsupported protocol then raises ``NegotiationFailed`` from this call.
        With several ids, they are proposed in turn and this always waits for the
        answer.  A peer that does not answer raises
        :class:`~switchy.stack.errors.P2PTimeout`.
        """
        if not protocol_ids:
            raise InvalidConfiguration("open_stream needs at least one protocol id")
        conn = await self.connect(target)
        return await self.open_protocol_stream(conn, *protocol_ids, confirm=confirm)

    async def open_protocol_stream(
        self, conn: MuxedConnection, *protocol_ids: str, confirm: bool = False
    ) -> MuxedStream:
        """Open a stream on ``conn`` and negotiate the first of ``protocol_ids`` it
        supports, as :meth:`open_stream` does (optimistic with one id unless ``confirm``).

        For protocols that open streams on a connection they already hold (identify,
        DCUtR, the relay, AutoNAT's dial-back): the stream is charged to its protocol's
        scope and its service's like every stream the node negotiates; a refusal resets
        the stream and raises :class:`ResourceLimitExceeded` naming the scope.
        """
        if not protocol_ids:
            raise InvalidConfiguration("open_protocol_stream needs at least one protocol id")
        stream = await conn.open_stream()
        try:
            if len(protocol_ids) == 1:
                # Optimistic: the proposal travels with the first data; checked on first read.
                self.charge_stream(stream, protocol_ids[0])
                await select_protocol_lazy(stream, protocol_ids[0])
                stream.traffic = self._swarm_metrics.stream_opened("outbound", protocol_ids[0])
                if confirm:
                    await confirm_protocol(stream, timeout=self.config.negotiation_timeout)
                return stream
            protocol = await select_protocol(
                stream, protocol_ids, timeout=self.config.negotiation_timeout
            )
            self.charge_stream(stream, protocol)
        except BaseException:
            await stream.reset()
            raise
        stream.protocol = protocol
        stream.traffic = self._swarm_metrics.stream_opened("outbound", protocol)
        return stream

    # --- resource limits, gating, connection manager -------------------------------------

    def _init_limits(
        self,
        limits: ResourceManager | LimitConfig | None,
        gater: ConnectionGater | None,
        connmgr: ConnectionManager | None,
    ) -> None:
        cfg = self.config
        if not isinstance(limits, ResourceManager):
            limits = ResourceManager(
                limits or LimitConfig.from_network_config(cfg), clock=loop_time
            )
        #: The resource manager: every connection, stream and receive buffer is charged
        #: to it (``node.limits.usage()`` shows the current use).
        self.limits = limits
        #: The connection gater (allow/deny lists of peers and networks, a callback).
        self.gater = gater or ConnectionGater()
        #: The connection manager (watermarks, protected peers, idle timeout).
        self.connmgr = connmgr or ConnectionManager(
            low_water=min(cfg.conn_low_water, cfg.conn_high_water),
            high_water=cfg.conn_high_water,
            grace_period=cfg.conn_grace_period,
            idle_timeout=cfg.idle_timeout,
        )
        self.connmgr.attach(self)
        self.metrics.add_collector(rcmgr_collector(limits.metrics_usage))
        self._last_refusal = ""

    def _limit_key(self, addr: Multiaddr, limited: bool) -> str | None:
        """The per-IP key of a remote address: its IP, or the simulator's host; none for
        relayed connections (the relay's address is not the peer's)."""
        if limited:
            return None
        ip = ip_of(addr)
        if ip is not None:
            return ip
        transport = next((t for t in self.transports if t.can_dial(addr)), None)
        return transport.observer_group(addr) if transport is not None else None

    def _admit_inbound(self, raw: Connection | MuxedConnection) -> ConnectionScope | None:
        """The gater's address check and the resource manager's charge of a new inbound
        connection, before its handshake; ``None``: refused (logged at debug level)."""
        addr = raw.remote_addr
        reason = self.gater.check_addr("inbound", addr)
        if reason is not None:
            log.debug("refused inbound connection from %s: %s", addr, reason)
            return None
        peer = raw.remote_peer if isinstance(raw, MuxedConnection) else None
        try:
            return self.limits.open_connection(
                "inbound", self._limit_key(addr, raw.is_limited), peer=peer
            )
        except ResourceLimitExceeded as exc:
            log.debug("refused inbound connection from %s: %s", addr, exc)
            return None

    def _admit_outbound(
        self, addr: Multiaddr, peer: PeerId | None, *, limited: bool = False
    ) -> ConnectionScope:
        """The gater's checks and the resource manager's charge of a dial (within
        ``max_outbound_per_ip`` per IP; ``limited``: a relayed dial, whose address is the
        relay's); raises :class:`ConnectionFailed` or :class:`ResourceLimitExceeded`
        (naming the scope, ``ip:<address>`` for the per-IP cap) when refused."""
        reason = self.gater.check_addr("outbound", addr)
        if reason is None and peer is not None:
            reason = self.gater.check_peer("outbound", peer, addr)
        if reason is not None:
            raise ConnectionFailed(f"dial to {addr} refused by the connection gater: {reason}")
        return self.limits.open_connection("outbound", self._limit_key(addr, limited))

    def _admit_peer(self, conn: MuxedConnection, scope: ConnectionScope, direction: str) -> bool:
        """After the handshake: the gater's peer check and the move of ``scope`` to the
        peer's scope; then attaches ``scope`` to ``conn`` (the muxer charges streams to it,
        those it already has too: after the move, so they count in the peer's scope)."""
        peer = conn.remote_peer
        reason = self.gater.check_peer(
            "inbound" if direction == "inbound" else "outbound", peer, conn.remote_addr
        )
        if reason is None:
            try:
                scope.set_peer(peer)
            except ResourceLimitExceeded as exc:
                reason = str(exc)
        if reason is not None:
            self._last_refusal = reason
            log.debug("refused %s connection with %s: %s", direction, peer, reason)
            scope.done()
            return False
        conn.resource_scope = scope
        return True

    def service_for(self, protocol: str) -> str | None:
        """The name of the service whose :attr:`~ProtocolService.service_protocols` has
        ``protocol`` (or the id a handler's match function serves it under), if any."""
        name = self._service_of.get(protocol)
        if name is None and (resolved := self.registry.resolve(protocol)) is not None:
            name = self._service_of.get(resolved[0])
        return name

    def charge_stream(self, stream: MuxedStream, protocol: str) -> None:
        """Charge ``stream`` to ``protocol``'s scope and its service's (as the node does
        for the streams it negotiates), for a stream negotiated outside
        :meth:`open_stream` / :meth:`open_protocol_stream` (call it once the protocol is
        chosen, before sending on the stream).
        Raises :class:`ResourceLimitExceeded` naming the scope when a limit refuses it
        (the caller resets the stream); a stream without a scope is not charged."""
        scope = getattr(stream, "resource_scope", None)
        if scope is not None:
            scope.set_protocol(protocol, self.service_for(protocol))

    def _charge_protocol(self, stream: MuxedStream, protocol: str) -> bool:
        """:meth:`charge_stream` for an inbound stream: ``False`` (logged at debug
        level) when a limit refuses it."""
        try:
            self.charge_stream(stream, protocol)
        except ResourceLimitExceeded as exc:
            log.debug("refused a %s stream from %s: %s", protocol, stream.remote_peer, exc)
            return False
        return True

    # --- internals ----------------------------------------------------------------------

    def _spawn_callback(self, coro: Coroutine[Any, Any, Any]) -> None:
        if self._closing:
            coro.close()
            return
        try:
            self._spawn(coro, "switchy-addresses").add_done_callback(_log_failure)
        except RuntimeError:  # no running loop (a change before the node runs)
            coro.close()

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def __repr__(self) -> str:
        return f"<Node {self.peer_id.fmt_short()}>"


def _services_by_protocol(services: Iterable[ProtocolService]) -> dict[str, str]:
    """Protocol id -> the name of the service that declares it; raises
    :class:`InvalidConfiguration` when two services of other names declare one id."""
    out: dict[str, str] = {}
    for service in services:
        name = service.service_name
        if not name:
            continue
        for protocol in service.service_protocols:
            other = out.setdefault(protocol, name)
            if other != name:
                raise InvalidConfiguration(
                    f"protocol {protocol!r} is declared by two services: {other!r} and {name!r}"
                )
    return out


def _forget_dial(
    dialing: dict[PeerId, asyncio.Task[MuxedConnection]],
    peer: PeerId,
    task: asyncio.Task[MuxedConnection],
) -> None:
    dialing.pop(peer, None)
    if not task.cancelled():
        task.exception()  # retrieved: every caller may have gone (cancelled) meanwhile


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("%s failed", task.get_name(), exc_info=exc)
