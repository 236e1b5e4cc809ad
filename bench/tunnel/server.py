"""The tunnel server (aiohttp): one sender WebSocket at ``/sender``; every other request of
a client becomes a JSON frame to the sender and its answer streams back from binary frames.

``424`` when no sender is connected; ``ABORT`` to the sender when the client goes away;
pings every :data:`PING_INTERVAL` s, the sender dropped after :data:`SILENCE_LIMIT` s of
silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, Final

from aiohttp import WSMsgType, web

from bench.tunnel.frames import Packet, Reorder, decode_frame

__all__ = ["PING_INTERVAL", "SILENCE_LIMIT", "TunnelServer"]

PING_INTERVAL: Final = 5.0
SILENCE_LIMIT: Final = 10.0
#: Packets queued per request before the sender's frames wait (backpressure of a kind:
#: the tunnel has one WebSocket, so a slow client holds every other request back too).
QUEUE_PACKETS: Final = 64


class _Pending:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[Packet | None] = asyncio.Queue(QUEUE_PACKETS)
        self.reorder = Reorder()
        self.aborted = False


class TunnelServer:
    """The central tunnel: ``app`` is the aiohttp application."""

    def __init__(self, profile: str = "default") -> None:
        self.profile = profile
        self.sender: web.WebSocketResponse | None = None
        self.pending: dict[int, _Pending] = {}
        self.next_id = 1
        #: Set once a sender is connected.
        self.connected = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_get("/sender", self.sender_socket)
        self.app.router.add_route("*", "/{tail:.*}", self.client_request)

    async def sender_socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(
            heartbeat=PING_INTERVAL, receive_timeout=SILENCE_LIMIT, max_msg_size=128 * 1024
        )
        await ws.prepare(request)
        self.sender = ws
        self.connected.set()
        try:
            async for msg in ws:
                if msg.type is not WSMsgType.BINARY:
                    continue
                packet = decode_frame(msg.data)
                pending = self.pending.get(packet.request_id)
                if pending is None:
                    continue  # aborted meanwhile
                for p in pending.reorder.push(packet):
                    if pending.aborted:
                        break
                    await pending.queue.put(p)
        finally:
            if self.sender is ws:
                self.sender = None
            for pending in self.pending.values():
                with contextlib.suppress(asyncio.QueueFull):
                    pending.queue.put_nowait(None)
        return ws

    async def client_request(self, request: web.Request) -> web.StreamResponse:
        sender = self.sender
        if sender is None or sender.closed:
            return web.Response(status=424, text="the sender is not connected")
        request_id = self.next_id
        self.next_id += 1
        body = await request.read()
        pending = _Pending()
        self.pending[request_id] = pending
        frame: dict[str, Any] = {
            "type": "HTTP",
            "request_id": request_id,
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            "payload": body.decode("latin-1") if body else None,
            "headers": {k: request.headers[k] for k in ("accept", "range") if k in request.headers},
            "encoding": "BINARY",
            "profile": self.profile,
        }
        response: web.StreamResponse | None = None
        try:
            await sender.send_str(json.dumps(frame))
            while True:
                packet = await pending.queue.get()
                if packet is None:
                    if response is None:
                        return web.Response(status=502, text="the sender went away")
                    break
                if packet.packet_id == 1:
                    assert packet.status is not None and packet.headers is not None
                    response = web.StreamResponse(status=packet.status, headers=packet.headers)
                    await response.prepare(request)
                assert response is not None
                if packet.body:
                    await response.write(packet.body)
                if packet.last:
                    await response.write_eof()
                    break
            return response
        except (asyncio.CancelledError, ConnectionResetError):
            # the client went away: the sender stops producing
            if not sender.closed:
                with contextlib.suppress(Exception):
                    await sender.send_str(json.dumps({"type": "ABORT", "request_id": request_id}))
            raise
        finally:
            self.pending.pop(request_id, None)
            pending.aborted = True
            while not pending.queue.empty():  # wakes the socket reader if it waits on us
                pending.queue.get_nowait()
