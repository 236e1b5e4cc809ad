"""Cancelled writers never corrupt a connection (the defect: a cancelled ``write`` on a
relayed connection over QUIC legs cut a batch of Noise frames; the remote saw
"Noise message N failed authentication").

The mechanism is checked in every part by the conformance suite's ``cancellation``
contracts; here are the set-ups where the corruption was seen, over real sockets.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from switchy.presets import default_node
from switchy.stack.conformance._util import check_whole_writes
from switchy.stack.node import Node, ProtocolService
from switchy.stack.stream import MuxedStream
from switchy.transports.quic import QuicTransport
from switchy.transports.relay import RelayConfig, RelayService, RelayTransport

UDP = "/ip4/127.0.0.1/udp/0/quic-v1"
ECHO = "/test/echo/1.0.0"
STREAMS = 100
#: The first message, whose echo tells the sender to stop, and the bulk write it is in.
FIRST = 1000
BULK = 200_000


async def _echo(stream: MuxedStream) -> None:
    while chunk := await stream.read(65536):
        await stream.write(chunk)
    await stream.close()


async def _stream_with_a_cancelled_sender(a: Node, target: str, seed: int) -> None:
    """Send a message and a bulk write; cancel the sender once the message came back."""
    rng = random.Random(seed)
    first, bulk = rng.randbytes(FIRST), rng.randbytes(BULK)
    stream = await a.open_stream(target, ECHO)
    bulk_done = False

    async def sender() -> None:
        nonlocal bulk_done
        await stream.write(first)
        await stream.write(bulk)
        bulk_done = True

    sending = asyncio.ensure_future(sender())
    received = bytearray()
    while len(received) < FIRST:
        chunk = await stream.read(65536)
        assert chunk, "the echo ended early"
        received += chunk
    sending.cancel()  # usually inside the bulk write, which is then either all sent or none
    await asyncio.gather(sending, return_exceptions=True)
    await stream.close_write()
    while chunk := await stream.read(65536):
        received += chunk
    check_whole_writes(bytes(received), [first, bulk], [False, not bulk_done], "relay.cancel")


def test_cancelled_senders_on_a_circuit_over_quic_legs_keep_the_connection_whole() -> None:
    def quic_node(*services: ProtocolService, **kw: Any) -> Node:
        return default_node(transports=[QuicTransport()], services=list(services), **kw)

    async def main() -> None:
        unlimited = RelayConfig(limit_data=0, limit_duration=0)
        async with (
            quic_node(RelayService(unlimited)) as r,
            quic_node(RelayTransport(), handlers={ECHO: _echo}) as b,
            quic_node(RelayTransport()) as a,
        ):
            await r.listen(UDP)
            (addr,) = await b.listen(f"{r.full_addrs[0]}/p2p-circuit")
            target = f"{addr}/p2p/{b.peer_id}"
            conn = await a.connect(target)
            assert conn.is_limited
            await asyncio.gather(
                *(_stream_with_a_cancelled_sender(a, target, i) for i in range(STREAMS))
            )
            assert not conn.is_closed and a.connections(b.peer_id) == [conn]
            stream = await a.open_stream(target, ECHO)  # and it still carries data
            await stream.write_last(b"still whole")
            assert await stream.read_all() == b"still whole"

    asyncio.run(asyncio.wait_for(main(), 120))


def test_cancelled_senders_on_direct_quic_streams() -> None:
    async def main() -> None:
        async with (
            default_node(transports=[QuicTransport()], handlers={ECHO: _echo}) as b,
            default_node(transports=[QuicTransport()]) as a,
        ):
            await b.listen(UDP)
            target = str(b.full_addrs[0])
            conn = await a.connect(target)
            await asyncio.gather(
                *(_stream_with_a_cancelled_sender(a, target, i) for i in range(STREAMS))
            )
            assert not conn.is_closed and a.connections(b.peer_id) == [conn]

    asyncio.run(asyncio.wait_for(main(), 120))


def test_cancelled_senders_on_tcp() -> None:
    async def main() -> None:
        async with (
            default_node(handlers={ECHO: _echo}, listen=["/ip4/127.0.0.1/tcp/0"]) as b,
            default_node() as a,
        ):
            target = str(b.full_addrs[0])
            conn = await a.connect(target)
            await asyncio.gather(
                *(_stream_with_a_cancelled_sender(a, target, i) for i in range(STREAMS))
            )
            assert not conn.is_closed and a.connections(b.peer_id) == [conn]

    asyncio.run(asyncio.wait_for(main(), 120))


def test_concurrent_writers_on_one_stream_survive_one_being_cancelled() -> None:
    """Writers waiting for their turn share one wake-up; cancelling one wakes the others."""
    from tests.test_yamux import muxed

    async def main() -> None:
        async with muxed() as (ma, mb):
            s = await ma.open_stream()
            await s.write(b"!")
            r = await mb.accept_stream()
            assert await r.read_exactly(1) == b"!"
            big = [bytes([i]) * 700_000 for i in range(3)]  # beyond the 256 KiB window
            writers = [asyncio.ensure_future(s.write(b)) for b in big]
            for _ in range(3):
                await asyncio.sleep(0)
            writers[1].cancel()  # waiting for its turn: commits nothing
            received = bytearray()
            while len(received) < 2 * 700_000:
                received += await r.read(1 << 20)
            await asyncio.gather(*writers, return_exceptions=True)
            assert writers[0].result() is None and writers[2].result() is None
            assert writers[1].cancelled()
            assert bytes(received) == big[0] + big[2]

    asyncio.run(asyncio.wait_for(main(), 30))
