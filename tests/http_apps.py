"""A small ASGI application for the HTTP tests (no framework): JSON, echo, ranges, WebSocket."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from switchy.protocols.http.core import PEER_ID_HEADER, HttpError, parse_range

FILE = bytes(range(256)) * 1024  # 256 KiB of known content


class App:
    """Routes: /hello, /echo (streamed), /big?n=, /file (Range), /forever, /boom, /ws."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.forever_stopped = asyncio.Event()
        self.forever_sent = 0
        self.flood_stopped = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    scope["state"]["started"] = True
                    self.events.append("startup")
                    await send({"type": "lifespan.startup.complete"})
                else:
                    self.events.append("shutdown")
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] == "websocket":
            await self.websocket(scope, receive, send)
            return
        path = scope["path"]
        if path == "/hello":
            body = json.dumps(
                {
                    "peer": scope["extensions"]["libp2p"]["peer_id"],
                    "method": scope["method"],
                    "path": path,
                    "query": scope["query_string"].decode(),
                    "headers": {k.decode(): v.decode() for k, v in scope["headers"]},
                    "started": scope["state"].get("started", False),
                }
            ).encode()
            await _respond(send, 200, body, b"application/json")
        elif path == "/echo":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    return
                await send({"type": "http.response.body", "body": msg["body"], "more_body": True})
                if not msg.get("more_body"):
                    break
            await send({"type": "http.response.body", "body": b""})
        elif path == "/big":
            n = int(scope["query_string"].decode().partition("=")[2])
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", str(n).encode())],
                }
            )
            chunk = b"x" * 65536
            while n > 0:
                part = chunk[: min(n, len(chunk))]
                n -= len(part)
                await send({"type": "http.response.body", "body": part, "more_body": n > 0})
        elif path == "/file":
            headers = dict(scope["headers"])
            try:
                rng = parse_range(headers.get(b"range"), len(FILE))
            except HttpError as exc:
                await _respond(send, exc.status, b"", b"text/plain")
                return
            if rng is None:
                await _respond(send, 200, FILE, b"application/octet-stream")
            else:
                first, last = rng
                await _respond(
                    send,
                    206,
                    FILE[first : last + 1],
                    b"application/octet-stream",
                    [(b"content-range", f"bytes {first}-{last}/{len(FILE)}".encode())],
                )
        elif path == "/forever":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            try:
                while True:
                    msg = {"type": "http.response.body", "body": b"y" * 4096, "more_body": True}
                    await send(msg)
                    self.forever_sent += 4096
            finally:
                self.forever_stopped.set()
        elif path == "/boom":
            raise RuntimeError("boom")
        else:
            await _respond(send, 404, b"not found", b"text/plain")

    async def websocket(self, scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["type"] == "websocket.connect"
        if scope["path"] != "/ws":
            await send({"type": "websocket.close"})
            return
        await send({"type": "websocket.accept"})
        # on a node: the scope extension; behind expose: the header the proxy adds
        peer = (
            scope["extensions"]["libp2p"]["peer_id"]
            or dict(scope["headers"]).get(PEER_ID_HEADER.encode(), b"").decode()
        )
        await send({"type": "websocket.send", "text": peer})
        while True:
            msg = await receive()
            if msg["type"] == "websocket.disconnect":
                self.events.append(f"ws-closed {msg.get('code')}")
                return
            if msg.get("text") == "flood":
                try:
                    while True:
                        await send({"type": "websocket.send", "bytes": b"z" * 65536})
                finally:
                    self.events.append("flood-stopped")
                    self.flood_stopped.set()
            if "text" in msg and msg["text"] is not None:
                await send({"type": "websocket.send", "text": msg["text"].upper()})
            else:
                await send({"type": "websocket.send", "bytes": msg["bytes"][::-1]})


async def _respond(
    send: Any,
    status: int,
    body: bytes,
    content_type: bytes,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
