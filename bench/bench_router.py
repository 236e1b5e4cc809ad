"""Request router benchmark; prints one JSON object.

Figures (loopback, this machine; server and client in one process and one event loop,
then with the server in a process of its own; the same for both sides of the comparison):

- small ``GET`` (a 13-byte JSON body): requests/s with 1 and with 64 requests in flight,
  median and p99 latency at 1 in flight, over TCP+Noise+yamux (one connection, one new
  yamux stream per request);
- the same with aiohttp's server and client (HTTP/1.1 keep-alive, a 64-connection pool)
  when aiohttp is installed (``pip install -e '.[bench]'``);
- large-body throughput, download and upload, against the raw stream throughput of the
  same transport (bytes written on one yamux stream, as ``bench_core``).

Usage: ``python -m bench.bench_router [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from bench.common import CHUNK, run, stream_throughput
from switchy.presets import default_node
from switchy.protocols.router import request

LOOPBACK = "/ip4/127.0.0.1/tcp/0"
SMALL = {"ok": True, "n": 1}
#: Each figure is the best of this many runs.
ROUNDS = 3


async def _measure(
    one: Callable[[], Awaitable[None]], count: int, inflight: int
) -> dict[str, float]:
    """Run ``one()`` ``count`` times with ``inflight`` concurrent workers.

    Besides wall-clock figures, ``cpu_us_per_req`` is the process CPU time per request
    (client and server together): steadier than wall time on a shared machine.
    """
    for _ in range(min(200, count)):  # warm-up
        await one()
    latencies: list[float] = []
    per = count // inflight

    async def worker() -> None:
        clock = time.perf_counter
        for _ in range(per):
            t = clock()
            await one()
            latencies.append(clock() - t)

    cpu = time.process_time()
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    latencies.sort()
    return {
        "req_per_s": per * inflight / elapsed,
        "median_us": statistics.median(latencies) * 1e6,
        "p99_us": latencies[int(len(latencies) * 0.99)] * 1e6,
        "cpu_us_per_req": cpu / (per * inflight) * 1e6,
    }


def _best(runs: list[dict[str, float]]) -> dict[str, float]:
    """The best of several runs, figure by figure (the least disturbed by other load)."""
    return {k: (max if k == "req_per_s" else min)(r[k] for r in runs) for k in runs[0]}


def _aiohttp_available() -> bool:
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        return False
    return True


@asynccontextmanager
async def _router_server() -> AsyncIterator[str]:
    """A node serving ``GET /small``; yields its address."""
    from switchy.protocols.router import Request, Response, Router

    router = Router()

    @router.get("/small")
    def small(req: Request) -> Response:
        return Response.from_json(SMALL)

    async with default_node(services=[router], listen=[LOOPBACK]) as server:
        yield str(server.full_addrs[0])


@asynccontextmanager
async def _aiohttp_server() -> AsyncIterator[str]:
    """An aiohttp server answering ``GET /small``; yields its URL."""
    from aiohttp import web

    async def small(request: web.Request) -> web.Response:
        return web.json_response(SMALL)

    app = web.Application()
    app.router.add_get("/small", small)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/small"
    finally:
        await runner.cleanup()


async def _router_client(addr: str, count: int) -> dict[str, Any]:

    async with default_node() as client:
        peer = (await client.connect(addr)).remote_peer

        async def one() -> None:
            resp = await request(client, peer, "GET", "/small")
            assert resp.status == 200

        return await _rounds(one, count)


async def _aiohttp_client(url: str, count: int) -> dict[str, Any]:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=64)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            async with session.get(url) as resp:
                await resp.read()
                assert resp.status == 200

        return await _rounds(one, count)


async def _rounds(one: Callable[[], Awaitable[None]], count: int) -> dict[str, Any]:
    r1 = [await _measure(one, count, 1) for _ in range(ROUNDS)]
    r64 = [await _measure(one, count * 2, 64) for _ in range(ROUNDS)]
    return {"inflight_1": _best(r1), "inflight_64": _best(r64)}


_SERVERS = {"router": _router_server, "aiohttp": _aiohttp_server}
_CLIENTS = {"router": _router_client, "aiohttp": _aiohttp_client}


def _server_process(kind: str, q: Any) -> None:
    async def serve() -> None:
        async with _SERVERS[kind]() as addr:
            q.put(addr)
            await asyncio.Event().wait()  # until the parent terminates this process

    run(serve())


async def _small_get(kind: str, count: int, processes: int) -> dict[str, Any]:
    """Small GETs with server and client in one process, or the server in its own."""
    if processes == 1:
        async with _SERVERS[kind]() as addr:
            return await _CLIENTS[kind](addr, count)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=_server_process, args=(kind, q))
    proc.start()
    try:
        addr = await asyncio.get_running_loop().run_in_executor(None, q.get, True, 60)
        result = await _CLIENTS[kind](addr, count)
        for figures in result.values():  # only the client's CPU is seen from here
            figures["client_cpu_us_per_req"] = figures.pop("cpu_us_per_req")
        return result
    finally:
        proc.terminate()
        proc.join(10)


async def _router_bodies(total: int) -> dict[str, float]:
    """Download and upload ``total`` bytes as one streamed body."""
    from switchy.protocols.router import Request, Response, Router

    router = Router()
    data = bytes(CHUNK)

    async def zeros() -> AsyncIterator[bytes]:
        for _ in range(total // CHUNK):
            yield data

    @router.get("/download")
    def download(req: Request) -> Response:
        return Response(200, {}, zeros(), total)

    @router.post("/upload", stream=True)
    async def upload(req: Request) -> dict[str, int]:
        n = 0
        async for chunk in req.iter_body():
            n += len(chunk)
        return {"n": n}

    async with (
        default_node(services=[router], listen=[LOOPBACK]) as server,
        default_node() as client,
    ):
        await client.connect(server.full_addrs[0])
        start = time.perf_counter()
        resp = await request(client, server.peer_id, "GET", "/download", stream=True)
        n = 0
        async with resp:
            async for chunk in resp.iter_body():
                n += len(chunk)
        down = time.perf_counter() - start
        assert n == total
        start = time.perf_counter()
        resp = await request(client, server.peer_id, "POST", "/upload", body=zeros())
        up = time.perf_counter() - start
        assert resp.json() == {"n": total}
        return {"download_Bps": total / down, "upload_Bps": total / up}


async def _main(quick: bool) -> dict[str, Any]:
    count = 2000 if quick else 6000
    size = (128 if quick else 256) * 1024 * 1024
    res: dict[str, Any] = {"machine_cores": os.cpu_count(), "python": sys.version.split()[0]}
    for procs, label in ((1, "one_process"), (2, "two_processes")):
        ours = await _small_get("router", count, procs)
        section: dict[str, Any] = {"router": ours}
        if _aiohttp_available():
            theirs = await _small_get("aiohttp", count, procs)
            section["aiohttp"] = theirs
            for n in ("1", "64"):
                key = f"inflight_{n}"
                section[f"ratio_req_per_s_{n}"] = ours[key]["req_per_s"] / theirs[key]["req_per_s"]
        else:
            section["aiohttp"] = "not installed (pip install -e '.[bench]')"
        res[f"small_get_{label}"] = section
    stream = max([await stream_throughput(size) for _ in range(ROUNDS)])
    runs = [await _router_bodies(size) for _ in range(ROUNDS)]
    bodies = {k: max(r[k] for r in runs) for k in runs[0]}
    res["stream_MBps"] = stream / 1e6
    res["body_download_MBps"] = bodies["download_Bps"] / 1e6
    res["body_upload_MBps"] = bodies["upload_Bps"] / 1e6
    res["download_vs_stream"] = bodies["download_Bps"] / stream
    res["upload_vs_stream"] = bodies["upload_Bps"] / stream
    return res


def main() -> None:
    """Run the router benchmarks and print the figures as JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer requests, smaller bodies")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(_main(args.quick)), indent=2))


if __name__ == "__main__":
    main()
