"""TCP transport over real loopback sockets."""

from __future__ import annotations

import asyncio
import socket

import pytest
from multiaddr import Multiaddr

from switchy.stack.errors import ConnectionClosed, ConnectionFailed, StreamReset, UnsupportedAddress
from switchy.stack.mux import MuxedConnection
from switchy.stack.stream import Connection
from switchy.transports.tcp import READ_HIGH_WATER, TcpTransport


async def _pair(addr: str = "/ip4/127.0.0.1/tcp/0") -> tuple[Connection, Connection, object]:
    t = TcpTransport()
    accepted: asyncio.Queue[Connection] = asyncio.Queue()

    async def handler(conn: object) -> None:
        assert isinstance(conn, Connection)
        await accepted.put(conn)

    listener = await t.listen(Multiaddr(addr), handler)
    client = await t.dial(listener.addrs[0])
    assert isinstance(client, Connection)
    server = await accepted.get()
    return client, server, listener


def test_dial_listen_and_addresses() -> None:
    async def main() -> None:
        client, server, listener = await _pair()
        assert client.remote_addr == server.local_addr
        assert client.local_addr == server.remote_addr
        await client.write(b"ping")
        assert await server.read_exactly(4) == b"ping"
        await server.write(b"pong")
        assert await client.read(10) == b"pong"
        await listener.close()  # type: ignore[attr-defined]
        await client.close()
        await server.close()

    asyncio.run(main())


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")

    async def main() -> None:
        try:
            client, server, listener = await _pair("/ip6/::1/tcp/0")
        except ConnectionFailed as exc:
            pytest.skip(f"IPv6 loopback unavailable: {exc}")
        assert str(client.remote_addr).startswith("/ip6/::1/tcp/")
        await client.write(b"x")
        assert await server.read(1) == b"x"
        await listener.close()  # type: ignore[attr-defined]

    asyncio.run(main())


def test_half_close_keeps_other_direction() -> None:
    async def main() -> None:
        client, server, _ = await _pair()
        await client.write(b"request")
        await client.close_write()
        assert await server.read_all() == b"request"
        await server.write(b"response")
        await server.close_write()
        assert await client.read_all() == b"response"
        with pytest.raises(ConnectionClosed):
            await client.write(b"more")

    asyncio.run(main())


def test_reset_is_seen_by_peer() -> None:
    async def main() -> None:
        client, server, _ = await _pair()
        await client.reset()
        with pytest.raises(StreamReset):
            while await server.read():
                pass

    asyncio.run(main())


def test_reads_respect_max_and_lose_nothing() -> None:
    async def main() -> None:
        client, server, _ = await _pair()
        data = bytes(range(256)) * 1000
        await client.write(data)
        await client.close_write()
        got = bytearray()
        sizes = [1, 7, 300, 5000]
        i = 0
        while chunk := await server.read(sizes[i % len(sizes)]):
            assert len(chunk) <= sizes[i % len(sizes)]
            got += chunk
            i += 1
        assert bytes(got) == data

    asyncio.run(main())


def test_backpressure_blocks_writer_when_reader_stops() -> None:
    async def main() -> None:
        client, server, _ = await _pair()
        total = 64 * 1024 * 1024  # ~30 ms of loopback traffic when nothing blocks it
        chunk = b"x" * 65536
        written = 0

        async def writer() -> None:
            nonlocal written
            for _ in range(total // len(chunk)):
                await client.write(chunk)
                written += len(chunk)
            await client.close_write()

        task = asyncio.ensure_future(writer())
        # Nobody reads: the writer must stay stuck with a bounded amount in flight.
        done, _ = await asyncio.wait([task], timeout=0.5)
        assert not done, "writer finished although the reader never read"
        assert written < 16 * READ_HIGH_WATER
        # Reading drains everything and lets the writer finish.
        received = 0
        while data := await server.read():
            received += len(data)
        await task
        assert received == total

    asyncio.run(main())


def test_dial_refused_and_unsupported() -> None:
    async def main() -> None:
        t = TcpTransport()
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        with pytest.raises(ConnectionFailed, match=r"refused|failed"):
            await t.dial(Multiaddr(f"/ip4/127.0.0.1/tcp/{port}"))
        with pytest.raises(UnsupportedAddress):
            await t.dial(Multiaddr("/ip4/127.0.0.1/udp/1"))
        assert not t.can_dial(Multiaddr("/ip4/127.0.0.1/udp/1/quic-v1"))
        assert t.can_dial(Multiaddr("/dns4/localhost/tcp/1"))

    asyncio.run(main())


def test_the_handler_sees_the_real_remote_address_at_once() -> None:
    """The listener hands a connection over only once its socket is reported: reading
    ``remote_addr`` first thing in the handler gives the dialer's port, never 0.0.0.0:0
    (cached before ``connection_made``, as it once was)."""

    async def main() -> None:
        seen: list[Multiaddr] = []
        got = asyncio.Event()

        async def handler(conn: Connection | MuxedConnection) -> None:
            seen.append(conn.remote_addr)
            got.set()
            assert isinstance(conn, Connection)
            await conn.close()

        transport = TcpTransport()
        listener = await transport.listen(Multiaddr("/ip4/127.0.0.1/tcp/0"), handler)
        client = await transport.dial(listener.addrs[0])
        assert isinstance(client, Connection)
        await asyncio.wait_for(got.wait(), 10)
        assert seen == [client.local_addr]
        await client.close()
        await listener.close()

    asyncio.run(main())
