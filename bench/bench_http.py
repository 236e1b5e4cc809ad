"""HTTP four ways, with the tunnel baseline as the anchor; prints one JSON object.

The same local "media server" (aiohttp: a small JSON listing, a 64 MiB file with Range
support) is reached

1. ``tunnel``: through the tunnel baseline (:mod:`bench.tunnel`: tunnel server and
   sender, one WebSocket, JSON request frames, 64 KiB binary answer frames);
2. ``direct``: through ``switchy gateway`` + ``switchy expose`` (their classes) over a
   direct TCP+Noise+yamux connection;
3. ``relay``: the same through a circuit relay;
4. ``asgi``: an ASGI app with the same content served on the node, fetched with httpx
   over :class:`~switchy.protocols.http.client.SwitchyTransport` (no local TCP hop).

Every part runs in this one process and event loop on loopback (a 2-core machine shared
with others: compare the ways of one run, not runs of different days).  The HTTP client
is httpx for all four (at 64 in flight: 64 clients of one connection each).  Figures:
requests/s at 1 and 64 in flight, median and p99 latency, CPU seconds per request (the
whole process: client, proxies and server), download MB/s of the whole file and of a 32 MiB range.

The simulated topology (LAN 2 ms, tunnel 40 ms away): :mod:`bench.bench_http_topology`.

Usage: ``python -m bench.bench_http [--quick]`` (needs the ``bench`` and ``http`` extras).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web

from bench.common import LOOP_ENV, loop_name, run
from bench.tunnel.sender import Sender
from bench.tunnel.server import TunnelServer
from switchy.presets import default_node
from switchy.protocols.http import HttpService
from switchy.protocols.http.client import SwitchyTransport
from switchy.protocols.http.core import HttpError, parse_range
from switchy.protocols.http.proxy import Gateway, HttpProxyService
from switchy.transports.relay import RelayConfig, RelayService

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
LIBRARY = {"tracks": [{"id": i, "title": f"song {i}"} for i in range(10)]}


async def _site(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server = site._server
    assert server is not None
    return runner, server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]


def media_app(path: str) -> web.Application:
    """The local media server: ``/library.json`` and ``/media.bin`` (Range: aiohttp's)."""
    app = web.Application()

    async def library(_r: web.Request) -> web.Response:
        return web.json_response(LIBRARY)

    async def media(_r: web.Request) -> web.FileResponse:
        return web.FileResponse(path)

    app.router.add_get("/library.json", library)
    app.router.add_get("/media.bin", media)
    return app


def asgi_media(data: bytes) -> Any:
    """The same content as an ASGI app (Range by :func:`parse_range`)."""
    library = json.dumps(LIBRARY).encode()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/library.json":
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(library)).encode()),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": library})
            return
        try:
            rng = parse_range(dict(scope["headers"]).get(b"range"), len(data))
        except HttpError as exc:
            await send({"type": "http.response.start", "status": exc.status, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        first, last = rng if rng else (0, len(data) - 1)
        headers = [(b"content-length", str(last - first + 1).encode())]
        if rng:
            headers.append((b"content-range", f"bytes {first}-{last}/{len(data)}".encode()))
        await send(
            {"type": "http.response.start", "status": 206 if rng else 200, "headers": headers}
        )
        view = memoryview(data)
        pos = first
        while pos <= last:
            end = min(pos + 256 * 1024, last + 1)
            await send(
                {
                    "type": "http.response.body",
                    "body": bytes(view[pos:end]),
                    "more_body": end <= last,
                }
            )
            pos = end

    return app


async def _measure(
    make_client: Callable[[], httpx.AsyncClient], base: str, small: int, size: int
) -> dict[str, Any]:
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(make_client())
        # 64 in flight: 64 clients of one connection each (64 users).  One httpx client
        # with a 64-connection pool would cost more than the servers measured: httpcore
        # scans the whole pool on every event.
        clients = [await stack.enter_async_context(make_client()) for _ in range(64)]
        return await _measure_with(client, clients, base, small, size)


async def _measure_with(
    client: httpx.AsyncClient, clients: list[httpx.AsyncClient], base: str, small: int, size: int
) -> dict[str, Any]:
    url = f"{base}/library.json"
    for _ in range(10):
        (await client.get(url)).raise_for_status()
    # 1 in flight
    lat: list[float] = []
    cpu0, t0 = time.process_time(), time.perf_counter()
    for _ in range(small):
        s = time.perf_counter()
        resp = await client.get(url)
        lat.append(time.perf_counter() - s)
        assert resp.status_code == 200 and resp.json() == LIBRARY
    wall1, cpu1 = time.perf_counter() - t0, time.process_time() - cpu0
    # 64 in flight
    lat64: list[float] = []
    per_worker = max(1, small * 2 // 64)

    for c in clients:  # connected before the clock starts
        (await c.get(url)).raise_for_status()

    async def worker(client: httpx.AsyncClient) -> None:
        for _ in range(per_worker):
            s = time.perf_counter()
            resp = await client.get(url)
            lat64.append(time.perf_counter() - s)
            assert resp.status_code == 200

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(c) for c in clients))
    wall64, cpu64 = time.perf_counter() - t0, time.process_time() - cpu0

    async def download(headers: dict[str, str]) -> float:
        t = time.perf_counter()
        n = 0
        async with client.stream("GET", f"{base}/media.bin", headers=headers) as resp:
            assert resp.status_code in (200, 206), resp.status_code
            async for chunk in resp.aiter_raw():
                n += len(chunk)
        return n / (time.perf_counter() - t) / 1e6

    half = size // 2
    full = max([await download({}) for _ in range(2)])
    ranged = max(
        [await download({"range": f"bytes={half // 2}-{half // 2 + half - 1}"}) for _ in range(2)]
    )
    q = statistics.quantiles
    return {
        "rps_1": round(small / wall1, 1),
        "median_ms_1": round(statistics.median(lat) * 1e3, 3),
        "p99_ms_1": round(q(lat, n=100)[98] * 1e3, 3),
        "cpu_ms_per_request_1": round(cpu1 / small * 1e3, 3),
        "rps_64": round(len(lat64) / wall64, 1),
        "median_ms_64": round(statistics.median(lat64) * 1e3, 3),
        "p99_ms_64": round(q(lat64, n=100)[98] * 1e3, 3),
        "cpu_ms_per_request_64": round(cpu64 / len(lat64) * 1e3, 3),
        "download_MBps": round(full, 1),
        "range_download_MBps": round(ranged, 1),
    }


def _tcp_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(limits=httpx.Limits(max_connections=1), timeout=60)


async def _main(quick: bool) -> dict[str, Any]:
    size = (16 if quick else 64) * 1024 * 1024
    small = 100 if quick else 300
    data = os.urandom(size)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "media.bin")
        await asyncio.to_thread(Path(path).write_bytes, data)
        media_runner, media_port = await _site(media_app(path))
        local = f"http://127.0.0.1:{media_port}"
        try:
            # 1. the tunnel
            tunnel = TunnelServer()
            t_runner, t_port = await _site(tunnel.app)
            sender = Sender(f"http://127.0.0.1:{t_port}", local)
            s_task = asyncio.ensure_future(sender.run())
            await asyncio.wait_for(sender.ready.wait(), 10)
            await asyncio.wait_for(tunnel.connected.wait(), 10)
            results["tunnel"] = await _measure(
                _tcp_client, f"http://127.0.0.1:{t_port}", small, size
            )
            s_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await s_task
            await t_runner.cleanup()
            # 2. and 3. gateway + expose, direct and through a relay
            relay_cfg = RelayConfig(limit_data=0, limit_duration=0)
            async with (
                default_node(services=[HttpProxyService(local)], listen=[LOOPBACK]) as server,
                default_node(services=[RelayService(relay_cfg)], listen=[LOOPBACK]) as relay,
                default_node() as client_node,
                default_node() as relayed_node,
            ):
                await client_node.connect(server.full_addrs[0])
                gateway = Gateway(client_node)
                _, g_port = await gateway.listen()
                results["direct"] = await _measure(
                    _tcp_client, f"http://127.0.0.1:{g_port}/p2p/{server.peer_id}", small, size
                )
                await gateway.close()
                (circuit,) = await server.listen(f"{relay.full_addrs[0]}/p2p-circuit")
                await relayed_node.connect(f"{circuit}/p2p/{server.peer_id}")
                assert "/p2p-circuit" in str(
                    relayed_node.connections(server.peer_id)[0].remote_addr
                )
                gateway = Gateway(relayed_node)
                _, g_port = await gateway.listen()
                results["relay"] = await _measure(
                    _tcp_client, f"http://127.0.0.1:{g_port}/p2p/{server.peer_id}", small, size
                )
                await gateway.close()
            # 4. an ASGI app on the node, httpx over SwitchyTransport
            service = HttpService(asgi_media(data), lifespan="off")
            async with (
                default_node(services=[service], listen=[LOOPBACK]) as server,
                default_node() as client_node,
            ):
                await client_node.connect(server.full_addrs[0])
                transport = SwitchyTransport(client_node, peers={"media": server.peer_id})
                results["asgi"] = await _measure(
                    lambda: httpx.AsyncClient(transport=transport, timeout=60),
                    "http://media",
                    small,
                    size,
                )
        finally:
            await media_runner.cleanup()
    anchor = results["tunnel"]
    results["relative_to_tunnel"] = {
        way: {
            "rps_1": round(r["rps_1"] / anchor["rps_1"], 2),
            "rps_64": round(r["rps_64"] / anchor["rps_64"], 2),
            "median_ms_1": round(r["median_ms_1"] / anchor["median_ms_1"], 2),
            "download_MBps": round(r["download_MBps"] / anchor["download_MBps"], 2),
        }
        for way, r in results.items()
        if way != "tunnel"
    }
    results["file_bytes"] = size
    results["small_requests"] = small
    return results


def _run_once(quick: bool) -> dict[str, Any]:
    results = run(_main(quick))
    results["loop"] = loop_name()
    return results


def _compare_parsers(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """httptools against h11, way by way: each figure's ratio of the two passes, and the
    ratio of their ratios to the tunnel of their own pass (steadier on a drifting machine)."""
    fast, slow = runs["httptools"], runs["h11"]
    out: dict[str, Any] = {}
    for way in ("direct", "relay", "asgi"):
        out[way] = {
            k: round(fast[way][k] / slow[way][k], 2)
            for k in ("rps_1", "rps_64", "median_ms_1", "cpu_ms_per_request_1", "download_MBps")
        }
        out[way]["rps_1_vs_tunnel"] = round(
            fast["relative_to_tunnel"][way]["rps_1"] / slow["relative_to_tunnel"][way]["rps_1"], 2
        )
        out[way]["rps_64_vs_tunnel"] = round(
            fast["relative_to_tunnel"][way]["rps_64"] / slow["relative_to_tunnel"][way]["rps_64"],
            2,
        )
    return out


def main() -> None:
    """Run the benchmark; print the JSON."""
    from switchy.protocols.http import core

    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="16 MiB file, fewer requests")
    parser.add_argument(
        "--uvloop", action="store_true", help=f"run every way on uvloop (as {LOOP_ENV}=uvloop)"
    )
    parser.add_argument(
        "--parser",
        choices=("default", "h11", "httptools", "both"),
        default="default",
        help="the HTTP/1.1 parser of switchy's side (both: an h11 pass, then httptools)",
    )
    args = parser.parse_args()
    if args.uvloop:
        os.environ[LOOP_ENV] = "uvloop"
    if args.parser != "both":
        if args.parser != "default":
            core.HTTP_PARSER = args.parser
        results = _run_once(args.quick)
        results["http_parser"] = core.HTTP_PARSER
        print(json.dumps(results, indent=2))
        return
    runs: dict[str, dict[str, Any]] = {}
    for name in ("h11", "httptools"):
        core.HTTP_PARSER = name
        runs[name] = _run_once(args.quick)
    doc: dict[str, Any] = {"parsers": runs, "httptools_vs_h11": _compare_parsers(runs)}
    print(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
