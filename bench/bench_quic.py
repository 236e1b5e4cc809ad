"""QUIC benchmarks against a bare aioquic client/server pair, in one run; prints one JSON object.

Figures (loopback, both ends in one event loop, the same aioquic settings on both sides):
- one-stream throughput: bare aioquic (stream data pushed straight into QuicConnection)
  vs our QUIC transport stream vs a node stream (multistream-negotiated) over QUIC;
- connection setup: bare aioquic handshake vs our dial (libp2p TLS both ways, peer id
  checked) vs a node connect;
- ping round trip over QUIC (the libp2p ping protocol on one stream, and a QUIC PING).

Usage: ``python -m bench.bench_quic [--quick]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import statistics
import time
from typing import Any

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent, StreamDataReceived
from multiaddr import Multiaddr

from stack.identity import KeyPair
from transports.quic.tls import make_certificate

CHUNK = 256 * 1024
LISTEN = "/ip4/127.0.0.1/udp/0/quic-v1"


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


def _bare_configs() -> tuple[QuicConfiguration, QuicConfiguration]:
    cert = make_certificate(KeyPair.generate())
    server = QuicConfiguration(is_client=False, alpn_protocols=["bench"])
    server.certificate = cert.certificate
    server.private_key = cert.private_key
    client = QuicConfiguration(is_client=True, alpn_protocols=["bench"], verify_mode=ssl.CERT_NONE)
    return server, client


async def _bare(total: int, handshakes: int) -> tuple[float, list[float]]:
    server_cfg, client_cfg = _bare_configs()
    sinks: list[_Sink] = []

    def factory(*args: Any, **kwargs: Any) -> _Sink:
        p = _Sink(*args, **kwargs)
        sinks.append(p)
        return p

    server = await serve("127.0.0.1", 0, configuration=server_cfg, create_protocol=factory)
    assert server._transport is not None
    port = server._transport.get_extra_info("sockname")[1]
    setups = []
    for _ in range(handshakes):
        start = time.perf_counter()
        async with connect("127.0.0.1", port, configuration=client_cfg) as client:
            setups.append(time.perf_counter() - start)
    async with connect("127.0.0.1", port, configuration=client_cfg) as client:
        quic = client._quic
        sid = quic.get_next_available_stream_id()
        data = bytes(CHUNK)
        start = time.perf_counter()
        for i in range(total // CHUNK):
            quic.send_stream_data(sid, data, end_stream=i == total // CHUNK - 1)
            client.transmit()
            await asyncio.sleep(0)
        n = await sinks[-1].done
        elapsed = time.perf_counter() - start
        assert n == total
    server.close()
    return total / elapsed, setups


# --- ours ---------------------------------------------------------------------------------------


async def _ours_transport(total: int, handshakes: int) -> tuple[float, list[float], list[float]]:
    from transports.quic import QuicTransport

    kb = KeyPair.generate()
    ta, tb = QuicTransport(key=KeyPair.generate()), QuicTransport(key=kb)
    accepted: asyncio.Queue[Any] = asyncio.Queue()

    async def handler(conn: Any) -> None:
        await accepted.put(conn)

    listener = await tb.listen(Multiaddr(LISTEN), handler)
    addr = listener.addrs[0]
    setups = []
    for _ in range(handshakes):
        start = time.perf_counter()
        conn: Any = await ta.dial(addr, remote_peer=kb.peer_id)
        setups.append(time.perf_counter() - start)
        await conn.close()
        await (await accepted.get()).wait_closed()
    conn = await ta.dial(addr, remote_peer=kb.peer_id)
    server = await accepted.get()
    stream = await conn.open_stream()
    data = bytes(CHUNK)
    start = time.perf_counter()
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
    elapsed = time.perf_counter() - start
    assert n == total
    rtts = [await conn.ping() for _ in range(50)]
    await conn.close()
    await listener.close()
    return total / elapsed, setups, rtts


async def _ours_node(total: int, handshakes: int) -> dict[str, Any]:
    from protocols.ping import ping
    from stack.node import Node

    async with Node.default(listen=[LISTEN]) as server, Node.default() as client:
        setups = []
        for _ in range(handshakes):
            async with Node.default() as fresh:
                start = time.perf_counter()
                await fresh.connect(server.full_addrs[0])
                setups.append(time.perf_counter() - start)
        done = asyncio.get_running_loop().create_future()

        async def sink(stream: Any) -> None:
            n = 0
            while chunk := await stream.read():
                n += len(chunk)
            done.set_result(n)

        server.handle("/bench/sink/1.0.0", sink)
        stream = await client.open_stream(server.full_addrs[0], "/bench/sink/1.0.0")
        data = bytes(CHUNK)
        start = time.perf_counter()
        for _ in range(total // CHUNK):
            await stream.write(data)
        await stream.close_write()
        n = await done
        elapsed = time.perf_counter() - start
        assert n == total
        rtts = await ping(client, server.peer_id, count=200)
        return {"throughput": total / elapsed, "setups": setups, "ping": rtts}


def _ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1e3, 3)


async def run(total: int, handshakes: int) -> dict[str, Any]:
    bare_tp, bare_setup = await _bare(total, handshakes)
    ours_tp, ours_setup, quic_rtts = await _ours_transport(total, handshakes)
    node = await _ours_node(total, handshakes)
    return {
        "bytes": total,
        "bare_aioquic_MBps": round(bare_tp / 1e6, 2),
        "transport_stream_MBps": round(ours_tp / 1e6, 2),
        "node_stream_MBps": round(node["throughput"] / 1e6, 2),
        "node_vs_bare_throughput": round(node["throughput"] / bare_tp, 3),
        "transport_vs_bare_throughput": round(ours_tp / bare_tp, 3),
        "bare_aioquic_handshake_ms": _ms(bare_setup),
        "transport_dial_ms": _ms(ours_setup),
        "node_connect_ms": _ms(node["setups"]),
        "dial_vs_bare_handshake": round(
            statistics.median(ours_setup) / statistics.median(bare_setup), 3
        ),
        "node_connect_vs_bare_handshake": round(
            statistics.median(node["setups"]) / statistics.median(bare_setup), 3
        ),
        "ping_rtt_median_ms": _ms(node["ping"]),
        "ping_rtt_p99_ms": round(sorted(node["ping"])[int(len(node["ping"]) * 0.99)] * 1e3, 3),
        "quic_ping_rtt_median_ms": _ms(quic_rtts),
    }


def main() -> None:
    """Run the benchmarks and print one JSON object."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="smaller transfers, fewer handshakes")
    args = p.parse_args()
    total = 16 * 1024 * 1024 if args.quick else 64 * 1024 * 1024
    handshakes = 10 if args.quick else 30
    print(json.dumps(asyncio.run(run(total, handshakes))))


if __name__ == "__main__":
    main()
