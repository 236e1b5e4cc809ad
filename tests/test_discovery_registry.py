"""NameRegistry (pure state, clock passed in): first come first served, TTL, limits."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multiaddr import Multiaddr

from switchy.protocols.discovery.claims import open_name_claim, seal_name_claim
from switchy.protocols.discovery.codec import Lookup, Refresh, Register, Status, Unregister
from switchy.protocols.discovery.registry import NameRegistry, RegistryLimits
from switchy.stack.errors import InvalidConfiguration
from switchy.stack.identity import KeyPair

KEYS = [KeyPair.from_seed(bytes([i + 1]) * 32) for i in range(3)]
A, B, C = KEYS
ADDRS = (Multiaddr("/ip4/127.0.0.1/tcp/4001"),)


def reg(key: KeyPair, name: str, ttl: int = 60, seq: int = 1) -> Register:
    return Register(name, ttl, seal_name_claim(key, name, ADDRS, seq))


def test_register_lookup_refresh_unregister() -> None:
    r = NameRegistry()
    assert r.handle(A.peer_id, Lookup("tv"), 0).status == Status.NOT_FOUND
    ok = r.handle(A.peer_id, reg(A, "tv", ttl=60), 0)
    assert (ok.status, ok.ttl) == (Status.OK, 60)
    found = r.handle(B.peer_id, Lookup("tv"), 10.5)
    assert (found.status, found.ttl) == (Status.OK, 50)
    assert open_name_claim(found.claim, "tv").peer_id == A.peer_id
    assert r.handle(A.peer_id, Refresh("tv", 100), 30).ttl == 100
    assert r.handle(B.peer_id, Lookup("tv"), 129).status == Status.OK
    assert r.handle(B.peer_id, Refresh("tv", 100), 30).status == Status.NOT_OWNER
    assert r.handle(B.peer_id, Unregister("tv"), 30).status == Status.NOT_OWNER
    assert r.handle(A.peer_id, Unregister("tv"), 31).status == Status.OK
    assert r.handle(A.peer_id, Unregister("tv"), 31).status == Status.NOT_FOUND
    assert r.handle(A.peer_id, Refresh("tv", 5), 31).status == Status.NOT_FOUND
    assert len(r) == 0 and r.names_of(A.peer_id) == 0


def test_first_come_first_served_until_expiry() -> None:
    r = NameRegistry()
    assert r.handle(A.peer_id, reg(A, "tv", ttl=60), 0).status == Status.OK
    taken = r.handle(B.peer_id, reg(B, "tv"), 59.9)
    assert taken.status == Status.NAME_TAKEN and "another peer" in taken.message
    assert open_name_claim(r.handle(C.peer_id, Lookup("tv"), 59.9).claim).peer_id == A.peer_id
    # Expired at exactly 60 s: the name is free again.
    assert r.handle(C.peer_id, Lookup("tv"), 60).status == Status.NOT_FOUND
    assert r.handle(B.peer_id, reg(B, "tv"), 60).status == Status.OK
    assert r.names_of(A.peer_id) == 0 and r.names_of(B.peer_id) == 1


def test_bad_claims_are_refused() -> None:
    r = NameRegistry()
    # B replays A's (valid) claim: not signed by the registering peer.
    refused = r.handle(B.peer_id, reg(A, "tv"), 0)
    assert refused.status == Status.BAD_RECORD and "not by the registering peer" in refused.message
    # A claim of another name.
    other = Register("tv", 60, seal_name_claim(A, "radio", ADDRS, 1))
    assert "asked for 'tv'" in r.handle(A.peer_id, other, 0).message
    garbage = r.handle(A.peer_id, Register("tv", 60, b"\x01\x02"), 0)
    assert garbage.status == Status.BAD_RECORD
    # Stale (lower seq) update by the owner.
    assert r.handle(A.peer_id, reg(A, "tv", seq=5), 0).status == Status.OK
    stale = r.handle(A.peer_id, reg(A, "tv", seq=4), 0)
    assert stale.status == Status.BAD_RECORD and "stale" in stale.message
    assert r.handle(A.peer_id, reg(A, "tv", seq=5), 0).status == Status.OK
    assert len(r) == 1


def test_limits_per_peer_total_and_ttl() -> None:
    r = NameRegistry(RegistryLimits(max_names_per_peer=2, max_registrations=3, max_ttl=100))
    assert r.handle(A.peer_id, reg(A, "a1", ttl=1000), 0).ttl == 100
    assert r.handle(A.peer_id, reg(A, "a2"), 0).status == Status.OK
    flood = r.handle(A.peer_id, reg(A, "a3"), 0)
    assert flood.status == Status.LIMIT_EXCEEDED and "at most 2 names" in flood.message
    # Re-registering a name one holds is not a new name.
    assert r.handle(A.peer_id, reg(A, "a2", seq=2), 0).status == Status.OK
    assert r.handle(B.peer_id, reg(B, "b1"), 0).status == Status.OK
    full = r.handle(C.peer_id, reg(C, "c1"), 0)
    assert full.status == Status.LIMIT_EXCEEDED and "full" in full.message
    # Expiry frees room.
    assert r.handle(C.peer_id, reg(C, "c1"), 100).status == Status.OK
    with pytest.raises(InvalidConfiguration):
        RegistryLimits(max_ttl=0)
    with pytest.raises(InvalidConfiguration):
        RegistryLimits(max_ttl=10**6)


def test_refreshes_do_not_grow_memory_without_bound() -> None:
    r = NameRegistry()
    r.handle(A.peer_id, reg(A, "tv"), 0)
    for t in range(10_000):
        r.handle(A.peer_id, Refresh("tv", 60), t / 100)
    assert len(r._expiry) < 200


ops = st.lists(
    st.tuples(
        st.sampled_from(["register", "refresh", "unregister", "lookup"]),
        st.integers(0, 2),  # who
        st.sampled_from(["x", "y", "z"]),
        st.integers(1, 30),  # ttl
        st.floats(0, 20, allow_nan=False),  # time step
    ),
    max_size=40,
)

_CLAIMS = {(i, n): seal_name_claim(k, n, ADDRS, 1) for i, k in enumerate(KEYS) for n in "xyz"}


@settings(max_examples=60)
@given(ops)
def test_registry_matches_a_simple_model(steps: list[tuple[str, int, str, int, float]]) -> None:
    r = NameRegistry(RegistryLimits(max_names_per_peer=2))
    model: dict[str, tuple[int, float]] = {}  # name -> (owner index, expires)
    now = 0.0
    for op, who, name, ttl, step in steps:
        now += step
        model = {n: v for n, v in model.items() if v[1] > now}
        peer = KEYS[who].peer_id
        holder = model.get(name)
        if op == "register":
            resp = r.handle(peer, Register(name, ttl, _CLAIMS[who, name]), now)
            if holder is not None and holder[0] != who:
                assert resp.status == Status.NAME_TAKEN
            elif holder is None and sum(1 for o, _ in model.values() if o == who) >= 2:
                assert resp.status == Status.LIMIT_EXCEEDED
            else:
                assert resp.status == Status.OK
                model[name] = (who, now + ttl)
        elif op == "lookup":
            resp = r.handle(peer, Lookup(name), now)
            if holder is None:
                assert resp.status == Status.NOT_FOUND
            else:
                assert open_name_claim(resp.claim, name).peer_id == KEYS[holder[0]].peer_id
        else:
            request = Refresh(name, ttl) if op == "refresh" else Unregister(name)
            resp = r.handle(peer, request, now)
            if holder is None:
                assert resp.status == Status.NOT_FOUND
            elif holder[0] != who:
                assert resp.status == Status.NOT_OWNER
            else:
                assert resp.status == Status.OK
                if op == "refresh":
                    model[name] = (who, now + ttl)
                else:
                    del model[name]
        assert len(r) == len(model)
