"""Gossipsub on the simulator; prints one JSON object.

N nodes (default 1000) behind one switch (5-30 ms per host link), each dialing
``--degree`` random others, all subscribed to one topic; ``--messages`` messages
published from random nodes, 0.2 s apart.  Scenarios: ``clean``, ``loss`` (5% loss
on every link), ``crash`` (10% of the nodes crash before publishing).  Reported:
delivery ratio (among live nodes), latency percentiles and their stretch against
the shortest path's latency, receptions (first copies + duplicates) per delivered
message, wall and virtual seconds.

Usage: ``python -m bench.bench_pubsub [--nodes N] [--only NAME]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from contextlib import AsyncExitStack
from typing import Any

from switchy.protocols.pubsub import PubSub
from switchy.stack.node import Node
from switchy.transports.sim import SimConfig, SimTransport, Simulation, run_simulation

TOPIC = "bench"


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def scenario(name: str, n: int, degree: int, messages: int, seed: int) -> dict[str, Any]:
    """Run one scenario; return its figures."""
    loss = 0.05 if name == "loss" else 0.0

    async def main(sim: Simulation) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        rng = random.Random(seed)
        names = [f"n{i}" for i in range(n)]
        sim.network.add_hosts(["core", *names])
        for h in names:
            sim.network.add_link("core", h, latency=rng.uniform(0.005, 0.03), loss=loss)
        arrivals: dict[bytes, dict[int, float]] = {}
        async with AsyncExitStack() as stack:
            pubsubs = [PubSub() for _ in names]
            for h, ps in zip(names, pubsubs, strict=True):
                await stack.enter_async_context(
                    Node(
                        transports=[SimTransport(sim.network, h)],
                        services=[ps],
                        entropy=sim.entropy_source(h),
                        listen=["/memory/4001"],
                    )
                )
            nodes = [ps.node for ps in pubsubs]
            subs = [ps.subscribe(TOPIC) for ps in pubsubs]

            async def record(i: int) -> None:
                async for msg in subs[i]:
                    arrivals.setdefault(msg.msg_id, {})[i] = loop.time()

            readers = [asyncio.ensure_future(record(i)) for i in range(n)]
            edges = {
                frozenset((i, j))
                for i in range(n)
                for j in rng.sample([k for k in range(n) if k != i], degree)
            }
            await asyncio.gather(
                *(nodes[min(e)].connect(nodes[max(e)].full_addrs[0]) for e in edges),
                return_exceptions=True,
            )
            await asyncio.sleep(5)
            dead: set[int] = set()
            if name == "crash":
                dead = set(rng.sample(range(n), n // 10))
                for i in dead:
                    sim.network.crash(names[i])
                await asyncio.sleep(3)
            live = [i for i in range(n) if i not in dead]
            base = {i: pubsubs[i].router.dropped.get("duplicate", 0) for i in live}
            sent: dict[bytes, tuple[int, float]] = {}
            for k in range(messages):
                origin = rng.choice(live)
                mid = await pubsubs[origin].publish(TOPIC, b"m%d" % k)
                sent[mid] = (origin, loop.time())
                await asyncio.sleep(0.2)
            await asyncio.sleep(10)
            for r in readers:
                r.cancel()
            lat: list[float] = []
            stretch: list[float] = []
            delivered = 0
            for mid, (origin, t0) in sent.items():
                for i, t in arrivals.get(mid, {}).items():
                    if i in dead or i == origin:
                        continue
                    delivered += 1
                    lat.append(t - t0)
                    stretch.append((t - t0) / sim.network.path_latency(names[origin], names[i]))
            dups = sum(pubsubs[i].router.dropped.get("duplicate", 0) - base[i] for i in live)
            expected = len(sent) * (len(live) - 1)
            return {
                "nodes": n,
                "links": len(edges),
                "messages": len(sent),
                "delivery_ratio": delivered / expected,
                "latency_ms": {q: _pct(lat, v) * 1000 for q, v in (("p50", 0.5), ("p99", 0.99))},
                "stretch": {q: _pct(stretch, v) for q, v in (("p50", 0.5), ("p99", 0.99))},
                "receptions_per_delivery": (delivered + dups) / max(delivered, 1),
                "virtual_s": loop.time(),
            }

    start = time.perf_counter()
    out = run_simulation(main, seed=seed, config=SimConfig(default_packet_loss=loss), trace=False)
    out["wall_s"] = time.perf_counter() - start
    return out


def main() -> None:
    """Parse the arguments, run the scenarios, print the JSON."""
    p = argparse.ArgumentParser()
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--degree", type=int, default=5)
    p.add_argument("--messages", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--only", choices=["clean", "loss", "crash"])
    args = p.parse_args()
    names = [args.only] if args.only else ["clean", "loss", "crash"]
    print(
        json.dumps(
            {s: scenario(s, args.nodes, args.degree, args.messages, args.seed) for s in names},
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
