"""Automatic relays: a private node reserves on relays by itself and announces the circuits.

:class:`AutoRelay` watches the node's reachability (``node.reachability``, fed by
AutoNAT).  While it is ``private`` it keeps reservations on up to ``max_relays``
relays (default :data:`DEFAULT_MAX_RELAYS`): the configured static relays first
(its own ``relays`` and the :class:`~switchy.transports.relay.RelayTransport`'s),
then connected peers that announce the hop protocol (identify tells the peer
store), in a stable order.  Each reservation is a relay listener of the node
(``node.open_listener(".../p2p/<relay>/p2p-circuit")``), so its circuit
addresses are announced, and the listener renews it.  A relay that goes away
(disconnected, or no reservation for :data:`LOST_GRACE` seconds) is replaced;
a relay that refused is not asked again for :data:`FAILURE_BACKOFF` seconds.
Once the node is ``public`` every reservation is dropped; ``unknown`` keeps
what is held.  Timers run on the event loop (virtual time in the simulator).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from multiaddr import Multiaddr

from switchy.stack.addrbook import Reachability
from switchy.stack.addresses import parse_multiaddr, split_peer, with_peer
from switchy.stack.errors import InvalidConfiguration, P2PError
from switchy.stack.node import ConnectionEvent, Node, ProtocolService
from switchy.transports.relay.pb import HOP_PROTOCOL
from switchy.transports.relay.transport import (
    _CIRCUIT_MA,
    CIRCUIT,
    RelayListener,
    RelayTransport,
)

if TYPE_CHECKING:
    from switchy.stack.identity import PeerId

__all__ = [
    "CHECK_INTERVAL",
    "DEFAULT_MAX_RELAYS",
    "FAILURE_BACKOFF",
    "LOST_GRACE",
    "AutoRelay",
]

log = logging.getLogger(__name__)

#: Relays a private node reserves on by default.
DEFAULT_MAX_RELAYS: Final = 2
#: Seconds between checks when nothing happens (peers learned by identify are seen then).
CHECK_INTERVAL: Final = 30.0
#: A relay that refused or could not be reached is skipped for this long (seconds).
FAILURE_BACKOFF: Final = 60.0
#: A listener without a reservation for this long (its relay is unreachable) is replaced.
LOST_GRACE: Final = 10.0
#: Wait after a connection event before a check (identify tells us the peer's protocols).
SETTLE_DELAY: Final = 1.0


class AutoRelay(ProtocolService):
    """Reserves on relays while the node is private (see the module docstring).

    ``relays``: static relay addresses (each ending in ``/p2p/<relay>``), tried
    before discovered ones.  The node needs a
    :class:`~switchy.transports.relay.RelayTransport` (``default_node`` has one)
    and a reachability service (AutoNAT); ``always=True`` reserves whatever
    the reachability (for nodes known to be private).
    """

    def __init__(
        self,
        relays: Sequence[str | Multiaddr] = (),
        *,
        max_relays: int = DEFAULT_MAX_RELAYS,
        check_interval: float = CHECK_INTERVAL,
        failure_backoff: float = FAILURE_BACKOFF,
        lost_grace: float = LOST_GRACE,
        always: bool = False,
    ) -> None:
        if max_relays < 1:
            raise InvalidConfiguration(f"max_relays must be >= 1, got {max_relays}")
        if check_interval <= 0:
            raise InvalidConfiguration(f"check_interval must be > 0, got {check_interval}")
        self.static = [parse_multiaddr(a) for a in relays]
        for a in self.static:
            if split_peer(a)[1] is None:
                raise InvalidConfiguration(f"relay address {a} must end with /p2p/<relay id>")
        self.max_relays = max_relays
        self.check_interval = check_interval
        self.failure_backoff = failure_backoff
        self.lost_grace = lost_grace
        self.always = always
        self.node: Node | None = None
        self.transport: RelayTransport | None = None
        #: Our relay listeners, by relay.
        self.active: dict[PeerId, RelayListener] = {}
        self._failed: dict[PeerId, float] = {}
        self._lost_since: dict[PeerId, float] = {}
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    # --- wiring -------------------------------------------------------------------------

    def attach(self, node: Node) -> None:
        """Watch reachability and connections of ``node``."""
        self.node = node
        node.addresses.on_reachability_changed(lambda _old, _new: self._wake.set())
        node.on_connection_event(self._on_event)

    async def start(self) -> None:
        """Start the maintenance task."""
        node = self._node()
        found = [t for t in node.transports if isinstance(t, RelayTransport)]
        if not found:
            raise InvalidConfiguration("AutoRelay needs a RelayTransport in the node")
        self.transport = found[0]
        if self._task is None:
            self._task = asyncio.ensure_future(self._run())
            self._task.set_name("switchy-autorelay")

    async def stop(self) -> None:
        """Stop; the node closes the listeners."""
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            self._wake.set()
            await asyncio.wait([task])

    def _node(self) -> Node:
        if self.node is None:
            raise InvalidConfiguration("AutoRelay is not attached to a node")
        return self.node

    def _on_event(self, event: ConnectionEvent) -> None:
        if self._task is None:
            return
        if event.kind == "disconnected" and event.peer in self.active:
            self._wake.set()
        else:
            asyncio.get_running_loop().call_later(SETTLE_DELAY, self._wake.set)

    # --- state --------------------------------------------------------------------------

    @property
    def relays(self) -> list[PeerId]:
        """Relays we hold (or are keeping) a reservation on."""
        return list(self.active)

    @property
    def circuit_addrs(self) -> list[Multiaddr]:
        """Our circuit addresses through the relays held now."""
        return [a for lst in self.active.values() for a in lst.addrs]

    def wanted(self) -> bool:
        """Whether we should hold reservations now."""
        return self.always or self._node().reachability is Reachability.PRIVATE

    async def wait_relays(self, count: int) -> list[PeerId]:
        """Wait until reservations are held on ``count`` relays."""
        while sum(1 for lst in self.active.values() if lst.reservation) < count:
            changed = self._changed
            await changed.wait()
        return self.relays

    async def wait_released(self) -> None:
        """Wait until no reservation is held."""
        while self.active:
            await self._changed.wait()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # --- candidates ---------------------------------------------------------------------

    def candidates(self) -> list[Multiaddr]:
        """Relay addresses to try, static first, then connected hop peers (by peer id)."""
        node = self._node()
        assert self.transport is not None
        out: list[Multiaddr] = []
        seen: set[PeerId] = set()
        for a in [*self.static, *self.transport.relays]:
            peer = split_peer(a)[1]
            if peer is not None and peer not in seen and peer != node.peer_id:
                seen.add(peer)
                out.append(a)
        hop_peers = []
        for peer in node.connected_peers:
            if peer in seen or HOP_PROTOCOL not in node.peerstore.protocols(peer):
                continue
            direct = [c for c in node.connections(peer) if not c.is_limited]
            if direct:
                hop_peers.append((peer, direct[0]))
        for peer, conn in sorted(hop_peers, key=lambda pc: pc[0].to_bytes()):
            known = [
                a
                for a in node.peerstore.addrs(peer)
                if CIRCUIT not in str(a) and any(t.can_dial(a) for t in node.transports)
            ]
            base = conn.remote_addr if conn.is_initiator or not known else known[0]
            seen.add(peer)
            out.append(with_peer(base, peer))
        return out

    # --- maintenance --------------------------------------------------------------------

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                await self.reconcile()
            except Exception:
                log.exception("automatic relay check failed")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.check_interval):
                    await self._wake.wait()

    async def reconcile(self) -> None:
        """One check: drop what is not wanted or lost, reserve up to ``max_relays``."""
        node = self._node()
        loop = asyncio.get_running_loop()
        now = loop.time()
        if not self.wanted():
            if node.reachability is Reachability.PUBLIC:  # unknown keeps what is held
                for relay in list(self.active):
                    await self._drop(relay, "the node is public")
            return
        for relay, lst in list(self.active.items()):
            connected = any(not c.is_limited for c in node.connections(relay))
            if lst.reservation is not None and connected:
                self._lost_since.pop(relay, None)
                continue
            since = self._lost_since.setdefault(relay, now)
            if not connected or now - since >= self.lost_grace:
                await self._drop(relay, "the relay went away")
                self._failed[relay] = now
        for addr in self.candidates():
            if len(self.active) >= self.max_relays:
                break
            candidate = split_peer(addr)[1]
            assert candidate is not None
            if candidate in self.active:
                continue
            failed = self._failed.get(candidate)
            if failed is not None and now - failed < self.failure_backoff:
                continue
            await self._reserve(candidate, addr)

    async def _reserve(self, relay: PeerId, addr: Multiaddr) -> None:
        node = self._node()
        try:
            listener = await node.open_listener(addr.encapsulate(_CIRCUIT_MA))
        except (P2PError, OSError) as exc:
            log.info("relay %s refused or unreachable: %s", relay, exc)
            self._failed[relay] = asyncio.get_running_loop().time()
            return
        assert isinstance(listener, RelayListener)
        self.active[relay] = listener
        self._failed.pop(relay, None)
        log.info("reserved on relay %s: %s", relay, ", ".join(map(str, listener.addrs)))
        node.addresses.check()
        self._notify()

    async def _drop(self, relay: PeerId, why: str) -> None:
        listener = self.active.pop(relay, None)
        self._lost_since.pop(relay, None)
        if listener is not None:
            log.info("dropping the reservation on relay %s: %s", relay, why)
            await self._node().remove_listener(listener)
            self._notify()

    def __repr__(self) -> str:
        return f"<AutoRelay {len(self.active)}/{self.max_relays}>"
