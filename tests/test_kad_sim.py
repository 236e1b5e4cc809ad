"""KadDHT end to end over the simulator, in virtual time."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from switchy.protocols.discovery import connect_by_name, register_name
from switchy.protocols.discovery.claims import open_name_claim, seal_name_claim
from switchy.protocols.identify import IdentifyService
from switchy.protocols.kad.backend import DhtBackend
from switchy.protocols.kad.model import KadModel, table_fill
from switchy.protocols.kad.pb import MAX_MESSAGE_SIZE, PROTOCOL, KadMessage, MessageType, Record
from switchy.protocols.kad.records import InvalidRecord, name_key, pk_key
from switchy.protocols.kad.routing import MAX_DIAL_FAILURES, Failure, K, kad_key
from switchy.protocols.kad.service import PUT_BURST, KadDHT, _failure_of
from switchy.stack.addrbook import Reachability
from switchy.stack.codec import encode_uvarint
from switchy.stack.errors import (
    ConnectionFailed,
    DiscoveryFailed,
    MessageTooLarge,
    P2PError,
    PeerNotFound,
    ResourceLimitExceeded,
    StreamRefused,
)
from switchy.stack.identity import KeyPair
from switchy.stack.node import Node
from switchy.stack.stream import MuxedStream
from switchy.transports.sim import SimConfig, SimTransport, Simulation, run_simulation

QUIET = SimConfig(default_packet_loss=0.0, default_latency_ms=5)


def dht_node(sim: Simulation, host: str, dht: KadDHT, **kw: Any) -> Node:
    return Node(
        transports=[SimTransport(sim.network, host)],
        services=[IdentifyService(), dht],
        entropy=sim.entropy_source(host),
        listen=["/memory/4001"],
        **kw,
    )


def star(sim: Simulation, hosts: list[str]) -> None:
    sim.network.add_hosts(["hub", *hosts])
    for h in hosts:
        sim.network.add_link("hub", h)


async def network(
    sim: Simulation, n: int, clients: int = 0
) -> tuple[list[Node], list[KadDHT], list[Node], list[KadDHT]]:
    hosts = [f"s{i}" for i in range(n)] + [f"c{i}" for i in range(clients)]
    star(sim, hosts)
    first = KadDHT(mode="server")
    nodes = [dht_node(sim, "s0", first)]
    dhts = [first]
    await nodes[0].start()
    boot = [str(nodes[0].full_addrs[0])]
    for i in range(1, n):
        d = KadDHT(mode="server", bootstrap=boot)
        nodes.append(dht_node(sim, f"s{i}", d))
        dhts.append(d)
        await nodes[-1].start()
        await d.bootstrap()
    cnodes, cdhts = [], []
    for i in range(clients):
        d = KadDHT(mode="client", bootstrap=boot)
        cnodes.append(dht_node(sim, f"c{i}", d))
        cdhts.append(d)
        await cnodes[-1].start()
        await d.bootstrap()
    for d in dhts[:3]:
        await d.bootstrap()
    return nodes, dhts, cnodes, cdhts


async def close_all(*groups: list[Node]) -> None:
    for group in groups:
        for node in group:
            await node.close()


def test_tables_records_providers_and_peers() -> None:
    """Servers fill their tables; a client does not enter them; /pk/ and name-claim records
    put through one node are found from another; providers and peers are found."""

    async def main(sim: Simulation) -> None:
        nodes, dhts, cnodes, cdhts = await network(sim, 10, clients=1)
        try:
            client, cdht = cnodes[0], cdhts[0]
            assert all(len(d.table or []) >= 3 for d in dhts)
            assert all(client.peer_id not in (d.table or []) for d in dhts)
            assert not cdht.is_server and PROTOCOL not in client.protocols
            assert len(cdht.table or []) >= 3
            # /pk/ record of a key pair that is not a node
            other = KeyPair.from_seed(b"k" * 32)
            key = pk_key(other.peer_id)
            assert await dhts[3].put_value(key, other.public_key.to_protobuf()) >= 3
            assert await cdht.get_value(key) == other.public_key.to_protobuf()
            # a node's own /pk/ is answered by itself
            assert await dhts[1].get_value(pk_key(nodes[5].peer_id)) == (
                nodes[5].key.public_key.to_protobuf()
            )
            # name claims: the owner's later claim wins; another peer's claim is refused
            owner = nodes[4]
            claim1 = seal_name_claim(owner.key, "alice", tuple(owner.listen_addrs), 1)
            assert await dhts[4].put_value(name_key("alice"), claim1) >= 3
            claim2 = seal_name_claim(owner.key, "alice", tuple(owner.listen_addrs), 2)
            assert await dhts[4].put_value(name_key("alice"), claim2) >= 3
            assert await cdht.get_value(name_key("alice")) == claim2
            thief = nodes[6]
            stolen = seal_name_claim(thief.key, "alice", tuple(thief.listen_addrs), 9)
            assert await dhts[6].put_value(name_key("alice"), stolen) == 0
            assert await dhts[2].get_value(name_key("alice")) == claim2
            with pytest.raises(InvalidRecord):
                await dhts[2].put_value(name_key("bob"), claim1)
            with pytest.raises(PeerNotFound):
                await cdht.get_value(name_key("nobody"))
            # providers
            assert await dhts[7].provide(b"content-1") >= 3
            found = await cdht.find_providers(b"content-1")
            assert [p for p, _ in found] == [nodes[7].peer_id]
            assert found[0][1]
            assert await cdht.find_providers(b"nothing") == []
            # peers: a server far in the table is found with its addresses
            addrs = await cdht.find_peer(nodes[9].peer_id)
            assert set(nodes[9].listen_addrs) <= set(addrs)
            with pytest.raises(PeerNotFound):
                await cdht.find_peer(KeyPair.from_seed(b"z" * 32).peer_id)
        finally:
            await close_all(nodes, cnodes)

    run_simulation(main, seed=18, config=QUIET)


def test_bad_requests_are_refused() -> None:
    """A record failing validation, a record without its key, a PUT flood and an
    oversized provider key are refused; FIND_NODE for the server itself names it."""

    async def main(sim: Simulation) -> None:
        nodes, dhts, cnodes, cdhts = await network(sim, 3, clients=1)
        try:
            cdht = cdhts[0]
            target = nodes[1]
            rpc = cdht._rpc
            me = nodes[1].peer_id
            reply = await rpc(me, (), KadMessage(MessageType.FIND_NODE, key=me.multihash))
            assert reply.closer_peers[0].peer_id == me
            assert reply.closer_peers[0].addrs == tuple(target.listen_addrs)
            other = KeyPair.from_seed(b"q" * 32)
            bad = Record(pk_key(other.peer_id), nodes[0].key.public_key.to_protobuf())
            with pytest.raises(P2PError):  # the server resets the stream
                await rpc(me, (), KadMessage(MessageType.PUT_VALUE, key=bad.key, record=bad))
            good = Record(pk_key(other.peer_id), other.public_key.to_protobuf())
            with pytest.raises(P2PError):
                await rpc(me, (), KadMessage(MessageType.PUT_VALUE, key=b"/pk/x", record=good))
            msg = KadMessage(MessageType.PUT_VALUE, key=good.key, record=good)
            accepted = 0
            refused = 0
            for _ in range(PUT_BURST + 5):
                try:
                    await rpc(me, (), msg)
                    accepted += 1
                except P2PError:
                    refused += 1
            assert accepted <= PUT_BURST and refused >= 5
            assert dhts[1].counters["refused"] >= 7
            with pytest.raises(P2PError):
                await rpc(me, (), KadMessage(MessageType.GET_PROVIDERS, key=b"x" * 81))
            with pytest.raises(InvalidRecord):
                await cdht.provide(b"x" * 81)
        finally:
            await close_all(nodes, cnodes)

    run_simulation(main, seed=19, config=QUIET)


def test_connect_by_peer_id_and_names_through_the_dht() -> None:
    """node.connect(peer_id) with no known address finds the peer through the DHT;
    register_name / connect_by_name work through DhtBackend; a taken name is refused."""

    async def main(sim: Simulation) -> None:
        nodes, dhts, _, _ = await network(sim, 8)
        sim.network.add_hosts(["n0", "n1", "late"])
        for h in ("n0", "n1", "late"):
            sim.network.add_link("hub", h)
        boot = [str(nodes[0].full_addrs[0])]
        d0, d1 = KadDHT(mode="client", bootstrap=boot), KadDHT(mode="client", bootstrap=boot)
        a = Node(
            transports=[SimTransport(sim.network, "n0")],
            services=[IdentifyService(), d0, DhtBackend()],
            entropy=sim.entropy_source("n0"),
            listen=["/memory/4001"],
        )
        b = Node(
            transports=[SimTransport(sim.network, "n1")],
            services=[IdentifyService(), d1, DhtBackend()],
            entropy=sim.entropy_source("n1"),
            listen=["/memory/4001"],
        )
        try:
            await a.start()
            await b.start()
            await d0.bootstrap()
            await d1.bootstrap()
            late = dht_node(sim, "late", KadDHT(mode="server", bootstrap=boot))
            nodes.append(late)
            await late.start()
            await late.services[1].bootstrap()  # type: ignore[attr-defined]
            assert not a.peerstore.addrs(late.peer_id)
            conn = await a.connect(late.peer_id)
            assert conn.remote_peer == late.peer_id
            with pytest.raises(PeerNotFound, match="KadDHT"):
                await a.connect(KeyPair.from_seed(b"n" * 32).peer_id)
            assert await register_name(a, "kitchen") == ["DHT"]
            conn = await connect_by_name(b, "kitchen")
            assert conn.remote_peer == a.peer_id
            with pytest.raises(DiscoveryFailed, match="held by another"):
                await register_name(b, "kitchen")
            held = open_name_claim(await dhts[3].get_value(name_key("kitchen")), "kitchen")
            assert held.peer_id == a.peer_id
        finally:
            await a.close()
            await b.close()
            await close_all(nodes)

    run_simulation(main, seed=20, config=QUIET)


def test_expiry_republish_auto_mode_and_oversized_messages() -> None:
    """Provider records and values expire at their TTL unless republished; a republishing
    provider stays findable; auto mode serves on a public (simulated) address; an
    oversized request resets the stream and the server keeps serving."""

    async def main(sim: Simulation) -> None:
        hosts = [f"h{i}" for i in range(6)]
        star(sim, hosts)
        kw: dict[str, Any] = {
            "provider_ttl": 100.0,
            "record_ttl": 100.0,
            "provider_republish": 40.0,
            "record_republish": 40.0,
            "refresh_interval": 40.0,
        }
        first = KadDHT(mode="auto", **kw)
        nodes = [dht_node(sim, "h0", first)]
        await nodes[0].start()
        boot = [str(nodes[0].full_addrs[0])]
        dhts = [first]
        for h in hosts[1:]:
            d = KadDHT(mode="server", bootstrap=boot, **kw)
            dhts.append(d)
            nodes.append(dht_node(sim, h, d))
            await nodes[-1].start()
            await d.bootstrap()
        try:
            assert first.is_server  # /memory addresses count as public
            # a provider that goes away: its record expires; one that stays republishes
            assert await dhts[1].provide(b"gone") >= 1
            assert await dhts[2].provide(b"kept") >= 1
            other = KeyPair.from_seed(b"e" * 32)
            assert await dhts[3].put_value(pk_key(other.peer_id), other.public_key.to_protobuf())
            await nodes[1].close()
            await nodes[3].close()
            await asyncio.sleep(150.0)  # virtual time
            assert await dhts[4].find_providers(b"gone") == []
            assert [p for p, _ in await dhts[4].find_providers(b"kept")] == [nodes[2].peer_id]
            with pytest.raises(PeerNotFound):
                await dhts[4].get_value(pk_key(other.peer_id))
            # an oversized request: the stream is reset, the server still answers
            stream = await nodes[4].open_stream(nodes[5].peer_id, PROTOCOL)
            await stream.write(encode_uvarint(MAX_MESSAGE_SIZE + 1) + b"x" * 100)
            with pytest.raises(P2PError):
                await stream.recv_message(max_size=MAX_MESSAGE_SIZE)
            me = nodes[5].peer_id
            reply = await dhts[4]._rpc(me, (), KadMessage(MessageType.PING))
            assert reply.type == MessageType.PING
        finally:
            await close_all(nodes)

    run_simulation(main, seed=21, config=QUIET)


def test_auto_mode_follows_reachability() -> None:
    """In auto mode the DHT serves while the node's reachability is public, stops
    (withdraws the protocol, queries to it fail) when it turns private, and serves
    again when it is public again; while unknown a public listen address decides."""

    async def main(sim: Simulation) -> None:
        star(sim, ["a", "b"])
        auto = KadDHT(mode="auto")
        a = dht_node(sim, "a", auto)
        b_dht = KadDHT(mode="server")
        b = dht_node(sim, "b", b_dht)
        await a.start()
        await b.start()
        try:
            assert auto.is_server  # unknown reachability, /memory addresses count as public
            await b.connect(a.full_addrs[0])
            reply = await b_dht._rpc(a.peer_id, (), KadMessage(MessageType.PING))
            assert reply.type == MessageType.PING
            a.addresses.report_reachability(Reachability.PRIVATE)
            assert not auto.is_server
            assert PROTOCOL not in a.registry.protocols()
            with pytest.raises(P2PError):
                await b_dht._rpc(a.peer_id, (), KadMessage(MessageType.PING))
            a.addresses.report_reachability(Reachability.PUBLIC)
            assert auto.is_server
            reply = await b_dht._rpc(a.peer_id, (), KadMessage(MessageType.PING))
            assert reply.type == MessageType.PING
        finally:
            await close_all([a, b])

    run_simulation(main, seed=5, config=QUIET)


def test_dead_peers_cost_a_put_little() -> None:
    """With 3 of 12 servers crashed (silent: dials to them go unanswered), the lookup
    before a put ends well before one full query timeout per dead peer: the query
    timeout and the stall time adapt to the round trips seen, and a stalled query
    no longer holds up the lookup."""

    async def main(sim: Simulation) -> None:
        nodes, dhts, _, _ = await network(sim, 12)
        try:
            writer = dhts[0]
            other = KeyPair.from_seed(b"w" * 32)
            key = pk_key(other.peer_id)
            await writer.get_closest_peers(b"warm-up")  # round trip samples
            assert writer.rtt.samples > 0
            assert writer.rtt.timeout(writer.query_timeout) < writer.query_timeout
            for i in (4, 7, 9):
                sim.network.crash(f"s{i}")
            start = asyncio.get_running_loop().time()
            stored = await writer.put_value(key, other.public_key.to_protobuf())
            took = asyncio.get_running_loop().time() - start
            assert stored >= 8
            assert took < writer.query_timeout  # before: >= 10 s per dead peer among them
            assert await dhts[1].get_value(key) == other.public_key.to_protobuf()
        finally:
            await close_all([n for i, n in enumerate(nodes) if i not in (4, 7, 9)])

    run_simulation(main, seed=8, config=QUIET)


def test_full_stack_agrees_with_the_model() -> None:
    """The whole stack over the simulator and the message-level model give the same
    figures on a small network: after sequential joins through one bootstrap node every
    table holds every peer its buckets can (fill 1.0 in both), and closest-peer lookups
    (beta = k) from random nodes for random keys find the true closest peers, in order,
    in both.  (bench_kad --full N compares the two at 200 nodes.)"""
    count = 14

    async def main(sim: Simulation) -> tuple[float, list[bool]]:
        nodes, dhts, _, _ = await network(sim, count)
        try:
            ids = [n.peer_id for n in nodes]
            fill = table_fill([d.table for d in dhts if d.table is not None], ids)
            rng = random.Random(3)
            agree = []
            for _ in range(6):
                source = rng.randrange(count)
                key = rng.randbytes(32)
                got = await dhts[source].get_closest_peers(key)
                others = [p for p in ids if p != ids[source]]
                truth = sorted(others, key=lambda p: kad_key(p.multihash) ^ kad_key(key))
                agree.append(got == truth[:K])
            return fill, agree
        finally:
            await close_all(nodes)

    fill, agree = run_simulation(main, seed=22, config=QUIET)
    model = KadModel(count, seed=22)
    rng = random.Random(3)
    found = [
        model.closest(rng.choice(model.ids), kad_key(rng.randbytes(32))).found for _ in range(6)
    ]
    assert table_fill(model.tables, model.ids) == 1.0
    assert fill == 1.0
    assert agree == [True] * 6
    assert found == [True] * 6


def test_a_closed_connection_or_a_failed_dial_keeps_the_peer_in_the_table() -> None:
    """A table entry needs no open connection: when our side closes the connection (as
    the connection manager trims) the peer stays and the next lookup dials it again and
    hears it; so when the peer closes it in the middle of a query.  A peer we cannot
    dial (crashed, connection gone) stays for MAX_DIAL_FAILURES - 1 failed checks and
    leaves at the last; before, any failed query removed it at once, a timeout while
    dialing included."""

    async def main(sim: Simulation) -> None:
        nodes, dhts, _, _ = await network(sim, 5)
        try:
            me, dht = nodes[0], dhts[0]
            trimmed, dead = nodes[2].peer_id, nodes[3].peer_id
            assert trimmed in dht._t and dead in dht._t
            for conn in me.connections(trimmed):
                await conn.close()
            assert not me.connections(trimmed) and trimmed in dht._t
            found = await dht.get_closest_peers(b"any key")
            assert trimmed in found and me.connections(trimmed)
            assert dht.counters.get("queries_dialing", 0) >= 1
            assert not any(k.startswith("removed_") for k in dht.counters)

            async def hang_up(stream: MuxedStream) -> None:  # trims us mid-query
                for conn in nodes[2].connections(stream.remote_peer):
                    await conn.close()

            nodes[2].unhandle(PROTOCOL)
            nodes[2].handle(PROTOCOL, hang_up)
            await dht._check_alive(trimmed)
            assert dht.counters["failed_unreachable"] == 1
            assert trimmed in dht._t and not me.connections(trimmed)
            for conn in me.connections(dead):
                await conn.close()
            sim.network.crash("s3")
            for attempt in range(1, MAX_DIAL_FAILURES + 1):
                await dht._check_alive(dead)
                assert dht.counters["failed_unreachable"] == 1 + attempt
                assert (dead in dht._t) is (attempt < MAX_DIAL_FAILURES)
            assert dht.counters["removed_unreachable"] == 1
        finally:
            await close_all([n for i, n in enumerate(nodes) if i != 3])

    run_simulation(main, seed=5, config=QUIET)


def test_what_a_failed_query_says_about_the_peer() -> None:
    """Limits (ours, or the peer refusing the stream) say nothing; a failure on a
    connection means unresponsive, one without a connection unreachable."""
    assert _failure_of(StreamRefused("refused"), connected=True) is Failure.LIMITED
    assert _failure_of(ResourceLimitExceeded("dials"), connected=False) is Failure.LIMITED
    assert _failure_of(MessageTooLarge("big"), connected=True) is Failure.UNRESPONSIVE
    assert _failure_of(TimeoutError(), connected=True) is Failure.UNRESPONSIVE
    assert _failure_of(TimeoutError(), connected=False) is Failure.UNREACHABLE
    assert _failure_of(ConnectionFailed("no route"), connected=False) is Failure.UNREACHABLE
