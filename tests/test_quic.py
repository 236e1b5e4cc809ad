"""The QUIC transport over real loopback UDP: connections, streams, datagrams, hostile peers."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import pytest
from aioquic.asyncio.client import connect as aioquic_connect
from aioquic.quic.configuration import QuicConfiguration
from multiaddr import Multiaddr

from switchy.stack.config import NetworkConfig
from switchy.stack.errors import (
    AuthenticationFailed,
    ConnectionClosed,
    FeatureNotSupported,
    InvalidConfiguration,
    MessageTooLarge,
    P2PTimeout,
    ResourceLimitExceeded,
    StreamReset,
    UnsupportedAddress,
)
from switchy.stack.identity import KeyPair
from switchy.stack.limits import LimitConfig, ResourceManager
from switchy.transports.quic import QuicConnection, QuicStream, QuicTransport
from switchy.transports.quic.connection import WRITE_HIGH_WATER
from switchy.transports.quic.core import (
    DEFAULT_STREAM_WINDOW,
    Libp2pQuicConnection,
    make_configuration,
)
from switchy.transports.quic.io import LOOPBACK_DATAGRAM_SIZE
from switchy.transports.quic.tls import Libp2pCertificate, make_certificate

LOOPBACK = Multiaddr("/ip4/127.0.0.1/udp/0/quic-v1")


def run(fn: Callable[[], Awaitable[None]], timeout: float = 30) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(fn(), timeout)

    asyncio.run(bounded())


@attrs.define
class Setup:
    client_t: QuicTransport
    server_t: QuicTransport
    client: QuicConnection
    server: QuicConnection
    accepted: asyncio.Queue[QuicConnection]
    addr: Multiaddr
    server_key: KeyPair

    async def close(self) -> None:
        self.client_t.close()
        self.server_t.close()


async def setup(
    *, client_kw: dict[str, Any] | None = None, server_kw: dict[str, Any] | None = None
) -> Setup:
    ks = KeyPair.generate()
    client_t = QuicTransport(key=KeyPair.generate(), **(client_kw or {}))
    server_t = QuicTransport(key=ks, **(server_kw or {}))
    accepted: asyncio.Queue[QuicConnection] = asyncio.Queue()

    async def handler(conn: Any) -> None:
        await accepted.put(conn)

    listener = await server_t.listen(LOOPBACK, handler)
    addr = listener.addrs[0]
    client = await client_t.dial(addr, remote_peer=ks.peer_id)
    assert isinstance(client, QuicConnection)
    server = await accepted.get()
    return Setup(client_t, server_t, client, server, accepted, addr, ks)


async def stream_pair(s: Setup) -> tuple[QuicStream, QuicStream]:
    a = await s.client.open_stream()
    await a.write(b"!")  # a QUIC stream exists for the peer once it carries data
    b = await s.server.accept_stream()
    assert await b.read_exactly(1) == b"!"
    assert isinstance(a, QuicStream) and isinstance(b, QuicStream)
    return a, b


# --- connections ---------------------------------------------------------------------------------


def test_dial_authenticates_both_sides_and_reports_quic_addresses() -> None:
    async def main() -> None:
        s = await setup()
        assert s.client.remote_peer == s.server_key.peer_id
        assert s.server.remote_peer == s.client.local_peer
        assert str(s.client.remote_addr) == str(s.addr)
        assert str(s.server.remote_addr).startswith("/ip4/127.0.0.1/udp/")
        assert str(s.server.remote_addr).endswith("/quic-v1")
        assert s.client.is_initiator and not s.server.is_initiator
        assert s.client.security_protocol == "/tls/1.0.0"
        rtt = await s.client.ping()
        assert rtt > 0 and s.client.stats.latency_samples == 1
        await s.close()

    run(main)


def test_one_socket_listens_and_dials() -> None:
    async def main() -> None:
        s = await setup()
        # the client listens too: its next dial leaves from its listening socket
        listener = await s.client_t.listen(LOOPBACK, s.accepted.put)  # type: ignore[arg-type]
        port = int(listener.addrs[0].value_for_protocol("udp"))
        await s.client.close()
        conn = await s.client_t.dial(s.addr)
        assert isinstance(conn, QuicConnection)
        inbound = await s.accepted.get()
        assert int(inbound.remote_addr.value_for_protocol("udp")) == port
        assert len([e for e in s.client_t.endpoints if not e.is_closed]) == 1
        # and the other way round on the same socket, at the same time
        back = await s.server_t.dial(listener.addrs[0])
        assert isinstance(back, QuicConnection)
        got = await s.accepted.get()
        assert got.remote_peer == s.server_key.peer_id
        assert len(s.client_t.endpoints[0].connections) == 2
        await s.close()

    run(main)


def test_many_connections_on_one_socket() -> None:
    async def main() -> None:
        s = await setup()
        clients = [QuicTransport(key=KeyPair.generate()) for _ in range(8)]
        conns = await asyncio.gather(*(c.dial(s.addr) for c in clients))
        for conn in conns:
            assert isinstance(conn, QuicConnection)
            st = await conn.open_stream()
            await st.write(str(conn.local_peer).encode())
            await st.close_write()
        served = [await s.accepted.get() for _ in conns]
        for server_conn in served:
            st = await server_conn.accept_stream()
            assert (await st.read_all()).decode() == str(server_conn.remote_peer)
        assert len(s.server_t.endpoints[0].connections) == 9
        for c in clients:
            c.close()
        await s.close()

    run(main)


def test_wrong_expected_peer_fails_with_authentication_error() -> None:
    async def main() -> None:
        s = await setup()
        other = KeyPair.generate().peer_id
        with pytest.raises(AuthenticationFailed, match=f"expected {other}"):
            await s.client_t.dial(s.addr, remote_peer=other)
        # a /p2p/ suffix works the same way
        with pytest.raises(AuthenticationFailed):
            await s.client_t.dial(s.addr.encapsulate(Multiaddr(f"/p2p/{other}")))
        # the socket still serves others
        conn = await QuicTransport(key=KeyPair.generate()).dial(s.addr)
        assert isinstance(conn, QuicConnection)
        await s.close()

    run(main)


def test_addresses_the_transport_refuses() -> None:
    t = QuicTransport(key=KeyPair.generate())
    assert t.can_dial(Multiaddr("/ip6/::1/udp/1/quic-v1"))
    assert not t.can_dial(Multiaddr("/ip4/1.2.3.4/udp/1/quic"))  # draft-29
    assert not t.can_dial(Multiaddr("/ip4/1.2.3.4/tcp/1"))
    assert not t.can_listen(Multiaddr("/dns4/example.com/udp/1/quic-v1"))

    async def main() -> None:
        with pytest.raises(UnsupportedAddress):
            await t.dial(Multiaddr("/ip4/1.2.3.4/tcp/1"))

    run(main)


def test_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")

    async def main() -> None:
        t = QuicTransport(key=KeyPair.generate())
        got: asyncio.Queue[Any] = asyncio.Queue()
        try:
            listener = await t.listen(Multiaddr("/ip6/::1/udp/0/quic-v1"), got.put)
        except ConnectionClosed as exc:
            pytest.skip(f"IPv6 loopback unavailable: {exc}")
        except Exception as exc:
            pytest.skip(f"IPv6 loopback unavailable: {exc}")
        conn = await QuicTransport(key=KeyPair.generate()).dial(listener.addrs[0])
        assert isinstance(conn, QuicConnection)
        assert str(conn.remote_addr).startswith("/ip6/::1/udp/")
        st = await conn.open_stream()
        await st.write(b"six")
        await st.close_write()
        inbound = await (await got.get()).accept_stream()
        assert await inbound.read_all() == b"six"
        t.close()

    run(main)


# --- streams -------------------------------------------------------------------------------------


def test_half_close_loses_no_byte_and_both_directions_go_on() -> None:
    async def main() -> None:
        s = await setup()
        a, b = await stream_pair(s)
        payload = os.urandom(3 * 1024 * 1024 + 17)
        reader = asyncio.ensure_future(b.read_all(limit=1 << 30))
        await a.write(payload)
        await a.close_write()
        assert await reader == payload
        assert await b.read() == b""
        with pytest.raises(ConnectionClosed):
            await a.write(b"after FIN")
        await b.write(b"reply after the peer's half-close")
        await b.close_write()
        assert await a.read_all() == b"reply after the peer's half-close"
        await a.close()
        await b.close()
        await s.close()

    run(main)


def test_many_concurrent_streams_keep_their_bytes_apart() -> None:
    async def main() -> None:
        s = await setup()

        echoes: set[asyncio.Future[None]] = set()

        async def serve() -> None:
            while True:
                st = await s.server.accept_stream()
                echoes.add(asyncio.ensure_future(echo(st)))

        async def echo(st: Any) -> None:
            data = await st.read_all(limit=1 << 24)
            await st.write(data)
            await st.close()

        server = asyncio.ensure_future(serve())

        async def one(i: int) -> None:
            st = await s.client.open_stream()
            body = bytes([i]) * (1000 * i + 1)
            await st.write(body)
            await st.close_write()
            assert await st.read_all(limit=1 << 24) == body

        await asyncio.gather(*(one(i) for i in range(40)))
        server.cancel()
        await s.close()

    run(main)


def test_reset_reaches_the_peer_in_both_directions() -> None:
    async def main() -> None:
        s = await setup()
        a, b = await stream_pair(s)
        await a.reset()
        with pytest.raises(StreamReset, match="reset by the peer"):
            while await b.read():
                pass
        # the peer's STOP_SENDING makes b's writes fail too
        with pytest.raises(StreamReset):
            for _ in range(100):
                await b.write(b"x" * 1000)
                await s.server.ping()
        with pytest.raises(StreamReset, match="reset locally"):
            await a.read()
        with pytest.raises(ConnectionClosed):
            await a.write(b"x")
        await s.close()

    run(main)


def test_close_stops_the_peer_from_sending() -> None:
    async def main() -> None:
        s = await setup()
        a, b = await stream_pair(s)
        await b.close()  # b will read no more: STOP_SENDING, and its FIN
        assert await a.read() == b""
        with pytest.raises(StreamReset, match="stopped reading"):
            for _ in range(100):
                await a.write(b"y" * 1000)
                await s.client.ping()
        await s.close()

    run(main)


def test_backpressure_a_reader_that_stops_reading_stops_the_writer() -> None:
    async def main() -> None:
        s = await setup()
        a, b = await stream_pair(s)
        total = 16 * 1024 * 1024
        writer = asyncio.ensure_future(a.write(bytes(total)))
        for _ in range(30):  # many round trips: everything that can move has moved
            await s.client.ping()
        assert not writer.done()
        buffered = b._buf.size
        assert 0 < buffered <= DEFAULT_STREAM_WINDOW
        assert a._backlog() <= WRITE_HIGH_WATER + 256 * 1024
        got = 1  # the "!" read by stream_pair
        while got < total + 1:
            got += len(await b.read())
        await writer
        assert got == total + 1
        await s.close()

    run(main)


def test_stream_count_limit() -> None:
    async def main() -> None:
        cfg = NetworkConfig(max_streams_per_connection=3)
        s = await setup(client_kw={"config": cfg}, server_kw={"config": cfg})
        streams = [await s.client.open_stream() for _ in range(3)]
        with pytest.raises(ResourceLimitExceeded, match="max_streams_per_connection=3"):
            await s.client.open_stream()
        for st in streams:
            await st.reset()
        assert await s.client.open_stream()
        await s.close()

    run(main)


def test_a_peer_opening_too_many_streams_is_disconnected_and_others_are_served() -> None:
    async def main() -> None:
        cfg = NetworkConfig(max_streams_per_connection=4)
        s = await setup(server_kw={"config": cfg})
        s.client._quic._remote_max_streams_bidi = 1000  # ignore the server's limit
        for _ in range(8):
            st = await s.client.open_stream()
            await st.write(b"x")
        await s.client.wait_closed()
        await s.server.wait_closed()
        with pytest.raises(ConnectionClosed, match="Too many streams"):
            await s.client.open_stream()
        conn = await QuicTransport(key=KeyPair.generate()).dial(s.addr)
        assert isinstance(conn, QuicConnection) and not conn.is_closed
        await s.close()

    run(main)


def test_graceful_close_delivers_written_data_first() -> None:
    async def main() -> None:
        s = await setup()
        a, b = await stream_pair(s)
        payload = os.urandom(2 * 1024 * 1024)
        reader = asyncio.ensure_future(b.read_all(limit=1 << 30))
        await a.write(payload)
        await a.close_write()
        await s.client.close()
        assert await reader == payload
        await s.server.wait_closed()
        with pytest.raises(ConnectionClosed):
            await s.server.accept_stream()
        await s.close()

    run(main)


# --- datagrams ----------------------------------------------------------------------------------


def test_datagrams_send_receive_and_limits() -> None:
    async def main() -> None:
        s = await setup()
        assert s.client.datagrams_supported
        limit = s.client.max_datagram_size
        # loopback: packets grew to LOOPBACK_DATAGRAM_SIZE after the handshake
        assert LOOPBACK_DATAGRAM_SIZE - 100 < limit < LOOPBACK_DATAGRAM_SIZE
        for i in range(5):
            s.client.send_datagram(bytes([i]) * (limit if i == 4 else 10))
        got = [await s.server.receive_datagram() for _ in range(5)]
        assert sorted(len(g) for g in got) == [10, 10, 10, 10, limit]
        s.server.send_datagram(b"back")
        assert await s.client.receive_datagram() == b"back"
        with pytest.raises(MessageTooLarge, match=f"limit of {limit}"):
            s.client.send_datagram(bytes(limit + 1))
        await s.close()

    run(main)


def test_datagrams_unsupported_by_the_peer_is_a_clear_error() -> None:
    async def main() -> None:
        s = await setup(server_kw={"datagrams": False})
        assert not s.client.datagrams_supported
        with pytest.raises(FeatureNotSupported, match="peer does not support QUIC datagrams"):
            s.client.send_datagram(b"x")
        with pytest.raises(FeatureNotSupported, match="disabled"):
            await s.server.receive_datagram()
        await s.close()

    run(main)


# --- hostile input ------------------------------------------------------------------------------


def udp_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


def test_garbage_datagrams_are_dropped_and_the_socket_serves_on() -> None:
    async def main() -> None:
        s = await setup()
        port = int(s.addr.value_for_protocol("udp"))
        sock = udp_socket()
        junk = [b"", b"\x00", os.urandom(50), b"\xc0" + os.urandom(1300), os.urandom(1500)]
        junk.append(b"\xc0\x00\x00\x00\x01\x08" + os.urandom(1300))  # QUIC v1 Initial, garbage
        junk.append(b"\xc0\x0a\x0b\x0c\x0d\x08" + os.urandom(1300))  # unknown version
        # garbage addressed to the live connection's id: fails decryption, is dropped
        (cid,) = [c for c, conn in s.server_t.endpoints[0]._by_cid.items() if conn is s.server][:1]
        junk += [b"\x40" + cid + os.urandom(n) for n in (0, 1, 20, 1200)]
        for j in junk:
            sock.sendto(j, ("127.0.0.1", port))
        await s.client.ping()  # a round trip on the same socket: the junk was handled before
        ep = s.server_t.endpoints[0]
        c = ep.counters
        assert c.garbage + c.unknown_connection + c.version_negotiations >= 3
        # the connection and new dials are unaffected
        a, b = await stream_pair(s)
        await a.write(b"still fine")
        assert await b.read_exactly(10) == b"still fine"
        conn = await QuicTransport(key=KeyPair.generate()).dial(s.addr)
        assert isinstance(conn, QuicConnection)
        sock.close()
        await s.close()

    run(main)


def test_wrong_alpn_is_refused() -> None:
    async def main() -> None:
        s = await setup()
        port = int(s.addr.value_for_protocol("udp"))
        cfg = QuicConfiguration(is_client=True, alpn_protocols=["h3"], verify_mode=ssl.CERT_NONE)
        with pytest.raises(ConnectionError):
            async with aioquic_connect("127.0.0.1", port, configuration=cfg):
                pass
        conn = await QuicTransport(key=KeyPair.generate()).dial(s.addr)
        assert isinstance(conn, QuicConnection)
        await s.close()

    run(main)


class ForgedTransport(QuicTransport):
    """A transport presenting a certificate we make up."""

    forged: Libp2pCertificate

    @property
    def certificate(self) -> Libp2pCertificate:
        return self.forged


def plain_certificate(key: KeyPair) -> Libp2pCertificate:
    """A self-signed certificate without the libp2p extension."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    pk = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "plain")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(pk.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(pk, hashes.SHA256())
    )
    return Libp2pCertificate(cert, pk, key.peer_id)


def badly_signed_certificate(key: KeyPair) -> Libp2pCertificate:
    """Our certificate's extension glued onto another certificate key: the signature fails."""
    good = make_certificate(key)
    other = make_certificate(key)
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    from switchy.transports.quic.tls import LIBP2P_EXTENSION_OID

    ext = good.certificate.extensions.get_extension_for_oid(LIBP2P_EXTENSION_OID)
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(other.certificate.subject)
        .issuer_name(other.certificate.subject)
        .public_key(other.private_key.public_key())
        .serial_number(2)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(ext.value, critical=False)
        .sign(other.private_key, hashes.SHA256())
    )
    return Libp2pCertificate(cert, other.private_key, key.peer_id)


@pytest.mark.parametrize(
    ("forge", "reason"),
    [
        (plain_certificate, "lacks the libp2p public key extension"),
        (badly_signed_certificate, "signature does not verify"),
    ],
)
def test_server_with_a_bad_certificate_is_refused(
    forge: Callable[[KeyPair], Libp2pCertificate], reason: str
) -> None:
    async def main() -> None:
        key = KeyPair.generate()
        bad = ForgedTransport(key=key)
        bad.forged = forge(key)
        got: asyncio.Queue[Any] = asyncio.Queue()
        listener = await bad.listen(LOOPBACK, got.put)
        with pytest.raises(AuthenticationFailed, match=reason):
            await QuicTransport(key=KeyPair.generate()).dial(listener.addrs[0])
        assert got.empty()
        bad.close()

    run(main)


@pytest.mark.parametrize(
    ("forge", "reason"),
    [
        (plain_certificate, "lacks the libp2p public key extension"),
        (badly_signed_certificate, "signature does not verify"),
    ],
)
def test_client_with_a_bad_certificate_is_refused(
    forge: Callable[[KeyPair], Libp2pCertificate], reason: str
) -> None:
    async def main() -> None:
        s = await setup()
        key = KeyPair.generate()
        bad = ForgedTransport(key=key)
        bad.forged = forge(key)
        # The client finishes its side of the handshake before the server has checked its
        # certificate (libp2p TLS spec, "note for clients"); the server then closes.
        try:
            conn = await bad.dial(s.addr)
        except AuthenticationFailed as exc:
            assert reason in str(exc)
        else:
            assert isinstance(conn, QuicConnection)
            await conn.wait_closed()
            with pytest.raises(ConnectionClosed, match=reason):
                await conn.accept_stream()
        assert s.accepted.empty()
        # the server's socket still serves others
        ok = await QuicTransport(key=KeyPair.generate()).dial(s.addr)
        assert isinstance(ok, QuicConnection)
        bad.close()
        await s.close()

    run(main)


def test_a_stalled_handshake_times_out_on_both_sides() -> None:
    async def main() -> None:
        # the real client's handshake must fit in it on a busy machine too
        cfg = NetworkConfig(handshake_timeout=1.0, dial_timeout=1.0)
        s = await setup(server_kw={"config": cfg})
        port = int(s.addr.value_for_protocol("udp"))
        # A client that sends its first flight and then goes silent.
        quic = Libp2pQuicConnection(
            configuration=make_configuration(make_certificate(KeyPair.generate()), is_client=True),
            max_inbound_streams=4,
        )
        loop = asyncio.get_running_loop()
        quic.connect(("127.0.0.1", port), loop.time())
        sock = udp_socket()
        for data, _ in quic.datagrams_to_send(loop.time()):
            sock.sendto(data, ("127.0.0.1", port))
        await s.client.ping()
        ep = s.server_t.endpoints[0]
        (pending,) = ep._handshakes
        await pending.wait_closed()
        with pytest.raises(P2PTimeout, match=r"did not complete within 1\.0s"):
            await pending.established
        assert not ep._handshakes
        # A server that never answers: the dial times out with a clear error.
        silent = udp_socket()
        silent_addr = Multiaddr(f"/ip4/127.0.0.1/udp/{silent.getsockname()[1]}/quic-v1")
        with pytest.raises(P2PTimeout, match=r"QUIC handshake with .* did not complete within"):
            await QuicTransport(cfg, key=KeyPair.generate()).dial(silent_addr)
        # nothing else on the server's socket was disturbed
        a, b = await stream_pair(s)
        await a.write(b"ok")
        assert await b.read_exactly(2) == b"ok"
        sock.close()
        silent.close()
        await s.close()

    run(main)


def test_a_flood_of_new_handshakes_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    import switchy.transports.quic.endpoint as endpoint_module

    monkeypatch.setattr(endpoint_module, "MAX_PENDING_HANDSHAKES", 2)

    async def main() -> None:
        s = await setup()
        port = int(s.addr.value_for_protocol("udp"))
        loop = asyncio.get_running_loop()
        sock = udp_socket()
        for _ in range(5):  # five silent clients: each sends a first flight only
            quic = Libp2pQuicConnection(
                configuration=make_configuration(
                    make_certificate(KeyPair.generate()), is_client=True
                ),
                max_inbound_streams=4,
            )
            quic.connect(("127.0.0.1", port), loop.time())
            for data, _ in quic.datagrams_to_send(loop.time()):
                sock.sendto(data, ("127.0.0.1", port))
        await s.client.ping()  # the flood was handled before this round trip
        ep = s.server_t.endpoints[0]
        assert len(ep._handshakes) == 2
        assert ep.counters.refused_handshakes == 3
        # established connections are not disturbed
        a, b = await stream_pair(s)
        await a.write(b"fine")
        assert await b.read_exactly(4) == b"fine"
        sock.close()
        await s.close()

    run(main)


def test_larger_packets_where_the_path_allows() -> None:
    async def main() -> None:
        s = await setup(
            client_kw={"max_datagram_size": 8000}, server_kw={"max_datagram_size": 8000}
        )
        a, b = await stream_pair(s)
        payload = os.urandom(500_000)
        reader = asyncio.ensure_future(b.read_all(limit=1 << 24))
        await a.write(payload)
        await a.close_write()
        assert await reader == payload
        assert s.client.max_datagram_size > 7000  # datagrams grow with the packets
        await s.close()

    with pytest.raises(InvalidConfiguration, match="max_datagram_size must be within"):
        QuicTransport(max_datagram_size=100)

    run(main)


def test_udp_network_addresses() -> None:
    from switchy.transports.quic.io import UdpNetwork

    net = UdpNetwork()
    assert net.parse(Multiaddr("/ip4/10.1.2.3/udp/7/quic-v1")) == ("10.1.2.3", 7)
    assert net.parse(Multiaddr("/ip6/::1/udp/7/quic-v1")) == ("::1", 7)
    assert net.parse(Multiaddr("/ip4/10.1.2.3/udp/7")) is None
    assert net.parse(Multiaddr("/ip4/10.1.2.3/tcp/7/quic-v1")) is None
    assert str(net.to_multiaddr(("::1", 9))) == "/ip6/::1/udp/9/quic-v1"
    # dialing sockets: loopback peers from loopback, others from the wildcard address
    assert net.dial_address(("127.0.0.1", 1)) == ("127.0.0.1", 0)
    assert net.dial_address(("10.0.0.1", 1)) == ("0.0.0.0", 0)
    assert net.dial_address(("::1", 1)) == ("::1", 0)
    # which listening socket may carry a dial
    assert net.can_reach(("0.0.0.0", 5), ("10.0.0.1", 1))
    assert net.can_reach(("127.0.0.1", 5), ("127.0.0.1", 1))
    assert not net.can_reach(("127.0.0.1", 5), ("10.0.0.1", 1))
    assert not net.can_reach(("0.0.0.0", 5), ("::1", 1))
    assert net.normalize(("::1", 5, 0, 0)) == ("::1", 5)


def test_sim_network_addresses() -> None:
    from switchy.transports.quic.sim import SimDatagramNetwork
    from switchy.transports.sim import Simulation

    with Simulation(seed=1) as sim:
        sim.network.add_hosts(["a", "b"])
        net = SimDatagramNetwork(sim.network, "a")
        assert net.parse(Multiaddr("/memory/4001/quic-v1")) == ("a", 4001)
        assert net.parse(Multiaddr("/memory/204001/quic-v1")) == ("b", 4001)
        assert net.parse(Multiaddr("/memory/904001/quic-v1")) is None  # no host 9
        assert net.parse(Multiaddr("/memory/4001")) is None  # a sim stream address
        assert str(net.to_multiaddr(("b", 7))) == "/memory/200007/quic-v1"


def test_udp_socket_reads_bursts_and_reports_them() -> None:
    from switchy.transports.quic.io import MAX_RECV_BATCH, BatchProtocol, UdpNetwork

    class Recorder(BatchProtocol):
        def __init__(self) -> None:
            self.got: list[bytes] = []
            self.batches: list[int] = []
            self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
            self.burst: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def datagram_received(self, data: bytes, addr: Any) -> None:
            self.got.append(data)

        def batch_received(self) -> None:
            self.batches.append(len(self.got))
            if len(self.got) >= 3 * MAX_RECV_BATCH and not self.burst.done():
                self.burst.set_result(None)

        def connection_lost(self, exc: Exception | None) -> None:
            self.lost.set_result(exc)

    async def main() -> None:
        rec = Recorder()
        sock = await UdpNetwork().bind(rec, ("127.0.0.1", 0))
        addr = sock.get_extra_info("sockname")
        assert sock.get_extra_info("batches") is True
        for i in range(3 * MAX_RECV_BATCH):  # all queued before the loop reads any
            sock.sendto(i.to_bytes(2, "big"), addr)
        await rec.burst
        assert rec.got == [i.to_bytes(2, "big") for i in range(3 * MAX_RECV_BATCH)]
        assert rec.batches[:3] == [MAX_RECV_BATCH, 2 * MAX_RECV_BATCH, 3 * MAX_RECV_BATCH]
        sock.close()
        assert await rec.lost is None
        assert sock.is_closing()
        sock.sendto(b"after close", addr)  # ignored, no error

    run(main)


def test_streams_beyond_the_accept_backlog_are_refused() -> None:
    async def main() -> None:
        s = await setup(server_kw={"config": NetworkConfig(max_ack_backlog=4)})
        streams = []
        for i in range(10):  # the server's application accepts none of them (yet)
            st = await s.client.open_stream()
            await st.write(bytes([i]))
            streams.append(st)
        await s.client.ping()
        await s.client.ping()
        refused = 0
        for st in streams[4:]:
            with pytest.raises(StreamReset, match="reset by the peer"):
                await st.read()
            refused += 1
        assert refused == 6
        # the first four wait in the backlog, intact, and the connection is fine
        for i in range(4):
            inbound = await s.server.accept_stream()
            assert await inbound.read_exactly(1) == bytes([i])
        assert not s.client.is_closed
        await s.close()

    run(main)


def test_refused_streams_make_no_stream_object(monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer-initiated stream beyond the accept backlog is refused before any stream
    object exists: the server makes exactly as many objects as it accepted."""
    from switchy.transports.quic import connection as quic_connection

    made: list[tuple[QuicConnection, int]] = []
    init = quic_connection.QuicStream.__init__

    def counting_init(self: QuicStream, conn: QuicConnection, stream_id: int) -> None:
        made.append((conn, stream_id))
        init(self, conn, stream_id)

    monkeypatch.setattr(quic_connection.QuicStream, "__init__", counting_init)

    async def main() -> None:
        s = await setup(server_kw={"config": NetworkConfig(max_ack_backlog=2)})
        streams = []
        for i in range(6):
            st = await s.client.open_stream()
            assert isinstance(st, QuicStream)
            await st.write(bytes([i]))
            streams.append(st)
        for st in streams[2:]:
            with pytest.raises(StreamReset, match="reset by the peer"):
                await st.read()
        kept = [st.stream_id for st in streams[:2]]
        assert [sid for conn, sid in made if conn is s.server] == kept
        assert sorted(s.server._streams) == kept
        await s.close()

    run(main)


def test_streams_opened_before_the_scope_is_attached_are_charged_to_it() -> None:
    """Streams the peer opens between the handshake and the node's admission (before the
    connection has a resource scope) are charged when the scope is attached, their
    buffered data too; those over the limits are reset and never reach accept_stream."""
    limits = ResourceManager(LimitConfig.scaled().with_overrides(["connection.streams_inbound=2"]))

    async def main() -> None:
        s = await setup()
        streams = []
        for i in range(3):
            st = await s.client.open_stream()
            assert isinstance(st, QuicStream)
            await st.write(bytes([i]) * 100)
            streams.append(st)
        await s.client.ping()
        await s.client.ping()
        assert len(s.server._accept_queue) == 3  # no scope yet: nothing was charged
        scope = limits.open_connection("inbound")
        s.server.resource_scope = scope
        assert scope.scope.used("streams_inbound") == 2
        assert scope.scope.used("memory") == 200
        assert limits.blocked[("connection", "streams_inbound")] == 1
        with pytest.raises(StreamReset, match="reset by the peer"):
            await streams[2].read()
        for i in range(2):
            inbound = await s.server.accept_stream()
            assert inbound.resource_scope is not None
            assert await inbound.read_exactly(100) == bytes([i]) * 100
        assert not s.server._accept_queue
        assert sorted(s.server._streams) == [st.stream_id for st in streams[:2]]
        assert scope.scope.used("memory") == 0  # read: released
        await s.client.close()
        await s.server.wait_closed()
        assert limits.usage() == {"system": {}}
        await s.close()

    run(main)


def test_forged_expired_and_misaddressed_retry_tokens_are_refused() -> None:
    """An Initial carrying a token is admitted only if the token is one this endpoint
    issued, for this source address and connection id, less than its lifetime ago: a
    forged token, one sealed by another key, an expired one and one issued to another
    port are each counted as invalid, answered with nothing, and hold no handshake slot;
    a valid token (the control) is admitted."""
    from aioquic.quic.connection import QuicConnection as AioquicConnection
    from aioquic.quic.retry import TOKEN_LIFETIME, QuicRetryTokenHandler

    from switchy.transports.quic.tls import ALPN

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server_t = QuicTransport(key=KeyPair.generate())

        async def handler(conn: Any) -> None:
            pass

        listener = await server_t.listen(LOOPBACK, handler)
        endpoint = listener.endpoint  # type: ignore[attr-defined]
        server = ("127.0.0.1", int(listener.addrs[0].value_for_protocol("udp")))
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        source = sock.getsockname()
        keys = endpoint._retry = QuicRetryTokenHandler()

        def initial(make_token: Callable[[bytes], bytes]) -> bytes:
            """A client's first datagram carrying ``make_token(its destination cid)``."""
            client = AioquicConnection(
                configuration=QuicConfiguration(is_client=True, alpn_protocols=[ALPN])
            )
            client._peer_token = make_token(client._peer_cid.cid)
            client.connect(server, now=loop.time())
            (data, _), *_ = client.datagrams_to_send(now=loop.time())
            return data

        def token(
            handler: QuicRetryTokenHandler, cid: bytes, *, addr: Any = source, age: float = 0
        ) -> bytes:
            return handler.create_token(
                address=addr,
                original_destination_connection_id=os.urandom(8),
                retry_source_connection_id=cid,
                now=loop.time() - age,
            )

        bad = [
            initial(lambda cid: os.urandom(64)),  # forged
            initial(lambda cid: token(QuicRetryTokenHandler(), cid)),  # another key
            initial(lambda cid: token(keys, cid, age=TOKEN_LIFETIME + 5)),  # expired
            initial(lambda cid: token(keys, cid, addr=(source[0], source[1] ^ 1))),  # port
            initial(lambda cid: token(keys, os.urandom(8))),  # another connection id
        ]
        for data in bad:
            sock.sendto(data, server)
        sock.sendto(initial(lambda cid: token(keys, cid)), server)  # the control
        # The server answers the control's Initial; the datagrams before it were handled.
        await asyncio.wait_for(loop.sock_recv(sock, 65536), 20)
        assert endpoint.counters.invalid_tokens == len(bad)
        assert endpoint.counters.retries == 0
        assert len(endpoint._handshakes) == 1  # the control's only
        sock.close()
        server_t.close()

    run(main)
