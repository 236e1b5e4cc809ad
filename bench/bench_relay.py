"""Circuit relay v2 benchmark: relayed against direct, over TCP on loopback; prints one JSON object.

Three processes, as on a real network: a relay (no limits), a server that
listens directly and through the relay, and the client (this process).
Figures, for the direct and the relayed path to the same server:

- one-stream upload throughput (TCP + Noise + yamux end to end; the relayed
  path adds the relay's own Noise + yamux on each hop, so the relay decrypts,
  forwards and re-encrypts every byte);
- ping round trip on one stream (median and p99) and the round trip the relay adds;
- connection setup to the first ping answer.

Relayed bytes cost three times the encryption work of direct ones (Noise on
the client→relay hop, relay→server hop and end to end), spread over three
processes: with at least three cores the relayed path can reach about half
the direct throughput; with two cores it is bounded near a third.

Usage: ``python -m bench.bench_relay [--quick]``.
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
from typing import Any

from bench.common import CHUNK, SINK_PROTOCOL, ping_round_trips, sink_handler
from switchy.presets import default_node

LOCAL = "/ip4/127.0.0.1/tcp/0"


def _relay_process(q: Any, stop: Any) -> None:
    async def main() -> None:
        from switchy.transports.relay import RelayConfig, RelayService

        config = RelayConfig(limit_data=0, limit_duration=0)
        async with default_node(services=[RelayService(config)], listen=[LOCAL]) as relay:
            q.put(str(relay.full_addrs[0]))
            await asyncio.get_running_loop().run_in_executor(None, stop.wait)

    asyncio.run(main())


def _server_process(relay_addr: str, q: Any, stop: Any) -> None:
    async def main() -> None:

        async with default_node(listen=[LOCAL]) as server:
            server.handle(SINK_PROTOCOL, sink_handler())
            direct = str(server.full_addrs[0])
            (circuit,) = await server.listen(f"{relay_addr}/p2p-circuit")
            q.put((direct, f"{circuit}/p2p/{server.peer_id}"))
            await asyncio.get_running_loop().run_in_executor(None, stop.wait)

    asyncio.run(main())


async def _measure(addr: str, total: int, pings: int) -> dict[str, float]:
    from switchy.protocols.ping import PING_PROTOCOL

    async with default_node() as client:
        start = time.perf_counter()
        conn = await client.connect(addr)
        stream = await client.open_stream(conn.remote_peer, PING_PROTOCOL)
        await ping_round_trips(stream, 1)
        setup = time.perf_counter() - start
        rtts = await ping_round_trips(stream, pings)
        await stream.close()

        sink = await client.open_stream(conn.remote_peer, SINK_PROTOCOL)
        data = bytes(CHUNK)
        t0 = time.perf_counter()
        for _ in range(total // CHUNK):
            await sink.write(data)
        await sink.close_write()
        n = int(await sink.read_all())
        elapsed = time.perf_counter() - t0
        assert n == total // CHUNK * CHUNK, n
        return {
            "limited": float(conn.is_limited),
            "setup_ms": setup * 1e3,
            "rtt_median_us": statistics.median(rtts) * 1e6,
            "rtt_p99_us": rtts[int(len(rtts) * 0.99)] * 1e6,
            "throughput_MBps": n / elapsed / 1e6,
        }


async def run(total: int, pings: int, rounds: int) -> dict[str, Any]:
    """Start the relay and the server processes, measure both paths ``rounds`` times."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    stop = ctx.Event()
    relay = ctx.Process(target=_relay_process, args=(q, stop))
    relay.start()
    procs = [relay]
    try:
        loop = asyncio.get_running_loop()
        relay_addr = await loop.run_in_executor(None, q.get, True, 30)
        server = ctx.Process(target=_server_process, args=(relay_addr, q, stop))
        server.start()
        procs.append(server)
        direct_addr, circuit_addr = await loop.run_in_executor(None, q.get, True, 30)
        runs: dict[str, list[dict[str, float]]] = {"direct": [], "relayed": []}
        for _ in range(rounds):  # interleaved, so both paths see the same machine load
            runs["direct"].append(await _measure(direct_addr, total, pings))
            runs["relayed"].append(await _measure(circuit_addr, total, pings))
    finally:
        stop.set()
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()

    def best(path: str) -> dict[str, float]:
        rs = runs[path]
        return {
            "throughput_MBps": max(r["throughput_MBps"] for r in rs),
            "rtt_median_us": min(r["rtt_median_us"] for r in rs),
            "rtt_p99_us": min(r["rtt_p99_us"] for r in rs),
            "setup_ms": min(r["setup_ms"] for r in rs),
        }

    direct, relayed = best("direct"), best("relayed")
    assert all(r["limited"] == 1.0 for r in runs["relayed"])
    assert all(r["limited"] == 0.0 for r in runs["direct"])
    return {
        "transport": "tcp+noise+yamux, loopback, 3 processes",
        "bytes_per_run": total // CHUNK * CHUNK,
        "rounds": rounds,
        "direct": direct,
        "relayed": relayed,
        "relayed_vs_direct_throughput": relayed["throughput_MBps"] / direct["throughput_MBps"],
        "added_rtt_median_us": relayed["rtt_median_us"] - direct["rtt_median_us"],
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
    }


def main() -> None:
    """Parse arguments, run, print JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    args = p.parse_args()
    total, pings, rounds = (8 << 20, 100, 1) if args.quick else (128 << 20, 1000, 3)
    print(json.dumps(asyncio.run(run(total, pings, rounds)), indent=2))


if __name__ == "__main__":
    main()
