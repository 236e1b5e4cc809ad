"""Peers of the hole-punching lab; run inside network namespaces by tests/test_nat_lab_punch.py.

``relay IP``: a circuit relay listening on TCP and QUIC port 4001 of IP; prints its
addresses as JSON and runs until standard input closes.  ``b KIND RELAY``: a default
node (hole punching on) listening on port 4001 of KIND (``tcp`` or ``quic``) connects to
RELAY, reserves a circuit and prints its circuit address as JSON; once its upgrade of a
relayed connection succeeded or failed for good it prints its punch events as JSON, then
runs until standard input closes.  ``PUBLIC_NETWORK`` (the lab's "internet") counts as
public; the peer side (``A``) is ``switchy ping`` run by the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import Any

from switchy.presets import default_node
from switchy.protocols.dcutr import DCUtRService, PunchEvent
from switchy.protocols.identify import IdentifyService
from switchy.stack.config import NetworkConfig
from switchy.transports.quic import QuicTransport
from switchy.transports.relay import RelayConfig, RelayService
from switchy.transports.tcp import TcpTransport

PUBLIC_NETWORK = "10.77.0.0/24"
CONFIG = NetworkConfig(public_networks=(PUBLIC_NETWORK,), dial_timeout=5)
PORT = 4001
#: Bound on the wait for B's upgrade to end (3 attempts of at most ~15 s each).
UPGRADE_WAIT = 60.0


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


if __name__ == "__main__":
    mode, rest = sys.argv[1], sys.argv[2:]
    if mode == "relay":
        asyncio.run(relay(rest[0]))
    else:
        asyncio.run(b_side(rest[0], rest[1]))
