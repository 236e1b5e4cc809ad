"""iroh as a switchy transport (``…/udp/N/iroh/p2p/<id>``; optional extra ``switchy-p2p[iroh]``).

iroh connections are QUIC with TLS on the endpoints' Ed25519 keys and NAT traversal of
their own; switchy runs its whole stack over their bi-streams (multistream-select on ALPN
``/switchy/iroh/1``, then any protocol).  The node's key is the endpoint's secret key, so a
peer id and an endpoint id name the same key.

* :mod:`switchy.transports.iroh.address` — the multiaddr form and the peer id / endpoint id
  mapping (importable without the ``iroh`` package);
* :mod:`switchy.transports.iroh.ffi` — the bindings' sharp edges: loading, event loop
  registration, error mapping, the fast write path, closing endpoints at exit;
* :mod:`switchy.transports.iroh.connection` — :class:`IrohConnection`, :class:`IrohStream`;
* :mod:`switchy.transports.iroh.transport` — :class:`IrohTransport`, :class:`IrohListener`;
* :mod:`switchy.transports.iroh.harness` — the conformance harnesses (transport, muxer, node).
"""

from switchy.transports.iroh.address import (
    IrohAddr,
    endpoint_id_of,
    iroh_multiaddr,
    parse_iroh_addr,
    peer_id_of,
)
from switchy.transports.iroh.connection import IrohConnection, IrohStream
from switchy.transports.iroh.ffi import iroh_available
from switchy.transports.iroh.transport import ALPN, IrohListener, IrohTransport

__all__ = [
    "ALPN",
    "IrohAddr",
    "IrohConnection",
    "IrohListener",
    "IrohStream",
    "IrohTransport",
    "endpoint_id_of",
    "iroh_available",
    "iroh_multiaddr",
    "parse_iroh_addr",
    "peer_id_of",
]
