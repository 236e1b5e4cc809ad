"""The iroh transport against our QUIC and TCP, and against a bare iroh endpoint pair, in one
run; prints one JSON object.

Figures (loopback, both ends in one event loop, medians over ``--rounds`` interleaved rounds):

- one-stream throughput (MB/s): a node stream (multistream-negotiated sink) over iroh, QUIC
  and TCP (Noise + yamux); a bare iroh bi-stream with the bindings' own ``write_all`` (their
  byte-at-a-time copy of outgoing bytes) and with our :func:`switchy.transports.iroh.ffi.write_all`
  (one memmove), in 256 KiB writes;
- round trip (ms): the libp2p ping protocol over each node transport; 32 bytes echoed on a
  bare iroh bi-stream;
- connection setup (ms): a fresh node's connect (handshake + nothing else) over each transport;
  a bare iroh ``connect`` between two bound endpoints;
- the lowering alone: MB/s of the bindings' ``bytes`` conversion vs ours (1 MiB).

Throughput is also given per CPU second of this process (``time.process_time``, which counts
every thread: iroh's Rust runtime threads too), the figure to compare on a loaded machine.
A node connect includes, for iroh, binding the fresh node's endpoint (bound on first dial).
Every iroh endpoint uses the minimal preset with relays disabled (nothing online).

Usage: ``python -m bench.bench_iroh [--quick] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections import defaultdict
from typing import Any

from bench.common import CHUNK, SINK_PROTOCOL, sink_handler
from switchy.protocols.ping import PingService, ping
from switchy.stack.config import NetworkConfig
from switchy.stack.node import Node
from switchy.stack.transport import Transport
from switchy.transports.iroh import ALPN, IrohTransport, ffi
from switchy.transports.quic import QuicTransport
from switchy.transports.tcp import TcpTransport

KINDS: dict[str, tuple[str, Any]] = {
    "iroh": ("/ip4/127.0.0.1/udp/0/iroh", IrohTransport),
    "quic": ("/ip4/127.0.0.1/udp/0/quic-v1", QuicTransport),
    "tcp": ("/ip4/127.0.0.1/tcp/0", TcpTransport),
}


def _node(kind: str, *, listen: bool) -> Node:
    addr, cls = KINDS[kind]
    config = NetworkConfig()
    transports: list[Transport] = [cls(config)]
    return Node(
        transports=transports,
        services=[PingService()],
        listen=[addr] if listen else [],
        config=config,
    )


async def _node_figures(kind: str, total: int, setups: int, out: dict[str, list[float]]) -> None:
    async with _node(kind, listen=True) as server, _node(kind, listen=False) as client:
        target = server.full_addrs[0]
        for _ in range(setups):
            async with _node(kind, listen=False) as fresh:
                start = time.perf_counter()
                await fresh.connect(target)
                out[f"{kind}_connect"].append(time.perf_counter() - start)
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        server.handle(SINK_PROTOCOL, sink_handler(done.set_result, answer=False))
        stream = await client.open_stream(target, SINK_PROTOCOL)
        data = bytes(CHUNK)
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(total // CHUNK):
            await stream.write(data)
        await stream.close_write()
        assert await done == total
        out[f"{kind}_stream"].append(total / (time.perf_counter() - start))
        out[f"{kind}_stream_cpu"].append(total / (time.process_time() - cpu))
        out[f"{kind}_ping"].extend(await ping(client, server.peer_id, count=50))


def _options(iroh: Any, alpns: list[bytes]) -> Any:
    return iroh.EndpointOptions(
        preset=iroh.preset_minimal(),
        bind_addr="127.0.0.1:0",
        alpns=alpns,
        relay_mode=iroh.RelayMode.disabled(),
    )


async def _bare_iroh(total: int, setups: int, out: dict[str, list[float]]) -> None:
    iroh = ffi.load()
    ffi.register_loop()
    server = await iroh.Endpoint.bind(_options(iroh, [ALPN]))
    client = await iroh.Endpoint.bind(_options(iroh, []))
    conns: asyncio.Queue[Any] = asyncio.Queue()

    async def accept() -> None:
        while (incoming := await server.accept_next()) is not None:
            await conns.put(await (await incoming.accept()).connect())

    acceptor = asyncio.create_task(accept())
    try:
        for _ in range(setups):
            start = time.perf_counter()
            conn = await client.connect(server.addr(), ALPN)
            out["bare_iroh_connect"].append(time.perf_counter() - start)
            (await conns.get()).close(0, b"")
            conn.close(0, b"")
        conn = await client.connect(server.addr(), ALPN)
        peer = await conns.get()
        for name, write in (("bare_iroh_stream_bindings", None), ("bare_iroh_stream_fast", ffi)):
            size = total if write is not None else min(total, 4 * CHUNK)
            bi = await conn.open_bi()
            send = bi.send()

            async def sink(peer: Any = peer) -> int:
                rbi = await peer.accept_bi()
                n = 0
                while chunk := await rbi.recv().read(1 << 20):
                    n += len(chunk)
                return n

            counter = asyncio.create_task(sink())
            data = bytes(CHUNK)
            start, cpu = time.perf_counter(), time.process_time()
            for _ in range(size // CHUNK):
                if write is None:
                    await send.write_all(data)
                else:
                    await write.write_all(send, data)
            await send.finish()
            assert await counter == size
            out[name].append(size / (time.perf_counter() - start))
            out[f"{name}_cpu"].append(size / (time.process_time() - cpu))
        # 32-byte round trips on one bi-stream
        bi = await conn.open_bi()
        send, recv = bi.send(), bi.recv()
        await ffi.write_all(send, b"\0" * 32)
        rbi = await peer.accept_bi()
        rsend, rrecv = rbi.send(), rbi.recv()
        await rrecv.read_exact(32)
        await ffi.write_all(rsend, b"\0" * 32)
        await recv.read_exact(32)

        async def echo() -> None:
            for _ in range(50):
                await ffi.write_all(rsend, await rrecv.read_exact(32))

        echoer = asyncio.create_task(echo())
        for _ in range(50):
            start = time.perf_counter()
            await ffi.write_all(send, b"p" * 32)
            await recv.read_exact(32)
            out["bare_iroh_rtt"].append(time.perf_counter() - start)
        await echoer
        conn.close(0, b"")
    finally:
        acceptor.cancel()
        await client.close()
        await server.close()


def _lowering(out: dict[str, list[float]]) -> None:
    lib = ffi.load().iroh_ffi
    data = bytes(1 << 20)
    start = time.perf_counter()
    lib._UniffiFfiConverterBytes.lower(data).free()
    out["lower_bindings"].append(len(data) / (time.perf_counter() - start))
    start = time.perf_counter()
    for _ in range(10):
        ffi.lower_bytes(data).free()
    out["lower_fast"].append(10 * len(data) / (time.perf_counter() - start))


def _med(values: list[float], scale: float = 1.0) -> float:
    return round(statistics.median(values) * scale, 3)


async def run(total: int, setups: int, rounds: int) -> dict[str, Any]:
    """All figures (see the module docstring)."""
    out: dict[str, list[float]] = defaultdict(list)
    for _ in range(rounds):
        for kind in KINDS:
            await _node_figures(kind, total, setups, out)
        await _bare_iroh(total, setups, out)
        _lowering(out)
    mb, ms = 1e-6, 1e3
    result: dict[str, Any] = {"bytes_per_transfer": total, "rounds": rounds}
    for kind in KINDS:
        result[f"{kind}_node_stream_MBps"] = _med(out[f"{kind}_stream"], mb)
        result[f"{kind}_node_stream_MB_per_cpu_s"] = _med(out[f"{kind}_stream_cpu"], mb)
        result[f"{kind}_ping_rtt_median_ms"] = _med(out[f"{kind}_ping"], ms)
        result[f"{kind}_node_connect_ms"] = _med(out[f"{kind}_connect"], ms)
    result |= {
        "bare_iroh_stream_bindings_write_MBps": _med(out["bare_iroh_stream_bindings"], mb),
        "bare_iroh_stream_fast_write_MBps": _med(out["bare_iroh_stream_fast"], mb),
        "bare_iroh_stream_bindings_write_MB_per_cpu_s": _med(
            out["bare_iroh_stream_bindings_cpu"], mb
        ),
        "bare_iroh_stream_fast_write_MB_per_cpu_s": _med(out["bare_iroh_stream_fast_cpu"], mb),
        "bare_iroh_rtt_median_ms": _med(out["bare_iroh_rtt"], ms),
        "bare_iroh_connect_ms": _med(out["bare_iroh_connect"], ms),
        "bindings_bytes_lowering_MBps": _med(out["lower_bindings"], mb),
        "fast_bytes_lowering_MBps": _med(out["lower_fast"], mb),
        "iroh_vs_quic_node_stream": round(
            statistics.median(out["iroh_stream"]) / statistics.median(out["quic_stream"]), 3
        ),
        "iroh_node_vs_bare_iroh_stream": round(
            statistics.median(out["iroh_stream"]) / statistics.median(out["bare_iroh_stream_fast"]),
            3,
        ),
    }
    return result


def main() -> None:
    """Run the benchmarks and print one JSON object."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="smaller transfers, fewer setups")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3)")
    args = p.parse_args()
    total = 8 * 1024 * 1024 if args.quick else 32 * 1024 * 1024
    setups = 5 if args.quick else 10
    rounds = args.rounds or (1 if args.quick else 3)
    print(json.dumps(asyncio.run(run(total, setups, rounds)), indent=1))


if __name__ == "__main__":
    main()
