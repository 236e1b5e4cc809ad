"""The asyncio side of DCUtR: :class:`DCUtRService` turns relayed connections into direct ones.

Plug it in as a service (``Node(..., services=[IdentifyService(), DCUtRService()])``).
When a relayed (``is_limited``) connection arrives that the remote dialed, we are
``B``: we run up to :data:`~.core.MAX_ATTEMPTS` DCUtR exchanges on the relayed
connection, each followed by a punch, and meanwhile, once identify over the relay
told us the remote's addresses, dial its public ones (the spec's unilateral upgrade;
not waiting for identify before the first exchange saves a relayed round trip):

* stream addresses (TCP, simulated streams): ``A`` dials at SYNC, ``B`` half a
  round trip after sending it, both from their listen ports; ``A`` upgrades as
  the Noise initiator, ``B`` as the responder (:meth:`Node.connect_direct
  <switchy.stack.node.Node.connect_direct>` with ``initiator=False``);
* QUIC addresses: ``A`` dials; ``B`` sends datagrams of random bytes from its
  listening socket (:meth:`QuicTransport.send_punch
  <switchy.transports.quic.transport.QuicTransport.send_punch>`) every 10-200 ms
  until the connection is up, and accepts it as an ordinary inbound one.

Once a direct connection is up the node prefers it for new streams (it prefers
unlimited connections) and the relayed one is closed after
:attr:`DCUtRConfig.grace_period`.  :class:`PunchEvent` s report each attempt;
after a failed upgrade a peer is backed off (:class:`~.core.PunchBackoff`).

Where our addresses come from: :attr:`DCUtRService.addresses`, a function of
the node (default :func:`candidate_addrs`: the address manager's confirmed and
candidate addresses, i.e. what peers observed of our listen ports, then the
listen addresses).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, runtime_checkable

import attrs
from multiaddr import Multiaddr

from switchy.protocols.autonat.addrs import AddrPredicate, is_public_addr, is_relayed
from switchy.protocols.autonat.server import RateLimiter, ServerLimits
from switchy.protocols.dcutr.core import (
    MAX_ATTEMPTS,
    MAX_PUNCH_ADDRS,
    PunchBackoff,
    PunchInitiator,
    PunchPlan,
    PunchResponder,
    Role,
    select_addrs,
)
from switchy.protocols.dcutr.pb import (
    DCUTR_PROTOCOL,
    MAX_MESSAGE_SIZE,
    HolePunch,
    decode_holepunch,
    encode_holepunch,
)
from switchy.protocols.identify import IdentifyService
from switchy.stack.errors import P2PError, P2PTimeout, ProtocolError, RequestRefused
from switchy.stack.identity import PeerId
from switchy.stack.metrics import loop_time
from switchy.stack.node import ConnectionEvent, Node, ProtocolService

if TYPE_CHECKING:
    from switchy.stack.mux import MuxedConnection
    from switchy.stack.stream import MuxedStream

__all__ = [
    "AddressProvider",
    "DCUtRConfig",
    "DCUtRService",
    "DatagramPuncher",
    "PunchEvent",
    "candidate_addrs",
]

log = logging.getLogger(__name__)

#: A function giving our candidate addresses for hole punching.
AddressProvider = Callable[[Node], Sequence[Multiaddr]]
#: Most punch events a service keeps in :attr:`DCUtRService.history`.
MAX_HISTORY: Final = 256
#: Default limits on the exchanges we answer: per peer and overall per minute, and in
#: flight (2 per peer: B's next attempt may start while our previous punch still runs).
INBOUND_LIMITS: Final = ServerLimits(
    per_peer=2 * MAX_ATTEMPTS, total=120, concurrent_per_peer=2, concurrent_total=16
)
#: Bytes of random payload per punch datagram (spec: "filled with random bytes").
PUNCH_PACKET_SIZE: Final = 64


def candidate_addrs(node: Node) -> list[Multiaddr]:
    """Our addresses worth telling a peer, from the address manager
    (:attr:`Node.addresses <switchy.stack.node.Node.addresses>`): the confirmed
    external addresses, then the candidates (observed by peers on direct
    connections from a listen port, not confirmed: a NAT's mapping of that port,
    most observers first), then our listen addresses (wildcards expanded).

    The caller keeps only public ones (:attr:`DCUtRConfig.is_public`).  Pass another
    function as ``DCUtRService(addresses=...)`` to replace it.
    """
    book = node.addresses
    out: list[Multiaddr] = []
    for addr in [*book.confirmed(), *book.candidates(), *book.interface_addrs()]:
        if not is_relayed(addr) and addr not in out:
            out.append(addr)
    return out


@runtime_checkable
class DatagramPuncher(Protocol):
    """A transport that can send punch datagrams from its listening socket (QUIC)."""

    def send_punch(self, addr: Multiaddr, data: bytes) -> bool:
        """Send ``data`` to ``addr`` from the listening socket; False if it cannot."""


@attrs.frozen
class DCUtRConfig:
    """DCUtR's knobs (times in seconds).

    ``auto``: start an upgrade by itself on every relayed connection the remote
    dialed; ``unilateral``: also dial the remote's public addresses once identified
    (the spec's unilateral upgrade, in parallel with the first exchange).
    ``is_public``: which addresses are worth dialing or spraying (ours and the
    peer's; default: :func:`~switchy.protocols.autonat.addrs.is_public_addr` with the
    node's :attr:`~switchy.stack.config.NetworkConfig.public_networks`).
    ``exchange_timeout`` bounds one CONNECT/CONNECT/SYNC exchange (a peer that never
    answers or never SYNCs), ``punch_timeout`` the wait for the direct connection
    after SYNC, ``grace_period`` the life of the relayed connection once a direct one
    is up; ``settle_time`` how long an attempt still waits for the peer's dial to
    reach our listener once our own dials failed (longer than the first SYN
    retransmission, 1 s, so one lost SYN is survived).
    """

    auto: bool = True
    unilateral: bool = True
    is_public: AddrPredicate | None = None
    max_attempts: int = MAX_ATTEMPTS
    max_addrs: int = MAX_PUNCH_ADDRS
    identify_timeout: float = 5.0
    exchange_timeout: float = 10.0
    punch_timeout: float = 5.0
    unilateral_timeout: float = 2.0
    settle_time: float = 3.0
    grace_period: float = 5.0
    spray_interval: tuple[float, float] = (0.010, 0.200)
    backoff_base: float = 60.0
    backoff_cap: float = 3600.0
    #: Inbound exchanges we answer: per peer and overall per minute, one at a time per peer.
    inbound_limits: ServerLimits = attrs.field(factory=lambda: INBOUND_LIMITS)


@attrs.frozen
class PunchEvent:
    """One step of a hole punch with ``peer``.

    ``kind``: ``started`` (an attempt began), ``succeeded`` (a direct connection
    is up: ``connection``), ``failed`` (the attempt, or with ``final`` the whole
    upgrade, failed: ``reason``).  ``elapsed``: seconds since the upgrade began
    (for ``B``, since the relayed connection was reported).  ``rtt``: the
    round trip measured through the relay, where known.  ``attempt`` 0 is the
    upgrade without a hole punch (``B`` dialed ``A``'s public address, or a direct
    connection was already there).
    """

    kind: Literal["started", "succeeded", "failed"]
    peer: PeerId
    role: Role
    attempt: int
    elapsed: float
    reason: str = ""
    final: bool = False
    rtt: float | None = None
    connection: MuxedConnection | None = None


class DCUtRService(ProtocolService):
    """Direct Connection Upgrade through Relay (see the module docstring)."""

    service_name = "dcutr"
    service_protocols = (DCUTR_PROTOCOL,)

    def __init__(
        self,
        config: DCUtRConfig | None = None,
        *,
        addresses: AddressProvider = candidate_addrs,
        on_event: Callable[[PunchEvent], Any] | None = None,
    ) -> None:
        self.config = config or DCUtRConfig()
        #: Where our candidate addresses come from (see :func:`candidate_addrs`).
        self.addresses = addresses
        self.on_event = on_event
        #: The most recent punch events, oldest first.
        self.history: deque[PunchEvent] = deque(maxlen=MAX_HISTORY)
        self.backoff = PunchBackoff(base=self.config.backoff_base, cap=self.config.backoff_cap)
        self.node: Node | None = None
        self._limiter = RateLimiter(self.config.inbound_limits)
        self._running: dict[PeerId, asyncio.Task[Any]] = {}
        self._direct: dict[PeerId, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._rng: random.Random | None = None
        self._is_public: AddrPredicate = self.config.is_public or is_public_addr

    # --- wiring -------------------------------------------------------------------------

    def attach(self, node: Node) -> None:
        """Serve ``/libp2p/dcutr`` and watch for relayed connections."""
        self.node = node
        if self.config.is_public is None:
            config = node.config
            self._is_public = lambda a: is_public_addr(a, config)
        node.handle(DCUTR_PROTOCOL, self._handle)
        node.on_connection_event(self._on_event)

    async def stop(self) -> None:
        """Cancel the upgrades in progress."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    def _node(self) -> Node:
        if self.node is None:
            raise ProtocolError("DCUtRService is not attached to a node")
        return self.node

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _random(self) -> random.Random:
        if self._rng is None:
            entropy = self._node().entropy or os.urandom
            self._rng = random.Random(int.from_bytes(entropy(16), "big"))
        return self._rng

    def _emit(self, event: PunchEvent) -> None:
        self.history.append(event)
        log.debug("dcutr %s: %s", event.kind, event)
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:
                log.exception("DCUtR event callback failed")

    def _on_event(self, event: ConnectionEvent) -> None:
        conn = event.connection
        if event.kind != "connected":
            return
        if not conn.is_limited:
            waiter = self._direct.get(event.peer)
            if waiter is not None:
                waiter.set()
            return
        if self.config.auto and not conn.is_initiator:
            self.upgrade(conn)

    # --- public -------------------------------------------------------------------------

    def upgrade(self, conn: MuxedConnection) -> asyncio.Task[Any] | None:
        """Start upgrading the relayed ``conn`` (we accepted it: we are ``B``).

        Returns the task (its result: the direct connection or None), or None when
        an upgrade with that peer is running or the peer is backed off.
        """
        peer = conn.remote_peer
        running = self._running.get(peer)
        if running is not None and not running.done():
            return None
        if not self.backoff.allowed(peer, loop_time()):
            log.debug("dcutr: %s is backed off until %s", peer, self.backoff.retry_at(peer))
            return None
        task = self._spawn(self._upgrade(conn), f"switchy-dcutr-{peer.fmt_short()}")
        self._running[peer] = task
        task.add_done_callback(lambda t: _forget(self._running, peer, t))
        return task

    @property
    def running(self) -> list[PeerId]:
        """Peers with an upgrade in progress (we are ``B``)."""
        return [p for p, t in self._running.items() if not t.done()]

    def direct_connection(self, peer: PeerId) -> MuxedConnection | None:
        """An open unlimited connection to ``peer``, if there is one."""
        return next((c for c in self._node().connections(peer) if not c.is_limited), None)

    # --- addresses ----------------------------------------------------------------------

    def _can_dial(self, addr: Multiaddr) -> bool:
        return any(t.can_dial(addr) and not t.limited for t in self._node().transports)

    def _our_addrs(self) -> tuple[Multiaddr, ...]:
        node = self._node()
        return select_addrs(
            self.addresses(node),
            is_public=self._is_public,
            can_dial=lambda _a: True,
            limit=self.config.max_addrs,
        )

    def _their_addrs(self, addrs: Sequence[Multiaddr]) -> tuple[Multiaddr, ...]:
        node = self._node()
        return select_addrs(
            addrs,
            is_public=self._is_public,
            can_dial=self._can_dial,
            own=[*node.listen_addrs, *self.addresses(node)],
            limit=self.config.max_addrs,
        )

    # --- B: the side that accepted the relayed connection -------------------------------

    async def _upgrade(self, conn: MuxedConnection) -> MuxedConnection | None:
        peer = conn.remote_peer
        start = loop_time()
        # The unilateral dial needs the peer's addresses (identify, one relayed round trip
        # away); the exchange does not: both start now, whichever is first wins.
        unilateral = (
            self._spawn(self._unilateral(peer), "switchy-dcutr-unilateral")
            if self.config.unilateral
            else None
        )
        try:
            return await self._attempts(conn, peer, start, unilateral)
        finally:
            if unilateral is not None:
                unilateral.cancel()

    async def _attempts(
        self,
        conn: MuxedConnection,
        peer: PeerId,
        start: float,
        unilateral: asyncio.Task[MuxedConnection | None] | None,
    ) -> MuxedConnection | None:
        node = self._node()
        direct = self.direct_connection(peer)
        if direct is not None:  # attempt 0: a direct connection was already there
            self._succeeded(peer, Role.B, 0, start, direct, conn, None)
        reason = ""
        attempt = 0
        while direct is None and attempt < self.config.max_attempts:
            if conn.is_closed or node.is_closed:
                reason = "the relayed connection closed"
                break
            if unilateral is not None and unilateral.done() and not unilateral.cancelled():
                direct = unilateral.result()
                if direct is not None:  # attempt 0: we dialed the peer's public address
                    self._succeeded(peer, Role.B, 0, start, direct, conn, None)
                    break
            attempt += 1
            self._emit(PunchEvent("started", peer, Role.B, attempt, loop_time() - start))
            rtt: float | None = None
            try:
                direct, rtt = await self._attempt(conn, peer)
                reason = "no direct connection came up"
            except (P2PError, OSError) as exc:
                reason = str(exc) or type(exc).__name__
            if direct is None:
                self._emit(
                    PunchEvent(
                        "failed", peer, Role.B, attempt, loop_time() - start, reason, rtt=rtt
                    )
                )
            else:
                self._succeeded(peer, Role.B, attempt, start, direct, conn, rtt)
        if direct is None:
            delay = self.backoff.failed(peer, loop_time())
            self._emit(
                PunchEvent(
                    "failed",
                    peer,
                    Role.B,
                    attempt,
                    loop_time() - start,
                    f"{reason} (backing off {delay:g}s)",
                    final=True,
                )
            )
        return direct

    async def _wait_identified(self, peer: PeerId) -> None:
        identify = next((s for s in self._node().services if isinstance(s, IdentifyService)), None)
        if identify is None:
            return
        with contextlib.suppress(TimeoutError):
            await identify.wait_identified(peer, self.config.identify_timeout)

    async def _unilateral(self, peer: PeerId) -> MuxedConnection | None:
        """The spec's first step: once identified, dial the peer's public addresses."""
        await self._wait_identified(peer)
        addrs = self._their_addrs(self._node().peerstore.addrs(peer))
        if not addrs or self.direct_connection(peer) is not None:
            return None
        try:
            async with asyncio.timeout(self.config.unilateral_timeout):
                return await self._dial_first(peer, addrs, initiator=True)
        except TimeoutError:
            return None

    async def _attempt(
        self, conn: MuxedConnection, peer: PeerId
    ) -> tuple[MuxedConnection | None, float | None]:
        """One CONNECT/CONNECT/SYNC exchange and the punch after it."""
        machine = PunchInitiator(self._our_addrs())
        stream = await self._node().open_protocol_stream(conn, DCUTR_PROTOCOL)
        try:
            async with _timeout(self.config.exchange_timeout, f"DCUtR exchange with {peer}"):
                await _send(stream, machine.start(loop_time()))
                reply = await _recv(stream)
                sync, rtt, addrs = machine.receive(reply, loop_time())
                await _send(stream, sync)
        except BaseException:
            await stream.reset()
            raise
        self._spawn(_close_quietly(stream), "switchy-dcutr-close")
        plan = PunchInitiator.plan(self._their_addrs(addrs), rtt)
        if not plan.addrs:
            raise RequestRefused(f"{peer} sent no address we can punch")
        await asyncio.sleep(plan.delay)
        return await self._punch(peer, plan), rtt

    # --- A: the side that dialed the relayed connection ---------------------------------

    async def _handle(self, stream: MuxedStream) -> None:
        peer = stream.remote_peer
        if not stream.muxed_conn.is_limited:
            raise RequestRefused(f"DCUtR from {peer} over a direct connection")
        refusal = self._limiter.admit(peer, loop_time())
        if refusal is not None:
            raise RequestRefused(f"DCUtR from {peer} refused: {refusal}")
        # A new exchange may overlap the previous one still punching (its dial may yet
        # get through); the limiter bounds how many.
        try:
            await self._answer(stream, peer)
        finally:
            self._limiter.release(peer)

    async def _answer(self, stream: MuxedStream, peer: PeerId) -> None:
        start = loop_time()
        machine = PunchResponder(self._our_addrs())
        async with _timeout(self.config.exchange_timeout, f"DCUtR exchange with {peer}"):
            out = machine.receive(await _recv(stream))
            assert isinstance(out, HolePunch)
            await _send(stream, out)
            plan = machine.receive(await _recv(stream))
        assert isinstance(plan, PunchPlan)
        attempt = 1 + sum(
            1 for e in self.history if e.peer == peer and e.role is Role.A and e.kind == "started"
        )
        self._emit(PunchEvent("started", peer, Role.A, attempt, 0.0))
        plan = attrs.evolve(plan, addrs=self._their_addrs(plan.addrs))
        direct = await self._punch(peer, plan) if plan.addrs else None
        relayed = stream.muxed_conn
        if direct is None:
            why = "no direct connection came up" if plan.addrs else "no address to punch"
            self._emit(PunchEvent("failed", peer, Role.A, attempt, loop_time() - start, why))
        else:
            self._succeeded(peer, Role.A, attempt, start, direct, relayed, None)

    # --- the punch ----------------------------------------------------------------------

    async def _punch(self, peer: PeerId, plan: PunchPlan) -> MuxedConnection | None:
        """Dial (and for ``B`` spray at QUIC addresses) until a direct connection to
        ``peer`` is up or :attr:`DCUtRConfig.punch_timeout` passes."""
        node = self._node()
        waiter = self._direct.setdefault(peer, asyncio.Event())
        waiter.clear()
        jobs: list[asyncio.Task[Any]] = []
        roles: contextlib.AbstractContextManager[None] = (
            node.inbound_as_initiator(plan.addrs, peer)
            if plan.role is Role.A
            else contextlib.nullcontext()
        )
        for addr in plan.addrs:
            transport = next(t for t in node.transports if t.can_dial(addr) and not t.limited)
            if plan.role is Role.B and isinstance(transport, DatagramPuncher):
                jobs.append(asyncio.ensure_future(self._spray(transport, addr)))
            else:
                jobs.append(
                    asyncio.ensure_future(
                        self._dial_quietly(peer, addr, initiator=plan.role is Role.A)
                    )
                )
        try:
            with roles:
                await self._wait_direct(peer, waiter, jobs)
        finally:
            for job in jobs:
                job.cancel()
            await asyncio.gather(*jobs, return_exceptions=True)
            if self._direct.get(peer) is waiter:
                del self._direct[peer]
        return self.direct_connection(peer)

    async def _wait_direct(
        self, peer: PeerId, waiter: asyncio.Event, jobs: list[asyncio.Task[Any]]
    ) -> None:
        try:
            async with asyncio.timeout(self.config.punch_timeout):
                while self.direct_connection(peer) is None:
                    settle: float | None = None
                    if all(j.done() for j in jobs):
                        # Our dials failed; the peer's may still be arriving at our listener.
                        settle = self.config.settle_time
                    wait = asyncio.ensure_future(waiter.wait())
                    watch = [wait] if settle is not None else [wait, *jobs]
                    try:
                        done, _ = await asyncio.wait(
                            watch, timeout=settle, return_when=asyncio.FIRST_COMPLETED
                        )
                        if settle is not None and not done:
                            break
                    finally:
                        wait.cancel()
                        await asyncio.gather(wait, return_exceptions=True)
        except TimeoutError:
            pass

    async def _dial_quietly(self, peer: PeerId, addr: Multiaddr, *, initiator: bool) -> None:
        try:
            await self._node().connect_direct(addr, peer, initiator=initiator)
        except (P2PError, OSError) as exc:
            log.debug("dcutr: dial of %s at %s failed: %s", peer, addr, exc)

    async def _dial_first(
        self, peer: PeerId, addrs: Sequence[Multiaddr], *, initiator: bool
    ) -> MuxedConnection | None:
        jobs = [
            asyncio.ensure_future(self._dial_quietly(peer, a, initiator=initiator)) for a in addrs
        ]
        try:
            pending = set(jobs)
            while pending and self.direct_connection(peer) is None:
                _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for job in jobs:
                job.cancel()
            await asyncio.gather(*jobs, return_exceptions=True)
        return self.direct_connection(peer)

    async def _spray(self, transport: DatagramPuncher, addr: Multiaddr) -> None:
        rng = self._random()
        low, high = self.config.spray_interval
        while True:
            transport.send_punch(addr, rng.randbytes(PUNCH_PACKET_SIZE))
            await asyncio.sleep(rng.uniform(low, high))

    def _succeeded(
        self,
        peer: PeerId,
        role: Role,
        attempt: int,
        start: float,
        direct: MuxedConnection,
        relayed: MuxedConnection,
        rtt: float | None,
    ) -> None:
        self.backoff.succeeded(peer)
        self._emit(
            PunchEvent(
                "succeeded", peer, role, attempt, loop_time() - start, rtt=rtt, connection=direct
            )
        )
        self._spawn(self._retire(relayed), "switchy-dcutr-retire")

    async def _retire(self, relayed: MuxedConnection) -> None:
        """Close the relayed connection after the grace period (its streams finish)."""
        await asyncio.sleep(self.config.grace_period)
        if not relayed.is_closed and self.direct_connection(relayed.remote_peer) is not None:
            with contextlib.suppress(P2PError, OSError):
                await relayed.close()


async def _send(stream: MuxedStream, msg: HolePunch) -> None:
    await stream.send_message(encode_holepunch(msg), max_size=MAX_MESSAGE_SIZE)


async def _recv(stream: MuxedStream) -> HolePunch:
    return decode_holepunch(await stream.recv_message(max_size=MAX_MESSAGE_SIZE))


async def _close_quietly(stream: MuxedStream) -> None:
    with contextlib.suppress(P2PError, OSError):
        await stream.close()


@contextlib.asynccontextmanager
async def _timeout(seconds: float, what: str) -> Any:
    try:
        async with asyncio.timeout(seconds):
            yield
    except TimeoutError:
        raise P2PTimeout(f"{what} timed out after {seconds:g}s") from None


def _forget(running: dict[PeerId, asyncio.Task[Any]], peer: PeerId, task: object) -> None:
    if running.get(peer) is task:
        del running[peer]
