"""The relay's bookkeeping (sans-IO): reservations, expiry, circuits and every limit."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from switchy.stack.errors import InvalidConfiguration
from switchy.stack.identity import PeerId
from switchy.transports.relay.config import RelayClientConfig, RelayConfig
from switchy.transports.relay.pb import Status
from switchy.transports.relay.resources import RelayResources

PEERS = [PeerId(b"\x12\x20" + bytes([i]) * 32) for i in range(8)]
IPS = ["ip4/10.0.0.1", "ip4/10.0.0.2", "ip4/10.0.0.3"]


def test_reserve_renew_expire_and_drop() -> None:
    r = RelayResources(RelayConfig(reservation_ttl=60))
    a = PEERS[0]
    assert r.reserve(a, IPS[0], now=0) == (Status.OK, 60)
    assert r.has_reservation(a, 59.9) and not r.has_reservation(a, 60)
    assert r.reserve(a, IPS[0], now=30) == (Status.OK, 90)  # a renewal extends
    assert r.reservations_from(IPS[0]) == 1
    assert r.expire(89) == [] and r.expire(90) == [a]
    assert not r.has_reservation(a, 0) and r.reservations_from(IPS[0]) == 0
    r.reserve(a, IPS[0], now=100)
    assert r.drop(a) and not r.drop(a)


def test_reservation_limits_overall_and_per_ip() -> None:
    r = RelayResources(RelayConfig(max_reservations=3, max_reservations_per_ip=2))
    assert r.reserve(PEERS[0], IPS[0], 0)[0] == Status.OK
    assert r.reserve(PEERS[1], IPS[0], 0)[0] == Status.OK
    # A flood from one IP: refused beyond its share, renewals still fine.
    assert r.reserve(PEERS[2], IPS[0], 0) == (Status.RESERVATION_REFUSED, 0.0)
    assert r.reserve(PEERS[1], IPS[0], 1)[0] == Status.OK
    assert r.reserve(PEERS[2], IPS[1], 0)[0] == Status.OK
    assert r.reserve(PEERS[3], IPS[2], 0) == (Status.RESERVATION_REFUSED, 0.0)
    # Moving to a full IP is refused; moving to a free one releases the old slot.
    assert r.reserve(PEERS[2], IPS[0], 2)[0] == Status.RESERVATION_REFUSED
    assert r.reserve(PEERS[0], IPS[1], 2)[0] == Status.OK
    assert r.reservations_from(IPS[0]) == 1 and r.reservations_from(IPS[1]) == 2


def test_circuit_limits() -> None:
    r = RelayResources(RelayConfig(max_circuits=3, max_circuits_per_peer=2))
    a, b, c, d = PEERS[:4]
    assert r.open_circuit(a, b, 0) == Status.NO_RESERVATION
    for p in (b, c, d):
        r.reserve(p, IPS[0], 0)
    assert r.open_circuit(a, b, 0) == Status.OK
    assert r.open_circuit(a, b, 0) == Status.OK
    assert r.open_circuit(a, c, 0) == Status.RESOURCE_LIMIT_EXCEEDED  # a has 2
    assert r.open_circuit(c, b, 0) == Status.RESOURCE_LIMIT_EXCEEDED  # b has 2
    assert r.open_circuit(c, d, 0) == Status.OK
    assert r.open_circuit(PEERS[5], PEERS[4], 0) == Status.NO_RESERVATION
    r.reserve(PEERS[4], IPS[1], 0)
    assert r.open_circuit(PEERS[5], PEERS[4], 0) == Status.RESOURCE_LIMIT_EXCEEDED  # 3 overall
    r.close_circuit(a, b)
    assert r.circuits == 2 and r.circuits_of(a) == 1 and r.circuits_of(b) == 1
    assert r.open_circuit(PEERS[5], PEERS[4], 0) == Status.OK
    assert r.open_circuit(a, b, 1e9) == Status.NO_RESERVATION  # b's reservation expired


def test_pending_requests_per_peer() -> None:
    r = RelayResources(RelayConfig(max_pending_per_peer=2))
    assert r.begin_request(PEERS[0]) and r.begin_request(PEERS[0])
    assert not r.begin_request(PEERS[0]) and r.begin_request(PEERS[1])
    r.end_request(PEERS[0])
    assert r.begin_request(PEERS[0])


def test_config_validation() -> None:
    with pytest.raises(InvalidConfiguration, match="max_circuits must be > 0"):
        RelayConfig(max_circuits=0)
    with pytest.raises(InvalidConfiguration, match="limit_data must be >= 0"):
        RelayConfig(limit_data=-1)
    with pytest.raises(InvalidConfiguration, match="renew_fraction must be < 1"):
        RelayClientConfig(renew_fraction=1.0)


class ResourcesMachine(RuleBasedStateMachine):
    """Random reservations, expiries, drops and circuits never break a limit or a count."""

    def __init__(self) -> None:
        super().__init__()
        self.config = RelayConfig(
            reservation_ttl=10,
            max_reservations=4,
            max_reservations_per_ip=2,
            max_circuits=5,
            max_circuits_per_peer=2,
        )
        self.r = RelayResources(self.config)
        self.now = 0.0
        self.open: list[tuple[PeerId, PeerId]] = []

    @rule(peer=st.sampled_from(PEERS), ip=st.sampled_from(IPS))
    def reserve(self, peer: PeerId, ip: str) -> None:
        status, expires = self.r.reserve(peer, ip, self.now)
        if status == Status.OK:
            assert expires == self.now + 10 and self.r.has_reservation(peer, self.now)

    @rule(dt=st.floats(0, 6))
    def tick(self, dt: float) -> None:
        self.now += dt
        for p in self.r.expire(self.now):
            assert not self.r.has_reservation(p, self.now)

    @rule(peer=st.sampled_from(PEERS))
    def drop(self, peer: PeerId) -> None:
        self.r.drop(peer)

    @rule(src=st.sampled_from(PEERS), dst=st.sampled_from(PEERS))
    def connect(self, src: PeerId, dst: PeerId) -> None:
        had = self.r.has_reservation(dst, self.now)
        status = self.r.open_circuit(src, dst, self.now)
        if src == dst:
            assert status == Status.PERMISSION_DENIED
        elif not had:
            assert status == Status.NO_RESERVATION
        if status == Status.OK:
            self.open.append((src, dst))

    @precondition(lambda self: bool(self.open))
    @rule(i=st.integers(0, 100))
    def disconnect(self, i: int) -> None:
        src, dst = self.open.pop(i % len(self.open))
        self.r.close_circuit(src, dst)

    @invariant()
    def within_limits(self) -> None:
        r, c = self.r, self.config
        assert len(r.reservations) <= c.max_reservations
        for ip in IPS:
            held = sum(1 for s in r.reservations.values() if s.ip == ip)
            assert held == r.reservations_from(ip) <= c.max_reservations_per_ip
        assert r.circuits == len(self.open) <= c.max_circuits
        for p in PEERS:
            n = sum((s == p) + (d == p) for s, d in self.open)
            assert r.circuits_of(p) == n and n <= c.max_circuits_per_peer


TestResourcesMachine = ResourcesMachine.TestCase
TestResourcesMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
