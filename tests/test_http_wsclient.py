"""The WebSocket client over switchy (protocols/http/wsclient.py): to an ASGI app on a node,
through expose to a local server, by URL on the httpx transport; refusals, size limit,
the peer closing; failing the WebSocket (a reset), fragments across a cancelled receive."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Request,
    TextMessage,
)

from switchy.presets import default_node
from switchy.protocols.http import HttpError, HttpLimits, HttpService
from switchy.protocols.http.core import DEFAULT_LIMITS
from switchy.protocols.http.proxy import HttpProxyService
from switchy.protocols.http.websocket import MessageAssembler
from switchy.protocols.http.wsclient import WebSocket, WebSocketClosed, connect_websocket
from switchy.stack.errors import MessageTooLarge
from switchy.stack.stream import Stream
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

    run(main)


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


class _FakeStream(Stream):
    """A stream fed by the test: ``read`` waits for :meth:`feed` (``waiting`` says when it
    does), writes are recorded, and so is how it ended."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[bytes] = asyncio.Queue()
        self.waiting = asyncio.Event()
        self.written = bytearray()
        self.ended: list[str] = []

    def feed(self, data: bytes) -> None:
        self.incoming.put_nowait(data)

    async def read(self, max_bytes: int = -1) -> bytes:
        if self.incoming.empty():
            self.waiting.set()
        data = await self.incoming.get()
        self.waiting.clear()
        return data

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def try_write_nowait(self, data: bytes | bytearray | memoryview) -> bool:
        self.written += data
        return True

    async def close_write(self) -> None:
        self.ended.append("close_write")

    async def reset(self) -> None:
        self.ended.append("reset")

    async def close(self) -> None:
        self.ended.append("close")


def _open_websocket(
    limits: HttpLimits = DEFAULT_LIMITS,
) -> tuple[WebSocket, WSConnection, _FakeStream]:
    """A client WebSocket on a fake stream, and the server's wsproto end of it."""
    client = WSConnection(ConnectionType.CLIENT)
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="p2p", target="/ws")))
    assert isinstance(next(server.events()), Request)
    client.receive_data(server.send(AcceptConnection()))
    accepted = next(client.events())
    assert isinstance(accepted, AcceptConnection)
    stream = _FakeStream()
    return WebSocket(stream, client, accepted, limits), server, stream


def _frames_to_server(server: WSConnection, stream: _FakeStream) -> list[object]:
    server.receive_data(bytes(stream.written))
    stream.written.clear()
    return list(server.events())


def test_a_message_over_the_limit_fails_the_websocket_with_a_reset() -> None:
    async def main() -> None:
        ws, server, stream = _open_websocket(HttpLimits(max_ws_message=10))
        stream.feed(server.send(Message(data=b"x" * 11)))
        with pytest.raises(WebSocketClosed) as err:
            await ws.receive()
        assert err.value.code == 1009
        # the close frame went out without waiting, then the stream was reset, not closed
        assert stream.ended == ["reset"]
        [close] = _frames_to_server(server, stream)
        assert isinstance(close, CloseConnection) and close.code == 1009
        with pytest.raises(WebSocketClosed):
            await ws.send("after the failure")

    asyncio.run(main())


def test_data_breaking_the_protocol_fails_the_websocket_with_a_reset() -> None:
    async def main() -> None:
        ws, _server, stream = _open_websocket()
        stream.feed(b"\x83\x00")  # opcode 3 is reserved: a protocol error
        with pytest.raises(WebSocketClosed) as err:
            await ws.receive()
        assert err.value.code == 1002
        assert stream.ended == ["reset"]

    asyncio.run(main())


def test_the_peer_closing_is_answered_and_the_stream_closed_not_reset() -> None:
    async def main() -> None:
        ws, server, stream = _open_websocket()
        stream.feed(server.send(CloseConnection(code=1000, reason="bye")))
        with pytest.raises(WebSocketClosed) as err:
            await ws.receive()
        assert (err.value.code, err.value.reason) == (1000, "bye")
        assert stream.ended == ["close"]
        [answer] = _frames_to_server(server, stream)
        assert isinstance(answer, CloseConnection) and answer.code == 1000

    asyncio.run(main())


@pytest.mark.parametrize("text", [True, False])
def test_a_cancelled_receive_keeps_the_fragments_already_received(text: bool) -> None:
    async def main() -> None:
        ws, server, stream = _open_websocket(HttpLimits(max_ws_message=10))
        kind: type[TextMessage] | type[BytesMessage] = TextMessage if text else BytesMessage
        first, second = ("ab", "cd") if text else (b"ab", b"cd")
        stream.feed(server.send(kind(data=first, message_finished=False)))  # type: ignore[arg-type]
        receiving = asyncio.create_task(ws.receive())
        await stream.waiting.wait()  # the first fragment is taken, the next is awaited
        receiving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await receiving
        stream.feed(server.send(kind(data=second, message_finished=True)))  # type: ignore[arg-type]
        assert await ws.receive() == first + second  # type: ignore[operator]
        # the limit counts the whole message across the cancelled receive too
        stream.feed(server.send(Message(data=b"x" * 6, message_finished=False)))
        receiving = asyncio.create_task(ws.receive())
        await stream.waiting.wait()
        receiving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await receiving
        stream.feed(server.send(Message(data=b"y" * 6, message_finished=True)))
        with pytest.raises(WebSocketClosed) as err:
            await ws.receive()
        assert err.value.code == 1009

    asyncio.run(main())


def test_the_message_assembler() -> None:
    assembler = MessageAssembler(5)
    assert assembler.add(TextMessage(data="ab", message_finished=False)) is None
    assert assembler.add(TextMessage(data="cd", message_finished=True)) == "abcd"
    assert assembler.add(BytesMessage(data=b"abcde", message_finished=True)) == b"abcde"
    assert assembler.add(BytesMessage(data=b"abc", message_finished=False)) is None
    with pytest.raises(MessageTooLarge):
        assembler.add(BytesMessage(data=b"def", message_finished=True))
    # dropped on the error: a new message starts empty
    assert assembler.add(BytesMessage(data=b"z", message_finished=True)) == b"z"
