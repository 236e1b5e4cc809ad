"""Sans-IO iterative Kademlia lookup: which peers to ask next, and when to stop.

A :class:`Lookup` walks towards a target key.  The adapter asks it for the
next queries (:meth:`Lookup.next_queries`), sends FIND_NODE (or GET_VALUE,
GET_PROVIDERS) to them and reports each answer (:meth:`Lookup.on_response`)
or failure (:meth:`Lookup.on_failure`).  Times are arguments; the lookup does
no I/O.

Parameters and why:

* **alpha = 3 concurrent queries.**  The Kademlia paper and rust-libp2p use 3,
  go and js use 10.  With k = 20 buckets each answer brings the lookup about
  log2(k) ≈ 4 bits closer, so in networks up to ~10^4 servers a lookup takes
  3-4 rounds whatever alpha is; a larger alpha mainly hides timeouts of dead peers at
  the cost of alpha times the messages.  3 in flight keeps one slot per lookup path (see
  below), so one dead peer stalls one path of three, not the lookup, and the
  simulation (bench/bench_kad.py) meets its goals with it.
* **Termination (beta).**  A path of the lookup (see below) ends when the
  :data:`PATH_BETA` = 3 live peers closest to the target that it knows of have all
  answered.  The lookup ends when every path has ended *and* the ``beta`` live peers
  closest to the target seen overall have answered: once the paths have converged, the
  still unasked among those ``beta`` (``beta`` = 3 for finding a peer or a value,
  ``beta`` = k before a put or a provide) are asked all at once, beyond the alpha
  limit (the final phase).  An earlier rule asked each path to reach its own ``beta``
  closest, which cost beta = k lookups many more rounds (6 instead of 4 at the median
  among 10,000 nodes in bench/bench_kad.py).
* **Paths = 3.**  The seeds (closest peers of our table) are spread over
  up to 3 paths; a peer first heard of from a peer of path p belongs to path p.
  Queries go to the path with the fewest queries so far, so a peer that
  answers with thousands of fake closer peers, or with itself forever, can only
  steer its own path: the others still walk to the real closest peers, and the
  lookup does not end before they have.  The result is the k closest peers that
  answered.
* **Bounds.**  Each answer contributes at most k peers (the ones closest to
  the target; the answering peer itself and we are ignored), the lookup sends
  at most ``max_queries`` queries and ends at ``deadline``, whichever first.
* **Slow peers (``stall``).**  A query unanswered for ``stall`` seconds (the
  adapter derives it from the round trips it observed, :class:`RttEstimator`)
  frees its slot and no longer holds up termination: the lookup goes on with
  the next peers as if it had failed, and still takes its answer should it come
  before the query's own timeout.  So a dead peer among the k closest costs
  about one stall time, not the full query timeout.  A query that must dial first
  gets more time (:meth:`Lookup.allow_more`): otherwise a live closest peer not yet
  connected stalled while dialing, and the lookup ended without it (1 of 50 lookups on
  60 full nodes in ``bench_kad --full``).
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Sequence

import attrs
from multiaddr import Multiaddr

from switchy.protocols.kad.routing import K, kad_key
from switchy.stack.identity import PeerId

__all__ = [
    "ALPHA",
    "BETA",
    "LOOKUP_TIMEOUT",
    "MAX_QUERIES",
    "MIN_STALL",
    "PATHS",
    "PATH_BETA",
    "Lookup",
    "PeerState",
    "RttEstimator",
]

#: Concurrent queries of one lookup (see the module docstring).
ALPHA = 3
#: Closest peers seen overall that must have answered for a lookup to end (default).
BETA = 3
#: Closest peers of one path that must have answered for the path to end.
PATH_BETA = 3
#: Lookup paths that must each converge.
PATHS = 3
#: Most queries one lookup sends.
MAX_QUERIES = 120
#: Longest a lookup runs, seconds.
LOOKUP_TIMEOUT = 60.0
#: Shortest stall time an :class:`RttEstimator` suggests, seconds.
MIN_STALL = 0.5
#: Shortest query timeout an :class:`RttEstimator` suggests, seconds.
MIN_QUERY_TIMEOUT = 2.0


class RttEstimator:
    """Smoothed durations of answered queries (RFC 6298's estimator: ``srtt`` and
    ``rttvar``), and the stall time and query timeout derived from them.

    Before any sample both are ``None`` (use the configured timeout).
    """

    def __init__(self) -> None:
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.samples = 0

    def observe(self, duration: float) -> None:
        """An answered query took ``duration`` seconds (dial included, if it dialed)."""
        self.samples += 1
        if self.srtt is None:
            self.srtt, self.rttvar = duration, duration / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - duration)
            self.srtt = 0.875 * self.srtt + 0.125 * duration

    def rto(self) -> float | None:
        """``srtt + 4 rttvar`` (``None`` before the first sample)."""
        return None if self.srtt is None else self.srtt + 4 * self.rttvar

    def stall(self, cap: float) -> float:
        """How long a lookup waits on one query before moving on: the RTO, at least
        :data:`MIN_STALL`, at most ``cap``."""
        rto = self.rto()
        return cap if rto is None else min(cap, max(MIN_STALL, rto))

    def timeout(self, cap: float) -> float:
        """How long a query may take at all: three RTOs, at least
        :data:`MIN_QUERY_TIMEOUT`, at most ``cap`` (the configured timeout)."""
        rto = self.rto()
        return cap if rto is None else min(cap, max(MIN_QUERY_TIMEOUT, 3 * rto))


class PeerState(enum.Enum):
    """Where a peer of a lookup stands."""

    HEARD = "heard"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@attrs.define
class _Candidate:
    peer_id: PeerId
    distance: int
    addrs: tuple[Multiaddr, ...]
    path: int
    hop: int
    state: PeerState = PeerState.HEARD
    sent: float = 0.0
    #: Extra seconds this query has before it stalls (:meth:`Lookup.allow_more`).
    grace: float = 0.0


class Lookup:
    """One iterative lookup for ``target`` (a keyspace position, see :func:`kad_key`)."""

    def __init__(
        self,
        target: int,
        seeds: Sequence[tuple[PeerId, Sequence[Multiaddr]]],
        *,
        now: float,
        local: PeerId | None = None,
        alpha: int = ALPHA,
        beta: int = BETA,
        k: int = K,
        paths: int = PATHS,
        max_queries: int = MAX_QUERIES,
        timeout: float = LOOKUP_TIMEOUT,
        stall: float | None = None,
    ) -> None:
        self.target = target
        self.stall = stall
        self.now = now
        self.local = local
        self.alpha = alpha
        self.beta = beta
        self.k = k
        self.deadline = now + timeout
        self.max_queries = max_queries
        self.queries = 0
        self._peers: dict[PeerId, _Candidate] = {}
        #: Every candidate, closest to the target first.
        self._order: list[_Candidate] = []
        ordered = sorted(
            ((p, tuple(a)) for p, a in seeds if p != local),
            key=lambda s: kad_key(s[0].multihash) ^ target,
        )
        unique: list[tuple[PeerId, tuple[Multiaddr, ...]]] = []
        for peer, addrs in ordered:
            if all(peer != u[0] for u in unique):
                unique.append((peer, addrs))
        self.paths = max(1, min(paths, len(unique)))
        self._path_queries = [0] * self.paths
        for i, (peer, addrs) in enumerate(unique):
            self._add(peer, addrs, i % self.paths, 1)

    def _add(self, peer: PeerId, addrs: tuple[Multiaddr, ...], path: int, hop: int) -> None:
        cand = _Candidate(peer, kad_key(peer.multihash) ^ self.target, addrs, path, hop)
        self._peers[peer] = cand
        bisect.insort(self._order, cand, key=lambda c: c.distance)

    # --- inputs ------------------------------------------------------------------------

    def on_response(
        self, peer: PeerId, closer: Sequence[tuple[PeerId, Sequence[Multiaddr]]], now: float
    ) -> None:
        """``peer`` answered with ``closer`` peers.  Answers from peers we did not ask, or
        after the lookup ended, are ignored."""
        self.now = max(self.now, now)
        cand = self._peers.get(peer)
        if cand is None or cand.state is not PeerState.WAITING:
            return
        cand.state = PeerState.SUCCEEDED
        fresh: dict[PeerId, tuple[Multiaddr, ...]] = {}
        skip = {peer} if self.local is None else {peer, self.local}  # hashed, not compared
        for other, addrs in closer:
            if other in skip:
                continue
            known = self._peers.get(other)
            if known is not None:
                if not known.addrs and addrs:
                    known.addrs = tuple(addrs)
                continue
            fresh.setdefault(other, tuple(addrs))
        best = sorted(fresh.items(), key=lambda i: kad_key(i[0].multihash) ^ self.target)
        for other, addrs in best[: self.k]:
            self._add(other, addrs, cand.path, cand.hop + 1)

    def on_failure(self, peer: PeerId, now: float) -> None:
        """Asking ``peer`` failed (no connection, timeout, bad answer)."""
        self.now = max(self.now, now)
        cand = self._peers.get(peer)
        if cand is not None and cand.state is PeerState.WAITING:
            cand.state = PeerState.FAILED

    # --- outputs -----------------------------------------------------------------------

    def allow_more(self, peer: PeerId, seconds: float) -> None:
        """Give the query in flight to ``peer`` ``seconds`` more before it stalls (the
        adapter's query must first dial the peer: several round trips more)."""
        cand = self._peers.get(peer)
        if cand is not None and cand.state is PeerState.WAITING:
            cand.grace += max(0.0, seconds)

    def state_of(self, peer: PeerId) -> PeerState | None:
        """The state of ``peer`` in this lookup, if it was heard of."""
        cand = self._peers.get(peer)
        return None if cand is None else cand.state

    def _stalled(self, c: _Candidate) -> bool:
        return (
            c.state is PeerState.WAITING
            and self.stall is not None
            and self.now >= c.sent + c.grace + self.stall
        )

    def _live(self, path: int | None = None) -> list[_Candidate]:
        """Candidates neither failed nor stalled (of ``path``), closest first."""
        failed, waiting = PeerState.FAILED, PeerState.WAITING
        if self.stall is None:
            return [
                c for c in self._order if c.state is not failed and (path is None or c.path == path)
            ]
        stall, now = self.stall, self.now
        return [
            c
            for c in self._order
            if c.state is not failed
            and (path is None or c.path == path)
            and not (c.state is waiting and now >= c.sent + c.grace + stall)
        ]

    def next_wakeup(self) -> float | None:
        """When the next waiting query stalls (``None`` without ``stall`` or queries):
        the adapter should call :meth:`next_queries` then, even without an answer."""
        if self.stall is None:
            return None
        times = [
            c.sent + c.grace + self.stall
            for c in self._peers.values()
            if c.state is PeerState.WAITING and not self._stalled(c)
        ]
        return min(times, default=None)

    def _path_done(self, path: int) -> bool:
        live = self._live(path)
        return all(c.state is PeerState.SUCCEEDED for c in live[:PATH_BETA])

    def _converged(self) -> bool:
        """Every path ended and the beta closest live peers seen overall answered."""
        if not all(self._path_done(p) for p in range(self.paths)):
            return False
        return all(c.state is PeerState.SUCCEEDED for c in self._live()[: self.beta])

    def in_flight(self) -> int:
        """Queries sent, not answered and not stalled."""
        return sum(
            1 for c in self._peers.values() if c.state is PeerState.WAITING and not self._stalled(c)
        )

    def finished(self, now: float) -> bool:
        """Whether the lookup is over: every path converged, nothing left to ask, the
        query budget is spent or the deadline passed."""
        self.now = max(self.now, now)
        if now >= self.deadline:
            return True
        if self.queries >= self.max_queries and self.in_flight() == 0:
            return True
        if self._converged():
            return True
        return not any(
            c.state is PeerState.HEARD or (c.state is PeerState.WAITING and not self._stalled(c))
            for c in self._peers.values()
        )

    def next_queries(self, now: float) -> list[tuple[PeerId, tuple[Multiaddr, ...]]]:
        """Peers to ask now (each is marked waiting); empty when the lookup must wait
        for answers or is finished."""
        out: list[tuple[PeerId, tuple[Multiaddr, ...]]] = []
        if self.finished(now):
            return out
        inflight = self.in_flight()
        open_paths = [p for p in range(self.paths) if not self._path_done(p)]
        if not open_paths:
            # the final phase: every unasked one of the beta closest, all at once
            for c in self._live()[: self.beta]:
                if c.state is PeerState.HEARD and self.queries < self.max_queries:
                    out.append(self._send(c, now))
            return out
        while inflight < self.alpha and self.queries < self.max_queries:
            choice: _Candidate | None = None
            for path in sorted(open_paths, key=lambda p: self._path_queries[p]):
                if self._path_done(path):
                    continue
                window = self._live(path)[: self.k]
                heard = [c for c in window if c.state is PeerState.HEARD]
                if heard:
                    choice = heard[0]
                    break
            if choice is None:
                break
            inflight += 1
            out.append(self._send(choice, now))
        return out

    def _send(self, c: _Candidate, now: float) -> tuple[PeerId, tuple[Multiaddr, ...]]:
        c.state = PeerState.WAITING
        c.sent = now
        self._path_queries[c.path] += 1
        self.queries += 1
        return (c.peer_id, c.addrs)

    def result(self) -> list[tuple[PeerId, tuple[Multiaddr, ...]]]:
        """The k closest peers that answered, closest first."""
        done = [c for c in self._live() if c.state is PeerState.SUCCEEDED]
        return [(c.peer_id, c.addrs) for c in done[: self.k]]

    def addrs_of(self, peer: PeerId) -> tuple[Multiaddr, ...]:
        """The addresses heard for ``peer`` (empty if unknown)."""
        cand = self._peers.get(peer)
        return () if cand is None else cand.addrs

    def hop_of(self, peer: PeerId) -> int:
        """The referral round in which ``peer`` was (or would be) queried: 1 for the seeds,
        0 for a peer never heard of."""
        cand = self._peers.get(peer)
        return 0 if cand is None else cand.hop

    def hops(self) -> int:
        """Rounds of referrals that led to the closest peer that answered (0 if none)."""
        done = [c for c in self._live() if c.state is PeerState.SUCCEEDED]
        return done[0].hop if done else 0

    def rounds(self) -> int:
        """Deepest referral round queried."""
        return max(
            (c.hop for c in self._peers.values() if c.state is not PeerState.HEARD), default=0
        )
