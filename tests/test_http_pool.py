"""expose's keep-alive pool of connections to the local server (protocols/http/pool.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import h11
import pytest

from switchy.presets import default_node
from switchy.protocols.http.pool import DEFAULT_POOL, PoolLimits
from switchy.protocols.http.proxy import HttpProxyService, _has_body
from switchy.stack.node import Node

httpx = pytest.importorskip("httpx")

LOOPBACK = "/ip4/127.0.0.1/tcp/0"


def run(coro: Callable[[], Awaitable[None]], timeout: float = 60) -> None:
    asyncio.run(asyncio.wait_for(coro(), timeout))


class KeepAliveServer:
    """A local HTTP/1.1 server that keeps connections open (h11), counting them.

    Answers ``{"conn": n, "path": ..., "body": ...}``; ``/close`` answers with
    ``Connection: close``.  :meth:`drop_idle` closes every connection waiting for a
    request (what a server's keep-alive timeout does).
    """

    def __init__(self) -> None:
        self.connections = 0
        self.open = 0
        self.max_open = 0
        self.idle: dict[int, asyncio.StreamWriter] = {}

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        n = self.connections
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                self.idle[n] = writer
                event = conn.next_event()
                while event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(65536))
                    event = conn.next_event()
                self.idle.pop(n, None)
                if not isinstance(event, h11.Request):
                    return
                target = bytes(event.target)
                body = b""
                while not isinstance(event, h11.EndOfMessage):
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await reader.read(65536))
                    elif isinstance(event, h11.Data):
                        body += event.data
                answer = json.dumps(
                    {"conn": n, "path": target.decode(), "body": body.decode()}
                ).encode()
                headers = [("content-length", str(len(answer)))]
                if target == b"/close":
                    headers.append(("connection", "close"))
                writer.write(conn.send(h11.Response(status_code=200, headers=headers)) or b"")
                writer.write(conn.send(h11.Data(data=answer)) or b"")
                writer.write(conn.send(h11.EndOfMessage()) or b"")
                await writer.drain()
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (ConnectionError, h11.RemoteProtocolError):
            return
        finally:
            self.open -= 1
            self.idle.pop(n, None)
            writer.close()

    async def drop_idle(self) -> None:
        """Close every connection that waits for its next request."""
        writers = list(self.idle.values())
        self.idle.clear()
        for w in writers:
            w.close()
        for w in writers:
            await w.wait_closed()


@asynccontextmanager
async def exposed_keep_alive(
    pool: PoolLimits = DEFAULT_POOL,
) -> AsyncIterator[tuple[KeepAliveServer, HttpProxyService, Node, Any]]:
    """(the local server, the expose service, the server node, an httpx client to it)."""
    from switchy.protocols.http.client import SwitchyTransport

    local = KeepAliveServer()
    srv = await asyncio.start_server(local.serve, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    proxy = HttpProxyService(f"http://127.0.0.1:{port}", pool=pool)
    try:
        async with (
            default_node(services=[proxy], listen=[LOOPBACK]) as server,
            default_node() as client,
        ):
            await client.connect(server.full_addrs[0])
            transport = SwitchyTransport(client, peers={"media": server.peer_id})
            async with httpx.AsyncClient(transport=transport, base_url="http://media") as http:
                yield local, proxy, server, http
    finally:
        srv.close()
        await srv.wait_closed()


def test_has_body_follows_the_request_framing_rules() -> None:
    assert not _has_body([])
    assert not _has_body([(b"content-length", b"0")])
    assert _has_body([(b"Content-Length", b"5")])
    assert _has_body([(b"transfer-encoding", b"chunked")])


def test_expose_reuses_one_connection_to_a_keep_alive_server() -> None:
    async def main() -> None:
        async with exposed_keep_alive() as (local, proxy, _server, http):
            for i in range(10):
                resp = await http.get(f"/item/{i}")
                assert resp.status_code == 200 and resp.json()["conn"] == 1
            resp = await http.post("/upload", content=b"payload")
            assert resp.json() == {"conn": 1, "path": "/upload", "body": "payload"}
            assert local.connections == 1 and proxy.pool.dialled == 1
            assert proxy.pool.idle == 1
            # an answer with "Connection: close": that connection is not kept
            assert (await http.get("/close")).json()["conn"] == 1
            assert proxy.pool.idle == 0
            assert (await http.get("/next")).json()["conn"] == 2

    run(main)


def test_a_pooled_connection_the_server_closed_is_replaced_for_a_bodiless_request() -> None:
    async def main() -> None:
        async with exposed_keep_alive() as (local, proxy, _server, http):
            assert (await http.get("/a")).json()["conn"] == 1
            await local.drop_idle()  # the server's keep-alive timeout, say
            resp = await http.get("/b")  # sent on the stale connection, then on a fresh one
            assert resp.status_code == 200 and resp.json()["conn"] == 2
            assert proxy.pool.dialled == 2

    run(main)


def test_the_pool_is_bounded_and_keeps_no_connection_the_server_closes() -> None:
    async def main() -> None:
        # (max_idle = max_connections: no connection is closed meanwhile, so the server's
        # count of open connections is exactly ours)
        async with exposed_keep_alive(PoolLimits(max_idle=3, max_connections=3)) as (
            local,
            proxy,
            _server,
            http,
        ):
            answers = await asyncio.gather(*(http.get(f"/p/{i}") for i in range(8)))
            assert all(r.status_code == 200 for r in answers)
            # never more than 3 connections at once: the other requests waited for one
            assert 1 <= local.max_open <= 3 and local.connections <= 3
        async with exposed_keep_alive(PoolLimits(max_idle=2)) as (local, proxy, _s, http):
            answers = await asyncio.gather(*(http.get(f"/p/{i}") for i in range(8)))
            assert all(r.status_code == 200 for r in answers)
            assert proxy.pool.idle <= 2
        async with exposed_keep_alive(PoolLimits(idle_expiry=0.0)) as (local, proxy, _s, http):
            for _ in range(3):
                assert (await http.get("/x")).status_code == 200
            assert local.connections == 3  # an expired connection is never reused

    run(main)


def test_pooling_can_be_turned_off() -> None:
    async def main() -> None:
        async with exposed_keep_alive(PoolLimits(max_idle=0)) as (local, proxy, _s, http):
            for _ in range(3):
                assert (await http.get("/x")).status_code == 200
            assert local.connections == 3 and proxy.pool.idle == 0

    run(main)


def test_a_connection_given_back_twice_frees_its_slot_once() -> None:
    from switchy.protocols.http.pool import UpstreamPool
    from switchy.protocols.http.proxy import tcp_multiaddr
    from switchy.stack.config import NetworkConfig
    from switchy.transports.tcp import TcpTransport

    async def main() -> None:
        local = KeepAliveServer()
        srv = await asyncio.start_server(local.serve, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        pool = UpstreamPool(
            TcpTransport(NetworkConfig()),
            tcp_multiaddr("127.0.0.1", port),
            PoolLimits(max_connections=1),
        )
        conn = await pool.acquire()
        await pool.discard(conn)
        await pool.discard(conn)  # e.g. a retry whose fresh dial failed: no second slot
        conn = await pool.acquire()
        with pytest.raises(TimeoutError):  # the one slot is taken: the next waits
            async with asyncio.timeout(0.05):
                await pool.acquire()
        await pool.discard(conn)
        await pool.close()
        srv.close()
        await srv.wait_closed()

    run(main)


def test_idle_expiry_follows_the_loop_clock_so_virtual_time_ages_connections() -> None:
    from multiaddr import Multiaddr

    from switchy.protocols.http.pool import PooledConnection, UpstreamPool
    from switchy.stack.stream import Connection
    from switchy.transports.sim import Simulation, run_simulation

    class _Conn(Connection):
        """A connection that is never read or written: the pool only keeps and closes it."""

        local_addr = remote_addr = Multiaddr("/ip4/127.0.0.1/tcp/1")
        closed = False

        async def read(self, max_bytes: int = -1) -> bytes:
            return b""

        async def write(self, data: bytes | bytearray | memoryview) -> None:
            pass

        async def close_write(self) -> None:
            pass

        async def reset(self) -> None:
            self.closed = True

        async def close(self) -> None:
            self.closed = True

    class _Dialer:
        async def dial(self, addr: Multiaddr) -> Connection:
            return _Conn()

    def exchange(conn: PooledConnection) -> None:
        """One complete request and response on ``conn``'s h11 state (so it may be kept)."""
        h = conn.core.conn
        h.send(h11.Request(method="GET", target="/", headers=[("host", "p2p")]))
        h.send(h11.EndOfMessage())
        h.receive_data(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        while h.their_state is not h11.DONE:
            h.next_event()

    async def main(sim: Simulation) -> None:
        pool = UpstreamPool(
            _Dialer(),  # type: ignore[arg-type]
            Multiaddr("/ip4/127.0.0.1/tcp/1"),
            PoolLimits(idle_expiry=2.0),
        )
        first = await pool.acquire()
        exchange(first)
        await pool.release(first)
        await asyncio.sleep(1.5)  # virtual seconds: within the expiry
        assert (await pool.acquire()) is first
        exchange(first)
        await pool.release(first)
        await asyncio.sleep(2.5)  # past the expiry, in virtual time only
        second = await pool.acquire()
        assert second is not first and pool.dialled == 2
        assert isinstance(first.stream, _Conn) and first.stream.closed
        await pool.discard(second)

    run_simulation(main)
