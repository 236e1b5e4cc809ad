"""A peer for the mDNS namespace test; run inside a network namespace by tests/test_mdns.py.

``serve ADDR NAME``: listen on ADDR's interface, announce NAME over mDNS, print our peer id
as JSON, run until standard input closes.  ``find ADDR NAME``: find NAME over mDNS, connect,
ping, print what happened as JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys

from switchy.presets import default_node
from switchy.protocols.discovery import connect_by_name, register_name
from switchy.protocols.discovery.mdns import MdnsPeer, MdnsService
from switchy.protocols.ping import ping
from switchy.stack.config import NetworkConfig


async def main(mode: str, addr: str, name: str) -> None:
    mdns = MdnsService(interface=addr, query_interval=1.0)
    found: list[str] = []
    mdns.on_peer_found(lambda peer: found.append(str(peer.peer_id)))
    config = NetworkConfig(discovery_timeout=15)
    async with default_node(services=[mdns], config=config) as node:
        await node.listen(f"/ip4/{addr}/tcp/0")
        if mode == "serve":
            await register_name(node, name)
            print(json.dumps({"peer_id": str(node.peer_id)}), flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
            return
        conn = await connect_by_name(node, name)
        rtts = await ping(node, conn.remote_peer, count=3)
        peer: MdnsPeer = mdns.peers[conn.remote_peer]
        print(
            json.dumps(
                {
                    "peer_id": str(conn.remote_peer),
                    "addrs": [str(a) for a in peer.addrs],
                    "names": list(peer.names),
                    "events": found,
                    "pings": len(rtts),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
