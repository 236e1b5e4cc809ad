"""Shared pieces of the conformance suites: contract checks and connection set-ups."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Awaitable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from multiaddr import Multiaddr

from switchy.stack.codec import encode_uvarint
from switchy.stack.conformance.harness import Harness
from switchy.stack.identity import KeyPair
from switchy.stack.mux import MuxedConnection
from switchy.stack.pipe import memory_pipe

if TYPE_CHECKING:
    from switchy.stack.conformance.harness import (
        MuxerHarness,
        SecurityHarness,
        TransportHarness,
    )
    from switchy.stack.stream import Connection, Stream
    from switchy.stack.transport import Listener, Transport

__all__ = [
    "CANCEL_WRITE_SIZES",
    "ContractViolation",
    "cancelled_reads_lose_nothing",
    "cancelled_writes_arrive_whole",
    "check_whole_writes",
    "harness_fixture",
    "never",
    "read_progressing",
    "require",
    "transfer",
    "within",
]

_T = TypeVar("_T")


class ContractViolation(AssertionError):
    """A part broke a contract of the suite; the message starts with the contract's name."""


def require(condition: object, contract: str, detail: str) -> None:
    """Raise :class:`ContractViolation` ``"<contract>: <detail>"`` unless ``condition``."""
    if not condition:
        raise ContractViolation(f"contract {contract!r} broken: {detail}")


async def within(h: Harness, aw: Awaitable[_T], contract: str, what: str) -> _T:
    """Await ``aw``; a contract violation if it takes longer than the harness's patience."""
    deadline = asyncio.timeout(h.patience)
    try:
        async with deadline:
            return await aw
    except TimeoutError:
        if not deadline.expired():
            raise  # the part's own timeout (e.g. P2PTimeout): the caller judges it
        raise ContractViolation(
            f"contract {contract!r} broken: {what} did not happen within {h.patience} s"
        ) from None


async def never(h: Harness, aw: Awaitable[Any], contract: str, what: str) -> None:
    """A contract violation if ``aw`` completes within the quiet period (it must block)."""
    task = asyncio.ensure_future(aw)
    done, _ = await asyncio.wait([task], timeout=h.quiet_period)
    if done:
        exc = task.exception()
        detail = f"raised {exc!r}" if exc else "completed"
        raise ContractViolation(f"contract {contract!r} broken: {what} {detail}")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


# --- set-ups --------------------------------------------------------------------------------


class TransportPair:
    """Two transports, a listener on one and a dialed connection, as streams.

    For transports that bring their own multiplexing (QUIC), ``dialer`` and
    ``listener`` are the first stream of the connection instead.
    """

    def __init__(self, h: TransportHarness) -> None:
        self.h = h
        self.accepted: asyncio.Queue[Any] = asyncio.Queue()
        self.dial_t: Transport = h.make()
        self.listen_t: Transport = h.make()
        config = h.config()
        self.dial_key = KeyPair.generate()
        self.listen_key = KeyPair.generate()
        self.dial_t.bind(self.dial_key, config)
        self.listen_t.bind(self.listen_key, config)
        self.listener_obj: Listener | None = None
        self.dialer: Stream
        self.listener: Stream
        self.raw_dialer: Connection | MuxedConnection
        self.raw_listener: Connection | MuxedConnection

    async def _on_conn(self, conn: Connection | MuxedConnection) -> None:
        await self.accepted.put(conn)

    async def start(self) -> Multiaddr:
        """Listen; return the address to dial."""
        self.listener_obj = await within(
            self.h,
            self.listen_t.listen(Multiaddr(self.h.listen_addr), self._on_conn),
            "transport.listen",
            f"listening on {self.h.listen_addr}",
        )
        addrs = self.listener_obj.addrs
        require(addrs, "transport.listen", "the listener reports no addresses")
        for addr in addrs:
            require(
                self.dial_t.can_dial(addr),
                "transport.listen",
                f"the transport cannot dial its own listen address {addr}",
            )
        return addrs[0]

    async def connect(self, addr: Multiaddr | None = None) -> tuple[Stream, Stream]:
        """Dial (the first listen address by default) and accept; return the two ends."""
        if addr is None:
            assert self.listener_obj is not None
            addr = self.listener_obj.addrs[0]
        h = self.h
        remote = self.listen_key.peer_id
        dialed = await within(
            h, self.dial_t.dial(addr, remote_peer=remote), "transport.dial", f"dialing {addr}"
        )
        accepted = await within(h, self.accepted.get(), "transport.accept", "accepting a dial")
        self.raw_dialer, self.raw_listener = dialed, accepted
        if isinstance(dialed, MuxedConnection):
            assert isinstance(accepted, MuxedConnection)
            out = await dialed.open_stream()
            await out.write(b"\x00")
            inbound = await within(
                h, accepted.accept_stream(), "transport.accept", "accepting the first stream"
            )
            first = await inbound.read_exactly(1)
            require(first == b"\x00", "transport.accept", "first stream lost its first byte")
            return out, inbound
        return dialed, accepted

    async def open(self) -> tuple[Stream, Stream]:
        """Listen and connect once."""
        await self.start()
        self.dialer, self.listener = await self.connect()
        return self.dialer, self.listener

    async def close(self) -> None:
        """Close the listener and both ends."""
        if self.listener_obj is not None:
            await self.listener_obj.close()
        for end in ("raw_dialer", "raw_listener"):
            conn = getattr(self, end, None)
            if isinstance(conn, MuxedConnection):
                await conn.abort()
            elif conn is not None:
                await conn.reset()


async def secure_pair(
    h: SecurityHarness,
    *,
    expected: KeyPair | None = None,
    raw: tuple[Connection, Connection] | None = None,
) -> tuple[Connection, Connection, KeyPair, KeyPair]:
    """Handshake two ends of a memory pipe (or ``raw``); return both secured ends and keys.

    ``expected`` is the key the initiator expects the responder to have (by
    default the responder's real key).
    """
    a, b = raw if raw is not None else memory_pipe()
    ka, kb = KeyPair.generate(), KeyPair.generate()
    sec_a, sec_b = h.make(), h.make()
    want = (expected or kb).peer_id
    out_task = asyncio.ensure_future(sec_a.secure_outbound(a, ka, want))
    in_task = asyncio.ensure_future(sec_b.secure_inbound(b, kb))
    try:
        async with asyncio.timeout(h.patience):
            sa = await out_task
            sb = await in_task
    except TimeoutError:
        raise ContractViolation(
            f"contract 'security.handshake' broken: no handshake within {h.patience} s"
        ) from None
    finally:
        for t in (out_task, in_task):
            if not t.done():
                t.cancel()
        await asyncio.gather(out_task, in_task, return_exceptions=True)
    return sa, sb, ka, kb


def muxed_pair(h: MuxerHarness) -> tuple[MuxedConnection, MuxedConnection]:
    """A muxer on each end of a memory pipe (must run inside the harness's loop)."""
    a, b = memory_pipe()
    ka, kb = KeyPair.generate(), KeyPair.generate()
    a.local_peer, a.remote_peer = ka.peer_id, kb.peer_id
    b.local_peer, b.remote_peer = kb.peer_id, ka.peer_id
    mux = h.make()
    config = h.config()
    return mux.create(a, is_initiator=True, config=config), mux.create(
        b, is_initiator=False, config=config
    )


async def read_progressing(
    h: Harness, s: Stream, contract: str, what: str, size: int | None = None
) -> bytes:
    """Read ``size`` bytes (``None``: until end of stream) from ``s``.

    The patience applies to each read, not to the whole: a slow or busy machine may
    take as long as it needs while data keeps arriving, and a part that stalls is
    still reported after :attr:`Harness.patience` seconds without a byte.  A stream
    that ends before ``size`` bytes is a violation of ``contract``.
    """
    out = bytearray()
    while size is None or len(out) < size:
        want = 1 << 20 if size is None else min(1 << 20, size - len(out))
        chunk = await within(h, s.read(want), contract, f"{what}: more data after {len(out)} bytes")
        if not chunk:
            if size is None:
                break
            raise ContractViolation(
                f"contract {contract!r} broken: {what}: the stream ended after "
                f"{len(out)} of {size} bytes"
            )
        out += chunk
    return bytes(out)


async def read_all_bytes(s: Stream, h: Harness, contract: str) -> bytes:
    """Everything until EOF (no size limit); each read within the patience."""
    return await read_progressing(h, s, contract, "reading until end of stream")


async def transfer(
    h: Harness, sender: Stream, chunks: Iterable[bytes], reader: Stream, contract: str
) -> bytes:
    """Write ``chunks`` on ``sender`` and close its write side while reading ``reader`` to
    its end (at the same time, so backpressure cannot deadlock); return what was read.

    ``reader`` may be ``sender`` itself (an echo).  Data must keep arriving (each read
    within the patience) and the writer must finish within the patience after the
    reader saw the end, else ``contract`` is reported broken.
    """

    async def send() -> None:
        for chunk in chunks:
            if chunk:
                await sender.write(chunk)
        await sender.close_write()

    writer = asyncio.ensure_future(send())
    try:
        got = await read_all_bytes(reader, h, contract)
    except BaseException:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        raise
    await within(h, writer, contract, "the writer finishing")
    return got


def split_sizes(data: bytes, sizes: Iterable[int]) -> list[bytes]:
    """``data`` cut into consecutive pieces of ``sizes`` bytes."""
    offsets = [0, *itertools.accumulate(sizes)]
    return [data[a:b] for a, b in itertools.pairwise(offsets)]


def chunks_of(data: bytes, cuts: list[int]) -> list[bytes]:
    """Split ``data`` at the positions ``cuts`` (taken modulo its length, sorted)."""
    if not data:
        return []
    points = sorted({c % len(data) for c in cuts} - {0})
    out, prev = [], 0
    for p in points:
        out.append(data[prev:p])
        prev = p
    out.append(data[prev:])
    return out


# --- cancellation ----------------------------------------------------------------------------

#: Sizes of the writes the cancellation contract makes: small, about one frame, several
#: frames, and over a megabyte (the size of the write that once corrupted a connection).
#: At least 16 bytes each, so random contents cannot be mistaken for one another.
CANCEL_WRITE_SIZES = (16, 1500, 65_536, 300_000, 1_115_264)


async def _cancel_at_random(aw: Awaitable[_T], rng: random.Random) -> tuple[bool, _T | None]:
    """Run ``aw``; cancel it at a random point (or let it finish); (was it cancelled, result)."""
    task = asyncio.ensure_future(aw)
    plan = rng.random()
    if plan < 0.35:
        pass  # let it finish
    elif plan < 0.8:
        for _ in range(rng.randrange(0, 8)):  # a few loop turns: inside its first awaits
            if task.done():
                break
            await asyncio.sleep(0)
        task.cancel()
    else:
        await asyncio.wait([task], timeout=rng.choice([0.0005, 0.002, 0.01]))
        task.cancel()
    try:
        return False, await task
    except asyncio.CancelledError:
        if not task.cancelled():
            raise  # we ourselves are being cancelled
        return True, None


def check_whole_writes(
    received: bytes, writes: list[bytes], cancelled: list[bool], contract: str
) -> None:
    """``received`` must be the writes in order, each whole; a cancelled one may be missing."""
    pos = 0
    for i, (data, was_cancelled) in enumerate(zip(writes, cancelled, strict=True)):
        if received.startswith(data, pos):
            pos += len(data)
        else:
            require(
                was_cancelled,
                contract,
                f"write {i} ({len(data)} bytes) completed, but what arrived at offset {pos} "
                f"is not its bytes (a lost, partial or reordered write)",
            )
    require(
        pos == len(received),
        contract,
        f"{len(received) - pos} bytes at offset {pos} belong to no whole write "
        f"(a cancelled write left part of itself; {sum(cancelled)} of {len(writes)} "
        f"writes were cancelled)",
    )


async def cancelled_writes_arrive_whole(
    h: Harness, writer: Stream, reader: Stream, contract: str, *, seed: int, writes: int = 12
) -> None:
    """The cancellation contract on one stream.

    Writes of :data:`CANCEL_WRITE_SIZES` are cancelled at random points while the reading
    side's reads are cancelled at random too; every completed write must arrive whole and
    in order, every cancelled one whole or not at all, and a cancelled read takes nothing.
    ``reader`` may be ``writer`` itself (an echo).
    """
    rng = random.Random(seed)
    chunks = [rng.randbytes(rng.choice(CANCEL_WRITE_SIZES)) for _ in range(writes)]
    cancelled: list[bool] = []

    async def read_side() -> bytes:
        read_rng = random.Random(seed + 1)
        out = bytearray()
        while True:
            n = read_rng.choice([1, 100, 65_536, 1 << 20])
            was_cancelled, chunk = await _cancel_at_random(reader.read(n), read_rng)
            if was_cancelled:
                continue
            if not chunk:
                return bytes(out)
            out += chunk

    async def write_side() -> None:
        for chunk in chunks:
            was_cancelled, _ = await _cancel_at_random(writer.write(chunk), rng)
            cancelled.append(was_cancelled)
        await writer.close_write()

    reading = asyncio.ensure_future(read_side())
    try:
        await within(h, write_side(), contract, "writing with cancellations")
        received = await within(h, reading, contract, "reading to the end of stream")
    finally:
        reading.cancel()
    check_whole_writes(received, chunks, cancelled, contract)


async def cancelled_reads_lose_nothing(
    h: Harness, writer: Stream, reader: Stream, contract: str
) -> None:
    """A ``recv_message``/``read_exactly`` cancelled half-way puts back what it had taken."""
    message = random.Random(9).randbytes(40_000)
    framed = encode_uvarint(len(message)) + message
    await writer.write(framed[:20_000])
    # The reader takes the first half and waits for the rest: cancel it there.
    waiting = asyncio.ensure_future(reader.recv_message(max_size=1 << 20))
    await asyncio.wait([waiting], timeout=h.quiet_period)
    require(not waiting.done(), contract, "recv_message returned with half a message")
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    await writer.write(framed[20_000:])
    got = await within(h, reader.recv_message(max_size=1 << 20), contract, "recv_message again")
    require(got == message, contract, f"a cancelled recv_message lost bytes ({len(got)} back)")
    exact = asyncio.ensure_future(reader.read_exactly(100))
    await writer.write(b"x" * 60)
    await asyncio.wait([exact], timeout=h.quiet_period)
    exact.cancel()
    await asyncio.gather(exact, return_exceptions=True)
    await writer.write(b"y" * 40)
    again = await within(h, reader.read_exactly(100), contract, "read_exactly again")
    require(again == b"x" * 60 + b"y" * 40, contract, "a cancelled read_exactly lost bytes")


def harness_fixture(fixture: str, kind: type, name: str, what: str) -> Any:
    """A fixture ``name`` returning the ``kind`` harness of the user's ``fixture``."""

    def lookup(request: pytest.FixtureRequest) -> Harness:
        try:
            harness = request.getfixturevalue(fixture)
        except pytest.FixtureLookupError:
            pytest.skip(
                f"no {fixture!r} fixture: give one returning a {kind.__name__} to run this suite"
            )
        if not isinstance(harness, kind) or not isinstance(harness, Harness):
            raise TypeError(f"fixture {fixture!r} must return a {kind.__name__}, got {harness!r}")
        return harness

    lookup.__doc__ = f"{what} (from your ``{fixture}`` fixture)."
    return pytest.fixture(name=name)(lookup)
