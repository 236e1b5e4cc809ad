"""Load benchmark: one node holding many inbound connections and concurrent echo streams.

``python bench/bench_load.py`` prints one JSON object: the full load (1,000 connections,
10,000 streams, each echoing its bytes) and the same with the limits set to half
(refusals counted, the connections within the limits still served), with memory per
connection and per stream.  ``--connections`` / ``--streams`` change the counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.load import run_load


def main() -> None:
    """Run both phases and print the JSON report."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--connections", type=int, default=1000)
    p.add_argument("--streams", type=int, default=10000)
    args = p.parse_args()
    full = asyncio.run(run_load(args.connections, args.streams))
    limited = asyncio.run(
        run_load(
            args.connections,
            args.streams,
            limit_conns=args.connections // 2,
            limit_streams=args.streams // 2,
        )
    )
    print(json.dumps({"bench": "load", "full": full, "limits_halved": limited}, indent=2))


if __name__ == "__main__":
    main()
