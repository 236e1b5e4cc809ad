"""Test helper: sans-IO gossipsub routers wired together in memory, no sockets, no time."""

from __future__ import annotations

import random
from typing import Any

from switchy.protocols.pubsub.core import GOSSIPSUB_V11, GossipSub, Received
from switchy.stack.identity import KeyPair, PeerId


def key(i: int) -> KeyPair:
    """A deterministic key pair."""
    return KeyPair.from_seed(i.to_bytes(4, "big") * 8)


class Net:
    """Routers exchanging RPCs instantly; ``now`` is advanced by hand."""

    def __init__(self, n: int, seed: int = 0, **kw: Any) -> None:
        self.now = 0.0
        self.routers = [
            GossipSub(key(i + 1), rng=random.Random(seed * 1000 + i), **kw) for i in range(n)
        ]
        self.by_id = {r.local: r for r in self.routers}
        self.links: set[frozenset[PeerId]] = set()
        self.got: dict[PeerId, list[Received]] = {r.local: [] for r in self.routers}
        self.rpcs = 0

    def connect(self, a: int, b: int, protocol: str = GOSSIPSUB_V11) -> None:
        ra, rb = self.routers[a], self.routers[b]
        if a == b or frozenset((ra.local, rb.local)) in self.links:
            return
        self.links.add(frozenset((ra.local, rb.local)))
        ra.add_peer(rb.local, protocol, outbound=True)
        rb.add_peer(ra.local, protocol, outbound=False)

    def disconnect(self, a: int, b: int) -> None:
        ra, rb = self.routers[a], self.routers[b]
        self.links.discard(frozenset((ra.local, rb.local)))
        ra.remove_peer(rb.local, self.now)
        rb.remove_peer(ra.local, self.now)

    def pump(self, rounds: int = 1000) -> None:
        """Deliver RPCs until every router is quiet."""
        for _ in range(rounds):
            moved = False
            for r in self.routers:
                # whatever is queued for a peer is found by outgoing(): the peer is marked
                assert all(p in r._dirty for p, st in r.peers.items() if st.pending())
                for peer, data in r.outgoing():
                    if frozenset((r.local, peer)) in self.links:
                        moved = True
                        self.rpcs += 1
                        self.by_id[peer].handle_bytes(r.local, data, self.now)
                self.got[r.local].extend(r.deliveries())
            if not moved:
                return
        raise AssertionError("routers never went quiet")

    def heartbeat(self, count: int = 1, dt: float = 1.0) -> None:
        for _ in range(count):
            self.now += dt
            for r in self.routers:
                r.heartbeat(self.now)
            self.pump()
