"""The simulated topology of the issue (virtual time): client and home server 2 ms apart on
one LAN, the tunnel server 40 ms away.  Switchy's direct path takes the LAN's round trip;
the tunnel's path takes four times the far distance; a relay on the tunnel's host costs
what the tunnel costs."""

from __future__ import annotations

import pytest

pytest.importorskip("httpx")

from bench.bench_http_topology import measure

LAN_MS = 2.0
FAR_MS = 40.0


def test_direct_switchy_takes_the_lans_latency_and_the_tunnel_four_far_legs() -> None:
    r = measure(lan_ms=LAN_MS, far_ms=FAR_MS, requests=5)
    tunnel, direct, relay = r["tunnel"], r["direct"], r["relay"]
    # the tunnel: client -> tunnel -> sender and back, on every request
    assert tunnel["median_ms"] >= 4 * FAR_MS
    # switchy direct: one LAN round trip per request (a new stream is proposed
    # optimistically with the request), never anything of the far distance
    assert direct["median_ms"] <= 1.5 * 2 * LAN_MS
    assert direct["median_ms"] < 2 * FAR_MS  # "not twice the tunnel's distance"
    assert direct["first_ms"] < tunnel["first_ms"] and direct["download_ms"] < tunnel["download_ms"]
    # relayed through the tunnel's host: the same path as the tunnel's, no more per request
    assert relay["median_ms"] <= 1.3 * tunnel["median_ms"]


def test_the_topology_comparison_is_deterministic() -> None:
    assert measure(requests=3, seed=5) == measure(requests=3, seed=5)


def test_the_simulated_tunnel_answers_424_without_a_sender() -> None:
    from bench.bench_http_topology import _H11Client
    from bench.tunnel.streams import StreamTunnel
    from switchy.transports.sim import SimConfig, SimTransport, Simulation

    async def main(sim: Simulation) -> int:
        sim.network.add_hosts(["client", "tunnel"])
        sim.network.add_link("client", "tunnel", latency=0.04)
        tunnel = StreamTunnel()
        listener = await SimTransport(sim.network, "tunnel").listen(
            sim.network.host("tunnel").address(4001),
            tunnel.serve_client,  # type: ignore[arg-type]
        )
        conn = await SimTransport(sim.network, "client").dial(listener.addrs[0])
        status, _ = await _H11Client(conn).get("/library.json")  # type: ignore[arg-type]
        await listener.close()
        return status

    with Simulation(1, config=SimConfig(default_packet_loss=0.0)) as sim:
        assert sim.run(main(sim)) == 424
