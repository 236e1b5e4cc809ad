"""QUIC benchmarks against a bare aioquic client/server pair, in one run; prints one JSON object.

Figures (loopback, both ends in one event loop, the same aioquic settings on both sides):
- one-stream throughput: bare aioquic (stream data pushed straight into QuicConnection, no
  flow control by the reader, no stream API) vs our QUIC transport stream vs a node stream
  (multistream-negotiated, as protocols use it);
- connection setup: bare aioquic handshake (server certificate only) vs our dial (libp2p TLS
  both ways, both certificates checked, peer id derived) vs a node connect;
- ping round trip over QUIC (the libp2p ping protocol on one stream);
- with ``--two-process``: bare aioquic vs a node stream with the server in another process.

Each figure is the median over ``--rounds`` interleaved rounds.  Throughput and setup are
reported in wall-clock time and in CPU time of this process: both ends run here, so the CPU
figures are not disturbed by other load on a shared machine; the ratios use them.

Usage: ``python -m bench.bench_quic [--quick] [--rounds N] [--two-process]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import ssl
import statistics
import time
from collections import defaultdict
from typing import Any

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent, StreamDataReceived
from multiaddr import Multiaddr

from bench.common import CHUNK, SINK_PROTOCOL, sink_handler, sink_server_process
from bench.common import run as run_loop
from switchy.presets import default_node
from switchy.stack.identity import KeyPair
from switchy.transports.quic.tls import make_certificate

LISTEN = "/ip4/127.0.0.1/udp/0/quic-v1"


class _Timer:
    """Wall and CPU seconds of one measurement."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = time.process_time()

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


# --- bare aioquic -------------------------------------------------------------------------------


class _Sink(QuicConnectionProtocol):
    """Counts stream bytes; resolves ``done`` at FIN."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.received = 0
        self.done: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            self.received += len(event.data)
            if event.end_stream and not self.done.done():
                self.done.set_result(self.received)


async def _bare(total: int, handshakes: int, out: dict[str, list[float]]) -> None:
    cert = make_certificate(KeyPair.generate())
    server_cfg = QuicConfiguration(is_client=False, alpn_protocols=["bench"])
    server_cfg.certificate = cert.certificate
    server_cfg.private_key = cert.private_key
    client_cfg = QuicConfiguration(
        is_client=True, alpn_protocols=["bench"], verify_mode=ssl.CERT_NONE
    )
    sinks: list[_Sink] = []

    def factory(*args: Any, **kwargs: Any) -> _Sink:
        p = _Sink(*args, **kwargs)
        sinks.append(p)
        return p

    server = await serve("127.0.0.1", 0, configuration=server_cfg, create_protocol=factory)
    assert server._transport is not None
    port = server._transport.get_extra_info("sockname")[1]
    for _ in range(handshakes):
        t = _Timer()
        async with connect("127.0.0.1", port, configuration=client_cfg):
            wall, cpu = t.stop()
        out["bare_handshake"].append(wall)
        out["bare_handshake_cpu"].append(cpu)
    async with connect("127.0.0.1", port, configuration=client_cfg) as client:
        quic = client._quic
        sid = quic.get_next_available_stream_id()
        data = bytes(CHUNK)
        t = _Timer()
        for i in range(total // CHUNK):
            quic.send_stream_data(sid, data, end_stream=i == total // CHUNK - 1)
            client.transmit()
            await asyncio.sleep(0)
        n = await sinks[-1].done
        wall, cpu = t.stop()
        assert n == total
    server.close()
    out["bare_wall"].append(total / wall)
    out["bare_cpu"].append(total / cpu)


# --- ours ---------------------------------------------------------------------------------------


async def _transport(total: int, handshakes: int, out: dict[str, list[float]]) -> None:
    from switchy.transports.quic import QuicTransport

    kb = KeyPair.generate()
    ta, tb = QuicTransport(key=KeyPair.generate()), QuicTransport(key=kb)
    accepted: asyncio.Queue[Any] = asyncio.Queue()

    async def handler(conn: Any) -> None:
        await accepted.put(conn)

    listener = await tb.listen(Multiaddr(LISTEN), handler)
    addr = listener.addrs[0]
    for _ in range(handshakes):
        t = _Timer()
        conn: Any = await ta.dial(addr, remote_peer=kb.peer_id)
        wall, cpu = t.stop()
        out["transport_dial"].append(wall)
        out["transport_dial_cpu"].append(cpu)
        await conn.close()
        await (await accepted.get()).wait_closed()
    conn = await ta.dial(addr, remote_peer=kb.peer_id)
    server = await accepted.get()
    stream = await conn.open_stream()
    data = bytes(CHUNK)
    t = _Timer()
    await stream.write(data)
    inbound = await server.accept_stream()

    async def send() -> None:
        for _ in range(total // CHUNK - 1):
            await stream.write(data)
        await stream.close_write()

    task = asyncio.ensure_future(send())
    n = 0
    while chunk := await inbound.read():
        n += len(chunk)
    await task
    wall, cpu = t.stop()
    assert n == total
    out["transport_wall"].append(total / wall)
    out["transport_cpu"].append(total / cpu)
    await conn.close()
    await listener.close()


async def _node(total: int, handshakes: int, out: dict[str, list[float]]) -> None:
    from switchy.protocols.ping import ping

    async with default_node(listen=[LISTEN]) as server, default_node() as client:
        for _ in range(handshakes):
            async with default_node() as fresh:
                t = _Timer()
                await fresh.connect(server.full_addrs[0])
                wall, cpu = t.stop()
                out["node_connect"].append(wall)
                out["node_connect_cpu"].append(cpu)
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        server.handle(SINK_PROTOCOL, sink_handler(done.set_result, answer=False))
        stream = await client.open_stream(server.full_addrs[0], SINK_PROTOCOL)
        data = bytes(CHUNK)
        t = _Timer()
        for _ in range(total // CHUNK):
            await stream.write(data)
        await stream.close_write()
        n = await done
        wall, cpu = t.stop()
        assert n == total
        out["node_wall"].append(total / wall)
        out["node_cpu"].append(total / cpu)
        out["ping"].extend(await ping(client, server.peer_id, count=100))


# --- two processes (wall clock only) -------------------------------------------------------------


class _ReplySink(_Sink):
    """A bare aioquic sink that answers the byte count at FIN."""

    def quic_event_received(self, event: QuicEvent) -> None:
        super().quic_event_received(event)
        if isinstance(event, StreamDataReceived) and event.end_stream:
            self._quic.send_stream_data(event.stream_id, str(self.received).encode(), True)
            self.transmit()


def _bare_server_process(q: Any) -> None:
    async def main() -> None:
        cert = make_certificate(KeyPair.generate())
        cfg = QuicConfiguration(is_client=False, alpn_protocols=["bench"])
        cfg.certificate = cert.certificate
        cfg.private_key = cert.private_key
        server = await serve("127.0.0.1", 0, configuration=cfg, create_protocol=_ReplySink)
        assert server._transport is not None
        q.put(server._transport.get_extra_info("sockname")[1])
        await asyncio.sleep(120)

    run_loop(main())


async def _two_process(total: int, out: dict[str, list[float]]) -> None:

    ctx = mp.get_context("spawn")
    loop = asyncio.get_running_loop()
    for kind, target in (("bare", _bare_server_process), ("node", sink_server_process)):
        q = ctx.Queue()
        args = (q,) if kind == "bare" else (q, LISTEN)
        proc = ctx.Process(target=target, args=args, daemon=True)
        proc.start()
        try:
            where = await loop.run_in_executor(None, q.get, True, 60)
            data = bytes(CHUNK)
            if kind == "bare":
                cfg = QuicConfiguration(
                    is_client=True, alpn_protocols=["bench"], verify_mode=ssl.CERT_NONE
                )
                async with connect("127.0.0.1", where, configuration=cfg) as client:
                    reader, writer = await client.create_stream()
                    t = _Timer()
                    for _ in range(total // CHUNK):
                        writer.write(data)
                        await writer.drain()
                    writer.write_eof()
                    n = int(await reader.read())
                    wall, _ = t.stop()
            else:
                async with default_node() as node:
                    stream = await node.open_stream(where, SINK_PROTOCOL)
                    t = _Timer()
                    for _ in range(total // CHUNK):
                        await stream.write(data)
                    await stream.close_write()
                    n = int(await stream.read_all())
                    wall, _ = t.stop()
            assert n == total
            out[f"{kind}_two_process"].append(total / wall)
        finally:
            proc.kill()
            proc.join(10)


def _med(values: list[float], scale: float = 1.0) -> float:
    return round(statistics.median(values) * scale, 3)


def _ratio(ours: list[float], bare: list[float]) -> float:
    return round(statistics.median(ours) / statistics.median(bare), 3)


async def run(total: int, handshakes: int, rounds: int, two_process: bool) -> dict[str, Any]:
    out: dict[str, list[float]] = defaultdict(list)
    for _ in range(rounds):
        await _bare(total, handshakes, out)
        await _transport(total, handshakes, out)
        await _node(total, handshakes, out)
        if two_process:
            await _two_process(total, out)
    mb = 1e-6
    ms = 1e3
    ping = sorted(out["ping"])
    return {
        "bytes_per_transfer": total,
        "rounds": rounds,
        "bare_aioquic_MBps": _med(out["bare_wall"], mb),
        "transport_stream_MBps": _med(out["transport_wall"], mb),
        "node_stream_MBps": _med(out["node_wall"], mb),
        "bare_aioquic_MB_per_cpu_s": _med(out["bare_cpu"], mb),
        "transport_stream_MB_per_cpu_s": _med(out["transport_cpu"], mb),
        "node_stream_MB_per_cpu_s": _med(out["node_cpu"], mb),
        "transport_vs_bare_throughput": _ratio(out["transport_cpu"], out["bare_cpu"]),
        "node_vs_bare_throughput": _ratio(out["node_cpu"], out["bare_cpu"]),
        "bare_aioquic_handshake_ms": _med(out["bare_handshake"], ms),
        "transport_dial_ms": _med(out["transport_dial"], ms),
        "node_connect_ms": _med(out["node_connect"], ms),
        "bare_aioquic_handshake_cpu_ms": _med(out["bare_handshake_cpu"], ms),
        "transport_dial_cpu_ms": _med(out["transport_dial_cpu"], ms),
        "node_connect_cpu_ms": _med(out["node_connect_cpu"], ms),
        "dial_vs_bare_handshake": _ratio(out["transport_dial_cpu"], out["bare_handshake_cpu"]),
        "node_connect_vs_bare_handshake": _ratio(
            out["node_connect_cpu"], out["bare_handshake_cpu"]
        ),
        "ping_rtt_median_ms": _med(ping, ms),
        "ping_rtt_p99_ms": round(ping[int(len(ping) * 0.99)] * ms, 3),
    } | (
        {
            "two_process_bare_aioquic_MBps": _med(out["bare_two_process"], mb),
            "two_process_node_stream_MBps": _med(out["node_two_process"], mb),
        }
        if two_process
        else {}
    )


def main() -> None:
    """Run the benchmarks and print one JSON object."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="smaller transfers, fewer handshakes")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5)")
    p.add_argument(
        "--two-process", action="store_true", help="also server and client in two processes"
    )
    args = p.parse_args()
    total = 8 * 1024 * 1024 if args.quick else 32 * 1024 * 1024
    handshakes = 10 if args.quick else 20
    rounds = args.rounds or (2 if args.quick else 5)
    print(json.dumps(asyncio.run(run(total, handshakes, rounds, args.two_process))))


if __name__ == "__main__":
    main()
