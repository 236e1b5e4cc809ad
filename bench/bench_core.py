"""Core stack benchmarks; prints one JSON object.

Figures (all on loopback, this machine):
- raw asyncio TCP throughput in one loop (the ceiling for the ratio);
- one-stream throughput over TCP+Noise+yamux, both nodes in one process and across two processes;
- ping round trip on one stream (median, p99);
- new connection to first negotiated stream (dial + Noise + yamux + multistream);
- stream open + negotiate + close per second on one connection;
- import time of ``stack``; memory per idle connection.

Usage: ``python -m bench.bench_core [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from typing import Any

from multiaddr import Multiaddr

from bench.common import (
    CHUNK,
    SINK_PROTOCOL,
    ping_round_trips,
    sink_server_process,
    stream_throughput,
)
from switchy.presets import default_node


async def _raw_tcp(total: int) -> float:
    from switchy.transports.tcp import TcpTransport

    t = TcpTransport()
    accepted: asyncio.Queue[Any] = asyncio.Queue()

    async def handler(conn: Any) -> None:
        await accepted.put(conn)

    listener = await t.listen(Multiaddr("/ip4/127.0.0.1/tcp/0"), handler)
    client: Any = await t.dial(listener.addrs[0])
    server = await accepted.get()
    data = bytes(CHUNK)

    async def send() -> None:
        for _ in range(total // CHUNK):
            await client.write(data)
        await client.close_write()

    start = time.perf_counter()
    task = asyncio.ensure_future(send())
    n = 0
    while chunk := await server.read():
        n += len(chunk)
    await task
    elapsed = time.perf_counter() - start
    await listener.close()
    assert n == total
    return total / elapsed


async def _two_process_throughput(total: int) -> float:

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=sink_server_process, args=(q, "/ip4/127.0.0.1/tcp/0"))
    proc.start()
    try:
        addr = await asyncio.get_running_loop().run_in_executor(None, q.get, True, 30)
        async with default_node() as client:
            stream = await client.open_stream(addr, SINK_PROTOCOL)
            data = bytes(CHUNK)
            start = time.perf_counter()
            for _ in range(total // CHUNK):
                await stream.write(data)
            await stream.close_write()
            n = int(await stream.read_all())
            elapsed = time.perf_counter() - start
            assert n == total
            return total / elapsed
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.kill()


async def _ping_rtt(count: int) -> dict[str, float]:
    from switchy.protocols.ping import PING_PROTOCOL

    async with default_node(listen=["/ip4/127.0.0.1/tcp/0"]) as server, default_node() as client:
        stream = await client.open_stream(server.full_addrs[0], PING_PROTOCOL)
        rtts = await ping_round_trips(stream, count)
        await stream.close()
        return {
            "median_us": statistics.median(rtts) * 1e6,
            "p99_us": rtts[int(len(rtts) * 0.99)] * 1e6,
        }


async def _raw_ping_rtt(count: int) -> float:
    from switchy.transports.tcp import TcpTransport

    t = TcpTransport()
    accepted: asyncio.Queue[Any] = asyncio.Queue()

    async def handler(conn: Any) -> None:
        await accepted.put(conn)

    listener = await t.listen(Multiaddr("/ip4/127.0.0.1/tcp/0"), handler)
    client: Any = await t.dial(listener.addrs[0])
    server = await accepted.get()

    async def echo() -> None:
        while data := await server.read():
            await server.write(data)

    task = asyncio.ensure_future(echo())
    rtts = []
    for _ in range(count):
        start = time.perf_counter()
        await client.write(b"x" * 32)
        await client.read_exactly(32)
        rtts.append(time.perf_counter() - start)
    await client.close()
    task.cancel()
    await listener.close()
    return statistics.median(rtts) * 1e6


async def _connection_setup(count: int, identify: bool = True) -> float:
    from switchy.presets import default_transports
    from switchy.protocols.ping import PING_PROTOCOL, PingService
    from switchy.stack.config import NetworkConfig
    from switchy.stack.node import Node

    def make(**kw: Any) -> Node:
        if identify:
            return default_node(**kw)
        transports = default_transports(NetworkConfig())
        return Node(transports=transports, services=[PingService()], **kw)

    async with make(listen=["/ip4/127.0.0.1/tcp/0"]) as server, make() as client:
        addr = server.full_addrs[0]
        times = []
        for _ in range(count):
            start = time.perf_counter()
            conn = await client._dial_addrs(server.peer_id, [server.listen_addrs[0]])
            stream = await conn.open_stream()
            from switchy.stack.negotiation import select_protocol

            await select_protocol(stream, [PING_PROTOCOL])
            times.append(time.perf_counter() - start)
            await stream.reset()
            await conn.close()
        del addr
        return statistics.median(times) * 1e3


async def _stream_rate(count: int) -> float:

    async with default_node(listen=["/ip4/127.0.0.1/tcp/0"]) as server, default_node() as client:

        async def noop(stream: Any) -> None:
            await stream.close()

        server.handle("/bench/noop/1.0.0", noop)
        await client.connect(server.full_addrs[0])
        start = time.perf_counter()
        concurrency = 32

        async def worker(n: int) -> None:
            for _ in range(n):
                s = await client.open_stream(server.peer_id, "/bench/noop/1.0.0")
                await s.close_write()
                await s.read()  # wait for the remote's close: a full open/negotiate/close
                await s.close()

        await asyncio.gather(*(worker(count // concurrency) for _ in range(concurrency)))
        return (count // concurrency * concurrency) / (time.perf_counter() - start)


async def _idle_connection_memory(count: int) -> float:

    async with default_node(listen=["/ip4/127.0.0.1/tcp/0"]) as server:
        clients = [default_node() for _ in range(count)]
        for c in clients:
            await c.start()
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for c in clients:
            await c.connect(server.full_addrs[0])
        # let identify exchanges finish so only idle state remains
        for _ in range(50):
            await asyncio.sleep(0.01)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        for c in clients:
            await c.close()
        return (after - before) / count  # both ends of each connection live in this process


async def _pylibp2p_figures(size: int) -> dict[str, float]:
    """py-libp2p talking to py-libp2p (both in the interop venv), for the ratio."""
    from tests.interop.harness import ensure_interop_venv, pylibp2p_listener, run_peer

    ensure_interop_venv()
    async with pylibp2p_listener() as peer:
        addr = next(a for a in peer.addrs if "/tcp/" in a)
        if "/p2p/" not in addr:
            addr += f"/p2p/{peer.peer_id}"
        r = await run_peer("perf", addr, "--upload", str(size), "--download", "0", timeout=600)
        pings = await run_peer("ping", addr, "-c", "200")
    return {
        "pylibp2p_stream_MBps": size / r["seconds"] / 1e6,
        "pylibp2p_ping_median_us": statistics.median(pings["rtts_us"]),
    }


def _import_time() -> float:
    best = float("inf")
    for _ in range(5):
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                "import time; t=time.perf_counter(); import switchy.stack.node; "
                "print(time.perf_counter()-t)",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        best = min(best, float(out.stdout))
    return best * 1e3


async def _main(quick: bool, with_pylibp2p: bool) -> dict[str, Any]:
    size = (256 if quick else 1024) * 1024 * 1024
    res: dict[str, Any] = {"machine_cores": os.cpu_count(), "python": sys.version.split()[0]}
    res["raw_tcp_MBps"] = await _raw_tcp(size) / 1e6
    res["stream_1proc_MBps"] = await stream_throughput(size) / 1e6
    res["stream_2proc_MBps"] = await _two_process_throughput(size) / 1e6
    res["stream_vs_raw_ratio"] = res["stream_1proc_MBps"] / res["raw_tcp_MBps"]
    res["raw_tcp_rtt_median_us"] = await _raw_ping_rtt(2000)
    res["ping_rtt"] = await _ping_rtt(2000 if quick else 10000)
    res["new_connection_median_ms"] = await _connection_setup(50 if quick else 300)
    res["new_connection_no_identify_median_ms"] = await _connection_setup(
        50 if quick else 300, identify=False
    )
    res["streams_per_s"] = await _stream_rate(3200 if quick else 20000)
    res["idle_connection_bytes"] = await _idle_connection_memory(50 if quick else 200)
    res["import_stack_ms"] = _import_time()
    if with_pylibp2p:
        res.update(await _pylibp2p_figures(64 * 1024 * 1024))
    return res


def main() -> None:
    """Run every benchmark and print the figures as JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument(
        "--pylibp2p", action="store_true", help="also measure py-libp2p (interop venv)"
    )
    args = parser.parse_args()
    print(json.dumps(asyncio.run(_main(args.quick, args.pylibp2p)), indent=2))


if __name__ == "__main__":
    main()
