"""What a node knows about other peers: addresses, protocols, keys, observed addresses."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs
from multiaddr import Multiaddr

from switchy.stack.identity import PeerId, PublicKey

if TYPE_CHECKING:
    from switchy.stack.envelope import PeerRecord

__all__ = ["MAX_ADDRS_PER_PEER", "MAX_PEERS", "MAX_PROTOCOLS_PER_PEER", "PeerInfo", "PeerStore"]

#: Peers with a record kept at most; past it the least recently used records of peers the
#: store may forget (not connected) go first.  Without a bound, a stream of fresh
#: identities (churn, or an attacker) grew the store, and the node's memory, for good.
MAX_PEERS = 4096

#: Addresses kept per peer; older ones are dropped first.
MAX_ADDRS_PER_PEER = 64
#: Protocol ids kept per peer.
MAX_PROTOCOLS_PER_PEER = 256
#: Our own addresses as observed by others, kept at most.
MAX_OBSERVED_ADDRS = 32


@attrs.define
class PeerInfo:
    """Everything known about one peer."""

    peer_id: PeerId
    addrs: list[Multiaddr] = attrs.field(factory=list)
    protocols: list[str] = attrs.field(factory=list)
    public_key: PublicKey | None = None
    agent_version: str | None = None
    protocol_version: str | None = None
    #: The newest signed peer record (RFC 0003) the peer sent us, verified.
    peer_record: PeerRecord | None = None
    #: The envelope of :attr:`peer_record` as received (to pass on, still verifiable).
    signed_peer_record: bytes | None = None


class PeerStore:
    """An in-memory peer store with bounded per-peer lists and a bounded number of peers.

    ``max_peers`` records are kept at most; when a new peer would pass it, the least
    recently used records go first, except those of peers ``keep(peer)`` says to keep (the
    node keeps its connected peers).  Should every record be kept, the store grows past
    ``max_peers`` rather than forget a connected peer.
    """

    def __init__(
        self, max_peers: int = MAX_PEERS, keep: Callable[[PeerId], bool] | None = None
    ) -> None:
        self._peers: dict[PeerId, PeerInfo] = {}
        self._observed: list[Multiaddr] = []
        self._max_peers = max_peers
        self._keep = keep

    def get(self, peer: PeerId) -> PeerInfo:
        """The record of ``peer`` (created empty if unknown); marks it recently used."""
        peers = self._peers
        info = peers.pop(peer, None)
        if info is None:
            info = PeerInfo(peer)
            if len(peers) >= self._max_peers:
                self._forget_oldest()
        peers[peer] = info
        return info

    def _forget_oldest(self) -> None:
        """Drop the least recently used record the node may forget, if there is one."""
        keep = self._keep
        for old in self._peers:
            if keep is None or not keep(old):
                del self._peers[old]
                return

    def __contains__(self, peer: object) -> bool:
        return peer in self._peers

    def peers(self) -> list[PeerId]:
        """All peers with a record."""
        return list(self._peers)

    def add_addrs(self, peer: PeerId, addrs: list[Multiaddr]) -> None:
        """Remember addresses of ``peer`` (most recent first, bounded)."""
        info = self.get(peer)
        for addr in addrs:
            if addr in info.addrs:
                info.addrs.remove(addr)
            info.addrs.insert(0, addr)
        del info.addrs[MAX_ADDRS_PER_PEER:]

    def addrs(self, peer: PeerId) -> list[Multiaddr]:
        """Known addresses of ``peer`` (empty if none)."""
        info = self._peers.get(peer)
        return list(info.addrs) if info else []

    def set_protocols(self, peer: PeerId, protocols: list[str]) -> None:
        """Replace the protocols ``peer`` says it supports."""
        self.get(peer).protocols = list(dict.fromkeys(protocols))[:MAX_PROTOCOLS_PER_PEER]

    def protocols(self, peer: PeerId) -> list[str]:
        """Protocols ``peer`` supports, as last reported."""
        info = self._peers.get(peer)
        return list(info.protocols) if info else []

    def add_observed_addr(self, addr: Multiaddr) -> None:
        """Record one of our own addresses as a peer observed it."""
        if addr in self._observed:
            self._observed.remove(addr)
        self._observed.insert(0, addr)
        del self._observed[MAX_OBSERVED_ADDRS:]

    @property
    def observed_addrs(self) -> list[Multiaddr]:
        """Our addresses as observed by peers, most recent first."""
        return list(self._observed)
