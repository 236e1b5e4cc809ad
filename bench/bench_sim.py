"""Simulator benchmarks; prints one JSON object.

Scenarios (wall-clock seconds, virtual seconds and event counts are reported):

- ``mesh``: N nodes (default 1000) on a star network, each dialing 5 random
  peers over SimTransport + Noise + yamux and pinging each 10 times
  (goal: <= 30 s wall for 1000 nodes);
- ``keepalive``: 50 nodes, each connected to 4 peers, one hour of virtual time
  with yamux keep-alive pings every 30 s (goal: <= 10 s wall);
- ``streams``: 200 hosts, 1000 raw sim stream connections each carrying 64 KiB
  (the link model alone, without Noise/yamux);
- ``sleep``: one hour of ``asyncio.sleep(1)`` steps (the loop's per-timer cost).

Usage: ``python -m bench.bench_sim [--quick] [--nodes N] [--only NAME]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from switchy.stack.config import NetworkConfig
from switchy.transports.sim import SimConfig, SimTransport, Simulation

HUB = "hub"


def _star(sim: Simulation, n: int, *, latency: float = 0.005, loss: float = 0.0) -> list[str]:
    net = sim.network
    net.add_host(HUB)
    names = [f"h{i}" for i in range(n)]
    for name in names:
        net.add_host(name)
        net.add_link(name, HUB, latency=latency, loss=loss)
    return names


def _node(sim: Simulation, host: str, config: NetworkConfig) -> Any:
    from switchy.protocols.ping import PingService
    from switchy.stack.node import Node

    return Node(
        transports=[SimTransport(sim.network, host)],
        services=[PingService()],
        config=config,
        entropy=sim.entropy_source(host),
        listen=["/memory/4001"],
    )


def bench_mesh(nodes: int, peers: int = 5, pings: int = 10, seed: int = 1) -> dict[str, Any]:
    """N nodes each dialing ``peers`` random others and pinging each ``pings`` times."""
    from switchy.protocols.ping import ping

    config = NetworkConfig(keepalive_interval=0)
    sim = Simulation(seed, config=SimConfig(default_packet_loss=0.0), trace=False)
    failures = 0
    rounds = 0

    async def main() -> None:
        nonlocal failures, rounds
        names = _star(sim, nodes)
        all_nodes = [_node(sim, h, config) for h in names]
        for node in all_nodes:
            await node.start()
        addrs = [node.full_addrs[0] for node in all_nodes]

        async def run_one(i: int) -> None:
            nonlocal failures, rounds
            # ``peers`` others than i, drawn without building a list of every node
            targets = [j + (j >= i) for j in sim.random.sample(range(nodes - 1), peers)]
            for j in targets:
                try:
                    await ping(all_nodes[i], addrs[j], count=pings)
                    rounds += 1
                except Exception:
                    failures += 1

        await asyncio.gather(*(run_one(i) for i in range(nodes)))
        for node in all_nodes:
            await node.close()

    start = time.perf_counter()
    with sim:
        sim.run(main())
        virtual = sim.now
        packets = sum(link.counters.packets for link in sim.network.links)
    wall = time.perf_counter() - start
    return {
        "nodes": nodes,
        "link_packets": packets,
        "packets_per_wall_s": round(packets / wall),
        "virtual_per_wall": round(virtual / wall, 3),
        "peers_each": peers,
        "pings_each": pings,
        "ping_sessions_ok": rounds,
        "failures": failures,
        "wall_s": round(wall, 3),
        "virtual_s": round(virtual, 3),
        "goal_wall_s": 30.0 if nodes >= 1000 else None,
    }


def bench_keepalive(nodes: int = 50, hours: float = 1.0, seed: int = 1) -> dict[str, Any]:
    """Nodes connected in a ring of 4 peers each, idling with yamux keep-alives."""
    config = NetworkConfig(keepalive_interval=30.0)
    sim = Simulation(seed, config=SimConfig(), trace=False)

    async def main() -> int:
        names = _star(sim, nodes, latency=0.01, loss=0.01)
        all_nodes = [_node(sim, h, config) for h in names]
        for node in all_nodes:
            await node.start()
        for i, node in enumerate(all_nodes):
            for k in (1, 2):
                peer = all_nodes[(i + k) % nodes]
                await node.connect(peer.full_addrs[0])
        await asyncio.sleep(hours * 3600)
        conns = sum(len(n.connections()) for n in all_nodes)
        for node in all_nodes:
            await node.close()
        return conns

    start = time.perf_counter()
    with sim:
        conns = sim.run(main())
        virtual = sim.now
        packets = sum(link.counters.packets for link in sim.network.links)
    wall = time.perf_counter() - start
    return {
        "nodes": nodes,
        "virtual_s": round(virtual, 3),
        "virtual_per_wall": round(virtual / wall, 1),
        "connections_alive_at_end": conns,
        "link_packets": packets,
        "wall_s": round(wall, 3),
        "goal_wall_s": 10.0,
    }


def bench_streams(hosts: int = 200, conns: int = 1000, size: int = 64 * 1024) -> dict[str, Any]:
    """Raw sim streams: ``conns`` connections between random hosts, ``size`` bytes each."""
    sim = Simulation(1, config=SimConfig(default_packet_loss=0.01), trace=True)

    async def main() -> int:
        names = _star(sim, hosts, latency=0.002, loss=0.01)
        net = sim.network
        received = 0

        async def sink(conn: Any) -> None:
            nonlocal received
            data = await conn.read_all(size * 2)
            received += len(data)
            await conn.close()

        for h in names:
            net.listen(h, 80, sink)
        payload = bytes(size)

        async def one(i: int) -> None:
            a, b = sim.random.sample(names, 2)
            conn = await net.connect(a, b, 80)
            await conn.write(payload)
            await conn.close_write()
            await conn.read()
            await conn.close()

        await asyncio.gather(*(one(i) for i in range(conns)))
        return received

    start = time.perf_counter()
    with sim:
        received = sim.run(main())
        events = len(sim.trace)
        virtual = sim.now
    wall = time.perf_counter() - start
    return {
        "hosts": hosts,
        "connections": conns,
        "bytes_received": received,
        "trace_events": events,
        "virtual_s": round(virtual, 3),
        "wall_s": round(wall, 3),
        "events_per_s": round(events / wall) if wall else None,
    }


def bench_sleep(seconds: int = 3600) -> dict[str, Any]:
    """``seconds`` iterations of ``asyncio.sleep(1)``: the loop's cost per timer."""
    sim = Simulation(1, config=SimConfig(), trace=False)

    async def main() -> None:
        for _ in range(seconds):
            await asyncio.sleep(1)

    start = time.perf_counter()
    with sim:
        sim.run(main())
        virtual = sim.now
    wall = time.perf_counter() - start
    return {
        "timers": seconds,
        "virtual_s": virtual,
        "wall_s": round(wall, 4),
        "us_per_timer": round(wall / seconds * 1e6, 2),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks and print their results as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke test)")
    parser.add_argument("--nodes", type=int, default=None, help="nodes of the mesh scenario")
    parser.add_argument("--only", choices=["mesh", "keepalive", "streams", "sleep"])
    args = parser.parse_args(argv)
    nodes = args.nodes or (100 if args.quick else 1000)
    runs: dict[str, Callable[[], dict[str, Any]]] = {
        "sleep": lambda: bench_sleep(600 if args.quick else 3600),
        "streams": lambda: bench_streams(50, 200) if args.quick else bench_streams(),
        "keepalive": lambda: bench_keepalive(10 if args.quick else 50),
        "mesh": lambda: bench_mesh(nodes),
    }
    results: dict[str, Any] = {"python": sys.version.split()[0]}
    for name, fn in runs.items():
        if args.only and name != args.only:
            continue
        results[name] = fn()
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
