"""Node over real loopback TCP + Noise + yamux: connections, streams, handlers, failures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
from multiaddr import Multiaddr

from switchy.presets import default_node
from switchy.protocols.echo import echo
from switchy.protocols.identify import IDENTIFY_PROTOCOL, IdentifyService, identify
from switchy.protocols.perf import perf
from switchy.protocols.ping import PING_PROTOCOL, ping
from switchy.stack.addresses import with_peer
from switchy.stack.config import NetworkConfig
from switchy.stack.errors import (
    AuthenticationFailed,
    ConnectionClosed,
    MessageTooLarge,
    NegotiationFailed,
    P2PError,
    PeerNotFound,
    SerializationError,
    StreamReset,
    UnsupportedAddress,
)
from switchy.stack.identity import KeyPair
from switchy.stack.node import ConnectionEvent, Node
from switchy.stack.stream import Connection, MuxedStream
from switchy.transports.tcp import TcpTransport

LOOPBACK = "/ip4/127.0.0.1/tcp/0"


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro_fn(), 60)

    asyncio.run(bounded())


@asynccontextmanager
async def nodes(n: int = 2, **kwargs: Any) -> AsyncIterator[list[Node]]:
    made = [default_node(listen=[LOOPBACK], **kwargs) for _ in range(n)]
    try:
        for node in made:
            await node.start()
        yield made
    finally:
        for node in made:
            await node.close()


def _identify_service(node: Node) -> IdentifyService:
    return next(s for s in node.services if isinstance(s, IdentifyService))


def test_ping_identify_echo_perf() -> None:
    async def main() -> None:
        async with nodes() as (a, b):
            rtts = await ping(a, b.full_addrs[0], count=3)
            assert len(rtts) == 3 and all(r > 0 for r in rtts)
            info = await identify(a, b.peer_id)
            assert info.public_key == b.key.public_key
            assert set(info.protocols) >= {PING_PROTOCOL, IDENTIFY_PROTOCOL}
            assert info.listen_addrs == b.listen_addrs
            assert info.observed_addr == a.connections(b.peer_id)[0].local_addr
            assert await echo(a, b.peer_id, b"hello" * 1000) == b"hello" * 1000
            assert await echo(a, b.peer_id, b"") == b""
            r = await perf(a, b.peer_id, upload=3_000_000, download=2_000_000)
            assert r.upload_bytes == 3_000_000 and r.download_bytes == 2_000_000
            # identify ran automatically on connect, both ways
            await _identify_service(b).wait_identified(a.peer_id, timeout=5)
            await _identify_service(a).wait_identified(b.peer_id, timeout=5)
            assert b.peerstore.get(a.peer_id).public_key == a.key.public_key
            assert PING_PROTOCOL in a.peerstore.protocols(b.peer_id)
            assert a.peerstore.observed_addrs  # b told a how it sees a

    run(main)


def test_connection_reuse_and_shared_dial() -> None:
    class CountingTcp(TcpTransport):
        dials = 0

        async def dial(self, addr: Multiaddr, **kw: Any) -> Any:
            CountingTcp.dials += 1
            return await super().dial(addr, **kw)

    async def main() -> None:
        async with nodes(1) as (b,):
            a = default_node(transports=[CountingTcp()])
            async with a:
                conns = await asyncio.gather(*(a.connect(b.full_addrs[0]) for _ in range(10)))
                assert all(c is conns[0] for c in conns)
                assert CountingTcp.dials == 1
                assert await a.connect(b.peer_id) is conns[0]
                assert len(a.connections(b.peer_id)) == 1

    run(main)


def test_wrong_peer_id_is_refused() -> None:
    async def main() -> None:
        async with nodes() as (a, b):
            impostor = KeyPair.generate().peer_id
            with pytest.raises(AuthenticationFailed, match=str(impostor)):
                await a.connect(with_peer(b.listen_addrs[0], impostor))
            assert a.connections() == []

    run(main)


def test_address_errors() -> None:
    async def main() -> None:
        async with nodes(1) as (a,):
            with pytest.raises(UnsupportedAddress, match="no configured transport"):
                await a.connect("/ip4/127.0.0.1/udp/1/quic")  # QUIC draft-29
            with pytest.raises(PeerNotFound):
                await a.connect(KeyPair.generate().peer_id)
            with pytest.raises(UnsupportedAddress):
                await a.listen("/ip4/127.0.0.1/udp/0/webrtc-direct")

    run(main)


def test_unknown_protocol_fails_negotiation_and_node_keeps_serving() -> None:
    async def main() -> None:
        async with nodes() as (a, b):
            with pytest.raises(NegotiationFailed):
                s = await a.open_stream(b.full_addrs[0], "/nope/1.0.0")
                await s.read()  # lazy negotiation reports on first read
            assert len(await ping(a, b.peer_id)) == 1

    run(main)


def test_open_stream_confirm_reports_an_unknown_protocol_at_once() -> None:
    async def main() -> None:
        async with nodes() as (a, b):
            # Optimistic (the default): opening and writing succeed, the first read fails.
            s = await a.open_stream(b.full_addrs[0], "/unknown/1.0.0")
            await s.write(b"hello")
            with pytest.raises(NegotiationFailed, match="refused the optimistically proposed"):
                await s.read()
            await s.reset()
            # confirm=True: open_stream itself fails, naming the protocol.
            with pytest.raises(NegotiationFailed, match=r"'/unknown/1\.0\.0'"):
                await a.open_stream(b.peer_id, "/unknown/1.0.0", confirm=True)
            ok = await a.open_stream(b.peer_id, PING_PROTOCOL, confirm=True)
            assert ok.protocol == PING_PROTOCOL
            await ok.write(bytes(32))
            assert await ok.read_exactly(32) == bytes(32)
            await ok.close()
            assert len(await ping(a, b.peer_id)) == 1

    run(main)


def test_failing_and_hanging_handlers_do_not_take_the_node_down() -> None:
    async def main() -> None:
        async with nodes(config=NetworkConfig(close_timeout=0.5)) as (a, b):
            hanging = asyncio.Event()

            async def boom(stream: MuxedStream) -> None:
                raise RuntimeError("handler bug")

            async def hang(stream: MuxedStream) -> None:
                hanging.set()
                await asyncio.Event().wait()

            async def garbage(stream: MuxedStream) -> None:
                await stream.write(b"\xff" * 100)

            b.handle("/boom/1", boom)
            b.handle("/hang/1", hang)
            b.handle("/garbage/1", garbage)
            s = await a.open_stream(b.full_addrs[0], "/boom/1")
            with pytest.raises(StreamReset):
                await s.read()
            s2 = await a.open_stream(b.peer_id, "/hang/1")
            await s2.write(b"x")
            await hanging.wait()
            s3 = await a.open_stream(b.peer_id, "/garbage/1")
            with pytest.raises(SerializationError, match="varint"):
                await s3.recv_message(max_size=1000)
            assert len(await ping(a, b.peer_id)) == 1
        # leaving the block closed b with a hung handler: close_timeout bounded it

    run(main)


def test_message_size_limits() -> None:
    async def main() -> None:
        async with nodes() as (a, b):
            got: asyncio.Queue[bytes | Exception] = asyncio.Queue()

            async def recv(stream: MuxedStream) -> None:
                try:
                    await got.put(await stream.recv_message(max_size=1024))
                except P2PError as exc:
                    await got.put(exc)

            b.handle("/msg/1", recv)
            s = await a.open_stream(b.full_addrs[0], "/msg/1")
            with pytest.raises(MessageTooLarge):
                await s.send_message(b"x" * 2000, max_size=1024)
            await s.send_message(b"x" * 1024, max_size=1024)
            assert await got.get() == b"x" * 1024
            s = await a.open_stream(b.peer_id, "/msg/1")
            await s.send_message(b"x" * 4096, max_size=8192)
            assert isinstance(await got.get(), MessageTooLarge)

    run(main)


def test_connection_events_and_stats() -> None:
    async def main() -> None:
        async with nodes() as (a, b):
            events: list[ConnectionEvent] = []
            gone = asyncio.Event()

            def record(event: ConnectionEvent) -> None:
                events.append(event)
                if event.kind == "disconnected":
                    gone.set()

            b.on_connection_event(record)
            conn = await a.connect(b.full_addrs[0])
            await echo(a, b.peer_id, b"z" * 10_000)
            assert conn.stats.bytes_sent >= 10_000
            assert conn.stats.bytes_received >= 10_000
            assert conn.stats.messages_sent >= 1
            rtts = await ping(a, b.peer_id, count=2)
            assert conn.stats.average_latency == pytest.approx(sum(rtts) / 2)
            assert conn.stats.median_latency == pytest.approx(sum(rtts) / 2)
            assert conn.stats.p90_latency == max(rtts)
            await conn.close()
            await conn.wait_closed()
            await gone.wait()  # reaches b once its reader sees the close
            assert [e.kind for e in events] == ["connected", "disconnected"]
            assert events[0].peer == a.peer_id
            with pytest.raises(ConnectionClosed):
                await conn.open_stream()

    run(main)


def test_graceful_close_finishes_in_flight_work() -> None:
    async def main() -> None:
        a = default_node()
        b = default_node(listen=[LOOPBACK])
        release = asyncio.Event()
        started = asyncio.Event()

        async def slow(stream: MuxedStream) -> None:
            started.set()
            await release.wait()
            await stream.write(b"done")

        b.handle("/slow/1", slow)
        async with a, b:
            s = await a.open_stream(b.full_addrs[0], "/slow/1")
            await s.write(b"go")
            await started.wait()
            closing = asyncio.ensure_future(b.close())
            await asyncio.sleep(0)
            assert not closing.done()
            release.set()
            assert await s.read_all() == b"done"
            await closing

    run(main)


def test_hostile_raw_clients_do_not_disturb_others() -> None:
    async def main() -> None:
        # long enough for the real handshakes on a busy machine; the silent client waits it out
        cfg = NetworkConfig(handshake_timeout=1.0)
        async with nodes(config=cfg) as (a, b):
            t = TcpTransport()
            # garbage instead of multistream-select
            g = await t.dial(b.listen_addrs[0])
            assert isinstance(g, Connection)
            await g.write(b"\x13/multistream/1.0.0\n" + b"\xff" * 64)
            assert await _read_until_closed(g)
            # a client that connects and never speaks: cut after the handshake timeout
            silent = await t.dial(b.listen_addrs[0])
            assert isinstance(silent, Connection)
            assert await _read_until_closed(silent)
            # everyone else is still served
            assert len(await ping(a, b.full_addrs[0])) == 1

    run(main)


async def _read_until_closed(conn: Connection) -> bool:
    try:
        while await conn.read():
            pass
    except P2PError:
        pass
    return True


def test_node_config_is_immutable_value() -> None:
    cfg = NetworkConfig()
    assert attrs.evolve(cfg, dial_timeout=1.0).dial_timeout == 1.0


def test_identify_push_on_protocol_change() -> None:
    async def main() -> None:
        async with nodes() as (a, b):
            await a.connect(b.full_addrs[0])
            await _identify_service(a).wait_identified(b.peer_id, timeout=5)
            await _identify_service(b).wait_identified(a.peer_id, timeout=5)
            pushed = asyncio.Event()
            svc = _identify_service(a)
            original = svc._apply

            def apply(peer: Any, info: Any, *, push: bool = False, conn: Any = None) -> None:
                original(peer, info, push=push, conn=conn)
                if push:
                    pushed.set()

            svc._apply = apply  # type: ignore[method-assign]

            async def new_handler(stream: MuxedStream) -> None:
                await stream.close()

            b.handle("/brand-new/1.0.0", new_handler)
            await asyncio.wait_for(pushed.wait(), 5)
            assert "/brand-new/1.0.0" in a.peerstore.protocols(b.peer_id)

    run(main)


def test_no_tasks_or_connections_leak_after_hostile_and_closed_peers() -> None:
    async def main() -> None:
        cfg = NetworkConfig(handshake_timeout=2.0)  # the junk is refused at once; pings need time
        async with nodes(1, config=cfg) as (b,):
            baseline = set(b._tasks)
            all_gone = asyncio.Event()

            def on_event(event: ConnectionEvent) -> None:
                if event.kind == "disconnected" and not b.connections():
                    all_gone.set()

            b.on_connection_event(on_event)
            t = TcpTransport()
            for _ in range(5):
                g = await t.dial(b.listen_addrs[0])
                assert isinstance(g, Connection)
                await g.write(b"\x13/multistream/1.0.0\n\x07/noise\n" + b"\x00\x05junk!")
                assert await _read_until_closed(g)
            for _ in range(5):
                async with default_node() as a:
                    await ping(a, b.full_addrs[0])
            if b.connections():  # closes propagate through the peers' sockets
                await asyncio.wait_for(all_gone.wait(), 10)
            extra = [task for task in b._tasks if task not in baseline]
            if extra:  # accept loops and handlers of the closed connections are ending
                await asyncio.wait(extra, timeout=10)
            assert all(task.done() for task in extra), [task.get_name() for task in extra]
            assert b.connections() == []

    run(main)


def test_message_limit_comes_from_config() -> None:
    async def main() -> None:
        async with nodes(config=NetworkConfig(max_message_size=100)) as (a, b):
            s = await a.open_stream(b.full_addrs[0], PING_PROTOCOL)
            assert s.max_message_size == 100
            with pytest.raises(MessageTooLarge):
                await s.send_message(b"x" * 101)
            await s.reset()

    run(main)


def test_identify_carries_a_signed_peer_record() -> None:
    from switchy.protocols.identify import decode_identify, encode_identify
    from switchy.stack.envelope import open_peer_record

    async def main() -> None:
        async with (
            default_node(listen=["/ip4/127.0.0.1/tcp/0"]) as a,
            default_node(listen=["/ip4/127.0.0.1/tcp/0"]) as b,
        ):
            svc = next(s for s in b.services if isinstance(s, IdentifyService))
            await b.connect(a.full_addrs[0])
            await svc.wait_identified(a.peer_id, timeout=5)
            rec = b.peerstore.get(a.peer_id).peer_record
            assert rec is not None
            assert rec.peer_id == a.peer_id and list(rec.addrs) == a.listen_addrs
            # The answer carries the same record each time while the addresses stay.
            info = await identify(b, a.peer_id)
            assert info.signed_peer_record is not None
            assert open_peer_record(info.signed_peer_record) == rec
            # A record signed by another peer, or tampered with, is not kept.
            a_svc = next(s for s in a.services if isinstance(s, IdentifyService))
            forged = a_svc.signed_peer_record()  # a's record, presented as c's
            c = KeyPair.generate().peer_id
            svc._check_record(c, forged)
            assert b.peerstore.get(c).peer_record is None
            tampered = bytearray(forged)
            tampered[-3] ^= 1
            svc._check_record(a.peer_id, bytes(tampered))
            assert b.peerstore.get(a.peer_id).peer_record == rec
            round_trip = decode_identify(encode_identify(info))
            assert round_trip.signed_peer_record == info.signed_peer_record

    run(main)


def test_a_node_has_exactly_the_transports_it_is_given() -> None:
    from switchy.stack.errors import InvalidConfiguration
    from switchy.transports.relay import RelayTransport

    with pytest.raises(InvalidConfiguration, match=r"at least one transport.*default_node"):
        Node()
    relay = RelayTransport()
    assert Node(services=[relay]).transports == [relay]  # a service may join them
    tcp = TcpTransport()
    assert Node(transports=[tcp]).transports == [tcp]


def test_the_default_preset() -> None:
    from switchy.protocols.autonat import AutoNATService
    from switchy.protocols.dcutr import DCUtRService
    from switchy.protocols.echo import EchoService
    from switchy.protocols.perf import PerfService
    from switchy.protocols.ping import PingService
    from switchy.transports.quic import QuicTransport
    from switchy.transports.relay import AutoRelay, RelayService, RelayTransport

    node = default_node()
    # TCP first: it carries bulk data several times faster than QUIC here (python -m bench)
    assert [type(t) for t in node.transports] == [TcpTransport, QuicTransport, RelayTransport]
    kinds = [type(s) for s in node.services]
    assert kinds == [
        PingService,
        IdentifyService,
        EchoService,
        PerfService,
        AutoNATService,
        RelayTransport,
        AutoRelay,
        DCUtRService,
    ]
    # transports replace QUIC + TCP; services come after the default ones; one relay client
    relay = RelayTransport()
    tcp = TcpTransport()
    node = default_node(transports=[tcp], services=[relay, RelayService()])
    assert node.transports == [tcp, relay]
    assert node.services[-4] is relay and isinstance(node.services[-3], RelayService)
    assert isinstance(node.services[-2], AutoRelay)
    assert isinstance(node.services[-1], DCUtRService)
    assert sum(isinstance(s, RelayTransport) for s in node.services) == 1
    # a configured service replaces the default one of its class
    autonat = AutoNATService(server=False)
    node = default_node(services=[autonat])
    assert [s for s in node.services if isinstance(s, AutoNATService)] == [autonat]
    config = NetworkConfig(dial_timeout=3.0)
    node = default_node(config=config, listen=[LOOPBACK])
    assert node.config is config
    assert all(t.config is config for t in node.transports[:2])  # type: ignore[attr-defined]


def test_explain_failure_asks_ls_first_and_sends_no_probe_for_a_refused_stream() -> None:
    """Why an optimistic stream ended: a protocol ``ls`` lists is served (the end was
    something else: one probe, no proposal); one ``ls`` does not list is proposed again
    (a match function may serve it; else it is refused); a StreamRefused gets no probe."""
    from switchy.stack.errors import StreamRefused
    from switchy.stack.negotiation import explain_failure

    async def main() -> None:
        async with nodes() as (a, b):
            b.registry.register(
                "/app/1.0.0", lambda s: s.close(), match=lambda p: p.startswith("/app/1.")
            )
            conn = await a.connect(b.full_addrs[0])
            stream = await conn.open_stream()
            opened = 0
            real_open = conn.open_stream

            async def counting_open() -> MuxedStream:
                nonlocal opened
                opened += 1
                return await real_open()

            conn.open_stream = counting_open  # type: ignore[method-assign]
            reset = StreamReset("the stream was reset")
            assert await explain_failure(stream, PING_PROTOCOL, reset) is reset
            assert opened == 1  # ls listed it: no second proposal
            assert await explain_failure(stream, "/app/1.5.0", reset) is reset
            assert opened == 3  # not listed, then served through the match function
            refused = await explain_failure(stream, "/absent/1.0.0", reset)
            assert isinstance(refused, NegotiationFailed)
            assert "'/absent/1.0.0'" in str(refused)
            assert opened == 5
            no_room = StreamRefused("refused before it was acknowledged")
            assert await explain_failure(stream, PING_PROTOCOL, no_room) is no_room
            assert opened == 5  # no probe at all
            await stream.reset()

    run(main)
