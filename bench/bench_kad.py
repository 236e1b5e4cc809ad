"""Kademlia in virtual time: 1,000 DHT servers (the message-level model of
``switchy.protocols.kad.model``: real routing tables and lookups, modelled
round trips of 20-200 ms and a 10 s query timeout).  Prints one JSON object.

Figures: find-peer lookups (end when the target is named, as ``KadDHT.find_peer``)
and closest-peer lookups (run to the end with beta = k, as ``put_value``/``provide``):
success ratio, rounds of queries (median, p90, max), queries per lookup and
latency percentiles, with every node up and with 10% of the nodes crashed
(the routing tables still naming them), the latter also with the lookups' stall time
(``crashed_10pct_stall``: KadDHT's adaptive behaviour); log2(n) for comparison; wall time.

With ``--churn``: per epoch 10% of the nodes leave and as many join, 50 records are
republished every 3 epochs, 200 gets per epoch measure the share still found.

Goals (issue 18): median lookup within 4 rounds, >= 99% success with 10% crashed,
<= 60 s wall for the 1,000-node run.

With ``--loopback N``: instead, N real nodes (TCP + Noise + yamux on 127.0.0.1, one
process) run KadDHT servers bootstrapped through the first; figures are the wall time
of joining and of put/get rounds (a ``/pk/`` record put from one node, got from another).

With ``--full N``: instead, N full nodes (the whole stack: KadDHT, identify, Noise,
yamux, over the simulator ``transports.sim`` in virtual time; links of 5-50 ms one
way, so round trips of 20-200 ms as in the model) join one after another through the
first; then closest-peer lookups (``get_closest_peers``, beta = k) from random nodes for
random keys: the share that found the true closest node, rounds, latency percentiles
(virtual time, dials included), messages per lookup and the tables' fill, beside the
model's figures for the same N and seed.

Usage: ``python -m bench.bench_kad [--nodes N] [--lookups L] [--seed S] [--loopback N]
[--churn] [--full N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from typing import Any

import attrs

from switchy.protocols.kad.lookup import MIN_STALL
from switchy.protocols.kad.model import KadModel, LookupOutcome, summarize, table_fill
from switchy.protocols.kad.routing import K, kad_key

#: The stall time of the ``crashed_10pct_stall`` figures: what KadDHT's RttEstimator
#: suggests for round trips of 20-200 ms (its floor).
STALL = MIN_STALL


def churn(nodes: int, seed: int, epochs: int = 10) -> dict[str, object]:
    """The churn simulation: per epoch 10% of the nodes leave and as many join; records
    republished every 3 epochs; per-epoch found ratio and median get latency."""
    t0 = time.perf_counter()
    model = KadModel(nodes, seed=seed, stall=STALL)
    out = model.churn(
        epochs=epochs,
        leave=0.10,
        join=nodes // 10,
        records=50,
        gets=200,
        republish_every=3,
    )
    return {
        "nodes": nodes,
        "seed": seed,
        "leave_per_epoch": 0.10,
        "republish_every_epochs": 3,
        "epochs": [attrs.asdict(e) for e in out],
        "found_ratio_min": min(e.found_ratio for e in out),
        "wall_s": round(time.perf_counter() - t0, 2),
    }


def run(nodes: int, lookups: int, seed: int) -> dict[str, object]:
    """Build the network, measure, crash 10%, measure again."""
    t0 = time.perf_counter()
    c0 = time.process_time()
    model = KadModel(nodes, seed=seed)
    built = time.perf_counter() - t0
    rng = random.Random(seed + 1)
    out: dict[str, object] = {"nodes": nodes, "seed": seed, "build_wall_s": round(built, 2)}
    for label in ("all_up", "crashed_10pct", "crashed_10pct_stall"):
        if label == "crashed_10pct":
            model.crash(0.10)
        if label == "crashed_10pct_stall":
            model.stall = STALL
        live = [p for p in model.ids if p not in model.crashed]
        pairs = [(rng.choice(live), rng.choice(live)) for _ in range(lookups)]
        find = [model.lookup(a, b) for a, b in pairs if a != b]
        keys = [kad_key(rng.randbytes(32)) for _ in range(lookups)]
        close = [model.closest(rng.choice(live), k) for k in keys]
        out[label] = {"find_peer": summarize(find, nodes), "closest": summarize(close, nodes)}
    out["messages"] = model.messages
    out["table_fill"] = round(table_fill(model.tables, model.ids), 4)
    out["wall_s"] = round(time.perf_counter() - t0, 2)
    # on a shared machine the wall time is mostly other processes' load: the CPU time too
    out["cpu_s"] = round(time.process_time() - c0, 2)
    out["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return out


def full(nodes: int, lookups: int, seed: int) -> dict[str, object]:
    """The DHT on ``nodes`` full nodes over the simulator, beside the model (see the module
    docstring)."""
    from switchy.transports.sim import SimConfig, run_simulation

    t0, c0 = time.perf_counter(), time.process_time()
    config = SimConfig(default_packet_loss=0.0)
    stack = run_simulation(lambda sim: _full_stack(sim, nodes, lookups), seed=seed, config=config)
    stack["wall_s"] = round(time.perf_counter() - t0, 2)
    stack["cpu_s"] = round(time.process_time() - c0, 2)
    t1, c1 = time.perf_counter(), time.process_time()
    model = KadModel(nodes, seed=seed)
    rng = random.Random(seed + 1)
    close = [
        model.closest(rng.choice(model.ids), kad_key(rng.randbytes(32))) for _ in range(lookups)
    ]
    return {
        "nodes": nodes,
        "seed": seed,
        "full_stack": stack,
        "model": {
            "closest": summarize(close, nodes),
            "table_fill": round(table_fill(model.tables, model.ids), 4),
            "wall_s": round(time.perf_counter() - t1, 2),
            "cpu_s": round(time.process_time() - c1, 2),
        },
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def _bootstrap_config(count: int) -> Any:
    """The bootstrap node's configuration: room for ``count`` peers connecting at once."""
    from switchy.stack.config import NetworkConfig

    room = 2 * count
    return NetworkConfig(
        limits=(
            f"system.conns={2 * room}",
            f"system.conns_inbound={room}",
            f"transient.conns={room}",
            f"transient.conns_inbound={room}",
        ),
        conn_low_water=room,
        conn_high_water=2 * room,
    )


async def _full_stack(sim: Any, count: int, lookups: int) -> dict[str, Any]:
    import asyncio

    from switchy.protocols.identify import IdentifyService
    from switchy.protocols.kad.pb import MessageType
    from switchy.protocols.kad.service import KadDHT
    from switchy.stack.node import Node
    from switchy.transports.sim import SimTransport

    hosts = [f"s{i}" for i in range(count)]
    sim.network.add_hosts(["hub", *hosts])
    for h in hosts:
        sim.network.add_link("hub", h, latency=sim.random.uniform(0.005, 0.05))
    loop = asyncio.get_running_loop()
    nodes: list[Node] = []
    dhts: list[KadDHT] = []
    boot: list[str] = []
    try:
        for h in hosts:
            dht = KadDHT(mode="server", bootstrap=boot)
            node = Node(
                transports=[SimTransport(sim.network, h)],
                services=[IdentifyService(), dht],
                entropy=sim.entropy_source(h),
                listen=["/memory/4001"],
                # every node joins through the first: sized for all of them, as one
                # configures a bootstrap node (by default it refuses inbound connections
                # past the resource manager's 192, and the late joiners' tables stay poor)
                config=None if boot else _bootstrap_config(count),
            )
            await node.start()
            await dht.bootstrap()
            nodes.append(node)
            dhts.append(dht)
            boot = boot or [str(node.full_addrs[0])]
        joined = loop.time()
        ids = [n.peer_id for n in nodes]
        fill = table_fill([d._t for d in dhts], ids)
        rng = random.Random(7)
        outcomes = []
        for _ in range(lookups):
            source = rng.randrange(count)
            key = rng.randbytes(32)
            target = kad_key(key)
            dht = dhts[source]
            before = sum(d.counters.get("FIND_NODE", 0) for d in dhts)
            start = loop.time()
            lookup = await dht._lookup(key, MessageType.FIND_NODE, beta=K)
            took = loop.time() - start
            sent = sum(d.counters.get("FIND_NODE", 0) for d in dhts) - before
            best = min(
                (p for p in ids if p != ids[source]), key=lambda p: kad_key(p.multihash) ^ target
            )
            result = lookup.result()
            found = bool(result) and result[0][0] == best
            outcomes.append(LookupOutcome(found, lookup.rounds(), sent, took))
        failures: dict[str, int] = {}
        for d in dhts:
            for name, n in d.counters.items():
                if name.startswith(("failed_", "removed_", "queries_dialing")):
                    failures[name] = failures.get(name, 0) + n
        return {
            "failures": dict(sorted(failures.items())),
            "trimmed": sum(n.connmgr.trimmed for n in nodes),
            "connections_max": max(len(n.connections()) for n in nodes),
            "table_size_max": max(len(d._t) for d in dhts),
            "entries_without_connection": sum(
                1
                for n, d in zip(nodes, dhts, strict=True)
                for p in d._t.peers()
                if not n.connections(p)
            ),
            "join_virtual_s": round(joined, 1),
            "table_fill": round(fill, 4),
            "closest": summarize(outcomes, count),
        }
    finally:
        for node in nodes:
            await node.close()


async def loopback(count: int, rounds: int = 20) -> dict[str, object]:
    """``count`` real nodes on loopback; join time and put/get round times."""
    import statistics

    from switchy.presets import default_node
    from switchy.protocols.kad.records import pk_key
    from switchy.protocols.kad.service import KadDHT
    from switchy.stack.identity import KeyPair
    from switchy.transports.tcp import TcpTransport

    t0 = time.perf_counter()
    nodes = []
    dhts = []
    boot: list[str] = []
    try:
        for _ in range(count):
            dht = KadDHT(mode="server", bootstrap=boot)
            node = default_node(
                transports=[TcpTransport()], services=[dht], listen=["/ip4/127.0.0.1/tcp/0"]
            )
            await node.start()
            await dht.bootstrap()
            nodes.append(node)
            dhts.append(dht)
            boot = boot or [str(node.full_addrs[0])]
        joined = time.perf_counter() - t0
        times = []
        stored = []
        rng = random.Random(1)
        for i in range(rounds):
            key = KeyPair.from_seed(bytes([i]) * 32)
            a, b = rng.sample(dhts, 2)
            start = time.perf_counter()
            stored.append(await a.put_value(pk_key(key.peer_id), key.public_key.to_protobuf()))
            value = await b.get_value(pk_key(key.peer_id))
            times.append(time.perf_counter() - start)
            assert value == key.public_key.to_protobuf()
        times.sort()
        return {
            "loopback_nodes": count,
            "join_wall_s": round(joined, 2),
            "put_get_rounds": rounds,
            "put_get_s_median": round(statistics.median(times), 4),
            "put_get_s_max": round(times[-1], 4),
            "stored_at_median": statistics.median(stored),
            "table_size_median": statistics.median(len(d.table or []) for d in dhts),
        }
    finally:
        for node in nodes:
            await node.close()


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--lookups", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--loopback", type=int, default=0, metavar="N")
    parser.add_argument("--churn", action="store_true", help="the churn simulation instead")
    parser.add_argument("--full", type=int, default=0, metavar="N", help="N full nodes (sim)")
    args = parser.parse_args()
    if args.full:
        print(json.dumps(full(args.full, args.lookups, args.seed), indent=2))
        return
    if args.churn:
        print(json.dumps(churn(args.nodes, args.seed), indent=2))
        return
    if args.loopback:
        import asyncio

        print(json.dumps(asyncio.run(loopback(args.loopback)), indent=2))
        return
    print(json.dumps(run(args.nodes, args.lookups, args.seed), indent=2))


if __name__ == "__main__":
    main()
