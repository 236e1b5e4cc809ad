"""Shared pieces of the conformance suites: contract checks and connection set-ups."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from multiaddr import Multiaddr

from switchy.stack.identity import KeyPair
from switchy.stack.mux import MuxedConnection
from switchy.stack.pipe import memory_pipe

if TYPE_CHECKING:
    from switchy.stack.conformance.harness import (
        Harness,
        MuxerHarness,
        SecurityHarness,
        TransportHarness,
    )
    from switchy.stack.stream import Connection, Stream
    from switchy.stack.transport import Listener, Transport

__all__ = ["ContractViolation", "never", "read_progressing", "require", "transfer", "within"]

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
