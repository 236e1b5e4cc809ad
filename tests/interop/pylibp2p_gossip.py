"""A py-libp2p gossipsub peer for interop tests.  Runs under the interop venv's Python only.

    pylibp2p_gossip.py [--dial ADDR] [--direct ADDR] [--topic T]

TCP + Noise + yamux, gossipsub /meshsub/1.1.0 and /1.0.0 with a 1 s heartbeat (py-libp2p's
default is 120 s), strict signing; ``--direct ADDR``: that peer is a direct peer (v1.1
explicit peering, dialled by py-libp2p itself).  Prints {"peer_id", "addrs"} once it listens and is
subscribed, then one JSON line per event: {"event": "message", "data": HEX, "from": ID}
for every message of the topic, {"event": "published"} after each publish.  Reads
commands from stdin, one JSON object a line: {"cmd": "publish", "data": HEX}.  Ends when
stdin closes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import multiaddr
import trio
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service

sys.path.insert(0, str(Path(__file__).parent))
from pylibp2p_peer import emit, local_addr, make_host


async def run(args: argparse.Namespace) -> int:
    host = make_host(None)
    direct = [info_from_p2p_addr(multiaddr.Multiaddr(args.direct))] if args.direct else None
    router = GossipSub(
        protocols=[PROTOCOL_ID_V11, PROTOCOL_ID],
        degree=6,
        degree_low=4,
        degree_high=12,
        heartbeat_interval=1,
        do_px=True,
        direct_peers=direct,
    )
    pubsub = Pubsub(host, router, strict_signing=True)
    async with (
        host.run(listen_addrs=[local_addr(False)]),
        background_trio_service(pubsub),
        background_trio_service(router),
    ):
        await pubsub.wait_until_ready()
        sub = await pubsub.subscribe(args.topic)
        if args.dial:
            await host.connect(info_from_p2p_addr(multiaddr.Multiaddr(args.dial)))
        emit({"peer_id": host.get_id().to_base58(), "addrs": [str(a) for a in host.get_addrs()]})

        async def receive() -> None:
            async for msg in sub:
                emit(
                    {
                        "event": "message",
                        "data": bytes(msg.data).hex(),
                        "from": ID(msg.from_id).to_base58(),
                    }
                )

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            while True:
                line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
                if not line:
                    break
                cmd: dict[str, Any] = json.loads(line)
                if cmd["cmd"] == "publish":
                    await pubsub.publish(args.topic, bytes.fromhex(cmd["data"]))
                    emit({"event": "published"})
            nursery.cancel_scope.cancel()
    return 0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--dial")
    p.add_argument("--direct")
    p.add_argument("--topic", default="room")
    return trio.run(run, p.parse_args())


if __name__ == "__main__":
    sys.exit(main())
