"""Kademlia routing table: buckets by XOR distance, k limit, /24 limit, replacements."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from multiaddr import Multiaddr

from switchy.protocols.kad.routing import (
    MAX_DIAL_FAILURES,
    AddOutcome,
    Failure,
    K,
    RoutingTable,
    bucket_index,
    kad_key,
    network_group,
)
from tests.kad_helpers import addr, peer


def _same_bucket(table: RoutingTable, index: int, count: int, start: int = 0) -> list[int]:
    found: list[int] = []
    n = start
    while len(found) < count:
        if table.index_of(peer(n)) == index:
            found.append(n)
        n += 1
    return found


def test_bucket_index_is_distance_bit_length() -> None:
    """Bucket i holds keys at distance with bit length i + 1; ourselves is -1."""
    assert bucket_index(5, 5) == -1
    assert bucket_index(0, 1) == 0
    assert bucket_index(0, 1 << 255) == 255
    assert bucket_index(0b1000, 0b1011) == 1


def test_network_group() -> None:
    """IPv4 /24, IPv6 /48; loopback and non-IP addresses have no group."""
    assert network_group([Multiaddr("/ip4/1.2.3.4/tcp/1")]) == "1.2.3.0/24"
    assert network_group([Multiaddr("/ip6/2a00:1450:1:2::5/tcp/1")]) == "2a00:1450:1::/48"
    assert network_group([Multiaddr("/ip4/127.0.0.1/tcp/1")]) is None
    assert network_group([Multiaddr("/ip4/192.168.1.5/tcp/1")]) is None
    assert network_group(
        [Multiaddr("/ip4/192.168.1.5/tcp/1"), Multiaddr("/ip4/8.8.4.4/udp/1")]
    ) == ("8.8.4.0/24")
    assert network_group([Multiaddr("/memory/5")]) is None


def test_self_is_never_added() -> None:
    """We are not in our own table."""
    table = RoutingTable(peer(0))
    assert table.add(peer(0), [], 0.0).outcome is AddOutcome.REJECTED
    assert len(table) == 0


def test_full_bucket_keeps_old_peers_and_queues_replacements() -> None:
    """A full bucket keeps its peers; the newcomer waits; removing the stale peer promotes it."""
    table = RoutingTable(peer(0))
    ns = _same_bucket(table, 255, K + 2, start=1)
    for t, n in enumerate(ns[:K]):
        assert table.add(peer(n), [addr(n)], float(t)).outcome is AddOutcome.ADDED
    res = table.add(peer(ns[K]), [addr(ns[K])], 100.0)
    assert res.outcome is AddOutcome.PENDING
    assert res.ping == peer(ns[0])
    assert peer(ns[K]) not in table
    assert table.replacements(255) == [peer(ns[K])]
    # the pinged peer answers: it stays and the next stalest is named
    table.seen(peer(ns[0]), 101.0)
    res = table.add(peer(ns[K + 1]), [addr(ns[K + 1])], 102.0)
    assert res.ping == peer(ns[1])
    # the second does not answer: the freshest replacement takes its place
    assert table.remove(peer(ns[1])) == peer(ns[K + 1])
    assert peer(ns[K + 1]) in table and peer(ns[1]) not in table
    assert len(table.bucket(255)) == K


def test_at_most_two_per_slash24_per_bucket() -> None:
    """A third peer of one /24 in one bucket is refused; another bucket still takes it."""
    table = RoutingTable(peer(0))
    ns = _same_bucket(table, 255, 3, start=1)
    net = [Multiaddr(f"/ip4/9.9.9.{i}/tcp/1") for i in range(3)]
    assert table.add(peer(ns[0]), [net[0]], 0).outcome is AddOutcome.ADDED
    assert table.add(peer(ns[1]), [net[1]], 0).outcome is AddOutcome.ADDED
    res = table.add(peer(ns[2]), [net[2]], 0)
    assert res.outcome is AddOutcome.REJECTED and "9.9.9.0/24" in res.reason
    other = _same_bucket(table, 254, 1, start=1)[0]
    assert table.add(peer(other), [net[2]], 0).outcome is AddOutcome.ADDED
    # loopback peers are exempt
    lo = _same_bucket(table, 255, 3, start=ns[2] + 1)
    for n in lo:
        table.add(peer(n), [Multiaddr("/ip4/127.0.0.1/tcp/1")], 0)
    assert all(peer(n) in table for n in lo)


@settings(max_examples=30)
@given(st.lists(st.integers(1, 5000), max_size=300), st.integers(0, 2**256 - 1))
def test_closest_is_sorted_and_correct(ns: list[int], target: int) -> None:
    """closest() returns the k peers of the table nearest the target, nearest first, and
    no bucket ever exceeds k."""
    table = RoutingTable(peer(0))
    for n in ns:
        table.add(peer(n), [addr(n)], 0.0)
    members = table.peers()
    assert all(len(table.bucket(i)) <= K for i in range(256))
    got = [e.peer_id for e in table.closest(target)]
    expected = sorted(members, key=lambda p: kad_key(p.multihash) ^ target)[:K]
    assert got == expected


@settings(max_examples=60)
@given(
    st.lists(st.integers(1, 3000), max_size=400),
    st.integers(0, 256),
    st.integers(0, 2**256 - 1),
    st.integers(0, 70),
)
def test_closest_near_our_own_key(ns: list[int], bits: int, noise: int, count: int) -> None:
    """closest() walks the buckets in order of distance: for targets at any distance from
    our own key (our key itself included) and any count it gives what sorting every
    entry gives."""
    table = RoutingTable(peer(0))
    for n in ns:
        table.add(peer(n), [addr(n)], 0.0)
    target = table.local_key ^ (noise >> (256 - bits) if bits else 0)
    got = [e.peer_id for e in table.closest(target, count)]
    expected = sorted(table.peers(), key=lambda p: kad_key(p.multihash) ^ target)[:count]
    assert got == expected


def test_refresh_buckets_and_keys() -> None:
    """Stale buckets are named down to one past the deepest non-empty one; a key for a
    bucket lands in it; touching a bucket makes it fresh."""
    table = RoutingTable(peer(0))
    for n in range(1, 50):
        table.add(peer(n), [addr(n)], 0.0)
    stale = table.stale_buckets(10.0, 5.0)
    assert stale[0] == 255 and len(stale) <= 16
    rng = random.Random(1)
    key = table.random_key_in_bucket(250, rng.randbytes)
    assert bucket_index(table.local_key, kad_key(key)) == 250
    table.touch_key(kad_key(key), 10.0)
    assert 250 not in table.stale_buckets(12.0, 5.0)
    assert 250 in table.stale_buckets(16.0, 5.0)


def _full_bucket(table: RoutingTable, extra: int = 0) -> list[int]:
    ns = _same_bucket(table, 255, K + extra, start=1)
    for t, n in enumerate(ns[:K]):
        table.add(peer(n), [addr(n)], float(t))
    return ns


def test_a_failed_query_drops_a_peer_only_when_it_is_really_unresponsive() -> None:
    """Unresponsive (failed on a connection): removed at once.  Unreachable (a dial
    failed or timed out): kept until MAX_DIAL_FAILURES in a row, an answer in between
    clears the count.  Limited (our own limits, or the peer refusing a stream): kept."""
    table = RoutingTable(peer(0))
    ns = _full_bucket(table)
    a, b, c = (peer(n) for n in ns[:3])
    assert not table.failed(a, Failure.LIMITED)
    for _ in range(MAX_DIAL_FAILURES - 1):
        assert not table.failed(b, Failure.UNREACHABLE)
    table.seen(b, 50.0)  # it answered: the count starts again
    for _ in range(MAX_DIAL_FAILURES - 1):
        assert not table.failed(b, Failure.UNREACHABLE)
    assert b in table
    assert table.failed(b, Failure.UNREACHABLE)
    assert b not in table
    assert table.failed(c, Failure.UNRESPONSIVE)
    assert c not in table
    assert a in table and len(table) == K - 2
    assert not table.failed(c, Failure.UNRESPONSIVE)  # not in the table (any more)


def test_an_unreachable_peer_is_replaced_when_a_newcomer_waits() -> None:
    """A full bucket with a replacement waiting swaps an unreachable peer at its first
    failed dial: the bucket stays full and the newer candidate gets its chance."""
    table = RoutingTable(peer(0))
    ns = _full_bucket(table, extra=1)
    assert table.add(peer(ns[K]), [addr(ns[K])], 100.0).outcome is AddOutcome.PENDING
    assert table.failed(peer(ns[5]), Failure.UNREACHABLE)
    assert peer(ns[5]) not in table and peer(ns[K]) in table
    assert len(table.bucket(255)) == K


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from([*Failure, None]), max_size=12))
def test_failure_sequences_follow_the_rule(events: list[Failure | None]) -> None:
    """Property: for any sequence of failures and answers (None) of one peer without
    replacements waiting, it leaves exactly at its first unresponsive failure or at its
    MAX_DIAL_FAILURES-th unreachable one since it last answered, and never otherwise."""
    table = RoutingTable(peer(0))
    table.add(peer(1), [addr(1)], 0.0)
    streak = 0
    for t, event in enumerate(events):
        if peer(1) not in table:
            break
        if event is None:
            table.seen(peer(1), float(t))
            streak = 0
            continue
        streak += event is Failure.UNREACHABLE
        expect = event is Failure.UNRESPONSIVE or streak >= MAX_DIAL_FAILURES
        assert table.failed(peer(1), event) is expect
        assert (peer(1) in table) is not expect
