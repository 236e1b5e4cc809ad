"""NAT and firewall boxes in the simulator (RFC 4787 / RFC 5382), all in virtual time."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switchy.protocols.identify import IdentifyService, identify
from switchy.protocols.ping import PingService, ping
from switchy.scenarios import NAT_EXPECTED, ObservedEcho, run_scenario
from switchy.stack.errors import ConnectionFailed, InvalidConfiguration, P2PTimeout, StreamReset
from switchy.stack.node import Node
from switchy.transports.quic.sim import sim_quic_transport
from switchy.transports.sim import (
    NAT_PRESETS,
    NatConfig,
    NatTable,
    SimConfig,
    SimTransport,
    Simulation,
    nat_preset,
    parse_sim_multiaddr,
    run_simulation,
)
from switchy.transports.sim.nat import NatPacket

QUIET = SimConfig(default_packet_loss=0.0)


class Inbox(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: list[tuple[bytes, tuple[str, int]]] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append((data, addr))


def internet(sim: Simulation) -> None:
    """A core router ``isp`` with public servers s1, s2, s3 (UDP echoes on 3478/3479)."""
    net = sim.network
    net.add_hosts(["isp", "s1", "s2", "s3"])
    for server in ("s1", "s2", "s3"):
        net.add_link(server, "isp", latency=0.02, loss=0.0)
        for port in (3478, 3479):
            net.open_datagram(ObservedEcho(), server, port)


async def observe_udp(sim: Simulation, sock: Any, inbox: Inbox, server: str) -> tuple[str, int]:
    before = len(inbox.received)
    sock.sendto(b"?", (server, 3478))
    await asyncio.sleep(0.5)
    host, _, port = inbox.received[before][0].decode().partition(":")
    return host, int(port)


def host_port(sim: Simulation, addr: Any) -> tuple[str, int]:
    parsed = parse_sim_multiaddr(addr)
    assert parsed is not None
    host = sim.network.host_by_number(parsed[0])
    assert host is not None
    return host.name, parsed[1]


# --- the presets' tables, UDP and TCP ---------------------------------------------------


@pytest.mark.parametrize("preset", sorted(NAT_EXPECTED))
def test_udp_mapping_and_filtering_table(preset: str) -> None:
    same, contacted, other_port, other_host, _ = NAT_EXPECTED[preset]

    async def main(sim: Simulation) -> None:
        internet(sim)
        net = sim.network
        net.add_nat("box", lan=["alice"], wan="isp", preset=preset)
        inbox = Inbox()
        sock, _ = net.open_datagram(inbox, "alice", 5000)
        first = await observe_udp(sim, sock, inbox, "s1")
        second = await observe_udp(sim, sock, inbox, "s2")
        assert (first == second) is same
        translated = NAT_PRESETS[preset if preset != "cgnat" else "port_restricted"].translate
        assert (first == ("alice", 5000)) is (not translated)
        if preset == "cgnat":
            assert first[0] == "box-cgn"  # the outside sees the carrier's address
        results = []
        for host, port in (("s1", 3478), ("s1", 3479), ("s3", 3478)):
            before = len(inbox.received)
            net.host(host)._datagrams[port].sendto(b"probe", first)
            await asyncio.sleep(0.5)
            results.append(len(inbox.received) > before)
        assert results == [contacted, other_port, other_host]

    run_simulation(main, seed=3, config=QUIET)


@pytest.mark.parametrize("preset", sorted(NAT_EXPECTED))
def test_tcp_mapping_and_filtering_table(preset: str) -> None:
    same, _, other_port, other_host, syn = NAT_EXPECTED[preset]

    async def main(sim: Simulation) -> None:
        internet(sim)
        net = sim.network
        seen: list[tuple[str, int]] = []

        async def observe(conn: Any) -> None:
            seen.append(host_port(sim, conn.remote_addr))
            await conn.read()

        for server in ("s1", "s2"):
            net.listen(server, 4001, observe)
        net.add_nat("box", lan=["alice"], wan="isp", preset=preset)
        accepted: list[str] = []

        async def on_alice(conn: Any) -> None:
            accepted.append(conn.remote_host.name)

        net.listen("alice", 5000, on_alice)
        c1 = await net.connect("alice", "s1", 4001, local_port=5000)
        c2 = await net.connect("alice", "s2", 4001, local_port=5000)
        await asyncio.sleep(0.1)
        assert (seen[0] == seen[1]) is same
        outcomes = []
        for host in ("s1", "s3"):
            try:
                conn = await net.connect(host, seen[0][0], seen[0][1], local_port=4002, timeout=3)
                outcomes.append("accepted")
                await conn.close()
            except ConnectionFailed:
                outcomes.append("reset")
            except P2PTimeout:
                outcomes.append("dropped")
        want_port = "accepted" if other_port else syn
        want_host = "accepted" if other_host else syn
        assert outcomes == [want_port, want_host]
        await c1.close()
        await c2.close()

    run_simulation(main, seed=4, config=QUIET)


def test_address_dependent_mapping_differs_per_host_not_per_port() -> None:
    async def main(sim: Simulation) -> None:
        internet(sim)
        net = sim.network
        cfg = NatConfig(mapping="address_dependent", filtering="address_dependent")
        net.add_nat("box", lan=["alice"], wan="isp", config=cfg)
        inbox = Inbox()
        sock, _ = net.open_datagram(inbox, "alice", 5000)
        a = await observe_udp(sim, sock, inbox, "s1")
        before = len(inbox.received)
        sock.sendto(b"?", ("s1", 3479))
        await asyncio.sleep(0.5)
        b_host, _, b_port = inbox.received[before][0].decode().partition(":")
        c = await observe_udp(sim, sock, inbox, "s2")
        assert a == (b_host, int(b_port))
        assert a != c
        assert len(net.nat("box").mappings("udp")) == 2

    run_simulation(main, seed=5, config=QUIET)


# --- port assignment --------------------------------------------------------------------


def _out(table: NatTable, port: int, remote: tuple[str, int], t: float = 0.0) -> NatPacket:
    verdict = table.outbound(NatPacket("udp", ("alice", port), remote), t)
    assert verdict.action == "forward" and verdict.packet is not None
    return verdict.packet


def test_port_assignment_kinds() -> None:
    import random

    pres = NatTable("nat", NatConfig(mapping="address_and_port_dependent"), random.Random(1))
    ports = [_out(pres, 5000, ("s", p)).src[1] for p in (1, 2, 3)]
    assert ports[0] == 5000 and len(set(ports)) == 3  # preserved, then the next free ones

    seq = NatTable(
        "nat",
        NatConfig(port_assignment="sequential", port_range=(2000, 2010)),
        random.Random(1),
    )
    assert [_out(seq, p, ("s", 1)).src[1] for p in (5000, 5001, 5002)] == [2000, 2001, 2002]

    def randoms(seed: int) -> list[int]:
        table = NatTable("nat", NatConfig(port_assignment="random"), random.Random(seed))
        return [_out(table, p, ("s", 1)).src[1] for p in (5000, 5001, 5002, 5003)]

    assert randoms(7) == randoms(7)  # from the seeded PRNG
    assert randoms(7) != randoms(8)
    assert all(1024 <= p <= 65535 for p in randoms(7)) and 5000 not in randoms(7)


def test_ports_exhausted_is_a_drop() -> None:
    import random

    table = NatTable("nat", NatConfig(port_range=(3000, 3001)), random.Random(1))
    _out(table, 1, ("s", 1))
    _out(table, 2, ("s", 1))
    verdict = table.outbound(NatPacket("udp", ("alice", 3), ("s", 1)), 0.0)
    assert verdict.action == "drop" and verdict.reason == "nat_ports_exhausted"
    # Once the mappings expire, the ports are free again.
    assert _out(table, 3, ("s", 1), t=31.0).src[1] in (3000, 3001)


# --- lifetimes --------------------------------------------------------------------------


def test_udp_mapping_expires_unless_refreshed_by_outbound_traffic() -> None:
    async def main(sim: Simulation) -> None:
        internet(sim)
        net = sim.network
        box = net.add_nat("box", lan=["alice"], wan="isp", preset="port_restricted")
        inbox = Inbox()
        sock, _ = net.open_datagram(inbox, "alice", 5000)
        ext = await observe_udp(sim, sock, inbox, "s1")  # mapped at ~0.001
        echo = net.host("s1")._datagrams[3478]
        await asyncio.sleep(20 - sim.now)
        sock.sendto(b"keepalive", ("s1", 3478))  # refresh: now lives until ~50
        await asyncio.sleep(45 - sim.now)
        before = len(inbox.received)
        echo.sendto(b"in", ext)
        await asyncio.sleep(0.5)
        assert len(inbox.received) == before + 1  # inbound alone does not refresh
        await asyncio.sleep(51 - sim.now)
        echo.sendto(b"late", ext)
        await asyncio.sleep(0.5)
        assert len(inbox.received) == before + 1
        expired = sim.trace.of_kind("nat_expire")
        assert len(expired) == 1 and expired[0].extra is not None
        assert expired[0].extra["expired_at"] == pytest.approx(50.001, abs=0.01)
        assert box.counters.mappings_expired == 1 and not box.mappings()
        drops = [e for e in sim.trace.of_kind("drop") if (e.extra or {}).get("nat") == "box"]
        assert drops[-1].extra is not None and drops[-1].extra["reason"] == "nat_no_mapping"
        again = await observe_udp(sim, sock, inbox, "s1")  # a new mapping
        assert again == ext  # port preserved again
        assert len(sim.trace.of_kind("nat_map")) == 2

    run_simulation(main, seed=6, config=QUIET)


def test_tcp_lifetimes_transitory_then_established() -> None:
    import random

    cfg = NatConfig()
    table = NatTable("nat", cfg, random.Random(1))
    syn = table.outbound(NatPacket("tcp", ("alice", 5000), ("s", 80), "syn"), 0.0)
    assert syn.action == "forward"
    (mapping,) = table.mappings("tcp")
    assert mapping.expires_at == cfg.tcp_transitory_timeout  # 4 min until answered
    ack = table.inbound(NatPacket("tcp", ("s", 80), ("nat", 5000), "syn"), 1.0)
    assert ack.action == "forward" and ack.packet is not None
    assert ack.packet.dst == ("alice", 5000)
    assert mapping.expires_at == 1.0 + 7440.0  # established: 2 h 4 min
    data = table.outbound(NatPacket("tcp", ("alice", 5000), ("s", 80), "data"), 100.0)
    assert data.action == "forward" and mapping.expires_at == 100.0 + 7440.0
    assert table.expire(100.0 + 7439.0) == []
    (gone,) = table.expire(100.0 + 7440.0)
    assert gone.kind == "expire" and not table.mappings()
    late = table.inbound(NatPacket("tcp", ("s", 80), ("nat", 5000), "data"), 8000.0)
    assert late.action == "drop" and late.reason == "nat_no_mapping"
    # A non-SYN segment with no flow is never translated outbound either.
    stray = table.outbound(NatPacket("tcp", ("alice", 5001), ("s", 80), "data"), 8000.0)
    assert stray.action == "drop"


# --- hairpinning ------------------------------------------------------------------------


@pytest.mark.parametrize("hairpin", [True, False])
def test_hairpinning(hairpin: bool) -> None:
    async def main(sim: Simulation) -> None:
        internet(sim)
        net = sim.network
        cfg = attrs.evolve(nat_preset("full_cone"), hairpinning=hairpin)
        net.add_nat("box", lan=["alice", "bob"], wan="isp", config=cfg)
        a_in, b_in = Inbox(), Inbox()
        a_sock, _ = net.open_datagram(a_in, "alice", 5000)
        b_sock, _ = net.open_datagram(b_in, "bob", 6000)
        a_ext = await observe_udp(sim, a_sock, a_in, "s1")
        b_ext = await observe_udp(sim, b_sock, b_in, "s1")
        b_sock.sendto(b"hi alice", a_ext)
        await asyncio.sleep(0.5)
        got = [(d, addr) for d, addr in a_in.received if d == b"hi alice"]
        if hairpin:
            assert got == [(b"hi alice", b_ext)]  # alice sees bob's external address
            assert net.nat("box").counters.hairpinned == 1
        else:
            assert got == []
            assert net.nat("box").counters.drop_reasons == {"nat_hairpin_off": 1}

    run_simulation(main, seed=7, config=QUIET)


# --- unsolicited SYN --------------------------------------------------------------------


@pytest.mark.parametrize("answer", ["rst", "drop"])
def test_unsolicited_syn_is_reset_or_dropped(answer: str) -> None:
    async def main(sim: Simulation) -> None:
        internet(sim)
        net = sim.network
        cfg = attrs.evolve(nat_preset("port_restricted"), unsolicited_syn=answer)  # type: ignore[arg-type]
        net.add_nat("box", lan=["alice"], wan="isp", config=cfg)
        start = sim.now
        if answer == "rst":
            with pytest.raises(ConnectionFailed, match="reset by NAT box"):
                await net.connect("s1", "box", 4001)
            assert sim.now - start == pytest.approx(0.05, abs=0.001)  # one round trip
            assert len(sim.trace.of_kind("nat_rst")) == 1
        else:
            with pytest.raises(P2PTimeout):
                await net.connect("s1", "box", 4001, timeout=5)
            assert sim.trace.of_kind("nat_rst") == []
        # Addressing the private host directly never works either.
        with pytest.raises(P2PTimeout):
            await net.connect("s1", "alice", 4001, timeout=2)

    run_simulation(main, seed=8, config=QUIET)


# --- simultaneous open ------------------------------------------------------------------


async def _punch(
    sim: Simulation, preset: str, *, config: NatConfig | None = None, bob_delay: float = 0.0
) -> tuple[Any, Any]:
    internet(sim)
    net = sim.network
    seen: dict[str, tuple[str, int]] = {}

    async def relay(conn: Any) -> None:
        seen[conn.peer.local_host.name] = host_port(sim, conn.remote_addr)
        await conn.read()

    net.listen("s1", 4001, relay)
    for box, host in (("nat-a", "alice"), ("nat-b", "bob")):
        if config is None:
            net.add_nat(box, lan=[host], wan="isp", preset=preset)
        else:
            net.add_nat(box, lan=[host], wan="isp", config=config)

    async def refuse(conn: Any) -> None:
        await conn.reset()

    for host in ("alice", "bob"):
        net.listen(host, 4001, refuse)
        await net.connect(host, "s1", 4001, local_port=4001)  # learn the mapping
    await asyncio.sleep(0.1)
    a_ext, b_ext = seen["alice"], seen["bob"]

    async def bob_dials() -> Any:
        await asyncio.sleep(bob_delay)
        return await net.connect("bob", a_ext[0], a_ext[1], local_port=4001, timeout=5)

    results = await asyncio.gather(
        net.connect("alice", b_ext[0], b_ext[1], local_port=4001, timeout=5),
        bob_dials(),
        return_exceptions=True,
    )
    return results[0], results[1]


def test_simultaneous_open_through_two_port_restricted_nats_makes_one_connection() -> None:
    async def main(sim: Simulation) -> None:
        a, b = await _punch(sim, "port_restricted")
        assert not isinstance(a, BaseException) and not isinstance(b, BaseException)
        assert a.peer is b and b.peer is a and a.conn_id == b.conn_id
        assert host_port(sim, a.remote_addr) == ("nat-b", 4001)
        assert host_port(sim, b.remote_addr) == ("nat-a", 4001)
        await a.write(b"from alice")
        await b.write(b"from bob")
        assert await b.read() == b"from alice"
        assert await a.read() == b"from bob"
        assert len(sim.trace.of_kind("simultaneous_open")) == 1
        # No listener was involved: neither alice nor bob accepted anything.
        assert [e for e in sim.trace.of_kind("accept") if e.src in ("alice", "bob")] == []
        assert (
            len(
                [
                    c
                    for c in sim.network.host("alice").connections
                    if c.remote_port == 4001 and c.remote_host.name == "nat-b"
                ]
            )
            == 1
        )

    run_simulation(main, seed=9, config=QUIET)


def test_late_syn_behind_a_dropping_nat_is_retried_into_one_connection() -> None:
    async def main(sim: Simulation) -> None:
        quiet = attrs.evolve(nat_preset("port_restricted"), unsolicited_syn="drop")
        a, b = await _punch(sim, "", config=quiet, bob_delay=0.5)
        # Alice's first SYN was dropped at bob's NAT; bob's SYN then matched alice's dial.
        assert not isinstance(a, BaseException) and not isinstance(b, BaseException)
        assert a.peer is b
        assert any(
            (e.extra or {}).get("reason") == "nat_filtered" for e in sim.trace.of_kind("drop")
        )
        assert len(sim.trace.of_kind("simultaneous_open")) == 1
        await b.write(b"late but there")
        assert await a.read() == b"late but there"

    run_simulation(main, seed=9, config=QUIET)


def test_late_syn_behind_a_resetting_nat_fails_the_early_dial() -> None:
    async def main(sim: Simulation) -> None:
        a, b = await _punch(sim, "port_restricted", bob_delay=0.5)
        # The early SYN is reset by bob's NAT (Linux's default); bob's later SYN gets
        # through alice's NAT and reaches alice's listener, which refuses it here.
        assert isinstance(a, ConnectionFailed) and "reset by NAT nat-b" in str(a)
        assert not isinstance(b, BaseException)
        assert [e.src for e in sim.trace.of_kind("accept") if e.src == "alice"] == ["alice"]
        assert sim.trace.of_kind("simultaneous_open") == []

    run_simulation(main, seed=9, config=QUIET)


def test_simultaneous_open_through_symmetric_nats_fails() -> None:
    async def main(sim: Simulation) -> None:
        a, b = await _punch(sim, "symmetric")
        # Each SYN leaves from a new mapping the other side never heard of: reset.
        assert isinstance(a, ConnectionFailed) and isinstance(b, ConnectionFailed)
        assert sim.trace.of_kind("simultaneous_open") == []
        assert net_reasons(sim) >= {"nat_filtered"}

    def net_reasons(sim: Simulation) -> set[str]:
        return {r for box in sim.network.nats for r in box.counters.drop_reasons}

    run_simulation(main, seed=9, config=QUIET)


def test_simultaneous_open_without_nats_makes_one_connection() -> None:
    async def main(sim: Simulation) -> None:
        net = sim.network
        net.add_hosts(["a", "b"])
        net.add_link("a", "b", latency=0.03)

        async def refuse(conn: Any) -> None:
            await conn.reset()

        for host in ("a", "b"):
            net.listen(host, 4001, refuse)
        x, y = await asyncio.gather(
            net.connect("a", "b", 4001, local_port=4001),
            net.connect("b", "a", 4001, local_port=4001),
        )
        assert x.peer is y and x.local_addr == y.remote_addr and y.local_addr == x.remote_addr
        assert sim.now == pytest.approx(0.06)  # one round trip, as for a plain dial
        with pytest.raises(ConnectionFailed, match="already in use"):
            await net.connect("a", "b", 4001, local_port=4001)

    run_simulation(main, seed=14, config=QUIET)


@pytest.mark.parametrize(("preset", "punches"), [("port_restricted", True), ("symmetric", False)])
def test_udp_hole_punch(preset: str, punches: bool) -> None:
    async def main(sim: Simulation) -> None:
        internet(sim)
        net = sim.network
        net.add_nat("nat-a", lan=["alice"], wan="isp", preset=preset)
        net.add_nat("nat-b", lan=["bob"], wan="isp", preset=preset)
        a_in, b_in = Inbox(), Inbox()
        a_sock, _ = net.open_datagram(a_in, "alice", 4001)
        b_sock, _ = net.open_datagram(b_in, "bob", 4001)
        a_ext = await observe_udp(sim, a_sock, a_in, "s1")
        b_ext = await observe_udp(sim, b_sock, b_in, "s1")
        for _ in range(3):  # both spray at the other's observed address
            a_sock.sendto(b"from alice", b_ext)
            b_sock.sendto(b"from bob", a_ext)
            await asyncio.sleep(0.1)
        got_a = [d for d, _ in a_in.received if d == b"from bob"]
        got_b = [d for d, _ in b_in.received if d == b"from alice"]
        assert bool(got_a) is punches and bool(got_b) is punches

    run_simulation(main, seed=15, config=QUIET)


# --- QUIC and full nodes ----------------------------------------------------------------


def test_quic_connects_out_through_a_nat_and_is_observed_at_the_nat() -> None:
    async def main(sim: Simulation) -> None:
        net = sim.network
        net.add_hosts(["isp", "server", "stranger", "stranger2"])
        for h in ("server", "stranger", "stranger2"):
            net.add_link(h, "isp", latency=0.02, loss=0.0)
        net.add_nat("home", lan=["alice"], wan="isp", preset="port_restricted")

        def node(host: str) -> Node:
            return Node(
                transports=[sim_quic_transport(net, host)],
                services=[PingService(), IdentifyService()],
                entropy=sim.entropy_source(host),
                listen=["/memory/4001/quic-v1"],
            )

        async with node("server") as server, node("alice") as alice, node("stranger") as other:
            info = await identify(alice, server.full_addrs[0])
            assert info.observed_addr is not None
            number = net.host("home").number
            # QUIC dials from its listening socket: the NAT preserved port 4001.
            assert str(info.observed_addr) == f"/memory/{number * 100000 + 4001}/quic-v1"
            assert (await ping(alice, server.full_addrs[0], count=1))[0] > 0
            (conn,) = server.connections(alice.peer_id)
            assert str(conn.remote_addr) == str(info.observed_addr)
            # Nobody else reaches alice: not at her private address, not at the mapping
            # (port_restricted filtering lets in only the server).
            observed = info.observed_addr.encapsulate(f"/p2p/{alice.peer_id}")
            reasons = net.nat("home").counters.drop_reasons
            with pytest.raises(Exception):  # noqa: B017 - any failure to connect
                async with asyncio.timeout(10):
                    await ping(other, observed, count=1)
            assert reasons.get("nat_filtered", 0) > 0
            async with node("stranger2") as third:
                with pytest.raises(Exception):  # noqa: B017 - any failure to connect
                    async with asyncio.timeout(10):
                        await ping(third, alice.full_addrs[0], count=1)
            assert reasons.get("nat_private_address", 0) > 0

    run_simulation(main, seed=10, config=QUIET)


@pytest.mark.parametrize("preset", ["port_restricted", "full_cone"])
def test_node_behind_nat_dials_out_and_is_dialable_only_if_filtering_allows(preset: str) -> None:
    async def main(sim: Simulation) -> None:
        net = sim.network
        net.add_hosts(["isp", "server", "stranger"])
        for h in ("server", "stranger"):
            net.add_link(h, "isp", latency=0.02, loss=0.0)
        net.add_nat("home", lan=["alice"], wan="isp", preset=preset)

        def node(host: str) -> Node:
            return Node(
                transports=[SimTransport(net, host, reuse_port=True)],
                services=[PingService(), IdentifyService()],
                entropy=sim.entropy_source(host),
                listen=["/memory/4001"],
            )

        async with node("server") as server, node("alice") as alice, node("stranger") as other:
            assert (await ping(alice, server.full_addrs[0], count=2))[1] > 0
            info = await identify(alice, server.full_addrs[0])
            assert info.observed_addr is not None
            observed = host_port(sim, info.observed_addr)
            assert observed == ("home", 4001)  # reuse_port: mapped like the listening port
            target = info.observed_addr.encapsulate(f"/p2p/{alice.peer_id}")
            if preset == "full_cone":
                assert (await ping(other, target, count=1))[0] > 0
            else:
                with pytest.raises(Exception):  # noqa: B017 - reset by the NAT
                    async with asyncio.timeout(10):
                        await ping(other, target, count=1)

    run_simulation(main, seed=11, config=QUIET)


# --- cgnat ------------------------------------------------------------------------------


def test_cgnat_two_layers_and_a_shared_carrier() -> None:
    async def main(sim: Simulation) -> None:
        internet(sim)
        net = sim.network
        home1 = net.add_nat("home1", lan=["alice"], wan="isp", preset="cgnat", carrier="cgn")
        home2 = net.add_nat("home2", lan=["bob"], wan="isp", preset="cgnat", carrier="cgn")
        assert home1.upstream is home2.upstream is net.nat("cgn")
        assert net.find_path("alice", "s1") == ["alice", "home1", "cgn", "isp", "s1"]
        inbox = Inbox()
        sock, _ = net.open_datagram(inbox, "alice", 5000)
        ext = await observe_udp(sim, sock, inbox, "s1")
        assert ext[0] == "cgn" and 1024 <= ext[1] <= 65535
        assert [m.external for m in home1.mappings()] == [("home1", 5000)]
        (carrier,) = net.nat("cgn").mappings()
        assert carrier.internal == ("home1", 5000) and carrier.external == ext
        assert [e.src for e in sim.trace.of_kind("nat_map")] == ["home1", "cgn"]
        assert net.public_address("alice", 5000, proto="udp") == net.host("cgn").address(ext[1])
        with pytest.raises(ConnectionFailed, match="0 udp mappings"):
            net.public_address("bob", 5000, proto="udp")

    run_simulation(main, seed=12, config=QUIET)


def test_a_crashed_nat_forgets_its_mappings_and_connections_through_it_break() -> None:
    async def main(sim: Simulation) -> None:
        internet(sim)
        net = sim.network
        box = net.add_nat("box", lan=["alice"], wan="isp", preset="full_cone")

        async def sink(conn: Any) -> None:
            while await conn.read():
                pass

        net.listen("s1", 4001, sink)
        conn = await net.connect("alice", "s1", 4001)
        await conn.write(b"before")
        net.crash("box")
        net.restart("box")
        assert box.mappings() == [] and len(sim.trace.of_kind("nat_clear")) == 1
        await conn.write(b"after")  # committed; it cannot get through any more
        with pytest.raises(StreamReset):
            await conn.read()
        drops = [(e.extra or {}).get("reason") for e in sim.trace.of_kind("drop")]
        assert "nat_no_mapping" in drops
        assert sim.now >= sim.config.connection_timeout

    run_simulation(main, seed=13, config=QUIET)


# --- configuration errors ---------------------------------------------------------------


def test_configuration_errors_are_clear() -> None:
    with pytest.raises(InvalidConfiguration, match="unknown NAT preset 'cone'"):
        nat_preset("cone")
    with pytest.raises(InvalidConfiguration, match="filtering must be one of"):
        NatConfig(filtering="strict")  # type: ignore[arg-type]
    with pytest.raises(InvalidConfiguration, match="needs translate=False"):
        NatConfig(filtering="none")
    with pytest.raises(InvalidConfiguration, match="port_range"):
        NatConfig(port_range=(10, 5))
    with pytest.raises(InvalidConfiguration, match="udp_timeout"):
        NatConfig(udp_timeout=0)

    async def main(sim: Simulation) -> None:
        net = sim.network
        net.add_nat("box", lan=["alice"], wan="isp")
        with pytest.raises(InvalidConfiguration, match="already on the LAN"):
            net.add_nat("box2", lan=["alice"], wan="isp")
        with pytest.raises(InvalidConfiguration, match="preset or a config"):
            net.add_nat("box3", lan=["x"], wan="isp", preset="open", config=NatConfig())
        with pytest.raises(InvalidConfiguration, match="is a NAT box"):
            net.listen("box", 1, lambda c: asyncio.sleep(0))
        with pytest.raises(InvalidConfiguration, match="no NAT box"):
            net.nat("nope")

    run_simulation(main, seed=1, config=QUIET)


# --- determinism ------------------------------------------------------------------------


def test_nat_scenario_passes_and_is_deterministic_across_processes() -> None:
    result = run_scenario("nat", seed=5, nodes=2)
    assert result.ok, result.problems
    assert result.figures["symmetric"]["same_mapping"] is False
    code = (
        "import json; from switchy.scenarios import run_scenario; "
        "r = run_scenario('nat', seed=5, nodes=2); print(json.dumps([r.digest, r.events]))"
    )
    env = dict(os.environ, PYTHONHASHSEED="99")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout) == [result.digest, result.events]
    assert run_scenario("nat", seed=6, nodes=2).digest != result.digest


# --- the state machine, by property -----------------------------------------------------

_HOSTS = ["r1", "r2"]
_PORTS = [1, 2]
_INSIDE = [("a", 10), ("a", 11), ("b", 10)]

_ops = st.lists(
    st.tuples(
        st.sampled_from(["out", "in"]),
        st.sampled_from(_INSIDE),
        st.sampled_from(_HOSTS),
        st.sampled_from(_PORTS),
        st.integers(min_value=0, max_value=40),  # time step
        st.integers(min_value=0, max_value=7),  # which external port an inbound targets
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(
    preset=st.sampled_from(
        ["full_cone", "address_restricted", "port_restricted", "symmetric", "cgnat"]
    ),
    ops=_ops,
)
def test_table_never_lets_in_what_its_filtering_forbids(preset: str, ops: list[Any]) -> None:
    import random

    cfg = attrs.evolve(NAT_PRESETS[preset], port_range=(100, 107))
    table = NatTable("nat", cfg, random.Random(0))
    # A model of what went out: (internal, remote) -> (last time, external endpoint used).
    sent: dict[tuple[tuple[str, int], tuple[str, int]], tuple[float, tuple[str, int]]] = {}
    now = 0.0
    for direction, inside, rhost, rport, step, ext in ops:
        now += step
        remote = (rhost, rport)
        if direction == "out":
            v = table.outbound(NatPacket("udp", inside, remote), now)
            if v.action == "forward":
                assert v.packet is not None and v.packet.src[0] == "nat"
                sent[(inside, remote)] = (now, v.packet.src)
                if cfg.mapping == "endpoint_independent":
                    # One external endpoint per internal endpoint while traffic is live.
                    others = {
                        e for (i, _), (t, e) in sent.items() if i == inside and now < t + 30.0
                    }
                    assert others == {v.packet.src}
            else:
                assert v.reason == "nat_ports_exhausted"
        else:
            target = ("nat", 100 + ext)
            v = table.inbound(NatPacket("udp", remote, target), now)
            live = {
                (i, r)
                for (i, r), (t, e) in sent.items()
                if e == target and now < t + 30.0  # sent through this mapping lately
            }
            if v.action == "forward":
                assert v.packet is not None
                assert live, "let in a packet for a mapping with no live traffic"
                assert {i for i, _ in live} == {v.packet.dst}
                if cfg.filtering == "address_and_port_dependent":
                    assert remote in {r for _, r in live}
                elif cfg.filtering == "address_dependent":
                    assert rhost in {r[0] for _, r in live}
            else:
                # It is refused only when the filter forbids it.
                if cfg.filtering == "endpoint_independent":
                    assert not live
                elif cfg.filtering == "address_dependent":
                    assert rhost not in {r[0] for _, r in live}
                else:
                    assert remote not in {r for _, r in live}
        # Never one external port for two live mappings.
        externals = [m.external for m in table.mappings()]
        assert len(externals) == len(set(externals))
        for m in table.mappings():
            assert 100 <= m.external[1] <= 107


@settings(max_examples=100, deadline=None)
@given(ops=_ops)
def test_firewall_only_lets_in_replies(ops: list[Any]) -> None:
    import random

    table = NatTable("fw", NAT_PRESETS["firewall"], random.Random(0))
    sent: dict[tuple[tuple[str, int], tuple[str, int]], float] = {}
    now = 0.0
    for direction, inside, rhost, rport, step, _ in ops:
        now += step
        remote = (rhost, rport)
        if direction == "out":
            v = table.outbound(NatPacket("udp", inside, remote), now)
            assert v.action == "forward" and v.packet is not None and v.packet.src == inside
            sent[(inside, remote)] = now
        else:
            v = table.inbound(NatPacket("udp", remote, inside), now)
            allowed = now < sent.get((inside, remote), -1e9) + 30.0
            assert (v.action == "forward") is allowed
