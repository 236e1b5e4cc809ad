"""The resource manager's bookkeeping (switchy.stack.limits), without sockets."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switchy.stack.config import NetworkConfig
from switchy.stack.errors import InvalidConfiguration, ResourceLimitExceeded
from switchy.stack.identity import KeyPair
from switchy.stack.limits import (
    BASE_LIMITS,
    ConnectionScope,
    GiB,
    LimitConfig,
    LimitEvent,
    Limits,
    MiB,
    ResourceManager,
    StreamScope,
    parse_size,
)

PEER_A = KeyPair.from_seed(b"a" * 32).peer_id
PEER_B = KeyPair.from_seed(b"b" * 32).peer_id


def manager(*overrides: str, clock: list[float] | None = None, **ip: object) -> ResourceManager:
    cfg = LimitConfig().with_overrides(overrides)
    if ip:
        cfg = cfg.evolve_ip(**ip)
    t = clock if clock is not None else [0.0]
    return ResourceManager(cfg, clock=lambda: t[0])


def test_defaults_scale_with_memory_like_go_libp2p() -> None:
    base = LimitConfig.scaled(memory=128 * MiB, fds=256)
    assert base.scopes["system"].conns == 128
    assert base.scopes["system"].streams == 2048
    assert base.scopes["system"].memory == 128 * MiB
    assert base.scopes["peer"] == attrs.evolve(BASE_LIMITS["peer"])
    assert base.scopes["peer"].conns == 8 and base.scopes["peer"].streams == 512
    assert base.scopes["peer"].memory == 64 * MiB
    big = LimitConfig.scaled(memory=128 * MiB + 4 * GiB, fds=100_000)
    assert big.scopes["system"].conns == 128 + 4 * 128
    assert big.scopes["system"].streams == 2048 + 4 * 2048
    assert big.scopes["system"].memory == 128 * MiB + 4 * GiB
    assert big.scopes["peer"].streams == 512 + 4 * 256
    # connections stay below the file-descriptor budget
    few_fds = LimitConfig.scaled(memory=128 * MiB + 4 * GiB, fds=300)
    assert few_fds.scopes["system"].conns == 300


def test_config_and_env_overrides() -> None:
    cfg = NetworkConfig.from_env(
        {
            "SWITCHY_LIMITS": "system.conns=2000, peer.memory=32MiB,protocol:/x/1.streams=3,"
            "service:kad.streams=5",
            "SWITCHY_LIMITS_MEMORY": str(128 * MiB),
            "SWITCHY_MAX_INBOUND_PER_IP": "5",
            "SWITCHY_MAX_OUTBOUND_PER_IP": "7",
            "SWITCHY_LIMITS_EXEMPT_LOOPBACK": "true",
            "SWITCHY_LIMITS_ALLOWLIST": "10.0.0.0/8",
        }
    )
    lc = LimitConfig.from_network_config(cfg)
    assert lc.scopes["system"].conns == 2000
    assert lc.scopes["system"].streams == 2048  # scaled to the 128 MiB given
    assert lc.scopes["peer"].memory == 32 * MiB
    assert lc.protocols["/x/1"].streams == 3
    assert lc.services["kad"].streams == 5
    assert lc.services["kad"].memory == lc.scopes["service"].memory  # the rest: defaults
    assert ResourceManager(lc).service_scope("kad").limits.streams == 5
    assert lc.max_inbound_per_ip == 5 and lc.exempt_loopback
    assert lc.max_outbound_per_ip == 7
    with pytest.raises(InvalidConfiguration, match="max_outbound_per_ip must be > 0"):
        NetworkConfig.from_env({"SWITCHY_MAX_OUTBOUND_PER_IP": "0"})
    assert lc.allowlist == ("10.0.0.0/8",)
    with pytest.raises(InvalidConfiguration, match=r"scope\.resource=value"):
        LimitConfig().with_overrides(["system.bogus=1"])
    with pytest.raises(InvalidConfiguration, match="unknown scope"):
        LimitConfig().with_overrides(["galaxy.conns=1"])
    with pytest.raises(InvalidConfiguration, match="not a size"):
        LimitConfig().with_overrides(["system.conns=many"])
    with pytest.raises(InvalidConfiguration, match="boolean"):
        NetworkConfig.from_env({"SWITCHY_LIMITS_EXEMPT_LOOPBACK": "perhaps"})
    assert parse_size("1.5k") == 1536 and parse_size("unlimited") > 1 << 60


def test_refusal_names_scope_resource_and_limit() -> None:
    rm = manager("system.conns_inbound=2")
    a = rm.open_connection("inbound", "10.0.0.1")
    rm.open_connection("inbound", "10.0.0.2")
    with pytest.raises(ResourceLimitExceeded) as info:
        rm.open_connection("inbound", "10.0.0.3")
    err = info.value
    assert (err.scope, err.resource, err.limit) == ("system", "conns_inbound", 2)
    assert "scope system, conns_inbound limit 2" in str(err)
    assert rm.blocked[("system", "conns_inbound")] == 1
    out = rm.open_connection("outbound", "10.0.0.3")  # outbound is counted apart
    a.done()
    rm.open_connection("inbound", "10.0.0.3")  # a slot came free
    assert rm.usage()["system"] == {"conns_inbound": 2, "conns_outbound": 1, "conns": 3}
    out.done()


def test_connection_moves_from_transient_to_peer_and_back_to_nothing() -> None:
    rm = manager("peer.conns=2", "transient.conns=1")
    c1 = rm.open_connection("inbound", "10.0.0.1")
    assert rm.usage()["transient"] == {"conns_inbound": 1, "conns": 1}
    with pytest.raises(ResourceLimitExceeded, match="transient"):
        rm.open_connection("inbound", "10.0.0.2")
    c1.set_peer(PEER_A)
    assert "transient" not in rm.usage()
    assert rm.usage()[f"peer:{PEER_A}"] == {"conns_inbound": 1, "conns": 1}
    c2 = rm.open_connection("outbound", peer=PEER_A)
    c3 = rm.open_connection("outbound")
    with pytest.raises(ResourceLimitExceeded) as info:
        c3.set_peer(PEER_A)
    assert info.value.scope == f"peer:{PEER_A}" and info.value.resource == "conns"
    assert "transient" in rm.usage()  # a refused move leaves it where it was
    for c in (c1, c2, c3):
        c.done()
        c.done()  # idempotent
    assert rm.usage() == {"system": {}}
    assert rm.connections == []


def test_streams_protocols_and_memory() -> None:
    rm = manager(
        "peer.streams=3", "protocol:/p/1.streams_inbound=1", "stream.memory=100", "peer.memory=150"
    )
    conn = rm.open_connection("inbound", "10.0.0.1")
    conn.set_peer(PEER_A)
    s1 = conn.open_stream("inbound")
    s2 = conn.open_stream("inbound")
    s1.set_protocol("/p/1")
    with pytest.raises(ResourceLimitExceeded) as info:
        s2.set_protocol("/p/1")
    assert (info.value.scope, info.value.resource) == ("protocol:/p/1", "streams_inbound")
    s3 = conn.open_stream("outbound")
    with pytest.raises(ResourceLimitExceeded, match=f"peer:{PEER_A}, streams limit 3"):
        conn.open_stream("outbound")
    s1.reserve_memory(100)
    with pytest.raises(ResourceLimitExceeded, match=r"stream:.*memory limit 100"):
        s1.reserve_memory(1)
    assert not s2.try_reserve_memory(51)  # 100 + 51 > 150 for the peer
    assert s2.memory == 0
    assert s2.try_reserve_memory(50)
    assert not s3.try_reserve_memory(1)
    assert rm.blocked[("peer", "memory")] >= 1
    usage = rm.usage()
    assert usage[f"peer:{PEER_A}"]["memory"] == 150
    assert usage["system"]["memory"] == 150
    assert usage["protocol:/p/1"] == {"streams_inbound": 1, "streams": 1, "memory": 100}
    s1.release_memory(1000)  # at most what it holds
    assert s1.memory == 0 and rm.system.used("memory") == 50
    s1.done()
    assert "protocol:/p/1" not in rm.usage()
    conn.done()  # releases its streams and their memory
    assert s2.is_done and s3.is_done
    assert rm.usage() == {"system": {}}


def test_memory_follows_a_connection_and_a_stream_into_their_new_scopes() -> None:
    """A span's scope chain is kept, not rebuilt per charge: after a connection moves from
    ``transient`` to its peer and a stream from ``transient`` to its protocol and
    service, memory is charged to and released from the new scopes only, and the limits
    of the new scopes apply."""
    rm = manager("protocol:/p/1.memory=300", "transient.memory=1000")
    conn = rm.open_connection("inbound", "10.0.0.1")
    conn.reserve_memory(10)
    assert rm.usage()["transient"] == {"conns_inbound": 1, "conns": 1, "memory": 10}
    conn.set_peer(PEER_A)
    conn.reserve_memory(5)
    peer = f"peer:{PEER_A}"
    assert "transient" not in rm.usage()
    assert rm.usage()[peer]["memory"] == 15 and rm.system.used("memory") == 15
    stream = conn.open_stream("inbound")
    stream.reserve_memory(100)
    assert rm.usage()["transient"] == {"streams_inbound": 1, "streams": 1, "memory": 100}
    assert rm.usage()[peer]["memory"] == 115 and conn.scope.used("memory") == 115
    stream.set_protocol("/p/1", "svc")
    stream.reserve_memory(150)
    usage = rm.usage()
    assert "transient" not in usage
    assert usage["protocol:/p/1"] == {"streams_inbound": 1, "streams": 1, "memory": 250}
    assert usage["service:svc"]["memory"] == 250
    assert usage[peer]["memory"] == 265 and rm.system.used("memory") == 265
    with pytest.raises(ResourceLimitExceeded, match="protocol:/p/1, memory limit 300"):
        stream.reserve_memory(51)  # the protocol's limit holds now, not the transient's
    stream.release_memory(250)
    conn.release_memory(15)
    usage = rm.usage()
    assert "protocol:/p/1" not in usage or "memory" not in usage["protocol:/p/1"]
    assert "memory" not in usage["service:svc"] and "memory" not in usage[peer]
    assert rm.system.used("memory") == 0 and rm.transient.is_empty
    conn.done()
    assert rm.usage() == {"system": {}}


def test_per_ip_limit_rate_loopback_and_allowlist() -> None:
    t = [0.0]
    rm = manager(clock=t, max_inbound_per_ip=2, inbound_rate_per_ip=1.0, inbound_burst_per_ip=3)
    a = [rm.open_connection("inbound", "127.0.0.1") for _ in range(2)]
    with pytest.raises(ResourceLimitExceeded) as info:
        rm.open_connection("inbound", "127.0.0.1")  # loopback counts by default
    assert (info.value.scope, info.value.resource, info.value.limit) == (
        "ip:127.0.0.1",
        "conns_inbound",
        2,
    )
    for c in a:
        c.done()
    rm.open_connection("inbound", "127.0.0.1").done()  # third token of the burst
    with pytest.raises(ResourceLimitExceeded, match="rate"):
        rm.open_connection("inbound", "127.0.0.1")  # the burst is spent
    t[0] += 1.0
    rm.open_connection("inbound", "127.0.0.1").done()  # one token per second
    assert rm.blocked[("ip", "conns_inbound")] == 1 and rm.blocked[("ip", "rate")] == 1

    exempt = manager(max_inbound_per_ip=1, exempt_loopback=True)
    held = [exempt.open_connection("inbound", "::1") for _ in range(3)]
    with pytest.raises(ResourceLimitExceeded, match=r"ip:10\.1\.1\.1"):
        exempt.open_connection("inbound", "10.1.1.1")
        exempt.open_connection("inbound", "10.1.1.1")
    del held

    allow = manager(
        "system.conns=1",
        "peer.streams=0",
        max_inbound_per_ip=1,
        allowlist=("192.168.0.0/16", str(PEER_B)),
    )
    ok = [allow.open_connection("inbound", "192.168.1.1") for _ in range(3)]
    assert allow.system.used("conns") == 3  # counted, never refused
    ok[0].set_peer(PEER_A)
    ok[0].open_stream("inbound")
    other = manager("peer.streams=0", allowlist=(str(PEER_B),))
    c = other.open_connection("inbound", "10.0.0.9")
    c.set_peer(PEER_B)
    c.open_stream("inbound")
    with pytest.raises(InvalidConfiguration):
        LimitConfig(allowlist=("300.0.0.0/8",))


def test_per_ip_outbound_cap() -> None:
    """``max_outbound_per_ip``: dials to one IP are capped apart from inbound ones and from
    other IPs; a closed connection frees its slot; loopback exemption and the allowlist
    skip it; connections without an IP (relayed) are not counted."""
    rm = manager(max_outbound_per_ip=2, max_inbound_per_ip=1)
    out = [rm.open_connection("outbound", "10.0.0.1") for _ in range(2)]
    rm.open_connection("inbound", "10.0.0.1")  # inbound is counted apart
    rm.open_connection("outbound", "10.0.0.2")  # another IP
    with pytest.raises(ResourceLimitExceeded) as info:
        rm.open_connection("outbound", "10.0.0.1")
    err = info.value
    assert (err.scope, err.resource, err.limit) == ("ip:10.0.0.1", "conns_outbound", 2)
    assert "max_outbound_per_ip" in str(err)
    assert rm.blocked[("ip", "conns_outbound")] == 1
    assert rm.system.used("conns_outbound") == 3  # the refused dial holds nothing
    out[0].done()
    rm.open_connection("outbound", "10.0.0.1")  # a slot came free
    for _ in range(5):
        rm.open_connection("outbound", None)  # no IP (a relayed dial): not capped per IP
    exempt = manager(max_outbound_per_ip=1, exempt_loopback=True)
    for _ in range(3):
        exempt.open_connection("outbound", "127.0.0.1")
    allowed = manager(max_outbound_per_ip=1, allowlist=("10.9.0.0/16",))
    for _ in range(3):
        allowed.open_connection("outbound", "10.9.1.1")


def test_observer_sees_every_refusal() -> None:
    rm = manager("system.streams=0")
    seen: list[LimitEvent] = []
    rm.add_observer(seen.append)
    rm.add_observer(lambda _e: 1 / 0)  # a failing observer does not break refusals
    conn = rm.open_connection("outbound")
    with pytest.raises(ResourceLimitExceeded):
        conn.open_stream("outbound")
    assert seen == [LimitEvent("system", "system", "streams", 0, 0, 1)]


_OPS = st.lists(
    st.tuples(
        st.sampled_from(["conn", "set_peer", "stream", "proto", "mem", "free", "done"]),
        st.integers(0, 7),
        st.integers(1, 300),
    ),
    max_size=80,
)


@settings(max_examples=60, deadline=None)
@given(_OPS)
def test_use_never_exceeds_limits_and_returns_to_zero(ops: list[tuple[str, int, int]]) -> None:
    rm = manager(
        "system.conns=4",
        "peer.conns=2",
        "system.streams=6",
        "peer.streams=4",
        "protocol.streams=3",
        "system.memory=1000",
        "peer.memory=600",
        "stream.memory=400",
    )
    peers = [PEER_A, PEER_B]
    conns: list[ConnectionScope] = []
    streams: list[StreamScope] = []
    for op, i, n in ops:
        try:
            if op == "conn":
                conns.append(rm.open_connection("inbound" if i % 2 else "outbound"))
            elif op == "set_peer" and conns:
                conns[i % len(conns)].set_peer(peers[i % 2])
            elif op == "stream" and conns:
                streams.append(conns[i % len(conns)].open_stream("inbound"))
            elif op == "proto" and streams:
                streams[i % len(streams)].set_protocol(f"/p/{i % 2}")
            elif op == "mem" and streams:
                streams[i % len(streams)].reserve_memory(n)
            elif op == "free" and streams:
                streams[i % len(streams)].release_memory(n)
            elif op == "done" and streams:
                streams.pop(i % len(streams)).done()
        except ResourceLimitExceeded:
            pass
        scopes = [rm.system, rm.transient, *rm._peers.values(), *rm._protocols.values()]
        for s in scopes:
            for r in ("conns", "streams", "memory"):
                assert s.used(r) <= s.limits.get(r), (s, r)
        assert rm.system.used("memory") == sum(x.memory for x in streams if not x.is_done)
    for c in conns:
        c.done()
    assert rm.usage() == {"system": {}}
    assert not rm._peers and not rm._protocols


def test_limits_is_a_plain_value() -> None:
    assert Limits().conns > 1 << 60
    assert Limits(conns=3).scaled(Limits(conns=2), 2).conns == 7
