"""The sender: the home server's side of the tunnel.  Keeps one WebSocket to the tunnel
server and proxies each request frame to the local HTTP server, answering with binary
frames (packet 1 with status and headers)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from typing import Any

import aiohttp

from bench.tunnel.frames import BODY_ROOM, encode_frames_of, first_frame
from bench.tunnel.server import PING_INTERVAL, SILENCE_LIMIT

__all__ = ["Sender"]

#: Response headers the sender passes back.
PASSED = ("content-type", "content-length", "content-range", "accept-ranges", "etag")


class Sender:
    """Connects to ``tunnel_url`` (``http://host:port``) and serves ``local_url``."""

    def __init__(self, tunnel_url: str, local_url: str) -> None:
        self.tunnel_url = tunnel_url
        self.local_url = local_url.rstrip("/")
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self._send_lock = asyncio.Lock()
        self.ready = asyncio.Event()

    async def run(self) -> None:
        """Serve until cancelled."""
        async with (
            aiohttp.ClientSession() as local,
            aiohttp.ClientSession() as tunnel,
            tunnel.ws_connect(
                f"{self.tunnel_url}/sender",
                heartbeat=PING_INTERVAL,
                timeout=aiohttp.ClientWSTimeout(ws_receive=SILENCE_LIMIT),
                max_msg_size=128 * 1024,
            ) as ws,
        ):
            self.ready.set()
            try:
                async for msg in ws:
                    if msg.type is not aiohttp.WSMsgType.TEXT:
                        continue
                    frame = json.loads(msg.data)
                    rid = int(frame["request_id"])
                    if frame["type"] == "ABORT":
                        task = self.tasks.pop(rid, None)
                        if task is not None:
                            task.cancel()
                    elif frame["type"] == "HTTP":
                        task = asyncio.ensure_future(self._serve(local, ws, frame))
                        self.tasks[rid] = task
                        task.add_done_callback(functools.partial(self._forget, rid))
            finally:
                for task in list(self.tasks.values()):
                    task.cancel()

    def _forget(self, rid: int, _task: object) -> None:
        self.tasks.pop(rid, None)

    async def _send(self, ws: Any, frame: bytes) -> None:
        async with self._send_lock:
            await ws.send_bytes(frame)

    async def _serve(self, local: aiohttp.ClientSession, ws: Any, frame: dict[str, Any]) -> None:
        rid = int(frame["request_id"])
        payload = frame.get("payload")
        async with local.request(
            frame["method"],
            self.local_url + frame["path"],
            params=frame.get("query") or None,
            headers=frame.get("headers") or {},
            data=payload.encode("latin-1") if payload else None,
        ) as resp:
            headers = {k: resp.headers[k] for k in PASSED if k in resp.headers}
            packet = 1
            buf = b""
            started = False
            async for chunk in resp.content.iter_chunked(BODY_ROOM):
                buf += chunk
                if not started:
                    if len(buf) < BODY_ROOM:
                        continue
                    out, buf = first_frame(rid, resp.status, headers, buf, last=False)
                    await self._send(ws, out)
                    started = True
                    packet = 2
                while len(buf) >= BODY_ROOM:
                    (out,) = encode_frames_of(rid, packet, buf[:BODY_ROOM], last=False)
                    buf = buf[BODY_ROOM:]
                    await self._send(ws, out)
                    packet += 1
            if not started:
                out, buf = first_frame(rid, resp.status, headers, buf, last=True)
                await self._send(ws, out)
                packet = 2
            if buf or started:
                for out in encode_frames_of(rid, packet, buf, last=True):
                    await self._send(ws, out)


async def _main() -> None:  # pragma: no cover - manual use
    import sys

    with contextlib.suppress(asyncio.CancelledError):
        await Sender(sys.argv[1], sys.argv[2]).run()


if __name__ == "__main__":  # pragma: no cover
    asyncio.run(_main())
