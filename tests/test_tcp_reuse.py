"""TCP dials from the listening port (SO_REUSEADDR/SO_REUSEPORT), on loopback only.

Loopback dials never need a NAT mapping, so the transport dials them from an
ephemeral port; these tests force the listen-port path on loopback to check the
socket mechanics, and check the choice itself separately.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from multiaddr import Multiaddr

from switchy.stack.stream import Connection
from switchy.transports.tcp import TcpTransport


async def _accepting() -> tuple[TcpTransport, Any, asyncio.Queue[Connection]]:
    server = TcpTransport()
    got: asyncio.Queue[Connection] = asyncio.Queue()

    async def handler(conn: Any) -> None:
        await got.put(conn)

    listener = await server.listen(Multiaddr("/ip4/127.0.0.1/tcp/0"), handler)
    return server, listener, got


def _port(addr: Multiaddr) -> int:
    return int(addr.value_for_protocol("tcp"))


def test_dials_leave_from_the_listen_port_and_fall_back_when_the_tuple_is_taken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def main() -> None:
        _, server_listener, got = await _accepting()
        client = TcpTransport()
        own = await client.listen(Multiaddr("/ip4/127.0.0.1/tcp/0"), lambda c: asyncio.sleep(0))
        lport = _port(own.addrs[0])
        monkeypatch.setattr(
            client, "_reuse_bind", lambda host: (socket.AF_INET, ("127.0.0.1", lport))
        )
        target = server_listener.addrs[0]
        first = await client.dial(target)
        assert _port(first.local_addr) == lport
        accepted = await got.get()
        assert _port(accepted.remote_addr) == lport  # the server saw our listen port
        second = await client.dial(target)  # same 4-tuple is taken: ephemeral port
        assert _port(second.local_addr) != lport
        await got.get()
        for c in (first, second):
            await c.close()
        await own.close()
        await server_listener.close()

    asyncio.run(main())


def test_a_dial_to_our_own_port_never_connects_the_socket_to_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def main() -> None:
        t = TcpTransport()
        got: asyncio.Queue[Connection] = asyncio.Queue()

        async def handler(conn: Any) -> None:
            await got.put(conn)

        own = await t.listen(Multiaddr("/ip4/127.0.0.1/tcp/0"), handler)
        lport = _port(own.addrs[0])
        monkeypatch.setattr(t, "_reuse_bind", lambda host: (socket.AF_INET, ("127.0.0.1", lport)))
        conn = await t.dial(own.addrs[0])
        assert _port(conn.local_addr) != lport  # not a self-connection: ephemeral port
        accepted = await got.get()  # our listener took it
        assert accepted.remote_addr == conn.local_addr
        await conn.close()
        await own.close()

    asyncio.run(main())


def test_which_dials_reuse_the_listen_port() -> None:
    t = TcpTransport()
    assert t._reuse_bind("203.0.113.5") is None  # not listening
    t._listening[socket.AF_INET] = [("0.0.0.0", 4001)]
    t._listening[socket.AF_INET6] = [("::1", 4002)]
    assert t._reuse_bind("203.0.113.5") == (socket.AF_INET, ("", 4001))
    assert t._reuse_bind("127.0.0.1") is None  # loopback needs no mapping
    assert t._reuse_bind("2001:db8::1") is None  # only a loopback IPv6 listener
    assert t._reuse_bind("example.com") is None  # names: the system picks the address
    assert TcpTransport(reuse_port=False)._reuse_bind("203.0.113.5") is None


def test_autonat_style_transports_without_listeners_dial_ephemeral() -> None:
    async def main() -> None:
        _, server_listener, got = await _accepting()
        fresh = TcpTransport()
        conn = await fresh.dial(server_listener.addrs[0])
        assert fresh._listening == {}
        await got.get()
        await conn.close()
        await server_listener.close()

    asyncio.run(main())


def test_closing_a_listener_stops_reuse() -> None:
    async def main() -> None:
        t = TcpTransport()
        lst = await t.listen(Multiaddr("/ip4/0.0.0.0/tcp/0"), lambda c: asyncio.sleep(0))
        assert t._reuse_bind("203.0.113.5") is not None
        await lst.close()
        assert t._reuse_bind("203.0.113.5") is None

    asyncio.run(main())
