"""The request body limit (HttpLimits.max_request_body): 413 before the body is read when
Content-Length says too much, and as soon as a chunked body passes the limit; on a node's
ASGI service, through expose and at the gateway."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import h11
import pytest

from switchy.presets import default_node
from switchy.protocols.http import HttpError, HttpLimits, HttpService
from switchy.protocols.http.core import ServerCore
from switchy.protocols.http.proxy import Gateway, HttpProxyService
from tests.http_apps import App
from tests.test_http_proxy import local_http_server

httpx = pytest.importorskip("httpx")
from switchy.protocols.http.client import SwitchyTransport  # noqa: E402

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
LIMITS = HttpLimits(max_request_body=1000)


def run(coro: Callable[[], Awaitable[None]], timeout: float = 60) -> None:
    asyncio.run(asyncio.wait_for(coro(), timeout))


def test_the_core_refuses_an_announced_length_over_the_limit_before_any_body() -> None:
    core = ServerCore(LIMITS)
    core.receive(b"POST /up HTTP/1.1\r\nhost: p\r\ncontent-length: 1001\r\n\r\n")
    with pytest.raises(HttpError) as err:
        core.next_event()
    assert err.value.status == 413 and "1001 bytes" in str(err.value)
    core = ServerCore(LIMITS)  # exactly the limit is fine
    core.receive(b"POST /up HTTP/1.1\r\nhost: p\r\ncontent-length: 1000\r\n\r\n" + b"x" * 1000)
    assert isinstance(core.next_event(), h11.Request)
    assert isinstance(core.next_event(), h11.Data)
    assert isinstance(core.next_event(), h11.EndOfMessage)


def test_the_core_refuses_a_chunked_body_as_soon_as_it_passes_the_limit() -> None:
    core = ServerCore(LIMITS)
    core.receive(b"POST /up HTTP/1.1\r\nhost: p\r\ntransfer-encoding: chunked\r\n\r\n")
    assert isinstance(core.next_event(), h11.Request)
    core.receive(b"258\r\n" + b"a" * 600 + b"\r\n")
    assert isinstance(core.next_event(), h11.Data)
    core.receive(b"258\r\n" + b"b" * 600 + b"\r\n")  # 1200 in all
    with pytest.raises(HttpError) as err:
        core.next_event()
    assert err.value.status == 413


async def _chunks(n: int, size: int) -> AsyncIterator[bytes]:
    for _ in range(n):
        yield b"z" * size


def test_an_asgi_service_answers_413_and_never_runs_the_app_for_it() -> None:
    calls: list[str] = []
    app = App()

    async def counting(scope: Any, receive: Any, send: Any) -> None:
        """/upload reads the whole body, then answers with its length."""
        if scope["type"] != "http" or scope["path"] != "/upload":
            await app(scope, receive, send)
            return
        calls.append(scope["path"])
        n = 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            n += len(msg["body"])
            if not msg.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(n).encode()})

    async def main() -> None:
        service = HttpService(counting, limits=LIMITS, lifespan="off")
        async with (
            default_node(services=[service], listen=[LOOPBACK]) as server,
            default_node() as node,
        ):
            await node.connect(server.full_addrs[0])
            transport = SwitchyTransport(node, peers={"media": server.peer_id})
            async with httpx.AsyncClient(transport=transport, base_url="http://media") as http:
                resp = await http.post("/upload", content=b"x" * 5000)
                assert resp.status_code == 413 and "limit of 1000" in resp.text
                assert calls == []  # refused at the head, before the app
                resp = await http.post("/upload", content=_chunks(4, 400))  # chunked: 1600
                assert resp.status_code == 413
                assert calls == ["/upload"]  # it had started reading: stopped at the limit
                resp = await http.post("/upload", content=b"y" * 1000)
                assert resp.status_code == 200 and resp.content == b"1000"
                # an application that started its answer before reading: reset instead
                with pytest.raises(httpx.ReadError):
                    await http.post("/echo", content=_chunks(4, 400))
                assert (await http.get("/hello")).status_code == 200

    run(main)


def test_expose_and_the_gateway_refuse_a_large_upload_early() -> None:
    async def main() -> None:
        async with local_http_server(App()) as port:
            proxy = HttpProxyService(f"http://127.0.0.1:{port}", limits=LIMITS)
            async with (
                default_node(services=[proxy], listen=[LOOPBACK]) as server,
                default_node() as client,
            ):
                await client.connect(server.full_addrs[0])
                # expose's limit, reached over switchy
                transport = SwitchyTransport(client, peers={"media": server.peer_id})
                async with httpx.AsyncClient(transport=transport, base_url="http://media") as h:
                    resp = await h.post("/echo", content=b"x" * 5000)
                    assert resp.status_code == 413
                    assert proxy.pool.dialled == 0  # the local server was never asked
                    resp = await h.post("/echo", content=_chunks(4, 400))
                    assert resp.status_code == 413
                    assert (await h.post("/echo", content=b"ok")).content == b"ok"
                # the gateway's own limit: the upload never leaves the machine
                gateway = Gateway(client, limits=LIMITS)
                _, gport = await gateway.listen()
                reader, writer = await asyncio.open_connection("127.0.0.1", gport)
                writer.write(
                    f"POST /p2p/{server.peer_id}/echo HTTP/1.1\r\nhost: gw\r\n"
                    "content-length: 100000000\r\nexpect: 100-continue\r\n\r\n".encode()
                )
                answer = await reader.read()
                assert answer.startswith(b"HTTP/1.1 413") and b"100 Continue" not in answer
                writer.close()
                await gateway.close()

    run(main)
