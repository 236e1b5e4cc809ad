"""Kademlia in virtual time: 1,000 DHT servers (the message-level model of
``switchy.protocols.kad.model``: real routing tables and lookups, modelled
round trips of 20-200 ms and a 10 s query timeout).  Prints one JSON object.

Figures: find-peer lookups (end when the target is named, as ``KadDHT.find_peer``)
and closest-peer lookups (run to the end with beta = k, as ``put_value``/``provide``):
success ratio, rounds of queries (median, p90, max), queries per lookup and
latency percentiles, with every node up and with 10% of the nodes crashed
(the routing tables still naming them); log2(n) for comparison; wall time.

Goals (issue 18): median lookup within 4 rounds, >= 99% success with 10% crashed,
<= 60 s wall for the 1,000-node run.

Usage: ``python -m bench.bench_kad [--nodes N] [--lookups L] [--seed S]``.
"""

from __future__ import annotations

import argparse
import json
import random
import time

from switchy.protocols.kad.model import KadModel, summarize
from switchy.protocols.kad.routing import kad_key


def run(nodes: int, lookups: int, seed: int) -> dict[str, object]:
    """Build the network, measure, crash 10%, measure again."""
    t0 = time.perf_counter()
    model = KadModel(nodes, seed=seed)
    built = time.perf_counter() - t0
    rng = random.Random(seed + 1)
    out: dict[str, object] = {"nodes": nodes, "seed": seed, "build_wall_s": round(built, 2)}
    for label in ("all_up", "crashed_10pct"):
        if label == "crashed_10pct":
            model.crash(0.10)
        live = [p for p in model.ids if p not in model.crashed]
        pairs = [(rng.choice(live), rng.choice(live)) for _ in range(lookups)]
        find = [model.lookup(a, b) for a, b in pairs if a != b]
        keys = [kad_key(rng.randbytes(32)) for _ in range(lookups)]
        close = [model.closest(rng.choice(live), k) for k in keys]
        out[label] = {"find_peer": summarize(find, nodes), "closest": summarize(close, nodes)}
    out["messages"] = model.messages
    out["wall_s"] = round(time.perf_counter() - t0, 2)
    return out


def main() -> None:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--lookups", type=int, default=500)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(json.dumps(run(args.nodes, args.lookups, args.seed), indent=2))


if __name__ == "__main__":
    main()
