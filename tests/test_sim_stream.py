"""Simulated byte streams: latency, loss, bandwidth, partitions, crashes, Stream contract."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from switchy.stack.errors import (
    ConnectionClosed,
    ConnectionFailed,
    NoRoute,
    P2PTimeout,
    StreamReset,
)
from switchy.transports.sim import SimConfig, SimConnection, Simulation, run_simulation

QUIET = SimConfig(default_packet_loss=0.0)
T = TypeVar("T")


def sim_run(
    main: Callable[[Simulation], Awaitable[T]], *, seed: int = 1, config: SimConfig = QUIET
) -> T:
    async def wrapper(sim: Simulation) -> T:
        return await main(sim)

    return run_simulation(wrapper, seed=seed, config=config)


async def pair(
    sim: Simulation, src: str, dst: str, **kw: Any
) -> tuple[SimConnection, SimConnection]:
    """A connected (client, server) pair from ``src`` to ``dst`` (port 80, or a new port)."""
    accepted: asyncio.Queue[SimConnection] = asyncio.Queue()

    async def handler(conn: SimConnection) -> None:
        await accepted.put(conn)

    port = 80 if 80 not in sim.network.host(dst)._listeners else 0
    listener = sim.network.listen(dst, port, handler, **kw)
    client = await sim.network.connect(src, dst, listener.port, **kw)
    server = await accepted.get()
    return client, server


def line(sim: Simulation, *latencies: float, **link: Any) -> list[str]:
    """Hosts h0..hN in a line, joined by links of the given latencies."""
    names = [f"h{i}" for i in range(len(latencies) + 1)]
    sim.network.add_hosts(names)
    for i, lat in enumerate(latencies):
        sim.network.add_link(names[i], names[i + 1], latency=lat, **link)
    return names


def test_latency_over_a_two_hop_path() -> None:
    async def main(sim: Simulation) -> None:
        line(sim, 0.010, 0.030)
        assert sim.network.find_path("h0", "h2") == ["h0", "h1", "h2"]
        start = sim.now
        client, server = await pair(sim, "h0", "h2")
        assert sim.now - start == pytest.approx(0.080)  # one round trip
        start = sim.now
        await client.write(b"ping")
        assert await server.read() == b"ping"
        assert sim.now - start == pytest.approx(0.040)  # one way
        start = sim.now
        await server.write(b"pong")
        assert await client.read() == b"pong"
        assert sim.now - start == pytest.approx(0.040)
        assert str(client.remote_addr) == "/memory/300080"
        assert client.local_addr == server.remote_addr
        # Counters of hosts and links.
        assert sim.network.host("h0").counters.bytes_sent == 4
        assert sim.network.host("h2").counters.bytes_received == 4
        assert sim.network.link("h1", "h2").counters.bytes >= 4
        kinds = [e.kind for e in sim.trace.events]
        for kind in ("connect", "accept", "established", "send", "deliver"):
            assert kind in kinds

    sim_run(main)


def test_loss_delays_but_never_loses_data() -> None:
    payload = bytes(range(256)) * 1024  # 256 KiB

    async def transfer(sim: Simulation) -> float:
        client, server = await pair(sim, "h0", "h1")
        start = sim.now
        writer = asyncio.ensure_future(client.write(payload))
        got = await server.read_exactly(len(payload))
        await writer
        assert got == payload
        return sim.now - start

    def run(loss: float) -> tuple[float, int]:
        async def main(sim: Simulation) -> tuple[float, int]:
            line(sim, 0.05, loss=loss)
            took = await transfer(sim)
            retx = len(sim.trace.of_kind("retransmit"))
            return took, retx

        return sim_run(main, seed=7)

    clean, clean_retx = run(0.0)
    lossy, lossy_retx = run(0.3)
    assert clean == pytest.approx(0.05)
    assert clean_retx == 0
    assert lossy_retx > 0
    assert lossy > clean + 0.2  # at least one retransmission timeout


def test_bandwidth_makes_delivery_take_size_over_bandwidth() -> None:
    async def main(sim: Simulation) -> None:
        line(sim, 0.01, bandwidth=100_000)  # 100 kB/s
        client, server = await pair(sim, "h0", "h1")
        size = 500_000
        start = sim.now
        writer = asyncio.ensure_future(client.write(bytes(size)))
        got = await server.read_exactly(size)
        await writer
        assert len(got) == size
        assert sim.now - start == pytest.approx(size / 100_000 + 0.01, rel=0.02)

    sim_run(main)


def test_jitter_never_reorders_a_stream() -> None:
    async def main(sim: Simulation) -> None:
        line(sim, 0.05, jitter=0.049)
        client, server = await pair(sim, "h0", "h1")
        for i in range(200):
            await client.write(i.to_bytes(2, "big"))
        await client.close_write()
        data = await server.read_all()
        assert [int.from_bytes(data[i : i + 2], "big") for i in range(0, 400, 2)] == list(
            range(200)
        )

    sim_run(main, seed=11)


def test_no_route_refused_and_partitioned_connects() -> None:
    async def main(sim: Simulation) -> None:
        net = sim.network
        line(sim, 0.02)
        net.add_host("island")
        with pytest.raises(NoRoute, match="no route from h0 to island"):
            await net.connect("h0", "island", 80)
        start = sim.now
        with pytest.raises(ConnectionFailed, match="nothing listens on h1:81"):
            await net.connect("h0", "h1", 81)
        assert sim.now - start == pytest.approx(0.04)
        net.listen("h1", 80, lambda conn: conn.close())
        net.partition(["h0"], ["h1"])
        start = sim.now
        with pytest.raises(P2PTimeout, match="timed out after 30s"):
            await net.connect("h0", "h1", 80)
        assert sim.now - start == pytest.approx(30.0)
        start = sim.now
        with pytest.raises(P2PTimeout, match="after 5s"):
            await net.connect("h0", "h1", 80, timeout=5)
        assert sim.now - start == pytest.approx(5.0)
        net.heal()
        conn = await net.connect("h0", "h1", 80)
        assert await conn.read() == b""

    sim_run(main)


def test_a_partition_outlasting_the_timeout_breaks_the_connection() -> None:
    async def main(sim: Simulation) -> None:
        line(sim, 0.02)
        client, server = await pair(sim, "h0", "h1")
        sim.network.partition(["h0"], ["h1"])
        start = sim.now
        await client.write(b"lost in the partition")
        with pytest.raises(StreamReset, match="nothing got through for 30s"):
            await server.read()
        assert sim.now - start == pytest.approx(30.0)
        with pytest.raises(StreamReset):
            await client.read()
        with pytest.raises(StreamReset):
            await client.write(b"x")
        assert sim.trace.of_kind("timeout")

    sim_run(main)


def test_a_short_partition_only_delays() -> None:
    async def main(sim: Simulation) -> None:
        line(sim, 0.02)
        client, server = await pair(sim, "h0", "h1")
        part = sim.network.partition(["h0"], ["h1"])
        start = sim.now
        await client.write(b"a")
        await client.write(b"b")

        async def heal_later() -> None:
            await asyncio.sleep(5)
            sim.network.heal(part)

        healer = asyncio.ensure_future(heal_later())
        assert await server.read_exactly(2) == b"ab"
        await healer
        elapsed = sim.now - start
        assert 5.0 < elapsed < 15.0  # waits for the next retransmission after the heal

    sim_run(main)


def test_link_down_with_an_alternative_route_reroutes() -> None:
    async def main(sim: Simulation) -> None:
        net = sim.network
        net.add_hosts(["a", "b", "c"])
        net.add_link("a", "b", latency=0.01)
        net.add_link("a", "c", latency=0.05)
        net.add_link("c", "b", latency=0.05)
        client, server = await pair(sim, "a", "b")
        net.link_down("a", "b")
        start = sim.now
        await client.write(b"detour")
        assert await server.read() == b"detour"
        assert sim.now - start == pytest.approx(0.10)

    sim_run(main)


def test_hold_and_release() -> None:
    async def main(sim: Simulation) -> None:
        line(sim, 0.01)
        client, server = await pair(sim, "h0", "h1")
        sim.network.hold("h0", "h1")
        await client.write(b"held")
        reader = asyncio.ensure_future(server.read())
        await asyncio.sleep(120)  # longer than the timeout: holds never time out
        assert not reader.done()
        sim.network.release("h0", "h1")
        start = sim.now
        assert await reader == b"held"
        assert sim.now - start == pytest.approx(0.01)
        # The other direction was not held.
        await server.write(b"back")
        assert await client.read() == b"back"

    sim_run(main)


def test_crash_resets_local_endpoints_and_restart_answers_with_reset() -> None:
    async def main(sim: Simulation) -> None:
        net = sim.network
        line(sim, 0.02)
        client, server = await pair(sim, "h0", "h1")
        net.crash("h1")
        with pytest.raises(StreamReset, match="host h1 crashed"):
            await server.read()
        assert not net.host("h1").connections
        # The listener is gone with the crash.
        await client.write(b"anyone?")
        await asyncio.sleep(3)
        net.restart("h1")
        with pytest.raises(StreamReset, match="restarted"):
            await client.read()
        with pytest.raises(ConnectionFailed, match="nothing listens"):
            await net.connect("h0", "h1", 80)

    sim_run(main)


def test_crash_without_restart_times_the_connection_out() -> None:
    async def main(sim: Simulation) -> None:
        line(sim, 0.02)
        client, _server = await pair(sim, "h0", "h1")
        sim.network.crash("h1")
        start = sim.now
        await client.write(b"into the void")
        with pytest.raises(StreamReset, match="dst_down"):
            await client.read()
        assert sim.now - start == pytest.approx(30.0, abs=0.1)
        with pytest.raises(ConnectionFailed, match="it is down"):
            await sim.network.connect("h1", "h0", 80)

    sim_run(main)


def test_stream_contract_half_close_reset_close() -> None:
    async def main(sim: Simulation) -> None:
        line(sim, 0.01)
        client, server = await pair(sim, "h0", "h1")
        await client.write(b"hello")
        await client.close_write()
        await client.close_write()  # idempotent
        with pytest.raises(ConnectionClosed):
            await client.write(b"late")
        assert await server.read_all() == b"hello"
        assert await server.read() == b""
        await server.write(b"reply")
        assert await client.read(2) == b"re"
        assert await client.read(-1) == b"ply"
        await server.reset()
        with pytest.raises(StreamReset):
            await server.read()
        with pytest.raises(StreamReset, match="reset by the peer"):
            await client.read()
        assert client.is_closed and server.is_closed

        # Data written to an endpoint that closed is answered with a reset.
        c2, s2 = await pair(sim, "h0", "h1")
        await s2.close()
        assert await s2.read() == b""
        assert await c2.read() == b""  # the FIN
        await c2.write(b"too late")
        await asyncio.sleep(1)
        with pytest.raises(StreamReset):
            await c2.write(b"again")

    sim_run(main)


def test_write_backpressure_blocks_until_the_peer_reads() -> None:
    async def main(sim: Simulation) -> None:
        line(sim, 0.01)
        client, server = await pair(sim, "h0", "h1", window=1000)
        await client.write(b"x" * 1000)
        blocked = asyncio.ensure_future(client.write(b"y"))
        await asyncio.sleep(10)
        assert not blocked.done()
        assert await server.read(10) == b"x" * 10
        await blocked
        rest = await server.read_exactly(991)
        assert rest == b"x" * 990 + b"y"
        # A reset wakes a blocked writer with an error.
        await client.write(b"z" * 1000)
        blocked = asyncio.ensure_future(client.write(b"w"))
        await asyncio.sleep(1)
        await server.reset()
        with pytest.raises(StreamReset):
            await blocked

    sim_run(main)


@settings(max_examples=100, deadline=None)
@given(
    chunks=st.lists(st.binary(min_size=0, max_size=3000), min_size=0, max_size=25),
    reads=st.lists(st.integers(min_value=1, max_value=5000), min_size=1, max_size=10),
    loss=st.sampled_from([0.0, 0.2]),
    jitter=st.sampled_from([0.0, 0.02]),
    bandwidth=st.sampled_from([None, 50_000.0]),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_any_chunking_delivers_the_same_bytes_in_order(
    chunks: list[bytes],
    reads: list[int],
    loss: float,
    jitter: float,
    bandwidth: float | None,
    seed: int,
) -> None:
    expected = b"".join(chunks)

    async def main(sim: Simulation) -> bytes:
        line(sim, 0.01, 0.02, loss=loss, jitter=jitter, bandwidth=bandwidth)
        client, server = await pair(sim, "h0", "h2", window=4096)

        async def writer() -> None:
            for c in chunks:
                await client.write(bytearray(c) if len(c) % 2 else c)
            await client.close_write()

        task = asyncio.ensure_future(writer())
        got = bytearray()
        i = 0
        while True:
            data = await server.read(reads[i % len(reads)])
            i += 1
            if not data:
                break
            assert len(data) <= reads[(i - 1) % len(reads)]
            got += data
        await task
        return bytes(got)

    assert sim_run(main, seed=seed) == expected


def test_a_200_host_graph_with_many_streams_runs_fast() -> None:
    async def main(sim: Simulation) -> int:
        net = sim.network
        names = [f"n{i}" for i in range(200)]
        net.add_hosts(names)
        net.add_host("core")
        for i, name in enumerate(names):
            net.add_link(name, "core", latency=0.002 + (i % 7) * 0.001, loss=0.01)
        for i in range(0, 200, 10):
            net.add_link(names[i], names[(i + 10) % 200], latency=0.001)
        total = 0

        async def echo(conn: SimConnection) -> None:
            nonlocal total
            data = await conn.read_all()
            total += len(data)
            await conn.write(data)
            await conn.close()

        for name in names:
            net.listen(name, 7, echo)

        async def one(i: int) -> None:
            a, b = sim.random.sample(names, 2)
            conn = await net.connect(a, b, 7)
            payload = i.to_bytes(4, "big") * 1000
            await conn.write(payload)
            await conn.close_write()
            assert await conn.read_all() == payload

        await asyncio.gather(*(one(i) for i in range(600)))
        return total

    assert sim_run(main, config=SimConfig()) == 600 * 4000


def test_total_loss_breaks_an_open_connection_after_the_timeout() -> None:
    async def main(sim: Simulation) -> None:
        line(sim, 0.01)
        client, server = await pair(sim, "h0", "h1")
        sim.network.update_link("h0", "h1", loss=1.0)
        start = sim.now
        await client.write(b"never arrives")
        with pytest.raises(StreamReset, match="loss"):
            await server.read()
        assert sim.now - start == pytest.approx(30.0, abs=0.5)

    sim_run(main)


def test_one_way_partition_blocks_one_direction_only() -> None:
    async def main(sim: Simulation) -> None:
        line(sim, 0.01)
        client, server = await pair(sim, "h0", "h1")
        sim.network.partition(["h1"], ["h0"], one_way=True)
        await client.write(b"still flows")
        assert await server.read() == b"still flows"
        await server.write(b"stuck")
        with pytest.raises(StreamReset, match="partitioned"):
            await client.read()

    sim_run(main, config=SimConfig(default_packet_loss=0.0, connection_timeout_secs=5))


def test_listen_errors() -> None:
    async def main(sim: Simulation) -> None:
        net = sim.network
        line(sim, 0.01)
        net.listen("h1", 80, lambda c: c.close())
        with pytest.raises(ConnectionFailed, match="already in use"):
            net.listen("h1", 80, lambda c: c.close())
        net.crash("h0")
        with pytest.raises(ConnectionFailed, match="it is down"):
            net.listen("h0", 80, lambda c: c.close())
        from switchy.stack.errors import InvalidConfiguration

        with pytest.raises(InvalidConfiguration, match="port must be"):
            net.listen("h1", 70000, lambda c: c.close())
        with pytest.raises(InvalidConfiguration, match="port must be"):
            await net.connect("h1", "h1", 0)

    sim_run(main)


def test_loopback_connection_on_one_host() -> None:
    async def main(sim: Simulation) -> None:
        sim.network.add_host("solo")
        client, server = await pair(sim, "solo", "solo")
        await client.write(b"self")
        assert await server.read() == b"self"
        assert sim.now == 0.0

    sim_run(main)


def test_handler_errors_reset_the_connection() -> None:
    async def main(sim: Simulation) -> None:
        line(sim, 0.01)

        async def broken(conn: SimConnection) -> None:
            raise RuntimeError("handler bug")

        sim.network.listen("h1", 80, broken)
        conn = await sim.network.connect("h0", "h1", 80)
        with pytest.raises(StreamReset):
            await conn.read()

    sim_run(main)
