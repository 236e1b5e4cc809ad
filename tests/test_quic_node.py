"""Nodes over QUIC on loopback: ping, identify, echo, perf; QUIC preferred; observed addresses."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from multiaddr import Multiaddr

from switchy.presets import default_node
from switchy.protocols.echo import echo
from switchy.protocols.identify import IdentifyService, identify
from switchy.protocols.perf import perf
from switchy.protocols.ping import ping
from switchy.stack.config import NetworkConfig
from switchy.stack.node import Node
from switchy.transports.quic import QuicConnection, QuicTransport
from switchy.transports.tcp import TcpTransport

QUIC = "/ip4/127.0.0.1/udp/0/quic-v1"
TCP = "/ip4/127.0.0.1/tcp/0"


def run(fn: Callable[[], Awaitable[None]], timeout: float = 60) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(fn(), timeout)

    asyncio.run(bounded())


@asynccontextmanager
async def started(*made: Node) -> AsyncIterator[tuple[Node, ...]]:
    try:
        for node in made:
            await node.start()
        yield made
    finally:
        for node in made:
            await node.close()


def quic_of(node: Node) -> QuicTransport:
    return next(t for t in node.transports if isinstance(t, QuicTransport))


def test_ping_identify_echo_and_perf_over_quic() -> None:
    async def main() -> None:
        async with started(default_node(listen=[QUIC]), default_node(listen=[QUIC])) as (a, b):
            assert str(b.full_addrs[0]).startswith("/ip4/127.0.0.1/udp/")
            rtts = await ping(a, b.full_addrs[0], count=5)
            assert len(rtts) == 5 and all(r > 0 for r in rtts)
            (conn,) = a.connections(b.peer_id)
            assert isinstance(conn, QuicConnection)  # no upgrader: QUIC's own TLS and streams
            assert conn.security_protocol == "/tls/1.0.0"
            info = await identify(a, b.peer_id)
            assert info.public_key == b.key.public_key
            assert info.listen_addrs == b.listen_addrs
            assert info.observed_addr == conn.local_addr  # a dials from its QUIC listen socket
            assert str(info.observed_addr).endswith("/quic-v1")
            data = os.urandom(1_000_000)
            assert await echo(a, b.peer_id, data) == data
            r = await perf(a, b.peer_id, upload=3_000_000, download=2_000_000)
            assert (r.upload_bytes, r.download_bytes) == (3_000_000, 2_000_000)
            # b identified a too (identify runs on every new connection)
            svc = next(s for s in b.services if isinstance(s, IdentifyService))
            await svc.wait_identified(a.peer_id, timeout=10)
            assert b.peerstore.protocols(a.peer_id)
        # closing the nodes closed every QUIC socket
        assert quic_of(a).endpoints == [] and quic_of(b).endpoints == []

    run(main)


def test_tcp_is_preferred_when_a_peer_has_both_and_that_is_configurable() -> None:
    async def main() -> None:
        server = default_node(listen=[TCP, QUIC])
        # the default is TCP first (bench: QUIC carries a fraction of TCP's bulk throughput)
        tcp_first = default_node(listen=[QUIC, TCP])
        quic_first = default_node(listen=[QUIC, TCP], transports=[QuicTransport(), TcpTransport()])
        async with started(server, quic_first, tcp_first):
            assert [str(a).split("/")[3] for a in server.listen_addrs] == ["tcp", "udp"]
            for client in (quic_first, tcp_first):
                client.peerstore.add_addrs(server.peer_id, server.listen_addrs)
                conn = await client.connect(server.peer_id)
                info = await identify(client, server.peer_id)
                # identify reports the address seen on *this* connection's transport
                assert info.observed_addr == conn.local_addr
                if client is quic_first:
                    assert isinstance(conn, QuicConnection)
                    assert str(info.observed_addr).endswith("/quic-v1")
                else:
                    assert not isinstance(conn, QuicConnection)
                    assert "/tcp/" in str(info.observed_addr)

    run(main)


def test_falls_back_to_tcp_when_quic_does_not_answer() -> None:
    async def main() -> None:
        server = default_node(listen=[TCP])
        # TCP starts after the dial stagger, long before the dead QUIC dial gives up
        client = default_node(
            config=NetworkConfig(dial_timeout=5.0), transports=[QuicTransport(), TcpTransport()]
        )
        async with started(server, client):
            silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            silent.bind(("127.0.0.1", 0))
            dead = f"/ip4/127.0.0.1/udp/{silent.getsockname()[1]}/quic-v1"
            client.peerstore.add_addrs(server.peer_id, [*server.listen_addrs])
            client.peerstore.add_addrs(server.peer_id, [Multiaddr(dead)])
            conn = await client.connect(server.peer_id)
            assert not isinstance(conn, QuicConnection)
            silent.close()

    run(main)


def test_many_streams_and_handlers_over_one_quic_connection() -> None:
    async def main() -> None:
        async with started(default_node(listen=[QUIC]), default_node(listen=[QUIC])) as (a, b):
            results = await asyncio.gather(
                *(echo(a, b.full_addrs[0], bytes([i]) * (5000 + i)) for i in range(50))
            )
            assert [len(r) for r in results] == [5000 + i for i in range(50)]
            assert len(a.connections(b.peer_id)) == 1

    run(main)


def test_inbound_over_the_connection_limit_is_refused() -> None:
    async def main() -> None:
        server = default_node(listen=[QUIC], config=NetworkConfig(max_connections=1))
        async with started(server, default_node(), default_node()) as (s, c1, c2):
            await ping(c1, s.full_addrs[0])
            conn = await c2.connect(s.full_addrs[0])
            await conn.wait_closed()
            assert len(s.connections()) == 1

    run(main)


@pytest.mark.parametrize("stagger", [0.25, 0.0])
def test_a_blackholed_quic_address_does_not_hold_up_tcp(stagger: float) -> None:
    """Staggered dials (RFC 8305 style), in virtual time: QUIC first, TCP after the stagger
    (at once with a stagger of 0)."""
    from switchy.transports.quic.sim import sim_quic_transport
    from switchy.transports.sim import SimConfig, SimTransport, Simulation, sim_multiaddr

    async def main(sim: Simulation) -> None:
        net = sim.network
        net.add_hosts(["a", "b"])
        net.add_link("a", "b", latency=0.01)
        config = NetworkConfig(keepalive_interval=0, dial_timeout=10.0, dial_stagger=stagger)

        def node(host: str, listen: list[str]) -> Node:
            return Node(
                transports=[sim_quic_transport(net, host, config), SimTransport(net, host)],
                config=config,
                entropy=sim.entropy_source(host),
                listen=listen,
            )

        async with node("b", ["/memory/4001"]) as b, node("a", []) as a:
            blackhole = sim_multiaddr(net.host("b").number, 9).encapsulate(Multiaddr("/quic-v1"))
            a.peerstore.add_addrs(b.peer_id, [b.listen_addrs[0], blackhole])
            start = sim.now
            conn = await a.connect(b.peer_id)
            took = sim.now - start
            assert "/quic-v1" not in str(conn.remote_addr)
            # The stagger, then a TCP-like connect and its handshakes (40 ms): far below the
            # 10 s dial timeout.
            assert stagger <= took < stagger + 0.1  # the TCP-like dial takes 2 round trips
            assert len(a.connections(b.peer_id)) == 1

            # With both addresses working, the first (QUIC) wins within the stagger and no
            # second connection is made.
            (quic_addr,) = await b.listen("/memory/4002/quic-v1")
            await conn.close()
            a.peerstore.add_addrs(b.peer_id, [quic_addr])
            start = sim.now
            conn = await a.connect(b.peer_id)
            assert "/quic-v1" in str(conn.remote_addr)
            assert sim.now - start < 0.25
            assert a.connections(b.peer_id) == [conn]  # only the QUIC connection is kept

    with Simulation(1, config=SimConfig(default_packet_loss=0.0)) as sim:
        sim.run(main(sim))


def test_dial_stagger_zero_keeps_one_connection_when_both_get_through() -> None:
    async def main() -> None:
        config = NetworkConfig(keepalive_interval=0, dial_stagger=0)
        async with started(default_node(listen=[QUIC, TCP]), default_node(config=config)) as (b, a):
            a.peerstore.add_addrs(b.peer_id, b.listen_addrs)
            await a.connect(b.peer_id)
            assert await ping(a, b.peer_id, 2)
            # Whichever won, the node keeps exactly one connection to b.
            assert len(a.connections(b.peer_id)) == 1

    run(main)
