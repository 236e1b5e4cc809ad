"""Soak: churn against one node for a long time, sampling its memory and fds (not in CI).

``python bench/soak.py --duration 1800`` runs 30 minutes: a server (TCP, ping, echo, and
a circuit relay), and in waves clients that connect, run echo streams, make a relayed
connection through the server to another client, and disconnect.  Every ``--interval``
seconds (10) it samples the server's RSS, open fds, tasks and resource-manager use,
and at the end prints one JSON object with the samples and the growth per hour
(least-squares slope of RSS and fds over the run, after the first minute's warm-up,
or the first quarter when shorter).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.load import fd_count, rss_bytes
from switchy.protocols.echo import EchoService, echo
from switchy.protocols.ping import PingService, ping
from switchy.stack.config import NetworkConfig
from switchy.stack.node import Node
from switchy.transports.relay import RelayService, RelayTransport
from switchy.transports.tcp import TcpTransport

LOOPBACK = "/ip4/127.0.0.1/tcp/0"


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of ``(t, y)`` points, per second."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mt = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    return 0.0 if den == 0 else sum((t - mt) * (y - my) for t, y in points) / den


_seen_errors: dict[str, int] = {}


def _note(exc: BaseException) -> None:
    key = f"{type(exc).__name__}: {exc}"[:60]
    _seen_errors[key] = _seen_errors.get(key, 0) + 1


def _client() -> Node:
    cfg = NetworkConfig(keepalive_interval=0)
    return Node(
        transports=[TcpTransport()],
        services=[PingService(), EchoService(), RelayTransport()],
        config=cfg,
        listen=[LOOPBACK],
    )


async def _wave(server: Node, rng: random.Random, clients: int, streams: int) -> dict[str, int]:
    addr = server.full_addrs[0]
    made = [_client() for _ in range(clients)]
    errors = 0
    try:
        for c in made:
            await c.start()

        async def work(c: Node) -> None:
            nonlocal errors
            try:
                for _ in range(streams):
                    data = rng.randbytes(rng.randrange(1, 4096))
                    if await echo(c, addr, data) != data:
                        errors += 1
                await ping(c, addr)
            except Exception as exc:
                errors += 1
                _note(exc)

        await asyncio.gather(*(work(c) for c in made))
        if len(made) >= 2:  # one relayed connection through the server
            a, b = made[0], made[1]
            try:
                await b.listen(f"{addr}/p2p-circuit")  # a reservation on the server
                circuit = f"{addr}/p2p-circuit/p2p/{b.peer_id}"
                await a.connect(circuit)
            except Exception as exc:
                errors += 1
                _note(exc)
    finally:
        for c in made:
            await c.close()
    return {"clients": clients, "errors": errors}


async def soak(duration: float, interval: float, clients: int, streams: int) -> dict[str, Any]:
    """Run the churn for ``duration`` seconds; return the samples and the growth per hour."""
    cfg = NetworkConfig(keepalive_interval=0, inbound_rate_per_ip=0)
    server = Node(
        transports=[TcpTransport()],
        services=[PingService(), EchoService(), RelayService()],
        config=cfg,
        listen=[LOOPBACK],
    )
    rng = random.Random(1)
    samples: list[dict[str, Any]] = []
    waves = errors = 0
    async with server:
        start = time.monotonic()
        next_sample = start
        while True:
            now = time.monotonic()
            if now >= next_sample:
                samples.append(
                    {
                        "t": round(now - start, 1),
                        "rss_mib": round(rss_bytes() / 2**20, 2),
                        "fds": fd_count(),
                        "tasks": len(asyncio.all_tasks()),
                        "connections": len(server.connections()),
                        "streams": server.limits.system.used("streams"),
                        "memory_charged": server.limits.system.used("memory"),
                        "gc_objects": len(gc.get_objects()),
                    }
                )
                print(json.dumps(samples[-1]), file=sys.stderr, flush=True)
                next_sample += interval
            if now - start >= duration:
                break
            result = await _wave(server, rng, clients, streams)
            waves += 1
            errors += result["errors"]
    warm = min(60.0, duration / 4)
    steady = [s for s in samples if s["t"] >= warm]
    per_hour = {
        k: round(_slope([(s["t"], s[k]) for s in steady]) * 3600, 2)
        for k in ("rss_mib", "fds", "tasks", "gc_objects")
    }
    return {
        "bench": "soak",
        "duration_s": duration,
        "waves": waves,
        "clients_per_wave": clients,
        "echo_streams_per_client": streams,
        "errors": errors,
        "error_kinds": dict(_seen_errors),
        "growth_per_hour": per_hour,
        "first": samples[0] if samples else None,
        "last": samples[-1] if samples else None,
        "samples": samples,
    }


def main() -> None:
    """Parse the options, run the soak, print the JSON report."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--duration", type=float, default=1800.0, help="seconds (default 1800)")
    p.add_argument("--interval", type=float, default=10.0, help="sampling interval (10 s)")
    p.add_argument("--clients", type=int, default=8, help="clients per wave")
    p.add_argument("--streams", type=int, default=5, help="echo streams per client per wave")
    args = p.parse_args()
    report = asyncio.run(soak(args.duration, args.interval, args.clients, args.streams))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
