"""The resource manager, the gater and the connection manager in a node, over loopback TCP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from switchy.protocols.echo import ECHO_PROTOCOL, EchoService, echo
from switchy.protocols.ping import PingService, ping
from switchy.stack.config import NetworkConfig
from switchy.stack.errors import (
    ConnectionClosed,
    ConnectionFailed,
    InvalidConfiguration,
    NegotiationFailed,
    P2PError,
    ResourceLimitExceeded,
    StreamRefused,
    StreamReset,
)
from switchy.stack.gater import ConnectionGater
from switchy.stack.identity import KeyPair
from switchy.stack.limits import LimitEvent, MiB
from switchy.stack.node import ConnectionEvent, Node, ProtocolService
from switchy.stack.stream import MuxedStream
from switchy.transports.tcp import TcpTransport

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
HOLD = "/test/hold/1.0.0"
CHUNK = 256 * 1024


def run(coro_fn: Callable[[], Awaitable[None]], timeout: float = 60) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro_fn(), timeout)

    asyncio.run(bounded())


def disconnections(node: Node, count: int) -> asyncio.Event:
    """An event set once ``node`` saw ``count`` more disconnections."""
    done = asyncio.Event()
    seen = 0

    def on_event(ev: ConnectionEvent) -> None:
        nonlocal seen
        if ev.kind == "disconnected":
            seen += 1
            if seen >= count:
                done.set()

    node.on_connection_event(on_event)
    return done


def make(**kwargs: Any) -> Node:
    cfg = kwargs.pop("config", None) or NetworkConfig(keepalive_interval=0)
    return Node(
        transports=[TcpTransport()],
        services=[PingService(), EchoService()],
        config=cfg,
        listen=[LOOPBACK],
        **kwargs,
    )


@asynccontextmanager
async def started(*made: Node) -> AsyncIterator[None]:
    try:
        for n in made:
            await n.start()
        yield
    finally:
        for n in made:
            await n.close()


def test_unread_streams_stay_within_the_memory_budget() -> None:
    """6 peers x streams whose data the server never reads: buffers stop at the budget.

    Before the resource manager every stream kept what its window allowed (6 x 1,000 echo
    streams took 2.7 GB); now streams over the budget are reset and the rest is bounded.
    """
    held: list[MuxedStream] = []
    release = asyncio.Event()

    async def hold(stream: MuxedStream) -> None:
        held.append(stream)
        await release.wait()

    cfg = NetworkConfig(keepalive_interval=0, limits=("system.memory=3MiB", "peer.memory=1MiB"))
    server = make(config=cfg, handlers={HOLD: hold})
    attackers = [make() for _ in range(6)]
    honest = make()
    per_peer = 10
    size = CHUNK - 1024  # fits the first window: every write completes at once

    async def main() -> None:
        async with started(server, honest, *attackers):
            addr = server.full_addrs[0]
            sent: list[MuxedStream] = []
            for a in attackers:
                for _ in range(per_peer):
                    s = await a.open_stream(addr, HOLD)
                    await s.write(b"x" * size)
                    sent.append(s)
            for a in attackers:  # the server handled every frame before its pong
                conn = a.connections(server.peer_id)[0]
                await conn.ping(timeout=10)  # type: ignore[attr-defined]
            resets = len([s for s in sent if getattr(s, "_error", None) is not None])
            usage = server.limits.usage()
            assert usage["system"]["memory"] <= 3 * MiB
            buffered = sum(len(getattr(s, "_buf", b"")) for s in held)
            assert buffered <= 3 * MiB
            assert buffered == usage["system"]["memory"]
            full = 3 * MiB // size
            assert resets >= len(sent) - full
            blocked = server.limits.blocked
            assert blocked[("peer", "memory")] + blocked[("system", "memory")] >= resets
            # an honest peer is still served while the budget is full
            rtt = (await ping(honest, addr))[0]
            assert rtt < 5.0
            gone = disconnections(server, len(attackers))
            release.set()
            for a in attackers:
                await a.close()
            await asyncio.wait_for(gone.wait(), 20)
            assert server.limits.system.used("memory") == 0
            assert set(server.limits.usage()) <= {"system", f"peer:{honest.peer_id}"}
            assert server.limits.system.used("conns") == 1

    run(main)


def test_connection_limit_refuses_cleanly_and_keeps_serving() -> None:
    cfg = NetworkConfig(keepalive_interval=0, limits=("system.conns_inbound=3",))
    server = make(config=cfg)
    clients = [make() for _ in range(5)]

    async def main() -> None:
        async with started(server, *clients):
            addr = server.full_addrs[0]
            for c in clients[:3]:
                assert await echo(c, addr, b"in") == b"in"
            for c in clients[3:]:
                with pytest.raises(P2PError):
                    await echo(c, addr, b"out")
            assert server.limits.blocked[("system", "conns_inbound")] == 2
            assert server.limits.usage()["system"]["conns_inbound"] == 3
            # the node's metrics export the same (libp2p_rcmgr_*, as go-libp2p names them)
            fams = {f.name: dict(f.samples) for f in server.metrics.collect()}
            assert fams["libp2p_rcmgr_connections"][("inbound", "system")] == 3
            assert fams["libp2p_rcmgr_limit"][("system", "connections_inbound")] == 3
            blocked = fams["libp2p_rcmgr_blocked_resources"]
            assert blocked[("inbound", "system", "connections_inbound")] == 2
            for c in clients[:3]:  # the connections within the limit keep working
                assert await echo(c, addr, b"again" * 1000) == b"again" * 1000
            gone = disconnections(server, 1)
            await clients[0].close()
            await asyncio.wait_for(gone.wait(), 20)
            assert await echo(clients[3], addr, b"now") == b"now"

    run(main)


def test_per_ip_limit_counts_loopback_unless_exempt() -> None:
    async def attempt(exempt: bool) -> tuple[int, int]:
        cfg = NetworkConfig(
            keepalive_interval=0, max_inbound_per_ip=2, limits_exempt_loopback=exempt
        )
        server = make(config=cfg)
        clients = [make() for _ in range(4)]
        ok = failed = 0
        async with started(server, *clients):
            for c in clients:
                try:
                    await echo(c, server.full_addrs[0], b"hi")
                    ok += 1
                except P2PError:
                    failed += 1
            assert server.limits.blocked[("ip", "conns_inbound")] == failed
        return ok, failed

    async def main() -> None:
        assert await attempt(False) == (2, 2)
        assert await attempt(True) == (4, 0)

    run(main)


def test_outbound_per_ip_cap_refuses_the_dial_naming_it() -> None:
    """``max_outbound_per_ip=2``: a node dials two loopback peers, the third dial raises
    ResourceLimitExceeded naming the IP scope and the setting (nothing is sent to that
    peer); once a connection closes the dial goes through."""

    async def main() -> None:
        cfg = NetworkConfig(keepalive_interval=0, max_outbound_per_ip=2)
        dialer = make(config=cfg)
        servers = [make() for _ in range(3)]
        async with started(dialer, *servers):
            for s in servers[:2]:
                assert await echo(dialer, s.full_addrs[0], b"hi") == b"hi"
            with pytest.raises(ResourceLimitExceeded) as info:
                await dialer.connect(servers[2].full_addrs[0])
            err = info.value
            assert (err.scope, err.resource, err.limit) == ("ip:127.0.0.1", "conns_outbound", 2)
            assert "max_outbound_per_ip" in str(err)
            assert not servers[2].connections()
            assert dialer.limits.blocked[("ip", "conns_outbound")] == 1
            gone = disconnections(dialer, 1)
            for conn in dialer.connections(servers[0].peer_id):
                await conn.close()
            await asyncio.wait_for(gone.wait(), 20)
            assert await echo(dialer, servers[2].full_addrs[0], b"now") == b"now"

    run(main)


REFUSED = 300


def test_streams_refused_for_limits_are_counted_once_each() -> None:
    """300 streams the server refuses for its limits count 300 refusals, not 600.

    A peer over its stream limit resets each SYN before acknowledging it: the dialer gets
    StreamRefused and asks nothing more (it used to open a probe stream to learn why,
    refused and counted again).  A stream reset after negotiation by a protocol's limit
    is still probed, with ``ls``, which no protocol's limit charges."""

    async def refuse_all(limit: str, counted: tuple[str, str], error: type[Exception]) -> None:
        key = KeyPair.generate()
        limit = limit.format(client=key.peer_id)
        server = make(config=NetworkConfig(keepalive_interval=0, limits=(limit,)))
        client = make(key=key)
        async with started(server, client):
            addr = server.full_addrs[0]
            await client.connect(addr)
            for _ in range(REFUSED):
                stream = await client.open_stream(server.peer_id, ECHO_PROTOCOL)
                with pytest.raises(StreamReset) as info:
                    await stream.write(b"hello")
                    await stream.close_write()
                    await stream.read_all()
                assert isinstance(info.value, error), info.value
                assert not isinstance(info.value, NegotiationFailed)
            other = make()
            async with started(other):
                assert len(await ping(other, addr)) == 1  # the server serves on
            assert server.limits.blocked[counted] == REFUSED
            assert sum(server.limits.blocked.values()) == REFUSED

    async def main() -> None:
        await refuse_all(
            "peer:{client}.streams_inbound=0", ("peer", "streams_inbound"), StreamRefused
        )
        await refuse_all(
            f"protocol:{ECHO_PROTOCOL}.streams_inbound=0",
            ("protocol", "streams_inbound"),
            StreamReset,
        )

    run(main, timeout=120)


def test_gater_denies_before_and_after_the_handshake() -> None:
    a_key = KeyPair.generate()
    denied_net = make(gater=ConnectionGater(deny_networks=["127.0.0.0/8"]))
    denied_peer = make(gater=ConnectionGater(deny_peers=[a_key.peer_id]))
    a = make(key=a_key)
    b = make()
    checks: list[object] = []

    def callback(check: object) -> bool:
        checks.append(check)
        return False

    gated_out = make(gater=ConnectionGater(callback=callback))

    async def main() -> None:
        async with started(denied_net, denied_peer, a, b, gated_out):
            with pytest.raises(P2PError):
                await echo(a, denied_net.full_addrs[0], b"x")
            assert denied_net.gater.refused["addr"] == 1
            with pytest.raises(P2PError):
                await echo(a, denied_peer.full_addrs[0], b"x")
            assert denied_peer.gater.refused["peer"] == 1
            assert await echo(b, denied_peer.full_addrs[0], b"ok") == b"ok"
            with pytest.raises(ConnectionFailed, match="refused by the connection gater"):
                await gated_out.connect(b.full_addrs[0])
            assert checks and not b.connections(gated_out.peer_id)
            assert denied_net.limits.usage() == {"system": {}}

    run(main)


def test_connection_manager_trims_to_the_low_watermark_sparing_protected_peers() -> None:
    cfg = NetworkConfig(
        keepalive_interval=0, conn_low_water=2, conn_high_water=3, conn_grace_period=0
    )
    server = make(config=cfg)
    clients = [make() for _ in range(4)]

    async def main() -> None:
        async with started(server, *clients):
            addr = server.full_addrs[0]
            server.connmgr.protect(clients[0].peer_id, "test")
            server.connmgr.tag_peer(clients[1].peer_id, "useful", 10)
            gone = asyncio.Event()

            def on_event(ev: ConnectionEvent) -> None:
                if ev.kind == "disconnected" and len(server.connections()) <= 2:
                    gone.set()

            server.on_connection_event(on_event)
            for c in clients:
                await c.connect(addr)
            await asyncio.wait_for(gone.wait(), 20)
            left = set(server.connected_peers)
            assert left == {clients[0].peer_id, clients[1].peer_id}
            assert server.connmgr.trimmed == 2

    run(main)


def test_idle_connections_are_closed() -> None:
    cfg = NetworkConfig(keepalive_interval=0, idle_timeout=0.2)
    server = make(config=cfg)
    client = make()

    async def main() -> None:
        async with started(server, client):
            closed = asyncio.Event()
            server.on_connection_event(
                lambda ev: closed.set() if ev.kind == "disconnected" else None
            )
            assert await echo(client, server.full_addrs[0], b"hi") == b"hi"
            await asyncio.wait_for(closed.wait(), 20)
            assert server.connmgr.idle_closed == 1

    run(main)


def test_a_relay_we_hold_a_reservation_on_is_protected() -> None:
    from switchy.transports.relay import RelayService, RelayTransport
    from switchy.transports.relay.transport import RESERVATION_TAG

    relay = Node(
        transports=[TcpTransport()],
        services=[RelayService()],
        config=NetworkConfig(keepalive_interval=0),
        listen=[LOOPBACK],
    )
    client = Node(
        transports=[TcpTransport()],
        services=[RelayTransport()],
        config=NetworkConfig(keepalive_interval=0),
        listen=[LOOPBACK],
    )

    async def main() -> None:
        async with started(relay, client):
            assert not client.connmgr.is_protected(relay.peer_id)
            await client.listen(f"{relay.full_addrs[0]}/p2p-circuit")
            assert client.connmgr.is_protected(relay.peer_id, RESERVATION_TAG)

    run(main)


def test_quic_streams_and_buffers_are_charged_and_refused_over_budget() -> None:
    """The same budget holds over QUIC: unread streams stop at the memory limit, the
    stream limit refuses the excess, and closing frees every charge."""
    from switchy.transports.quic import QuicTransport

    quic = "/ip4/127.0.0.1/udp/0/quic-v1"
    held: list[MuxedStream] = []
    release = asyncio.Event()

    async def hold(stream: MuxedStream) -> None:
        held.append(stream)
        await release.wait()

    cfg = NetworkConfig(
        keepalive_interval=0, limits=("peer.memory=1MiB", "peer.streams_inbound=12")
    )
    server = Node(transports=[QuicTransport()], config=cfg, handlers={HOLD: hold}, listen=[quic])
    client = Node(
        transports=[QuicTransport()], config=NetworkConfig(keepalive_interval=0), listen=[quic]
    )
    size = 200 * 1024

    async def main() -> None:
        async with started(server, client):
            addr = server.full_addrs[0]
            sent = []
            for _ in range(16):
                try:
                    s = await client.open_stream(addr, HOLD)
                    await asyncio.wait_for(s.write(b"y" * size), 10)
                    sent.append(s)
                except P2PError:
                    pass
            conn = client.connections(server.peer_id)[0]
            await conn.ping(timeout=10)  # type: ignore[attr-defined]
            usage = server.limits.usage()[f"peer:{client.peer_id}"]
            assert usage["streams_inbound"] <= 12
            assert usage.get("memory", 0) <= 1 * MiB
            buffered = sum(len(getattr(s, "_buf", b"")) for s in held)
            assert buffered <= 1 * MiB
            blocked = server.limits.blocked
            assert blocked[("peer", "memory")] + blocked[("peer", "streams_inbound")] > 0
            gone = disconnections(server, 1)
            release.set()
            await client.close()
            await asyncio.wait_for(gone.wait(), 20)
            assert server.limits.usage() == {"system": {}}

    run(main)


def test_router_bodies_in_memory_are_charged_to_the_peer_and_released() -> None:
    """A request body read into memory is charged to its stream's scope (and so to the
    peer's): within the peer's budget it is served, past it the answer is 503 naming the
    scope (or, when the receive buffer's charge is the one past it, the stream is reset),
    and once answered nothing stays charged."""
    from switchy.protocols.router import Request, Router
    from switchy.protocols.router.client import request

    router = Router(max_body_size=64 * MiB)
    server = Node(
        transports=[TcpTransport()],
        services=[PingService(), router],
        config=NetworkConfig(keepalive_interval=0, limits=("peer.memory=4MiB",)),
        listen=[LOOPBACK],
    )
    client = make()
    held: list[int] = []

    @router.post("/upload")
    def upload(req: Request) -> str:
        assert isinstance(req.body, bytes)
        held.append(server.limits.usage()[f"peer:{client.peer_id}"].get("memory", 0))
        return str(len(req.body))

    async def main() -> None:
        async with started(server, client):
            addr = server.full_addrs[0]
            small = await request(client, addr, "POST", "/upload", body=b"x" * 300_000)
            assert small.status == 200 and small.body == b"300000"
            assert held[0] >= 300_000  # the body, while the handler ran
            try:  # past the budget: the body's charge (503) or the receive buffer's refuses
                big = await request(client, addr, "POST", "/upload", body=b"x" * 12_000_000)
            except ConnectionClosed:
                pass
            else:
                assert big.status == 503 and isinstance(big.body, bytes)
                assert b"peer" in big.body and b"memory" in big.body, big.body
            assert len(held) == 1  # the handler never saw the big one
            assert len(await ping(client, addr)) == 1  # the connection serves on
            usage = server.limits.usage().get(f"peer:{client.peer_id}", {})
            assert usage.get("memory", 0) == 0

    run(main)


def _relay_trio(buffer_size: int) -> tuple[Node, Node, Node]:
    from switchy.transports.relay import RelayConfig, RelayService, RelayTransport

    cfg = NetworkConfig(keepalive_interval=0, limits=("peer.memory=4MiB",))
    config = RelayConfig(limit_data=0, limit_duration=0, buffer_size=buffer_size)
    relay = Node(
        transports=[TcpTransport()],
        services=[PingService(), RelayService(config)],
        config=cfg,
        listen=[LOOPBACK],
    )
    ends = [
        Node(
            transports=[TcpTransport()],
            services=[PingService(), RelayTransport()],
            config=NetworkConfig(keepalive_interval=0),
        )
        for _ in range(2)
    ]
    return relay, ends[0], ends[1]


def test_relay_circuit_buffers_are_charged_to_the_source_peer() -> None:
    """A circuit's two in-flight chunks (2 x buffer_size) are charged to the source
    peer's scope while it is open and given back when it ends; a circuit whose buffers do
    not fit the peer's budget is refused with RESOURCE_LIMIT_EXCEEDED."""
    from switchy.stack.errors import RelayRefused

    relay, b, a = _relay_trio(64 * 1024)

    async def main() -> None:
        async with started(relay, b, a):
            await b.listen(f"{relay.full_addrs[0]}/p2p-circuit")
            circuit_addr = next(x for x in b.full_addrs if "/p2p-circuit/" in str(x))
            assert len(await ping(a, circuit_addr)) == 1
            status = relay.metrics.get("libp2p_relaysvc_connection_request_response_status_total")
            assert status is not None and status.value("ok") == 1
            assert status.value("rejected") == 0
            usage = relay.limits.usage()[f"peer:{a.peer_id}"]
            assert usage["memory"] >= 2 * 64 * 1024
            gone = disconnections(relay, 1)
            await a.close()
            await asyncio.wait_for(gone.wait(), 20)
            assert f"peer:{a.peer_id}" not in relay.limits.usage()

    run(main)

    relay, b, a = _relay_trio(4 * MiB)  # 8 MiB of buffers for a peer allowed 4 MiB

    async def refused() -> None:
        async with started(relay, b, a):
            await b.listen(f"{relay.full_addrs[0]}/p2p-circuit")
            circuit_addr = next(x for x in b.full_addrs if "/p2p-circuit/" in str(x))
            with pytest.raises((RelayRefused, ConnectionFailed)) as info:
                await a.connect(circuit_addr)
            assert "RESOURCE_LIMIT_EXCEEDED" in str(info.value)
            assert len(await ping(a, relay.full_addrs[0])) == 1  # the relay serves on
            # counted as a rejected circuit, like the relay's own refusals, never as ok
            m = relay.metrics
            status = m.get("libp2p_relaysvc_connection_request_response_status_total")
            rejections = m.get("libp2p_relaysvc_connection_rejections_total")
            assert status is not None and rejections is not None
            assert status.value("rejected") == 1 and status.value("ok") == 0
            assert rejections.value("resource_limit_exceeded") == 1
            opened = m.get("libp2p_relaysvc_connections_total")
            assert opened is not None and opened.value("opened") == 0

    run(refused)


def test_registry_streams_charge_their_buffers() -> None:
    """Each served registry stream holds STREAM_BUFFERS of the peer's memory: with room
    for two, a third stream is reset while two are open, and served once one ended."""
    from switchy.protocols.discovery import DISCOVERY_PROTOCOL
    from switchy.protocols.discovery.codec import ClientCore, Lookup
    from switchy.protocols.discovery.registry import STREAM_BUFFERS, RegistryService

    server = Node(
        transports=[TcpTransport()],
        services=[RegistryService()],
        config=NetworkConfig(
            keepalive_interval=0, limits=(f"peer.memory={2 * STREAM_BUFFERS + 4096}",)
        ),
        listen=[LOOPBACK],
    )
    client = make()

    async def lookup_on(stream: MuxedStream) -> None:
        core = ClientCore()
        core.send_request(Lookup("nobody"))
        await stream.write(core.data_to_send())
        while not core.receive_data(await stream.read(65536) or b"\0"):
            pass

    async def main() -> None:
        async with started(server, client):
            addr = server.full_addrs[0]
            held = [await client.open_stream(addr, DISCOVERY_PROTOCOL) for _ in range(2)]
            for s in held:
                await lookup_on(s)  # answered: its handler runs and holds its buffers
            usage = server.limits.usage()[f"peer:{client.peer_id}"]
            assert usage["memory"] >= 2 * STREAM_BUFFERS
            third = await client.open_stream(addr, DISCOVERY_PROTOCOL)
            with pytest.raises(P2PError):
                await lookup_on(third)
            await held[0].close_write()
            assert await held[0].read_all() == b""  # its handler ended: buffers released
            fourth = await client.open_stream(addr, DISCOVERY_PROTOCOL)
            await lookup_on(fourth)
            for s in (held[1], fourth):
                await s.close_write()
                assert await s.read_all() == b""
            usage = server.limits.usage().get(f"peer:{client.peer_id}", {})
            assert usage.get("memory", 0) == 0

    run(main)


def test_streams_are_charged_to_their_services_scope_both_ways() -> None:
    """A stream negotiated to a service's protocol is charged to ``service:<name>``:
    inbound at the server (``service:echo.streams_inbound=2``: the third concurrent echo
    stream is refused, naming the scope; other services serve on), outbound at the dialer
    (``service:echo.streams_outbound=1`` refuses a second one at open_stream); the scope
    shows in ``usage()`` while used and is gone after."""

    async def main() -> None:
        server = make(
            config=NetworkConfig(keepalive_interval=0, limits=("service:echo.streams_inbound=2",))
        )
        events: list[LimitEvent] = []
        server.limits.add_observer(events.append)
        client = make()
        async with started(server, client):
            addr = server.full_addrs[0]
            held = []
            for _ in range(2):
                stream = await client.open_stream(addr, ECHO_PROTOCOL)
                await stream.write(b"hi")
                assert await stream.read_exactly(2) == b"hi"  # negotiated and charged
                held.append(stream)
            usage = server.limits.usage()
            assert usage["service:echo"] == {"streams_inbound": 2, "streams": 2}
            assert usage[f"protocol:{ECHO_PROTOCOL}"]["streams_inbound"] == 2
            assert client.limits.usage()["service:echo"]["streams_outbound"] == 2
            third = await client.open_stream(addr, ECHO_PROTOCOL)
            with pytest.raises(StreamReset):
                await third.write(b"hi")
                await third.close_write()
                await third.read_all()
            assert [(e.scope, e.resource, e.limit) for e in events] == [
                ("service:echo", "streams_inbound", 2)
            ]
            assert server.limits.blocked[("service", "streams_inbound")] == 1
            assert len(await ping(client, addr)) == 1  # service:ping has room
            for stream in held:
                await stream.close_write()
                assert await stream.read_all() == b""
                await stream.close()
            assert "service:echo" not in client.limits.usage()

        dialer = make(
            config=NetworkConfig(keepalive_interval=0, limits=("service:echo.streams_outbound=1",))
        )
        other = make()
        async with started(dialer, other):
            first = await dialer.open_stream(other.full_addrs[0], ECHO_PROTOCOL)
            with pytest.raises(ResourceLimitExceeded) as info:
                await dialer.open_stream(other.peer_id, ECHO_PROTOCOL)
            err = info.value
            assert (err.scope, err.resource, err.limit) == ("service:echo", "streams_outbound", 1)
            assert len(await ping(dialer, other.peer_id)) == 1  # another service
            await first.reset()
            assert "service:echo" not in dialer.limits.usage()

    run(main)


def _builtin_services() -> list[ProtocolService]:
    from switchy.chat import ChatService
    from switchy.protocols.autonat import AutoNATService
    from switchy.protocols.blobs import BlobService
    from switchy.protocols.dcutr import DCUtRService
    from switchy.protocols.discovery import RegistryService
    from switchy.protocols.http.proxy import HttpProxyService
    from switchy.protocols.http.server import HttpService
    from switchy.protocols.http.tcp import TcpExposeService
    from switchy.protocols.identify import IdentifyService
    from switchy.protocols.kad.service import KadDHT
    from switchy.protocols.perf import PerfService
    from switchy.protocols.pubsub import PubSub
    from switchy.protocols.router import Router
    from switchy.transports.relay import RelayService, RelayTransport

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise NotImplementedError

    return [
        PingService(),
        EchoService(),
        PerfService(),
        IdentifyService(),
        AutoNATService(),
        DCUtRService(),
        KadDHT(mode="server"),
        PubSub(),
        Router(),
        HttpService(app),
        HttpProxyService("http://127.0.0.1:1/"),
        TcpExposeService("127.0.0.1", 1),
        RelayService(),
        RelayTransport(),
        BlobService(),
        ChatService("room", "nick"),
        RegistryService(),
    ]


@pytest.mark.parametrize("service", _builtin_services(), ids=lambda s: type(s).__name__)
def test_every_builtin_service_declares_its_name_and_protocols(service: ProtocolService) -> None:
    """Each built-in service names its scope and declares every protocol it registers."""
    node = Node(transports=[TcpTransport()], services=[service])
    served = set(node.protocols)
    assert service.service_name
    assert served, "the service registers a handler when attached"
    assert served <= set(service.service_protocols)
    for protocol in service.service_protocols:
        assert node.service_for(protocol) == service.service_name


def test_two_services_declaring_one_protocol_under_two_names_is_refused() -> None:
    class Mine(ProtocolService):
        service_name = "mine"
        service_protocols = ("/ipfs/ping/1.0.0",)

        def attach(self, node: Node) -> None:
            pass

    with pytest.raises(InvalidConfiguration, match="'ping' and 'mine'"):
        Node(transports=[TcpTransport()], services=[PingService(), Mine()])
    bare = Node(transports=[TcpTransport()], services=[EchoService()])
    assert bare.service_for("/nobody/1.0.0") is None
