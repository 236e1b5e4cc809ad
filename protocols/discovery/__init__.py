"""Discovery: find peers by name (registry, simulator name service) and on the local network (mDNS).

* :mod:`switchy.protocols.discovery.codec` — the ``/switchy/discovery/1.0.0`` wire format (sans-IO);
* :mod:`switchy.protocols.discovery.claims` — signed name claims;
* :mod:`switchy.protocols.discovery.registry` — the registry (:class:`RegistryService`);
* :mod:`switchy.protocols.discovery.client` — register, refresh, unregister, look up;
* :mod:`switchy.protocols.discovery.backends` — the backends a node is given as services
  (:class:`RegistryBackend`, :class:`SimNameBackend`; mDNS in
  :mod:`switchy.protocols.discovery.mdns`) and the functions that use them on a node:
  :func:`discover`, :func:`connect_by_name`, :func:`register_name`;
* :mod:`switchy.protocols.discovery.mdns` — local network discovery (libp2p mDNS), over
  :mod:`switchy.protocols.discovery.dns`, a small DNS message codec;
* :mod:`switchy.protocols.discovery.metrics` — requests counted and timed on the node.
"""

from __future__ import annotations

from switchy.protocols.discovery.backends import (
    DiscoveredPeer,
    DiscoveryBackend,
    RegistryBackend,
    SimNameBackend,
    connect_by_name,
    discover,
    discovery_backends,
    register_name,
)
from switchy.protocols.discovery.claims import NameClaim, open_name_claim, seal_name_claim
from switchy.protocols.discovery.codec import DISCOVERY_PROTOCOL, Status
from switchy.protocols.discovery.registry import NameRegistry, RegistryLimits, RegistryService

__all__ = [
    "DISCOVERY_PROTOCOL",
    "DiscoveredPeer",
    "DiscoveryBackend",
    "NameClaim",
    "NameRegistry",
    "RegistryBackend",
    "RegistryLimits",
    "RegistryService",
    "SimNameBackend",
    "Status",
    "connect_by_name",
    "discover",
    "discovery_backends",
    "open_name_claim",
    "register_name",
    "seal_name_claim",
]
