"""Discovery: find peers by name (registry, simulator name service) and on the local network (mDNS).

* :mod:`switchy.protocols.discovery.codec` — the ``/switchy/discovery/1.0.0`` wire format (sans-IO);
* :mod:`switchy.protocols.discovery.claims` — signed name claims;
* :mod:`switchy.protocols.discovery.registry` — the registry (:class:`RegistryService`);
* :mod:`switchy.protocols.discovery.client` — register, refresh, unregister, look up;
* :mod:`switchy.protocols.discovery.backends` — discovery backends (registry, simulator
  names) and the node-level register/resolve/connect-by-name built on them;
* :mod:`switchy.protocols.discovery.mdns` — local network discovery (libp2p mDNS), over
  :mod:`switchy.protocols.discovery.dns`, a small DNS message codec.
"""

from __future__ import annotations

from switchy.protocols.discovery.claims import NameClaim, open_name_claim, seal_name_claim
from switchy.protocols.discovery.codec import DISCOVERY_PROTOCOL, Status
from switchy.protocols.discovery.registry import NameRegistry, RegistryLimits, RegistryService

__all__ = [
    "DISCOVERY_PROTOCOL",
    "NameClaim",
    "NameRegistry",
    "RegistryLimits",
    "RegistryService",
    "Status",
    "open_name_claim",
    "seal_name_claim",
]
