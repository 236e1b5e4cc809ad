"""AutoRelay in the simulator (virtual time): reachability reported through the core's
generic hook (``node.addresses.report_reachability``) drives the reservations."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from switchy.protocols.identify import IdentifyService
from switchy.stack.addrbook import Reachability
from switchy.stack.errors import InvalidConfiguration
from switchy.stack.node import Node, ProtocolService
from switchy.transports.relay import (
    HOP_PROTOCOL,
    AutoRelay,
    RelayConfig,
    RelayService,
    RelayTransport,
)
from switchy.transports.sim import SimConfig, SimTransport, Simulation, run_simulation

QUIET = SimConfig(default_packet_loss=0.0)
RELAYS = ("r1", "r2", "r3")


def _node(sim: Simulation, host: str, *services: ProtocolService) -> Node:
    return Node(
        transports=[SimTransport(sim.network, host)],
        services=[IdentifyService(), *services],
        entropy=sim.entropy_source(host),
        listen=["/memory/4001"],
    )


def _world(sim: Simulation) -> None:
    sim.network.add_hosts(["isp", "alice", "other", *RELAYS])
    for h in ("alice", "other", *RELAYS):
        sim.network.add_link(h, "isp", latency=0.01)


def test_private_reserves_on_static_relays_first_then_discovered_up_to_max() -> None:
    async def main(sim: Simulation) -> None:
        _world(sim)
        cfg = RelayConfig(limit_data=0, limit_duration=0)
        relays = [_node(sim, h, RelayService(cfg)) for h in RELAYS]
        async with contextlib.AsyncExitStack() as stack:
            for r in relays:
                await stack.enter_async_context(r)
            auto = AutoRelay([relays[2].full_addrs[0]])  # r3 is configured
            alice = await stack.enter_async_context(_node(sim, "alice", RelayTransport(), auto))
            ident = next(s for s in alice.services if isinstance(s, IdentifyService))
            for r in relays[:2]:  # r1, r2 are just connected peers announcing the hop protocol
                await alice.connect(r.full_addrs[0])
                # the precondition: identify told alice their protocols (discovery reads them)
                await ident.wait_identified(r.peer_id, timeout=60)
                assert HOP_PROTOCOL in alice.peerstore.protocols(r.peer_id)
            assert auto.relays == []  # unknown reachability: nothing reserved
            alice.addresses.report_reachability(Reachability.PRIVATE)
            async with asyncio.timeout(60):
                held = await auto.wait_relays(2)
            discovered = sorted([relays[0], relays[1]], key=lambda n: n.peer_id.to_bytes())[0]
            assert held == [relays[2].peer_id, discovered.peer_id]
            circuits = auto.circuit_addrs
            assert len(circuits) >= 2 and all(a in alice.announced_addrs for a in circuits)
            # becoming public drops every reservation and circuit address
            alice.addresses.report_reachability(Reachability.PUBLIC)
            async with asyncio.timeout(60):
                await auto.wait_released()
            assert not any("p2p-circuit" in str(a) for a in alice.announced_addrs)

    run_simulation(main, seed=31, config=QUIET)


def test_a_relay_that_goes_away_is_replaced() -> None:
    async def main(sim: Simulation) -> None:
        _world(sim)
        cfg = RelayConfig(limit_data=0, limit_duration=0)
        relays = [_node(sim, h, RelayService(cfg)) for h in RELAYS[:2]]
        async with contextlib.AsyncExitStack() as stack:
            for r in relays:
                await stack.enter_async_context(r)
            auto = AutoRelay([r.full_addrs[0] for r in relays], max_relays=1)
            alice = await stack.enter_async_context(_node(sim, "alice", RelayTransport(), auto))
            alice.addresses.report_reachability(Reachability.PRIVATE)
            async with asyncio.timeout(60):
                assert await auto.wait_relays(1) == [relays[0].peer_id]
            sim.network.crash("r1")
            async with asyncio.timeout(600):
                while auto.relays != [relays[1].peer_id] or not auto.circuit_addrs:
                    await auto._changed.wait()
            assert all(str(relays[1].peer_id) in str(a) for a in auto.circuit_addrs)
            # others reach alice through the new relay
            other = await stack.enter_async_context(_node(sim, "other", RelayTransport()))
            target = auto.circuit_addrs[0].encapsulate(f"/p2p/{alice.peer_id}")
            conn = await other.connect(target)
            assert conn.is_limited and conn.remote_peer == alice.peer_id

    run_simulation(main, seed=32, config=QUIET)


def test_autorelay_configuration_errors() -> None:
    with pytest.raises(InvalidConfiguration, match="max_relays"):
        AutoRelay(max_relays=0)
    with pytest.raises(InvalidConfiguration, match="must end with /p2p"):
        AutoRelay(["/memory/4001"])

    async def main(sim: Simulation) -> None:
        _world(sim)
        node = _node(sim, "alice", AutoRelay())
        with pytest.raises(InvalidConfiguration, match="needs a RelayTransport"):
            await node.start()
        await node.close()

    run_simulation(main, seed=33, config=QUIET)
