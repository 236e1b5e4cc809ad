"""Hole-punching benchmark (DCUtR); prints one JSON object.

In the simulator (virtual time, deterministic per seed): two nodes behind
``port_restricted`` NATs (the usual home router) meet through a relay
(:func:`switchy.punch.punch_pair`) with 50 ms uplinks, over TCP and QUIC, once without
loss and over several seeds with 2 % loss.  Reported per transport:

- ``time_to_direct_s``: from ``B`` seeing the relayed connection to the direct one
  (median, min, max over the runs), against the same runs' anchors: the relayed and the
  direct ping round trip (``rtt_relayed_s``, ``rtt_direct_s``) and the issue's budget
  ``goal_s`` = 3 relayed round trips + the SYNC wait (half of one);
- ``success_rate`` and ``first_attempt_rate`` over the runs, and ``attempts``;
- ``throughput_relayed_Bps`` / ``throughput_direct_Bps``: 512 KiB on one stream over
  the relayed connection and then over the direct one of the same run (virtual time;
  the relay's link is 20 ms, the uplinks 50 ms; yamux's 256 KiB window bounds both).
  A relayed transfer still running when the relayed connection is retired (grace
  period, then the close timeout) counts as missing, not as a number.

With ``--lab`` (root, ``ip`` and ``nft``: the namespace lab of
``tests/test_nat_lab_punch.py``, two home routers, wall time): ``--lab-runs`` punches per
transport (``tests/netns_punch_peer.py a`` dials ``B`` through the relay); the time to
direct from ``B``'s punch events, and, measured by ``A`` once the connection is direct,
on the relayed connection (still up for its grace period) and then on the direct one:
the median ping round trip (``rtt_relayed_s``, the same run's anchor, and
``rtt_direct_s``) and the throughput of one 4 MiB stream. The lab adds no link
latency (no netem in the kernel), so these are software and kernel costs.

Usage: ``python -m bench.bench_punch [--quick] [--seeds N] [--lab [--lab-runs N]]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
from typing import Any

from bench.common import CHUNK, SINK_PROTOCOL, sink_handler
from switchy.punch import PUNCH_TRANSPORTS, punch_pair
from switchy.stack.errors import P2PError
from switchy.stack.mux import MuxedConnection
from switchy.stack.negotiation import select_protocol_lazy
from switchy.stack.node import Node
from switchy.transports.sim import SimConfig
from switchy.transports.sim.simulation import run_simulation

QUIET = SimConfig(default_packet_loss=0.0)
WAN_LATENCY = 0.05
#: Bytes sent over each connection for the throughput figures.
THROUGHPUT_BYTES = 512 * 1024
#: Bytes per connection for the lab's (wall time) throughput figures.
LAB_THROUGHPUT_BYTES = 4 * 1024 * 1024


async def connection_throughput(conn: MuxedConnection, total: int) -> float | None:
    """Bytes/s of ``total`` bytes on one new sink stream of ``conn`` (the peer serves
    :data:`~bench.common.SINK_PROTOCOL`), until the answer; None when the connection
    closed first."""
    try:
        return await _send_or_fail(conn, total)
    except P2PError:
        return None


async def _send_or_fail(conn: MuxedConnection, total: int) -> float:
    stream = await select_protocol_lazy(await conn.open_stream(), SINK_PROTOCOL)
    loop = asyncio.get_running_loop()
    start = loop.time()
    data = bytes(CHUNK)
    for _ in range(total // CHUNK):
        await stream.write(data)
    await stream.close_write()
    answer = await stream.read()
    elapsed = loop.time() - start
    assert int(answer) == total, answer
    return total / elapsed


async def _throughput(
    _a: Node, b: Node, relayed: MuxedConnection, direct: MuxedConnection
) -> dict[str, Any]:
    b.handle(SINK_PROTOCOL, sink_handler())
    return {
        "throughput_relayed_Bps": await connection_throughput(relayed, THROUGHPUT_BYTES),
        "throughput_direct_Bps": await connection_throughput(direct, THROUGHPUT_BYTES),
    }


def _runs(kind: str, seeds: range, loss: float) -> list[dict[str, Any]]:
    out = []
    for seed in seeds:
        r = run_simulation(
            lambda sim: punch_pair(
                sim,
                "port_restricted",
                "port_restricted",
                kind,
                wan_latency=WAN_LATENCY,
                loss=loss,
                after=_throughput,
            ),
            seed=seed,
            config=QUIET,
        )
        out.append(r)
    return out


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if r["direct"]]
    times = [r["time_to_direct"] for r in ok if "time_to_direct" in r]
    relayed = [r["rtt_relayed"] for r in runs]
    direct = [r["rtt_direct"] for r in ok if "rtt_direct" in r]
    rtt = statistics.median(relayed)
    out: dict[str, Any] = {
        "runs": len(runs),
        "success_rate": len(ok) / len(runs),
        "first_attempt_rate": sum(1 for r in ok if r["attempts"] <= 1) / len(runs),
        "attempts": [r["attempts"] for r in runs],
        "rtt_relayed_s": rtt,
        "rtt_direct_s": statistics.median(direct) if direct else None,
        "goal_s": 3 * rtt + rtt / 2,
    }
    for key in ("throughput_relayed_Bps", "throughput_direct_Bps"):
        values = [r[key] for r in ok if r.get(key) is not None]
        out[key] = statistics.median(values) if values else None
    if times:
        out["time_to_direct_s"] = {
            "median": statistics.median(times),
            "min": min(times),
            "max": max(times),
        }
        out["time_to_direct_in_relayed_rtts"] = statistics.median(times) / rtt
    return out


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _lab(runs: int) -> dict[str, Any]:
    """The namespace lab's figures (wall time), or why there are none."""
    import os
    import shutil

    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("nft") is None:
        return {"skipped": "the lab needs root, ip and nft"}
    from tests.nat_lab_helpers import LabUnavailable
    from tests.test_nat_lab_punch import build_punch_lab, lab_relay, measure

    out: dict[str, Any] = {
        "clock": "wall",
        "nat": "home router vs home router (nftables)",
        "link_latency": "none added (no netem in this kernel)",
    }
    try:
        with build_punch_lab() as lab, lab_relay(lab) as relay:
            for kind in PUNCH_TRANSPORTS:
                times, firsts = [], 0
                paths: dict[str, dict[str, list[float]]] = {
                    p: {"rtt_s": [], "throughput_Bps": []} for p in ("relayed", "direct")
                }
                for _ in range(runs):
                    got, events = measure(lab, relay[kind], kind, 1, 2)
                    ok = [e for e in events if e["kind"] == "succeeded"]
                    if ok:
                        times.append(ok[0]["elapsed"])
                        firsts += ok[0]["attempt"] <= 1
                    for path, figures in paths.items():
                        for key, values in figures.items():
                            value = got.get(path, {}).get(key)
                            if value is not None:
                                values.append(value)
                rtt = _median(paths["relayed"]["rtt_s"])
                t = _median(times)
                out[kind] = {
                    "runs": runs,
                    "success_rate": len(times) / runs,
                    "first_attempt_rate": firsts / runs,
                    "time_to_direct_s": {"median": t, "min": min(times), "max": max(times)}
                    if times
                    else None,
                    "rtt_relayed_s": rtt,
                    "rtt_direct_s": _median(paths["direct"]["rtt_s"]),
                    "time_to_direct_in_relayed_rtts": t / rtt if t and rtt else None,
                    "throughput_relayed_Bps": _median(paths["relayed"]["throughput_Bps"]),
                    "throughput_direct_Bps": _median(paths["direct"]["throughput_Bps"]),
                    "throughput_bytes": LAB_THROUGHPUT_BYTES,
                }
    except LabUnavailable as exc:
        return {"skipped": str(exc)}
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its JSON."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="one lossy seed instead of --seeds")
    p.add_argument("--seeds", type=int, default=8, help="seeds of the lossy runs (default 8)")
    p.add_argument("--lab", action="store_true", help="also punch in the namespace lab")
    p.add_argument("--lab-runs", type=int, default=5, help="lab punches per transport")
    args = p.parse_args(argv)
    lossy = range(1, 2 if args.quick else args.seeds + 1)
    result: dict[str, Any] = {
        "benchmark": "punch",
        "clock": "virtual (simulator)",
        "nat": "port_restricted vs port_restricted",
        "wan_latency_s": WAN_LATENCY,
    }
    for kind in PUNCH_TRANSPORTS:
        result[kind] = {
            "no_loss": _summary(_runs(kind, range(1, 2), 0.0)),
            "loss_2pct": _summary(_runs(kind, lossy, 0.02)),
        }
    if args.lab:
        result["lab"] = _lab(args.lab_runs)
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
