"""Discovery end to end over the simulator, in virtual time: registry, name service, Node API."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from multiaddr import Multiaddr

from switchy.protocols.discovery import connect_by_name, discover, register_name
from switchy.protocols.discovery.backends import DiscoveryBackend, RegistryBackend, SimNameBackend
from switchy.protocols.discovery.claims import seal_name_claim
from switchy.protocols.discovery.client import lookup, refresh, register, registry_request
from switchy.protocols.discovery.codec import (
    DISCOVERY_PROTOCOL,
    MAX_FRAME_SIZE,
    MAX_PIPELINED_REQUESTS,
    Lookup,
    Response,
    ServerCore,
    Status,
    decode_message,
    encode_frame,
)
from switchy.protocols.discovery.registry import RegistryLimits, RegistryService
from switchy.protocols.ping import PingService, ping
from switchy.stack.codec import encode_uvarint
from switchy.stack.config import NetworkConfig
from switchy.stack.errors import (
    AuthenticationFailed,
    DiscoveryFailed,
    InvalidConfiguration,
    ProtocolError,
    RequestRefused,
)
from switchy.stack.node import Node
from switchy.stack.stream import MuxedStream
from switchy.transports.sim import SimConfig, SimTransport, Simulation, run_simulation

QUIET = SimConfig(default_packet_loss=0.0, default_latency_ms=5)


def make_node(sim: Simulation, host: str, *services: Any, **kw: Any) -> Node:
    return Node(
        transports=[SimTransport(sim.network, host)],
        services=[PingService(), *services],
        entropy=sim.entropy_source(host),
        listen=["/memory/4001"],
        **kw,
    )


def star(sim: Simulation, *hosts: str) -> None:
    sim.network.add_hosts(["hub", *hosts])
    for h in hosts:
        sim.network.add_link("hub", h)


def registry_addr(node: Node) -> str:
    return str(node.full_addrs[0])


def test_register_lookup_and_connect_by_name() -> None:
    async def main(sim: Simulation) -> None:
        star(sim, "a", "b")
        async with make_node(sim, "hub", RegistryService()) as hub:
            reg = registry_addr(hub)
            async with (
                make_node(sim, "a", RegistryBackend([reg])) as a,
                make_node(sim, "b", RegistryBackend([reg])) as b,
            ):
                assert await register_name(a, "living-room") == [f"registry {reg}"]
                found = await discover(b, "living-room")
                peer, addrs = found.peer_id, list(found.addrs)
                assert peer == a.peer_id and addrs == a.listen_addrs
                conn = await connect_by_name(b, "living-room")
                assert conn.remote_peer == a.peer_id
                assert len(await ping(b, a.peer_id, count=3)) == 3
                # Registrations are renewed for as long as the node lives (TTL 600 s).
                await asyncio.sleep(3 * 3600)
                assert (await discover(b, "living-room")).peer_id == a.peer_id
            # Closing the node unregistered its name.
            async with make_node(sim, "b", RegistryBackend([reg])) as b2:
                with pytest.raises(DiscoveryFailed, match="not registered"):
                    await discover(b2, "living-room")

    run_simulation(main, seed=1, config=QUIET)


def test_unregistered_name_and_no_backend() -> None:
    async def main(sim: Simulation) -> None:
        star(sim, "a")
        async with make_node(sim, "hub", RegistryService()) as hub:
            backend = RegistryBackend([registry_addr(hub)])
            async with make_node(sim, "a", SimNameBackend(sim.names), backend) as a:
                with pytest.raises(DiscoveryFailed) as info:
                    await discover(a, "nobody")
                assert len(info.value.tried) == 2
                assert info.value.tried[0].startswith("simulated name service: name 'nobody'")
                assert info.value.tried[1].startswith(f"registry {registry_addr(hub)}: ")
                assert "'nobody' is not registered" in info.value.tried[1]
                with pytest.raises(DiscoveryFailed, match="1 to 64 UTF-8 bytes"):
                    await discover(a, "x" * 65)
            async with make_node(sim, "a") as bare:
                with pytest.raises(DiscoveryFailed, match="no discovery backend"):
                    await discover(bare, "x")
                with pytest.raises(InvalidConfiguration, match="no configured discovery backend"):
                    await register_name(bare, "x")

    run_simulation(main, seed=2, config=QUIET)


def test_expiry_in_virtual_time_and_name_stealing() -> None:
    async def main(sim: Simulation) -> None:
        star(sim, "a", "b")
        async with make_node(sim, "hub", RegistryService()) as hub:
            reg = registry_addr(hub)
            async with (
                make_node(sim, "a", RegistryBackend([reg])) as a,
                make_node(sim, "b", RegistryBackend([reg])) as b,
            ):
                claim = seal_name_claim(a.key, "tv", tuple(a.listen_addrs), 1)
                assert await register(a, reg, "tv", 60, claim) == 60
                # B cannot steal the live name, neither through the node API nor directly.
                with pytest.raises(RequestRefused, match="NAME_TAKEN") as info:
                    await register_name(b, "tv")
                assert info.value.code == "NAME_TAKEN"
                await asyncio.sleep(30)
                assert await refresh(a, reg, "tv", 60) == 60  # now expires at 90 s
                with pytest.raises(RequestRefused, match="NOT_OWNER"):
                    await refresh(b, reg, "tv", 60)
                await asyncio.sleep(59)
                assert (await lookup(b, reg, "tv")).peer_id == a.peer_id
                await asyncio.sleep(1.5)  # 60.5 s after the refresh: expired
                with pytest.raises(DiscoveryFailed, match="not registered"):
                    await lookup(b, reg, "tv")
                await register_name(b, "tv")
                assert (await discover(a, "tv")).peer_id == b.peer_id

    run_simulation(main, seed=3, config=QUIET)


def _lying_registry(mode: str, victim_claim: bytes, other_claim: bytes) -> Any:
    async def handler(stream: MuxedStream) -> None:
        core = ServerCore()
        while not (requests := core.receive_data(await stream.read(MAX_FRAME_SIZE))):
            pass
        if mode == "other-name":
            claim = other_claim  # a valid claim, but of another name
        elif mode == "tampered":
            old = Multiaddr("/memory/204001").to_bytes()
            claim = victim_claim.replace(old, Multiaddr("/memory/304001").to_bytes())
        else:
            claim = b"\x0a\x03abc"
        for _ in requests:
            core.send_response(Response(Status.OK, ttl=5, claim=claim))
        await stream.write(core.data_to_send())

    return handler


@pytest.mark.parametrize("mode", ["other-name", "tampered", "garbage"])
def test_a_lying_registry_cannot_redirect(mode: str) -> None:
    async def main(sim: Simulation) -> None:
        star(sim, "a", "b", "c")
        async with (
            make_node(sim, "hub", RegistryService()) as honest,
            make_node(sim, "a") as a,
            make_node(sim, "c") as liar,
        ):
            victim = seal_name_claim(a.key, "tv", tuple(a.listen_addrs), 1)
            other = seal_name_claim(a.key, "radio", tuple(a.listen_addrs), 1)
            liar.handle(DISCOVERY_PROTOCOL, _lying_registry(mode, victim, other))
            await register(a, registry_addr(honest), "tv", 600, victim)
            lying = RegistryBackend([registry_addr(liar)])
            good = RegistryBackend([registry_addr(honest)])
            async with make_node(sim, "b", lying, good) as b:
                with pytest.raises((AuthenticationFailed, ProtocolError)):
                    await lookup(b, registry_addr(liar), "tv")
                # discover() falls through to the honest registry and says why.
                found = await discover(b, "tv")
                peer, addrs = found.peer_id, list(found.addrs)
                assert peer == a.peer_id and addrs == a.listen_addrs

    run_simulation(main, seed=4, config=QUIET)


def test_malformed_messages_and_flood_leave_the_registry_serving() -> None:
    async def main(sim: Simulation) -> None:
        star(sim, "a", "b")
        limits = RegistryLimits(max_names_per_peer=3)
        async with make_node(sim, "hub", RegistryService(limits)) as hub:
            reg = registry_addr(hub)
            async with make_node(sim, "a") as a, make_node(sim, "b") as b:

                async def raw_exchange(data: bytes) -> Response:
                    stream = await a.open_stream(reg, DISCOVERY_PROTOCOL)
                    await stream.write(data)
                    body = await stream.recv_message(max_size=MAX_FRAME_SIZE)
                    assert await stream.read() == b""  # the registry ended the stream
                    await stream.close()
                    answer = decode_message(body)
                    assert isinstance(answer, Response)
                    return answer

                for data, error in [
                    (encode_uvarint(3) + b"\xc1\xc1\xc1", "not one msgpack value"),
                    (encode_uvarint(MAX_FRAME_SIZE + 1), "8193 bytes announced"),
                    (encode_frame(Response(Status.OK)), "client sent a RESPONSE"),
                    (
                        b"".join(encode_frame(Lookup(f"n{i}")) for i in range(20)),
                        "without reading answers",
                    ),
                ]:
                    answer = await raw_exchange(data)
                    assert answer.status == Status.BAD_REQUEST and error in answer.message
                # Flood of registrations from one peer: refused past the limit.
                for i in range(10):
                    claim = seal_name_claim(a.key, f"n{i}", (), 1)
                    if i < 3:
                        await register(a, reg, f"n{i}", 60, claim)
                    else:
                        with pytest.raises(RequestRefused, match="LIMIT_EXCEEDED"):
                            await register(a, reg, f"n{i}", 60, claim)
                # Pipelining within the limit works on one stream.
                stream = await a.open_stream(reg, DISCOVERY_PROTOCOL)
                wire = b"".join(
                    encode_frame(Lookup(f"n{i}")) for i in range(MAX_PIPELINED_REQUESTS)
                )
                await stream.write(wire)
                await stream.close_write()
                answers = []
                for _ in range(MAX_PIPELINED_REQUESTS):
                    msg = decode_message(await stream.recv_message(max_size=MAX_FRAME_SIZE))
                    assert isinstance(msg, Response)
                    answers.append(msg.status)
                assert answers == [Status.OK] * 3 + [Status.NOT_FOUND] * 5
                # Others are still served.
                claim = seal_name_claim(b.key, "b-name", tuple(b.listen_addrs), 1)
                assert await register(b, reg, "b-name", 60, claim) == 60
                response = await registry_request(b, reg, Lookup("n0"))
                assert response.status == Status.OK

    run_simulation(main, seed=5, config=QUIET)


def test_idle_stream_is_closed_by_the_registry() -> None:
    async def main(sim: Simulation) -> None:
        star(sim, "a")
        config = NetworkConfig(request_timeout=5)
        async with (
            make_node(sim, "hub", RegistryService(), config=config) as hub,
            make_node(sim, "a") as a,
        ):
            stream = await a.open_stream(registry_addr(hub), DISCOVERY_PROTOCOL)
            await stream.write(b"")  # negotiate, then stay silent
            start = sim.now
            assert await stream.read() == b""
            assert 5 <= sim.now - start < 6
            await stream.close()

    run_simulation(main, seed=6, config=QUIET)


def test_simulated_name_service_with_the_discovery_delay() -> None:
    """The seed's scenario: peers find each other by name after the configured delay."""

    async def main(sim: Simulation) -> None:
        hosts = ["a", "b", "c", "d"]
        star(sim, *hosts)
        delay = sim.config.discovery_delay
        assert delay == pytest.approx(0.250)
        nodes = [make_node(sim, h, SimNameBackend(sim.names)) for h in hosts]
        for n in nodes:
            await n.start()
        try:
            for h, n in zip(hosts, nodes, strict=True):
                assert await register_name(n, f"peer-{h}") == ["simulated name service"]
            for i, n in enumerate(nodes):
                target = nodes[(i + 1) % len(nodes)]
                start = sim.now
                peer = (await discover(n, f"peer-{hosts[(i + 1) % len(hosts)]}")).peer_id
                assert peer == target.peer_id
                assert sim.now - start == pytest.approx(delay)
                conn = await connect_by_name(n, f"peer-{hosts[(i + 1) % len(hosts)]}")
                assert conn.remote_peer == target.peer_id
            # A lookup timeout shorter than the delay fails, naming the backend and the time.
            with pytest.raises(
                DiscoveryFailed, match=r"simulated name service: no answer within 0\.1 s"
            ):
                await discover(nodes[0], "peer-b", timeout=0.1)
            with pytest.raises(DiscoveryFailed, match="not registered in the simulated"):
                await discover(nodes[0], "peer-z")
        finally:
            for n in nodes:
                await n.close()

    run_simulation(main, seed=7, config=SimConfig(default_packet_loss=0.0, discovery_delay_ms=250))


def test_backends_are_tried_in_order() -> None:
    class Failing(DiscoveryBackend):
        async def resolve(self, name: str) -> Any:
            raise DiscoveryFailed("always fails")

    async def main(sim: Simulation) -> None:
        star(sim, "a", "b")
        async with make_node(sim, "hub", RegistryService()) as hub:
            reg = registry_addr(hub)
            async with make_node(sim, "a", RegistryBackend([reg])) as a:
                await register_name(a, "tv")
                async with make_node(sim, "b", Failing(), RegistryBackend([reg])) as b:
                    assert (await discover(b, "tv")).peer_id == a.peer_id
                    with pytest.raises(InvalidConfiguration, match="cannot register"):
                        await Failing().register("x")
                with pytest.raises(InvalidConfiguration):
                    RegistryBackend([])

    run_simulation(main, seed=8, config=QUIET)
