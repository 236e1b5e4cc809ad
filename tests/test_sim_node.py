"""Unchanged stack code (Node, Noise, yamux, ping) over the simulator, in virtual time."""

from __future__ import annotations

import asyncio
import time

import pytest
from multiaddr import Multiaddr

from switchy.protocols.ping import PingService, ping
from switchy.stack.config import NetworkConfig
from switchy.stack.errors import ConnectionFailed, NoRoute, P2PTimeout, UnsupportedAddress
from switchy.stack.node import Node
from switchy.transports.sim import (
    SimConfig,
    SimTransport,
    Simulation,
    parse_sim_multiaddr,
    run_simulation,
    sim_multiaddr,
)

QUIET = SimConfig(default_packet_loss=0.0)


def make_node(sim: Simulation, host: str, **kw: object) -> Node:
    return Node(
        transports=[SimTransport(sim.network, host)],
        services=[PingService()],
        entropy=sim.entropy_source(host),
        listen=["/memory/4001"],
        **kw,  # type: ignore[arg-type]
    )


def test_two_nodes_ping_over_the_simulator_in_virtual_time() -> None:
    async def main(sim: Simulation) -> None:
        net = sim.network
        net.add_hosts(["a", "r", "b"])
        net.add_link("a", "r", latency=0.010)
        net.add_link("r", "b", latency=0.015)
        async with make_node(sim, "a") as na, make_node(sim, "b") as nb:
            assert [str(a) for a in nb.listen_addrs] == ["/memory/304001"]
            start = sim.now
            conn = await na.connect(nb.full_addrs[0])
            assert conn.remote_peer == nb.peer_id
            setup = sim.now - start
            # TCP round trip, then Noise and multistream/yamux negotiation round trips.
            assert setup >= 2 * 0.050
            start = sim.now
            rtts = await ping(na, nb.full_addrs[0], count=10)
            assert len(rtts) == 10
            # Ten ping round trips (plus at most one for negotiating the stream).
            assert 10 * 0.050 - 1e-6 <= sim.now - start <= 11 * 0.050 + 1e-6
            await asyncio.sleep(3600)  # an idle hour with keep-alives costs nothing
            assert na.connections(nb.peer_id)
        assert sim.network.link("r", "b").counters.packets > 100

    wall = time.perf_counter()
    run_simulation(main, seed=1, config=QUIET)
    # the idle hour was not slept for real (a bound on correctness, not on speed)
    assert time.perf_counter() - wall < 600


def test_node_keys_and_run_are_deterministic() -> None:
    def run(seed: int) -> tuple[str, str]:
        async def main(sim: Simulation) -> tuple[str, str]:
            sim.network.add_hosts(["a", "b"])
            sim.network.add_link("a", "b", latency=0.01, loss=0.05, jitter=0.002)
            async with make_node(sim, "a") as na, make_node(sim, "b") as nb:
                await ping(na, nb.full_addrs[0], count=20)
                return str(na.peer_id), sim.trace.digest()

        return run_simulation(main, seed=seed, config=QUIET)

    assert run(7) == run(7)
    assert run(7)[0] != run(8)[0]


def test_sim_transport_dial_errors() -> None:
    async def main(sim: Simulation) -> None:
        net = sim.network
        net.add_hosts(["a", "b", "island"])
        net.add_link("a", "b", latency=0.01)
        transport = SimTransport(net, "a", config=NetworkConfig(dial_timeout=4))
        with pytest.raises(NoRoute, match="no route from a to island"):
            await transport.dial(net.host("island").address(1))
        with pytest.raises(NoRoute, match="no simulated host number 99"):
            await transport.dial(sim_multiaddr(99, 1))
        with pytest.raises(ConnectionFailed, match="nothing listens on b:4001"):
            await transport.dial(net.host("b").address(4001))
        with pytest.raises(UnsupportedAddress):
            await transport.dial(Multiaddr("/ip4/127.0.0.1/tcp/4001"))
        with pytest.raises(UnsupportedAddress, match="port 0"):
            await transport.dial(net.host("b").address(0))
        net.listen("b", 4001, lambda conn: conn.close())
        net.partition(["a"], ["b"])
        start = sim.now
        with pytest.raises(P2PTimeout, match="timed out after 4"):
            await transport.dial(net.host("b").address(4001))
        assert sim.now - start == pytest.approx(4.0)
        net.heal()
        conn = await transport.dial(net.host("b").address(4001))
        await conn.close()

    run_simulation(main, seed=1, config=QUIET)


def test_sim_addresses_are_never_real_addresses() -> None:
    async def main(sim: Simulation) -> None:
        from switchy.transports.tcp import TcpTransport

        host = sim.network.add_host("a")
        other = sim.network.add_host("b")
        t = SimTransport(sim.network, host)
        addr = host.address(4001)
        assert str(addr) == "/memory/104001"
        assert parse_sim_multiaddr(addr) == (1, 4001)
        peer = Node(transports=[t], entropy=sim.entropy).peer_id
        with_peer = Multiaddr(f"{addr}/p2p/{peer}")
        assert t.can_dial(with_peer)
        assert t.can_listen(addr) and t.can_listen(Multiaddr("/memory/0"))
        assert not t.can_listen(other.address(4001))
        for real in ("/ip4/127.0.0.1/tcp/4001", "/ip6/::1/tcp/1", "/dns4/a.sim/tcp/1"):
            assert not t.can_dial(Multiaddr(real))
        # Real transports do not understand the sim form.
        assert not TcpTransport().can_dial(addr)
        with pytest.raises(UnsupportedAddress, match="cannot listen on"):
            await t.listen(other.address(4001), lambda c: c.close())
        listener = await t.listen(Multiaddr("/memory/0"), lambda c: c.close())
        assert parse_sim_multiaddr(listener.addrs[0]) == (1, 49152)
        await listener.close()
        # parses are remembered: asking again (a new object, same address) gives the same
        for _ in range(2):
            assert parse_sim_multiaddr(Multiaddr("/memory/104001")) == (1, 4001)
            assert parse_sim_multiaddr(Multiaddr("/ip4/127.0.0.1/tcp/4001")) is None
            assert parse_sim_multiaddr(Multiaddr("/memory/199999999")) is None  # port too big

    run_simulation(main, seed=1, config=QUIET)


def test_keepalive_notices_a_partition_and_a_crash() -> None:
    async def main(sim: Simulation) -> None:
        net = sim.network
        net.add_hosts(["a", "b"])
        net.add_link("a", "b", latency=0.01)
        config = NetworkConfig(keepalive_interval=10)
        na = make_node(sim, "a", config=config)
        nb = make_node(sim, "b", config=config)
        async with na, nb:
            await ping(na, nb.full_addrs[0])
            assert na.connections(nb.peer_id)
            part = net.partition(["a"], ["b"])
            await asyncio.sleep(60)
            assert not na.connections(nb.peer_id)
            assert not nb.connections(na.peer_id)
            net.heal(part)
            await ping(na, nb.full_addrs[0])
            net.crash("b")
            await asyncio.sleep(60)
            assert not na.connections(nb.peer_id)
            with pytest.raises(P2PTimeout):
                await na.connect(nb.full_addrs[0])

    run_simulation(main, seed=1, config=QUIET)
