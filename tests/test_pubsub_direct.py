"""The PubSub adapter's direct peers and asynchronous validators, in virtual time."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import pytest

from switchy.protocols.pubsub import GossipParams, PubSub, Received, ValidationResult
from switchy.stack.errors import InvalidConfiguration
from switchy.stack.identity import KeyPair
from switchy.stack.node import Node
from switchy.transports.sim import SimConfig, SimTransport, Simulation, run_simulation

QUIET = SimConfig(default_packet_loss=0.0)
T = "room"


def hosts(sim: Simulation, n: int) -> list[str]:
    names = [f"h{i}" for i in range(n)]
    sim.network.add_hosts(["core", *names])
    for h in names:
        sim.network.add_link("core", h, latency=0.01)
    return names


async def start(
    sim: Simulation, stack: AsyncExitStack, host: str, ps: PubSub, **kw: object
) -> Node:
    return await stack.enter_async_context(
        Node(
            transports=[SimTransport(sim.network, host)],
            services=[ps],
            entropy=sim.entropy_source(host),
            listen=["/memory/4001"],
            **kw,  # type: ignore[arg-type]
        )
    )


def test_direct_peers_connect_forward_outside_the_mesh_and_reconnect() -> None:
    async def main(sim: Simulation) -> None:
        h = hosts(sim, 2)
        key_a = KeyPair.generate(sim.entropy_source("keys"))
        params = GossipParams(direct_connect_ticks=5)
        async with AsyncExitStack() as stack:
            ps_b = PubSub(params=params, direct_peers=[key_a.peer_id])
            b = await start(sim, stack, h[1], ps_b)
            ps_a = PubSub(params=params, direct_peers=[b.full_addrs[0]])
            a = await start(sim, stack, h[0], ps_a, key=key_a)
            assert ps_a.direct_peers == {b.peer_id} and ps_b.direct_peers == {a.peer_id}
            sub_a, sub_b = ps_a.subscribe(T), ps_b.subscribe(T)
            # a dials b by itself (nobody called connect).
            await asyncio.wait_for(ps_a.wait_for_peers(T, 1), 10)
            await asyncio.wait_for(ps_b.wait_for_peers(T, 1), 10)
            await asyncio.sleep(3)  # heartbeats: b is never grafted
            assert ps_a.mesh_peers(T) == set() and ps_b.mesh_peers(T) == set()
            await ps_a.publish(T, b"from a")
            await ps_b.publish(T, b"from b")
            assert (await asyncio.wait_for(sub_b.get(), 5)).data == b"from b"
            assert (await asyncio.wait_for(sub_b.get(), 5)).data == b"from a"
            assert {(await asyncio.wait_for(sub_a.get(), 5)).data for _ in range(2)} == {
                b"from a",
                b"from b",
            }
            # The link goes: a redials within direct_connect_ticks heartbeats.
            for conn in a.connections(b.peer_id):
                await conn.close()
            loop = asyncio.get_running_loop()
            gone = loop.time()
            while not a.connections(b.peer_id) or b.peer_id not in ps_a.router.peers:
                await asyncio.sleep(0.5)
                assert loop.time() - gone < 20, "the direct peer was not redialled"
            await ps_b.publish(T, b"again")
            assert (await asyncio.wait_for(sub_a.get(), 5)).data == b"again"

    run_simulation(main, seed=1, config=QUIET)


def test_a_direct_peer_address_needs_a_peer_id() -> None:
    with pytest.raises(InvalidConfiguration, match="p2p"):
        PubSub(direct_peers=["/ip4/127.0.0.1/tcp/4001"])


def test_async_validators_accept_reject_ignore_time_out_and_are_bounded() -> None:
    async def main(sim: Simulation) -> None:
        h = hosts(sim, 2)
        params = GossipParams(max_pending_validations=2, validation_timeout=2.0)
        running = 0
        most = 0
        release = asyncio.Event()

        async def validator(msg: Received) -> ValidationResult:
            nonlocal running, most
            running += 1
            most = max(most, running)
            try:
                if msg.data.startswith(b"hold"):
                    await release.wait()
                await asyncio.sleep(0.2)  # the validator's own work (virtual time)
                if msg.data == b"slow":
                    await asyncio.sleep(10)
                if msg.data == b"boom":
                    raise ValueError("validator bug")
                return {b"bad": ValidationResult.REJECT, b"meh": ValidationResult.IGNORE}.get(
                    msg.data, ValidationResult.ACCEPT
                )
            finally:
                running -= 1

        async with AsyncExitStack() as stack:
            ps_a, ps_b = PubSub(), PubSub(params=params)
            a = await start(sim, stack, h[0], ps_a)
            b = await start(sim, stack, h[1], ps_b)
            ps_b.set_validator(T, validator)
            sub = ps_b.subscribe(T)
            ps_a.subscribe(T)
            await b.connect(a.full_addrs[0])
            await asyncio.wait_for(ps_b.wait_for_peers(T, 1, mesh=True), 10)
            for data in (b"ok", b"meh", b"slow", b"boom", b"bad", b"last"):
                await ps_a.publish(T, data)
                await asyncio.sleep(3)  # one at a time: the bound is tested below
            got = []
            while not sub._queue.empty():
                m = sub._queue.get_nowait()
                assert m is not None
                got.append(m.data)
            assert got == [b"ok", b"last"]
            dropped = ps_b.router.dropped
            assert dropped["rejected"] == 1
            assert dropped["ignored"] == 3  # meh, the timeout, the exception
            assert ps_b.router.peer_score(a.peer_id, asyncio.get_running_loop().time()) < 0
            # At most max_pending_validations run at once; the rest are throttled.
            most = 0
            for k in range(5):
                await ps_a.publish(T, b"hold%d" % k)
            await asyncio.sleep(0.5)
            assert most == running == 2
            # (not marked seen: copies offered again by gossip may be throttled too)
            assert dropped["validation throttled"] >= 3
            release.set()
            await asyncio.sleep(5)
            assert running == 0 and len(ps_b.router._pending) == 0
            # A plain function is still a synchronous validator.
            ps_b.set_validator(T, lambda m: ValidationResult.REJECT)
            await ps_a.publish(T, b"sync")
            await asyncio.sleep(1)
            assert dropped["rejected"] == 2 and not ps_b.router._deferred

    run_simulation(main, seed=2, config=QUIET)
