"""The topology that matters, on the simulator (virtual time): client and home server on one
LAN, the tunnel server far away; prints one JSON object.

Hosts ``client`` and ``server`` are ``--lan-ms`` apart (one-way link latency, default
2 ms); the ``tunnel`` host is ``--far-ms`` from both (default 40 ms).  The same ASGI
"media server" (a small JSON listing, a 1 MiB file) on the server host is reached

1. ``tunnel``: the tunnel protocol over simulated streams (:mod:`bench.tunnel.streams`:
   the client's HTTP goes to the tunnel host, a JSON frame to the sender on the server
   host over its one connection, binary frames back);
2. ``direct``: switchy, client node to server node over the LAN (Noise + yamux),
   httpx over :class:`~switchy.protocols.http.client.SwitchyTransport` to
   :class:`~switchy.protocols.http.HttpService`;
3. ``relay``: the same through a circuit relay on the tunnel host (what still serves
   when no direct connection can be made).

Figures (virtual milliseconds, deterministic for a seed): ``first_ms`` (a new client:
connection set-up and the first request), ``median_ms``/``p99_ms`` of requests on an
established connection, ``download_ms`` of the 1 MiB file.  Goal (the issue): the direct
path's latency is the LAN's, not twice the tunnel's distance.

Usage: ``python -m bench.bench_http_topology [--lan-ms 2] [--far-ms 40] [--requests 50]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any, Final

import h11
import httpx

from bench.tunnel.streams import StreamSender, StreamTunnel
from switchy.protocols.http import HttpService
from switchy.protocols.http.client import SwitchyTransport
from switchy.protocols.http.core import ClientCore
from switchy.protocols.http.io import next_event
from switchy.protocols.http.server import ASGIApp
from switchy.stack.node import Node
from switchy.stack.stream import Stream
from switchy.transports.relay import RelayConfig, RelayService, RelayTransport
from switchy.transports.sim import SimConfig, SimTransport, Simulation

__all__ = ["measure", "media_app"]

LIBRARY: Final = json.dumps({"tracks": [{"id": i, "title": f"song {i}"} for i in range(10)]})
FILE_SIZE: Final = 1024 * 1024


def media_app() -> ASGIApp:
    """``/library.json`` (small JSON) and ``/media.bin`` (:data:`FILE_SIZE` bytes)."""
    library = LIBRARY.encode()
    media = bytes(range(256)) * (FILE_SIZE // 256)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = library if scope["path"] == "/library.json" else media
        kind = b"application/json" if body is library else b"application/octet-stream"
        headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


class _H11Client:
    """A keep-alive HTTP/1.1 client on one stream (the tunnel's browser)."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.core = ClientCore()

    async def get(self, path: str) -> tuple[int, bytes]:
        core = self.core
        await self.stream.write(
            core.request(b"GET", path.encode(), [(b"host", b"tunnel")]) + core.end()
        )
        head = await next_event(core, self.stream, 60)
        assert isinstance(head, h11.Response), head
        body = bytearray()
        while not isinstance(event := await next_event(core, self.stream, 60), h11.EndOfMessage):
            assert isinstance(event, h11.Data), event
            body += event.data
        if core.conn.our_state is h11.DONE and core.conn.their_state is h11.DONE:
            core.conn.start_next_cycle()  # keep-alive; else the server closes (424)
        return head.status_code, bytes(body)


def _node(sim: Simulation, host: str, *services: Any) -> Node:
    return Node(
        transports=[SimTransport(sim.network, host)],
        services=[RelayTransport(), *services],
        entropy=sim.entropy_source(host),
        listen=["/memory/4001"],
    )


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 3)


def _summary(first: float, warm: list[float], download: float) -> dict[str, float]:
    return {
        "first_ms": _ms(first),
        "median_ms": _ms(statistics.median(warm)),
        "p99_ms": _ms(statistics.quantiles(warm, n=100)[98] if len(warm) > 1 else warm[0]),
        "download_ms": _ms(download),
    }


async def _tunnel(sim: Simulation, requests: int) -> dict[str, float]:
    tunnel = StreamTunnel()
    t_transport = SimTransport(sim.network, "tunnel")
    here = sim.network.host("tunnel")
    clients = await t_transport.listen(here.address(4001), tunnel.serve_client)  # type: ignore[arg-type]
    senders = await t_transport.listen(here.address(4002), tunnel.serve_sender)  # type: ignore[arg-type]
    s_conn = await SimTransport(sim.network, "server").dial(senders.addrs[0])
    assert isinstance(s_conn, Stream)
    sender = sim.loop.create_task(StreamSender(media_app()).run(s_conn))
    await tunnel.connected.wait()
    c_transport = SimTransport(sim.network, "client")
    start = sim.now
    conn = await c_transport.dial(clients.addrs[0])
    assert isinstance(conn, Stream)
    client = _H11Client(conn)
    status, body = await client.get("/library.json")
    first = sim.now - start
    assert status == 200 and body == LIBRARY.encode()
    warm = []
    for _ in range(requests):
        t = sim.now
        await client.get("/library.json")
        warm.append(sim.now - t)
    t = sim.now
    _, body = await client.get("/media.bin")
    download = sim.now - t
    assert len(body) == FILE_SIZE
    await conn.close()
    sender.cancel()
    await clients.close()
    await senders.close()
    return _summary(first, warm, download)


async def _switchy(sim: Simulation, requests: int, relayed: bool) -> dict[str, float]:
    server = _node(sim, "server", HttpService(media_app(), lifespan="off"))
    relay = _node(sim, "tunnel", RelayService(RelayConfig(limit_data=0, limit_duration=0)))
    client = _node(sim, "client")
    async with server, relay, client:
        if relayed:
            (circuit,) = await server.listen(f"{relay.full_addrs[0]}/p2p-circuit")
            target = f"{circuit}/p2p/{server.peer_id}"
        else:
            target = str(server.full_addrs[0])
        transport = SwitchyTransport(client, peers={"media": server.peer_id})
        async with httpx.AsyncClient(transport=transport, base_url="http://media") as http:
            start = sim.now
            conn = await client.connect(target)
            assert ("/p2p-circuit" in str(conn.remote_addr)) == relayed
            resp = await http.get("/library.json")
            first = sim.now - start
            assert resp.content == LIBRARY.encode()
            warm = []
            for _ in range(requests):
                t = sim.now
                (await http.get("/library.json")).raise_for_status()
                warm.append(sim.now - t)
            t = sim.now
            resp = await http.get("/media.bin")
            download = sim.now - t
            assert len(resp.content) == FILE_SIZE
    return _summary(first, warm, download)


def measure(
    *, lan_ms: float = 2.0, far_ms: float = 40.0, requests: int = 50, seed: int = 16
) -> dict[str, Any]:
    """The three ways on the topology (one simulation each, same seed); see the module."""
    results: dict[str, Any] = {}
    for way in ("tunnel", "direct", "relay"):
        with Simulation(seed, config=SimConfig(default_packet_loss=0.0)) as sim:
            net = sim.network
            net.add_hosts(["client", "server", "tunnel"])
            net.add_link("client", "server", latency=lan_ms / 1e3)
            net.add_link("client", "tunnel", latency=far_ms / 1e3)
            net.add_link("server", "tunnel", latency=far_ms / 1e3)
            if way == "tunnel":
                results[way] = sim.run(_tunnel(sim, requests))
            else:
                results[way] = sim.run(_switchy(sim, requests, relayed=way == "relay"))
    anchor = results["tunnel"]
    results["relative_to_tunnel"] = {
        way: {k: round(results[way][k] / anchor[k], 3) for k in anchor}
        for way in ("direct", "relay")
    }
    results["topology"] = {"lan_ms": lan_ms, "far_ms": far_ms, "one_way": True}
    return results


def main() -> None:
    """Run the comparison; print the JSON."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--lan-ms", type=float, default=2.0)
    parser.add_argument("--far-ms", type=float, default=40.0)
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()
    t = time.perf_counter()
    results = measure(lan_ms=args.lan_ms, far_ms=args.far_ms, requests=args.requests)
    results["wall_s"] = round(time.perf_counter() - t, 2)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
