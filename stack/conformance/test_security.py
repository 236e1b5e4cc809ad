"""Secure-channel contract: handshake, the right remote peer id on both ends, a wrong
expected peer rejected, tampered ciphertext detected, byte-exact transfer of many
chunks with backpressure, half-close, arbitrary chunking.

Needs a ``security_harness`` fixture returning a
:class:`~switchy.stack.conformance.harness.SecurityHarness`.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import HealthCheck, given, settings

from switchy.stack.conformance import strategies
from switchy.stack.conformance._util import (
    cancelled_reads_lose_nothing,
    cancelled_writes_arrive_whole,
    chunks_of,
    never,
    read_progressing,
    require,
    secure_pair,
    split_sizes,
    transfer,
    within,
)
from switchy.stack.conformance.harness import SecurityHarness
from switchy.stack.errors import AuthenticationFailed, P2PError
from switchy.stack.identity import KeyPair
from switchy.stack.pipe import MemoryConnection, memory_pipe
from switchy.stack.stream import Connection


def test_handshake_authenticates_both_peers(security: SecurityHarness) -> None:
    async def main() -> None:
        a, b = memory_pipe()
        sa, sb, ka, kb = await secure_pair(security, raw=(a, b))
        require(
            sa.remote_peer == kb.peer_id,
            "security.peer-id",
            f"initiator sees remote {sa.remote_peer}, expected {kb.peer_id}",
        )
        require(
            sb.remote_peer == ka.peer_id,
            "security.peer-id",
            f"responder sees remote {sb.remote_peer}, expected {ka.peer_id}",
        )
        require(
            sa.local_addr == a.local_addr and sa.remote_addr == a.remote_addr,
            "security.addresses",
            "the secured connection must keep the raw connection's addresses",
        )
        await sa.close()
        await sb.close()

    security.run(main)


def test_wrong_expected_peer_is_rejected(security: SecurityHarness) -> None:
    async def main() -> None:
        a, b = memory_pipe()
        ka, kb, other = KeyPair.generate(), KeyPair.generate(), KeyPair.generate()
        sec_a, sec_b = security.make(), security.make()
        inbound = asyncio.ensure_future(sec_b.secure_inbound(b, kb))
        try:
            await within(
                security,
                sec_a.secure_outbound(a, ka, other.peer_id),
                "security.expected-peer",
                "the handshake ending",
            )
        except AuthenticationFailed:
            pass
        else:
            require(
                False,
                "security.expected-peer",
                "dialing with an expected peer id that is not the remote's succeeded",
            )
        inbound.cancel()
        await asyncio.gather(inbound, return_exceptions=True)

    security.run(main)


class _Tamper(Connection):
    """Forwards to a memory connection; flips a bit of each write once armed."""

    def __init__(self, inner: MemoryConnection) -> None:
        self.inner = inner
        self.local_addr = inner.local_addr
        self.remote_addr = inner.remote_addr
        self.armed = False

    async def read(self, max_bytes: int = -1) -> bytes:
        return await self.inner.read(max_bytes)

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.armed and data:
            b = bytearray(data)
            b[len(b) // 2] ^= 0x01
            data = bytes(b)
        await self.inner.write(data)

    async def close_write(self) -> None:
        await self.inner.close_write()

    async def reset(self) -> None:
        await self.inner.reset()

    async def close(self) -> None:
        await self.inner.close()


def test_tampered_ciphertext_is_detected(security: SecurityHarness) -> None:
    async def main() -> None:
        a, b = memory_pipe()
        tamper = _Tamper(a)
        sa, sb, _, _ = await secure_pair(security, raw=(tamper, b))
        await sa.write(b"genuine")
        got = await within(security, sb.read_exactly(7), "security.integrity", "reading")
        require(got == b"genuine", "security.integrity", f"received {got!r}")
        tamper.armed = True
        await sa.write(b"tampered message")

        async def receive() -> bytes:
            try:
                return await sb.read_exactly(16)
            except P2PError:
                return b""

        got = await within(security, receive(), "security.integrity", "reading")
        require(
            got != b"tampered message" and not got.startswith(b"tamp"),
            "security.integrity",
            f"a flipped ciphertext bit was not detected: the reader got {got!r}",
        )
        await sa.reset()
        await sb.reset()

    security.run(main)


def test_many_chunks_echo_byte_exact_with_backpressure(security: SecurityHarness) -> None:
    async def main() -> None:
        # A small pipe buffer makes the writer wait for the reader (backpressure).
        sa, sb, _, _ = await secure_pair(security, raw=memory_pipe(buffer_size=16 * 1024))
        rnd = random.Random(3)
        data = rnd.randbytes(3 * 1024 * 1024)
        sizes = []
        total = 0
        while total < len(data):
            n = min(rnd.choice([1, 100, 1500, 65536, 300_000]), len(data) - total)
            sizes.append(n)
            total += n

        async def echo() -> None:
            while chunk := await sb.read(100_000):
                await sb.write(chunk)
            await sb.close_write()

        echoer = asyncio.ensure_future(echo())
        chunks = split_sizes(data, sizes)
        got = await transfer(security, sa, chunks, sa, "security.backpressure")
        await within(security, echoer, "security.backpressure", "the echo")
        require(
            got == data,
            "security.data-integrity",
            f"echoed {len(data)} bytes in {len(sizes)} writes, got back {len(got)}",
        )

    security.run(main)


@settings(max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=strategies.messages(max_size=300_000), cuts=strategies.chunkings())
def test_any_chunking_arrives_byte_exact(
    security: SecurityHarness, data: bytes, cuts: list[int]
) -> None:
    async def main() -> None:
        sa, sb, _, _ = await secure_pair(security)
        got = await transfer(security, sa, chunks_of(data, cuts), sb, "security.half-close")
        require(
            got == data,
            "security.data-integrity",
            f"sent {len(data)} bytes, received {len(got)}",
        )

    security.run(main)


def test_writes_block_while_the_peer_does_not_read(security: SecurityHarness) -> None:
    async def main() -> None:
        sa, sb, _, _ = await secure_pair(security, raw=memory_pipe(buffer_size=64 * 1024))
        big = random.Random(4).randbytes(16 * 1024 * 1024)
        writer = asyncio.ensure_future(sa.write(big))
        await never(
            security,
            asyncio.shield(writer),
            "security.backpressure",
            "writing 16 MiB to a peer that reads nothing",
        )
        got = await read_progressing(security, sb, "security.backpressure", "reading", len(big))
        await within(security, writer, "security.backpressure", "the writer finishing")
        require(got == big, "security.data-integrity", "data lost under backpressure")

    security.run(main)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_cancelled_writes_and_reads_keep_the_channel_whole(
    security: SecurityHarness, seed: int
) -> None:
    async def main() -> None:
        # A small pipe buffer: writers wait below the security layer (where a cancelled
        # write could cut a frame).
        sa, sb, _, _ = await secure_pair(security, raw=memory_pipe(buffer_size=16 * 1024))
        await cancelled_writes_arrive_whole(security, sa, sb, "security.cancellation", seed=seed)
        await cancelled_reads_lose_nothing(security, sb, sa, "security.cancellation")

    security.run(main)
