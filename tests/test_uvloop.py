"""The stack on every event loop it supports: asyncio's own and uvloop (the ``uvloop`` extra).

Each test runs on a fresh loop of each kind, over TCP (Noise + yamux) and QUIC on
loopback: ping, echo, many concurrent streams, a small perf transfer and a muxer
ping.  uvloop is skipped only where it is not installed (``tests/run.sh`` installs
the extra, so CI runs it).  Round trips are checked for sub-millisecond resolution:
uvloop's ``loop.time()`` has 1 ms resolution, so a round trip timed with it reads
0 or 1000 µs.
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from switchy.presets import default_node
from switchy.protocols.echo import echo
from switchy.protocols.perf import perf
from switchy.protocols.ping import ping
from switchy.stack.metrics import measure_clock
from switchy.stack.mux.yamux import YamuxConnection
from switchy.transports.quic import QuicConnection
from switchy.transports.sim import Simulation

LoopFactory = Callable[[], asyncio.AbstractEventLoop]

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None


def _uvloop_factory() -> asyncio.AbstractEventLoop:
    import uvloop

    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


LOOPS = [
    pytest.param(asyncio.new_event_loop, id="asyncio"),
    pytest.param(
        _uvloop_factory,
        id="uvloop",
        marks=pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed"),
    ),
]
ADDRS = [
    pytest.param("/ip4/127.0.0.1/tcp/0", id="tcp"),
    pytest.param("/ip4/127.0.0.1/udp/0/quic-v1", id="quic"),
]


def run_on(factory: LoopFactory, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``main()`` on a fresh loop made by ``factory``, bounded to 60 s."""

    async def bounded() -> None:
        async with asyncio.timeout(60):
            await main()

    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(bounded())


def _sub_millisecond(seconds: float) -> bool:
    """Whether ``seconds`` is not a whole number of milliseconds (a 1 ms clock's reading)."""
    ms = seconds * 1e3
    return abs(ms - round(ms)) > 1e-6


@pytest.mark.parametrize("listen", ADDRS)
@pytest.mark.parametrize("factory", LOOPS)
def test_ping_echo_streams_and_perf(factory: LoopFactory, listen: str) -> None:
    async def main() -> None:
        async with default_node(listen=[listen]) as b, default_node() as a:
            addr = b.full_addrs[0]
            rtts = await ping(a, addr, count=10)
            assert len(rtts) == 10 and all(r > 0 for r in rtts)
            assert any(_sub_millisecond(r) for r in rtts), rtts
            assert await echo(a, b.peer_id, b"x" * 100_000) == b"x" * 100_000
            answers = await asyncio.gather(
                *(echo(a, b.peer_id, f"stream {i}".encode()) for i in range(50))
            )
            assert answers == [f"stream {i}".encode() for i in range(50)]
            (conn,) = a.connections(b.peer_id)
            assert isinstance(conn, YamuxConnection | QuicConnection)
            result = await perf(a, b.peer_id, 1_000_000, 2_000_000)
            assert (result.upload_bytes, result.download_bytes) == (1_000_000, 2_000_000)
            assert result.upload_seconds > 0 and result.download_seconds > 0
            muxer_rtt = await conn.ping(timeout=30)
            assert muxer_rtt > 0 and _sub_millisecond(muxer_rtt), muxer_rtt
            assert conn.stats.latency_samples == 11
            assert a.connections(b.peer_id) == [conn]  # every stream on one connection

    run_on(factory, main)


@pytest.mark.parametrize("factory", LOOPS)
def test_measure_clock_is_perf_counter_on_a_real_loop(factory: LoopFactory) -> None:
    async def main() -> None:
        assert measure_clock() is time.perf_counter

    run_on(factory, main)
    assert measure_clock() is time.perf_counter  # no loop running


def test_measure_clock_is_virtual_under_the_simulator() -> None:
    sim = Simulation(seed=1)

    async def main() -> None:
        clock = measure_clock()
        start = clock()
        await asyncio.sleep(3600)
        assert clock() - start == 3600  # virtual: an hour passed at once

    sim.run(main())
