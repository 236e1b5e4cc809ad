"""Reachability end to end in the simulator (virtual time): a node behind each NAT preset
learns its reachability and external address from AutoNAT and observed addresses, and
reserves on a relay by itself when it is private.

The world: a router ``isp``; four public AutoNAT servers ``s1``..``s4`` and a relay
``relay`` on it; the node ``alice`` behind a NAT box ``home`` of the preset (``cgnat``: a
home box under a carrier box ``home-cgn``).  Alice dials from her listening port (TCP-like
streams with ``reuse_port``, QUIC from its socket), so peers observe her NAT mapping of it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Final

import attrs
import pytest
from multiaddr import Multiaddr

from switchy.protocols.autonat import AutoNATService
from switchy.protocols.identify import IdentifyService
from switchy.stack.addrbook import Reachability
from switchy.stack.node import Node, ProtocolService
from switchy.transports.quic.sim import sim_quic_transport
from switchy.transports.relay import AutoRelay, RelayConfig, RelayService, RelayTransport
from switchy.transports.sim import SimConfig, SimTransport, Simulation, run_simulation

QUIET = SimConfig(default_packet_loss=0.0)
PORT: Final = 4001
SERVERS: Final = ("s1", "s2", "s3", "s4")

#: What alice concludes behind each preset, and why.
EXPECTED: Final = {
    # no box in the way at all: her own address is reachable
    "open": Reachability.PUBLIC,
    # endpoint-independent filtering: anyone reaches the external address of her mapping
    "full_cone": Reachability.PUBLIC,
    # address-dependent filtering lets in every port of a host she has sent to; an AutoNAT
    # server she talks to is such a host, so its dial-back arrives.  AutoNAT cannot tell
    # this NAT from a full cone (go-libp2p's cannot either): she is reachable by the peers
    # she contacts, which is what hole punching then relies on.
    "address_restricted": Reachability.PUBLIC,
    # the usual home router: dial-backs come from another port and are filtered
    "port_restricted": Reachability.PRIVATE,
    # a new mapping (random port) per destination: nothing to confirm, nothing reachable
    "symmetric": Reachability.PRIVATE,
    # two port-restricted layers
    "cgnat": Reachability.PRIVATE,
    # no translation, inbound filtered
    "firewall": Reachability.PRIVATE,
}


@attrs.define
class World:
    alice: Node
    autonat: AutoNATService
    autorelay: AutoRelay
    relay: Node
    servers: list[Node]
    #: Set when the relay received an identify push carrying a circuit address of alice.
    pushed: asyncio.Event


def _transport(sim: Simulation, host: str, kind: str) -> Any:
    if kind == "quic":
        return sim_quic_transport(sim.network, host)
    return SimTransport(sim.network, host, reuse_port=True)


def _listen(kind: str) -> str:
    return f"/memory/{PORT}/quic-v1" if kind == "quic" else f"/memory/{PORT}"


def _node(sim: Simulation, host: str, kind: str, *services: ProtocolService) -> Node:
    return Node(
        transports=[_transport(sim, host, kind)],
        services=[IdentifyService(), *services],
        entropy=sim.entropy_source(host),
        listen=[_listen(kind)],
    )


def build(sim: Simulation, preset: str, kind: str) -> World:
    net = sim.network
    net.add_hosts(["isp", *SERVERS, "relay", "stranger"])
    for h in (*SERVERS, "relay", "stranger"):
        net.add_link(h, "isp", latency=0.01, loss=0.0)
    net.add_nat("home", lan=["alice"], wan="isp", preset=preset)
    servers = [_node(sim, h, kind, AutoNATService(client=False)) for h in SERVERS]
    unlimited = RelayConfig(limit_data=0, limit_duration=0)
    relay = _node(sim, "relay", kind, RelayService(unlimited))
    autonat = AutoNATService(server=False)
    autorelay = AutoRelay()
    alice = _node(sim, "alice", kind, autonat, RelayTransport(), autorelay)
    pushed = asyncio.Event()
    ident = next(s for s in relay.services if isinstance(s, IdentifyService))
    original = ident._apply

    def apply(peer: Any, info: Any, *, push: bool = False, conn: Any = None) -> None:
        original(peer, info, push=push, conn=conn)
        if push and any("p2p-circuit" in str(a) for a in info.listen_addrs):
            pushed.set()

    ident._apply = apply  # type: ignore[method-assign]
    return World(alice, autonat, autorelay, relay, servers, pushed)


async def enter(stack: contextlib.AsyncExitStack, w: World) -> None:
    for n in (*w.servers, w.relay):
        await stack.enter_async_context(n)
    await stack.enter_async_context(w.alice)
    for n in (*w.servers, w.relay):
        await w.alice.connect(n.full_addrs[0])


def _external(sim: Simulation, kind: str) -> Multiaddr:
    """Alice's listening port as hosts outside see it (endpoint-independent mappings)."""
    addr = sim.network.public_address("alice", PORT, proto="udp" if kind == "quic" else "tcp")
    return Multiaddr(f"{addr}/quic-v1") if kind == "quic" else addr


def run_preset(preset: str, kind: str, seed: int) -> dict[str, Any]:
    """Run the world for ``preset``; return what alice concluded (for assertions and the
    determinism check)."""
    out: dict[str, Any] = {}

    async def main(sim: Simulation) -> None:
        w = build(sim, preset, kind)
        changes: list[tuple[str, str]] = []
        async with contextlib.AsyncExitStack() as stack:
            await enter(stack, w)
            w.alice.addresses.on_reachability_changed(
                lambda old, new: changes.append((old.value, new.value))
            )
            expected = EXPECTED[preset]
            async with asyncio.timeout(900):
                await w.autonat.wait_reachability(expected)
            out["learned_at"] = sim.now
            if expected is Reachability.PRIVATE:
                async with asyncio.timeout(300):
                    await w.autorelay.wait_relays(1)
                out["relays"] = w.autorelay.relays
                circuits = w.autorelay.circuit_addrs
                assert circuits and all(a in w.alice.announced_addrs for a in circuits)
                # the relay heard about the circuit address by identify push
                async with asyncio.timeout(60):
                    await w.pushed.wait()
                assert any(a in w.relay.peerstore.addrs(w.alice.peer_id) for a in circuits)
                # and a stranger reaches alice through it
                stranger = _node(sim, "stranger", kind, RelayTransport())
                async with stranger:
                    conn = await stranger.connect(
                        circuits[0].encapsulate(f"/p2p/{w.alice.peer_id}")
                    )
                    assert conn.is_limited and conn.remote_peer == w.alice.peer_id
                out["circuit_addrs"] = circuits
            else:
                await asyncio.sleep(120)  # AutoRelay has had time to act: it holds nothing
                out["relays"] = w.autorelay.relays
            # let every observed address be probed (a retry interval), then read the book
            await asyncio.sleep(w.autonat.retry_interval + 30)
            book = w.alice.addresses
            out["reachability"] = w.alice.reachability
            out["changes"] = changes
            out["confirmed"] = book.confirmed()
            out["candidates"] = book.candidates()
            out["verdicts"] = dict(w.autonat.addresses)
            if preset in ("full_cone", "address_restricted", "port_restricted"):
                out["external"] = _external(sim, kind)

    run_simulation(main, seed=seed, config=QUIET)
    return out


@pytest.mark.parametrize("preset", list(EXPECTED))
def test_each_nat_preset_learns_its_reachability_and_external_address(preset: str) -> None:
    got = run_preset(preset, "tcp", seed=21)
    expected = EXPECTED[preset]
    assert got["reachability"] is expected
    if preset in ("full_cone", "address_restricted"):
        # her LAN address is found private first, then her external address public
        assert got["changes"] == [("unknown", "private"), ("private", "public")]
    else:  # one change, no flapping while newly observed addresses are probed
        assert got["changes"] == [("unknown", expected.value)]
    if expected is Reachability.PRIVATE:
        assert len(got["relays"]) == 1  # one relay in this world, reserved automatically
    else:
        assert got["relays"] == []
    if preset in ("full_cone", "address_restricted"):
        # observed by 5 peers (4 servers, the relay) and reached by AutoNAT: announced
        assert got["confirmed"] == [got["external"]]
    elif preset == "port_restricted":
        # every peer sees the same mapping, but AutoNAT cannot reach it: a candidate only
        assert got["confirmed"] == [] and got["candidates"][0] == got["external"]
    elif preset == "symmetric":
        # one mapping per destination: five candidates, none confirmed
        assert got["confirmed"] == [] and len(got["candidates"]) == 5
    elif preset == "cgnat":
        assert got["confirmed"] == [] and got["candidates"]
    elif preset in ("open", "firewall"):
        # no translation: peers see her own address; nothing external to announce
        assert got["confirmed"] == [] and got["candidates"] == []


@pytest.mark.parametrize("preset", ["full_cone", "port_restricted", "symmetric"])
def test_quic_through_nats(preset: str) -> None:
    got = run_preset(preset, "quic", seed=22)
    assert got["reachability"] is EXPECTED[preset]
    if preset == "full_cone":
        assert got["confirmed"] == [got["external"]]
    else:
        assert got["confirmed"] == [] and got["relays"]


def test_same_seed_same_conclusions_at_the_same_virtual_times() -> None:
    a = run_preset("port_restricted", "tcp", seed=5)
    b = run_preset("port_restricted", "tcp", seed=5)
    assert a == b


def test_mappings_kept_alive_by_the_relay_connection_and_expiring_without_traffic() -> None:
    """Hours later the relay still reaches alice (keep-alives refresh the NAT mapping, the
    reservation is renewed, her observed address stays current while its connections are
    open); once every connection is gone the mapping expires and so does the observation."""

    async def main(sim: Simulation) -> None:
        w = build(sim, "port_restricted", "quic")
        async with contextlib.AsyncExitStack() as stack:
            await enter(stack, w)
            async with asyncio.timeout(600):
                await w.autorelay.wait_relays(1)
            await asyncio.sleep(3 * 3600)  # reservation TTL is 1 h: renewed twice or more
            circuits = w.autorelay.circuit_addrs
            assert circuits and w.autorelay.relays == [w.relay.peer_id]
            stranger = await stack.enter_async_context(
                _node(sim, "stranger", "quic", RelayTransport())
            )
            conn = await stranger.connect(circuits[0].encapsulate(f"/p2p/{w.alice.peer_id}"))
            assert conn.remote_peer == w.alice.peer_id
            assert w.alice.addresses.candidates()  # current while the connections are open
            # now everyone leaves (alice too, or she would keep dialing her relay and
            # refresh the mapping): nothing refreshes it any more
            for n in (stranger, w.relay, *w.servers, w.alice):
                await n.close()
            box = sim.network.nat("home")
            await asyncio.sleep(box.config.udp_timeout + 1)
            assert box.mappings() == []
            assert any(e.src == "home" for e in sim.trace.of_kind("nat_expire"))
            await asyncio.sleep(w.alice.addresses.ttl)
            assert w.alice.addresses.candidates() == []

    run_simulation(main, seed=23, config=QUIET)
