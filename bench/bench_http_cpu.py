"""CPU per HTTP request, hop by hop, with a raw keep-alive socket client; prints JSON.

:mod:`bench.bench_http` measures the four ways with httpx, whose own CPU is a large part
of every figure.  Here one raw socket writes a small ``GET`` and reads the answer, one at
a time, so the process CPU per request is the servers' and proxies' (the client's share
is a few microseconds).  Ways, each in this one process and loop, interleaved over
``--rounds`` (the machine drifts; compare within a round): the local aiohttp server
alone; through the tunnel baseline; through gateway + expose over a direct connection
with each HTTP/1.1 parser (h11, httptools).  Medians over rounds, and each way's ratio
to the tunnel of the same round.

Usage: ``python -m bench.bench_http_cpu [--requests N] [--rounds R]`` (``bench`` and
``http`` extras).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from bench.bench_http import _site, media_app
from bench.tunnel.sender import Sender
from bench.tunnel.server import TunnelServer
from switchy.presets import default_node
from switchy.protocols.http import core
from switchy.protocols.http.proxy import Gateway, HttpProxyService

LOOPBACK = "/ip4/127.0.0.1/tcp/0"


async def _cpu_per_request(port: int, path: str, count: int) -> dict[str, float]:
    """Sequential keep-alive GETs of ``path``: CPU and wall milliseconds per request."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = f"GET {path} HTTP/1.1\r\nhost: bench\r\n\r\n".encode()

    async def one() -> None:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                await reader.readexactly(int(value))
                return
        raise AssertionError(f"no content-length in {head!r}")

    try:
        for _ in range(min(100, count)):
            await one()
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(count):
            await one()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        writer.close()
    return {"cpu_ms": cpu / count * 1e3, "wall_ms": wall / count * 1e3}


@contextlib.asynccontextmanager
async def _ways(local_port: int) -> AsyncIterator[dict[str, tuple[int, str, Callable[[], None]]]]:
    """Every way: ``name -> (port, path, setup)`` (``setup`` picks the parser)."""
    local = f"http://127.0.0.1:{local_port}"
    tunnel = TunnelServer()
    t_runner, t_port = await _site(tunnel.app)
    sender = Sender(f"http://127.0.0.1:{t_port}", local)
    s_task = asyncio.ensure_future(sender.run())
    await asyncio.wait_for(tunnel.connected.wait(), 10)
    try:
        async with (
            default_node(services=[HttpProxyService(local)], listen=[LOOPBACK]) as server,
            default_node() as client,
        ):
            await client.connect(server.full_addrs[0])
            gateway = Gateway(client)
            _, g_port = await gateway.listen()
            path = f"/p2p/{server.peer_id}/library.json"

            def parser(name: str) -> Callable[[], None]:
                def setup() -> None:
                    core.HTTP_PARSER = name

                return setup

            nothing = parser(core.HTTP_PARSER)
            yield {
                "local": (local_port, "/library.json", nothing),
                "tunnel": (t_port, "/library.json", nothing),
                "direct_h11": (g_port, path, parser("h11")),
                "direct_httptools": (g_port, path, parser("httptools")),
            }
            await gateway.close()
    finally:
        s_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await s_task
        await t_runner.cleanup()


async def _main(count: int, rounds: int) -> dict[str, Any]:
    runner, port = await _site(media_app("/dev/null"))
    saved = core.HTTP_PARSER
    per_round: list[dict[str, dict[str, float]]] = []
    try:
        async with _ways(port) as ways:
            for r in range(rounds):
                order = list(ways) if r % 2 == 0 else list(reversed(ways))
                got: dict[str, dict[str, float]] = {}
                for name in order:
                    w_port, path, setup = ways[name]
                    setup()
                    got[name] = await _cpu_per_request(w_port, path, count)
                per_round.append(got)
    finally:
        core.HTTP_PARSER = saved
        await runner.cleanup()
    names = list(per_round[0])
    med = statistics.median
    return {
        "requests_per_round": count,
        "rounds": rounds,
        "cpu_ms_per_request": {n: round(med(r[n]["cpu_ms"] for r in per_round), 3) for n in names},
        "wall_ms_per_request": {
            n: round(med(r[n]["wall_ms"] for r in per_round), 3) for n in names
        },
        "cpu_relative_to_tunnel": {
            n: round(med(r[n]["cpu_ms"] / r["tunnel"]["cpu_ms"] for r in per_round), 2)
            for n in names
        },
        "httptools_over_h11_cpu": round(
            med(r["direct_httptools"]["cpu_ms"] / r["direct_h11"]["cpu_ms"] for r in per_round), 2
        ),
    }


def main() -> None:
    """Run the benchmark; print the JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1000, help="requests per way and round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(_main(args.requests, args.rounds)), indent=2))


if __name__ == "__main__":
    main()
