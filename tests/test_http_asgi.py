"""An ASGI application served on a node, fetched with httpx over TCP, QUIC and a relay."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import h11
import pytest

from switchy.presets import default_node
from switchy.protocols.http import (
    HTTP_PROTOCOL,
    WELL_KNOWN_PROTOCOLS_PATH,
    HttpLimits,
    HttpService,
    serve_asgi,
)
from switchy.protocols.http.core import ClientCore
from switchy.protocols.http.io import next_event
from switchy.stack.errors import StreamReset
from switchy.stack.node import Node
from tests.http_apps import FILE, App

httpx = pytest.importorskip("httpx")
from switchy.protocols.http.client import SwitchyTransport  # noqa: E402

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
LOOPBACK_QUIC = "/ip4/127.0.0.1/udp/0/quic-v1"
Scenario = Callable[[Any, Node, Node, App], Awaitable[None]]


def run(scenario: Scenario, kind: str = "tcp", **service: Any) -> App:
    """Serve App on a node reached over ``kind``; run ``scenario(client, server, app)``."""
    app = App()

    async def main() -> None:
        http = HttpService(app, protocols={"/media/1": "/media/"}, **service)
        if kind == "relay":
            from switchy.transports.relay import RelayConfig, RelayService

            cfg = RelayConfig(limit_data=0, limit_duration=0)
            async with (
                default_node(services=[RelayService(cfg)], listen=[LOOPBACK]) as relay,
                default_node(services=[http]) as server,
                default_node() as node,
            ):
                (circuit,) = await server.listen(f"{relay.full_addrs[0]}/p2p-circuit")
                await node.connect(f"{circuit}/p2p/{server.peer_id}")
                async with httpx.AsyncClient(
                    transport=SwitchyTransport(node), base_url=f"http://{server.peer_id}"
                ) as client:
                    await scenario(client, node, server, app)
            return
        listen = LOOPBACK if kind == "tcp" else LOOPBACK_QUIC
        async with default_node(services=[http], listen=[listen]) as server, default_node() as node:
            await node.connect(server.full_addrs[0])
            async with httpx.AsyncClient(
                transport=SwitchyTransport(node), base_url=f"http://{server.peer_id}"
            ) as client:
                await scenario(client, node, server, app)

    asyncio.run(asyncio.wait_for(main(), 60))
    return app


@pytest.mark.parametrize("kind", ["tcp", "quic", "relay"])
def test_get_json_with_peer_id_query_and_headers(kind: str) -> None:
    async def scenario(client: Any, node: Node, server: Node, app: App) -> None:
        resp = await client.get("/hello?x=1", headers={"X-Custom": "abc"})
        assert resp.status_code == 200
        assert resp.headers["connection"] == "close"
        data = resp.json()
        assert data["peer"] == str(node.peer_id)
        assert data["method"] == "GET" and data["query"] == "x=1"
        assert data["headers"]["x-custom"] == "abc"
        assert data["started"] is True  # lifespan state reached the request scope
        if kind == "relay":
            assert "/p2p-circuit" in str(node.connections(server.peer_id)[0].remote_addr)

    app = run(scenario, kind)
    assert app.events == ["startup", "shutdown"]


@pytest.mark.parametrize("kind", ["tcp", "quic"])
def test_streamed_upload_and_download(kind: str) -> None:
    async def scenario(client: Any, node: Node, server: Node, app: App) -> None:
        async def body() -> AsyncIterator[bytes]:
            for i in range(40):
                yield bytes([i]) * 10000

        resp = await client.post("/echo", content=body())
        assert resp.status_code == 200
        assert resp.content == b"".join(bytes([i]) * 10000 for i in range(40))
        async with client.stream("GET", "/big?n=3000000") as resp:
            total = 0
            async for chunk in resp.aiter_bytes():
                total += len(chunk)
        assert total == 3_000_000

    run(scenario, kind)


def test_methods_status_and_well_known() -> None:
    async def scenario(client: Any, node: Node, server: Node, app: App) -> None:
        for method in ("PUT", "DELETE", "PATCH", "OPTIONS"):
            resp = await client.request(method, "/hello")
            assert resp.json()["method"] == method
        resp = await client.head("/hello")
        assert resp.status_code == 200 and resp.content == b""
        assert (await client.get("/missing")).status_code == 404
        assert (await client.get("/boom")).status_code == 500
        resp = await client.get(WELL_KNOWN_PROTOCOLS_PATH)
        assert resp.headers["content-type"] == "application/json"
        assert resp.json() == {"/media/1": {"path": "/media/"}}

    run(scenario)


def test_range_requests() -> None:
    async def scenario(client: Any, node: Node, server: Node, app: App) -> None:
        resp = await client.get("/file", headers={"Range": "bytes=1000-1999"})
        assert resp.status_code == 206
        assert resp.content == FILE[1000:2000]
        assert resp.headers["content-range"] == f"bytes 1000-1999/{len(FILE)}"
        resp = await client.get("/file", headers={"Range": "bytes=-10"})
        assert resp.content == FILE[-10:]
        past = await client.get("/file", headers={"Range": f"bytes={len(FILE)}-"})
        assert past.status_code == 416
        assert (await client.get("/file")).content == FILE

    run(scenario)


def test_a_client_that_goes_away_stops_the_producer() -> None:
    async def scenario(client: Any, node: Node, server: Node, app: App) -> None:
        async with client.stream("GET", "/forever") as resp:
            async for _chunk in resp.aiter_bytes():
                break  # leaving the block closes the response early: the stream is reset
        await asyncio.wait_for(app.forever_stopped.wait(), 10)
        sent = app.forever_sent
        assert sent < 16 * 1024 * 1024  # bounded by the stream window, not unbounded
        # the service keeps serving others
        assert (await client.get("/hello")).status_code == 200

    run(scenario)


def test_a_peer_not_on_the_allowlist_gets_403() -> None:
    async def scenario(client: Any, node: Node, server: Node, app: App) -> None:
        resp = await client.get("/hello")
        assert resp.status_code == 403
        assert "not allowed" in resp.text

    run(scenario, allow=[])


def test_unknown_host_is_a_connect_error() -> None:
    async def scenario(client: Any, node: Node, server: Node, app: App) -> None:
        with pytest.raises(httpx.ConnectError, match="no known peer"):
            await client.get("http://nobody/hello")
        named = httpx.AsyncClient(transport=SwitchyTransport(node, peers={"Media": server.peer_id}))
        async with named:
            assert (await named.get("http://media/hello")).status_code == 200
            # a CIDv1 peer id is lower case already: no name needed
            assert (await named.get(f"http://{server.peer_id.to_cid()}/hello")).status_code == 200

    run(scenario)


async def _raw_exchange(node: Node, server: Node, wire: bytes) -> tuple[int | None, bytes]:
    """Write raw bytes on an /http/1.1 stream; return (status or None on reset, body)."""
    stream = await node.open_stream(server.peer_id, HTTP_PROTOCOL)
    await stream.write(wire)
    core = ClientCore()
    core.request(b"GET", b"/", [])  # the bytes went out by hand: bring h11 to the same state
    core.send(h11.EndOfMessage())
    try:
        event = await next_event(core, stream, 10)
        assert isinstance(event, h11.Response)
        body = b""
        while isinstance(ev := await next_event(core, stream, 10), h11.Data):
            body += bytes(ev.data)
        return event.status_code, body
    except StreamReset:
        return None, b""
    finally:
        await stream.reset()


def test_bad_input_gets_a_clear_status_and_the_service_keeps_serving() -> None:
    async def scenario(client: Any, node: Node, server: Node, app: App) -> None:
        status, body = await _raw_exchange(node, server, b"BOGUS\r\n\r\n")
        assert status == 400 and b"malformed" in body
        flood = b"GET /hello HTTP/1.1\r\nhost: p\r\n" + b"x-a: b\r\n" * 200 + b"\r\n"
        status, body = await _raw_exchange(node, server, flood)
        assert status == 431
        huge = b"GET /hello HTTP/1.1\r\nhost: p\r\nx-big: " + b"a" * 100_000 + b"\r\n\r\n"
        status, _ = await _raw_exchange(node, server, huge)
        assert status == 431
        # more than the request announced (a body on a GET without length): the extra
        # bytes reset the exchange and the application stops producing
        longer = b"GET /forever HTTP/1.1\r\nhost: p\r\n\r\n" + b"E" * 1000
        status, _ = await _raw_exchange(node, server, longer)
        assert status is None
        await asyncio.wait_for(app.forever_stopped.wait(), 10)
        assert (await client.get("/hello")).status_code == 200

    run(scenario, limits=HttpLimits(max_headers=50))


def test_a_slow_client_times_out_with_408() -> None:
    async def scenario(client: Any, node: Node, server: Node, app: App) -> None:
        stream = await node.open_stream(server.peer_id, HTTP_PROTOCOL)
        await stream.write(b"GET /hello HTTP/1.1\r\nhost: p\r\n")  # never finishes the head
        answer = await asyncio.wait_for(stream.read_all(), 10)
        assert answer.startswith(b"HTTP/1.1 408")
        await stream.reset()

    run(scenario, limits=HttpLimits(head_timeout=0.3))


def test_serve_asgi_attaches_to_a_node() -> None:
    async def main() -> None:
        app = App()
        server = default_node(listen=[LOOPBACK])
        service = serve_asgi(server, app, protocols={"/x/1": "/x/"})
        assert service in server.services
        async with server, default_node() as node:
            await node.connect(server.full_addrs[0])
            async with httpx.AsyncClient(transport=SwitchyTransport(node)) as client:
                resp = await client.get(f"http://{server.peer_id}{WELL_KNOWN_PROTOCOLS_PATH}")
                assert json.loads(resp.content) == {"/x/1": {"path": "/x/"}}
        assert app.events == ["startup", "shutdown"]

    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_large_download_keeps_memory_bounded() -> None:
    """24 MB streamed from the app to a client reading chunk by chunk: neither side holds
    more than a few windows (tracemalloc peak, both nodes in this process)."""
    import tracemalloc

    async def scenario(client: Any, node: Node, server: Node, app: App) -> None:
        tracemalloc.start()
        try:
            total = 0
            async with client.stream("GET", "/big?n=24000000") as resp:
                async for chunk in resp.aiter_raw():
                    total += len(chunk)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert total == 24_000_000
        assert peak < 8 * 1024 * 1024, peak  # measured about 2.3 MB

    run(scenario)
