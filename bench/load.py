"""Load on one node over loopback: many inbound connections, many concurrent echo streams.

The server runs in this process; the clients run in a child process (the machine's
second core) as bare upgraders (TCP + Noise + yamux, one identity per connection),
so the server's memory is its own.  :func:`run_load` returns a JSON-able report:
connections and streams held at once, refusals, memory per connection and per
stream (RSS growth of the server process), and how long each phase took.
Used by ``bench/bench_load.py`` (full figures) and ``tests/test_load.py`` (smaller).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing as mp
import os
import time
from multiprocessing.connection import Connection as Pipe
from typing import Any

from switchy.protocols.echo import ECHO_PROTOCOL, EchoService
from switchy.stack.config import NetworkConfig
from switchy.stack.identity import KeyPair, PeerId
from switchy.stack.node import Node
from switchy.transports.tcp import TcpTransport

__all__ = ["fd_count", "rss_bytes", "run_load", "server_config"]

#: Connections the client dials at once.
DIAL_CONCURRENCY = 32
#: Streams the client opens (and echoes on) at once.
STREAM_CONCURRENCY = 512


def rss_bytes() -> int:
    """Resident memory of this process (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def fd_count() -> int:
    """Open file descriptors of this process."""
    return len(os.listdir("/proc/self/fd"))


def fd_targets() -> set[str]:
    """What this process's file descriptors point at (``socket:[…]``, paths)."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            out.add(f"{fd}:{os.readlink(f'/proc/self/fd/{fd}')}")
    return out


def server_config(
    conns: int, streams: int, *, limit_conns: int, limit_streams: int
) -> NetworkConfig:
    """A config holding ``limit_conns`` inbound connections and ``limit_streams`` streams
    (system scope); per-IP limits out of the way (every client is 127.0.0.1)."""
    return NetworkConfig(
        keepalive_interval=0,
        max_connections=max(conns, limit_conns) * 2,
        max_inbound_per_ip=conns * 2,
        inbound_burst_per_ip=conns * 2,
        limits=(
            f"system.conns_inbound={limit_conns}",
            f"system.conns={max(conns, limit_conns) * 2}",
            f"system.streams_inbound={limit_streams}",
            f"system.streams={max(streams, limit_streams) * 2}",
            f"transient.conns_inbound={DIAL_CONCURRENCY * 4}",
            f"transient.conns={DIAL_CONCURRENCY * 4}",
            f"transient.streams_inbound={max(streams, limit_streams) * 2}",
            f"transient.streams={max(streams, limit_streams) * 2}",
            f"protocol.streams_inbound={max(streams, limit_streams) * 2}",
            f"protocol.streams={max(streams, limit_streams) * 2}",
            f"service.streams_inbound={max(streams, limit_streams) * 2}",
            f"service.streams={max(streams, limit_streams) * 2}",
        ),
        conn_low_water=conns * 2,
        conn_high_water=conns * 2,
    )


# --- the client process ----------------------------------------------------------------------


def _client_main(pipe: Pipe, addr: str, server: str, conns: int, streams: int) -> None:
    asyncio.run(_client(pipe, addr, PeerId.from_string(server), conns, streams))


async def _client(pipe: Pipe, addr: str, server: PeerId, conns: int, streams: int) -> None:
    from multiaddr import Multiaddr

    from switchy.stack.mux import MuxedConnection
    from switchy.stack.mux.yamux import Yamux
    from switchy.stack.negotiation import select_protocol_lazy
    from switchy.stack.security.noise import NoiseSecurity
    from switchy.stack.upgrader import Upgrader

    cfg = NetworkConfig(keepalive_interval=0)
    target = Multiaddr(addr)
    tcp = TcpTransport()
    tcp.bind(KeyPair.generate(), cfg)
    held: list[MuxedConnection] = []
    refused = 0
    sem = asyncio.Semaphore(DIAL_CONCURRENCY)

    async def dial() -> None:
        nonlocal refused
        async with sem:
            key = KeyPair.generate()
            up = Upgrader(key, [NoiseSecurity(cfg)], [Yamux()], cfg)
            try:
                raw = await tcp.dial(target)
                assert not isinstance(raw, MuxedConnection)
                conn = await asyncio.wait_for(up.upgrade_outbound(raw, server), 30)
                # the server may still refuse after the handshake: a ping tells
                await conn.ping(timeout=30)  # type: ignore[attr-defined]
            except Exception:
                refused += 1
                return
            held.append(conn)

    t0 = time.perf_counter()
    await asyncio.gather(*(dial() for _ in range(conns)))
    pipe.send({"connected": len(held), "refused": refused, "seconds": time.perf_counter() - t0})
    pipe.recv()  # go on with the streams

    open_streams: list[Any] = []
    ok = bad = refused_streams = 0
    ssem = asyncio.Semaphore(STREAM_CONCURRENCY)

    async def one(i: int) -> None:
        nonlocal ok, bad, refused_streams
        if not held:
            return
        conn = held[i % len(held)]
        payload = f"stream {i} ".encode() * 4
        async with ssem:
            try:
                s = await conn.open_stream()
                await select_protocol_lazy(s, ECHO_PROTOCOL)
                await s.write(payload)
                got = b""
                while len(got) < len(payload):
                    chunk = await asyncio.wait_for(s.read(), 30)
                    if not chunk:
                        break
                    got += chunk
            except Exception:
                refused_streams += 1
                return
        open_streams.append(s)  # kept open: every stream is held at once at the end
        if got == payload:
            ok += 1
        else:
            bad += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(streams)))
    # still serving the connections within the limits: one more echo on each
    alive = 0
    for conn in held:
        try:
            await conn.ping(timeout=30)  # type: ignore[attr-defined]
            alive += 1
        except Exception:
            pass
    pipe.send(
        {
            "echoed": ok,
            "wrong": bad,
            "refused": refused_streams,
            "held": len(open_streams),
            "connections_alive": alive,
            "seconds": time.perf_counter() - t0,
        }
    )
    pipe.recv()  # close now
    t0 = time.perf_counter()
    errors = 0
    for conn in held:
        try:
            await asyncio.wait_for(conn.close(), 30)
        except Exception:
            errors += 1
    pipe.send(
        {"closed": len(held) - errors, "close_errors": errors, "seconds": time.perf_counter() - t0}
    )


# --- the server side ----------------------------------------------------------------------------


async def run_load(
    conns: int, streams: int, *, limit_conns: int | None = None, limit_streams: int | None = None
) -> dict[str, Any]:
    """Hold ``conns`` inbound connections and ``streams`` echo streams across them at once;
    with limits below those counts, check that the excess is refused cleanly."""
    limit_conns = limit_conns or conns
    limit_streams = limit_streams or streams
    cfg = server_config(conns, streams, limit_conns=limit_conns, limit_streams=limit_streams)
    node = Node(transports=[TcpTransport()], services=[EchoService()], config=cfg)
    loop = asyncio.get_running_loop()
    report: dict[str, Any] = {
        "connections_tried": conns,
        "streams_tried": streams,
        "limit_connections": limit_conns,
        "limit_streams": limit_streams,
    }
    async with node:
        await node.listen("/ip4/127.0.0.1/tcp/0")
        from multiprocessing import resource_tracker

        resource_tracker.ensure_running()  # its pipe stays open: start it before the baseline
        gc.collect()
        base_rss, base_fds, base_tasks = rss_bytes(), fd_count(), len(asyncio.all_tasks())
        base_fd_set = fd_targets()
        ctx = mp.get_context("spawn")
        ours, theirs = ctx.Pipe()
        proc = ctx.Process(
            target=_client_main,
            args=(theirs, str(node.listen_addrs[0]), str(node.peer_id), conns, streams),
            daemon=True,
        )
        proc.start()
        try:

            async def recv() -> dict[str, Any]:
                while not await loop.run_in_executor(None, ours.poll, 0.5):
                    if not proc.is_alive() and not ours.poll():
                        raise RuntimeError(f"the load client died (exit code {proc.exitcode})")
                result: dict[str, Any] = ours.recv()
                return result

            phase1 = await recv()
            conn_rss = rss_bytes()
            report["connect"] = phase1
            report["server_connections"] = len(node.connections())
            report["refused_connections_blocked"] = dict(
                (f"{k}/{r}", v) for (k, r), v in node.limits.blocked.items()
            )
            ours.send("go")
            phase2 = await recv()
            peak_rss = rss_bytes()
            report["streams"] = phase2
            report["server_streams"] = node.limits.system.used("streams")
            report["usage_system_at_peak"] = node.limits.usage()["system"]
            n_conns = max(1, report["server_connections"])
            report["rss_base_mib"] = round(base_rss / 2**20, 1)
            report["rss_peak_mib"] = round(peak_rss / 2**20, 1)
            report["bytes_per_connection"] = (conn_rss - base_rss) // n_conns
            report["bytes_per_stream"] = (peak_rss - conn_rss) // max(1, phase2["held"])
            report["fds_at_peak"] = fd_count() - base_fds
            report["blocked"] = {f"{k}/{r}": v for (k, r), v in node.limits.blocked.items()}
            gone = asyncio.Event()

            def on_event(_ev: object) -> None:
                if not node.connections():
                    gone.set()

            node.on_connection_event(on_event)
            ours.send("close")
            report["close"] = await recv()
            if node.connections():
                await asyncio.wait_for(gone.wait(), 60)
        finally:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
            proc.close()
            ours.close()
            theirs.close()
        for _ in range(100):  # handler tasks end as their streams' ends arrive
            if len(asyncio.all_tasks()) <= base_tasks:
                break
            await asyncio.sleep(0.05)
        report["after"] = {
            "usage": node.limits.usage(),
            "fds_over_base": fd_count() - base_fds,
            "fds_new": sorted(fd_targets() - base_fd_set),
            "tasks_over_base": len(asyncio.all_tasks()) - base_tasks,
            "rss_mib": round(rss_bytes() / 2**20, 1),
        }
    return report
