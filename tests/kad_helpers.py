"""Helpers of the Kademlia tests: cheap peer ids and a sans-IO model network."""

from __future__ import annotations

import hashlib
import random

from multiaddr import Multiaddr

from switchy.protocols.kad.lookup import Lookup
from switchy.protocols.kad.routing import RoutingTable, kad_key
from switchy.stack.identity import PeerId


def peer(n: int) -> PeerId:
    """A valid (sha2-256 multihash) peer id derived from ``n``."""
    return PeerId(b"\x12\x20" + hashlib.sha256(b"kad-test-%d" % n).digest())


def addr(n: int) -> Multiaddr:
    """A public IPv4 address of host ``n`` (each in its own /24)."""
    return Multiaddr(f"/ip4/11.{n // 256 % 256}.{n % 256}.1/tcp/4001")


class ModelNetwork:
    """``n`` peers, each with a routing table filled from a random sample of the others."""

    def __init__(self, n: int, seed: int, known: int = 60) -> None:
        rng = random.Random(seed)
        self.ids = [peer(seed * 100_000 + i) for i in range(n)]
        self.tables: dict[PeerId, RoutingTable] = {}
        for p in self.ids:
            table = RoutingTable(p)
            for other in rng.sample(self.ids, min(known, n)):
                table.add(other, [addr(self.ids.index(other))], 0.0)
            self.tables[p] = table

    def answer(self, asked: PeerId, target: int) -> list[tuple[PeerId, list[Multiaddr]]]:
        """What an honest ``asked`` answers to FIND_NODE(target)."""
        return [(e.peer_id, list(e.addrs)) for e in self.tables[asked].closest(target)]

    def true_closest(self, target: int, count: int) -> list[PeerId]:
        """The ``count`` peers of the network closest to ``target``."""
        return sorted(self.ids, key=lambda p: kad_key(p.multihash) ^ target)[:count]


def drive(lookup: Lookup, respond: object, max_steps: int = 10_000) -> int:
    """Run ``lookup`` to its end with ``respond(peer) -> list | None`` (None = failure),
    answering queries in the order sent; returns the steps taken."""
    assert callable(respond)
    pending: list[PeerId] = []
    now = 0.0
    steps = 0
    while steps < max_steps:
        steps += 1
        pending.extend(p for p, _ in lookup.next_queries(now))
        if not pending:
            assert lookup.finished(now)
            return steps
        asked = pending.pop(0)
        now += 0.01
        answer = respond(asked)
        if answer is None:
            lookup.on_failure(asked, now)
        else:
            lookup.on_response(asked, answer, now)
    raise AssertionError("lookup did not end")
