"""The WebSocket client over switchy (protocols/http/wsclient.py): to an ASGI app on a node,
through expose to a local server, by URL on the httpx transport; refusals, size limit,
the peer closing."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from switchy.presets import default_node
from switchy.protocols.http import HttpError, HttpLimits, HttpService
from switchy.protocols.http.proxy import HttpProxyService
from switchy.protocols.http.wsclient import WebSocketClosed, connect_websocket
from tests.http_apps import App
from tests.test_http_proxy import local_http_server

LOOPBACK = "/ip4/127.0.0.1/tcp/0"


def run(coro: Callable[[], Awaitable[None]], timeout: float = 60) -> None:
    asyncio.run(asyncio.wait_for(coro(), timeout))


def test_a_websocket_to_an_asgi_app_on_a_node_and_by_url_on_the_httpx_transport() -> None:
    pytest.importorskip("httpx")
    from switchy.protocols.http.client import SwitchyTransport

    app = App()

    async def main() -> None:
        service = HttpService(app, lifespan="off")
        async with (
            default_node(services=[service], listen=[LOOPBACK]) as server,
            default_node() as node,
        ):
            await node.connect(server.full_addrs[0])
            async with await connect_websocket(node, server.peer_id, "/ws") as ws:
                assert await ws.receive() == str(node.peer_id)  # the app saw who we are
                await ws.send("hello")
                assert await ws.receive() == "HELLO"
                await ws.send(b"\x01\x02\x03")
                assert await ws.receive() == b"\x03\x02\x01"
            transport = SwitchyTransport(node, peers={"media": server.peer_id})
            ws = await transport.connect_websocket("ws://media/ws")
            assert await ws.receive() == str(node.peer_id)
            await ws.close()
            with pytest.raises(WebSocketClosed):
                await ws.send("after close")
            # a path the app refuses: the upgrade is answered with 403
            with pytest.raises(HttpError) as err:
                await connect_websocket(node, server.peer_id, "/elsewhere")
            assert err.value.status == 403
        assert app.events.count("ws-closed 1000") == 2

    run(main)


def test_a_websocket_through_expose_and_a_message_over_the_limit() -> None:
    app = App()

    async def main() -> None:
        async with local_http_server(app) as port:
            proxy = HttpProxyService(f"http://127.0.0.1:{port}")
            async with (
                default_node(services=[proxy], listen=[LOOPBACK]) as server,
                default_node() as node,
            ):
                await node.connect(server.full_addrs[0])
                limits = HttpLimits(max_ws_message=1000)
                ws = await connect_websocket(node, server.peer_id, "/ws", limits=limits)
                assert await ws.receive() == str(node.peer_id)  # the header expose adds
                await ws.send("flood")  # 64 KiB messages without end
                with pytest.raises(WebSocketClosed) as err:
                    await ws.receive()
                assert err.value.code == 1009
                # we closed: the server's application stops producing
                await asyncio.wait_for(app.flood_stopped.wait(), 30)


def test_the_peer_closing_ends_the_message_iteration() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        for i in range(3):
            await send({"type": "websocket.send", "text": f"event {i}"})
        await send({"type": "websocket.close", "code": 4000, "reason": "done"})

    async def main() -> None:
        service = HttpService(app, lifespan="off")
        async with (
            default_node(services=[service], listen=[LOOPBACK]) as server,
            default_node() as node,
        ):
            await node.connect(server.full_addrs[0])
            ws = await connect_websocket(node, server.peer_id, "/events")
            assert [m async for m in ws] == ["event 0", "event 1", "event 2"]
            with pytest.raises(WebSocketClosed) as err:
                await ws.receive()
            assert (err.value.code, err.value.reason) == (4000, "done")

    run(main)
