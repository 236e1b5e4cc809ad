"""The tunnel baseline of bench/tunnel: its frame format (hypothesis), reordering, and one
request end to end (424 without a sender, a streamed answer, ABORT when the client leaves)."""

from __future__ import annotations

import asyncio
import json
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.tunnel.frames import (
    BODY_ROOM,
    MAX_FRAME,
    Reorder,
    decode_frame,
    encode_frames_of,
    first_frame,
)

aiohttp = pytest.importorskip("aiohttp")


def _frames(rid: int, status: int, headers: dict[str, str], body: bytes) -> list[bytes]:
    """As the sender frames a whole body: packet 1, then the rest."""
    first, rest = first_frame(rid, status, headers, body, last=True)
    return [first, *(encode_frames_of(rid, 2, rest, last=True) if rest else [])]


def test_first_frame_layout_is_the_issues() -> None:
    frame, rest = first_frame(7, 206, {"content-range": "bytes 0-1/2"}, b"ab", last=True)
    assert rest == b""
    rid, pid, last = struct.unpack_from(">QIB", frame)
    status, hlen = struct.unpack_from(">HI", frame, 13)
    assert (rid, pid, last, status) == (7, 1, 1, 206)
    assert json.loads(frame[19 : 19 + hlen]) == {"content-range": "bytes 0-1/2"}
    assert frame[19 + hlen :] == b"ab"


@settings(max_examples=100, deadline=None)
@given(
    rid=st.integers(min_value=0, max_value=2**64 - 1),
    status=st.integers(min_value=100, max_value=599),
    body=st.binary(max_size=3 * MAX_FRAME),
    seed=st.integers(min_value=0, max_value=1000),
)
def test_frames_round_trip_in_any_order(rid: int, status: int, body: bytes, seed: int) -> None:
    frames = _frames(rid, status, {"content-type": "audio/ogg"}, body)
    assert all(len(f) <= MAX_FRAME for f in frames)
    random.Random(seed).shuffle(frames)
    reorder = Reorder()
    got = []
    for f in frames:
        got += reorder.push(decode_frame(f))
    assert [p.packet_id for p in got] == list(range(1, len(frames) + 1))
    assert got[0].status == status and got[0].headers == {"content-type": "audio/ogg"}
    assert b"".join(p.body for p in got) == body
    assert got[-1].last and not any(p.last for p in got[:-1])


def test_malformed_frames_are_refused() -> None:
    with pytest.raises(ValueError):
        decode_frame(b"short")
    with pytest.raises(ValueError):
        decode_frame(struct.pack(">QIB", 1, 0, 0))  # packet ids start at 1
    with pytest.raises(ValueError):
        decode_frame(struct.pack(">QIB", 1, 1, 0) + struct.pack(">HI", 200, 999))
    reorder = Reorder()
    reorder.push(decode_frame(encode_frames_of(1, 3, b"x", last=False)[0]))
    with pytest.raises(ValueError, match="duplicate"):
        reorder.push(decode_frame(encode_frames_of(1, 3, b"x", last=False)[0]))
    assert BODY_ROOM == MAX_FRAME - 13


def test_one_request_through_the_tunnel_and_424_without_a_sender() -> None:
    from aiohttp import web

    from bench.tunnel.sender import Sender
    from bench.tunnel.server import TunnelServer

    async def main() -> None:
        big = bytes(range(256)) * 1024  # several frames

        stopped = asyncio.Event()

        async def media(request: web.Request) -> web.StreamResponse:
            if request.path == "/forever":
                resp = web.StreamResponse()
                await resp.prepare(request)
                try:
                    while True:
                        await resp.write(b"z" * 65536)
                finally:
                    stopped.set()
            if request.path == "/big":
                return web.Response(body=big, content_type="application/octet-stream")
            return web.json_response({"q": dict(request.query)})

        local = web.Application()
        local.router.add_get("/{tail:.*}", media)
        runners = []
        ports = []
        tunnel = TunnelServer()
        for app in (local, tunnel.app):
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            runners.append(runner)
            ports.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        base = f"http://127.0.0.1:{ports[1]}"
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{base}/x") as resp:
                    assert resp.status == 424
                sender = Sender(base, f"http://127.0.0.1:{ports[0]}")
                task = asyncio.ensure_future(sender.run())
                await asyncio.wait_for(tunnel.connected.wait(), 10)
                async with http.get(f"{base}/list?a=1") as resp:
                    assert resp.status == 200 and await resp.json() == {"q": {"a": "1"}}
                async with http.get(f"{base}/big") as resp:
                    assert await resp.read() == big
                # the client goes away: ABORT reaches the sender, the local server stops
                async with http.get(f"{base}/forever") as resp:
                    await resp.content.read(100_000)
                    resp.close()
                await asyncio.wait_for(stopped.wait(), 20)
                async with http.get(f"{base}/list") as resp:
                    assert resp.status == 200
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
        finally:
            for runner in runners:
                await runner.cleanup()

    asyncio.run(asyncio.wait_for(main(), 30))
