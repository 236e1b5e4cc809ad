"""Gossipsub over real sockets on loopback: TCP and QUIC, and bad input from a raw peer."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import pytest

from switchy.presets import default_node
from switchy.protocols.pubsub import GOSSIPSUB_V11, PubSub
from switchy.protocols.pubsub.pb import MAX_RPC_SIZE, RPC, SubOpts, encode_rpc
from switchy.stack.codec import encode_uvarint, frame_message
from switchy.stack.errors import StreamReset
from switchy.stack.node import Node

LISTEN = {"tcp": "/ip4/127.0.0.1/tcp/0", "quic": "/ip4/127.0.0.1/udp/0/quic-v1"}


@pytest.mark.parametrize("kind", ["tcp", "quic"])
def test_three_nodes_chat_over_loopback(kind: str) -> None:
    async def main() -> None:
        async with AsyncExitStack() as stack:
            ps = [PubSub() for _ in range(3)]
            nodes: list[Node] = [
                await stack.enter_async_context(default_node(services=[p], listen=[LISTEN[kind]]))
                for p in ps
            ]
            subs = [p.subscribe("room") for p in ps]
            await nodes[1].connect(nodes[0].full_addrs[0])
            await nodes[2].connect(nodes[1].full_addrs[0])
            await asyncio.wait_for(ps[1].wait_for_peers("room", 2, mesh=True), 20)
            await ps[0].publish("room", b"hello from 0")
            await ps[2].publish("room", b"hello from 2")
            for i, s in enumerate(subs):
                got = {(await asyncio.wait_for(s.get(), 10)).data for _ in range(2)}
                assert got == {b"hello from 0", b"hello from 2"}, i
                assert s._queue.empty()  # exactly once

    asyncio.run(asyncio.wait_for(main(), 60))


def test_oversized_rpc_resets_the_stream_and_penalises() -> None:
    async def main() -> None:
        async with (
            default_node(services=[(ps := PubSub())], listen=[LISTEN["tcp"]]) as node,
            default_node(listen=[LISTEN["tcp"]]) as raw,
        ):
            ps.subscribe("room")
            stream = await raw.open_stream(node.full_addrs[0], GOSSIPSUB_V11)
            hello = encode_rpc(RPC(subscriptions=(SubOpts(True, "room"),)))
            await stream.write(frame_message(hello, MAX_RPC_SIZE))
            await asyncio.wait_for(ps.wait_for_peers("room", 1), 20)
            assert ps.topic_peers("room") == {raw.peer_id}
            await stream.write(encode_uvarint(MAX_RPC_SIZE + 1))
            # The frame announcing more than the limit is refused before it arrives.
            with pytest.raises(StreamReset):
                await asyncio.wait_for(stream.read(), 10)
            assert ps.router.score._peers[raw.peer_id].behaviour_penalty == 1

    asyncio.run(asyncio.wait_for(main(), 60))
