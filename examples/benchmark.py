"""The benchmarking example: this machine's connection, throughput and latency figures.

Two nodes in one process on loopback, for each transport (TCP and QUIC): the time to
dial (handshake, security, multiplexer), the round-trip time of ``/ipfs/ping/1.0.0``
(median and p99 of ``--pings``), and one stream's throughput moving ``--megabytes``.
Prints a small table, or JSON with ``--json``.  For the full benchmarks see ``bench/``.

Usage::

    python examples/benchmark.py [--megabytes N] [--pings N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from typing import Any

from switchy.presets import default_node
from switchy.protocols.ping import ping

SINK = "/example/sink/1.0.0"
TRANSPORTS = {"tcp": "/ip4/127.0.0.1/tcp/0", "quic": "/ip4/127.0.0.1/udp/0/quic-v1"}
WRITE = 256 * 1024


async def measure(listen: str, megabytes: int, pings: int) -> dict[str, Any]:
    """Dial time, ping round trips and one stream's throughput on one transport."""
    async with default_node(listen=[listen]) as server, default_node() as client:
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def sink(stream: Any) -> None:
            n = 0
            while chunk := await stream.read():
                n += len(chunk)
            done.set_result(n)

        server.handle(SINK, sink)
        addr = server.full_addrs[0]
        start = time.perf_counter()
        await client.connect(addr)
        dial = time.perf_counter() - start
        rtts = sorted(await ping(client, server.peer_id, count=pings))
        stream = await client.open_stream(server.peer_id, SINK)
        data = bytes(WRITE)
        total = megabytes * 1024 * 1024 // WRITE * WRITE
        start = time.perf_counter()
        for _ in range(total // WRITE):
            await stream.write(data)
        await stream.close_write()
        moved = await done
        elapsed = time.perf_counter() - start
    return {
        "dial_ms": round(dial * 1e3, 2),
        "ping_ms_median": round(statistics.median(rtts) * 1e3, 3),
        "ping_ms_p99": round(rtts[min(len(rtts) - 1, int(0.99 * len(rtts)))] * 1e3, 3),
        "throughput_MBps": round(moved / elapsed / 1e6, 1),
        "bytes": moved,
    }


async def run(megabytes: int, pings: int) -> dict[str, dict[str, Any]]:
    """Every transport, one after the other."""
    return {name: await measure(addr, megabytes, pings) for name, addr in TRANSPORTS.items()}


def main(argv: list[str]) -> int:
    """Command line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--megabytes", type=int, default=64)
    p.add_argument("--pings", type=int, default=100)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    figures = asyncio.run(run(args.megabytes, args.pings))
    if args.json:
        print(json.dumps(figures))
        return 0
    print(f"{'transport':<10}{'dial ms':>10}{'ping ms':>10}{'p99 ms':>10}{'MB/s':>10}")
    for name, f in figures.items():
        print(
            f"{name:<10}{f['dial_ms']:>10}{f['ping_ms_median']:>10}"
            f"{f['ping_ms_p99']:>10}{f['throughput_MBps']:>10}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
