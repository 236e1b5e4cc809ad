"""A switchy node on the iroh transport in one namespace of the NAT lab (test_iroh_nat_lab.py).

``listen IP`` prints ``{"addr": …}`` (its iroh address on IP), serves ping, and exits when
stdin closes.  ``dial ADDR TIMEOUT`` pings ADDR once (dial timeout TIMEOUT seconds) and
prints ``{"ok": …, "error": …}``.  Relays are disabled: nothing but the lab is used.
"""

from __future__ import annotations

import asyncio
import json
import sys

from switchy.protocols.ping import PingService, ping
from switchy.stack.config import NetworkConfig
from switchy.stack.errors import P2PError
from switchy.stack.node import Node
from switchy.transports.iroh import IrohTransport


def _node(listen: list[str], timeout: float = 5.0) -> Node:
    config = NetworkConfig(dial_timeout=timeout, keepalive_interval=0)
    return Node(
        transports=[IrohTransport(config)], services=[PingService()], listen=listen, config=config
    )


async def _listen(ip: str) -> None:
    async with _node([f"/ip4/{ip}/udp/0/iroh"]) as node:
        print(json.dumps({"addr": str(node.listen_addrs[0])}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


async def _dial(addr: str, timeout: float) -> None:
    async with _node([], timeout) as node:
        try:
            rtts = await ping(node, addr, count=1)
            print(json.dumps({"ok": True, "rtt": rtts[0], "error": None}), flush=True)
        except P2PError as exc:
            print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}), flush=True)


def main() -> None:
    """Run the mode named by the first argument."""
    if sys.argv[1] == "listen":
        asyncio.run(_listen(sys.argv[2]))
    else:
        asyncio.run(_dial(sys.argv[2], float(sys.argv[3])))


if __name__ == "__main__":
    main()
