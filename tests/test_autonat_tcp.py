"""AutoNAT over loopback sockets (TCP and QUIC): dial-backs on new connections from new ports."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from multiaddr import Multiaddr

from switchy.protocols.autonat import (
    AutoNATService,
    Reachability,
    Verdict,
    probe,
)
from switchy.protocols.identify import IdentifyService
from switchy.stack.errors import ConnectionFailed, InvalidConfiguration
from switchy.stack.node import ConnectionEvent, Node
from switchy.transports.quic import QuicTransport
from switchy.transports.tcp import TcpTransport


def everything(_: Multiaddr) -> bool:
    return True


def aio(fn: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test on a fresh loop, bounded to 60 s."""

    @functools.wraps(fn)
    def run() -> None:
        async def bounded() -> None:
            async with asyncio.timeout(60):
                await fn()

        asyncio.run(bounded())

    return run


def loopback_node(svc: AutoNATService, *, quic: bool = False) -> Node:
    listen = ["/ip4/127.0.0.1/tcp/0"] + (["/ip4/127.0.0.1/udp/0/quic-v1"] if quic else [])
    transports: list[Any] = [TcpTransport()] + ([QuicTransport()] if quic else [])
    return Node(transports=transports, services=[IdentifyService(), svc], listen=listen)


def port(addr: Multiaddr) -> int:
    return int(next(v for p, v in addr.items() if p.name in ("tcp", "udp")))


@aio
async def test_tcp_dial_back_is_a_new_connection_from_an_ephemeral_port() -> None:
    server = AutoNATService(client=False, is_public=everything)
    client = AutoNATService(server=False, is_public=everything, probe_automatically=False)
    inbound: list[ConnectionEvent] = []
    async with loopback_node(server) as s, loopback_node(client) as c:
        c.on_connection_event(
            lambda e: (
                inbound.append(e)
                if e.kind == "connected" and not e.connection.is_initiator
                else None
            )
        )
        first = await c.connect(s.full_addrs[0])
        (result,) = await probe(c, [s.full_addrs[0]], [c.listen_addrs[0]])
        assert (result.version, result.verdict) == (2, Verdict.REACHABLE), result
        assert result.server == s.peer_id and result.addr == c.listen_addrs[0]
        (back,) = [e.connection for e in inbound if e.peer == s.peer_id]
        assert back is not first
        assert port(back.remote_addr) != port(s.listen_addrs[0])  # not the listen port
        assert back.local_addr == c.listen_addrs[0]  # it came in on the address asked about
        # the server kept only the client's original connection
        assert len(s.connections(c.peer_id)) == 1


@aio
async def test_tcp_unreachable_port_and_v1() -> None:
    server = AutoNATService(client=False, is_public=everything)
    v2 = AutoNATService(server=False, is_public=everything, probe_automatically=False)
    v1 = AutoNATService(server=False, v2=False, is_public=everything, probe_automatically=False)
    node = Node(
        transports=[TcpTransport()],
        services=[IdentifyService(), v2, v1],  # a second client on the node, speaking only v1
        listen=["/ip4/127.0.0.1/tcp/0"],
    )
    async with loopback_node(server) as s, node as c:
        await c.connect(s.full_addrs[0])
        # a port with nothing listening: bind, note, close
        lsn = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        dead = lsn.sockets[0].getsockname()[1]
        lsn.close()
        await lsn.wait_closed()
        nobody = Multiaddr(f"/ip4/127.0.0.1/tcp/{dead}")
        r = await v2.ask(s.peer_id, nobody)
        assert (r.version, r.verdict) == (2, Verdict.UNREACHABLE)
        r = await v1.ask(s.peer_id, c.listen_addrs[0])
        assert (r.version, r.verdict) == (1, Verdict.REACHABLE)
        r = await v1.ask(s.peer_id, nobody)
        assert (r.version, r.verdict) == (1, Verdict.UNREACHABLE)


@aio
async def test_quic_dial_back_comes_from_its_own_socket() -> None:
    server = AutoNATService(client=False, is_public=everything)
    client = AutoNATService(server=False, is_public=everything, probe_automatically=False)
    inbound: list[ConnectionEvent] = []
    async with loopback_node(server, quic=True) as s, loopback_node(client, quic=True) as c:
        c.on_connection_event(
            lambda e: (
                inbound.append(e)
                if e.kind == "connected" and not e.connection.is_initiator
                else None
            )
        )
        quic_addr = next(a for a in c.listen_addrs if "quic-v1" in str(a))
        server_quic = next(a for a in s.listen_addrs if "quic-v1" in str(a))
        (result,) = await probe(c, [s.full_addrs[0]], [quic_addr])
        assert result.verdict is Verdict.REACHABLE, result
        (back,) = [e.connection for e in inbound if e.peer == s.peer_id]
        assert "quic-v1" in str(back.remote_addr)
        assert port(back.remote_addr) != port(server_quic)


@aio
async def test_probe_needs_a_client_service_and_reports_unreachable_servers() -> None:
    async with Node(transports=[TcpTransport()], listen=["/ip4/127.0.0.1/tcp/0"]) as bare:
        with pytest.raises(InvalidConfiguration, match="AutoNATService"):
            await probe(bare, [bare.full_addrs[0]])
    client = AutoNATService(server=False, is_public=everything, probe_automatically=False)
    async with loopback_node(client) as c:
        with pytest.raises(ConnectionFailed):
            await probe(c, ["/ip4/127.0.0.1/tcp/1"])
        assert c.services[-1] is client
        assert client.reachability is Reachability.UNKNOWN
