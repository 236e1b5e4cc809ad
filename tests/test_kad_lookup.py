"""Kademlia lookup state machine: convergence, termination, bounds, hostile peers."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st
from multiaddr import Multiaddr

from switchy.protocols.kad.lookup import ALPHA, Lookup, PeerState, RttEstimator
from switchy.protocols.kad.routing import K, kad_key
from switchy.stack.identity import PeerId
from tests.kad_helpers import ModelNetwork, drive, peer

_NET = ModelNetwork(300, seed=1)


def _seeds(net: ModelNetwork, start: PeerId) -> list[tuple[PeerId, list[Multiaddr]]]:
    return [(e.peer_id, list(e.addrs)) for e in net.tables[start].closest(0, 200)]


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**256 - 1), st.integers(0, 299), st.sampled_from([3, K]))
def test_finds_the_true_closest_peers(target: int, start: int, beta: int) -> None:
    """In an honest network a lookup ends with the closest peer of the whole network; with
    beta = k (the lookups that store) also with nearly all of the true k closest; always
    within the query budget."""
    me = _NET.ids[start]
    seeds = [(e.peer_id, list(e.addrs)) for e in _NET.tables[me].closest(target)]
    lookup = Lookup(target, seeds, now=0.0, local=me, beta=beta)
    drive(lookup, lambda p: _NET.answer(p, target))
    got = [p for p, _ in lookup.result()]
    truth = [p for p in _NET.true_closest(target, K + 1) if p != me][:K]
    assert got[0] == truth[0]
    if beta == K:
        assert len(set(got) & set(truth)) >= K - 2
    assert lookup.queries <= lookup.max_queries
    assert me not in got


def test_never_more_than_alpha_in_flight() -> None:
    """next_queries never exceeds alpha outstanding queries."""
    target = 12345
    lookup = Lookup(target, _seeds(_NET, _NET.ids[0]), now=0.0)
    first = lookup.next_queries(0.0)
    assert len(first) == ALPHA
    assert lookup.next_queries(0.0) == []
    lookup.on_response(first[0][0], _NET.answer(first[0][0], target), 0.1)
    assert len(lookup.next_queries(0.1)) == 1
    assert lookup.in_flight() == ALPHA


def test_failures_and_unasked_answers() -> None:
    """A failed peer is not in the result; an answer from a peer not asked is ignored;
    when every peer fails the lookup ends empty."""
    lookup = Lookup(1, _seeds(_NET, _NET.ids[0])[:5], now=0.0)
    lookup.on_response(peer(999_999), [(peer(999_998), [])], 0.0)
    assert lookup.state_of(peer(999_998)) is None
    drive(lookup, lambda p: None)
    assert lookup.result() == []
    assert all(lookup.state_of(p) is PeerState.FAILED for p, _ in _seeds(_NET, _NET.ids[0])[:5])


def test_deadline_ends_the_lookup() -> None:
    """A lookup whose peers never answer ends at its deadline."""
    lookup = Lookup(1, _seeds(_NET, _NET.ids[0]), now=0.0, timeout=5.0)
    assert lookup.next_queries(0.0)
    assert not lookup.finished(4.9)
    assert lookup.finished(5.0)
    assert lookup.next_queries(5.0) == []


def _fake(n: int) -> PeerId:
    return PeerId(b"\x12\x20" + hashlib.sha256(b"fake-%d" % n).digest())


def test_peer_flooding_fake_closer_peers_cannot_decide() -> None:
    """A hostile seed answers every query (its own and its fakes') with 2,000 fresh fake
    peers that all answer with more fakes: the lookup still ends within its budget and
    still finds the real closest peer through the other paths."""
    target = kad_key(b"some key")
    me = _NET.ids[5]
    honest = [(e.peer_id, list(e.addrs)) for e in _NET.tables[me].closest(target)]
    hostile = _NET.ids[7]
    counter = iter(range(10**9))
    fakes: set[PeerId] = set()

    def respond(p: PeerId) -> list[tuple[PeerId, list[Multiaddr]]] | None:
        if p == hostile or p in fakes:
            batch = [_fake(next(counter)) for _ in range(2000)]
            fakes.update(batch)
            return [(f, []) for f in batch] + [(p, [])] * 100
        return _NET.answer(p, target)

    lookup = Lookup(target, [(hostile, []), *honest], now=0.0, local=me)
    drive(lookup, respond)
    assert lookup.queries <= lookup.max_queries
    truth = next(p for p in _NET.true_closest(target, 2) if p != me)
    assert truth in [p for p, _ in lookup.result()]


def test_peer_answering_itself_forever() -> None:
    """A peer that answers only with itself (and us) adds nothing and the lookup ends."""
    me = _NET.ids[0]
    loop = _NET.ids[1]
    lookup = Lookup(7, [(loop, [])], now=0.0, local=me)
    steps = drive(lookup, lambda p: [(loop, []), (me, [])] * 50)
    assert steps < 5
    assert [p for p, _ in lookup.result()] == [loop]


def test_each_answer_contributes_at_most_k() -> None:
    """Of an answer only the k peers closest to the target are kept."""
    lookup = Lookup(0, [(peer(1), [])], now=0.0)
    (asked,) = [p for p, _ in lookup.next_queries(0.0)]
    offered = [peer(n) for n in range(100, 200)]
    lookup.on_response(asked, [(p, []) for p in offered], 0.1)
    kept = sorted(
        (p for p in offered if lookup.state_of(p) is not None), key=lambda p: kad_key(p.multihash)
    )
    assert kept == sorted(offered, key=lambda p: kad_key(p.multihash))[:K]


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 2**256 - 1),
    st.lists(st.integers(0, 299), min_size=1, max_size=30),
    st.randoms(use_true_random=False),
)
def test_any_answers_keep_the_invariants(target: int, seeds: list[int], rnd: object) -> None:
    """Whatever peers answer (random subsets of the network, failures, answers out of
    order): at most alpha in flight, at most max_queries sent, the lookup ends, and the
    result holds only peers that answered, closest first."""
    import random

    assert isinstance(rnd, random.Random)
    lookup = Lookup(target, [(_NET.ids[i], []) for i in seeds], now=0.0, max_queries=60)
    pending: list[PeerId] = []
    answered: set[PeerId] = set()
    now = 0.0
    for _ in range(5000):
        pending.extend(p for p, _ in lookup.next_queries(now))
        assert lookup.in_flight() <= ALPHA
        if not pending:
            break
        asked = pending.pop(rnd.randrange(len(pending)))
        now += 0.01
        if rnd.random() < 0.2:
            lookup.on_failure(asked, now)
        else:
            answered.add(asked)
            sample = rnd.sample(_NET.ids, rnd.randrange(0, 40))
            lookup.on_response(asked, [(p, []) for p in sample], now)
    assert lookup.finished(now)
    assert lookup.queries <= 60
    got = [p for p, _ in lookup.result()]
    assert set(got) <= answered
    assert got == sorted(got, key=lambda p: kad_key(p.multihash) ^ target)


def test_a_stalled_query_frees_its_slot_and_does_not_hold_up_the_end() -> None:
    """With a stall time a query unanswered that long frees its slot (a new query goes
    out), the lookup can end without it, and its late answer still counts."""
    target = 777
    seeds = _seeds(_NET, _NET.ids[0])
    lookup = Lookup(target, seeds, now=0.0, stall=1.0)
    first = lookup.next_queries(0.0)
    assert len(first) == ALPHA
    assert lookup.next_wakeup() == 1.0
    assert lookup.next_queries(0.5) == []
    silent = first[0][0]
    for p, _ in first[1:]:
        lookup.on_response(p, _NET.answer(p, target), 0.6)
    again = lookup.next_queries(1.0)  # the silent one stalled: its slot is free again
    assert len(again) == ALPHA and silent not in [p for p, _ in again]
    assert lookup.in_flight() == ALPHA
    assert lookup.state_of(silent) is PeerState.WAITING
    now = 1.0
    while not lookup.finished(now):
        asks = lookup.next_queries(now)
        now += 0.1
        for p in [q for q, s in lookup._peers.items() if s.state is PeerState.WAITING]:
            if p != silent:
                lookup.on_response(p, _NET.answer(p, target), now)
        assert now < 50, asks
    assert silent not in [p for p, _ in lookup.result()]
    lookup.on_response(silent, _NET.answer(silent, target), now + 1)  # late but welcome
    assert lookup.state_of(silent) is PeerState.SUCCEEDED


def test_rtt_estimator() -> None:
    """Before samples the configured timeout is used; then srtt/rttvar follow RFC 6298
    and the suggestions stay within their floors and the cap."""
    est = RttEstimator()
    assert est.rto() is None and est.stall(10.0) == 10.0 and est.timeout(10.0) == 10.0
    est.observe(0.1)
    assert est.srtt == 0.1 and est.rttvar == 0.05
    assert est.rto() == 0.1 + 4 * 0.05
    assert est.stall(10.0) == 0.5  # the floor
    assert est.timeout(10.0) == 2.0  # the floor
    for _ in range(50):
        est.observe(4.0)
    assert 3.9 < est.srtt <= 4.0
    assert est.timeout(10.0) == 10.0  # the cap (3 RTOs > 10 s)
    assert 4.0 <= est.stall(10.0) < 5.0


def test_final_phase_asks_the_k_closest_at_once() -> None:
    """With beta = k: once every path has its 3 closest answered, the still unasked among
    the k closest seen are asked all at once (beyond alpha), and the lookup ends only when
    they have answered; the result is then the true k closest of the network."""
    target = kad_key(b"final phase")
    me = _NET.ids[3]
    seeds = [(e.peer_id, list(e.addrs)) for e in _NET.tables[me].closest(target)]
    lookup = Lookup(target, seeds, now=0.0, local=me, beta=K)
    now = 0.0
    burst = 0
    while not lookup.finished(now):
        asks = lookup.next_queries(now)
        burst = max(burst, len(asks))
        waiting = [p for p, c in lookup._peers.items() if c.state is PeerState.WAITING]
        assert waiting, "a lookup that is not finished has a query in flight"
        now += 0.01
        for p in waiting:  # every query in flight answers: one round per step
            lookup.on_response(p, _NET.answer(p, target), now)
    assert burst > ALPHA
    got = [p for p, _ in lookup.result()]
    truth = [p for p in _NET.true_closest(target, K + 1) if p != me][:K]
    assert got == truth


def test_does_not_end_before_the_beta_closest_overall_answered() -> None:
    """Three paths that each converged do not end a beta = k lookup while one of the k
    closest peers seen is still waiting; its failure lets the lookup end."""
    target = 5
    seeds: list[tuple[PeerId, list[Multiaddr]]] = [(peer(n), []) for n in range(6)]
    lookup = Lookup(target, seeds, now=0.0, beta=K)
    now = 0.0
    last: PeerId | None = None
    while True:
        asks = lookup.next_queries(now)
        if not asks:
            break
        now += 0.01
        for p, _ in asks:
            if last is None:
                last = p  # never answers
                continue
            lookup.on_response(p, [], now)
    assert last is not None
    assert lookup.state_of(last) is PeerState.WAITING
    assert not lookup.finished(now)
    lookup.on_failure(last, now)
    assert lookup.finished(now)
    assert len(lookup.result()) == 5


def test_a_query_that_dials_gets_more_time_before_it_stalls() -> None:
    """allow_more moves one waiting query's stall time (the adapter's query must dial):
    the others stall at the stall time, it later; it is ignored for peers not waiting."""
    lookup = Lookup(777, _seeds(_NET, _NET.ids[0]), now=0.0, stall=1.0)
    first = [p for p, _ in lookup.next_queries(0.0)]
    dialing = first[0]
    lookup.allow_more(dialing, 1.5)
    lookup.allow_more(_NET.ids[299], 5.0)  # not asked: nothing happens
    assert lookup.next_wakeup() == 1.0
    assert len(lookup.next_queries(1.0)) == ALPHA - 1  # the other two stalled
    assert lookup.in_flight() == ALPHA
    assert lookup.next_wakeup() == 2.0  # the next ones, sent at 1.0
    assert len(lookup.next_queries(2.0)) == ALPHA - 1  # those two stalled in turn
    assert lookup.next_wakeup() == 2.5  # the dialing one is next: 0 + 1.5 + 1
    assert len(lookup.next_queries(2.5)) == 1
    assert lookup.state_of(dialing) is PeerState.WAITING  # its answer still counts
