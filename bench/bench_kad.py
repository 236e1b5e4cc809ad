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

Usage: ``python -m bench.bench_kad [--nodes N] [--lookups L] [--seed S] [--loopback N]
[--churn]``.
"""

from __future__ import annotations

import argparse
import json
import random
import time

import attrs

from switchy.protocols.kad.lookup import MIN_STALL
from switchy.protocols.kad.model import KadModel, summarize
from switchy.protocols.kad.routing import kad_key

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
    out["wall_s"] = round(time.perf_counter() - t0, 2)
    return out


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
    args = parser.parse_args()
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
