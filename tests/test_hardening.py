"""Defects found by an outside attack on the default nodes (issue 17, section 0): each test
here failed before its fix."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from switchy.stack.config import NetworkConfig
from switchy.stack.errors import ConnectionClosed, ProtocolError
from switchy.stack.identity import KeyPair
from switchy.stack.mux.yamux import Yamux, YamuxConnection
from switchy.stack.mux.yamux_core import (
    FLAG_SYN,
    HEADER,
    MAX_QUEUED_ANSWERS,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
    YamuxSession,
)
from switchy.stack.node import Node
from switchy.stack.pipe import memory_pipe
from switchy.stack.ratelog import RateLimitedLog
from switchy.transports.tcp import TcpConnection, TcpTransport


def _frame(type_: int, flags: int, sid: int, length: int) -> bytes:
    return HEADER.pack(0, type_, flags, sid, length)


# --- yamux: answers the remote never reads ---------------------------------------------------


def test_yamux_ping_flood_without_reading_fails_the_session() -> None:
    session = YamuxSession(False)
    pings = b"".join(_frame(TYPE_PING, FLAG_SYN, 0, i) for i in range(MAX_QUEUED_ANSWERS))
    session.receive_data(pings)  # up to the bound: answered
    assert session.output_size == 12 * MAX_QUEUED_ANSWERS
    with pytest.raises(ProtocolError, match="without reading"):
        session.receive_data(_frame(TYPE_PING, FLAG_SYN, 0, 7))
    assert session.terminated


def test_yamux_answers_taken_by_the_writer_do_not_count() -> None:
    session = YamuxSession(False)
    for _ in range(5):
        session.receive_data(
            b"".join(_frame(TYPE_PING, FLAG_SYN, 0, i) for i in range(MAX_QUEUED_ANSWERS))
        )
        assert len(session.data_to_send()) == 12 * MAX_QUEUED_ANSWERS
    assert not session.terminated


def test_yamux_refused_syn_flood_without_reading_fails_the_session() -> None:
    session = YamuxSession(False, max_streams=1)
    syns = b"".join(
        _frame(TYPE_WINDOW_UPDATE, FLAG_SYN, 2 * i + 1, 0) for i in range(MAX_QUEUED_ANSWERS + 2)
    )
    with pytest.raises(ProtocolError, match="without reading"):
        session.receive_data(syns)


def test_yamux_connection_closes_a_peer_that_floods_pings_and_never_reads() -> None:
    async def main() -> None:
        from switchy.stack.security.noise import NoiseSecurity

        a, b = memory_pipe()
        ka, kb = KeyPair.generate(), KeyPair.generate()
        sec = NoiseSecurity()
        sa, sb = await asyncio.gather(sec.secure_outbound(a, ka, None), sec.secure_inbound(b, kb))
        server = Yamux().create(sb, is_initiator=False, config=NetworkConfig(keepalive_interval=0))
        assert isinstance(server, YamuxConnection)
        burst = b"".join(_frame(TYPE_PING, FLAG_SYN, 0, i) for i in range(512))
        try:
            async with asyncio.timeout(30):
                while not server.is_closed:  # the attacker writes and never reads
                    try:
                        await sa.write(burst)
                    except ConnectionClosed:
                        break
                await server.wait_closed()
            # what was queued for the attacker is bounded, not every ping it sent
            assert server._session.output_size < 64 * 1024
        finally:
            await server.abort()
            await sa.reset()

    asyncio.run(main())


# --- TCP: a connection refused before asyncio reported its socket ----------------------------


class _FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.aborted = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 1) if name in ("sockname", "peername") else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.aborted


@pytest.mark.parametrize("how", ["reset", "close"])
def test_tcp_connection_ended_before_connection_made_is_aborted(how: str) -> None:
    async def main() -> None:
        conn = TcpConnection()
        await (conn.reset() if how == "reset" else conn.close())
        transport = _FakeTransport()
        conn.connection_made(transport)
        assert transport.aborted

    asyncio.run(main())


def test_inbound_connections_past_max_connections_are_closed() -> None:
    """Past ``max_connections`` every refused socket is closed at once (each held an fd and
    1 MiB of buffers for good)."""

    async def main() -> None:
        cfg = NetworkConfig(max_connections=1, keepalive_interval=0)
        server = Node(transports=[TcpTransport()], config=cfg, listen=["/ip4/127.0.0.1/tcp/0"])
        client = Node(transports=[TcpTransport()], config=cfg)
        async with server, client:
            await client.connect(server.full_addrs[0])
            port = int(str(server.listen_addrs[0]).rsplit("/", 1)[1])
            socks = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
            for reader, writer in socks:
                async with asyncio.timeout(20):  # a bound, not a synchronisation
                    with contextlib.suppress(ConnectionResetError):
                        assert await reader.read(100) == b""
                writer.close()
            assert len(server.connections()) == 1

    asyncio.run(main())


# --- rate-limited warnings -------------------------------------------------------------------


def test_rate_limited_log_drops_repeats_and_counts_them(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    rl = RateLimitedLog(logging.getLogger("test.ratelog"), 10.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="test.ratelog"):
        assert rl.warning("k", "refused %s", "a")
        for _ in range(99):
            assert not rl.warning("k", "refused %s", "a")
        assert rl.warning("other", "other key")
        now[0] = 10.0
        assert rl.warning("k", "refused %s", "b")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["refused a", "other key", "refused b (99 similar messages suppressed)"]
    assert all(r.exc_info is None for r in caplog.records)


# --- identify ----------------------------------------------------------------------------------


def test_decode_identify_skips_addresses_the_multiaddr_package_parses_lazily() -> None:
    from switchy.protocols.identify import decode_identify
    from switchy.stack.codec import pb_bytes

    bad = bytes.fromhex("2a151515")  # str() works, len() raises BinaryParseError
    info = decode_identify(pb_bytes(2, bad) + pb_bytes(4, bad))
    assert info.listen_addrs == [] and info.observed_addr is None


def test_identify_of_a_peer_that_never_answers_is_no_error_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from switchy.protocols.identify import IDENTIFY_PROTOCOL, IdentifyService
    from switchy.stack.stream import MuxedStream
    from switchy.transports.sim import Simulation, run_simulation
    from tests.sim_nodes import sim_node

    async def silent(stream: MuxedStream) -> None:
        await stream.read_all(limit=10)  # never answers; the asker gives up first

    async def main(sim: Simulation) -> None:
        sim.network.add_hosts(["a", "b"])
        sim.network.add_link("a", "b", latency=0.01)
        asker = IdentifyService()
        async with sim_node(sim, "a", "tcp", asker) as a, sim_node(sim, "b", "tcp") as b:
            b.handle(IDENTIFY_PROTOCOL, silent)
            await a.connect(b.full_addrs[0])
            with pytest.raises(TimeoutError):
                await asker.wait_identified(b.peer_id, timeout=2 * a.config.request_timeout)

    with caplog.at_level(logging.DEBUG):
        run_simulation(main, seed=1)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert errors == [], [r.getMessage() for r in errors]
    assert any("identify of" in r.getMessage() for r in caplog.records)


# --- StaticFiles -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a" * 256, "b" * 4000, "\u00e9" * 200])
def test_static_files_answers_404_to_a_name_too_long_for_the_file_system(
    tmp_path: object, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    from pathlib import Path

    from switchy.protocols.router.messages import Request
    from switchy.protocols.router.router import Router
    from switchy.protocols.router.static import StaticFiles

    assert isinstance(tmp_path, Path)
    router = Router().with_service(StaticFiles(tmp_path))

    async def run() -> int:
        resp = await router.dispatch(Request("GET", "/files/" + name))
        await resp.read(limit=10**6)
        return resp.status

    with caplog.at_level(logging.DEBUG):
        assert asyncio.run(run()) == 404
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# --- libp2p TLS certificates -------------------------------------------------------------------


def test_verify_certificate_chain_refuses_an_invalid_x509_version() -> None:
    from switchy.stack.errors import AuthenticationFailed
    from switchy.transports.quic.tls import make_certificate, verify_certificate_chain

    der = make_certificate(KeyPair.generate()).der
    at = der.find(bytes.fromhex("a003020102"))  # [0] EXPLICIT INTEGER 2 (v3)
    assert at > 0
    bad = der[: at + 4] + b"\x05" + der[at + 5 :]
    with pytest.raises(AuthenticationFailed, match="not a valid X509 version"):
        verify_certificate_chain([bad])


# --- JSON nested deeper than the recursion limit (found by fuzz/fuzz_router.py's seeds) ------


def test_router_json_body_nested_too_deep_is_a_serialization_error() -> None:
    from switchy.protocols.router.messages import Request
    from switchy.stack.errors import SerializationError

    with pytest.raises(SerializationError, match="not JSON"):
        Request("POST", "/x", body=b"[" * 100_000).json()


def test_chat_line_nested_too_deep_is_ignored() -> None:
    from switchy.chat import MAX_CHAT_MESSAGE, decode_chat
    from switchy.protocols.pubsub.core import Received

    peer = KeyPair.generate().peer_id
    msg = Received("t", b"[" * MAX_CHAT_MESSAGE, b"id", peer, None, peer)
    assert decode_chat(msg) is None


# --- QUIC: spoofed and garbage Initials --------------------------------------------------------


def _client_initial(port: int, now: float) -> bytes:
    from switchy.transports.quic.core import Libp2pQuicConnection, make_configuration
    from switchy.transports.quic.tls import make_certificate

    quic = Libp2pQuicConnection(
        configuration=make_configuration(make_certificate(KeyPair.generate()), is_client=True),
        max_inbound_streams=4,
    )
    quic.connect(("127.0.0.1", port), now)
    return quic.datagrams_to_send(now)[0][0]


def test_quic_initials_that_do_not_decrypt_take_no_handshake_slot() -> None:
    """An Initial with a valid header and a payload that does not decrypt (what a spoofer
    sends for free) held a handshake slot for handshake_timeout (10 s); 256 of them locked
    every new connection out.  Some even raised IndexError out of the endpoint."""
    import socket

    from multiaddr import Multiaddr

    from switchy.transports.quic import QuicConnection, QuicTransport

    async def main() -> None:
        server_t, client_t = (
            QuicTransport(key=KeyPair.generate()),
            QuicTransport(key=KeyPair.generate()),
        )
        accepted: asyncio.Queue[object] = asyncio.Queue()

        async def handler(conn: object) -> None:
            await accepted.put(conn)

        listener = await server_t.listen(Multiaddr("/ip4/127.0.0.1/udp/0/quic-v1"), handler)
        addr = listener.addrs[0]
        port = int(addr.value_for_protocol("udp"))
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        try:
            for _ in range(300):
                good = _client_initial(port, loop.time())
                sock.sendto(good[:40] + bytes(len(good) - 40), ("127.0.0.1", port))
            conn = await client_t.dial(addr)  # served at once: no slot was taken
            assert isinstance(conn, QuicConnection)
            ep = server_t.endpoints[0]
            assert ep.counters.undecryptable_initials == 300
            assert len(ep._handshakes) == 0
            await conn.close()
        finally:
            sock.close()
            client_t.close()
            server_t.close()

    asyncio.run(main())


def test_quic_under_load_new_clients_prove_their_address_with_a_retry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from multiaddr import Multiaddr

    import switchy.transports.quic.endpoint as endpoint_module
    from switchy.transports.quic import QuicConnection, QuicTransport

    monkeypatch.setattr(endpoint_module, "RETRY_THRESHOLD", 0)  # always "under load"

    async def main() -> None:
        server_t, client_t = (
            QuicTransport(key=KeyPair.generate()),
            QuicTransport(key=KeyPair.generate()),
        )

        async def handler(conn: object) -> None:
            pass

        listener = await server_t.listen(Multiaddr("/ip4/127.0.0.1/udp/0/quic-v1"), handler)
        try:
            conn = await client_t.dial(listener.addrs[0])
            assert isinstance(conn, QuicConnection)
            await conn.ping()
            counters = server_t.endpoints[0].counters
            assert counters.retries == 1 and counters.invalid_tokens == 0
            await conn.close()
        finally:
            client_t.close()
            server_t.close()

    asyncio.run(main())


# --- router: slow bodies hold no slot ---------------------------------------------------------


def _trickle_test(min_rate: float | None) -> tuple[int | None, float, str]:
    """A client that sends a request head then one body byte every 5 s (virtual time):
    (status answered, seconds it took, message)."""
    from switchy.protocols.router import ROUTER_PROTOCOL, Router
    from switchy.protocols.router.core import MessageReader, ResponseHead, encode_request_head
    from switchy.stack.codec import encode_uvarint
    from switchy.transports.sim import SimConfig, SimTransport, Simulation, run_simulation

    router = Router(min_request_rate=min_rate)

    @router.post("/upload")
    def upload(req: object) -> str:
        return "ok"

    result: list[tuple[int | None, float, str]] = []

    async def main(sim: Simulation) -> None:
        sim.network.add_hosts(["c", "s"])
        sim.network.add_link("c", "s", latency=0.005)

        def make(host: str, svcs: list[object]) -> Node:
            return Node(
                transports=[SimTransport(sim.network, host)],
                services=svcs,  # type: ignore[arg-type]
                entropy=sim.entropy_source(host),
                listen=["/memory/4001"],
            )

        async with make("s", [router]) as server, make("c", []) as client:
            stream = await client.open_stream(server.full_addrs[0], ROUTER_PROTOCOL)
            await stream.write(encode_request_head("POST", "/upload", length=1000))
            await stream.write(encode_uvarint(1000))  # one data frame of 1000 bytes
            start = sim.now
            reader = MessageReader("response")

            async def trickle() -> None:
                for _ in range(200):  # the attacker's pace, 1 byte / 5 s (not a sync)
                    await asyncio.sleep(5)
                    await stream.write(b"x")

            sender = asyncio.ensure_future(trickle())
            try:
                async with asyncio.timeout(600):
                    while True:
                        data = await stream.read(65536)
                        events = reader.receive_data(data) if data else []
                        heads = [e for e in events if isinstance(e, ResponseHead)]
                        if heads or not data:
                            status = heads[0].status if heads else None
                            result.append((status, sim.now - start, ""))
                            break
            except TimeoutError:
                result.append((None, sim.now - start, "no answer in 600 s"))
            finally:
                sender.cancel()
                await stream.reset()

    run_simulation(main, seed=3, config=SimConfig(default_packet_loss=0.0))
    return result[0]


def test_router_answers_408_to_a_body_trickled_below_the_minimum_rate() -> None:
    status, took, _ = _trickle_test(1024.0)
    assert status == 408
    assert took < 30  # the 10 s grace, then the next check


def test_router_without_a_minimum_rate_lets_a_trickle_hold_its_slot() -> None:
    """The behaviour before the fix (the read timeout restarts with every byte)."""
    status, took, why = _trickle_test(None)
    assert status is None and took >= 600, why


# --- closed connections are freed without the cyclic GC ---------------------------------------


def test_closed_connections_are_freed_by_reference_counting_alone() -> None:
    """Stored errors (a connection's close reason, a failed negotiation) raised again and
    again kept their tracebacks, whose frames referenced the connection: every closed
    connection waited for the cyclic GC (hundreds of MiB after a flood)."""
    import gc
    import weakref

    async def main() -> None:
        cfg = NetworkConfig(keepalive_interval=0)
        server = Node(transports=[TcpTransport()], config=cfg, listen=["/ip4/127.0.0.1/tcp/0"])
        client = Node(transports=[TcpTransport()], config=cfg)
        async with server, client:
            gc.collect()
            gc.disable()
            try:
                conn = await client.connect(server.full_addrs[0])
                stream = await conn.open_stream()
                await stream.write(b"not multistream")  # the server's negotiation fails
                await stream.close()
                refs = [weakref.ref(conn), *(weakref.ref(c) for c in server.connections())]
                assert len(refs) == 2
                del stream
                await conn.close()
                del conn
                for _ in range(10_000):  # until both sides let go (bounded, no timing)
                    if all(r() is None for r in refs):
                        break
                    await asyncio.sleep(0)
                assert [r() is None for r in refs] == [True, True]
            finally:
                gc.enable()

    asyncio.run(main())


# --- file descriptors: idle sockets that never handshake ---------------------------------------


def test_fd_budget_follows_rlimit_nofile(monkeypatch: pytest.MonkeyPatch) -> None:
    import resource

    from switchy.stack.node import FD_RESERVE, fd_budget

    monkeypatch.setattr(resource, "getrlimit", lambda _which: (1024, 4096))
    assert fd_budget() == 1024 - FD_RESERVE
    monkeypatch.setattr(resource, "getrlimit", lambda _which: (resource.RLIM_INFINITY, 0))
    assert fd_budget() > 10**6


def test_idle_sockets_past_the_handshake_budget_are_closed_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With RLIMIT_NOFILE at 1,024, 1,100 idle sockets ran the process out of descriptors
    (asyncio's accept loop logged EMFILE 23,392 times); handshakes in progress are now held
    to a quarter of the descriptor budget, and established connections keep working."""
    import switchy.stack.node as node_module
    from switchy.protocols.ping import PingService, ping

    monkeypatch.setattr(node_module, "fd_budget", lambda: 32)  # 8 pending handshakes at most

    async def main() -> None:
        cfg = NetworkConfig(keepalive_interval=0, handshake_timeout=60)
        server = Node(
            transports=[TcpTransport()],
            config=cfg,
            services=[PingService()],
            listen=["/ip4/127.0.0.1/tcp/0"],
        )
        client = Node(transports=[TcpTransport()], config=cfg, services=[PingService()])
        async with server, client:
            await client.connect(server.full_addrs[0])
            port = int(str(server.listen_addrs[0]).rsplit("/", 1)[1])
            socks = [await asyncio.open_connection("127.0.0.1", port) for _ in range(30)]
            closed = 0
            for reader, _ in socks[8:]:  # beyond the 8 in handshake: refused, closed
                async with asyncio.timeout(20):  # a bound, not a synchronisation
                    try:
                        closed += await reader.read(100) == b""
                    except ConnectionResetError:
                        closed += 1
            assert closed == 22
            assert len(await ping(client, server.peer_id)) == 1  # served on
            assert len(server.connections()) == 1
            for _, writer in socks:
                writer.close()

    asyncio.run(main())


# --- relay: idle circuits and circuits per source IP -------------------------------------------


def test_relay_circuits_per_source_ip_are_limited() -> None:
    from switchy.transports.relay.config import RelayConfig
    from switchy.transports.relay.pb import Status
    from switchy.transports.relay.resources import RelayResources

    res = RelayResources(RelayConfig(max_circuits_per_ip=2))
    target = KeyPair.generate().peer_id
    assert res.reserve(target, "10.0.0.9", 0.0)[0] == Status.OK
    fresh = [KeyPair.generate().peer_id for _ in range(4)]  # fresh identities, one host
    got = [res.open_circuit(p, target, 1.0, "10.0.0.1") for p in fresh]
    assert got == [Status.OK, Status.OK] + [Status.RESOURCE_LIMIT_EXCEEDED] * 2
    assert res.open_circuit(fresh[2], target, 1.0, "10.0.0.2") == Status.OK  # another host
    res.close_circuit(fresh[0], target, "10.0.0.1")
    assert res.open_circuit(fresh[3], target, 1.0, "10.0.0.1") == Status.OK
    assert res.circuits == 3


def test_relay_reaps_a_circuit_that_carries_nothing() -> None:
    """16 idle circuits from fresh identities to one target blocked every other relayed
    connection to it for up to 120 s; a circuit idle for circuit_idle_timeout is closed."""
    from switchy.presets import default_node
    from switchy.transports.relay import RelayService, RelayTransport
    from switchy.transports.relay.config import RelayConfig

    async def main() -> None:
        quiet = NetworkConfig(keepalive_interval=0)
        svc = RelayService(RelayConfig(limit_data=0, limit_duration=0, circuit_idle_timeout=1.0))
        async with (
            default_node(services=[svc], listen=["/ip4/127.0.0.1/tcp/0"]) as r,
            default_node(services=[RelayTransport()], config=quiet) as b,
            default_node(services=[RelayTransport()], config=quiet) as a,
        ):
            await b.listen(f"{r.full_addrs[0]}/p2p-circuit")
            conn = await a.connect(b.full_addrs[0])
            assert conn.is_limited
            async with asyncio.timeout(30):  # a bound: the reaper acts after 1 s idle
                await conn.wait_closed()
            (circuit,) = svc.history
            assert "idle for 1.0s" in circuit.end_reason
            assert svc.resources.circuits == 0

    asyncio.run(main())


# --- discovery registry: Sybil fill ------------------------------------------------------------


def _register(registry: object, key: KeyPair, name: str, now: float, sources: object) -> object:
    from multiaddr import Multiaddr

    from switchy.protocols.discovery.claims import seal_name_claim
    from switchy.protocols.discovery.codec import Register
    from switchy.protocols.discovery.registry import NameRegistry

    assert isinstance(registry, NameRegistry)
    claim = seal_name_claim(key, name, (Multiaddr("/ip4/192.0.2.1/tcp/1"),), 1)
    return registry.handle(key.peer_id, Register(name, 3600, claim), now, sources)  # type: ignore[arg-type]


def test_registry_limits_names_per_ip_and_per_network() -> None:
    """1,251 fresh identities from one host filled all 10,000 names in 17 s."""
    from multiaddr import Multiaddr

    from switchy.protocols.discovery.codec import Status
    from switchy.protocols.discovery.registry import NameRegistry, RegistryLimits, source_keys

    registry = NameRegistry(RegistryLimits(max_names_per_ip=4, max_names_per_prefix=6))
    host = source_keys(Multiaddr("/ip4/198.51.100.7/tcp/4001"))
    assert host == ("ip4/198.51.100.7", "ip4/198.51.100.0/24")
    statuses = [
        _register(registry, KeyPair.generate(), f"sybil{i}", 0.0, host).status  # type: ignore[attr-defined]
        for i in range(6)
    ]
    assert statuses == [Status.OK] * 4 + [Status.LIMIT_EXCEEDED] * 2
    neighbour = source_keys(Multiaddr("/ip4/198.51.100.8/tcp/4001"))
    statuses = [
        _register(registry, KeyPair.generate(), f"n{i}", 0.0, neighbour).status  # type: ignore[attr-defined]
        for i in range(3)
    ]
    assert statuses == [Status.OK, Status.OK, Status.LIMIT_EXCEEDED]  # the /24 is full
    elsewhere = source_keys(Multiaddr("/ip4/203.0.113.9/tcp/4001"))
    ok = _register(registry, KeyPair.generate(), "honest", 0.0, elsewhere)
    assert ok.status == Status.OK  # type: ignore[attr-defined]
    assert len(registry) == 7


def test_registry_under_pressure_ages_out_names_of_disconnected_peers() -> None:
    from multiaddr import Multiaddr

    from switchy.protocols.discovery.codec import Lookup, Status
    from switchy.protocols.discovery.registry import (
        PRESSURE_GRACE,
        NameRegistry,
        RegistryLimits,
        source_keys,
    )

    registry = NameRegistry(RegistryLimits(max_registrations=4))
    keys = [KeyPair.generate() for _ in range(4)]
    for i, key in enumerate(keys[:2]):
        src = source_keys(Multiaddr(f"/ip4/10.0.{i}.1/tcp/1"))
        _register(registry, key, f"name{i}", 0.0, src)
    assert registry.peer_gone(keys[0].peer_id, 10.0) == 0  # half full: no pressure
    _register(registry, keys[2], "name2", 0.0, source_keys(Multiaddr("/ip4/10.0.2.1/tcp/1")))
    assert registry.under_pressure
    assert registry.peer_gone(keys[0].peer_id, 10.0) == 1
    asker = keys[3].peer_id
    assert registry.handle(asker, Lookup("name0"), 10.0 + PRESSURE_GRACE + 1).status == (
        Status.NOT_FOUND
    )
    assert registry.handle(asker, Lookup("name1"), 10.0 + PRESSURE_GRACE + 1).status == Status.OK
