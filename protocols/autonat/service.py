"""The asyncio side of AutoNAT: :class:`AutoNATService` (server, client, probing) and :func:`probe`.

The protocol logic lives in the sans-IO modules (:mod:`.server`, :mod:`.client`,
:mod:`.reachability`); this module moves bytes between them and streams, runs
the dial-backs and the probe timer (on the running loop, so virtual time under
the simulator).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

from multiaddr import Multiaddr

from switchy.protocols.autonat.addrs import AddrPredicate, is_public_addr
from switchy.protocols.autonat.client import (
    Result,
    V2ClientSession,
    Verdict,
    v1_request,
    v1_verdict,
    v2_verdict,
)
from switchy.protocols.autonat.pb import (
    DIAL_BACK_PROTOCOL,
    DIAL_REQUEST_PROTOCOL,
    MAX_MESSAGE_SIZE,
    V1_PROTOCOL,
    DialBack,
    DialBackResponse,
    DialStatus,
    decode_dial_back,
    decode_v1,
    encode_dial_back,
    encode_dial_back_response,
)
from switchy.protocols.autonat.reachability import (
    DEFAULT_CONFIDENCE,
    DEFAULT_MAX_AGE,
    DEFAULT_WINDOW,
    Reachability,
    ReachabilityChange,
    ReachabilityTracker,
)
from switchy.protocols.autonat.server import (
    MAX_DIAL_DATA,
    MIN_DIAL_DATA,
    RateLimiter,
    ServerLimits,
    V2ServerSession,
    v1_bad_request,
    v1_decide,
    v1_refusal,
    v1_rejected,
    v1_response,
)
from switchy.stack.addresses import parse_multiaddr, split_peer
from switchy.stack.errors import (
    ConnectionClosed,
    ConnectionFailed,
    InvalidConfiguration,
    MessageTooLarge,
    P2PError,
    P2PTimeout,
    ResourceLimitExceeded,
    SerializationError,
)
from switchy.stack.mux import MuxedConnection
from switchy.stack.node import ConnectionEvent, Node, ProtocolService

if TYPE_CHECKING:
    from switchy.stack.identity import PeerId
    from switchy.stack.node import Target
    from switchy.stack.stream import MuxedStream
    from switchy.stack.transport import Transport

__all__ = [
    "DIAL_BACK_DIAL_TIMEOUT",
    "DIAL_BACK_STREAM_TIMEOUT",
    "MAX_OBSERVED_PROBED",
    "MAX_PENDING_NONCES",
    "REQUEST_TIMEOUT",
    "AutoNATService",
    "DialBackDialer",
    "fresh_dial_transports",
    "probe",
]

log = logging.getLogger(__name__)

#: A server gives up on a request stream after this long (seconds).
REQUEST_TIMEOUT: Final = 30.0
#: Time allowed for connecting back to the requester (seconds).
DIAL_BACK_DIAL_TIMEOUT: Final = 10.0
#: Time allowed for the dial-back stream (nonce out, acknowledgement in).
DIAL_BACK_STREAM_TIMEOUT: Final = 5.0
#: Largest dial-back message accepted (a ``DialBack`` is 9 bytes).
MAX_DIAL_BACK_MESSAGE: Final = 1024
#: Most v2 requests of ours waiting for their dial-back at once.
MAX_PENDING_NONCES: Final = 32
#: How long a client waits for its nonce after a server claimed a successful dial-back
#: (the server answers after the dial-back, so the nonce is normally there already).
NONCE_GRACE: Final = 2.0
#: Bytes read from a request stream at a time.
_READ_SIZE: Final = MAX_MESSAGE_SIZE + 16
#: Default probe timing (seconds): first round after start, then again after
#: ``retry_interval`` while some address is unknown, ``refresh_interval`` once all are known.
DEFAULT_BOOT_DELAY: Final = 5.0
DEFAULT_RETRY_INTERVAL: Final = 60.0
DEFAULT_REFRESH_INTERVAL: Final = 900.0
#: Observed addresses tested at most, the most observed first (a symmetric NAT gives one
#: per peer; each costs up to ``window`` requests a round).
MAX_OBSERVED_PROBED: Final = 8
#: Wait after a new connection before a probe round (identify has then told us
#: whether the peer is an AutoNAT server).
SERVER_DISCOVERY_DELAY: Final = 1.0


def fresh_dial_transports(node: Node) -> list[Transport]:
    """New instances of the node's direct transports, bound to its key, with no listener.

    Their dials never reuse a listening socket or an existing connection: TCP dials
    from an ephemeral port, QUIC from a socket of its own, the simulator from an
    ephemeral port.  Relayed (limited) and unknown transports are left out, so
    the server refuses addresses only they could dial.
    """
    from switchy.transports.quic.sim import SimDatagramNetwork, sim_quic_transport
    from switchy.transports.quic.transport import QuicTransport
    from switchy.transports.sim.transport import SimTransport
    from switchy.transports.tcp import TcpTransport

    out: list[Transport] = []
    for t in node.transports:
        fresh: Transport | None = None
        if t.limited:
            continue
        if isinstance(t, TcpTransport):
            fresh = TcpTransport(node.config)
        elif isinstance(t, SimTransport):
            fresh = SimTransport(t.network, t.host, config=node.config, window=t.window)
        elif isinstance(t, QuicTransport):
            net = t.network
            if isinstance(net, SimDatagramNetwork):
                fresh = sim_quic_transport(net.network, net.host, node.config)
            else:
                fresh = QuicTransport(node.config, network=net)
        if fresh is not None:
            fresh.bind(node.key, node.config)
            out.append(fresh)
    return out


class DialBackDialer:
    """Dials requesters back on connections of its own (never the node's, never its listen
    port); the connections are not added to the node and are closed after use."""

    def __init__(self, node: Node, transports: Sequence[Transport] | None = None) -> None:
        self.node = node
        self._given = transports
        self._transports: list[Transport] | None = None

    @property
    def transports(self) -> list[Transport]:
        """The dialing transports (made on first use)."""
        if self._transports is None:
            if self._given is not None:
                self._transports = list(self._given)
                for t in self._transports:
                    t.bind(self.node.key, self.node.config)
            else:
                self._transports = fresh_dial_transports(self.node)
        return self._transports

    def can_dial(self, addr: Multiaddr) -> bool:
        """Whether a dial-back transport dials ``addr``."""
        return any(not t.limited and t.can_dial(addr) for t in self.transports)

    async def dial(self, addr: Multiaddr, peer: PeerId) -> MuxedConnection:
        """A new secured, multiplexed connection to ``peer`` at ``addr``."""
        transport = next(t for t in self.transports if not t.limited and t.can_dial(addr))
        raw = await transport.dial(addr, remote_peer=peer)
        if isinstance(raw, MuxedConnection):
            conn = raw
        else:
            try:
                conn = await self.node.upgrader.upgrade_outbound(raw, peer)
            except BaseException:
                with contextlib.suppress(Exception):
                    await raw.reset()
                raise
        if conn.remote_peer != peer:
            await conn.abort()
            raise ConnectionFailed(f"dial-back reached {conn.remote_peer}, expected {peer}")
        return conn

    def close(self) -> None:
        """Close sockets the transports keep (QUIC's)."""
        for t in self._transports or ():
            closer = getattr(t, "close", None)
            if callable(closer):
                with contextlib.suppress(Exception):
                    closer()


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("%s failed", task.get_name(), exc_info=exc)


async def _close_quietly(conn: MuxedConnection) -> None:
    try:
        async with asyncio.timeout(DIAL_BACK_STREAM_TIMEOUT):
            await conn.close()
    except (P2PError, OSError, TimeoutError):
        with contextlib.suppress(Exception):
            await conn.abort()


class _Nonce:
    """A v2 request of ours waiting for its dial-back."""

    __slots__ = ("arrived", "local_addr")

    def __init__(self) -> None:
        self.arrived = asyncio.Event()
        self.local_addr: Multiaddr | None = None


ChangeCallback = Callable[[ReachabilityChange], Any]


class AutoNATService(ProtocolService):
    """AutoNAT v2 and v1, server and client, and the node's reachability.

    As a server it answers ``/libp2p/autonat/2/dial-request`` and
    ``/libp2p/autonat/1.0.0`` (``server=False`` turns that off).  As a client
    (``client=False`` turns it off) it serves ``/libp2p/autonat/2/dial-back``,
    asks connected AutoNAT servers about each of its addresses (``addrs``,
    default: the node's listen addresses that ``is_public``) and keeps
    :attr:`reachability` and :attr:`addresses` up to date; ``probe_automatically=False``
    leaves probing to :meth:`probe_round` / :func:`probe`.  Servers are the connected
    peers that announce an AutoNAT protocol, so the node needs identify
    (:class:`~switchy.protocols.identify.IdentifyService`) for automatic probing.

    ``is_public`` decides which addresses are tested and served (default
    :func:`~switchy.protocols.autonat.addrs.is_public_addr`; tests on loopback
    pass ``lambda a: True``).  ``dial_back_transports`` replaces the transports
    dial-backs use (default: :func:`fresh_dial_transports`).
    ``on_reachability_changed`` is called with each
    :class:`~switchy.protocols.autonat.reachability.ReachabilityChange` (the
    node's: ``addr is None``) and may return a coroutine.
    """

    service_name = "autonat"
    service_protocols = (DIAL_REQUEST_PROTOCOL, DIAL_BACK_PROTOCOL, V1_PROTOCOL)

    def __init__(
        self,
        *,
        server: bool = True,
        client: bool = True,
        v1: bool = True,
        v2: bool = True,
        limits: ServerLimits | None = None,
        confidence: int = DEFAULT_CONFIDENCE,
        window: int = DEFAULT_WINDOW,
        max_age: float = DEFAULT_MAX_AGE,
        boot_delay: float = DEFAULT_BOOT_DELAY,
        retry_interval: float = DEFAULT_RETRY_INTERVAL,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
        is_public: AddrPredicate | None = None,
        addrs: Callable[[], Iterable[Multiaddr]] | None = None,
        dial_back_transports: Sequence[Transport] | None = None,
        on_reachability_changed: ChangeCallback | None = None,
        probe_automatically: bool = True,
    ) -> None:
        if not (v1 or v2):
            raise InvalidConfiguration("AutoNATService needs v1 or v2")
        for name, value in (
            ("boot_delay", boot_delay),
            ("retry_interval", retry_interval),
            ("refresh_interval", refresh_interval),
        ):
            if value < 0 or (name != "boot_delay" and value == 0):
                raise InvalidConfiguration(f"{name} must be positive, got {value}")
        self.serve = server
        self.client = client
        self.v1 = v1
        self.v2 = v2
        self.limiter = RateLimiter(limits)
        self.tracker = ReachabilityTracker(confidence=confidence, window=window, max_age=max_age)
        self.boot_delay = boot_delay
        self.retry_interval = retry_interval
        self.refresh_interval = refresh_interval
        self._is_public_given = is_public
        self.is_public: AddrPredicate = is_public or is_public_addr
        self._addrs = addrs
        self._dial_back_transports = dial_back_transports
        self._callbacks: list[ChangeCallback] = []
        if on_reachability_changed is not None:
            self._callbacks.append(on_reachability_changed)
        self.probe_automatically = probe_automatically
        self.node: Node | None = None
        self.dialer: DialBackDialer | None = None
        self._nonces: dict[int, _Nonce] = {}
        self._asked: dict[tuple[Multiaddr, PeerId], float] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._waiters: list[tuple[Reachability, Multiaddr | None, asyncio.Future[None]]] = []
        #: Every result this client got, most recent last (bounded).
        self.results: list[Result] = []
        #: Server side: how each request ended, most recent last (bounded; for metrics/tests).
        self.served: list[str] = []
        #: Server side: dial-data bytes taken from clients, in total.
        self.dial_data_bytes = 0

    # --- plumbing -------------------------------------------------------------------------

    def attach(self, node: Node) -> None:
        """Register the protocol handlers (and the connection hook of the client)."""
        self.node = node
        if self._is_public_given is None:
            config = node.config
            self.is_public = lambda a: is_public_addr(a, config)
        self.dialer = DialBackDialer(node, self._dial_back_transports)
        if self.serve:
            if self.v2:
                node.handle(DIAL_REQUEST_PROTOCOL, self._handle_dial_request)
            if self.v1:
                node.handle(V1_PROTOCOL, self._handle_v1)
        if self.client:
            if self.v2:
                node.handle(DIAL_BACK_PROTOCOL, self._handle_dial_back)
            node.on_connection_event(self._on_connection)

    async def start(self) -> None:
        """Start the probe timer (client with ``probe_automatically``)."""
        if self.client and self.probe_automatically and self._task is None:
            self._task = asyncio.ensure_future(self._run())
            self._task.set_name("switchy-autonat-probe")
            self._task.add_done_callback(_log_failure)

    async def stop(self) -> None:
        """Stop probing, cancel dial-backs in progress, close the dial-back sockets."""
        tasks = [t for t in (self._task, *self._tasks) if t is not None]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks)
        self._task = None
        if self.dialer is not None:
            self.dialer.close()
        for _, _, fut in self._waiters:
            if not fut.done():
                fut.cancel()

    def on_reachability_changed(self, callback: ChangeCallback) -> None:
        """Call ``callback(change)`` on every change (may return a coroutine)."""
        self._callbacks.append(callback)

    @property
    def reachability(self) -> Reachability:
        """The node's reachability (``public``, ``private`` or ``unknown``)."""
        return self.tracker.overall

    @property
    def addresses(self) -> dict[Multiaddr, Reachability]:
        """The reachability of each address tested."""
        return self.tracker.addresses

    async def wait_reachability(self, state: Reachability, addr: Multiaddr | None = None) -> None:
        """Wait until the node (or ``addr``) has reachability ``state``."""
        current = self.reachability if addr is None else self.tracker.state(addr)
        if current is state:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (state, addr, fut)
        self._waiters.append(entry)
        try:
            await fut
        finally:
            self._waiters.remove(entry)

    def _protocols(self) -> list[str]:
        """The request protocols we speak as a client, preferred first."""
        return [p for p, on in ((DIAL_REQUEST_PROTOCOL, self.v2), (V1_PROTOCOL, self.v1)) if on]

    def _node(self) -> Node:
        if self.node is None:
            raise InvalidConfiguration("AutoNATService is not attached to a node")
        return self.node

    def _random(self, n: int) -> int:
        entropy = self._node().entropy or os.urandom
        return int.from_bytes(entropy(n), "big")

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)

    # --- server ---------------------------------------------------------------------------

    def _served(self, outcome: str) -> None:
        self.served.append(outcome)
        del self.served[:-256]

    async def _handle_dial_request(self, stream: MuxedStream) -> None:
        assert self.dialer is not None
        loop = asyncio.get_running_loop()
        conn = stream.muxed_conn
        peer = stream.remote_peer
        refusal = "request over a relayed connection" if conn.is_limited else None
        admitted = False
        if refusal is None:
            refusal = self.limiter.admit(peer, loop.time())
            admitted = refusal is None
        size = MIN_DIAL_DATA + self._random(4) % (MAX_DIAL_DATA - MIN_DIAL_DATA + 1)
        session = V2ServerSession(
            conn.remote_addr,
            can_dial=self.dialer.can_dial,
            is_public=self.is_public,
            admit_dial_data=lambda: self.limiter.admit_dial_data(loop.time()),
            dial_data_size=size,
            refusal=refusal,
        )
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                while session.reading:
                    if out := session.data_to_send():
                        await stream.write(out)
                    chunk = await stream.read(_READ_SIZE)
                    if not chunk:
                        raise ConnectionClosed(f"{peer} closed the dial-request stream early")
                    for event in session.receive_data(chunk):
                        status = await self._dial_back(event.addr, peer, event.nonce)
                        session.dial_done(status)
                if out := session.data_to_send():
                    await stream.write(out)
        except TimeoutError:
            raise P2PTimeout(f"dial request of {peer} not done in {REQUEST_TIMEOUT}s") from None
        finally:
            self.dial_data_bytes += session.dial_data_received
            self._served(session.outcome or "aborted")
            if admitted:
                self.limiter.release(peer)
        log.debug("AutoNAT v2 request of %s: %s", peer, session.outcome)

    async def _dial_back(self, addr: Multiaddr, peer: PeerId, nonce: int) -> DialStatus:
        assert self.dialer is not None
        try:
            async with asyncio.timeout(DIAL_BACK_DIAL_TIMEOUT):
                conn = await self.dialer.dial(addr, peer)
        except (P2PError, OSError, TimeoutError) as exc:
            log.debug("AutoNAT dial-back to %s at %s failed: %s", peer, addr, exc)
            return DialStatus.E_DIAL_ERROR
        try:
            async with asyncio.timeout(DIAL_BACK_STREAM_TIMEOUT):
                stream = await self.dialer.node.open_protocol_stream(conn, DIAL_BACK_PROTOCOL)
                await stream.send_message(
                    encode_dial_back(DialBack(nonce)), max_size=MAX_DIAL_BACK_MESSAGE
                )
                await stream.close_write()
                # The acknowledgement tells us the nonce arrived before we close.
                with contextlib.suppress(P2PError, OSError):
                    await stream.recv_message(max_size=MAX_DIAL_BACK_MESSAGE)
            return DialStatus.OK
        except (P2PError, OSError, TimeoutError) as exc:
            log.debug("AutoNAT dial-back stream to %s failed: %s", peer, exc)
            return DialStatus.E_DIAL_BACK_ERROR
        finally:
            await _close_quietly(conn)

    async def _handle_v1(self, stream: MuxedStream) -> None:
        assert self.dialer is not None
        conn = stream.muxed_conn
        peer = stream.remote_peer
        if conn.is_limited:
            self._served("v1 rejected: relayed connection")
            await stream.write(v1_rejected("requests over relayed connections are refused"))
            return
        refusal = self.limiter.admit(peer, asyncio.get_running_loop().time())
        if refusal is not None:
            self._served(f"v1 rejected: {refusal}")
            await stream.write(v1_rejected(refusal))
            return
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                await self._serve_v1(stream, conn, peer)
        except TimeoutError:
            raise P2PTimeout(f"v1 request of {peer} not done in {REQUEST_TIMEOUT}s") from None
        finally:
            self.limiter.release(peer)

    async def _serve_v1(self, stream: MuxedStream, conn: MuxedConnection, peer: PeerId) -> None:
        assert self.dialer is not None
        try:
            msg = decode_v1(await stream.recv_message(max_size=MAX_MESSAGE_SIZE))
        except (MessageTooLarge, SerializationError) as exc:
            self._served(f"v1 bad request: {exc}")
            await stream.write(v1_bad_request(str(exc)))
            return
        decision = v1_decide(
            msg, peer, conn.remote_addr, can_dial=self.dialer.can_dial, is_public=self.is_public
        )
        if decision.refusal is not None:
            self._served("v1 refused")
            await stream.write(v1_refusal(decision.refusal))
            return
        dialed: Multiaddr | None = None
        errors = 0
        for addr in decision.addrs:
            try:
                async with asyncio.timeout(DIAL_BACK_DIAL_TIMEOUT):
                    back = await self.dialer.dial(addr, peer)
            except (P2PError, OSError, TimeoutError) as exc:
                log.debug("AutoNAT v1 dial-back to %s at %s failed: %s", peer, addr, exc)
                errors += 1
                continue
            await _close_quietly(back)
            dialed = addr
            break
        self._served(f"v1 dialed: {'OK' if dialed else 'E_DIAL_ERROR'}")
        await stream.write(v1_response(dialed, errors))

    # --- client ---------------------------------------------------------------------------

    async def _handle_dial_back(self, stream: MuxedStream) -> None:
        msg = decode_dial_back(await stream.recv_message(max_size=MAX_DIAL_BACK_MESSAGE))
        waiting = self._nonces.get(msg.nonce)
        if waiting is None:
            log.debug("dial-back from %s with a nonce we did not send", stream.remote_peer)
            return  # discarded, per the spec; no acknowledgement
        waiting.local_addr = stream.muxed_conn.local_addr
        waiting.arrived.set()
        await stream.send_message(encode_dial_back_response(DialBackResponse()))

    async def ask(self, server: Target, addr: Multiaddr) -> Result:
        """Ask ``server`` about ``addr`` (v2 when it speaks it, else v1); record the result."""
        node = self._node()
        protocols = self._protocols()
        who = server if not isinstance(server, str | Multiaddr) else split_peer(server)[1]
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                stream = await node.open_stream(server, *protocols)
                who = stream.remote_peer
                try:
                    if stream.protocol == DIAL_REQUEST_PROTOCOL:
                        result = await self._ask_v2(stream, addr)
                    else:
                        result = await self._ask_v1(stream, addr)
                except BaseException:
                    await stream.reset()
                    raise
                with contextlib.suppress(P2PError, OSError):
                    await stream.close()
        except (P2PError, OSError, TimeoutError) as exc:
            reason = f"timed out after {REQUEST_TIMEOUT}s" if isinstance(exc, TimeoutError) else exc
            if who is None:
                raise ConnectionFailed(f"AutoNAT server {server} unreachable: {reason}") from None
            result = Result(addr, who, 2 if self.v2 else 1, Verdict.ERROR, str(reason))
        self.record(result)
        return result

    async def _ask_v2(self, stream: MuxedStream, addr: Multiaddr) -> Result:
        if len(self._nonces) >= MAX_PENDING_NONCES:
            raise ResourceLimitExceeded(f"{MAX_PENDING_NONCES} AutoNAT requests already waiting")
        nonce = self._random(8)
        while nonce in self._nonces:
            nonce = self._random(8)
        waiting = self._nonces[nonce] = _Nonce()
        try:
            session = V2ClientSession([addr], nonce)
            await stream.write(session.data_to_send())
            while session.response is None:
                chunk = await stream.read(_READ_SIZE)
                if not chunk:
                    raise ConnectionClosed("the server closed the stream without a DialResponse")
                session.receive_data(chunk)
                if out := session.data_to_send():
                    await stream.write(out)
            r = session.response
            if r.dial_status == DialStatus.OK and not waiting.arrived.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(NONCE_GRACE):
                        await waiting.arrived.wait()
            return v2_verdict(session, stream.remote_peer, waiting.local_addr)
        finally:
            del self._nonces[nonce]

    async def _ask_v1(self, stream: MuxedStream, addr: Multiaddr) -> Result:
        await stream.write(v1_request(self._node().peer_id, [addr]))
        msg = decode_v1(await stream.recv_message(max_size=MAX_MESSAGE_SIZE))
        return v1_verdict(msg, addr, stream.remote_peer)

    def record(self, result: Result) -> None:
        """Count ``result`` in the reachability state (and :attr:`results`)."""
        self.results.append(result)
        del self.results[:-256]
        self._changes(self.tracker.add(result, asyncio.get_running_loop().time()))

    def _changes(self, changes: list[ReachabilityChange]) -> None:
        book = self.node.addresses if self.node is not None else None
        for change in changes:
            if book is not None:  # the node's address book: confirmations, node.reachability
                if change.addr is None:
                    book.report_reachability(change.new)
                else:
                    book.set_address_reachability(change.addr, change.new)
            for cb in self._callbacks:
                try:
                    out = cb(change)
                    if isinstance(out, Coroutine):
                        self._spawn(out, "switchy-autonat-callback")
                except Exception:
                    log.exception("reachability callback failed")
        for state, addr, fut in self._waiters:
            current = self.reachability if addr is None else self.tracker.state(addr)
            if current is state and not fut.done():
                fut.set_result(None)

    # --- probing --------------------------------------------------------------------------

    def candidate_addrs(self) -> list[Multiaddr]:
        """The addresses to test: ``addrs()`` if given, else the public ones of the listen
        addresses (wildcards expanded) and of the addresses peers observed (the node's
        :class:`~switchy.stack.addrbook.AddressBook`; at most :data:`MAX_OBSERVED_PROBED`
        of those)."""
        node = self._node()
        if self._addrs is not None:
            source = list(self._addrs())
        else:
            book = node.addresses
            source = [*book.interface_addrs(), *book.observed()[:MAX_OBSERVED_PROBED]]
        out: list[Multiaddr] = []
        for a in source:
            if a not in out and self.is_public(a):
                out.append(a)
        return out

    def servers(self) -> list[PeerId]:
        """Connected peers (over a direct connection) that announce an AutoNAT server."""
        node = self._node()
        wanted = set(self._protocols())
        out = []
        for peer in node.connected_peers:
            if not any(not c.is_limited for c in node.connections(peer)):
                continue
            if wanted & set(node.peerstore.protocols(peer)):
                out.append(peer)
        return sorted(out, key=lambda p: p.to_bytes())

    async def probe_round(self) -> list[Result]:
        """Ask servers about each candidate address, up to ``window`` servers per address,
        skipping a server asked about that address within the retry (unknown) or refresh
        (known) interval."""
        loop = asyncio.get_running_loop()
        addrs = self.candidate_addrs()
        self._changes(self.tracker.forget(addrs, loop.time()))
        if self._addrs is None:
            self._node().addresses.retain_verdicts(addrs)
        servers = self.servers()
        live = set(servers)
        self._asked = {k: t for k, t in self._asked.items() if k[0] in addrs and k[1] in live}
        results: list[Result] = []
        for addr in addrs:
            asked = 0
            for server in servers:
                if asked >= self.tracker.window:
                    break
                now = loop.time()
                every = (
                    self.refresh_interval if self.tracker.confident(addr) else self.retry_interval
                )
                last = self._asked.get((addr, server))
                if last is not None and now - last < every:
                    continue
                self._asked[(addr, server)] = now
                asked += 1
                try:
                    results.append(await self.ask(server, addr))
                except P2PError as exc:
                    log.debug("AutoNAT server %s: %s", server, exc)
        self._changes(self.tracker.refresh(loop.time()))
        return results

    def probe_soon(self, delay: float = 0.0) -> None:
        """Run a probe round after ``delay`` seconds (timer on the running loop)."""
        asyncio.get_running_loop().call_later(delay, self._wake.set)

    def _on_connection(self, event: ConnectionEvent) -> None:
        if event.kind == "connected" and self._task is not None:
            self.probe_soon(SERVER_DISCOVERY_DELAY)

    async def _run(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.boot_delay):
                await self._wake.wait()
        while True:
            self._wake.clear()
            try:
                await self.probe_round()
            except P2PError as exc:
                log.debug("AutoNAT probe round failed: %s", exc)
            addrs = self.candidate_addrs()
            unknown = not addrs or any(not self.tracker.confident(a) for a in addrs)
            every = self.retry_interval if unknown else self.refresh_interval
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(every):
                    await self._wake.wait()


async def probe(
    node: Node, servers: Sequence[Target], addrs: Sequence[Multiaddr | str] | None = None
) -> list[Result]:
    """Ask each of ``servers`` about each of ``addrs`` (default: the node's listen addresses).

    The node needs an :class:`AutoNATService` with ``client=True`` in its
    services (it receives the v2 dial-backs).  Returns one
    :class:`~switchy.protocols.autonat.client.Result` per server and address,
    servers in the given order.  A server named by a peer id (or an address with
    ``/p2p``) that cannot be reached gives ``ERROR`` results naming why; one named by
    a bare address raises :class:`~switchy.stack.errors.ConnectionFailed`.  The
    results also count in the service's reachability.
    """
    service = next((s for s in node.services if isinstance(s, AutoNATService) and s.client), None)
    if service is None:
        raise InvalidConfiguration(
            "probe needs an AutoNATService(client=True) in the node's services"
        )
    targets = [parse_multiaddr(a) for a in addrs] if addrs is not None else node.listen_addrs
    return [await service.ask(server, addr) for server in servers for addr in targets]
