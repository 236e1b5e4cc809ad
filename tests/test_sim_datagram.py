"""Simulated datagrams: loss, duplication, reordering, bandwidth and holds are visible."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from switchy.stack.errors import ConnectionClosed, InvalidConfiguration, MessageTooLarge, NoRoute
from switchy.transports.sim import SimConfig, SimDatagramTransport, Simulation, run_simulation

QUIET = SimConfig(default_packet_loss=0.0)


class Collector(asyncio.DatagramProtocol):
    """Keeps every datagram received, with its arrival time."""

    def __init__(self) -> None:
        self.received: list[tuple[float, bytes, Any]] = []
        self.lost: list[Exception | None] = []
        self.transport: SimDatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, SimDatagramTransport)
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.append((asyncio.get_running_loop().time(), data, addr))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.append(exc)


async def endpoints(
    sim: Simulation, **link: Any
) -> tuple[SimDatagramTransport, Collector, SimDatagramTransport, Collector]:
    net = sim.network
    net.add_hosts(["a", "b"])
    net.add_link("a", "b", **link)
    ta, pa = await net.create_datagram_endpoint(Collector, "a", 5000)
    tb, pb = await net.create_datagram_endpoint(Collector, "b", 6000)
    assert isinstance(pa, Collector) and isinstance(pb, Collector)
    return ta, pa, tb, pb


def test_clean_link_delivers_everything_in_order_after_the_latency() -> None:
    async def main(sim: Simulation) -> None:
        ta, _pa, tb, pb = await endpoints(sim, latency=0.03)
        for i in range(50):
            ta.sendto(i.to_bytes(2, "big"), ("b", 6000))
        await asyncio.sleep(1)
        assert [d for _, d, _ in pb.received] == [i.to_bytes(2, "big") for i in range(50)]
        assert all(t == pytest.approx(0.03) for t, _, _ in pb.received)
        assert pb.received[0][2] == ("a", 5000)
        assert tb.get_extra_info("sockname") == ("b", 6000)
        assert tb.get_extra_info("simulated") is True

    run_simulation(main, seed=1, config=QUIET)


def test_loss_duplication_and_reordering_are_visible() -> None:
    async def main(sim: Simulation) -> None:
        ta, _pa, _tb, pb = await endpoints(sim, latency=0.05, loss=0.2, duplicate=0.2, reorder=0.3)
        n = 1000
        for i in range(n):
            ta.sendto(i.to_bytes(4, "big"), ("b", 6000))
            await asyncio.sleep(0.001)
        await asyncio.sleep(2)
        seqs = [int.from_bytes(d, "big") for _, d, _ in pb.received]
        distinct = set(seqs)
        assert len(distinct) < n * 0.9  # losses
        assert len(seqs) > len(distinct)  # duplicates
        assert seqs != sorted(seqs)  # reordering
        drops = sim.trace.of_kind("drop")
        assert drops and all(e.extra and e.extra["reason"] == "loss" for e in drops)
        assert sim.trace.of_kind("duplicate")
        assert sim.network.host("a").counters.drops == len(drops)
        assert sim.network.link("a", "b").counters.drops == len(drops)

    run_simulation(main, seed=5, config=QUIET)


def test_bandwidth_queues_and_tail_drops() -> None:
    async def main(sim: Simulation) -> None:
        ta, _pa, _tb, pb = await endpoints(sim, latency=0.01, bandwidth=10_000)
        for _ in range(20):
            ta.sendto(bytes(1000), ("b", 6000))
        await asyncio.sleep(5)
        times = [t for t, _, _ in pb.received]
        assert len(times) == 11  # 1 s of queue at 10 kB/s holds ~10 more packets
        assert times[0] == pytest.approx(0.11)
        assert times[-1] == pytest.approx(1.11)
        reasons = {e.extra["reason"] for e in sim.trace.of_kind("drop") if e.extra}
        assert reasons == {"queue_full"}

    run_simulation(main, seed=1, config=QUIET)


def test_partition_hold_release_and_unreachable_port() -> None:
    async def main(sim: Simulation) -> None:
        net = sim.network
        ta, _pa, tb, pb = await endpoints(sim, latency=0.01)
        part = net.partition(["a"], ["b"], one_way=True)
        ta.sendto(b"blocked", ("b", 6000))
        await asyncio.sleep(1)
        assert pb.received == []
        tb.sendto(b"other way", ("a", 5000))
        net.heal(part)
        net.hold("a", "b")
        ta.sendto(b"parked", ("b", 6000))
        await asyncio.sleep(10)
        assert pb.received == []
        net.release("a", "b")
        await asyncio.sleep(1)
        assert [d for _, d, _ in pb.received] == [b"parked"]
        ta.sendto(b"nobody", ("b", 6001))
        await asyncio.sleep(1)
        reasons = [e.extra["reason"] for e in sim.trace.of_kind("drop") if e.extra]
        assert reasons == ["partitioned", "port_unreachable"]

    run_simulation(main, seed=1, config=QUIET)


def test_bad_input_and_closing() -> None:
    async def main(sim: Simulation) -> None:
        ta, pa, _tb, _pb = await endpoints(sim, latency=0.01)
        with pytest.raises(NoRoute, match="unknown host 'zz'"):
            ta.sendto(b"x", ("zz", 1))
        with pytest.raises(InvalidConfiguration, match="bad port"):
            ta.sendto(b"x", ("b", 0))
        with pytest.raises(InvalidConfiguration, match="needs an address"):
            ta.sendto(b"x")
        with pytest.raises(MessageTooLarge, match="max_message_size of 100"):
            ta.sendto(bytes(101), ("b", 6000))
        from switchy.stack.errors import ConnectionFailed

        with pytest.raises(ConnectionFailed, match="already in use"):
            sim.network.open_datagram(Collector(), "a", 5000)
        ta.close()
        await asyncio.sleep(0)
        assert pa.lost == [None]
        with pytest.raises(ConnectionClosed):
            ta.sendto(b"x", ("b", 6000))
        # The port is free again.
        again, _ = sim.network.open_datagram(Collector(), "a", 5000)
        assert again.local_address == ("a", 5000)

    run_simulation(main, seed=1, config=SimConfig(default_packet_loss=0.0, max_message_size=100))


def test_connected_socket_and_crash() -> None:
    async def main(sim: Simulation) -> None:
        net = sim.network
        net.add_hosts(["a", "b", "c"])
        net.add_link("a", "b", latency=0.01)
        net.add_link("c", "b", latency=0.01)
        tb, pb = net.open_datagram(Collector(), "b", 7000, remote_addr=("a", 7001))
        ta, _ = net.open_datagram(Collector(), "a", 7001)
        tc, _ = net.open_datagram(Collector(), "c", 7001)
        assert isinstance(pb, Collector)
        ta.sendto(b"from a", ("b", 7000))
        tc.sendto(b"from c", ("b", 7000))
        with pytest.raises(InvalidConfiguration, match="connected to"):
            tb.sendto(b"x", ("c", 7001))
        tb.sendto(b"to a")
        await asyncio.sleep(1)
        assert [d for _, d, _ in pb.received] == [b"from a"]
        assert tb.get_extra_info("peername") == ("a", 7001)
        net.crash("b")
        await asyncio.sleep(0)
        assert tb.is_closing()
        assert isinstance(pb.lost[0], ConnectionClosed)
        ta.sendto(b"after crash", ("b", 7000))
        await asyncio.sleep(1)
        assert sim.trace.of_kind("drop")[-1].extra == {
            "sport": 7001,
            "dport": 7000,
            "reason": "dst_down",
        }

    run_simulation(main, seed=1, config=QUIET)
