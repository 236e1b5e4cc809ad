"""The address manager (stack/addrbook.py): observation rules, the observer threshold,
lying peers, AutoNAT verdicts, wildcard expansion, change callbacks."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from multiaddr import Multiaddr

from switchy.stack.addrbook import (
    CONFIRM_THRESHOLD,
    MAX_OBSERVATIONS,
    AddressBook,
    Reachability,
    ip_observer_group,
)
from switchy.stack.config import NetworkConfig
from switchy.stack.errors import InvalidConfiguration
from switchy.stack.interfaces import expand_wildcard, interface_addresses, is_wildcard

LISTEN = Multiaddr("/ip4/192.168.1.10/tcp/4001")
EXTERNAL = Multiaddr("/ip4/203.0.113.7/tcp/4001")


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def book(listen: list[Multiaddr] | None = None, **kw: Any) -> tuple[AddressBook, Clock]:
    clock = Clock()
    addrs = [LISTEN] if listen is None else listen
    return AddressBook(lambda: list(addrs), clock=clock, **kw), clock


def observer(i: int) -> tuple[Multiaddr, str | None]:
    remote = Multiaddr(f"/ip4/198.51.100.{i}/tcp/5000")
    return remote, ip_observer_group(f"198.51.100.{i}")


def test_confirmed_after_four_distinct_observers_not_before() -> None:
    b, _ = book()
    for i in range(1, CONFIRM_THRESHOLD):
        remote, group = observer(i)
        assert b.observe(EXTERNAL, local=LISTEN, remote=remote, group=group)
        assert b.confirmed() == [] and b.candidates() == [EXTERNAL]
        assert EXTERNAL not in b.announced()
    remote, group = observer(CONFIRM_THRESHOLD)
    b.observe(EXTERNAL, local=LISTEN, remote=remote, group=group)
    assert b.confirmed() == [EXTERNAL] and b.candidates() == []
    assert b.announced() == [LISTEN, EXTERNAL]


def test_a_lying_peer_cannot_make_us_announce_an_address() -> None:
    """One observer group (many connections, many ports, an IPv6 /56) counts once."""
    b, _ = book()
    lie = Multiaddr("/ip4/6.6.6.6/tcp/4001")
    for port in range(1000, 1100):
        b.observe(
            lie,
            local=LISTEN,
            remote=Multiaddr(f"/ip4/198.51.100.9/tcp/{port}"),
            group=ip_observer_group("198.51.100.9"),
        )
    for i in range(200):  # one /56 of IPv6 addresses is one observer
        host = f"2001:db8:0:{i:x}::1"
        assert ip_observer_group(host) == ip_observer_group("2001:db8::1")
        b.observe(
            lie, local=LISTEN, remote=Multiaddr(f"/ip6/{host}/tcp/1"), group=ip_observer_group(host)
        )
    assert b.observers(lie) == 2
    assert lie not in b.announced() and b.candidates() == [lie]
    # the liar's two groups and one more observer stay under the threshold
    remote, group = observer(1)
    b.observe(lie, local=LISTEN, remote=remote, group=group)
    assert b.observers(lie) == 3 and lie not in b.announced()
    remote, group = observer(2)
    b.observe(lie, local=LISTEN, remote=remote, group=group)
    assert lie in b.confirmed()  # four distinct groups: that is what the threshold means


def test_each_observer_votes_once_per_listen_address() -> None:
    b, _ = book()
    remote, group = observer(1)
    a1, a2 = Multiaddr("/ip4/1.1.1.1/tcp/1"), Multiaddr("/ip4/2.2.2.2/tcp/2")
    b.observe(a1, local=LISTEN, remote=remote, group=group)
    b.observe(a2, local=LISTEN, remote=remote, group=group)
    assert b.observed() == [a2]  # the latest vote replaced the first


@pytest.mark.parametrize(
    ("local", "remote", "observed", "limited"),
    [
        (Multiaddr("/ip4/192.168.1.10/tcp/50123"), None, EXTERNAL, False),  # ephemeral port
        (LISTEN, None, EXTERNAL, True),  # relayed
        (LISTEN, Multiaddr("/ip4/127.0.0.1/tcp/9"), EXTERNAL, False),  # loopback remote
        (LISTEN, None, Multiaddr("/ip4/127.0.0.1/tcp/4001"), False),  # loopback observed
        (LISTEN, None, Multiaddr("/ip4/203.0.113.7/udp/4001/quic-v1"), False),  # other shape
    ],
)
def test_observations_that_say_nothing_about_a_mapping_do_not_count(
    local: Multiaddr, remote: Multiaddr | None, observed: Multiaddr, limited: bool
) -> None:
    b, _ = book()
    for i in range(1, 10):
        r, group = observer(i)
        assert not b.observe(
            observed, local=local, remote=remote or r, group=group, limited=limited
        )
    assert b.observed() == [] and b.announced() == [LISTEN]


def test_no_group_means_no_vote() -> None:
    b, _ = book()
    assert not b.observe(EXTERNAL, local=LISTEN, remote=Multiaddr("/dns4/x/tcp/1"), group=None)


def test_wildcard_listen_address_matches_its_port_and_is_expanded() -> None:
    wild = Multiaddr("/ip4/0.0.0.0/tcp/4001")
    b, _ = book([wild])
    remote, group = observer(1)
    assert b.observe(EXTERNAL, local=LISTEN, remote=remote, group=group)
    assert not b.observe(
        EXTERNAL, local=Multiaddr("/ip4/192.168.1.10/tcp/4002"), remote=remote, group=group
    )
    announced = b.announced()
    assert announced and not any(is_wildcard(a) for a in announced)
    assert Multiaddr("/ip4/127.0.0.1/tcp/4001") in announced


def test_expand_wildcard_keeps_the_rest_of_the_address() -> None:
    quic = expand_wildcard(Multiaddr("/ip6/::/udp/9/quic-v1"))
    v6 = [ip for ip in interface_addresses() if ip.version == 6]
    assert [str(a) for a in quic] == [f"/ip6/{ip}/udp/9/quic-v1" for ip in v6]
    plain = Multiaddr("/ip4/10.0.0.1/tcp/1")
    assert expand_wildcard(plain) == [plain]
    assert all(not ip.is_link_local for ip in interface_addresses())


def test_observations_expire() -> None:
    b, clock = book(ttl=60.0)
    for i in range(1, 5):
        remote, group = observer(i)
        b.observe(EXTERNAL, local=LISTEN, remote=remote, group=group)
    assert b.confirmed() == [EXTERNAL]
    clock.t = 61.0
    assert b.confirmed() == [] and b.observed() == []


def test_observations_are_bounded() -> None:
    b, _ = book()
    for i in range(MAX_OBSERVATIONS + 50):
        b.observe(EXTERNAL, local=LISTEN, remote=Multiaddr("/ip4/9.9.9.9/tcp/1"), group=f"g{i}")
    assert b.observers(EXTERNAL) == MAX_OBSERVATIONS


def test_autonat_verdicts_confirm_and_withdraw() -> None:
    b, _ = book()
    remote, group = observer(1)
    b.observe(EXTERNAL, local=LISTEN, remote=remote, group=group)
    b.set_address_reachability(EXTERNAL, Reachability.PUBLIC)
    assert b.confirmed() == [EXTERNAL]  # one observer, but AutoNAT reached it
    for i in range(2, 6):
        remote, group = observer(i)
        b.observe(EXTERNAL, local=LISTEN, remote=remote, group=group)
    b.set_address_reachability(EXTERNAL, Reachability.PRIVATE)
    assert b.confirmed() == [] and b.candidates() == [EXTERNAL]  # unreachable: not announced
    b.retain_verdicts([])
    assert b.confirmed() == [EXTERNAL]  # verdict gone: the threshold decides again


def test_change_and_reachability_callbacks() -> None:
    b, _ = book()
    changes: list[int] = []
    reach: list[tuple[Reachability, Reachability]] = []
    b.on_changed(lambda: changes.append(1))
    b.on_reachability_changed(lambda old, new: reach.append((old, new)))
    b.check()
    base = len(changes)
    assert not b.check()  # nothing changed
    b.set_address_reachability(EXTERNAL, Reachability.PUBLIC)
    assert len(changes) == base + 1
    b.report_reachability(Reachability.PRIVATE)
    b.report_reachability(Reachability.PRIVATE)
    assert reach == [(Reachability.UNKNOWN, Reachability.PRIVATE)]
    assert b.reachability is Reachability.PRIVATE


def test_public_networks_config() -> None:
    cfg = NetworkConfig(public_networks=("10.0.0.0/8",))
    assert cfg.is_public_ip("10.1.2.3") and cfg.is_public_ip("8.8.8.8")
    assert not cfg.is_public_ip("192.168.0.1") and not NetworkConfig().is_public_ip("10.1.2.3")
    env = NetworkConfig.from_env({"SWITCHY_PUBLIC_NETWORKS": "10.0.0.0/8, fd00::/8"})
    assert env.public_networks == ("10.0.0.0/8", "fd00::/8")
    assert env.is_public_ip("fd00::5")
    with pytest.raises(InvalidConfiguration, match="not an IP network"):
        NetworkConfig(public_networks=("nonsense",))


@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 3)), max_size=60))
def test_property_confirmed_needs_threshold_groups(votes: list[tuple[int, int]]) -> None:
    """Whatever the votes, an address is confirmed iff >= threshold groups voted for it."""
    b, _ = book()
    addrs = [Multiaddr(f"/ip4/203.0.113.{k}/tcp/4001") for k in range(4)]
    latest: dict[int, int] = {}
    for g, k in votes:
        b.observe(addrs[k], local=LISTEN, remote=LISTEN.decapsulate("/tcp"), group=f"g{g}")
        latest[g] = k
    for k, a in enumerate(addrs):
        n = sum(1 for v in latest.values() if v == k)
        assert (a in b.confirmed()) == (n >= CONFIRM_THRESHOLD)
        assert b.observers(a) == n


def test_an_observation_stays_while_its_connection_is_open() -> None:
    b, clock = book(ttl=60.0)
    open_ = [True]
    remote, group = observer(1)
    b.observe(EXTERNAL, local=LISTEN, remote=remote, group=group, alive=lambda: open_[0])
    clock.t = 10_000.0
    assert b.observed() == [EXTERNAL]  # hours later, the connection is still open
    open_[0] = False
    clock.t = 10_059.0
    assert b.observed() == [EXTERNAL]  # closed: lasts ttl from when it was last current
    clock.t = 10_061.0
    assert b.observed() == []
