"""Transport interfaces: what a transport (TCP, QUIC, relay, simulator) must provide.

A transport dials and listens on multiaddrs.  It produces either a raw
:class:`~switchy.stack.stream.Connection`, which the upgrader secures and
multiplexes, or a ready :class:`~switchy.stack.mux.MuxedConnection` for transports
that bring their own security and streams (QUIC).
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from multiaddr import Multiaddr

if TYPE_CHECKING:
    from switchy.stack.config import NetworkConfig
    from switchy.stack.identity import KeyPair, PeerId
    from switchy.stack.mux import MuxedConnection
    from switchy.stack.stream import Connection

__all__ = ["ConnectionHandler", "Listener", "Transport"]

#: Called by a listener for each accepted connection.
ConnectionHandler = Callable[["Connection | MuxedConnection"], Awaitable[None]]


class Listener(abc.ABC):
    """A bound listening endpoint of a transport."""

    @property
    @abc.abstractmethod
    def addrs(self) -> list[Multiaddr]:
        """The concrete addresses this listener accepts on (port 0 resolved)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Stop accepting.  Connections already accepted stay open."""


class Transport(abc.ABC):
    """Dials and listens on the multiaddrs it understands."""

    #: A short name for logs and the CLI (``tcp``, ``quic``, ``sim``).
    name: str = "transport"
    #: True when this transport's connections are limited (relayed): a node
    #: holding only such a connection to a peer still dials a direct address.
    limited: bool = False

    def bind(self, key: KeyPair, config: NetworkConfig) -> None:  # noqa: B027
        """Called once by the node before use; transports that need the key keep it."""

    async def shutdown(self) -> None:  # noqa: B027
        """Called once by the node at the end of its ``close``: release what ``listen`` and
        ``dial`` opened that outlives their connections (an iroh endpoint).  Default: nothing."""

    def observer_group(self, addr: Multiaddr) -> str | None:
        """Who ``addr`` (a peer's address on one of our connections) is, as an observer of
        our addresses: peers in one group count once (default: the IPv4 address, or the
        IPv6 /56, of an IP address; ``None`` for other addresses)."""
        from switchy.stack.addrbook import ip_observer_group

        try:
            first = next(iter(addr.items()), None)
        except Exception:  # the multiaddr package raises several types for bad input
            return None
        if first is None or first[0].name not in ("ip4", "ip6"):
            return None
        return ip_observer_group(str(first[1]))

    @abc.abstractmethod
    def can_dial(self, addr: Multiaddr) -> bool:
        """Whether :meth:`dial` understands ``addr`` (a trailing ``/p2p/…`` is allowed)."""

    @abc.abstractmethod
    def can_listen(self, addr: Multiaddr) -> bool:
        """Whether :meth:`listen` understands ``addr``."""

    @abc.abstractmethod
    async def dial(
        self, addr: Multiaddr, *, remote_peer: PeerId | None = None
    ) -> Connection | MuxedConnection:
        """Connect to ``addr``; raise :class:`~switchy.stack.errors.ConnectionFailed` on failure."""

    @abc.abstractmethod
    async def listen(self, addr: Multiaddr, handler: ConnectionHandler) -> Listener:
        """Start accepting on ``addr``, calling ``handler`` for each new connection."""
