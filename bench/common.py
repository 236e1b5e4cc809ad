"""Pieces the benchmarks share: the byte sink protocol, a sink server process, ping timing."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

from switchy.presets import default_node

T = TypeVar("T")

__all__ = [
    "CHUNK",
    "LOOP_ENV",
    "SINK_PROTOCOL",
    "loop_name",
    "ping_round_trips",
    "run",
    "sink_handler",
    "sink_server_process",
    "stream_throughput",
]

#: Environment variable naming the event loop of a benchmark process (``uvloop`` or unset):
#: set by ``python -m bench --loop uvloop`` and inherited by every process a benchmark spawns.
LOOP_ENV: Final = "SWITCHY_BENCH_LOOP"

#: Size of each write in throughput measurements.
CHUNK: Final = 256 * 1024
#: The benchmarks' sink: reads everything, then (optionally) answers the byte count.
SINK_PROTOCOL: Final = "/bench/sink/1.0.0"


def loop_name() -> str:
    """The event loop :func:`run` uses: ``"uvloop"`` or ``"asyncio"``."""
    return "uvloop" if os.environ.get(LOOP_ENV) == "uvloop" else "asyncio"


def run(main: Awaitable[T]) -> T:
    """``asyncio.run(main)`` on the loop :data:`LOOP_ENV` names (uvloop or asyncio's own)."""
    if loop_name() == "uvloop":
        import uvloop

        return uvloop.run(main)  # type: ignore[arg-type]
    return asyncio.run(main)  # type: ignore[arg-type]


def sink_handler(
    on_done: Callable[[int], object] | None = None, *, answer: bool = True
) -> Callable[[Any], Awaitable[None]]:
    """A handler counting the bytes of a stream until its end; with ``answer`` it writes
    the count back and half-closes; ``on_done(count)`` is called last."""

    async def sink(stream: Any) -> None:
        n = 0
        while chunk := await stream.read():
            n += len(chunk)
        if answer:
            await stream.write(str(n).encode())
            await stream.close_write()
        if on_done is not None:
            on_done(n)

    return sink


def sink_server_process(q: Any, listen: str) -> None:
    """Process target: a default node serving one sink stream on ``listen``.

    Puts its full address on ``q``; exits once the stream has been answered.
    """

    async def main() -> None:

        async with default_node(listen=[listen]) as server:
            finished = asyncio.Event()
            server.handle(SINK_PROTOCOL, sink_handler(lambda _n: finished.set()))
            q.put(str(server.full_addrs[0]))
            await finished.wait()

    run(main())


async def ping_round_trips(stream: Any, count: int, size: int = 32) -> list[float]:
    """``count`` round trips of ``size`` random bytes on a ping stream, sorted, in seconds."""
    payload = os.urandom(size)
    rtts = []
    for _ in range(count):
        start = time.perf_counter()
        await stream.write(payload)
        await stream.read_exactly(size)
        rtts.append(time.perf_counter() - start)
    rtts.sort()
    return rtts


#: Where :func:`stream_throughput`'s server listens unless told otherwise.
LOOPBACK_TCP: Final = "/ip4/127.0.0.1/tcp/0"


async def stream_throughput(total: int, listen: str = LOOPBACK_TCP) -> float:
    """Bytes/s written in CHUNK writes on one stream of a default node pair (one process),
    the server listening on ``listen`` (loopback TCP; a QUIC address for QUIC): the raw
    stream anchor."""
    async with default_node(listen=[listen]) as server, default_node() as client:
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        server.handle(SINK_PROTOCOL, sink_handler(done.set_result, answer=False))
        stream = await client.open_stream(server.full_addrs[0], SINK_PROTOCOL)
        data = bytes(CHUNK)
        start = time.perf_counter()
        for _ in range(total // CHUNK):
            await stream.write(data)
        await stream.close_write()
        n = await done
        elapsed = time.perf_counter() - start
        assert n == total
        return total / elapsed
