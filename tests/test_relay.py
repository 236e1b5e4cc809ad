"""Circuit relay v2 end to end: hop service, stop protocol and relay transport.

Over real loopback TCP and over the simulator (virtual time, for expiry,
renewal, duration limits, timeouts and crashes).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import pytest
from multiaddr import Multiaddr

from switchy.presets import default_node
from switchy.protocols.echo import ECHO_PROTOCOL, echo
from switchy.protocols.perf import perf
from switchy.protocols.ping import ping
from switchy.stack.codec import encode_uvarint
from switchy.stack.config import NetworkConfig
from switchy.stack.errors import ConnectionFailed, RelayRefused, StreamReset, UnsupportedAddress
from switchy.stack.identity import PeerId
from switchy.stack.node import Node, ProtocolService
from switchy.stack.stream import MuxedStream
from switchy.transports.relay import (
    HOP_PROTOCOL,
    STOP_PROTOCOL,
    Circuit,
    Limit,
    RelayClientConfig,
    RelayConfig,
    RelayService,
    RelayTransport,
    Status,
    parse_circuit,
)
from switchy.transports.relay.pb import (
    MAX_MESSAGE_SIZE,
    HopMessage,
    HopType,
    Peer,
    StopMessage,
    StopType,
    decode_hop,
    decode_stop,
    encode_hop,
    encode_stop,
)
from switchy.transports.relay.transport import RESERVATION_TAG
from switchy.transports.relay.voucher import open_voucher
from switchy.transports.sim import SimConfig, SimTransport, Simulation, run_simulation

LOCAL = "/ip4/127.0.0.1/tcp/0"
QUIET = SimConfig(default_packet_loss=0.0)
UNLIMITED = RelayConfig(limit_data=0, limit_duration=0)


def aio(fn: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test on a fresh loop, bounded to 30 s."""

    @functools.wraps(fn)
    def run() -> None:
        async def bounded() -> None:
            async with asyncio.timeout(30):
                await fn()

        asyncio.run(bounded())

    return run


def relay_node(config: RelayConfig | None = None, **kw: Any) -> Node:
    return default_node(services=[RelayService(config)], listen=[LOCAL], **kw)


def client(*relays: str | Multiaddr, **kw: Any) -> Node:
    return default_node(services=[RelayTransport(relays)], **kw)


async def hop(node: Node, relay: str | Multiaddr | PeerId, payload: bytes) -> HopMessage:
    """Send one raw hop message and decode the relay's answer."""
    stream = await node.open_stream(relay, HOP_PROTOCOL)
    await stream.write(payload)
    reply = decode_hop(await stream.recv_message(max_size=MAX_MESSAGE_SIZE))
    await stream.close()
    return reply


def framed(msg: HopMessage) -> bytes:
    data = encode_hop(msg)
    return encode_uvarint(len(data)) + data


def circuit_addrs(node: Node) -> list[Multiaddr]:
    return [a for a in node.full_addrs if "/p2p-circuit/" in str(a)]


def service(node: Node) -> RelayService:
    return next(s for s in node.services if isinstance(s, RelayService))


def transport(node: Node) -> RelayTransport:
    return next(t for t in node.transports if isinstance(t, RelayTransport))


# --- addresses ------------------------------------------------------------------------------


def test_parse_circuit_addresses() -> None:
    r = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
    t = "12D3KooWKV9RtCwN1yDFscDJcjR6SGAiRbQh3RtKNiY5wMEb8igx"
    got = parse_circuit(Multiaddr(f"/ip4/1.2.3.4/tcp/1/p2p/{r}/p2p-circuit/p2p/{t}"))
    assert got == (
        Multiaddr(f"/ip4/1.2.3.4/tcp/1/p2p/{r}"),
        PeerId.from_string(r),
        PeerId.from_string(t),
    )
    got = parse_circuit(Multiaddr(f"/p2p/{r}/p2p-circuit"))
    assert got == (Multiaddr(f"/p2p/{r}"), PeerId.from_string(r), None)
    for bad in (
        "/ip4/1.2.3.4/tcp/1/p2p-circuit",  # no relay id
        "/p2p-circuit/p2p/" + t,  # no relay
        f"/p2p/{r}/p2p-circuit/p2p/{t}/p2p-circuit/p2p/{t}",  # two hops
        f"/p2p/{r}/p2p-circuit/ip4/1.2.3.4",  # junk after the circuit
        "/ip4/1.2.3.4/tcp/1",
    ):
        assert parse_circuit(Multiaddr(bad)) is None, bad


def test_relay_transport_configuration_errors() -> None:
    from switchy.stack.errors import InvalidConfiguration

    with pytest.raises(InvalidConfiguration, match="must end with /p2p"):
        RelayTransport(["/ip4/1.2.3.4/tcp/1"])


# --- hop service over TCP -------------------------------------------------------------------


@aio
async def test_reservation_carries_expiry_addresses_and_limits() -> None:
    async with relay_node(RelayConfig(reservation_ttl=600)) as r, default_node() as a:
        before = time.time()
        reply = await hop(a, r.full_addrs[0], framed(HopMessage(HopType.RESERVE)))
        assert reply.type == HopType.STATUS and reply.status == Status.OK
        rsv = reply.reservation
        assert rsv is not None
        assert before + 599 <= rsv.expire <= time.time() + 601
        assert list(rsv.addrs) == r.full_addrs
        # the defaults let a music stream through (2 h, 1 GiB), not go-libp2p's 2 min/128 KiB
        assert reply.limit == Limit(duration=2 * 3600, data=1024**3)
        assert rsv.voucher is not None
        assert service(r).resources.has_reservation(a.peer_id, asyncio.get_running_loop().time())


@aio
async def test_reservation_voucher_is_a_signed_envelope_from_the_relay() -> None:
    async with relay_node() as r, default_node() as a:
        reply = await hop(a, r.full_addrs[0], framed(HopMessage(HopType.RESERVE)))
        assert reply.reservation is not None and reply.reservation.voucher is not None
        voucher = open_voucher(reply.reservation.voucher, r.peer_id)
        assert voucher.relay == r.peer_id and voucher.peer == a.peer_id
        assert voucher.expiration == reply.reservation.expire
        with pytest.raises(Exception):  # noqa: B017 - signed by r, not by a
            open_voucher(reply.reservation.voucher, a.peer_id)


@aio
async def test_hop_refusals_name_the_status_and_the_relay_keeps_serving() -> None:
    async with relay_node() as r, default_node() as a, default_node() as b:
        ra = r.full_addrs[0]
        connect_b = HopMessage(HopType.CONNECT, peer=Peer(b.peer_id))
        assert (await hop(a, ra, framed(connect_b))).status == Status.NO_RESERVATION
        assert (await hop(a, ra, framed(HopMessage(HopType.CONNECT)))).status == (
            Status.MALFORMED_MESSAGE
        )
        status_msg = HopMessage(HopType.STATUS, status=Status.OK)
        assert (await hop(a, ra, framed(status_msg))).status == Status.UNEXPECTED_MESSAGE
        assert (await hop(a, ra, b"\x03\x08\x09\x00")).status == Status.MALFORMED_MESSAGE
        assert (await hop(a, ra, b"\x02\xff\xff")).status == Status.MALFORMED_MESSAGE
        # Oversized: refused from the length prefix, before any body is read.
        huge = encode_uvarint(MAX_MESSAGE_SIZE + 1)
        assert (await hop(a, ra, huge)).status == Status.MALFORMED_MESSAGE
        # To itself.
        connect_a = HopMessage(HopType.CONNECT, peer=Peer(a.peer_id))
        await hop(a, ra, framed(HopMessage(HopType.RESERVE)))
        assert (await hop(a, ra, framed(connect_a))).status == Status.PERMISSION_DENIED
        # After all that the relay still serves.
        assert (await hop(b, ra, framed(HopMessage(HopType.RESERVE)))).status == Status.OK


@aio
async def test_reservation_flood_from_one_ip_is_refused() -> None:
    config = RelayConfig(max_reservations_per_ip=2)
    async with relay_node(config) as r:
        nodes = [default_node() for _ in range(4)]
        try:
            reserve = framed(HopMessage(HopType.RESERVE))
            got = [(await hop(n, r.full_addrs[0], reserve)).status for n in nodes]
            assert got == [Status.OK, Status.OK, Status.RESERVATION_REFUSED] * 1 + [
                Status.RESERVATION_REFUSED
            ]
            # Renewing an existing reservation still works; a freed slot is reusable.
            assert (await hop(nodes[0], r.full_addrs[0], reserve)).status == Status.OK
            gone = asyncio.ensure_future(_disconnected(r, nodes[1].peer_id))
            await asyncio.sleep(0)  # subscribed
            await nodes[1].close()
            await gone
            assert service(r).resources.reservations_from("ip4/127.0.0.1") == 1
            assert (await hop(nodes[2], r.full_addrs[0], reserve)).status == Status.OK
        finally:
            for n in nodes:
                await n.close()


async def _disconnected(node: Node, peer: PeerId) -> None:
    async for event in node.events():
        if event.kind == "disconnected" and event.peer == peer:
            return


# --- relayed connections over TCP ---------------------------------------------------------


Tap = list[tuple[Circuit, bool, bytes]]


@asynccontextmanager
async def relayed_trio() -> AsyncIterator[tuple[Node, Node, Node, Tap]]:
    """A relay (unlimited, recording what it forwards), a listener behind it and a dialer."""
    seen: Tap = []
    svc = RelayService(UNLIMITED, tap=lambda c, up, chunk: seen.append((c, up, chunk)))
    async with default_node(services=[svc], listen=[LOCAL]) as r, client() as b, client() as a:
        await b.listen(f"{r.full_addrs[0]}/p2p-circuit")
        yield r, b, a, seen


@aio
async def test_relayed_ping_echo_perf_over_tcp() -> None:
    async with relayed_trio() as (r, b, a, seen):
        circuit_addr = b.full_addrs[0]
        assert str(circuit_addr).endswith(f"/p2p/{r.peer_id}/p2p-circuit/p2p/{b.peer_id}")
        conn = await a.connect(circuit_addr)
        assert conn.remote_peer == b.peer_id and conn.is_limited
        assert len(await ping(a, b.peer_id, count=3)) == 3
        assert [c.is_limited for c in b.connections(a.peer_id)] == [True]
        data = bytes(range(256)) * 1000
        assert await echo(a, b.peer_id, data) == data
        result = await perf(a, b.peer_id, upload=300_000, download=500_000)
        assert (result.upload_bytes, result.download_bytes) == (300_000, 500_000)
        (circuit,) = service(r).circuits
        assert (circuit.src, circuit.dst) == (a.peer_id, b.peer_id)
        assert circuit.forwarded["src"] > 556_000 and circuit.forwarded["dst"] > 756_000
        assert sum(len(chunk) for _c, _up, chunk in seen) == sum(circuit.forwarded.values())


def test_reservations_circuits_and_refusals_are_logged_at_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    @aio
    async def main() -> None:
        config = RelayConfig(limit_data=0, limit_duration=0, max_reservations=1)
        async with relay_node(config) as r, client() as b, client() as a, client() as c:
            await b.listen(f"{r.full_addrs[0]}/p2p-circuit")
            with pytest.raises(ConnectionFailed, match="RESERVATION_REFUSED"):
                await c.listen(f"{r.full_addrs[0]}/p2p-circuit")
            await echo(a, b.full_addrs[0], b"hi")

    with caplog.at_level(logging.INFO, logger="switchy"):
        main()
    infos = [(rec.name, rec.getMessage()) for rec in caplog.records if rec.levelno == logging.INFO]
    text = "\n".join(message for _, message in infos)
    assert "relay: granted 12D3KooW" in text and "a reservation for" in text
    assert "reservation with relay 12D3KooW" in text and "/p2p-circuit" in text
    assert "relay: refused a reservation for 12D3KooW" in text
    assert "RESERVATION_REFUSED" in text
    assert "relay: circuit 12D3KooW" in text and " opened" in text
    assert "connected to 12D3KooW" in text and "limited" in text
    assert all(name.startswith("switchy.") for name, _ in infos)


@aio
async def test_the_relay_forwards_only_ciphertext() -> None:
    async with relayed_trio() as (_r, b, a, seen):
        secret = b"attack at dawn! " * 4096  # 64 KiB of recognisable plaintext
        assert await echo(a, b.full_addrs[0], secret) == secret
        up = b"".join(chunk for _c, from_src, chunk in seen if from_src)
        down = b"".join(chunk for _c, from_src, chunk in seen if not from_src)
        assert len(up) > len(secret) and len(down) > len(secret)
        for forwarded in (up, down):
            assert b"attack at dawn" not in forwarded
            assert ECHO_PROTOCOL.encode() not in forwarded  # even negotiation is encrypted
            assert b"/yamux/1.0.0" not in forwarded  # muxer selection runs inside Noise
        assert up.startswith(b"\x13/multistream/1.0.0\n")  # the raw upgrade, as over TCP


def test_relay_over_quic() -> None:
    quic = pytest.importorskip(
        "switchy.transports.quic", reason="the QUIC transport is not on this branch"
    )
    udp = "/ip4/127.0.0.1/udp/0/quic-v1"

    def quic_node(*services: Any) -> Node:
        return default_node(transports=[quic.QuicTransport()], services=list(services))

    async def main() -> None:
        async with (
            quic_node(RelayService(UNLIMITED)) as r,
            quic_node(RelayTransport()) as b,
            quic_node(RelayTransport()) as a,
        ):
            await r.listen(udp)
            assert "/quic-v1/" in str(r.full_addrs[0])
            (addr,) = await b.listen(f"{r.full_addrs[0]}/p2p-circuit")
            conn = await a.connect(f"{addr}/p2p/{b.peer_id}")
            assert conn.is_limited and conn.remote_peer == b.peer_id
            assert len(await ping(a, b.peer_id, count=2)) == 2
            assert await echo(a, b.peer_id, bytes(100_000)) == bytes(100_000)

    asyncio.run(asyncio.wait_for(main(), 30))


@aio
async def test_a_direct_connection_replaces_a_relayed_one() -> None:
    async with relay_node(UNLIMITED) as r, client() as a, client(listen=[LOCAL]) as b:
        await b.listen(f"{r.full_addrs[0]}/p2p-circuit")
        circuit_addr = next(x for x in b.full_addrs if "p2p-circuit" in str(x))
        relayed = await a.connect(circuit_addr)
        assert relayed.is_limited
        # By peer id or by the circuit address, the relayed connection is reused...
        assert await a.connect(b.peer_id) is relayed
        assert await a.connect(circuit_addr) is relayed
        # ...but a direct address is dialed, and from then on preferred.
        direct = await a.connect(f"{b.listen_addrs[0]}/p2p/{b.peer_id}")
        assert direct is not relayed and not direct.is_limited
        assert await a.connect(b.peer_id) is direct
        assert set(a.connections(b.peer_id)) == {relayed, direct}


@asynccontextmanager
async def data_limited_trio(limit: int) -> AsyncIterator[tuple[Node, Node, Node]]:
    """A relay with a data limit per circuit, a listener behind it and a dialer connected."""
    config = RelayConfig(limit_data=limit, limit_duration=0)
    async with relay_node(config) as r, client() as b, client() as a:
        await b.listen(f"{r.full_addrs[0]}/p2p-circuit")
        await a.connect(b.full_addrs[0])
        yield r, b, a


@aio
async def test_data_limit_cuts_the_circuit_with_resource_limit_exceeded() -> None:
    limit = 64 * 1024
    async with data_limited_trio(limit) as (r, b, a):
        (conn,) = a.connections(b.peer_id)
        raw = transport(a).connections[0]
        assert raw.limit == Limit(0, limit)
        assert await echo(a, b.peer_id, b"small") == b"small"
        with pytest.raises(StreamReset, match="data limit of 65536 bytes"):
            await echo(a, b.peer_id, bytes(200_000))
        await conn.wait_closed()
        assert "RESOURCE_LIMIT_EXCEEDED" in (raw.close_reason or "")
        (circuit,) = service(r).history
        assert circuit.end_status == Status.RESOURCE_LIMIT_EXCEEDED
        assert "data limit" in circuit.end_reason
        assert circuit.forwarded["src"] == limit  # exactly the limit, not a byte more
        assert not service(r).circuits and service(r).resources.circuits == 0
        # The limit is per circuit: a new relayed connection works again.
        assert await echo(a, b.full_addrs[0], b"again") == b"again"


@pytest.mark.parametrize(("upload", "download"), [(1_000_000, 0), (0, 1_000_000)])
def test_a_transfer_cut_by_the_data_limit_says_so_in_both_directions(
    upload: int, download: int
) -> None:
    @aio
    async def main() -> None:
        async with data_limited_trio(64 * 1024) as (r, b, a):
            # The writer's last write may still be waiting when the relay cuts: the client
            # counts what it handed over, not only the writes that returned.
            with pytest.raises(StreamReset, match="cut the circuit at its data limit of 65536"):
                await perf(a, b.peer_id, upload, download)
            (circuit,) = service(r).history
            assert circuit.end_status == Status.RESOURCE_LIMIT_EXCEEDED

    main()


@aio
async def test_connect_refused_statuses_surface_as_relay_refused() -> None:
    config = RelayConfig(max_circuits_per_peer=1)
    async with relay_node(config) as r, client() as a, client() as b, client() as c:
        target = Multiaddr(f"{r.full_addrs[0]}/p2p-circuit/p2p/{b.peer_id}")
        with pytest.raises(RelayRefused, match="NO_RESERVATION") as info:
            await a.connect(target)
        assert info.value.status == Status.NO_RESERVATION
        await b.listen(f"{r.full_addrs[0]}/p2p-circuit")
        await a.connect(target)
        with pytest.raises(RelayRefused, match="RESOURCE_LIMIT_EXCEEDED"):
            await c.connect(target)
        with pytest.raises(UnsupportedAddress, match="names no target"):
            await transport(a).dial(Multiaddr(f"{r.full_addrs[0]}/p2p-circuit"))


@aio
async def test_a_target_without_listener_refuses_the_stop_request() -> None:
    async with relay_node() as r, client() as a, client() as b:
        # b reserves by hand (no listener): the relay's stop request gets CONNECTION_FAILED.
        await hop(b, r.full_addrs[0], framed(HopMessage(HopType.RESERVE)))
        with pytest.raises(RelayRefused, match="CONNECTION_FAILED"):
            await a.connect(f"{r.full_addrs[0]}/p2p-circuit/p2p/{b.peer_id}")


@aio
async def test_relay_does_not_serve_over_a_relayed_connection() -> None:
    async with relay_node(UNLIMITED) as r, client() as a:
        # b is itself a relay, reachable only through r.
        b = default_node(services=[RelayTransport(), RelayService()])
        async with b:
            await b.listen(f"{r.full_addrs[0]}/p2p-circuit")
            reply = await hop(a, b.full_addrs[0], framed(HopMessage(HopType.RESERVE)))
            assert reply.status == Status.PERMISSION_DENIED
            with pytest.raises(ConnectionFailed, match="over a relayed connection"):
                await transport(a).reserve(b.full_addrs[0])


# --- simulator: virtual time --------------------------------------------------------------


def sim_node(sim: Simulation, host: str, *services: Any, **kw: Any) -> Node:
    # These tests are about the relayed connection itself: in the simulator every host
    # here is public, so hole punching would make each circuit direct at once.
    kw.setdefault("hole_punching", False)
    return default_node(
        transports=[SimTransport(sim.network, host)],
        services=list(services),
        entropy=sim.entropy_source(host),
        listen=["/memory/0"],
        **kw,
    )


def star(sim: Simulation, *hosts: str, latency: float = 0.01) -> None:
    net = sim.network
    net.add_hosts(["r", "r2", *hosts])
    for h in hosts:
        net.add_link(h, "r", latency=latency)
        net.add_link(h, "r2", latency=latency)


def test_relay_over_the_simulator_with_expiry_and_renewal() -> None:
    async def main(sim: Simulation) -> None:
        star(sim, "a", "b")
        config = RelayConfig(reservation_ttl=60, limit_data=0, limit_duration=0)
        async with (
            sim_node(sim, "r", RelayService(config)) as r,
            sim_node(sim, "b", RelayTransport()) as b,
            sim_node(sim, "a", RelayTransport()) as a,
        ):
            (addr,) = await b.listen(f"{r.full_addrs[0]}/p2p-circuit")
            (listener,) = transport(b).listeners
            assert listener.reservations_made == 1
            start = sim.now
            rtts = await ping(a, Multiaddr(f"{addr}/p2p/{b.peer_id}"), count=5)
            # Each relayed ping crosses a→r→b and back: 40 ms.
            assert all(0.040 - 1e-6 <= t <= 0.041 for t in rtts), rtts
            assert sim.now - start < 1
            # An idle hour: the reservation is renewed every 45 s (75% of 60 s).
            await asyncio.sleep(3600)
            assert 78 <= listener.reservations_made <= 82
            assert service(r).resources.has_reservation(b.peer_id, sim.now)
            assert await echo(a, b.peer_id, b"still here") == b"still here"
            # Without renewal a reservation lapses: a new peer cannot reach b after it.
            await listener.close()
            await asyncio.sleep(61)
            assert not service(r).resources.has_reservation(b.peer_id, sim.now)
            async with sim_node(sim, "a", RelayTransport()) as c:
                with pytest.raises(RelayRefused, match="NO_RESERVATION"):
                    await c.connect(Multiaddr(f"{addr}/p2p/{b.peer_id}"))

    run_simulation(main, seed=1, config=QUIET)


def test_duration_limit_and_silent_circuits_in_virtual_time() -> None:
    async def main(sim: Simulation) -> None:
        star(sim, "a", "b")
        config = RelayConfig(limit_duration=30, limit_data=0)
        no_keepalive = NetworkConfig(keepalive_interval=0)
        async with (
            sim_node(sim, "r", RelayService(config)) as r,
            sim_node(sim, "b", RelayTransport()) as b,
            sim_node(sim, "a", RelayTransport(), config=no_keepalive) as a,
        ):
            await b.listen(f"{r.full_addrs[0]}/p2p-circuit")
            opened = sim.now
            conn = await a.connect(circuit_addrs(b)[0])
            (raw,) = transport(a).connections
            (raw_b,) = transport(b).connections
            # A circuit that carries nothing is still cut at the duration limit.
            await conn.wait_closed()
            assert 30 <= sim.now - opened <= 30.3
            for end in (raw, raw_b):
                await end.wait_closed()
                assert "duration limit of 30s" in (end.close_reason or ""), end.close_reason
            (circuit,) = service(r).history
            assert circuit.end_status == Status.RESOURCE_LIMIT_EXCEEDED
            assert "duration limit of 30s" in circuit.end_reason
            assert transport(a).connections == []  # closed connections are forgotten

    run_simulation(main, seed=2, config=QUIET)


def test_hop_streams_that_never_send_are_bounded_and_timed_out() -> None:
    async def main(sim: Simulation) -> None:
        star(sim, "a", "b")
        config = RelayConfig(max_pending_per_peer=2, handshake_timeout=5)
        async with sim_node(sim, "r", RelayService(config)) as r, sim_node(sim, "a") as a:
            silent = [await a.open_stream(r.full_addrs[0], HOP_PROTOCOL) for _ in range(2)]
            for s in silent:
                await s.write(b"")  # negotiated, but no request
            start = sim.now
            # A third pending request is refused at once.
            third = await hop(a, r.full_addrs[0], b"")
            assert third.status == Status.RESOURCE_LIMIT_EXCEEDED
            assert sim.now - start < 0.1
            # The silent ones are reset after the handshake timeout.
            for s in silent:
                with pytest.raises(StreamReset):
                    await s.read()
            assert 5 <= sim.now - start <= 5.1
            reply = await hop(a, r.full_addrs[0], framed(HopMessage(HopType.RESERVE)))
            assert reply.status == Status.OK

    run_simulation(main, seed=3, config=QUIET)


def test_target_that_never_answers_stop_gets_connection_failed() -> None:
    async def main(sim: Simulation) -> None:
        star(sim, "a", "b")
        config = RelayConfig(handshake_timeout=4)
        async with (
            sim_node(sim, "r", RelayService(config)) as r,
            sim_node(sim, "a", RelayTransport()) as a,
            sim_node(sim, "b") as b,
        ):

            async def mute(stream: MuxedStream) -> None:
                await asyncio.sleep(3600)

            b.handle(STOP_PROTOCOL, mute)
            await hop(b, r.full_addrs[0], framed(HopMessage(HopType.RESERVE)))
            start = sim.now
            with pytest.raises(RelayRefused, match="CONNECTION_FAILED"):
                await a.connect(f"{r.full_addrs[0]}/p2p-circuit/p2p/{b.peer_id}")
            assert 4 <= sim.now - start <= 4.2
            assert service(r).resources.circuits == 0

    run_simulation(main, seed=4, config=QUIET)


def test_relay_crash_closes_circuits_and_the_listener_moves_to_another_relay() -> None:
    async def main(sim: Simulation) -> None:
        star(sim, "a", "b")
        quick = NetworkConfig(keepalive_interval=5)
        cfg = UNLIMITED
        async with (
            sim_node(sim, "r", RelayService(cfg), config=quick) as r1,
            sim_node(sim, "r2", RelayService(cfg), config=quick) as r2,
        ):
            b = sim_node(
                sim,
                "b",
                RelayTransport([r2.full_addrs[0]], config=RelayClientConfig(retry_interval=2)),
                config=quick,
            )
            async with b, sim_node(sim, "a", RelayTransport(), config=quick) as a:
                (via_r1,) = await b.listen(f"{r1.full_addrs[0]}/p2p-circuit")
                conn = await a.connect(Multiaddr(f"{via_r1}/p2p/{b.peer_id}"))
                stream = await conn.open_stream()
                reading = asyncio.ensure_future(stream.read())
                sim.network.crash("r")
                with pytest.raises(StreamReset, match=r"relay \w+ went away"):
                    await reading
                crashed_at = sim.now
                (listener,) = transport(b).listeners
                await listener.wait_reservation(r2.peer_id)
                assert sim.now - crashed_at < 15
                (via_r2,) = listener.addrs
                assert f"/p2p/{r2.peer_id}/p2p-circuit" in str(via_r2)
                assert await echo(a, Multiaddr(f"{via_r2}/p2p/{b.peer_id}"), b"hi") == b"hi"

    run_simulation(main, seed=5, config=QUIET)


def test_a_relay_is_protected_only_while_a_reservation_is_held_on_it() -> None:
    """The connection manager's protection of a relay's connection follows the
    reservation: it moves with the listener to the next relay when the first goes away,
    and ends with the listener.  (Before the fix it was never removed: a relay that went
    away stayed protected, and would be again without a reservation once back.)"""

    async def main(sim: Simulation) -> None:
        star(sim, "b")
        quick = NetworkConfig(keepalive_interval=5)
        async with (
            sim_node(sim, "r", RelayService(UNLIMITED), config=quick) as r1,
            sim_node(sim, "r2", RelayService(UNLIMITED), config=quick) as r2,
        ):
            b = sim_node(
                sim,
                "b",
                RelayTransport([r2.full_addrs[0]], config=RelayClientConfig(retry_interval=2)),
                config=quick,
            )
            async with b:
                connmgr = b.connmgr
                assert not connmgr.is_protected(r1.peer_id)
                await b.listen(f"{r1.full_addrs[0]}/p2p-circuit")
                assert connmgr.is_protected(r1.peer_id, RESERVATION_TAG)
                assert not connmgr.is_protected(r2.peer_id)
                sim.network.crash("r")
                (listener,) = transport(b).listeners
                await listener.wait_reservation(r2.peer_id)
                assert connmgr.is_protected(r2.peer_id, RESERVATION_TAG)
                assert not connmgr.is_protected(r1.peer_id)
                await listener.close()
                assert not connmgr.is_protected(r2.peer_id)

    run_simulation(main, seed=5, config=QUIET)


def test_a_relay_is_unprotected_when_the_reservation_expires_and_again_protected_on_renewal() -> (
    None
):
    """A reservation that lapses while its renewal hangs (the relay stays connected but
    does not answer) ends the protection at its expiry, and takes the circuit address
    away; the next reservation protects the relay again.  (Before the fix the listener
    kept the expired reservation, and the protection, until the renewal gave up.)"""

    async def main(sim: Simulation) -> None:
        star(sim, "b")
        config = RelayConfig(reservation_ttl=20, limit_data=0, limit_duration=0)
        async with sim_node(sim, "r", RelayService(config)) as r:
            relay_service = service(r)
            client_cfg = RelayClientConfig(handshake_timeout=60, retry_interval=2)
            async with sim_node(sim, "b", RelayTransport(config=client_cfg)) as b:
                await b.listen(f"{r.full_addrs[0]}/p2p-circuit")
                (listener,) = transport(b).listeners
                first = listener.reservation
                assert first is not None
                assert b.connmgr.is_protected(r.peer_id, RESERVATION_TAG)

                async def silent(stream: MuxedStream) -> None:
                    await stream.recv_message(max_size=MAX_MESSAGE_SIZE)
                    with contextlib.suppress(Exception):
                        await stream.read()  # until the client gives up and resets

                r.handle(HOP_PROTOCOL, silent)  # renewals now hang (60 s client timeout)
                await asyncio.sleep(first.expires - sim.now + 1)
                assert listener.reservation is None
                assert listener.addrs == []
                assert not b.connmgr.is_protected(r.peer_id)
                assert any(c for c in b.connections(r.peer_id))  # still connected
                r.handle(HOP_PROTOCOL, relay_service._handle_hop)
                renewed = await listener.wait_reservation(r.peer_id)
                assert renewed is not first
                assert b.connmgr.is_protected(r.peer_id, RESERVATION_TAG)

    run_simulation(main, seed=6, config=QUIET)


def test_reservations_on_several_relays_and_bare_circuit_listen() -> None:
    async def main(sim: Simulation) -> None:
        star(sim, "a", "b")
        async with (
            sim_node(sim, "r", RelayService(UNLIMITED)) as r1,
            sim_node(sim, "r2", RelayService(UNLIMITED)) as r2,
        ):
            relays = [r1.full_addrs[0], r2.full_addrs[0]]
            async with (
                sim_node(sim, "b", RelayTransport(relays)) as b,
                sim_node(sim, "a", RelayTransport()) as a,
            ):
                first = await b.listen("/p2p-circuit")
                second = await b.listen("/p2p-circuit")  # takes the relay not yet used
                assert {parse_circuit(x)[1] for x in first + second} == {  # type: ignore[index]
                    r1.peer_id,
                    r2.peer_id,
                }
                for addr in circuit_addrs(b):
                    async with sim_node(sim, "a", RelayTransport()) as c:
                        assert await echo(c, addr, b"x") == b"x"
                assert await echo(a, circuit_addrs(b)[1], b"y") == b"y"

    run_simulation(main, seed=6, config=QUIET)


def test_hostile_stop_requests_get_a_status_or_a_reset() -> None:
    async def main(sim: Simulation) -> None:
        star(sim, "a", "b")
        quick = RelayClientConfig(handshake_timeout=3)
        async with (
            sim_node(sim, "r", RelayService(UNLIMITED)) as r,
            sim_node(sim, "b", RelayTransport(config=quick)) as b,
            sim_node(sim, "a") as a,
        ):
            await b.listen(f"{r.full_addrs[0]}/p2p-circuit")

            async def stop(payload: bytes) -> StopMessage:
                stream = await a.open_stream(b.full_addrs[0], STOP_PROTOCOL)
                await stream.write(payload)
                return decode_stop(await stream.recv_message(max_size=MAX_MESSAGE_SIZE))

            def frame(m: StopMessage) -> bytes:
                data = encode_stop(m)
                return encode_uvarint(len(data)) + data

            assert (await stop(b"\x02\xff\xff")).status == Status.MALFORMED_MESSAGE
            assert (await stop(encode_uvarint(MAX_MESSAGE_SIZE + 1))).status == (
                Status.MALFORMED_MESSAGE
            )
            assert (await stop(frame(StopMessage(StopType.CONNECT)))).status == (
                Status.MALFORMED_MESSAGE
            )
            status = StopMessage(StopType.STATUS, status=Status.OK)
            assert (await stop(frame(status))).status == Status.UNEXPECTED_MESSAGE
            # Silent: reset after the client's handshake timeout.
            silent = await a.open_stream(b.full_addrs[0], STOP_PROTOCOL)
            await silent.write(b"")
            start = sim.now
            with pytest.raises(StreamReset):
                await silent.read()
            assert 3 <= sim.now - start <= 3.1
            # b still takes relayed connections.
            assert await echo(a, circuit_addrs(b)[0], b"ok") == b"ok"

    run_simulation(main, seed=7, config=QUIET)


def test_a_reserve_flood_from_one_peer_holds_one_slot() -> None:
    async def main(sim: Simulation) -> None:
        star(sim, "a", "b")
        config = RelayConfig(max_pending_per_peer=4)
        async with sim_node(sim, "r", RelayService(config)) as r, sim_node(sim, "a") as a:
            await a.connect(r.full_addrs[0])
            reserve = framed(HopMessage(HopType.RESERVE))
            replies = await asyncio.gather(*(hop(a, r.peer_id, reserve) for _ in range(40)))
            # Each request is answered at once (pending ones are bounded: see the silent test).
            assert {m.status for m in replies} == {Status.OK}
            assert len(service(r).resources.reservations) == 1  # renewals hold one slot
            async with sim_node(sim, "b") as b:
                assert (await hop(b, r.full_addrs[0], reserve)).status == Status.OK

    run_simulation(main, seed=8, config=QUIET)


def test_relay_transport_needs_a_node_and_refuses_other_addresses() -> None:
    async def main() -> None:
        t = RelayTransport()
        with pytest.raises(UnsupportedAddress):
            await t.dial(Multiaddr("/ip4/127.0.0.1/tcp/1"))
        assert not t.can_listen(Multiaddr("/p2p-circuit"))  # no configured relays
        from switchy.stack.errors import InvalidConfiguration

        with pytest.raises(InvalidConfiguration, match="services"):
            await t.listen(
                Multiaddr("/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA/p2p-circuit"),
                lambda c: asyncio.sleep(0),
            )

    asyncio.run(main())


# --- command line ---------------------------------------------------------------------------


def test_cli_relay_listen_through_it_and_ping_a_circuit_address() -> None:
    import json
    import signal
    import subprocess
    import sys

    switchy = [sys.executable, "-m", "switchy.cli"]
    procs: list[subprocess.Popen[str]] = []

    def start(*args: str) -> str:
        proc = subprocess.Popen(
            [*switchy, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        procs.append(proc)
        assert proc.stdout is not None
        return proc.stdout.readline().strip()

    try:
        relay = start("relay", LOCAL, "--limit-data", "0")
        assert relay.startswith("/ip4/127.0.0.1/tcp/") and "/p2p/12D3KooW" in relay
        circuit = start("listen", "--relay", relay)
        assert circuit.startswith(relay + "/p2p-circuit/p2p/12D3KooW"), circuit
        r = subprocess.run(
            [*switchy, "ping", circuit, "-c", "2", "--json"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["count"] == 2 and circuit.endswith(out["peer_id"])
        bad = subprocess.run(
            [*switchy, "listen", "--relay", "/ip4/127.0.0.1/tcp/1"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert bad.returncode == 2 and "must end with /p2p/<relay id>" in bad.stderr
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err


def test_quic_legs_relay_queues_little_and_an_echo_does_not_wait_behind_bulk() -> None:
    """Bulk data through a relay whose second QUIC leg is 8x slower than the first.

    Without a bound, the relay's receive window (4 MiB) and send backlog let the whole
    end-to-end window of the bulk streams pile up at the relay, and a 1-byte echo on
    another stream of the same relayed connection waited behind all of it (~2 s here).
    With the circuit streams limited, the relay holds at most about two circuit windows
    per direction and the backpressure of the slow leg reaches the sender.
    """
    from switchy.stack.mux.yamux_core import INITIAL_WINDOW
    from switchy.transports.quic.connection import QuicConnection
    from switchy.transports.quic.sim import sim_quic_transport
    from switchy.transports.relay.pb import HOP_PROTOCOL, STOP_PROTOCOL

    slow = 1_000_000  # bytes/s of the relay -> b leg
    # 32 bulk streams of one window each: their windows (8 MiB) are the whole bulk, four
    # times the buffers the relay path bounds, so an echo that waited behind the bulk's
    # windows would show (with 8 streams the two were alike and the median a matter of
    # sampling luck: 1.2-1.7 s against a 1.26 s bound with the same code)
    streams, each = 32, 256 * 1024

    def node(sim: Simulation, host: str, *services: ProtocolService) -> Node:
        return default_node(
            transports=[sim_quic_transport(sim.network, host)],
            services=list(services),
            entropy=sim.entropy_source(host),
            listen=["/memory/4001/quic-v1"],
            hole_punching=False,  # the relayed legs are what is measured
        )

    async def main(sim: Simulation) -> None:
        net = sim.network
        net.add_hosts(["a", "r", "b"])
        net.add_link("a", "r", latency=0.01, bandwidth=8 * slow)
        net.add_link("r", "b", latency=0.01, bandwidth=slow)
        async with (
            node(sim, "r", RelayService(UNLIMITED)) as r,
            node(sim, "b", RelayTransport()) as b,
            node(sim, "a", RelayTransport()) as a,
        ):
            (addr,) = await b.listen(f"{r.full_addrs[0]}/p2p-circuit")

            async def sink(stream: MuxedStream) -> None:
                while await stream.read(1 << 20):
                    pass

            b.handle("/sink/1.0.0", sink)
            await a.connect(Multiaddr(f"{addr}/p2p/{b.peer_id}"))
            small = await a.open_stream(b.peer_id, ECHO_PROTOCOL)

            async def echo_rtt() -> float:
                start = sim.now
                await small.write(b"x")
                assert await small.read_exactly(1) == b"x"
                return sim.now - start

            idle = await echo_rtt()
            assert idle == pytest.approx(4 * 0.01, abs=0.005)
            to_a, to_b = r.connections(a.peer_id)[0], r.connections(b.peer_id)[0]
            assert isinstance(to_a, QuicConnection) and isinstance(to_b, QuicConnection)

            def relay_queue() -> int:
                """Bytes of the circuit that reached the relay and did not leave it yet."""
                hop = next(s for s in to_a._streams.values() if s.protocol == HOP_PROTOCOL)
                stop = next(s for s in to_b._streams.values() if s.protocol == STOP_PROTOCOL)
                arrived = to_a._quic._streams[hop.stream_id].receiver.highest_offset
                return arrived - (to_b._quic.sent_offset(stop.stream_id) or 0)

            async def bulk() -> None:
                stream = await a.open_stream(b.peer_id, "/sink/1.0.0")
                for _ in range(each // 65536):
                    await stream.write(bytes(65536))
                await stream.close()

            sending = asyncio.gather(*(bulk() for _ in range(streams)))
            queued: list[int] = []
            rtts: list[float] = []
            while not sending.done():
                await asyncio.sleep(0.02)
                queued.append(relay_queue())
                rtts.append(await echo_rtt())
            await sending
            window = RelayConfig().circuit_window
            assert max(queued) <= 2 * window, (max(queued), window)
            # The anchor: the time the slow leg needs for the bulk streams' end-to-end
            # windows (yamux's 256 KiB each), all that the bulk may have outstanding.
            drain = streams * INITIAL_WINDOW / slow
            median = sorted(rtts)[len(rtts) // 2]
            assert idle < median <= 0.6 * drain, (median, drain, rtts)

    run_simulation(main, seed=7, config=QUIET)
