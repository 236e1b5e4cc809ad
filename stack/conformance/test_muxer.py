"""Stream-muxer contract: open and accept from both sides, half-close, reset, a grid
of streams x messages, flow control with a clogged reader (without blocking other
streams), closing and aborting the session with open streams, a stateful
property test over random operation sequences, and writers and readers cancelled at
random on many streams at once.

Needs a ``muxer_harness`` fixture returning a
:class:`~switchy.stack.conformance.harness.MuxerHarness`.
"""

from __future__ import annotations

import asyncio
import random

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from switchy.stack.conformance._util import (
    cancelled_reads_lose_nothing,
    cancelled_writes_arrive_whole,
    muxed_pair,
    never,
    read_all_bytes,
    read_progressing,
    require,
    transfer,
    within,
)
from switchy.stack.conformance.harness import MuxerHarness
from switchy.stack.errors import ConnectionClosed, P2PError, StreamReset
from switchy.stack.mux import MuxedConnection
from switchy.stack.stream import MuxedStream


async def _open(
    h: MuxerHarness, opener: MuxedConnection, acceptor: MuxedConnection
) -> tuple[MuxedStream, MuxedStream]:
    out = await within(h, opener.open_stream(), "muxer.open", "opening a stream")
    await out.write(b"!")  # some muxers announce a stream with its first frame
    inbound = await within(h, acceptor.accept_stream(), "muxer.accept", "accepting a stream")
    first = await within(h, inbound.read_exactly(1), "muxer.accept", "the first byte")
    require(first == b"!", "muxer.data-integrity", f"first byte {first!r}")
    return out, inbound


@pytest.mark.parametrize("side", ["initiator", "responder"])
def test_open_and_accept_from_either_side(muxer: MuxerHarness, side: str) -> None:
    async def main() -> None:
        a, b = muxed_pair(muxer)
        opener, acceptor = (a, b) if side == "initiator" else (b, a)
        out, inbound = await _open(muxer, opener, acceptor)
        await out.write(b"hello")
        got = await within(muxer, inbound.read_exactly(5), "muxer.open", "reading")
        require(got == b"hello", "muxer.data-integrity", f"got {got!r}")
        await inbound.write(b"world")
        got = await within(muxer, out.read_exactly(5), "muxer.open", "reading")
        require(got == b"world", "muxer.data-integrity", f"got {got!r}")
        await a.abort()
        await b.abort()

    muxer.run(main)


def test_half_close(muxer: MuxerHarness) -> None:
    async def main() -> None:
        a, b = muxed_pair(muxer)
        out, inbound = await _open(muxer, a, b)
        await out.write(b"question")
        await out.close_write()
        got = await read_all_bytes(inbound, muxer, "muxer.half-close")
        require(got == b"question", "muxer.half-close", f"read {got!r} before EOF")
        await inbound.write(b"answer")
        await inbound.close_write()
        got = await read_all_bytes(out, muxer, "muxer.half-close")
        require(got == b"answer", "muxer.half-close", f"reading after close_write gave {got!r}")
        try:
            await out.write(b"late")
        except ConnectionClosed:
            pass
        else:
            require(False, "muxer.half-close", "write after close_write did not raise")
        await a.close()
        await b.close()

    muxer.run(main)


def test_reset(muxer: MuxerHarness) -> None:
    async def main() -> None:
        a, b = muxed_pair(muxer)
        out, inbound = await _open(muxer, a, b)
        await out.reset()

        async def read_until_error() -> BaseException | None:
            try:
                while await inbound.read(65536):
                    pass
            except P2PError as exc:
                return exc
            return None

        err = await within(muxer, read_until_error(), "muxer.reset", "the peer seeing a reset")
        require(
            isinstance(err, StreamReset),
            "muxer.reset",
            f"reading a reset stream must raise StreamReset, got {err!r} (EOF if None)",
        )
        try:
            await out.write(b"x")
        except ConnectionClosed:
            pass
        else:
            require(False, "muxer.reset", "write on a reset stream did not raise")
        # The connection survives a stream reset.
        out2, in2 = await _open(muxer, b, a)
        await out2.write(b"ok")
        got = await within(muxer, in2.read_exactly(2), "muxer.reset", "reading")
        require(got == b"ok", "muxer.reset", "the connection broke with one stream's reset")
        await a.abort()
        await b.abort()

    muxer.run(main)


@pytest.mark.parametrize(
    ("streams", "messages"),
    [(1, 1), (1, 100), (1, 1000), (10, 10), (10, 100), (100, 1), (100, 10), (500, 1)],
)
def test_streams_by_messages_grid(muxer: MuxerHarness, streams: int, messages: int) -> None:
    async def main() -> None:
        a, b = muxed_pair(muxer)

        async def echo_server() -> None:
            async def serve(s: MuxedStream) -> None:
                while chunk := await s.read(65536):
                    await s.write(chunk)
                await s.close_write()

            tasks = []
            for _ in range(streams):
                s = await b.accept_stream()
                tasks.append(asyncio.ensure_future(serve(s)))
            await asyncio.gather(*tasks)

        async def client(i: int) -> None:
            s = await a.open_stream()
            rnd = random.Random(i)
            sent = bytearray()
            # Read the echo while writing: an echo of more than the windows would block.
            echo = asyncio.ensure_future(read_all_bytes(s, muxer, "muxer.grid"))
            for _ in range(messages):
                msg = rnd.randbytes(rnd.randrange(1, 2048))
                sent += msg
                await s.write(msg)
            await s.close_write()
            got = await echo
            require(
                got == sent,
                "muxer.data-integrity",
                f"stream {i} of {streams}: sent {len(sent)} bytes, echoed {len(got)}",
            )

        server = asyncio.ensure_future(echo_server())
        await within(
            muxer,
            asyncio.gather(*(client(i) for i in range(streams))),
            "muxer.grid",
            f"{streams} streams x {messages} messages",
        )
        await within(muxer, server, "muxer.grid", "the server finishing")
        await a.close()
        await b.close()

    muxer.run(main)


def test_flow_control_with_a_clogged_reader(muxer: MuxerHarness) -> None:
    async def main() -> None:
        a, b = muxed_pair(muxer)
        clogged_out, clogged_in = await _open(muxer, a, b)
        big = random.Random(1).randbytes(16 * 1024 * 1024)
        writer = asyncio.ensure_future(clogged_out.write(big))
        await never(
            muxer,
            asyncio.shield(writer),
            "muxer.flow-control",
            "writing 16 MiB to a stream whose reader reads nothing",
        )
        # Another stream is not blocked by the clogged one.
        out, inbound = await _open(muxer, a, b)
        await out.write(b"free")
        got = await within(muxer, inbound.read_exactly(4), "muxer.flow-control", "other stream")
        require(got == b"free", "muxer.flow-control", "a clogged stream blocked another stream")
        # Once the reader reads, everything arrives.
        received = await read_progressing(
            muxer, clogged_in, "muxer.flow-control", "draining", len(big)
        )
        await within(muxer, writer, "muxer.flow-control", "the writer finishing")
        require(received == big, "muxer.data-integrity", "the clogged stream lost data")
        await a.close()
        await b.close()

    muxer.run(main)


def test_close_with_open_streams(muxer: MuxerHarness) -> None:
    async def main() -> None:
        a, b = muxed_pair(muxer)
        out, inbound = await _open(muxer, a, b)
        await out.write(b"last words")
        await within(muxer, a.close(), "muxer.close", "closing the session")
        require(a.is_closed, "muxer.close", "is_closed is False after close()")

        async def drain() -> bytes:
            data = bytearray()
            try:
                while chunk := await inbound.read(65536):
                    data += chunk
            except P2PError:
                pass
            return bytes(data)

        got = await within(muxer, drain(), "muxer.close", "the peer's stream ending")
        require(
            got == b"last words",
            "muxer.close",
            f"data written before close() was lost: the peer read {got!r}",
        )
        try:
            await within(muxer, a.open_stream(), "muxer.close", "open_stream after close")
        except P2PError:
            pass
        else:
            require(False, "muxer.close", "open_stream after close() did not raise")
        try:
            await within(muxer, b.accept_stream(), "muxer.close", "accept_stream on a closed peer")
        except P2PError:
            pass
        else:
            require(False, "muxer.close", "accept_stream returned a stream after the close")
        await within(muxer, b.wait_closed(), "muxer.close", "the peer session closing")

    muxer.run(main)


def test_abort_resets_every_stream(muxer: MuxerHarness) -> None:
    async def main() -> None:
        a, b = muxed_pair(muxer)
        pairs = [await _open(muxer, a, b) for _ in range(3)]
        await a.abort()

        async def ended(s: MuxedStream) -> None:
            try:
                while await s.read(65536):
                    pass
            except P2PError:
                pass

        await within(
            muxer,
            asyncio.gather(*(ended(inbound) for _, inbound in pairs)),
            "muxer.abort",
            "every stream of the peer ending after abort()",
        )
        await within(muxer, b.wait_closed(), "muxer.abort", "the peer session closing")
        for out, _ in pairs:
            try:
                await out.write(b"x")
            except ConnectionClosed:
                pass
            else:
                require(False, "muxer.abort", "write on a stream of an aborted session worked")

    muxer.run(main)


@attrs.frozen
class _Op:
    kind: str  # "open", "write", "close"
    side: int
    index: int
    data: bytes = b""


_ops = st.lists(
    st.one_of(
        st.builds(_Op, st.just("open"), st.integers(0, 1), st.just(0)),
        st.builds(
            _Op,
            st.just("write"),
            st.integers(0, 1),
            st.integers(0, 20),
            st.binary(min_size=1, max_size=3000),
        ),
        st.builds(_Op, st.just("close"), st.integers(0, 1), st.integers(0, 20)),
    ),
    max_size=40,
)


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_ops)
def test_stateful_random_operations(muxer: MuxerHarness, ops: list[_Op]) -> None:
    """Any sequence of opens, writes and half-closes from both sides delivers exactly
    what was written, per stream, in order (checked against a model)."""

    async def main() -> None:
        conns = muxed_pair(muxer)
        streams: list[tuple[MuxedStream, MuxedStream]] = []  # (opener end, acceptor end)
        sent: list[bytearray] = []
        closed: list[bool] = []
        for op in ops:
            if op.kind == "open":
                streams.append(await _open(muxer, conns[op.side], conns[1 - op.side]))
                sent.append(bytearray(b"!"))
                closed.append(False)
            elif streams:
                i = op.index % len(streams)
                if closed[i]:
                    continue
                if op.kind == "write":
                    await within(muxer, streams[i][0].write(op.data), "muxer.write", "a write")
                    sent[i] += op.data
                else:
                    await streams[i][0].close_write()
                    closed[i] = True
        for i, (out, inbound) in enumerate(streams):
            if not closed[i]:
                await out.close_write()
            got = b"!" + await read_all_bytes(inbound, muxer, "muxer.half-close")
            require(
                got == bytes(sent[i]),
                "muxer.data-integrity",
                f"stream {i}: wrote {len(sent[i])} bytes, the peer read {len(got)}",
            )
        for c in conns:
            await c.abort()

    muxer.run(main)


def test_stream_close_gives_the_peer_end_of_stream(muxer: MuxerHarness) -> None:
    async def main() -> None:
        a, b = muxed_pair(muxer)
        out, inbound = await _open(muxer, a, b)
        await out.write(b"done")
        await out.close()
        got = await read_all_bytes(inbound, muxer, "muxer.stream-close")
        require(got == b"done", "muxer.stream-close", f"peer read {got!r} before EOF")
        await a.close()
        await b.close()

    muxer.run(main)


def test_many_streams_opened_at_once_from_both_sides(muxer: MuxerHarness) -> None:
    async def main() -> None:
        a, b = muxed_pair(muxer)
        n = 50

        async def accept_and_echo(conn: MuxedConnection) -> None:
            async def serve(s: MuxedStream) -> None:
                data = await s.read_all()
                await s.write(data)
                await s.close_write()

            tasks = [asyncio.ensure_future(serve(await conn.accept_stream())) for _ in range(n)]
            await asyncio.gather(*tasks)

        async def client(conn: MuxedConnection, i: int) -> None:
            s = await conn.open_stream()
            msg = f"stream {i} from {conn.is_initiator}".encode()
            await s.write(msg)
            await s.close_write()
            got = await read_all_bytes(s, muxer, "muxer.concurrent-open")
            require(got == msg, "muxer.isolation", f"stream {i} got {got!r}, sent {msg!r}")

        await within(
            muxer,
            asyncio.gather(
                accept_and_echo(a),
                accept_and_echo(b),
                *(client(a, i) for i in range(n)),
                *(client(b, i) for i in range(n)),
            ),
            "muxer.concurrent-open",
            f"{n} streams opened at once from each side",
        )
        await a.close()
        await b.close()

    muxer.run(main)


def test_large_transfer_on_one_stream(muxer: MuxerHarness) -> None:
    async def main() -> None:
        a, b = muxed_pair(muxer)
        out, inbound = await _open(muxer, a, b)
        data = random.Random(5).randbytes(8 * 1024 * 1024)
        got = await transfer(muxer, out, [data], inbound, "muxer.large-transfer")
        require(got == data, "muxer.data-integrity", f"sent 8 MiB, received {len(got)} bytes")
        await a.close()
        await b.close()

    muxer.run(main)


@pytest.mark.parametrize("seed", [1, 2])
def test_cancelled_writers_and_readers_on_many_streams(muxer: MuxerHarness, seed: int) -> None:
    """Random cancellations on 8 streams at once never corrupt a stream or the session."""

    async def main() -> None:
        a, b = muxed_pair(muxer)
        pairs = [await _open(muxer, a, b) for _ in range(8)]
        await asyncio.gather(
            *(
                cancelled_writes_arrive_whole(
                    muxer, out, inbound, "muxer.cancellation", seed=seed * 100 + i, writes=6
                )
                for i, (out, inbound) in enumerate(pairs)
            )
        )
        out, inbound = await _open(muxer, b, a)  # the session still works, both ways
        await cancelled_reads_lose_nothing(muxer, out, inbound, "muxer.cancellation")
        await a.close()
        await b.close()

    muxer.run(main)
