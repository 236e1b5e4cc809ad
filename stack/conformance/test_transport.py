"""Transport contract: listen, dial, accept, addresses, close, dial errors, aborts,
small/large/many writes, half-close both ways, concurrent dials, listener close
with live connections, arbitrary chunking, cancelled writes and reads.

Needs a ``transport_harness`` fixture returning a
:class:`~switchy.stack.conformance.harness.TransportHarness`.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import HealthCheck, given, settings
from multiaddr import Multiaddr

from switchy.stack.conformance import strategies
from switchy.stack.conformance._util import (
    TransportPair,
    cancelled_reads_lose_nothing,
    cancelled_writes_arrive_whole,
    chunks_of,
    never,
    read_all_bytes,
    read_progressing,
    require,
    split_sizes,
    transfer,
    within,
)
from switchy.stack.conformance.harness import TransportHarness
from switchy.stack.errors import ConnectionClosed, P2PError, UnsupportedAddress
from switchy.stack.mux import MuxedConnection


def _payload(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def test_listen_dial_accept_and_addresses(transport: TransportHarness) -> None:
    async def main() -> None:
        pair = TransportPair(transport)
        addr = await pair.start()
        d, lst = await pair.connect(addr)
        raw = pair.raw_dialer
        require(
            isinstance(raw.remote_addr, Multiaddr) and isinstance(raw.local_addr, Multiaddr),
            "transport.addresses",
            "a connection must expose local_addr and remote_addr multiaddrs",
        )
        require(
            str(raw.remote_addr).split("/p2p/")[0] == str(addr).split("/p2p/")[0],
            "transport.addresses",
            f"dialer's remote_addr {raw.remote_addr} is not the dialed address {addr}",
        )
        await d.write(b"ping")
        got = await within(transport, lst.read_exactly(4), "transport.dial", "reading 4 bytes")
        require(got == b"ping", "transport.data-integrity", f"sent b'ping', received {got!r}")
        await lst.write(b"pong")
        got = await within(transport, d.read_exactly(4), "transport.dial", "reading 4 bytes")
        require(got == b"pong", "transport.data-integrity", f"sent b'pong', received {got!r}")
        await pair.close()

    transport.run(main)


@pytest.mark.parametrize(
    ("label", "sizes"),
    [
        ("one byte", [1]),
        ("large write", [4 * 1024 * 1024]),
        ("many writes", [random.Random(7).randrange(1, 3000) for _ in range(500)]),
    ],
)
def test_writes_arrive_byte_exact(
    transport: TransportHarness, label: str, sizes: list[int]
) -> None:
    async def main() -> None:
        pair = TransportPair(transport)
        d, lst = await pair.open()
        data = _payload(sum(sizes), seed=len(sizes))
        chunks = split_sizes(data, sizes)
        got = await transfer(transport, d, chunks, lst, "transport.half-close")
        require(
            got == data,
            "transport.data-integrity",
            f"{label}: sent {len(data)} bytes, received {len(got)}"
            + ("" if len(got) != len(data) else " with different content"),
        )
        await pair.close()

    transport.run(main)


@pytest.mark.parametrize("closer", ["dialer", "listener"])
def test_half_close_each_way(transport: TransportHarness, closer: str) -> None:
    async def main() -> None:
        pair = TransportPair(transport)
        d, lst = await pair.open()
        first, second = (d, lst) if closer == "dialer" else (lst, d)
        await first.write(b"request")
        await first.close_write()
        got = await read_all_bytes(second, transport, "transport.half-close")
        require(got == b"request", "transport.half-close", f"received {got!r} before EOF")
        # The other direction still works after the half-close.
        await second.write(b"response")
        await second.close_write()
        back = await read_all_bytes(first, transport, "transport.half-close")
        require(
            back == b"response",
            "transport.half-close",
            f"the {closer} could not read after closing its write side (got {back!r})",
        )
        try:
            await first.write(b"late")
        except ConnectionClosed:
            pass
        else:
            require(False, "transport.closed-write", "write after close_write did not raise")
        await pair.close()

    transport.run(main)


def test_concurrent_dials(transport: TransportHarness) -> None:
    async def main() -> None:
        pair = TransportPair(transport)
        addr = await pair.start()
        n = 10

        async def one(i: int) -> None:
            dialed = await pair.dial_t.dial(addr)
            stream = dialed
            if isinstance(dialed, MuxedConnection):
                stream = await dialed.open_stream()  # type: ignore[assignment]
            assert not isinstance(stream, MuxedConnection)
            await stream.write(i.to_bytes(2, "big") + _payload(1000, seed=i))
            await stream.close_write()
            await stream.read()  # the listener's close

        async def serve() -> set[int]:
            seen = set()
            for _ in range(n):
                conn = await pair.accepted.get()
                stream = conn
                if isinstance(conn, MuxedConnection):
                    stream = await conn.accept_stream()
                data = await read_all_bytes(stream, transport, "transport.concurrent-dials")
                i = int.from_bytes(data[:2], "big")
                require(
                    data[2:] == _payload(1000, seed=i),
                    "transport.concurrent-dials",
                    f"dial {i} delivered wrong bytes",
                )
                seen.add(i)
                await stream.close()
            return seen

        server = asyncio.ensure_future(serve())
        await within(
            transport,
            asyncio.gather(*(one(i) for i in range(n))),
            "transport.concurrent-dials",
            f"{n} concurrent dials",
        )
        seen = await within(transport, server, "transport.concurrent-dials", "accepting all")
        require(seen == set(range(n)), "transport.concurrent-dials", f"accepted {sorted(seen)}")
        await pair.close()

    transport.run(main)


def test_dial_errors(transport: TransportHarness) -> None:
    async def main() -> None:
        pair = TransportPair(transport)
        try:
            await within(
                transport,
                pair.dial_t.dial(Multiaddr(transport.unreachable_addr())),
                "transport.dial-errors",
                "failing to dial an address nobody listens on",
            )
        except P2PError:
            pass
        else:
            require(False, "transport.dial-errors", "dialing an unreachable address succeeded")
        bad = Multiaddr(transport.unsupported_addr())
        require(
            not pair.dial_t.can_dial(bad),
            "transport.dial-errors",
            f"can_dial({bad}) is True for an address it cannot dial",
        )
        try:
            await pair.dial_t.dial(bad)
        except UnsupportedAddress:
            pass
        else:
            require(False, "transport.dial-errors", f"dial({bad}) did not raise")

    transport.run(main)


def test_abort_is_seen_by_the_peer(transport: TransportHarness) -> None:
    async def main() -> None:
        pair = TransportPair(transport)
        d, lst = await pair.open()
        await d.write(b"x")
        await d.reset()

        async def drain() -> None:
            try:
                while await lst.read(65536):
                    pass
            except P2PError:
                pass

        await within(transport, drain(), "transport.abort", "the peer noticing a reset")
        try:
            await d.write(b"after reset")
        except ConnectionClosed:
            pass
        else:
            require(False, "transport.abort", "write after reset did not raise")
        await pair.close()

    transport.run(main)


def test_listener_close_keeps_live_connections(transport: TransportHarness) -> None:
    async def main() -> None:
        pair = TransportPair(transport)
        d, lst = await pair.open()
        assert pair.listener_obj is not None
        addr = pair.listener_obj.addrs[0]
        await pair.listener_obj.close()
        await d.write(b"still here")
        got = await within(transport, lst.read_exactly(10), "transport.listener-close", "read")
        require(
            got == b"still here",
            "transport.listener-close",
            "a live connection stopped working when its listener closed",
        )
        try:
            await within(
                transport,
                pair.dial_t.dial(addr),
                "transport.listener-close",
                "failing to dial a closed listener",
            )
        except P2PError:
            pass
        else:
            require(False, "transport.listener-close", "dialing a closed listener succeeded")
        await pair.close()

    transport.run(main)


@settings(max_examples=10, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=strategies.messages(max_size=200_000), cuts=strategies.chunkings())
def test_any_chunking_arrives_byte_exact(
    transport: TransportHarness, data: bytes, cuts: list[int]
) -> None:
    async def main() -> None:
        pair = TransportPair(transport)
        d, lst = await pair.open()
        got = await transfer(transport, d, chunks_of(data, cuts), lst, "transport.half-close")
        require(
            got == data,
            "transport.data-integrity",
            f"sent {len(data)} bytes in {len(chunks_of(data, cuts))} writes, got {len(got)}",
        )
        await pair.close()

    transport.run(main)


def test_close_gives_the_peer_end_of_stream(transport: TransportHarness) -> None:
    async def main() -> None:
        pair = TransportPair(transport)
        d, lst = await pair.open()
        await d.write(b"bye")
        await d.close()
        got = await read_all_bytes(lst, transport, "transport.close")
        require(got == b"bye", "transport.close", f"peer read {got!r} before EOF after close()")
        await pair.close()

    transport.run(main)


def test_both_directions_at_once_do_not_deadlock(transport: TransportHarness) -> None:
    async def main() -> None:
        pair = TransportPair(transport)
        d, lst = await pair.open()
        one, two = _payload(2_000_000, 1), _payload(2_000_000, 2)
        # 2 MB each way at the same time; a deadlock stalls both reads past the patience
        got_l, got_d = await asyncio.gather(
            transfer(transport, d, [one], lst, "transport.duplex"),
            transfer(transport, lst, [two], d, "transport.duplex"),
        )
        require(got_l == one and got_d == two, "transport.data-integrity", "duplex transfer")
        await pair.close()

    transport.run(main)


def test_writes_block_while_the_peer_does_not_read(transport: TransportHarness) -> None:
    async def main() -> None:
        pair = TransportPair(transport)
        d, lst = await pair.open()
        big = _payload(transport.backpressure_bytes, 3)
        writer = asyncio.ensure_future(d.write(big))
        await never(
            transport,
            asyncio.shield(writer),
            "transport.backpressure",
            f"writing {len(big)} bytes to a peer that reads nothing",
        )
        got = await read_progressing(transport, lst, "transport.backpressure", "draining", len(big))
        await within(transport, writer, "transport.backpressure", "the writer finishing")
        require(got == big, "transport.data-integrity", "data lost under backpressure")
        await pair.close()

    transport.run(main)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cancelled_writes_and_reads_keep_the_stream_whole(
    transport: TransportHarness, seed: int
) -> None:
    async def main() -> None:
        pair = TransportPair(transport)
        d, lst = await pair.open()
        await cancelled_writes_arrive_whole(transport, d, lst, "transport.cancellation", seed=seed)
        await pair.close()

    transport.run(main)


def test_cancelled_reads_lose_nothing(transport: TransportHarness) -> None:
    async def main() -> None:
        pair = TransportPair(transport)
        d, lst = await pair.open()
        await cancelled_reads_lose_nothing(transport, d, lst, "transport.cancellation")
        await pair.close()

    transport.run(main)
