"""Multiaddrs of iroh endpoints, and the mapping between peer ids and iroh endpoint ids.

An iroh endpoint id *is* an Ed25519 public key (32 bytes; iroh writes it as 64 hex
digits), and so is the libp2p peer id of an Ed25519 identity (the identity multihash of
the protobuf-encoded public key, ``12D3KooW…``).  One switchy key therefore has both, and
each converts to the other without loss: :func:`peer_id_of`, :func:`endpoint_id_of`.

Address form (specs/iroh-transport.md)::

    [/ip4|ip6/<addr>/udp/<port>][/iroh-relay/<url, %-escaped>]/iroh[/p2p/<peer id>]

``/iroh`` marks the transport (like ``/quic-v1``); the endpoint id travels as the
``/p2p/`` peer id, as on every libp2p address.  An IP part is one direct address of the
endpoint, ``/iroh-relay/…`` its home relay; ``/iroh/p2p/<id>`` alone dials by id (what the
endpoint already knows of it).  To listen: ``/ip4/127.0.0.1/udp/0/iroh``.

The two protocol names are registered in the ``multiaddr`` package's table when this module
is imported, in the multicodec private-use range (``iroh`` 0x3f1200, no value;
``iroh-relay`` 0x3f1201, a %-escaped UTF-8 string): they are not in the multicodec table,
so only switchy parses them.
"""

from __future__ import annotations

import contextlib
from typing import Final

import attrs
from multiaddr import Multiaddr
from multiaddr import protocols as ma_protocols

from switchy.stack.addresses import split_peer
from switchy.stack.errors import InvalidConfiguration, InvalidPeerId
from switchy.stack.identity import PeerId, PublicKey

__all__ = [
    "IROH",
    "IROH_CODE",
    "IROH_RELAY",
    "IROH_RELAY_CODE",
    "IrohAddr",
    "endpoint_id_of",
    "iroh_multiaddr",
    "parse_iroh_addr",
    "peer_id_of",
    "register_protocols",
]

#: Multiaddr protocol marking an iroh endpoint (no value).
IROH: Final = "iroh"
#: Multiaddr protocol carrying an iroh relay URL (%-escaped).
IROH_RELAY: Final = "iroh-relay"
#: Their codes, in the multicodec private-use range (0x300000-0x3fffff).
IROH_CODE: Final = 0x3F1200
IROH_RELAY_CODE: Final = 0x3F1201
#: libp2p's key type number of Ed25519 (the only key an iroh endpoint can have).
_ED25519: Final = 1


def register_protocols() -> None:
    """Add ``iroh`` and ``iroh-relay`` to the multiaddr package's table (idempotent)."""
    registry = ma_protocols.REGISTRY
    with contextlib.suppress(Exception):
        registry.find_by_name(IROH)
        return
    # The package locks its table; adding two entries is what its API offers once unlocked.
    was_locked = registry.locked
    registry._locked = False
    try:
        registry.add(ma_protocols.Protocol(IROH_CODE, IROH, None))
        registry.add(ma_protocols.Protocol(IROH_RELAY_CODE, IROH_RELAY, "http_path"))
    finally:
        registry._locked = was_locked


register_protocols()


def peer_id_of(endpoint_id: bytes) -> PeerId:
    """The libp2p peer id of the iroh endpoint id ``endpoint_id`` (32 bytes)."""
    if len(endpoint_id) != 32:
        raise InvalidPeerId(f"an iroh endpoint id has 32 bytes, got {len(endpoint_id)}")
    return PublicKey(_ED25519, bytes(endpoint_id)).to_peer_id()


def endpoint_id_of(peer: PeerId) -> bytes:
    """The iroh endpoint id (32 bytes) of ``peer``; InvalidPeerId unless an Ed25519 key."""
    key = peer.extract_public_key()
    if key is None or key.key_type != _ED25519 or len(key.data) != 32:
        raise InvalidPeerId(f"peer {peer} is not an Ed25519 key: it has no iroh endpoint id")
    return key.data


@attrs.frozen
class IrohAddr:
    """A parsed iroh multiaddr: who, and where to try."""

    #: The endpoint (``None`` when the address names no ``/p2p/`` peer).
    peer: PeerId | None
    #: ``host:port`` direct address, if the address had an IP part.
    direct: str | None
    #: Home relay URL, if given.
    relay_url: str | None


def parse_iroh_addr(addr: Multiaddr) -> IrohAddr | None:
    """The parts of ``addr`` if it is an iroh address (module docstring), else ``None``."""
    try:
        base, peer = split_peer(addr)
        items = list(base.items())
    except Exception:  # the multiaddr package raises several types for bad input
        return None
    if not items or items[-1][0].name != IROH:
        return None
    items = items[:-1]
    relay: str | None = None
    if items and items[-1][0].name == IROH_RELAY:
        from urllib.parse import unquote

        relay = unquote(str(items[-1][1]))
        items = items[:-1]
    direct: str | None = None
    if items:
        if len(items) != 2 or items[0][0].name not in ("ip4", "ip6") or items[1][0].name != "udp":
            return None
        host, port = str(items[0][1]), str(items[1][1])
        direct = f"[{host}]:{port}" if items[0][0].name == "ip6" else f"{host}:{port}"
    return IrohAddr(peer, direct, relay)


def iroh_multiaddr(
    sockaddr: str | None, *, peer: PeerId | None = None, relay_url: str | None = None
) -> Multiaddr:
    """The multiaddr of an endpoint at ``sockaddr`` (``host:port``, ``[v6]:port``; or None)."""
    parts = ""
    if sockaddr is not None:
        host, sep, port = sockaddr.rpartition(":")
        if not sep or not port.isdigit():
            raise InvalidConfiguration(f"not a host:port socket address: {sockaddr!r}")
        if host.startswith("["):
            parts = f"/ip6/{host.strip('[]').split('%')[0]}/udp/{port}"
        else:
            parts = f"/ip4/{host}/udp/{port}"
    if relay_url is not None:
        from urllib.parse import quote

        parts += f"/{IROH_RELAY}/{quote(relay_url, safe='')}"
    parts += f"/{IROH}"
    if peer is not None:
        parts += f"/p2p/{peer}"
    return Multiaddr(parts)
