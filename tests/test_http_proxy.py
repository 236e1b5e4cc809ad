"""expose (HTTP and TCP), gateway and forward: curl, httpx and a WebSocket client over
loopback, allowlists, paths outside what is exposed, open-proxy attempts."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
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
from switchy.protocols.http import HTTP_PROTOCOL, PEER_ID_HEADER, HttpLimits, HttpService
from switchy.protocols.http.proxy import Gateway, HttpProxyService, tcp_multiaddr
from switchy.protocols.http.tcp import TcpExposeService, TcpForwarder
from switchy.stack.config import NetworkConfig
from switchy.stack.errors import ConnectionFailed
from switchy.stack.node import Node
from switchy.stack.stream import Stream
from switchy.transports.tcp import TcpTransport
from tests.http_apps import FILE, App

httpx = pytest.importorskip("httpx")

LOOPBACK = "/ip4/127.0.0.1/tcp/0"


def run(coro: Callable[[], Awaitable[None]], timeout: float = 60) -> None:
    asyncio.run(asyncio.wait_for(coro(), timeout))


@asynccontextmanager
async def local_http_server(app: App) -> AsyncIterator[int]:
    """The test App served on plain loopback TCP (the 'local media server'); yields its port."""
    service = HttpService(app, lifespan="off")
    tcp = TcpTransport(NetworkConfig())
    listener = await tcp.listen(tcp_multiaddr("127.0.0.1", 0), service.handle_stream)  # type: ignore[arg-type]
    try:
        yield int(listener.addrs[0].value_for_protocol("tcp"))
    finally:
        await listener.close()


@asynccontextmanager
async def exposed(
    app: App, *, prefix: str = "", allow: list[Any] | None = None
) -> AsyncIterator[tuple[Node, Node, int]]:
    """(server node exposing the local App, client node, gateway port on the client)."""
    async with local_http_server(app) as port:
        proxy = HttpProxyService(f"http://127.0.0.1:{port}{prefix}", allow=allow)
        async with (
            default_node(services=[proxy], listen=[LOOPBACK]) as server,
            default_node() as client,
        ):
            await client.connect(server.full_addrs[0])
            gateway = Gateway(client)
            host, gport = await gateway.listen()
            assert host == "127.0.0.1"
            try:
                yield server, client, gport
            finally:
                await gateway.close()


async def ws_handshake(stream: Stream, path: str) -> tuple[WSConnection, bytes]:
    """A wsproto client handshake on ``stream``; returns the connection and leftover bytes."""
    ws = WSConnection(ConnectionType.CLIENT)
    await stream.write(ws.send(Request(host="p2p", target=path)))
    while True:
        data = await stream.read(65536)
        assert data, "closed during the WebSocket handshake"
        ws.receive_data(data)
        for event in ws.events():
            assert isinstance(event, AcceptConnection), event
            return ws, b""


async def ws_recv(ws: WSConnection, stream: Stream) -> str | bytes:
    parts: list[Any] = []
    while True:
        for event in ws.events():
            if isinstance(event, TextMessage | BytesMessage):
                parts.append(event.data)
                if event.message_finished:
                    return "".join(parts) if isinstance(event, TextMessage) else b"".join(parts)
            assert not isinstance(event, CloseConnection), event
        data = await stream.read(65536)
        assert data, "closed"
        ws.receive_data(data)


async def curl(*args: str, stdin: bytes | None = None) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "-sS",
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else None,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate(stdin)
    assert proc.returncode is not None
    return proc.returncode, out, err


needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


@needs_curl
def test_curl_through_the_gateway_reaches_an_exposed_server() -> None:
    async def main() -> None:
        async with exposed(App()) as (server, client, gport):
            base = f"http://127.0.0.1:{gport}/p2p/{server.peer_id}"
            code, out, err = await curl(
                "-H", f"{PEER_ID_HEADER}: spoofed", "-H", "X-Custom: 1", f"{base}/hello?a=b"
            )
            assert code == 0, err
            data = json.loads(out)
            assert data["headers"][PEER_ID_HEADER] == str(client.peer_id)  # not the spoof
            assert data["headers"]["x-custom"] == "1"
            assert data["query"] == "a=b" and data["path"] == "/hello"
            code, out, _ = await curl("-r", "100-199", f"{base}/file")
            assert out == FILE[100:200]
            code, out, _ = await curl("-o", "-", "-w", "%{http_code}", f"{base}/file")
            assert out[: len(FILE)] == FILE and out[len(FILE) :] == b"200"
            code, out, _ = await curl("-X", "POST", "--data-binary", "payload", f"{base}/echo")
            assert out == b"payload"
            # a client waiting for "100 Continue" gets it from the gateway at once
            big = bytes(range(256)) * 8192  # 2 MiB
            code, out, err = await curl(
                "-v",
                "-H",
                "Expect: 100-continue",
                "--data-binary",
                "@-",
                f"{base}/echo",
                stdin=big,
            )
            assert out == big and b"HTTP/1.1 100 Continue" in err

    run(main)


def test_httpx_through_the_gateway_and_refusals() -> None:
    async def main() -> None:
        async with exposed(App(), prefix="/hello") as (server, client, gport):
            gw = f"http://127.0.0.1:{gport}"
            async with httpx.AsyncClient(base_url=gw) as http:
                resp = await http.get(f"/p2p/{server.peer_id}/hello")
                assert resp.status_code == 200
                assert resp.json()["headers"][PEER_ID_HEADER] == str(client.peer_id)
                # outside what is exposed
                resp = await http.get(f"/p2p/{server.peer_id}/file")
                assert resp.status_code == 404 and "outside what is exposed" in resp.text
                resp = await http.get(f"/p2p/{server.peer_id}/hello/%2e%2e/file")
                assert resp.status_code == 400
                # not a peer path, not a peer id
                assert (await http.get("/elsewhere")).status_code == 404
                assert (await http.get("/p2p/not-a-peer/x")).status_code == 400
            # keep-alive: two requests on one connection to the gateway
            reader, writer = await asyncio.open_connection("127.0.0.1", gport)
            hello = f"GET /p2p/{server.peer_id}/hello HTTP/1.1\r\nhost: gw\r\n".encode()
            writer.write(hello + b"\r\n" + hello + b"connection: close\r\n\r\n")
            answer = await reader.read()
            assert answer.count(b"HTTP/1.1 200 OK") == 2
            writer.close()
            # an open-proxy attempt: absolute-form target, CONNECT
            reader, writer = await asyncio.open_connection("127.0.0.1", gport)
            writer.write(b"GET http://example.com/ HTTP/1.1\r\nhost: example.com\r\n\r\n")
            answer = await reader.read()
            assert answer.startswith(b"HTTP/1.1 400") and b"not an open proxy" in answer
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", gport)
            writer.write(b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n")
            answer = await reader.read()
            assert answer.startswith(b"HTTP/1.1 405")
            writer.close()

    run(main)


def test_a_peer_not_on_the_expose_allowlist_is_refused() -> None:
    async def main() -> None:
        async with (
            default_node() as friend,
            exposed(App(), allow=[friend.peer_id]) as (server, _client, gport),
        ):
            async with httpx.AsyncClient() as http:
                resp = await http.get(f"http://127.0.0.1:{gport}/p2p/{server.peer_id}/hello")
                assert resp.status_code == 403
            from switchy.protocols.http.client import SwitchyTransport

            await friend.connect(server.full_addrs[0])
            async with httpx.AsyncClient(transport=SwitchyTransport(friend)) as http:
                resp = await http.get(f"http://{server.peer_id}/hello")
                assert resp.status_code == 200

    run(main)


def test_an_unreachable_peer_or_upstream_is_502() -> None:
    async def main() -> None:
        async with (
            default_node() as stranger,
            exposed(App()) as (server, client, gport),
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{gport}") as http,
        ):
            resp = await http.get(f"/p2p/{stranger.peer_id}/x")  # no address known
            assert resp.status_code == 502
        # the exposed server went away
        proxy = HttpProxyService("http://127.0.0.1:9")  # discard port: nothing listens
        async with (
            default_node(services=[proxy], listen=[LOOPBACK]) as server,
            default_node() as client,
        ):
            await client.connect(server.full_addrs[0])
            from switchy.protocols.http.client import SwitchyTransport

            async with httpx.AsyncClient(transport=SwitchyTransport(client)) as http:
                resp = await http.get(f"http://{server.peer_id}/x")
                assert resp.status_code == 502

    run(main)


def test_a_websocket_client_through_the_gateway() -> None:
    """The tunnel's clients use /ws: through the gateway to an ASGI app on a node, and
    through the gateway and expose to a local server."""

    async def main() -> None:
        app = App()
        async with (
            default_node(services=[HttpService(app)], listen=[LOOPBACK]) as server,
            exposed(App()) as (exposing, client, gport),
        ):
            await client.connect(server.full_addrs[0])
            tcp = TcpTransport(NetworkConfig())
            for peer in (server.peer_id, exposing.peer_id):
                conn = await tcp.dial(tcp_multiaddr("127.0.0.1", gport))
                assert isinstance(conn, Stream)
                ws, _ = await ws_handshake(conn, f"/p2p/{peer}/ws")
                assert await ws_recv(ws, conn) == str(client.peer_id)
                await conn.write(ws.send(Message(data="hello")))
                assert await ws_recv(ws, conn) == "HELLO"
                await conn.write(ws.send(Message(data=b"abc")))
                assert await ws_recv(ws, conn) == b"cba"
                await conn.write(ws.send(CloseConnection(code=1000)))
                await conn.close()
        assert "ws-closed 1000" in app.events

    run(main)


def test_a_websocket_peer_that_never_reads_is_reset_and_the_app_stops() -> None:
    async def main() -> None:
        app = App()
        service = HttpService(app, limits=HttpLimits(write_timeout=0.5))
        async with (
            default_node(services=[service], listen=[LOOPBACK]) as server,
            default_node() as client,
        ):
            await client.connect(server.full_addrs[0])
            stream = await client.open_stream(server.peer_id, HTTP_PROTOCOL)
            ws, _ = await ws_handshake(stream, "/ws")
            await ws_recv(ws, stream)
            await stream.write(ws.send(Message(data="flood")))
            # never read again: the server's writes block, time out, reset
            await asyncio.wait_for(app.flood_stopped.wait(), 20)
            # the service keeps serving others
            from switchy.protocols.http.client import SwitchyTransport

            async with httpx.AsyncClient(transport=SwitchyTransport(client)) as http:
                assert (await http.get(f"http://{server.peer_id}/hello")).status_code == 200

    run(main)


@asynccontextmanager
async def echo_server() -> AsyncIterator[int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


def test_tcp_expose_and_forward_carry_an_echo_service() -> None:
    async def main() -> None:
        async with echo_server() as port:
            expose = TcpExposeService("127.0.0.1", port)
            async with (
                default_node(services=[expose], listen=[LOOPBACK]) as server,
                default_node() as client,
            ):
                await client.connect(server.full_addrs[0])
                forwarder = TcpForwarder(client, server.peer_id)
                _, fport = await forwarder.listen()
                payload = bytes(range(256)) * 4096  # 1 MiB
                pairs = [await asyncio.open_connection("127.0.0.1", fport) for _ in range(3)]
                for i, (_, writer) in enumerate(pairs):  # one stream per connection
                    writer.write(payload[i:])
                    writer.write_eof()
                for i, (reader, writer) in enumerate(pairs):
                    assert await reader.read() == payload[i:]
                    writer.close()
                await forwarder.close()

    run(main)


def test_tcp_expose_refuses_peers_not_on_the_allowlist() -> None:
    async def main() -> None:
        async with echo_server() as port:
            expose = TcpExposeService("127.0.0.1", port, allow=[])
            async with (
                default_node(services=[expose], listen=[LOOPBACK]) as server,
                default_node() as client,
            ):
                await client.connect(server.full_addrs[0])
                forwarder = TcpForwarder(client, server.peer_id)
                _, fport = await forwarder.listen()
                reader, writer = await asyncio.open_connection("127.0.0.1", fport)
                writer.write(b"hello")
                with contextlib.suppress(ConnectionResetError):  # a reset refuses too
                    assert await reader.read() == b""
                writer.close()
                await forwarder.close()

    run(main)


def test_the_gateway_reaches_a_peer_by_name_through_its_resolver() -> None:
    from switchy.stack.errors import PeerNotFound

    async def main() -> None:
        async with (
            default_node(services=[HttpService(App())], listen=[LOOPBACK]) as server,
            default_node() as client,
        ):
            asked: list[str] = []

            async def resolve(name: str) -> Any:
                asked.append(name)
                if name != "media":
                    raise PeerNotFound(f"no peer called {name}")
                client.peerstore.add_addrs(server.peer_id, server.full_addrs)
                return server.peer_id

            gateway = Gateway(client, resolve=resolve)
            _, gport = await gateway.listen()
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gport}") as http:
                resp = await http.get("/p2p/media/hello")
                assert resp.status_code == 200
                assert resp.json()["peer"] == str(client.peer_id)
                resp = await http.get("/p2p/nobody/hello")
                assert resp.status_code == 404 and "cannot resolve" in resp.text
            assert asked == ["media", "nobody"]
            await gateway.close()

    run(main)


def test_the_gateway_keeps_the_request_side_open_until_the_answer() -> None:
    """go's net/http takes an early end of stream as a client gone away: the gateway's
    stream to the peer must not half-close before the answer came."""
    import h11

    from switchy.protocols.http.core import ServerCore
    from switchy.protocols.http.io import next_event

    seen: list[str] = []

    async def strict_server(stream: Any) -> None:
        core = ServerCore()
        while not isinstance(await next_event(core, stream, 10), h11.EndOfMessage):
            pass
        try:
            extra = await asyncio.wait_for(stream.read(1), 0.2)
            seen.append("eof" if extra == b"" else "bytes")
        except TimeoutError:
            seen.append("open")  # what a go server needs
        await stream.write(core.simple_response(200, b"ok", b"text/plain"))
        await stream.close()

    async def main() -> None:
        async with default_node(listen=[LOOPBACK]) as server, default_node() as client:
            server.handle(HTTP_PROTOCOL, strict_server)
            await client.connect(server.full_addrs[0])
            gateway = Gateway(client)
            _, gport = await gateway.listen()
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gport}") as http:
                resp = await http.get(f"/p2p/{server.peer_id}/x")
                assert resp.status_code == 200 and resp.content == b"ok"
            await gateway.close()
        assert seen == ["open"]

    run(main)


def test_second_gateway_on_a_port_in_use_fails() -> None:
    """A gateway or forwarder does not share its port: the second listen on it is refused."""

    async def main() -> None:
        async with default_node() as client:
            first = Gateway(client)
            _, port = await first.listen()
            try:
                for second in (Gateway(client), TcpForwarder(client, client.peer_id)):
                    with pytest.raises(ConnectionFailed, match="cannot listen"):
                        await second.listen(port=port)
            finally:
                await first.close()

    run(main)
