"""Remote-peer contract: behaviour any libp2p implementation shares with ours when
our node dials it — ping, byte-exact echo of empty to large messages, concurrent
streams on one connection, an unknown protocol refused without harm, reconnecting
after a close, and a wrong expected peer id refused.

Needs a ``remote_harness`` fixture returning a
:class:`~switchy.conformance.harness.RemotePeerHarness`.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from switchy.conformance.harness import RemotePeerHarness
from switchy.protocols.ping import ping
from switchy.stack.conformance._util import require, transfer, within
from switchy.stack.errors import AuthenticationFailed, NegotiationFailed
from switchy.stack.identity import KeyPair
from switchy.stack.node import Node

ECHO = "/echo/1.0.0"


async def _echo(h: RemotePeerHarness, node: Node, addr: str, data: bytes) -> bytes:
    stream = await within(h, node.open_stream(addr, ECHO), "remote.echo", "opening echo")
    got = await transfer(h, stream, [data], stream, "remote.echo")
    await stream.close()
    return got


def test_ping(remote: RemotePeerHarness) -> None:
    async def main() -> None:
        async with remote.remote() as addr, remote.make_local() as node:
            rtts = await within(remote, ping(node, addr, count=5), "remote.ping", "5 pings")
            require(
                len(rtts) == 5 and all(r > 0 for r in rtts),
                "remote.ping",
                f"round trips {rtts}",
            )

    remote.run(main)


@pytest.mark.parametrize("size", [0, 1, 1000, 1024 * 1024])
def test_echo_is_byte_exact(remote: RemotePeerHarness, size: int) -> None:
    async def main() -> None:
        async with remote.remote() as addr, remote.make_local() as node:
            data = random.Random(size).randbytes(size)
            got = await _echo(remote, node, addr, data)
            require(got == data, "remote.echo", f"echoed {size} bytes, got back {len(got)}")

    remote.run(main)


def test_concurrent_streams_on_one_connection(remote: RemotePeerHarness) -> None:
    async def main() -> None:
        async with remote.remote() as addr, remote.make_local() as node:
            await node.connect(addr)
            datas = [random.Random(i).randbytes(10_000 + i) for i in range(10)]
            gots = await within(
                remote,
                asyncio.gather(*(_echo(remote, node, addr, d) for d in datas)),
                "remote.concurrent-streams",
                "10 concurrent echo streams",
            )
            require(gots == datas, "remote.concurrent-streams", "an echo came back wrong")
            require(
                len(node.connections()) == 1,
                "remote.concurrent-streams",
                f"expected one connection, have {len(node.connections())}",
            )

    remote.run(main)


def test_unknown_protocol_is_refused_and_the_connection_lives(remote: RemotePeerHarness) -> None:
    async def main() -> None:
        async with remote.remote() as addr, remote.make_local() as node:
            try:
                # Two choices: a real round trip, not an optimistic proposal.
                await within(
                    remote,
                    node.open_stream(addr, "/no/such/1.0.0", "/nor/this/1.0.0"),
                    "remote.negotiation",
                    "refusing unknown protocols",
                )
            except NegotiationFailed:
                pass
            else:
                require(False, "remote.negotiation", "an unknown protocol was accepted")
            got = await _echo(remote, node, addr, b"still fine")
            require(got == b"still fine", "remote.negotiation", "connection unusable after na")

    remote.run(main)


def test_reconnect_after_close(remote: RemotePeerHarness) -> None:
    async def main() -> None:
        async with remote.remote() as addr, remote.make_local() as node:
            conn = await node.connect(addr)
            await conn.close()
            got = await _echo(remote, node, addr, b"again")
            require(got == b"again", "remote.reconnect", "echo after reconnecting failed")

    remote.run(main)


def test_wrong_expected_peer_id_is_refused(remote: RemotePeerHarness) -> None:
    async def main() -> None:
        async with remote.remote() as addr, remote.make_local() as node:
            base = addr.split("/p2p/")[0]
            impostor = KeyPair.generate().peer_id
            try:
                await within(
                    remote, node.connect(f"{base}/p2p/{impostor}"), "remote.auth", "dialing"
                )
            except AuthenticationFailed:
                pass
            else:
                require(False, "remote.auth", "connected although the peer id did not match")

    remote.run(main)
