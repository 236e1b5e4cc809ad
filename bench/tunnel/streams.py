"""The tunnel protocol carried over any :class:`~switchy.stack.stream.Stream` (the simulator's).

For the simulated topology comparison (:mod:`bench.bench_http_topology`): the same
frames as :mod:`bench.tunnel.server` and :mod:`bench.tunnel.sender` (a JSON text frame
per request, binary answer frames of at most 64 KiB with ``request_id``/``packet_id``/
``last``, packet 1 with status and headers, reordering by packet id, ``424`` without a
sender, ``ABORT`` when a client goes away), but each WebSocket message is a
varint-length-prefixed message whose first byte says text (``T``) or binary (``B``), and
the HTTP side is h11 (:mod:`switchy.protocols.http.core`) instead of aiohttp.  What it
does not reproduce: WebSocket pings (a latency comparison does not need them).

* :class:`StreamTunnel`: the tunnel server; :meth:`~StreamTunnel.serve_sender` takes the
  sender's connection, :meth:`~StreamTunnel.serve_client` an HTTP client's.
* :class:`StreamSender`: the home server's side; answers each request with ``app``, an
  ASGI application called in-process (the local HTTP server, zero distance away).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import MutableMapping
from typing import Any, Final

import h11

from bench.tunnel.frames import (
    BODY_ROOM,
    MAX_FRAME,
    Packet,
    Reorder,
    decode_frame,
    encode_frames_of,
    first_frame,
)
from switchy.protocols.http.core import ServerCore
from switchy.protocols.http.io import next_event, read_head
from switchy.protocols.http.server import ASGIApp
from switchy.stack.errors import P2PError
from switchy.stack.stream import Stream

__all__ = ["StreamSender", "StreamTunnel"]

TEXT: Final = b"T"
BINARY: Final = b"B"
#: Packets queued per request (as the aiohttp tunnel).
QUEUE_PACKETS: Final = 64
#: Largest request body the tunnel takes into a frame.
MAX_PAYLOAD: Final = 1024 * 1024


class StreamTunnel:
    """The tunnel server over streams (see the module docstring)."""

    def __init__(self, profile: str = "default") -> None:
        self.profile = profile
        self.sender: Stream | None = None
        self.pending: dict[int, asyncio.Queue[Packet | None]] = {}
        self.next_id = 1
        self._send_lock = asyncio.Lock()
        #: Set once a sender is connected.
        self.connected = asyncio.Event()

    async def serve_sender(self, stream: Stream) -> None:
        """Read the sender's answer frames until its connection ends."""
        self.sender = stream
        self.connected.set()
        reorders: dict[int, Reorder] = {}
        try:
            while True:
                msg = await stream.recv_message(max_size=MAX_FRAME + 1)
                if msg[:1] != BINARY:
                    continue
                packet = decode_frame(msg[1:])
                queue = self.pending.get(packet.request_id)
                if queue is None:
                    reorders.pop(packet.request_id, None)
                    continue  # aborted meanwhile
                reorder = reorders.setdefault(packet.request_id, Reorder())
                for p in reorder.push(packet):
                    await queue.put(p)
                    if p.last:
                        reorders.pop(packet.request_id, None)
        except (P2PError, OSError, ValueError):
            pass
        finally:
            if self.sender is stream:
                self.sender = None
            for queue in self.pending.values():
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(None)

    async def serve_client(self, stream: Stream) -> None:
        """Serve an HTTP client's requests (keep-alive) through the sender."""
        core = ServerCore()
        try:
            while await self._one(stream, core):
                core.conn.start_next_cycle()
        except (P2PError, OSError):
            await stream.reset()

    async def _one(self, stream: Stream, core: ServerCore) -> bool:
        head = await read_head(core, stream, core.limits)
        if not isinstance(head, h11.Request):
            await stream.close()
            return False
        body = b""
        while True:
            event = await next_event(core, stream, core.limits.idle_timeout)
            if isinstance(event, h11.EndOfMessage):
                break
            if not isinstance(event, h11.Data) or len(body) + len(event.data) > MAX_PAYLOAD:
                await stream.reset()
                return False
            body += event.data
        sender = self.sender
        if sender is None:
            await stream.write(core.simple_response(424, b"no sender\n", b"text/plain"))
            return False
        rid = self.next_id
        self.next_id += 1
        path, _, query = head.target.decode("latin-1").partition("?")
        headers = {k.decode(): v.decode("latin-1") for k, v in head.headers}
        frame = {
            "type": "HTTP",
            "request_id": rid,
            "method": head.method.decode(),
            "path": path,
            "query": dict(p.partition("=")[::2] for p in query.split("&") if p),
            "payload": body.decode("latin-1") if body else None,
            "headers": {k: headers[k] for k in ("accept", "range") if k in headers},
            "encoding": "BINARY",
            "profile": self.profile,
        }
        queue: asyncio.Queue[Packet | None] = asyncio.Queue(QUEUE_PACKETS)
        self.pending[rid] = queue
        try:
            async with self._send_lock:
                await sender.send_message(TEXT + json.dumps(frame).encode())
            while True:
                packet = await queue.get()
                if packet is None:
                    await stream.reset()
                    return False
                out = b""
                if packet.packet_id == 1:
                    assert packet.status is not None and packet.headers is not None
                    answer = [(k.encode(), v.encode()) for k, v in packet.headers.items()]
                    out = core.response(packet.status, answer, close=False)
                if packet.body:
                    out += core.data(packet.body)
                if packet.last:
                    out += core.end()
                await stream.write(out)
                if packet.last:
                    return core.conn.our_state is h11.DONE and core.conn.their_state is h11.DONE
        except (P2PError, OSError):
            with contextlib.suppress(P2PError, OSError):
                async with self._send_lock:
                    abort = {"type": "ABORT", "request_id": rid}
                    await sender.send_message(TEXT + json.dumps(abort).encode())
            raise
        finally:
            self.pending.pop(rid, None)


class StreamSender:
    """The sender over a stream to the tunnel: answers each request frame with ``app``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._send_lock = asyncio.Lock()
        self._tasks: dict[int, asyncio.Task[None]] = {}

    async def run(self, stream: Stream) -> None:
        """Serve the tunnel's frames until the stream ends (or this is cancelled)."""
        try:
            while True:
                msg = await stream.recv_message(max_size=MAX_PAYLOAD * 2)
                if msg[:1] != TEXT:
                    continue
                frame = json.loads(msg[1:])
                rid = int(frame["request_id"])
                if frame["type"] == "ABORT":
                    task = self._tasks.pop(rid, None)
                    if task is not None:
                        task.cancel()
                elif frame["type"] == "HTTP":
                    task = asyncio.ensure_future(self._serve(stream, frame))
                    self._tasks[rid] = task
                    task.add_done_callback(functools.partial(self._forget, rid))
        except (P2PError, OSError):
            pass
        finally:
            for task in list(self._tasks.values()):
                task.cancel()

    def _forget(self, rid: int, _task: object) -> None:
        self._tasks.pop(rid, None)

    async def _serve(self, stream: Stream, frame: dict[str, Any]) -> None:
        rid = int(frame["request_id"])
        query = "&".join(f"{k}={v}" for k, v in (frame.get("query") or {}).items())
        payload = (frame.get("payload") or "").encode("latin-1")
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": frame["method"],
            "scheme": "http",
            "path": frame["path"],
            "raw_path": frame["path"].encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": [(k.encode(), str(v).encode()) for k, v in frame["headers"].items()],
            "client": None,
            "server": None,
        }
        status = 500
        headers: dict[str, str] = {}
        body = bytearray()
        sent_request = False

        async def receive() -> MutableMapping[str, Any]:
            nonlocal sent_request
            if not sent_request:
                sent_request = True
                return {"type": "http.request", "body": payload, "more_body": False}
            await asyncio.Event().wait()  # no disconnect: the tunnel aborts us instead
            raise AssertionError("unreachable")

        async def send(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                for k, v in message.get("headers", []):
                    headers[bytes(k).decode()] = bytes(v).decode("latin-1")
            elif message["type"] == "http.response.body":
                body.extend(message.get("body", b""))

        await self.app(scope, receive, send)
        frames = []
        first, rest = first_frame(rid, status, headers, bytes(body), last=True)
        frames.append(first)
        if rest:
            for i in range(0, len(rest), BODY_ROOM):
                part = rest[i : i + BODY_ROOM]
                frames += encode_frames_of(
                    rid, 2 + i // BODY_ROOM, part, last=i + BODY_ROOM >= len(rest)
                )
        for out in frames:
            async with self._send_lock:
                await stream.send_message(BINARY + out, max_size=MAX_FRAME + 1)
