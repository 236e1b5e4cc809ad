"""Node-level contract: message integrity end to end, connection lifecycle (a closed
connection refuses sends, reconnecting works), the protocol-handler contract (a
handler that raises, hangs or writes garbage does not take the node down), and
partition/heal where the harness can make partitions (the simulator).

Needs a ``node_harness`` fixture returning a
:class:`~switchy.stack.conformance.harness.NodeHarness`.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from multiaddr import Multiaddr

from switchy.stack.conformance._util import require, transfer, within
from switchy.stack.conformance.harness import NodeHarness
from switchy.stack.errors import ConnectionClosed, P2PError
from switchy.stack.node import Node
from switchy.stack.registry import StreamHandler
from switchy.stack.stream import MuxedStream

ECHO = "/conformance/echo/1.0.0"
RAISES = "/conformance/raises/1.0.0"
HANGS = "/conformance/hangs/1.0.0"
GARBAGE = "/conformance/garbage/1.0.0"


async def _echo(stream: MuxedStream) -> None:
    while chunk := await stream.read(65536):
        await stream.write(chunk)
    await stream.close()


async def _raises(stream: MuxedStream) -> None:
    await stream.read(1)
    raise RuntimeError("this handler fails on purpose")


async def _hangs(stream: MuxedStream) -> None:
    await asyncio.Event().wait()


async def _garbage(stream: MuxedStream) -> None:
    await stream.write(random.Random(9).randbytes(10_000))
    await stream.close()


def _handlers() -> dict[str, StreamHandler]:
    return {ECHO: _echo, RAISES: _raises, HANGS: _hangs, GARBAGE: _garbage}


async def _echo_roundtrip(h: NodeHarness, node: Node, target: Multiaddr, data: bytes) -> bytes:
    stream = await within(h, node.open_stream(target, ECHO), "node.open-stream", "opening")
    return await transfer(h, stream, [data], stream, "node.echo")


def test_message_integrity(nodes: NodeHarness) -> None:
    async def main() -> None:
        async with (
            nodes.make_node("a") as a,
            nodes.make_node("b", handlers=_handlers()) as b,
        ):
            for size in (1, 1000, 2 * 1024 * 1024):
                data = random.Random(size).randbytes(size)
                got = await _echo_roundtrip(nodes, a, b.full_addrs[0], data)
                require(
                    got == data,
                    "node.message-integrity",
                    f"echoed {size} bytes, got back {len(got)}",
                )
            limited = [c.is_limited for c in a.connections(b.peer_id)]
            require(
                limited and all(x == nodes.relayed for x in limited),
                "node.relayed",
                f"connections is_limited={limited}, expected {nodes.relayed} for this set-up",
            )

    nodes.run(main)


@pytest.mark.parametrize("bad", [RAISES, HANGS, GARBAGE])
def test_a_bad_handler_does_not_take_the_node_down(nodes: NodeHarness, bad: str) -> None:
    async def main() -> None:
        async with (
            nodes.make_node("a") as a,
            nodes.make_node("b", handlers=_handlers()) as b,
        ):
            stream = await within(
                nodes, a.open_stream(b.full_addrs[0], bad), "node.handler", "open"
            )
            await stream.write(b"hello")
            if bad != HANGS:

                async def finish() -> None:
                    try:
                        while await stream.read(65536):
                            pass
                    except P2PError:
                        pass

                await within(nodes, finish(), "node.handler", f"the stream of {bad} ending")
            # The node goes on serving other streams, on the same connection and new ones.
            got = await _echo_roundtrip(nodes, a, b.full_addrs[0], b"still alive")
            require(
                got == b"still alive",
                "node.handler",
                f"after a {bad} handler the node no longer serves echo (got {got!r})",
            )
            if bad == HANGS:
                await stream.reset()

    nodes.run(main)


def test_closed_connection_refuses_sends_and_reconnect_works(nodes: NodeHarness) -> None:
    async def main() -> None:
        async with (
            nodes.make_node("a") as a,
            nodes.make_node("b", handlers=_handlers()) as b,
        ):
            conn = await within(nodes, a.connect(b.full_addrs[0]), "node.connect", "connecting")
            stream = await a.open_stream(b.full_addrs[0], ECHO)
            await conn.close()
            try:
                await stream.write(b"after close")
            except ConnectionClosed:
                pass
            else:
                require(False, "node.lifecycle", "a stream of a closed connection took a write")
            try:
                await conn.open_stream()
            except P2PError:
                pass
            else:
                require(False, "node.lifecycle", "a closed connection opened a stream")
            got = await _echo_roundtrip(nodes, a, b.full_addrs[0], b"again")
            require(got == b"again", "node.lifecycle", "reconnecting after a close failed")
            require(
                any(not c.is_closed for c in a.connections(b.peer_id)),
                "node.lifecycle",
                "the node does not list its new connection",
            )

    nodes.run(main)


def test_partition_and_heal(nodes: NodeHarness) -> None:
    async def main() -> None:
        async with (
            nodes.make_node("a") as a,
            nodes.make_node("b", handlers=_handlers()) as b,
        ):
            got = await _echo_roundtrip(nodes, a, b.full_addrs[0], b"before")
            require(got == b"before", "node.partition", "echo before the partition failed")
            handle = nodes.partition("a", "b")
            if handle is None:
                pytest.skip("this harness cannot make partitions")
            try:
                async with asyncio.timeout(nodes.patience):
                    await _echo_roundtrip(nodes, a, b.full_addrs[0], b"during")
            except (P2PError, TimeoutError, AssertionError):
                pass
            else:
                require(False, "node.partition", "an echo crossed a partition")
            nodes.heal(handle)
            got = await _echo_roundtrip(nodes, a, b.full_addrs[0], b"after")
            require(got == b"after", "node.partition", "echo after healing failed")

    nodes.run(main)
