"""Peers of the hole-punching lab; run inside network namespaces by tests/test_nat_lab_punch.py.

``relay IP``: a circuit relay listening on TCP and QUIC port 4001 of IP; prints its
addresses as JSON and runs until standard input closes.  ``b KIND RELAY``: a default
node (hole punching on) listening on port 4001 of KIND (``tcp`` or ``quic``) connects to
RELAY, reserves a circuit and prints its circuit address as JSON; once its upgrade of a
relayed connection succeeded or failed for good it prints its punch events as JSON, then
runs until standard input closes; it also serves the benchmark's sink protocol.
``a CIRCUIT`` (the benchmark's ``A``): a default node listening on ephemeral TCP and
QUIC ports dials CIRCUIT, waits for the direct connection the punch makes, then measures
on each connection, the relayed one first (it is retired after the grace period): ping
round trips and the throughput of one stream; prints them as JSON.
``PUBLIC_NETWORK`` (the lab's "internet") counts as public; in the tests the peer side
(``A``) is ``switchy ping``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import Any

from bench.bench_punch import LAB_THROUGHPUT_BYTES, connection_throughput
from bench.common import SINK_PROTOCOL, ping_round_trips, sink_handler
from switchy.presets import default_node
from switchy.protocols.dcutr import DCUtRService, PunchEvent
from switchy.protocols.identify import IdentifyService
from switchy.protocols.ping import PING_PROTOCOL
from switchy.stack.config import NetworkConfig
from switchy.stack.mux import MuxedConnection
from switchy.stack.negotiation import select_protocol_lazy
from switchy.transports.quic import QuicTransport
from switchy.transports.relay import RelayConfig, RelayService
from switchy.transports.tcp import TcpTransport

PUBLIC_NETWORK = "10.77.0.0/24"
CONFIG = NetworkConfig(public_networks=(PUBLIC_NETWORK,), dial_timeout=5)
PORT = 4001
#: Bound on the wait for B's upgrade to end (3 attempts of at most ~15 s each).
UPGRADE_WAIT = 60.0
#: Ping round trips measured on each connection by ``a``.
LAB_PINGS = 20


async def _until_stdin_closes() -> None:
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


def _event(e: PunchEvent) -> dict[str, Any]:
    conn = e.connection
    return {
        "kind": e.kind,
        "role": e.role.value,
        "attempt": e.attempt,
        "elapsed": e.elapsed,
        "reason": e.reason,
        "final": e.final,
        "rtt": e.rtt,
        "limited": None if conn is None else conn.is_limited,
        "remote": None if conn is None else str(conn.remote_addr),
    }


async def relay(ip: str) -> None:
    unlimited = RelayConfig(limit_data=0, limit_duration=0)
    node = default_node(
        transports=[QuicTransport(CONFIG), TcpTransport(CONFIG)],
        services=[RelayService(unlimited)],
        config=CONFIG,
        hole_punching=False,
    )
    async with node:
        await node.listen(f"/ip4/{ip}/udp/{PORT}/quic-v1", f"/ip4/{ip}/tcp/{PORT}")
        print(json.dumps({"addrs": [str(a) for a in node.full_addrs]}), flush=True)
        await _until_stdin_closes()


async def b_side(kind: str, relay_addr: str) -> None:
    done = asyncio.Event()
    events: list[PunchEvent] = []

    def seen(e: PunchEvent) -> None:
        events.append(e)
        if e.kind == "succeeded" or e.final:
            done.set()

    svc = DCUtRService(on_event=seen)
    transport: Any = QuicTransport(CONFIG) if kind == "quic" else TcpTransport(CONFIG)
    listen = f"/ip4/0.0.0.0/udp/{PORT}/quic-v1" if kind == "quic" else f"/ip4/0.0.0.0/tcp/{PORT}"
    async with default_node(transports=[transport], services=[svc], config=CONFIG) as node:
        node.handle(SINK_PROTOCOL, sink_handler())
        await node.listen(listen)
        conn = await node.connect(relay_addr)
        ident = next(s for s in node.services if isinstance(s, IdentifyService))
        await ident.wait_identified(conn.remote_peer, 20)
        circuits = await node.listen(f"{relay_addr}/p2p-circuit")
        circuit = next(c for c in circuits if str(c).startswith(relay_addr))
        print(
            json.dumps(
                {
                    "circuit": f"{circuit}/p2p/{node.peer_id}",
                    "candidates": [str(a) for a in node.addresses.candidates()],
                }
            ),
            flush=True,
        )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(UPGRADE_WAIT):
                await done.wait()
        print(json.dumps({"events": [_event(e) for e in events]}), flush=True)
        await _until_stdin_closes()


async def _measure(conn: MuxedConnection) -> dict[str, Any]:
    stream = await select_protocol_lazy(await conn.open_stream(), PING_PROTOCOL)
    rtts = await ping_round_trips(stream, LAB_PINGS)
    await stream.close()
    return {
        "rtt_s": rtts[len(rtts) // 2],
        "rtt_min_s": rtts[0],
        "throughput_Bps": await connection_throughput(conn, LAB_THROUGHPUT_BYTES),
    }


async def a_side(circuit: str) -> None:
    async with default_node(config=CONFIG) as node:
        await node.listen("/ip4/0.0.0.0/udp/0/quic-v1", "/ip4/0.0.0.0/tcp/0")
        up = asyncio.Event()
        node.on_connection_event(lambda e: None if e.connection.is_limited else up.set())
        relayed = await node.connect(circuit)
        loop = asyncio.get_running_loop()
        start = loop.time()
        peer = relayed.remote_peer
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(UPGRADE_WAIT):
                while not (direct := [c for c in node.connections(peer) if not c.is_limited]):
                    up.clear()
                    await up.wait()
        out: dict[str, Any] = {"direct_after_s": None}
        if direct:
            out["direct_after_s"] = loop.time() - start
            out["direct_addr"] = str(direct[0].remote_addr)
            out["relayed"] = await _measure(relayed)
            out["direct"] = await _measure(direct[0])
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    mode, rest = sys.argv[1], sys.argv[2:]
    if mode == "relay":
        asyncio.run(relay(rest[0]))
    elif mode == "a":
        asyncio.run(a_side(rest[0]))
    else:
        asyncio.run(b_side(rest[0], rest[1]))
