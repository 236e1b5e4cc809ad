"""Same seed → the same event trace (across processes and hash seeds); other seeds differ."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from switchy.transports.sim import SimConfig, SimConnection, SimTransport, Simulation

ROOT = Path(__file__).resolve().parent.parent


async def scenario(sim: Simulation) -> None:
    """Random graph, lossy jittery links, streams, datagrams, faults and two libp2p nodes."""
    from switchy.protocols.ping import PingService, ping
    from switchy.stack.config import NetworkConfig
    from switchy.stack.node import Node

    net = sim.network
    rnd = sim.random
    names = [f"h{i}" for i in range(12)]
    net.add_hosts(names)
    for i in range(1, len(names)):  # a random tree keeps everyone connected
        net.add_link(
            names[i],
            names[rnd.randrange(i)],
            latency=rnd.uniform(0.001, 0.05),
            jitter=0.005,
            loss=0.05,
            duplicate=0.05,
            reorder=0.05,
        )
    for _ in range(6):
        a, b = rnd.sample(names, 2)
        if not net.has_link(a, b):
            net.add_link(a, b, latency=rnd.uniform(0.01, 0.1), loss=0.02, bandwidth=200_000)

    async def echo(conn: SimConnection) -> None:
        await conn.write(await conn.read_all())
        await conn.close()

    for name in names:
        net.listen(name, 7, echo)
        net.host(name).on_restart(lambda h: net.listen(h, 7, echo))

    class Sink(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            pass

    sockets = [net.open_datagram(Sink(), name, 9)[0] for name in names]

    async def stream_client(i: int) -> None:
        a, b = rnd.sample(names, 2)
        conn = await net.connect(a, b, 7)
        payload = sim.entropy(rnd.randrange(1, 20_000))
        await conn.write(payload)
        await conn.close_write()
        assert await conn.read_all() == payload

    async def datagrams() -> None:
        for _ in range(200):
            a, b = rnd.sample(range(len(names)), 2)
            sockets[a].sendto(sim.entropy(rnd.randrange(1, 1200)), (names[b], 9))
            await asyncio.sleep(rnd.expovariate(100))

    config = NetworkConfig(keepalive_interval=15.0)
    nodes = [
        Node(
            transports=[SimTransport(net, h)],
            services=[PingService()],
            config=config,
            entropy=sim.entropy_source(h),
            listen=["/memory/4001"],
        )
        for h in ("h3", "h9")
    ]
    for node in nodes:
        await node.start()
    await asyncio.gather(*(stream_client(i) for i in range(30)), datagrams())
    await ping(nodes[0], nodes[1].full_addrs[0], count=5)
    part = net.partition(names[:6])
    await asyncio.sleep(3)
    net.heal(part)
    net.crash("h5")
    await asyncio.sleep(2)
    net.restart("h5")
    await asyncio.gather(*(stream_client(i) for i in range(10)))
    await asyncio.sleep(60)
    for node in nodes:
        await node.close()


def digest_of(seed: int) -> str:
    """Run :func:`scenario` with ``seed``; return ``<digest> <events>``."""
    with Simulation(seed, config=SimConfig()) as sim:
        sim.run(scenario(sim))
        return f"{sim.trace.digest()} {len(sim.trace)}"


def _digest_in_subprocess(seed: int, hashseed: str) -> str:
    env = dict(os.environ, PYTHONHASHSEED=hashseed)
    code = f"from tests.test_sim_determinism import digest_of; print(digest_of({seed}))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return out.stdout.strip()


def test_same_seed_same_trace_across_processes_and_hash_seeds() -> None:
    here = digest_of(42)
    assert int(here.split()[1]) > 500  # a busy trace
    assert _digest_in_subprocess(42, "0") == here
    assert _digest_in_subprocess(42, "12345") == here


def test_different_seeds_give_different_traces() -> None:
    digests = {digest_of(seed) for seed in (1, 2, 3)}
    assert len(digests) == 3


FAILING = """
import asyncio
from switchy.transports.sim import Simulation, SimConfig
from switchy.transports.sim.simulation import run_simulation
import sys

async def main(sim):
    net = sim.network
    net.add_hosts(["a", "b"])
    net.add_link("a", "b", latency=0.01, loss=0.3, jitter=0.005)
    got = []
    async def handler(conn):
        got.append(await conn.read_all())
    net.listen("b", 1, handler)
    conn = await net.connect("a", "b", 1)
    await conn.write(sim.entropy(5000))
    await conn.close_write()
    await asyncio.sleep(5)
    print("digest", sim.trace.digest(), flush=True)
    raise AssertionError("the scenario found a bug")

seed = None if sys.argv[1] == "none" else int(sys.argv[1])
run_simulation(main, seed=seed, config=SimConfig())
"""


def test_a_failing_simulation_prints_its_seed_and_the_seed_reproduces_it() -> None:
    def run(arg: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", FAILING, arg],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    first = run("none")
    assert first.returncode != 0
    assert "the scenario found a bug" in first.stderr
    match = re.search(r"simulation seed: (\d+)", first.stderr)
    assert match, first.stderr
    again = run(match.group(1))
    assert again.returncode != 0
    assert f"simulation seed: {match.group(1)}" in again.stderr
    assert again.stdout == first.stdout  # the same digest: the same run
    assert first.stdout.startswith("digest ")


def test_run_sets_the_collector_thresholds_and_restores_them_after() -> None:
    import gc

    from switchy.transports.sim.simulation import GC_THRESHOLDS

    before = gc.get_threshold()
    seen: list[tuple[int, int, int]] = []

    async def main() -> None:
        seen.append(gc.get_threshold())
        raise ValueError("boom")

    with Simulation(1) as sim, pytest.raises(ValueError, match="boom"):
        sim.run(main())
    assert seen == [GC_THRESHOLDS]
    assert gc.get_threshold() == before

    async def look() -> None:
        seen.append(gc.get_threshold())

    seen.clear()
    with Simulation(1, gc_thresholds=None) as sim:  # None leaves the collector alone
        sim.run(look())
    assert seen == [before]
