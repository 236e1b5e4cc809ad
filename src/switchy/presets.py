"""Presets: ready-made nodes composed from the layers (the one place that knows them all).

The core (:mod:`switchy.stack`) knows no concrete transport or protocol; this module,
above the core, the transports and the protocols, puts the everyday node together.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from switchy.stack.config import NetworkConfig
from switchy.stack.node import Node, ProtocolService
from switchy.stack.transport import Transport

# The transports and services are imported where a node is put together, not here:
# ``from switchy import default_node`` stays cheap (QUIC alone is aioquic and its TLS,
# tens of milliseconds), and a program pays for them once, when it makes its first node.

__all__ = [
    "default_node",
    "default_services",
    "default_transports",
    "listen_with_relays",
    "relay_client",
]


def default_transports(config: NetworkConfig) -> list[Transport]:
    """TCP (Noise + yamux) then QUIC-v1: the order in which a peer's addresses are dialed.

    TCP comes first because it carries bulk data far faster here: measured with
    ``python -m bench --only quic`` (one stream, two processes, loopback, the same run)
    QUIC moved 0.03x what TCP did with 1,200-byte packets and 0.21x with the 16,000-byte
    ones loopback now uses: aioquic spends Python time on every packet, the TCP stack on
    every 256 KiB write.  QUIC stays the
    transport of hole punching (DCUtR dials every address of a plan at once, whatever
    this order) and is dialed after the stagger when TCP does not answer.  Pass
    ``transports=[QuicTransport(), TcpTransport()]`` to prefer QUIC.
    """
    from switchy.transports.quic import QuicTransport
    from switchy.transports.tcp import TcpTransport

    return [TcpTransport(config), QuicTransport(config)]


def default_services() -> list[ProtocolService]:
    """Ping, identify (and push), echo, perf, AutoNAT (v2 and v1, client and server)."""
    from switchy.protocols.autonat import AutoNATService
    from switchy.protocols.echo import EchoService
    from switchy.protocols.identify import IdentifyService
    from switchy.protocols.perf import PerfService
    from switchy.protocols.ping import PingService

    return [PingService(), IdentifyService(), EchoService(), PerfService(), AutoNATService()]


def default_node(
    *,
    transports: Sequence[Transport] | None = None,
    services: Iterable[ProtocolService] = (),
    config: NetworkConfig | None = None,
    hole_punching: bool | None = None,
    **options: Any,
) -> Node:
    """A node with TCP and QUIC (dialed in that order), ping, identify, echo, perf,
    AutoNAT, the circuit relay client, automatic relays
    (:class:`~switchy.transports.relay.AutoRelay`: reservations while AutoNAT finds the
    node private) and hole punching (DCUtR).  ``node.reachability`` tells what AutoNAT
    found.

    ``transports`` replaces TCP + QUIC (:func:`default_transports`); ``services`` are
    added after the default ones (:func:`default_services`), and one of the same class as a
    default one (e.g. an ``AutoNATService`` or ``IdentifyService`` you configured) replaces
    it.  The relay client
    (:class:`~switchy.transports.relay.RelayTransport`) dials and listens on
    ``/p2p-circuit`` addresses; pass your own in ``services`` to configure it (e.g. with
    fallback relays), and an ``AutoRelay`` to configure automatic relays.

    Hole punching (:class:`~switchy.protocols.dcutr.DCUtRService`: a relayed connection
    the node accepts becomes direct) is on unless ``hole_punching`` is False or, when it
    is None, ``config.hole_punching`` is (``SWITCHY_HOLE_PUNCHING=0``); a
    ``DCUtRService`` in ``services`` replaces the default one.  Every other
    keyword (``key``, ``listen``, ``handlers``, ``entropy``, ...) goes to
    :class:`~switchy.stack.node.Node` as it is.

    Raises what :class:`~switchy.stack.node.Node` raises
    (:class:`~switchy.stack.errors.InvalidConfiguration`).
    """
    from switchy.protocols.dcutr import DCUtRService
    from switchy.transports.relay import AutoRelay, RelayTransport

    config = config or NetworkConfig()
    chosen = list(default_transports(config) if transports is None else transports)
    given = list(services)
    kinds = {type(s) for s in given}
    all_services = [*(s for s in default_services() if type(s) not in kinds), *given]
    if not any(isinstance(s, RelayTransport) for s in all_services):
        all_services.append(RelayTransport())
    if not any(isinstance(s, AutoRelay) for s in all_services):
        all_services.append(AutoRelay())
    punch = config.hole_punching if hole_punching is None else hole_punching
    if punch and not any(isinstance(s, DCUtRService) for s in all_services):
        all_services.append(DCUtRService())
    return Node(transports=chosen, services=all_services, config=config, **options)


def relay_client(relays: Sequence[Any]) -> ProtocolService:
    """The circuit relay client of a node that listens through ``relays`` (multiaddrs
    ending in ``/p2p/<relay id>``): give it to :func:`default_node` in ``services``,
    then call :func:`listen_with_relays`."""
    from switchy.transports.relay import RelayTransport

    return RelayTransport(list(relays))


async def listen_with_relays(node: Node, addrs: Sequence[Any], relays: Sequence[Any]) -> None:
    """Listen on ``addrs`` (if any) and once on ``/p2p-circuit`` per relay: one
    reservation each, so that ``node.full_addrs`` carries a circuit address through
    every relay (the node needs :func:`relay_client` of ``relays``)."""
    if addrs:
        await node.listen(*addrs)
    for _ in relays:  # each listen takes a relay not yet used; each falls back to the others
        await node.listen("/p2p-circuit")
