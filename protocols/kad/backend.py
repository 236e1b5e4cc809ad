"""``DhtBackend``: names through the DHT, for ``register_name`` / ``connect_by_name``.

A name is stored as a signed name claim (:mod:`switchy.protocols.discovery.claims`)
under :func:`~switchy.protocols.kad.records.name_key`; DHT servers keep the
claim of the first peer to claim a name until it expires, and take only that
peer's later claims.  Resolving verifies the claim again: a name resolves
only to the peer that signed it.
"""

from __future__ import annotations

import time

from switchy.protocols.discovery.backends import MAX_CLAIM_ADDRS, DiscoveredPeer, DiscoveryBackend
from switchy.protocols.discovery.claims import open_name_claim, seal_name_claim
from switchy.protocols.kad.records import name_key
from switchy.protocols.kad.service import KadDHT
from switchy.stack.addresses import split_peer
from switchy.stack.errors import DiscoveryFailed, InvalidConfiguration, P2PError

__all__ = ["DhtBackend"]


class DhtBackend(DiscoveryBackend):
    """Resolve and register names in the node's :class:`KadDHT` (or the one given)."""

    can_register = True

    def __init__(self, dht: KadDHT | None = None) -> None:
        super().__init__()
        self._dht = dht
        self._seq = 0

    @property
    def label(self) -> str:
        """``DHT``."""
        return "DHT"

    def _kad(self) -> KadDHT:
        if self._dht is None:
            node = self._node()
            self._dht = next((s for s in node.services if isinstance(s, KadDHT)), None)
        if self._dht is None:
            raise InvalidConfiguration("DhtBackend needs a KadDHT among the node's services")
        return self._dht

    async def resolve(self, name: str) -> DiscoveredPeer:
        """The peer holding ``name`` in the DHT, verified."""
        try:
            value = await self._kad().get_value(name_key(name))
            claim = open_name_claim(value, expected_name=name)
        except P2PError as exc:
            raise DiscoveryFailed(f"DHT: {exc}") from None
        self._node().peerstore.add_addrs(claim.peer_id, list(claim.addrs))
        return DiscoveredPeer(name, claim.peer_id, claim.addrs, "DHT", True)

    async def register(self, name: str) -> None:
        """Claim ``name`` for this node in the DHT (republished with the DHT's records).

        Raises :class:`DiscoveryFailed` when no DHT server took the claim (another peer
        holds the name, or no server is reachable).
        """
        node = self._node()
        self._seq = max(self._seq + 1, time.time_ns())
        addrs = tuple(split_peer(a)[0] for a in node.listen_addrs[:MAX_CLAIM_ADDRS])
        claim = seal_name_claim(node.key, name, addrs, self._seq)
        stored = await self._kad().put_value(name_key(name), claim)
        if stored == 0:
            raise DiscoveryFailed(f"no DHT server took the claim of {name!r} (held by another?)")
