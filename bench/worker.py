"""One group of figures in a process of its own, printed as one JSON object (the last line).

``python -m bench.worker GROUP [--quick]`` runs on the loop :data:`bench.common.LOOP_ENV`
names, against whichever ``switchy`` is first on the path: ``python -m bench`` points
``PYTHONPATH`` at another commit's ``src/`` for its A/B mode, so the code measuring here
stays the same while the code measured changes.  Every group measures its own anchor in the
same process, right beside the figure, so a ratio never mixes two moments of a shared machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from bench.common import LOOP_ENV, run

MB = 1e-6


def _quic(quick: bool) -> dict[str, Any]:
    """QUIC one stream, two processes: ours, bare aioquic, and our TCP stream beside it."""
    from bench.bench_core import _two_process_throughput
    from bench.bench_quic import _two_process

    out: dict[str, list[float]] = {"bare_two_process": [], "node_two_process": []}
    run(_two_process((8 if quick else 16) * 1024 * 1024, out))
    tcp = run(_two_process_throughput((128 if quick else 256) * 1024 * 1024))
    return {
        "quic_2proc_MBps": out["node_two_process"][0] * MB,
        "bare_aioquic_2proc_MBps": out["bare_two_process"][0] * MB,
        "tcp_2proc_MBps": tcp * MB,
    }


def _tcp(quick: bool) -> dict[str, Any]:
    """TCP+Noise+yamux one stream in one process against raw asyncio TCP."""
    from bench.bench_core import _raw_tcp
    from bench.common import stream_throughput

    size = (256 if quick else 512) * 1024 * 1024
    return {
        "raw_tcp_MBps": run(_raw_tcp(size)) * MB,
        "stream_1proc_MBps": run(stream_throughput(size)) * MB,
    }


def _ping(quick: bool) -> dict[str, Any]:
    """Ping round trip on one stream against a raw TCP echo round trip."""
    from bench.bench_core import _ping_rtt, _raw_ping_rtt

    n = 2000 if quick else 5000
    return {"raw_tcp_rtt_us": run(_raw_ping_rtt(n)), "ping_rtt_us": run(_ping_rtt(n))["median_us"]}


def _connect(quick: bool) -> dict[str, Any]:
    """New connection to the first negotiated stream, with and without identify."""
    from bench.bench_core import _connection_setup

    n = 50 if quick else 200
    return {
        "new_connection_ms": run(_connection_setup(n)),
        "new_connection_no_identify_ms": run(_connection_setup(n, identify=False)),
    }


def _streams(quick: bool) -> dict[str, Any]:
    """Stream open + negotiate + close per second on one connection."""
    from bench.bench_core import _stream_rate

    return {"streams_per_s": run(_stream_rate(3200 if quick else 12800))}


def _router(quick: bool) -> dict[str, Any]:
    """Small GETs, server in its own process, 1 and 64 in flight: the router and aiohttp."""
    from bench import bench_router

    bench_router.ROUNDS = 1  # python -m bench does the rounds
    count = 1000 if quick else 3000
    res: dict[str, Any] = {}
    for kind in ("router", "aiohttp"):
        r = run(bench_router._small_get(kind, count, 2))
        res[f"{kind}_1_req_per_s"] = r["inflight_1"]["req_per_s"]
        res[f"{kind}_1_median_us"] = r["inflight_1"]["median_us"]
        res[f"{kind}_64_req_per_s"] = r["inflight_64"]["req_per_s"]
    return res


def _import_ms(statement: str) -> float:
    best = float("inf")
    for _ in range(5):
        out = subprocess.run(
            [
                sys.executable,
                "-X",
                "frozen_modules=on",
                "-c",
                f"import time; t=time.perf_counter(); {statement}; print(time.perf_counter()-t)",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        best = min(best, float(out.stdout))
    return best * 1e3


def _import(quick: bool) -> dict[str, Any]:
    """Import time of the everyday names, of ``switchy.stack.node``, and of asyncio (anchor)."""
    return {
        "import_everyday_ms": _import_ms(
            "from switchy import default_node, Node, KeyPair, Router, Stream"
        ),
        "import_stack_node_ms": _import_ms("import switchy.stack.node"),
        "import_asyncio_ms": _import_ms("import asyncio"),
    }


def _sim(quick: bool, nodes: int | None = None) -> dict[str, Any]:
    """The simulated mesh (5 peers, 10 pings each): wall time and peak memory."""
    from bench.bench_sim import bench_mesh

    n = nodes or (200 if quick else 1000)
    r = bench_mesh(n)
    return {
        f"sim_mesh_{n}_wall_s": r["wall_s"],
        f"sim_mesh_{n}_failures": r["failures"],
        f"sim_mesh_{n}_peak_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


GROUPS: dict[str, Callable[[bool], dict[str, Any]]] = {
    "quic": _quic,
    "tcp": _tcp,
    "ping": _ping,
    "connect": _connect,
    "streams": _streams,
    "router": _router,
    "import": _import,
    "sim": _sim,
    "sim10k": lambda quick: _sim(quick, 10_000),
}


def main() -> None:
    """Run one group and print its figures as JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("group", choices=sorted(GROUPS))
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    mp.set_start_method("spawn")
    start = time.perf_counter()
    figures = GROUPS[args.group](args.quick)
    import switchy

    figures["_meta"] = {
        "seconds": round(time.perf_counter() - start, 2),
        "loop": os.environ.get(LOOP_ENV) or "asyncio",
        "switchy_from": os.path.dirname(switchy.__file__),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
