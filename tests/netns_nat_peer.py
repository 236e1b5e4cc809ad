"""Peers of the NAT lab; run inside network namespaces by tests/test_nat_lab.py.

``servers IP...``: one node per IP (the first a circuit relay, all AutoNAT servers), each
listening on TCP port 4001 of its IP; prints their addresses as JSON, runs until standard
input closes.  ``client EXPECTED LISTEN SERVER...``: a default node listening on LISTEN
(TCP) connects to the servers, waits until AutoNAT finds it EXPECTED (``public``/``private``)
and, when private, until it reserved on a relay by itself; prints what it knows as JSON,
runs until standard input closes.  ``observe ADDR``: connect to ADDR from ``0.0.0.0:4001``
and print what identify's observed address did to the address book.  ``ping ADDR``:
connect and ping once, print the RTT.
``PUBLIC_NETWORK`` (the lab's "internet") counts as public in every mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import Any

from switchy.presets import default_node
from switchy.protocols.autonat import AutoNATService, Reachability
from switchy.protocols.ping import ping
from switchy.stack.config import NetworkConfig
from switchy.transports.relay import AutoRelay, RelayService
from switchy.transports.tcp import TcpTransport

PUBLIC_NETWORK = "10.77.0.0/24"
CONFIG = NetworkConfig(public_networks=(PUBLIC_NETWORK,), dial_timeout=5)
PORT = 4001


def _node(*services: Any) -> Any:
    return default_node(transports=[TcpTransport(CONFIG)], services=services, config=CONFIG)


async def _until_stdin_closes() -> None:
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def servers(ips: list[str]) -> None:
    async with contextlib.AsyncExitStack() as stack:
        addrs = []
        for i, ip in enumerate(ips):
            services = [RelayService()] if i == 0 else []
            node = await stack.enter_async_context(_node(*services))
            await node.listen(f"/ip4/{ip}/tcp/{PORT}")
            addrs.append(str(node.full_addrs[0]))
        print(json.dumps({"addrs": addrs}), flush=True)
        await _until_stdin_closes()


async def client(expected: str, listen: str, server_addrs: list[str]) -> None:
    autonat = AutoNATService(server=False, boot_delay=1.0)
    autorelay = AutoRelay()
    async with _node(autonat, autorelay) as node:
        await node.listen(listen)
        for addr in server_addrs:
            await node.connect(addr)
        async with asyncio.timeout(90):
            await autonat.wait_reachability(Reachability(expected))
            if expected == "private":
                await autorelay.wait_relays(1)
        book = node.addresses
        print(
            json.dumps(
                {
                    "reachability": node.reachability.value,
                    "announced": [str(a) for a in node.announced_addrs],
                    "confirmed": [str(a) for a in book.confirmed()],
                    "candidates": [str(a) for a in book.candidates()],
                    "relays": [str(r) for r in autorelay.relays],
                    "circuits": [f"{a}/p2p/{node.peer_id}" for a in autorelay.circuit_addrs],
                    "verdicts": {str(a): v.value for a, v in autonat.addresses.items()},
                }
            ),
            flush=True,
        )
        await _until_stdin_closes()


async def observe(addr: str) -> None:
    """Connect from 0.0.0.0:4001 to ``addr``; print what the address book made of the
    peer's identify answer."""
    from switchy.protocols.identify import IdentifyService

    async with _node() as node:
        await node.listen(f"/ip4/0.0.0.0/tcp/{PORT}")
        conn = await node.connect(addr)
        ident = next(s for s in node.services if isinstance(s, IdentifyService))
        await ident.wait_identified(conn.remote_peer, timeout=20)
        book = node.addresses
        print(
            json.dumps(
                {
                    "local": str(conn.local_addr),
                    "reported": [str(a) for a in node.peerstore.observed_addrs],
                    "candidates": [str(a) for a in book.candidates()],
                    "observers": {str(a): book.observers(a) for a in book.observed()},
                    "confirmed": [str(a) for a in book.confirmed()],
                }
            ),
            flush=True,
        )


async def ping_once(addr: str) -> None:
    async with _node() as node:
        rtt = (await ping(node, addr, count=1))[0]
        print(json.dumps({"rtt": rtt}), flush=True)


if __name__ == "__main__":
    mode, rest = sys.argv[1], sys.argv[2:]
    if mode == "servers":
        asyncio.run(servers(rest))
    elif mode == "client":
        asyncio.run(client(rest[0], rest[1], rest[2:]))
    elif mode == "observe":
        asyncio.run(observe(rest[0]))
    else:
        asyncio.run(ping_once(rest[0]))
