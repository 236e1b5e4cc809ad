"""One media service, reached through the tunnel or over switchy: the client changes by one
setting, ``SWITCHY_TRANSPORT=tunnel|p2p`` (see README.md in this folder).

The service is an ASGI app: ``GET /library.json`` (the listing), ``GET /music/{name}``
(a file, with ``Range``), and ``/ws`` (a WebSocket of live events: each message sent is
answered with a "now playing" event).  The client code (:func:`browse`) is the same for
both transports: only :func:`open_client` looks at the setting.

Usage (from a checkout, with the ``http`` and ``bench`` extras)::

    python examples/tunnel_migration/media.py demo      # everything in one process
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from switchy.presets import default_node
from switchy.protocols.http import HttpService
from switchy.protocols.http.client import SwitchyTransport
from switchy.protocols.http.core import HttpError, parse_range
from switchy.protocols.http.proxy import HttpProxyService, tcp_multiaddr
from switchy.stack.config import NetworkConfig
from switchy.stack.node import Node, Target
from switchy.transports.tcp import TcpTransport

#: The setting that picks the transport of the client.
SETTING = "SWITCHY_TRANSPORT"
TRACKS = {f"song{i}.ogg": bytes([i]) * (100_000 + i) for i in range(3)}


async def media_app(scope: Any, receive: Any, send: Any) -> None:
    """The media service (ASGI 3)."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while (msg := await receive())["type"] == "websocket.receive":
            event = {"event": "now-playing", "track": msg.get("text")}
            await send({"type": "websocket.send", "text": json.dumps(event)})
        return
    path = scope["path"]
    if path == "/library.json":
        body = json.dumps(sorted(TRACKS)).encode()
        await _send(send, 200, body, [(b"content-type", b"application/json")])
        return
    name = path.removeprefix("/music/")
    if name not in TRACKS:
        await _send(send, 404, b"no such track", [])
        return
    data = TRACKS[name]
    try:
        rng = parse_range(dict(scope["headers"]).get(b"range"), len(data))
    except HttpError as exc:
        await _send(send, exc.status, b"", [])
        return
    if rng is None:
        await _send(send, 200, data, [(b"accept-ranges", b"bytes")])
    else:
        first, last = rng
        content_range = f"bytes {first}-{last}/{len(data)}".encode()
        await _send(send, 206, data[first : last + 1], [(b"content-range", content_range)])


async def _send(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@asynccontextmanager
async def open_client(
    *, tunnel_url: str, node: Node, peer: Target, setting: str | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """The one place that knows the transport: ``tunnel`` (the default, as before the move)
    or ``p2p`` (over switchy, to ``peer``)."""
    choice = setting or os.environ.get(SETTING, "tunnel")
    if choice == "p2p":
        transport = SwitchyTransport(node, peers={"media": peer})
        async with httpx.AsyncClient(transport=transport, base_url="http://media") as client:
            yield client
    elif choice == "tunnel":
        async with httpx.AsyncClient(base_url=tunnel_url) as client:
            yield client
    else:
        raise ValueError(f"{SETTING} is tunnel or p2p, not {choice!r}")


async def browse(client: httpx.AsyncClient) -> str:
    """What the application does, whatever the transport: list, fetch a range, fetch all."""
    tracks = (await client.get("/library.json")).json()
    part = await client.get(f"/music/{tracks[1]}", headers={"Range": "bytes=0-9"})
    whole = await client.get(f"/music/{tracks[1]}")
    sizes = f"range {part.status_code} {len(part.content)} B; whole {len(whole.content)} B"
    return f"{len(tracks)} tracks; {sizes}"


async def live_event(node: Node, peer: Target, track: str) -> dict[str, Any]:
    """One exchange on the service's ``/ws`` over a switchy stream."""
    from switchy.protocols.http.wsclient import connect_websocket

    async with await connect_websocket(node, peer, "/ws", host="media") as ws:
        await ws.send(track)
        answer = await ws.receive()
        assert isinstance(answer, str)
        return dict(json.loads(answer))


def connection_kind(node: Node, peer: Any) -> str:
    """``direct`` or ``relayed``: how ``node`` reaches ``peer`` right now."""
    conns = node.connections(peer)
    if not conns:
        return "not connected"
    return "relayed" if "/p2p-circuit" in str(conns[0].remote_addr) else "direct"


async def demo() -> None:
    """The move in one process: the tunnel, then expose (server unchanged), then the ASGI
    app on the node; the client switched by the setting only."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # bench/ of the checkout
    from aiohttp import web

    from bench.tunnel.sender import Sender
    from bench.tunnel.server import TunnelServer

    # today: the local media server (here: the ASGI app on a plain loopback port)
    local_service = HttpService(media_app, lifespan="off")
    local = await TcpTransport(NetworkConfig()).listen(
        tcp_multiaddr("127.0.0.1", 0),
        local_service.handle_stream,  # type: ignore[arg-type]
    )
    local_url = f"http://127.0.0.1:{local.addrs[0].value_for_protocol('tcp')}"
    tunnel = TunnelServer()
    runner = web.AppRunner(tunnel.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    tunnel_url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    sender_task = asyncio.ensure_future(Sender(tunnel_url, local_url).run())
    await asyncio.wait_for(tunnel.connected.wait(), 10)
    try:
        async with (
            default_node(
                services=[HttpProxyService(local_url)], listen=["/ip4/127.0.0.1/tcp/0"]
            ) as home,
            default_node(
                services=[HttpService(media_app)], listen=["/ip4/127.0.0.1/tcp/0"]
            ) as home2,
            default_node() as phone,
        ):
            for step, setting, server in (
                ("1. tunnel", "tunnel", home),
                ("2. p2p, server unchanged behind switchy expose", "p2p", home),
                ("3. p2p, the ASGI app served on the node", "p2p", home2),
                ("rollback: tunnel again", "tunnel", home),
            ):
                if setting == "p2p":
                    await phone.connect(server.full_addrs[0])
                async with open_client(
                    tunnel_url=tunnel_url, node=phone, peer=server.peer_id, setting=setting
                ) as client:
                    how = (
                        connection_kind(phone, server.peer_id) if setting == "p2p" else "via tunnel"
                    )
                    print(f"{step}: {await browse(client)} ({how})")
            # live events: the WebSocket, over switchy
            event = await live_event(phone, home2.peer_id, "song1.ogg")
            print(f"live event over /ws: {event}")
    finally:
        sender_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender_task
        await runner.cleanup()
        await local.close()
    print("ok")


if __name__ == "__main__":
    if sys.argv[1:] != ["demo"]:
        sys.exit(__doc__)
    asyncio.run(demo())
