"""AutoNAT in the simulator (virtual time): reachability, dial data, forged and abusive requests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

import pytest
from multiaddr import Multiaddr

from switchy.protocols.autonat import (
    DIAL_REQUEST_PROTOCOL,
    V1_PROTOCOL,
    AutoNATService,
    Reachability,
    ReachabilityChange,
    ServerLimits,
    Verdict,
)
from switchy.protocols.autonat.client import v1_request
from switchy.protocols.autonat.pb import (
    DIAL_BACK_PROTOCOL,
    DIAL_DATA_CHUNK,
    DialBack,
    DialDataRequest,
    DialDataResponse,
    DialRequest,
    DialResponse,
    DialStatus,
    ResponseStatus,
    V1Status,
    decode_v1,
    encode_dial_back,
    encode_frame,
    encode_v2,
    parse_addr,
)
from switchy.protocols.autonat.server import MAX_DIAL_DATA, MIN_DIAL_DATA
from switchy.protocols.autonat.service import DialBackDialer, fresh_dial_transports
from switchy.protocols.identify import IdentifyService
from switchy.stack.codec import pb_bytes
from switchy.stack.errors import StreamReset
from switchy.stack.negotiation import select_protocol
from switchy.stack.node import ConnectionEvent, Node, ProtocolService
from switchy.stack.stream import MuxedStream
from switchy.transports.quic.sim import sim_quic_transport
from switchy.transports.relay import RelayConfig, RelayService, RelayTransport
from switchy.transports.sim import SimConfig, SimTransport, Simulation, run_simulation
from switchy.transports.sim.network import sim_multiaddr
from tests.autonat_helpers import RecordingTransport, recv_v2, request, send_v2

QUIET = SimConfig(default_packet_loss=0.0)
PORT = 4001


def star(sim: Simulation, *hosts: str) -> None:
    """Every host linked to a router ``net``."""
    sim.network.add_hosts(["net", *hosts])
    for h in hosts:
        sim.network.add_link(h, "net", latency=0.01)


def node(
    sim: Simulation,
    host: str,
    *services: ProtocolService,
    transports: Sequence[Any] | None = None,
    listen: Sequence[str | Multiaddr] = (f"/memory/{PORT}",),
) -> Node:
    return Node(
        transports=list(transports or [SimTransport(sim.network, host)]),
        services=[IdentifyService(), *services],
        entropy=sim.entropy_source(host),
        listen=list(listen),
    )


def recording_server(
    sim: Simulation, host: str, **kw: Any
) -> tuple[AutoNATService, RecordingTransport]:
    rec = RecordingTransport(SimTransport(sim.network, host))
    return AutoNATService(client=False, dial_back_transports=[rec], **kw), rec


async def connect_all(client: Node, servers: Sequence[Node]) -> None:
    for s in servers:
        await client.connect(s.full_addrs[0])
    # identify has run: the client knows who serves AutoNAT
    for s in servers:
        ident = next(x for x in client.services if isinstance(x, IdentifyService))
        await ident.wait_identified(s.peer_id, timeout=5)


def test_a_reachable_node_learns_it_is_public() -> None:
    async def main(sim: Simulation) -> None:
        star(sim, "c", "s1", "s2", "s3")
        changes: list[ReachabilityChange] = []
        svc = AutoNATService(server=False, on_reachability_changed=changes.append)
        inbound: list[ConnectionEvent] = []
        servers = [node(sim, f"s{i}", AutoNATService(client=False)) for i in (1, 2, 3)]
        async with contextlib.AsyncExitStack() as stack:
            for s in servers:
                await stack.enter_async_context(s)
            c = await stack.enter_async_context(node(sim, "c", svc))
            c.on_connection_event(
                lambda e: inbound.append(e) if not e.connection.is_initiator else None
            )
            await connect_all(c, servers)
            start = sim.now
            async with asyncio.timeout(120):
                await svc.wait_reachability(Reachability.PUBLIC)
            assert sim.now - start < 30  # probed soon after connecting, in virtual time
            (addr,) = c.listen_addrs
            assert svc.addresses == {addr: Reachability.PUBLIC}
            assert [(ch.addr, ch.new) for ch in changes][-2:] == [
                (addr, Reachability.PUBLIC),
                (None, Reachability.PUBLIC),
            ]
            assert all(r.version == 2 and r.verdict is Verdict.REACHABLE for r in svc.results)
            assert {r.server for r in svc.results} == {s.peer_id for s in servers}
            # each dial-back was a new connection from an ephemeral port, not a listen port
            assert len(inbound) >= 3
            listen_ports = {s.listen_addrs[0] for s in servers}
            assert all(e.connection.remote_addr not in listen_ports for e in inbound)
            # the servers never added the dial-back connections to themselves
            for s in servers:
                assert [cn.is_initiator for cn in s.connections(c.peer_id)] == [False]
            # re-probing: after the refresh interval the servers are asked again
            asked = len(svc.results)
            await asyncio.sleep(svc.refresh_interval + 60)
            assert len(svc.results) >= asked + 3
            assert svc.reachability is Reachability.PUBLIC

    run_simulation(main, seed=3, config=QUIET)


def test_an_address_nobody_can_dial_is_private_until_it_listens() -> None:
    async def main(sim: Simulation) -> None:
        star(sim, "c", "s1", "s2", "s3")
        host = sim.network.host("c")
        announced = host.address(PORT + 1)  # nothing listens there
        changes: list[ReachabilityChange] = []
        svc = AutoNATService(
            server=False, addrs=lambda: [announced], on_reachability_changed=changes.append
        )
        servers = [node(sim, f"s{i}", AutoNATService(client=False)) for i in (1, 2, 3)]
        async with contextlib.AsyncExitStack() as stack:
            for s in servers:
                await stack.enter_async_context(s)
            c = await stack.enter_async_context(node(sim, "c", svc))
            await connect_all(c, servers)
            async with asyncio.timeout(120):
                await svc.wait_reachability(Reachability.PRIVATE)
            assert svc.addresses == {announced: Reachability.PRIVATE}
            assert {r.verdict for r in svc.results} == {Verdict.UNREACHABLE}
            # The node starts listening there: the next re-probe finds it public.
            await c.listen(announced)
            became_private = sim.now
            async with asyncio.timeout(svc.refresh_interval + 120):
                await svc.wait_reachability(Reachability.PUBLIC)
            assert sim.now - became_private >= svc.refresh_interval - 60
            # private, then unknown while the servers disagree (1 or 2 of 3 say reachable),
            # then public once 3 agree
            assert [ch.new for ch in changes if ch.addr is None] == [
                Reachability.PRIVATE,
                Reachability.UNKNOWN,
                Reachability.PUBLIC,
            ]

    run_simulation(main, seed=4, config=QUIET)


def test_v1_client_and_server_in_the_simulator() -> None:
    async def main(sim: Simulation) -> None:
        star(sim, "c", "s1")
        svc = AutoNATService(server=False, v2=False, confidence=1, probe_automatically=False)
        async with node(sim, "s1", AutoNATService(client=False)) as s, node(sim, "c", svc) as c:
            await connect_all(c, [s])
            good = c.listen_addrs[0]
            bad = sim.network.host("c").address(PORT + 1)
            other_host = sim_multiaddr(sim.network.host("s1").number, PORT)
            results = [await svc.ask(s.peer_id, a) for a in (good, bad, other_host)]
            assert [(r.version, r.verdict) for r in results] == [
                (1, Verdict.REACHABLE),
                (1, Verdict.UNREACHABLE),
                (1, Verdict.REFUSED),  # v1 never dials a host the requester is not on
            ]

    run_simulation(main, seed=5, config=QUIET)


def test_dial_data_pays_for_an_address_on_another_host() -> None:
    async def main(sim: Simulation) -> None:
        star(sim, "c", "c2", "s1")
        # A node on two hosts: it talks to the server from c and asks about its c2 address.
        second = sim_multiaddr(sim.network.host("c2").number, PORT)
        transports = [SimTransport(sim.network, "c"), SimTransport(sim.network, "c2")]
        svc = AutoNATService(server=False, confidence=1, probe_automatically=False)
        server, rec = recording_server(sim, "s1")
        async with (
            node(sim, "s1", server) as s,
            node(sim, "c", svc, transports=transports, listen=[f"/memory/{PORT}", second]) as c,
        ):
            await connect_all(c, [s])
            (result,) = [await svc.ask(s.peer_id, second)]
            assert result.verdict is Verdict.REACHABLE, result
            assert rec.dials == [second]
            assert MIN_DIAL_DATA <= server.dial_data_bytes <= MAX_DIAL_DATA + DIAL_DATA_CHUNK
            assert svc.addresses == {second: Reachability.PUBLIC}

    run_simulation(main, seed=6, config=QUIET)


def test_forged_requests_for_other_hosts_are_never_dialed() -> None:
    async def main(sim: Simulation) -> None:
        star(sim, "attacker", "victim", "s1")
        victim_addr = sim_multiaddr(sim.network.host("victim").number, PORT)
        server, rec = recording_server(sim, "s1")
        victim_conns: list[ConnectionEvent] = []
        async with (
            node(sim, "s1", server) as s,
            node(sim, "victim") as v,
            node(sim, "attacker") as a,
        ):
            v.on_connection_event(victim_conns.append)
            # v2: the server asks for dial data first; the attacker does not pay
            stream = await a.open_stream(s.full_addrs[0], DIAL_REQUEST_PROTOCOL)
            await send_v2(stream, request(victim_addr, nonce=42))
            ask = await recv_v2(stream)
            assert isinstance(ask, DialDataRequest) and ask.addr_idx == 0
            assert MIN_DIAL_DATA <= ask.num_bytes <= MAX_DIAL_DATA
            await stream.close()
            # v2: paying less than asked, then stopping, still dials nobody
            stream = await a.open_stream(s.peer_id, DIAL_REQUEST_PROTOCOL)
            await send_v2(stream, request(victim_addr, nonce=43))
            await recv_v2(stream)
            await send_v2(stream, DialDataResponse(bytes(DIAL_DATA_CHUNK)))
            await stream.close_write()
            with pytest.raises(StreamReset):  # the server gives up on the short payment
                await stream.read()
            # v1: the victim's address is not on the attacker's host: refused
            stream = await a.open_stream(s.peer_id, V1_PROTOCOL)
            await stream.write(v1_request(a.peer_id, [victim_addr]))
            answer = decode_v1(await stream.recv_message())
            assert answer.dial_response is not None
            assert answer.dial_response.status == V1Status.E_DIAL_REFUSED
            await stream.close()
            await asyncio.sleep(30)
            assert rec.dials == []
            assert victim_conns == []
            assert len(server.served) == 3

    run_simulation(main, seed=7, config=QUIET)


def test_dial_data_floods_are_bounded() -> None:
    async def main(sim: Simulation) -> None:
        star(sim, "c", "c2", "s1")
        second = sim_multiaddr(sim.network.host("c2").number, PORT)
        server, rec = recording_server(sim, "s1")
        async with node(sim, "s1", server) as s, node(sim, "c") as c:
            stream = await c.open_stream(s.full_addrs[0], DIAL_REQUEST_PROTOCOL)
            await send_v2(stream, request(second, nonce=5))
            ask = await recv_v2(stream)
            assert isinstance(ask, DialDataRequest)
            chunk = DialDataResponse(bytes(DIAL_DATA_CHUNK))

            async def flood() -> None:
                with contextlib.suppress(Exception):
                    for _ in range(10_000):  # 40 MB if nobody stopped it
                        await send_v2(stream, chunk)

            flooding = asyncio.ensure_future(flood())
            answer = await recv_v2(stream)
            # c2 does not run a node: the dial fails, but it was paid for and made once
            assert answer == DialResponse(ResponseStatus.OK, 0, DialStatus.E_DIAL_ERROR)
            assert rec.dials == [second]
            assert ask.num_bytes <= server.dial_data_bytes < ask.num_bytes + DIAL_DATA_CHUNK
            flooding.cancel()
            await stream.reset()
            # tiny chunks: refused (stream reset) before the amount is reached
            stream = await c.open_stream(s.peer_id, DIAL_REQUEST_PROTOCOL)
            await send_v2(stream, request(second, nonce=6))
            await recv_v2(stream)
            for _ in range(3):
                await send_v2(stream, DialDataResponse(b"x"))
            with pytest.raises(StreamReset):
                await stream.read()
            assert rec.dials == [second]

    run_simulation(main, seed=8, config=QUIET)


def test_huge_address_lists_are_refused_without_dialing() -> None:
    async def main(sim: Simulation) -> None:
        star(sim, "c", "s1")
        server, rec = recording_server(sim, "s1")
        async with node(sim, "s1", server) as s, node(sim, "c") as c:
            mine = c.listen_addrs[0].to_bytes()
            body = pb_bytes(1, b"".join(pb_bytes(1, mine) for _ in range(200)))
            stream = await c.open_stream(s.full_addrs[0], DIAL_REQUEST_PROTOCOL)
            await send_v2(stream, body)
            assert await recv_v2(stream) == DialResponse(ResponseStatus.E_REQUEST_REJECTED)
            await stream.close()
            v1 = await c.open_stream(s.peer_id, V1_PROTOCOL)
            peer_info = pb_bytes(1, c.peer_id.to_bytes()) + b"".join(
                pb_bytes(2, mine) for _ in range(200)
            )
            await v1.send_message(b"\x08\x00" + pb_bytes(2, pb_bytes(1, peer_info)))
            answer = decode_v1(await v1.recv_message())
            assert answer.dial_response is not None
            assert answer.dial_response.status == V1Status.E_BAD_REQUEST
            assert "more than 50 addresses" in (answer.dial_response.status_text or "")
            assert rec.dials == []

    run_simulation(main, seed=9, config=QUIET)


def test_requests_over_a_relayed_connection_are_refused() -> None:
    async def main(sim: Simulation) -> None:
        star(sim, "r", "c", "s1")
        server, rec = recording_server(sim, "s1")
        unlimited = RelayConfig(limit_data=0, limit_duration=0)
        v2_client = AutoNATService(server=False, probe_automatically=False)
        v1_client = AutoNATService(server=False, v2=False, probe_automatically=False)
        async with (
            node(sim, "r", RelayService(unlimited)) as r,
            node(sim, "s1", server, RelayTransport(), listen=()) as s,
            node(sim, "c", v2_client, v1_client, RelayTransport()) as c,
        ):
            (circuit,) = await s.listen(f"{r.full_addrs[0]}/p2p-circuit")
            conn = await c.connect(Multiaddr(f"{circuit}/p2p/{s.peer_id}"))
            assert conn.is_limited
            mine = c.listen_addrs[0]
            r2 = await v2_client.ask(s.peer_id, mine)
            r1 = await v1_client.ask(s.peer_id, mine)
            assert (r2.version, r2.verdict) == (2, Verdict.REJECTED)
            assert (r1.version, r1.verdict) == (1, Verdict.REFUSED)
            assert "relayed" in r1.detail
            assert rec.dials == []
            # and a client does not pick a peer it reaches only through a relay as a server
            assert v2_client.servers() == []

    run_simulation(main, seed=10, config=QUIET)


def test_rate_limits_per_peer_and_overall() -> None:
    async def main(sim: Simulation) -> None:
        star(sim, "c", "d", "s1")
        limits = ServerLimits(per_peer=2, total=3)
        server, rec = recording_server(sim, "s1", limits=limits)
        cs = AutoNATService(server=False, confidence=1, probe_automatically=False)
        ds = AutoNATService(server=False, confidence=1, probe_automatically=False)
        async with node(sim, "s1", server) as s, node(sim, "c", cs) as c, node(sim, "d", ds) as d:
            await connect_all(c, [s])
            await connect_all(d, [s])
            mine = c.listen_addrs[0]
            got = [(await cs.ask(s.peer_id, mine)).verdict for _ in range(3)]
            assert got == [Verdict.REACHABLE, Verdict.REACHABLE, Verdict.REJECTED]
            assert (await ds.ask(s.peer_id, d.listen_addrs[0])).verdict is Verdict.REACHABLE
            assert (await ds.ask(s.peer_id, d.listen_addrs[0])).verdict is Verdict.REJECTED
            assert len(rec.dials) == 3
            await asyncio.sleep(61)  # the window slides (virtual time)
            assert (await cs.ask(s.peer_id, mine)).verdict is Verdict.REACHABLE

    run_simulation(main, seed=11, config=QUIET)


class LyingServer(ProtocolService):
    """Dials back with a wrong nonce and claims success."""

    def attach(self, node: Node) -> None:
        self.node = node
        self.dialer = DialBackDialer(node)
        self.ack: bytes | None = None
        node.handle(DIAL_REQUEST_PROTOCOL, self._handle)

    async def _handle(self, stream: MuxedStream) -> None:
        req = await recv_v2(stream)

        assert isinstance(req, DialRequest)
        addr = parse_addr(req.addrs[0])
        assert addr is not None
        conn = await self.dialer.dial(addr, stream.remote_peer)
        back = await conn.open_stream()
        await select_protocol(back, [DIAL_BACK_PROTOCOL])
        await back.send_message(encode_dial_back(DialBack(req.nonce ^ 1)))
        await back.close_write()
        self.ack = await back.read_all(limit=100)
        await conn.close()
        await stream.write(
            encode_frame(encode_v2(DialResponse(ResponseStatus.OK, 0, DialStatus.OK)))
        )


def test_a_dial_back_with_the_wrong_nonce_is_discarded() -> None:
    async def main(sim: Simulation) -> None:
        star(sim, "c", "liar")
        liar = LyingServer()
        svc = AutoNATService(server=False, confidence=1, probe_automatically=False)
        async with node(sim, "liar", liar) as s, node(sim, "c", svc) as c:
            await connect_all(c, [s])
            result = await svc.ask(s.peer_id, c.listen_addrs[0])
            assert result.verdict is Verdict.ERROR
            assert "no nonce came" in result.detail
            assert liar.ack == b""  # the unknown nonce got no acknowledgement
            assert svc.reachability is Reachability.UNKNOWN and svc.addresses == {}

    run_simulation(main, seed=12, config=QUIET)


def test_fresh_dial_transports_copy_only_direct_transports() -> None:
    async def main(sim: Simulation) -> None:
        star(sim, "c")
        n = node(sim, "c", RelayTransport())
        fresh = fresh_dial_transports(n)
        assert [type(t).__name__ for t in fresh] == ["SimTransport"]
        assert fresh[0] is not n.transports[0]

    run_simulation(main, seed=13, config=QUIET)


def test_quic_in_the_simulator_dials_back_from_a_socket_of_its_own() -> None:
    async def main(sim: Simulation) -> None:
        star(sim, "c", "s1")
        quic = "/memory/4001/quic-v1"
        svc = AutoNATService(server=False, confidence=1, probe_automatically=False)
        inbound: list[ConnectionEvent] = []
        async with (
            node(
                sim,
                "s1",
                AutoNATService(client=False),
                transports=[sim_quic_transport(sim.network, "s1")],
                listen=[quic],
            ) as s,
            node(
                sim, "c", svc, transports=[sim_quic_transport(sim.network, "c")], listen=[quic]
            ) as c,
        ):
            c.on_connection_event(
                lambda e: inbound.append(e) if not e.connection.is_initiator else None
            )
            await connect_all(c, [s])
            result = await svc.ask(s.peer_id, c.listen_addrs[0])
            assert result.verdict is Verdict.REACHABLE, result
            (back,) = [e.connection for e in inbound if e.kind == "connected"]
            assert back.remote_addr != s.listen_addrs[0]  # not the server's listening socket
            assert "quic-v1" in str(back.remote_addr)

    run_simulation(main, seed=14, config=QUIET)
