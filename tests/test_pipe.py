"""The in-memory connection pair honours the Stream contract."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from switchy.stack.errors import ConnectionClosed, StreamReset
from switchy.stack.pipe import memory_pipe


def test_round_trip_half_close_and_reset() -> None:
    async def main() -> None:
        a, b = memory_pipe()
        await a.write(b"hello")
        await a.close_write()
        assert await b.read_all() == b"hello"
        with pytest.raises(ConnectionClosed):
            await a.write(b"x")
        await b.write(b"back")
        assert await a.read(2) == b"ba"
        assert await a.read() == b"ck"
        await b.reset()
        with pytest.raises(StreamReset):
            await a.read()

    asyncio.run(main())


def test_backpressure() -> None:
    async def main() -> None:
        a, b = memory_pipe(buffer_size=1000)
        await a.write(b"x" * 1000)
        blocked = asyncio.ensure_future(a.write(b"y"))
        await asyncio.sleep(0)
        assert not blocked.done()
        assert await b.read(10) == b"x" * 10
        await blocked
        await a.close_write()
        assert await b.read_all() == b"x" * 990 + b"y"

    asyncio.run(main())


@given(st.lists(st.binary(max_size=300), max_size=20), st.lists(st.integers(1, 500), min_size=1))
def test_any_chunking_preserves_bytes(chunks: list[bytes], reads: list[int]) -> None:
    async def main() -> bytes:
        a, b = memory_pipe(buffer_size=64)

        async def send() -> None:
            for c in chunks:
                await a.write(c)
            await a.close_write()

        task = asyncio.ensure_future(send())
        got = bytearray()
        i = 0
        while data := await b.read(reads[i % len(reads)]):
            assert len(data) <= reads[i % len(reads)]
            got += data
            i += 1
        await task
        return bytes(got)

    assert asyncio.run(main()) == b"".join(chunks)
