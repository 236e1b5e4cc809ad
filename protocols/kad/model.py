"""A message-level model of a Kademlia network in virtual time, for simulations.

Every node has the real :class:`~switchy.protocols.kad.routing.RoutingTable`
and runs the real :class:`~switchy.protocols.kad.lookup.Lookup`; only the
transport is modelled: a query to a live node is answered after a round trip
drawn per pair of nodes (seeded), a query to a crashed node fails after the
query timeout.  Nodes join one after another through node 0 as
:meth:`~switchy.protocols.kad.service.KadDHT.bootstrap` does (ask node 0, look
itself up, refresh the buckets the table names, every lookup with beta = k), and
servers learn the peers that query them, as
:class:`~switchy.protocols.kad.service.KadDHT` does.

This is for simulating thousands of nodes quickly (bench/bench_kad.py and
tests); the full stack over the simulator is exercised by the service's tests.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
import statistics
from collections.abc import Iterator, Sequence
from typing import Any

import attrs

from switchy.protocols.kad.lookup import Lookup
from switchy.protocols.kad.routing import KEY_BITS, K, RoutingTable, bucket_index, kad_key
from switchy.protocols.kad.service import QUERY_TIMEOUT
from switchy.stack.identity import PeerId

__all__ = ["ChurnEpoch", "KadModel", "LookupOutcome", "summarize", "table_fill"]


@attrs.frozen
class LookupOutcome:
    """One measured lookup."""

    found: bool
    #: Rounds of queries until the target was named (or the deepest round queried).
    rounds: int
    queries: int
    latency: float


@attrs.define
class _Clock:
    """The virtual time of one lookup (set by :meth:`KadModel._replies`)."""

    now: float = 0.0


class KadModel:
    """``n`` DHT servers (see the module docstring).

    ``refresh_buckets``: at most this many buckets, from the farthest, are refreshed when
    a node joins (16, as ``KadDHT.refresh``: ``stale_buckets`` with ``max_depth`` 15).
    """

    def __init__(
        self,
        n: int,
        *,
        seed: int,
        min_rtt: float = 0.02,
        max_rtt: float = 0.2,
        query_timeout: float = QUERY_TIMEOUT,
        refresh_buckets: int = 16,
        stall: float | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.min_rtt, self.max_rtt = min_rtt, max_rtt
        self.query_timeout = query_timeout
        #: The lookups' stall time (see :class:`~switchy.protocols.kad.lookup.Lookup`).
        self.stall = stall
        self.ids = [
            PeerId(b"\x12\x20" + hashlib.sha256(b"%d:%d" % (seed, i)).digest()) for i in range(n)
        ]
        self.index = {p: i for i, p in enumerate(self.ids)}
        self.tables = [RoutingTable(p, group_of=lambda _a: None) for p in self.ids]
        self.crashed: set[PeerId] = set()
        self.messages = 0
        self.seed = seed
        self.refresh_buckets = refresh_buckets
        #: Record keys each node stores (for the churn simulation).
        self.stored: dict[PeerId, set[int]] = {}
        for i in range(1, n):
            self._join(i, refresh_buckets)

    def _rtt(self, a: PeerId, b: PeerId) -> float:
        lo, hi = sorted((self.index[a], self.index[b]))
        r = random.Random(lo * 1_000_003 + hi).random()
        return self.min_rtt + (self.max_rtt - self.min_rtt) * r

    def answer(self, asked: PeerId, asker: PeerId | None, key: int, now: float) -> list[Any]:
        """``asked``'s answer to FIND_NODE(key) from ``asker``; a server notes the asker."""
        self.messages += 1
        table = self.tables[self.index[asked]]
        if asker is not None:
            table.add(asker, (), now)
        skip = b"" if asker is None else asker.multihash
        return [(e.peer_id, ()) for e in table.closest(key) if e.peer_id.multihash != skip]

    def _join(self, i: int, refresh: int) -> None:
        """Node ``i`` joins as ``KadDHT.bootstrap`` does: it asks node 0 (which notes it),
        looks itself up, then refreshes every bucket :meth:`RoutingTable.stale_buckets`
        names (at most ``refresh``, from the farthest), each lookup with beta = k."""
        me = self.ids[i]
        table = self.tables[i]
        self.answer(self.ids[0], me, kad_key(b"\0"), 0.0)
        table.add(self.ids[0], (), 0.0)
        self._join_lookup(me, table, kad_key(me.multihash))
        for index in table.stale_buckets(0.0, 1.0, max_depth=refresh - 1):
            self._join_lookup(me, table, self._key_in_bucket(table, KEY_BITS - index))

    def _join_lookup(self, me: PeerId, table: RoutingTable, target: int) -> None:
        seeds = [(e.peer_id, ()) for e in table.closest(target)]
        lookup = Lookup(target, seeds, now=0.0, local=me, beta=K)
        while True:
            asks = lookup.next_queries(0.0)
            if not asks:
                break
            for peer, _ in asks:
                closer = self.answer(peer, me, target, 0.0)
                table.add(peer, (), 0.0)
                lookup.on_response(peer, closer, 0.0)

    def _key_in_bucket(self, table: RoutingTable, depth: int) -> int:
        """A key sharing exactly ``depth - 1`` leading bits with the table's owner."""
        bit = 255 - (depth - 1)
        low = self.rng.getrandbits(bit)
        return (
            ((table.local_key >> (bit + 1)) << (bit + 1)) | ((~table.local_key) & (1 << bit)) | low
        )

    def add_node(self) -> PeerId:
        """A new node joins (through node 0, as at construction); returns its id."""
        i = len(self.ids)
        me = PeerId(b"\x12\x20" + hashlib.sha256(b"%d:%d" % (self.seed, i)).digest())
        self.ids.append(me)
        self.index[me] = i
        self.tables.append(RoutingTable(me, group_of=lambda _a: None))
        self._join(i, self.refresh_buckets)
        return me

    def leave(self, peer: PeerId) -> None:
        """``peer`` goes away silently (tables keep naming it until a query to it fails);
        its records go with it."""
        self.crashed.add(peer)
        self.stored.pop(peer, None)

    def put(self, source: PeerId, key: int) -> int:
        """Store ``key`` at the k closest live nodes a lookup from ``source`` finds (as
        ``put_value`` does); returns how many took it."""
        result = self._walk(source, key, beta=K, holds=None)[0].result()
        for peer, _ in result:
            self.stored.setdefault(peer, set()).add(key)
        return len(result)

    def get(self, source: PeerId, key: int) -> LookupOutcome:
        """Look ``key`` up from ``source`` until a live node holding it answers (as
        ``get_value`` does)."""
        lookup, found, now = self._walk(source, key, beta=3, holds=key)
        return LookupOutcome(found, lookup.rounds(), lookup.queries, now)

    def _walk(self, source: PeerId, key: int, *, beta: int, holds: int | None) -> Any:
        """A lookup from ``source`` in virtual time; failed peers leave ``source``'s table
        (as in ``KadDHT``).  Ends early when a node storing ``holds`` answers."""
        table = self.tables[self.index[source]]
        if holds is not None and holds in self.stored.get(source, ()):
            return Lookup(key, [], now=0.0), True, 0.0
        seeds = [(e.peer_id, ()) for e in table.closest(key)]
        lookup = Lookup(key, seeds, now=0.0, local=source, beta=beta, stall=self.stall)
        clock = _Clock()
        for peer in self._replies(source, lookup, clock, stop_when_finished=True):
            now = clock.now
            if peer in self.crashed:
                lookup.on_failure(peer, now)
                table.remove(peer)
                continue
            if holds is not None and holds in self.stored.get(peer, ()):
                self.messages += 1
                return lookup, True, now
            lookup.on_response(peer, self.answer(peer, source, key, now), now)
            table.add(peer, (), now)
        return lookup, False, clock.now

    def _replies(
        self, source: PeerId, lookup: Lookup, clock: _Clock, *, stop_when_finished: bool
    ) -> Iterator[PeerId]:
        """The one loop of a lookup from ``source`` in virtual time: sends the queries
        ``lookup`` asks for and yields each asked peer when its answer is due (a live
        peer after the pair's round trip, a crashed one after the query timeout), with
        ``clock.now`` set to that time; the caller feeds the answer or the failure to
        ``lookup``.  A stalled query (``lookup.next_wakeup()``) lets the next queries go.

        Ends when no query is in flight, or (``stop_when_finished``) as soon as the
        lookup is finished before the next query goes out.
        """
        events: list[tuple[float, int, PeerId]] = []
        seq = 0
        while not (stop_when_finished and lookup.finished(clock.now)):
            for peer, _ in lookup.next_queries(clock.now):
                due = self.query_timeout if peer in self.crashed else self._rtt(source, peer)
                seq += 1
                heapq.heappush(events, (clock.now + due, seq, peer))
            if not events:
                return
            wake = lookup.next_wakeup()
            if wake is not None and wake < events[0][0]:
                clock.now = wake  # a query stalls: ask the next peers
                continue
            clock.now, _, peer = heapq.heappop(events)
            yield peer

    def churn(
        self,
        *,
        epochs: int,
        leave: float,
        join: int,
        records: int,
        gets: int,
        republish_every: int,
    ) -> list[ChurnEpoch]:
        """The churn simulation: ``records`` keys are put, then in each epoch a fraction
        ``leave`` of the live nodes goes away, ``join`` new nodes arrive, every
        ``republish_every`` epochs the putters put their keys again (as
        ``KadDHT.republish`` does), and ``gets`` lookups of random keys from random
        live nodes measure what is still found."""
        rng = random.Random(self.seed + 99)
        live = [p for p in self.ids if p not in self.crashed]
        keys = [(rng.choice(live), kad_key(rng.randbytes(32))) for _ in range(records)]
        for owner, key in keys:
            self.put(owner, key)
        out = []
        for epoch in range(1, epochs + 1):
            live = [p for p in self.ids if p not in self.crashed and p != self.ids[0]]
            owners = {o for o, _ in keys}
            leaving = rng.sample([p for p in live if p not in owners], int(len(live) * leave))
            for p in leaving:
                self.leave(p)
            for _ in range(join):
                self.add_node()
            if epoch % republish_every == 0:
                for owner, key in keys:
                    self.put(owner, key)
            live = [p for p in self.ids if p not in self.crashed]
            outcomes = [self.get(rng.choice(live), rng.choice(keys)[1]) for _ in range(gets)]
            found = [o for o in outcomes if o.found]
            out.append(
                ChurnEpoch(
                    epoch,
                    len(live),
                    len(leaving),
                    len(found) / len(outcomes) if outcomes else 1.0,
                    statistics.median(o.latency for o in found) if found else float("nan"),
                )
            )
        return out

    def crash(self, fraction: float) -> None:
        """Crash a random ``fraction`` of the nodes (tables keep naming them)."""
        count = int(len(self.ids) * fraction)
        self.crashed = set(self.rng.sample(self.ids[1:], count))

    def lookup(self, source: PeerId, target: PeerId) -> LookupOutcome:
        """Find ``target`` from ``source`` in virtual time (ends when it is named, as
        ``KadDHT.find_peer`` does, or when the lookup ends)."""
        key = kad_key(target.multihash)
        table = self.tables[self.index[source]]
        entry = table.get(target)
        if entry is not None:
            return LookupOutcome(True, 0, 0, 0.0)
        seeds = [(e.peer_id, ()) for e in table.closest(key)]
        lookup = Lookup(key, seeds, now=0.0, local=source, stall=self.stall)
        clock = _Clock()
        # find_peer looks at the lookup's end only when an answer comes
        for peer in self._replies(source, lookup, clock, stop_when_finished=False):
            now = clock.now
            if lookup.finished(now):
                break
            if peer in self.crashed:
                lookup.on_failure(peer, now)
                continue
            closer = self.answer(peer, None, key, now)
            if any(p == target for p, _ in closer):
                return LookupOutcome(True, lookup.hop_of(peer), lookup.queries, now)
            lookup.on_response(peer, closer, now)
        return LookupOutcome(False, lookup.rounds(), lookup.queries, clock.now)

    def closest(self, source: PeerId, key: int, *, beta: int = K) -> LookupOutcome:
        """Look up the k closest live nodes to ``key`` from ``source`` until the lookup ends
        (as ``put_value``/``provide`` do with ``beta = k``); found means the closest live
        node of the whole network is the first of the result."""
        table = self.tables[self.index[source]]
        seeds = [(e.peer_id, ()) for e in table.closest(key)]
        lookup = Lookup(key, seeds, now=0.0, local=source, beta=beta, stall=self.stall)
        clock = _Clock()
        for peer in self._replies(source, lookup, clock, stop_when_finished=True):
            if peer in self.crashed:
                lookup.on_failure(peer, clock.now)
            else:
                lookup.on_response(peer, self.answer(peer, None, key, clock.now), clock.now)
        now = clock.now
        live = (p for p in self.ids if p not in self.crashed and p != source)
        best = min(live, key=lambda p: kad_key(p.multihash) ^ key)
        result = lookup.result()
        found = bool(result) and result[0][0] == best
        return LookupOutcome(found, lookup.rounds(), lookup.queries, now)


@attrs.frozen
class ChurnEpoch:
    """The figures of one epoch of :meth:`KadModel.churn`."""

    epoch: int
    live: int
    left: int
    found_ratio: float
    latency_s_p50: float


def table_fill(
    tables: Sequence[RoutingTable], ids: Sequence[PeerId], *, sample: int = 200, seed: int = 0
) -> float:
    """How full the routing tables are: over (a seeded ``sample`` of) ``tables``, the peers
    they hold divided by what they could hold, each bucket at most k of the peers of
    ``ids`` that fall in it (1.0: every bucket as full as the network allows)."""
    chosen = list(tables)
    if len(chosen) > sample:
        chosen = random.Random(seed).sample(chosen, sample)
    keys = [kad_key(p.multihash) for p in ids]
    held = possible = 0
    for table in chosen:
        per_bucket: dict[int, int] = {}
        for key in keys:
            i = bucket_index(table.local_key, key)
            if i >= 0:
                per_bucket[i] = per_bucket.get(i, 0) + 1
        possible += sum(min(table.k, c) for c in per_bucket.values())
        held += len(table)
    return held / possible if possible else 1.0


def summarize(outcomes: list[LookupOutcome], n: int) -> dict[str, Any]:
    """Figures of a list of lookups: success ratio, rounds and latency percentiles,
    queries per lookup, against log2(n)."""
    found = [o for o in outcomes if o.found]

    def pct(values: list[float], q: float) -> float:
        if not values:
            return float("nan")
        values = sorted(values)
        return values[min(len(values) - 1, int(q * len(values)))]

    rounds = [float(o.rounds) for o in found]
    lat = [o.latency for o in found]
    return {
        "lookups": len(outcomes),
        "success_ratio": len(found) / len(outcomes) if outcomes else 0.0,
        "rounds_median": statistics.median(rounds) if rounds else None,
        "rounds_p90": pct(rounds, 0.9),
        "rounds_max": max(rounds, default=None),
        "queries_mean": statistics.fmean(o.queries for o in outcomes) if outcomes else None,
        "latency_s_p50": pct(lat, 0.5),
        "latency_s_p90": pct(lat, 0.9),
        "latency_s_p99": pct(lat, 0.99),
        "log2_n": math.log2(n),
        "k": K,
    }
