"""Discovery backends and the node-level operations built on them.

A backend is a :class:`~switchy.stack.node.ProtocolService` that can resolve a name
(and maybe register one).  A node's backends are the discovery services in
its ``services``, in order; :func:`discover` tries them one after the other,
each within a timeout, and :class:`~switchy.stack.errors.DiscoveryFailed` lists what
each one said.

* :class:`RegistryBackend` — registries speaking ``/switchy/discovery/1.0.0``;
  verified claims; registrations are kept alive until the node closes.
* :class:`SimNameBackend` — the simulator's :class:`~switchy.transports.sim.NameService`
  (lookups take the simulated discovery delay; nothing is signed).
* :class:`~switchy.protocols.discovery.mdns.MdnsService` — the local network (mDNS).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

import attrs
from multiaddr import Multiaddr

from switchy.protocols.discovery.claims import seal_name_claim
from switchy.protocols.discovery.client import lookup, register, unregister
from switchy.protocols.discovery.codec import DISCOVERY_PROTOCOL, validate_name
from switchy.stack.addresses import parse_multiaddr, split_peer
from switchy.stack.errors import (
    DiscoveryFailed,
    InvalidConfiguration,
    P2PError,
    SerializationError,
)
from switchy.stack.node import Node, ProtocolService

if TYPE_CHECKING:
    from switchy.stack.identity import PeerId
    from switchy.stack.mux import MuxedConnection
    from switchy.transports.sim.names import NameService

__all__ = [
    "DEFAULT_REGISTRATION_TTL",
    "DiscoveredPeer",
    "DiscoveryBackend",
    "RegistryBackend",
    "SimNameBackend",
    "connect_by_name",
    "discover",
    "discovery_backends",
    "register_name",
]

log = logging.getLogger(__name__)

#: TTL asked for when registering a name with a registry (renewed at half of what is granted).
DEFAULT_REGISTRATION_TTL: Final = 600
#: Most of our addresses put in one name claim (a claim is at most 4 KiB).
MAX_CLAIM_ADDRS: Final = 16
#: Time given to unregistering names when a node closes.
UNREGISTER_ON_CLOSE_TIMEOUT: Final = 2.0


@attrs.frozen
class DiscoveredPeer:
    """What a name resolved to."""

    name: str
    peer_id: PeerId
    addrs: tuple[Multiaddr, ...]
    #: The backend that answered (its :attr:`DiscoveryBackend.label`).
    source: str
    #: Whether a signature of the peer binds the name to it (registry claims).
    verified: bool


class DiscoveryBackend(ProtocolService):
    """A way to resolve names to peers; plug it into a node's ``services``."""

    #: Whether :meth:`register` is supported.
    can_register: bool = False

    def __init__(self) -> None:
        self.node: Node | None = None

    def attach(self, node: Node) -> None:
        """Remember the node (subclasses may also register protocol handlers)."""
        self.node = node

    @property
    def label(self) -> str:
        """A short description for messages (``registry /ip4/…``)."""
        return type(self).__name__

    def _node(self) -> Node:
        if self.node is None:
            raise InvalidConfiguration(f"{self.label} is not attached to a node")
        return self.node

    @abc.abstractmethod
    async def resolve(self, name: str) -> DiscoveredPeer:
        """Resolve ``name``; raise :class:`~switchy.stack.errors.DiscoveryFailed` if unknown."""

    async def register(self, name: str) -> None:
        """Make ``name`` resolve to this node (only where :attr:`can_register`)."""
        raise InvalidConfiguration(f"{self.label} cannot register names")


def discovery_backends(node: Node) -> list[DiscoveryBackend]:
    """The node's discovery backends, in the order of its services."""
    return [s for s in node.services if isinstance(s, DiscoveryBackend)]


async def discover(node: Node, name: str, *, timeout: float | None = None) -> DiscoveredPeer:
    """Resolve ``name`` with each backend in turn, each within ``timeout``.

    ``timeout`` defaults to ``node.config.discovery_timeout``.  Raises
    :class:`~switchy.stack.errors.DiscoveryFailed` listing what every backend said.
    """
    try:
        validate_name(name)
    except SerializationError as exc:
        raise DiscoveryFailed(f"cannot resolve {name!r}: {exc}") from None
    limit = node.config.discovery_timeout if timeout is None else timeout
    backends = discovery_backends(node)
    if not backends:
        raise DiscoveryFailed(f"cannot resolve {name!r}: no discovery backend is configured")
    tried: list[str] = []
    for backend in backends:
        try:
            async with asyncio.timeout(limit):
                found = await backend.resolve(name)
        except (P2PError, OSError) as exc:  # OSError includes the TimeoutError of the deadline
            reason = str(exc) or f"no answer within {limit:g} s"
            tried.append(f"{backend.label}: {reason}")
            continue
        if found.peer_id == node.peer_id:
            log.debug("%r resolves to ourselves via %s", name, backend.label)
        return found
    raise DiscoveryFailed(f"could not resolve {name!r}; tried " + "; ".join(tried), tried=tried)


async def connect_by_name(
    node: Node, name: str, *, timeout: float | None = None
) -> MuxedConnection:
    """Resolve ``name`` and connect to the peer it names (its id is authenticated on connect)."""
    found = await discover(node, name, timeout=timeout)
    if found.addrs:
        node.peerstore.add_addrs(found.peer_id, list(found.addrs))
    return await node.connect(found.peer_id)


async def register_name(node: Node, name: str) -> list[str]:
    """Register ``name`` for ``node`` with every backend that can; the labels of those that did.

    A backend that fails is logged if another succeeded.  When all fail, the
    only backend's error is raised as it is, several are summed up in a
    :class:`~switchy.stack.errors.DiscoveryFailed`.  :class:`InvalidConfiguration`
    when no backend can register names.
    """
    validate_name(name)
    backends = [b for b in discovery_backends(node) if b.can_register]
    if not backends:
        raise InvalidConfiguration(
            f"cannot register {name!r}: no configured discovery backend registers names"
        )
    done: list[str] = []
    errors: list[tuple[DiscoveryBackend, P2PError]] = []
    for backend in backends:
        try:
            await backend.register(name)
        except P2PError as exc:
            errors.append((backend, exc))
            continue
        done.append(backend.label)
    if not done:
        if len(errors) == 1:
            raise errors[0][1]
        tried = [f"{b.label}: {e}" for b, e in errors]
        raise DiscoveryFailed(
            f"could not register {name!r}; tried " + "; ".join(tried), tried=tried
        )
    for backend, error in errors:
        log.warning("registering %r with %s failed: %s", name, backend.label, error)
    return done


class RegistryBackend(DiscoveryBackend):
    """Names held by one or more registries (``/switchy/discovery/1.0.0``).

    Lookups ask each registry in order and verify the claim returned.
    :meth:`register` registers with every registry that accepts, then keeps
    the registration alive (re-registering with fresh addresses at half the
    granted TTL) until the node closes, when it unregisters.
    """

    service_name = "discovery"
    service_protocols = (DISCOVERY_PROTOCOL,)

    can_register = True

    def __init__(
        self, registries: Iterable[str | Multiaddr], *, ttl: int = DEFAULT_REGISTRATION_TTL
    ) -> None:
        super().__init__()
        self.registries = [parse_multiaddr(r) for r in registries]
        if not self.registries:
            raise InvalidConfiguration("a registry backend needs at least one registry address")
        self.ttl = ttl
        self._seq = 0
        self._registered: dict[tuple[str, Multiaddr], asyncio.Task[None]] = {}

    @property
    def label(self) -> str:
        """``registry`` and the registries' addresses."""
        return "registry " + ", ".join(str(r) for r in self.registries)

    async def resolve(self, name: str) -> DiscoveredPeer:
        """Look ``name`` up at each registry in turn; the first verified claim wins."""
        node = self._node()
        errors: list[str] = []
        for registry in self.registries:
            try:
                claim = await lookup(node, registry, name)
            except (P2PError, OSError) as exc:
                errors.append(f"{registry}: {exc}" if len(self.registries) > 1 else str(exc))
                continue
            return DiscoveredPeer(name, claim.peer_id, claim.addrs, f"registry {registry}", True)
        raise DiscoveryFailed("; ".join(errors))

    def _claim(self, name: str) -> bytes:
        node = self._node()
        self._seq = max(self._seq + 1, time.time_ns())
        addrs = tuple(split_peer(a)[0] for a in node.announced_addrs[:MAX_CLAIM_ADDRS])
        return seal_name_claim(node.key, name, addrs, self._seq)

    async def register(self, name: str) -> None:
        """Register ``name`` with every registry; raise if none accepted it."""
        node = self._node()
        errors: list[P2PError] = []
        for registry in self.registries:
            try:
                granted = await register(node, registry, name, self.ttl, self._claim(name))
            except P2PError as exc:
                errors.append(exc)
                continue
            key = (name, registry)
            old = self._registered.pop(key, None)
            if old is not None:
                old.cancel()
            task = asyncio.ensure_future(self._keep_alive(name, registry, granted))
            task.set_name(f"switchy-discovery-refresh-{name}")
            self._registered[key] = task
        if errors and len(errors) < len(self.registries):
            for error in errors:
                log.warning("registering %r: %s", name, error)
        if len(errors) == len(self.registries):
            if len(errors) == 1:
                raise errors[0]
            raise DiscoveryFailed(
                f"no registry accepted {name!r}: " + "; ".join(map(str, errors)),
                tried=[str(e) for e in errors],
            )

    async def _keep_alive(self, name: str, registry: Multiaddr, granted: int) -> None:
        node = self._node()
        delay = max(1.0, granted / 2)
        while True:
            await asyncio.sleep(delay)
            try:
                granted = await register(node, registry, name, self.ttl, self._claim(name))
                delay = max(1.0, granted / 2)
            except P2PError as exc:
                log.warning("renewing %r at %s failed: %s", name, registry, exc)
                delay = max(1.0, granted / 10)

    async def unregister(self, name: str) -> None:
        """Stop renewing ``name`` and remove it from every registry that holds it for us."""
        node = self._node()
        for (n, registry), task in list(self._registered.items()):
            if n != name:
                continue
            task.cancel()
            del self._registered[n, registry]
            with contextlib.suppress(P2PError, OSError):
                await unregister(node, registry, name)

    async def stop(self) -> None:
        """Stop renewals; unregister our names (best effort, briefly)."""
        names = {n for n, _ in self._registered}
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(UNREGISTER_ON_CLOSE_TIMEOUT):
                for name in names:
                    await self.unregister(name)
        for task in self._registered.values():
            task.cancel()
        self._registered.clear()


class SimNameBackend(DiscoveryBackend):
    """The simulator's name service: lookups take its discovery delay in virtual time.

    Names are not signed (the name service is part of the simulated world and
    trusted), not owned (a later registration replaces an earlier one) and do
    not expire.
    """

    can_register = True

    def __init__(self, names: NameService) -> None:
        super().__init__()
        self.names = names

    @property
    def label(self) -> str:
        """``simulated name service``."""
        return "simulated name service"

    async def resolve(self, name: str) -> DiscoveredPeer:
        """Ask the name service (after the configured discovery delay)."""
        record = await self.names.lookup(name)
        return DiscoveredPeer(name, record.peer, record.addrs, self.label, False)

    async def register(self, name: str) -> None:
        """Make ``name`` resolve to this node's id and listen addresses."""
        node = self._node()
        self.names.register(name, node.peer_id, node.announced_addrs)
