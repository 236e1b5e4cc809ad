"""Gossipsub on the simulator; prints one JSON object.

N nodes (default 1000) behind one switch (5-30 ms per host link), each dialing
``--degree`` random others, all subscribed to one topic; ``--messages`` messages
published from random nodes, 0.2 s apart.  Scenarios: ``clean``, ``loss`` (5% loss
on every link), ``crash`` (10% of the nodes crash before publishing), ``partition``
(half the nodes cut off from the other half while half the messages are published,
then healed and the other half published), ``sybil`` (5% of the nodes flood messages
signed with a key that is not their own while the honest nodes publish).

Reported per scenario: delivery ratio (among live honest nodes), latency percentiles
and two stretches of each delivery's latency, against the latency of

* ``direct``: the simulator's route between publisher and receiver (through the switch),
  which no overlay message can take unless the two are connected;
* ``overlay``: the shortest path in the connection graph the nodes actually have
  (Dijkstra over every pubsub peering, each edge weighted with its route latency):
  the least any protocol forwarding over these connections can achieve;
* ``mesh`` (a figure, not a goal): the shortest path when the publisher sends to all its
  topic peers (flood publishing) and every other hop follows the topic mesh.

Also: receptions (first copies + duplicates) per delivered message, wall, CPU and virtual
seconds, and the load average before and after.

Usage: ``python -m bench.bench_pubsub [--nodes N] [--only NAME]``.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import os
import random
import time
from collections.abc import Iterable
from contextlib import AsyncExitStack
from typing import Any

from switchy.protocols.pubsub import PubSub
from switchy.stack.identity import KeyPair
from switchy.stack.node import Node
from switchy.transports.sim import SimConfig, SimTransport, Simulation, run_simulation

TOPIC = "bench"
SCENARIOS = ("clean", "loss", "crash", "partition", "sybil")
#: Share of the nodes that are sybils in the ``sybil`` scenario, and the spam each sends.
SYBIL_SHARE = 0.05
SPAM_PER_SYBIL = 20
Graph = dict[int, dict[int, float]]


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def _quantiles(values: list[float], scale: float = 1.0) -> dict[str, float]:
    out = {q: round(_pct(values, v) * scale, 3) for q, v in (("p50", 0.5), ("p99", 0.99))}
    out["min"] = round(min(values, default=float("nan")) * scale, 3)
    return out


def _dijkstra(graph: Graph, source: int) -> dict[int, float]:
    """Shortest path latencies from ``source`` over ``graph``."""
    dist = {source: 0.0}
    heap = [(0.0, source)]
    while heap:
        d, u = heapq.heappop(heap)
        if d > dist.get(u, float("inf")):
            continue
        for v, w in graph.get(u, {}).items():
            nd = d + w
            if nd < dist.get(v, float("inf")):
                dist[v] = nd
                heapq.heappush(heap, (nd, v))
    return dist


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
            index = {node.peer_id: i for i, node in enumerate(nodes)}
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
            sybils: set[int] = set()
            if name == "sybil":
                sybils = set(rng.sample(range(n), int(n * SYBIL_SHARE)))
                for i in sybils:  # sign with a key that is not the one of the from field
                    pubsubs[i].router.key = KeyPair.from_seed(i.to_bytes(4, "big") * 8)
            live = [i for i in range(n) if i not in dead and i not in sybils]
            live_set = set(live)
            link_latency: dict[frozenset[int], float] = {}

            def graphs() -> tuple[Graph, Graph]:
                """The connection graph and the mesh graph among live nodes (pubsub peerings)."""
                conn: Graph = {i: {} for i in range(n) if i not in dead}
                mesh: Graph = {i: {} for i in range(n) if i not in dead}
                for i in conn:
                    router = pubsubs[i].router
                    in_mesh = router.mesh.get(TOPIC, set())
                    for peer in router.peers:
                        j = index.get(peer)
                        if j is None or j in dead:
                            continue
                        key = frozenset((i, j))
                        if key not in link_latency:
                            link_latency[key] = sim.network.path_latency(names[i], names[j])
                        conn[i][j] = conn.setdefault(j, {})[i] = link_latency[key]
                        if peer in in_mesh:
                            mesh[i][j] = link_latency[key]
                return conn, mesh

            def anchors(origin: int, conn: Graph, mesh: Graph) -> dict[str, dict[int, float]]:
                first = {**mesh, origin: conn[origin]}  # flood publishing: every peer
                return {
                    "overlay": _dijkstra(conn, origin),
                    "mesh": _dijkstra(first, origin),
                }

            base = {i: pubsubs[i].router.dropped.get("duplicate", 0) for i in live}
            sent: dict[bytes, tuple[int, float, str]] = {}
            best: dict[bytes, dict[str, dict[int, float]]] = {}

            async def publish(k: int, phase: str) -> None:
                origin = rng.choice(live)
                conn, mesh = graphs()
                mid = await pubsubs[origin].publish(TOPIC, b"m%d" % k)
                sent[mid] = (origin, loop.time(), phase)
                best[mid] = anchors(origin, conn, mesh)
                await asyncio.sleep(0.2)

            async def spam() -> None:
                for k in range(SPAM_PER_SYBIL):
                    for i in sybils:
                        await pubsubs[i].publish(TOPIC, b"spam %d" % k)
                    await asyncio.sleep(0.05)

            extra: dict[str, Any] = {}
            if name == "partition":
                half = set(range(n // 2))
                part = sim.network.partition([names[i] for i in half], names[n // 2 :])
                for k in range(messages // 2):
                    await publish(k, "during")
                await asyncio.sleep(10)
                sim.network.heal(part)
                healed_at = loop.time()
                await asyncio.sleep(15)
                # the copies counted are those of the messages published after the heal
                base.update({i: pubsubs[i].router.dropped.get("duplicate", 0) for i in live})
                for k in range(messages // 2, messages):
                    await publish(k, "after")

                def side(i: int) -> bool:
                    return i in half

                own = other = other_after_heal = 0
                during = [(mid, o) for mid, (o, _t, ph) in sent.items() if ph == "during"]
                for mid, origin in during:
                    for i, t in arrivals.get(mid, {}).items():
                        if i == origin:
                            continue
                        if side(i) == side(origin):
                            own += 1
                        else:
                            other += 1
                            other_after_heal += t >= healed_at
                own_expected = sum(
                    len([i for i in live if side(i) == side(o) and i != o]) for _m, o in during
                )
                extra["during_partition"] = {
                    "messages": len(during),
                    "own_side_delivery_ratio": own / max(own_expected, 1),
                    "other_side_receptions": other,
                    "other_side_receptions_after_heal": other_after_heal,
                    "other_side_expected_if_all": len(during) * (n // 2),
                }
            elif name == "sybil":
                flood = asyncio.ensure_future(spam())
                for k in range(messages):
                    await publish(k, "main")
                await flood
            else:
                for k in range(messages):
                    await publish(k, "main")
            await asyncio.sleep(10)
            for r in readers:
                r.cancel()
            lat: list[float] = []
            stretch: dict[str, list[float]] = {"direct": [], "overlay": [], "mesh": []}
            delivered = expected = 0
            for mid, (origin, t0, phase) in sent.items():
                if phase == "during":
                    continue
                expected += len(live) - 1
                got = arrivals.get(mid, {})
                for i, t in got.items():
                    if i not in live_set or i == origin:
                        continue
                    delivered += 1
                    lat.append(t - t0)
                    stretch["direct"].append(
                        (t - t0) / sim.network.path_latency(names[origin], names[i])
                    )
                    for anchor in ("overlay", "mesh"):
                        stretch[anchor].append((t - t0) / best[mid][anchor][i])
            dups = sum(pubsubs[i].router.dropped.get("duplicate", 0) - base[i] for i in live)
            if name == "sybil":
                spam_delivered = sum(
                    len(live_set.intersection(arr)) for m, arr in arrivals.items() if m not in sent
                )
                checks = [pubsubs[i].router.dropped.get("invalid signature", 0) for i in live]
                extra["sybil"] = {
                    "sybils": len(sybils),
                    "spam_published": len(sybils) * SPAM_PER_SYBIL,
                    "spam_deliveries_to_honest": spam_delivered,
                    "invalid_signature_drops_total": sum(checks),
                    "invalid_signature_drops_max_per_node": max(checks),
                }
            return {
                "nodes": n,
                "links": len(edges),
                "messages": sum(1 for _o, _t, ph in sent.values() if ph != "during"),
                "delivery_ratio": delivered / max(expected, 1),
                "latency_ms": _quantiles(lat, 1000),
                "stretch": {k: _quantiles(v) for k, v in stretch.items()},
                "receptions_per_delivery": round((delivered + dups) / max(delivered, 1), 3),
                "virtual_s": round(loop.time(), 3),
                **extra,
            }

    load_before = os.getloadavg()[0]
    start, cpu = time.perf_counter(), time.process_time()
    out = run_simulation(main, seed=seed, config=SimConfig(default_packet_loss=loss), trace=False)
    out["wall_s"] = round(time.perf_counter() - start, 2)
    out["cpu_s"] = round(time.process_time() - cpu, 2)
    out["load"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    return out


def main(argv: Iterable[str] | None = None) -> None:
    """Parse the arguments, run the scenarios, print the JSON."""
    p = argparse.ArgumentParser()
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--degree", type=int, default=5)
    p.add_argument("--messages", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--only", choices=SCENARIOS, action="append")
    args = p.parse_args(None if argv is None else list(argv))
    names = args.only or list(SCENARIOS)
    print(
        json.dumps(
            {s: scenario(s, args.nodes, args.degree, args.messages, args.seed) for s in names},
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
