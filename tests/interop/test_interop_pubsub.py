"""Gossipsub interop with py-libp2p 0.8.1, both directions and in a mixed mesh."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import attrs
import pytest

from switchy.presets import default_node
from switchy.protocols.pubsub import GossipParams, PubSub
from switchy.stack.identity import PeerId
from switchy.transports.tcp import TcpTransport
from tests.interop.harness import pylibp2p_process, tcp_addr

pytestmark = pytest.mark.interop

SCRIPT = Path(__file__).parent / "pylibp2p_gossip.py"
TCP = "/ip4/127.0.0.1/tcp/0"


@attrs.define
class GossipPeer:
    peer_id: PeerId
    addr: str
    proc: asyncio.subprocess.Process
    events: asyncio.Queue[dict[str, Any]]

    async def publish(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": "publish", "data": data.hex()}).encode() + b"\n")
        await self.proc.stdin.drain()

    async def next_message(self) -> dict[str, Any]:
        while True:
            ev = await asyncio.wait_for(self.events.get(), 30)
            if ev["event"] == "message":
                return ev


@asynccontextmanager
async def gossip_peer(
    dial: str | None = None, direct: str | None = None
) -> AsyncIterator[GossipPeer]:
    args: list[str] = []
    if dial is not None:
        args += ["--dial", dial]
    if direct is not None:
        args += ["--direct", direct]
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    async with pylibp2p_process(SCRIPT, *args, on_event=events.put_nowait) as (proc, info):
        yield GossipPeer(PeerId.from_string(info["peer_id"]), tcp_addr(info), proc, events)


def node(ps: PubSub) -> Any:
    return default_node(transports=[TcpTransport()], services=[ps], listen=[TCP])


def run(main: Any) -> None:
    asyncio.run(asyncio.wait_for(main(), 120))


def test_pylibp2p_dials_us_and_messages_flow_both_ways(interop_python: Path) -> None:
    async def main() -> None:
        ps = PubSub()
        async with node(ps) as ours:
            sub = ps.subscribe("room")
            async with gossip_peer(dial=str(ours.full_addrs[0])) as theirs:
                await asyncio.wait_for(ps.wait_for_peers("room", 1, mesh=True), 30)
                await ps.publish("room", b"from switchy")
                ev = await theirs.next_message()
                assert bytes.fromhex(ev["data"]) == b"from switchy"
                assert ev["from"] == str(ours.peer_id)
                await theirs.publish(b"from py-libp2p")
                msg = await asyncio.wait_for(sub.get(), 30)
                # Our own message came first (local delivery), then theirs.
                assert msg.data == b"from switchy"
                msg = await asyncio.wait_for(sub.get(), 30)
                assert msg.data == b"from py-libp2p" and msg.source == theirs.peer_id

    run(main)


def test_we_dial_pylibp2p_in_a_mixed_mesh(interop_python: Path) -> None:
    # ours_a -- theirs -- ours_b: messages between our nodes cross py-libp2p's router.
    async def main() -> None:
        pa, pb = PubSub(), PubSub()
        async with node(pa) as a, node(pb) as b:
            sa, sb = pa.subscribe("room"), pb.subscribe("room")
            async with gossip_peer() as theirs:
                await a.connect(theirs.addr)
                await b.connect(theirs.addr)
                await asyncio.wait_for(pa.wait_for_peers("room", 1, mesh=True), 30)
                await asyncio.wait_for(pb.wait_for_peers("room", 1, mesh=True), 30)
                await pa.publish("room", b"a to all")
                assert (await asyncio.wait_for(sb.get(), 30)).data == b"a to all"
                ev = await theirs.next_message()
                assert bytes.fromhex(ev["data"]) == b"a to all"
                await theirs.publish(b"theirs to all")
                for s in (sa, sb):
                    got = [(await asyncio.wait_for(s.get(), 30)).data for _ in range(1 + (s is sa))]
                    assert got[-1] == b"theirs to all"

    run(main)


def test_a_direct_peering_with_pylibp2p_delivers_outside_the_mesh(interop_python: Path) -> None:
    # Reciprocal direct peers, outside each other's mesh: each message crosses because
    # each side forwards to its direct peer (we do not flood-publish here).
    async def main() -> None:
        ps = PubSub(params=GossipParams(flood_publish=False))
        async with node(ps) as ours:
            sub = ps.subscribe("room")
            async with gossip_peer(direct=str(ours.full_addrs[0])) as theirs:
                ps.add_direct_peer(theirs.addr)
                assert ps.direct_peers == {theirs.peer_id}
                await asyncio.wait_for(ps.wait_for_peers("room", 1), 30)
                await ps.publish("room", b"direct from switchy")
                ev = await theirs.next_message()
                assert bytes.fromhex(ev["data"]) == b"direct from switchy"
                await theirs.publish(b"direct from py-libp2p")
                assert (await asyncio.wait_for(sub.get(), 30)).data == b"direct from switchy"
                msg = await asyncio.wait_for(sub.get(), 30)
                assert msg.data == b"direct from py-libp2p" and msg.source == theirs.peer_id
                # py-libp2p 0.8.1 grafts its direct peers all the same (its join and
                # heartbeat do not leave them out): we answer PRUNE and stay out of meshes.
                assert ps.mesh_peers("room") == set()

    run(main)
