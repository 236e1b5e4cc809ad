"""The sans-IO QUIC core without sockets: handshake, peer check, app-driven windows, limits."""

from __future__ import annotations

import pytest
from aioquic.quic import events
from aioquic.quic.packet import QuicErrorCode
from hypothesis import given, settings
from hypothesis import strategies as st

from switchy.stack.errors import AuthenticationFailed
from switchy.stack.identity import KeyPair
from switchy.transports.quic.core import (
    BAD_CERTIFICATE_ERROR,
    DEFAULT_MAX_UDP_PAYLOAD_SIZE,
    Libp2pQuicConnection,
    make_configuration,
)
from switchy.transports.quic.tls import ALPN, make_certificate

A, B = ("10.0.0.1", 1000), ("10.0.0.2", 2000)
KA, KB = KeyPair.from_seed(b"a" * 32), KeyPair.from_seed(b"b" * 32)
WINDOW = 64 * 1024


class Pair:
    """A client and a server core exchanging datagrams in memory, on a fake clock."""

    def __init__(self, *, client_key: KeyPair = KA, server_key: KeyPair = KB, streams: int = 16):
        self.now = 0.0
        self.client = Libp2pQuicConnection(
            configuration=make_configuration(
                make_certificate(client_key),
                is_client=True,
                stream_window=WINDOW,
                connection_window=4 * WINDOW,
            ),
            max_inbound_streams=streams,
        )
        self.client.connect(B, self.now)
        self.server: Libp2pQuicConnection | None = None
        self.server_key = server_key
        self.streams = streams
        self.events: dict[str, list[events.QuicEvent]] = {"client": [], "server": []}

    def _server_for(self, odcid: bytes) -> Libp2pQuicConnection:
        if self.server is None:
            self.server = Libp2pQuicConnection(
                configuration=make_configuration(
                    make_certificate(self.server_key),
                    is_client=False,
                    stream_window=WINDOW,
                    connection_window=4 * WINDOW,
                ),
                max_inbound_streams=self.streams,
                original_destination_connection_id=odcid,
            )
        return self.server

    def pump(self, rounds: int = 20) -> None:
        """Exchange datagrams until nothing moves (or ``rounds`` is exhausted)."""
        for _ in range(rounds):
            moved = False
            self.now += 0.001
            for data, _addr in self.client.datagrams_to_send(self.now):
                moved = True
                server = self._server_for(self.client._peer_cid.cid)
                server.receive_datagram(data, A, self.now)
            if self.server is not None:
                for data, _addr in self.server.datagrams_to_send(self.now):
                    moved = True
                    self.client.receive_datagram(data, B, self.now)
            self._drain()
            if not moved:
                return

    def _drain(self) -> None:
        for name, conn in (("client", self.client), ("server", self.server)):
            while conn is not None and (ev := conn.next_event()) is not None:
                self.events[name].append(ev)

    def received(self, side: str, stream_id: int) -> bytes:
        return b"".join(
            ev.data
            for ev in self.events[side]
            if isinstance(ev, events.StreamDataReceived) and ev.stream_id == stream_id
        )

    def handshaken(self) -> None:
        self.pump()
        for side in ("client", "server"):
            assert any(isinstance(e, events.HandshakeCompleted) for e in self.events[side])


def test_handshake_authenticates_both_sides() -> None:
    p = Pair()
    p.handshaken()
    assert p.server is not None
    assert p.client.verify_peer(KB.peer_id) == KB.peer_id
    assert p.server.verify_peer() == KA.peer_id
    assert p.client.tls.alpn_negotiated == ALPN
    # the server asked for the client's certificate (libp2p requires mutual authentication)
    assert p.server.tls._peer_certificate is not None


def test_expected_peer_mismatch_closes_with_bad_certificate() -> None:
    p = Pair()
    p.handshaken()
    other = KeyPair.from_seed(b"c" * 32).peer_id
    with pytest.raises(AuthenticationFailed, match=f"expected {other}"):
        p.client.verify_peer(other)
    p.pump()
    assert p.server is not None and p.server.closing_event() is not None
    assert p.server.closing_event().error_code == BAD_CERTIFICATE_ERROR  # type: ignore[union-attr]
    assert "libp2p TLS" in p.server.closing_event().reason_phrase  # type: ignore[union-attr]


def test_receive_window_moves_only_when_the_application_consumes() -> None:
    p = Pair()
    p.handshaken()
    sid = p.client.get_next_available_stream_id()
    data = bytes(range(256)) * 2048  # 512 KiB, 8 windows
    p.client.send_stream_data(sid, data, end_stream=True)
    p.pump(200)
    got = p.received("server", sid)
    assert len(got) == WINDOW  # aioquic alone would have doubled the window as data arrived
    assert p.server is not None
    while len(got) < len(data):
        p.server.consume(sid, len(got) - sum(p.server._consumed.values()))
        p.pump(200)
        got = p.received("server", sid)
    assert got == data
    assert any(
        isinstance(e, events.StreamDataReceived) and e.end_stream for e in p.events["server"]
    )


@settings(max_examples=25)
@given(
    sizes=st.lists(st.integers(1, 40_000), min_size=1, max_size=12),
    reads=st.lists(st.integers(256, 50_000), min_size=1, max_size=30),
)
def test_any_write_and_read_pattern_delivers_every_byte_in_order(
    sizes: list[int], reads: list[int]
) -> None:
    p = Pair()
    p.handshaken()
    assert p.server is not None
    sid = p.client.get_next_available_stream_id()
    payload = b"".join(bytes([i % 251]) * n for i, n in enumerate(sizes))
    pos = 0
    for n in sizes:
        p.client.send_stream_data(sid, payload[pos : pos + n])
        pos += n
    p.client.send_stream_data(sid, b"", end_stream=True)
    got = bytearray()
    seen = 0
    consumed = 0
    for i in range(20_000):
        p.pump(50)
        events_ = p.events["server"]
        for ev in events_[seen:]:
            if isinstance(ev, events.StreamDataReceived) and ev.stream_id == sid:
                got += ev.data
        seen = len(events_)
        assert len(got) - consumed <= WINDOW  # never more unread than the window
        if consumed == len(got) == len(payload):
            break
        step = min(reads[i % len(reads)], len(got) - consumed)
        if step > 0:
            p.server.consume(sid, step)
            consumed += step
    assert bytes(got) == payload


def test_a_peer_opening_too_many_streams_is_closed() -> None:
    p = Pair(streams=4)
    p.handshaken()
    # A hostile client ignoring the server's MAX_STREAMS limit of 4.
    p.client._remote_max_streams_bidi = 100
    for i in range(6):
        p.client.send_stream_data(i * 4, b"x")
    p.pump()
    assert p.server is not None
    ev = p.server.closing_event()
    assert ev is not None and ev.error_code == QuicErrorCode.STREAM_LIMIT_ERROR
    assert "Too many streams" in ev.reason_phrase


def test_a_well_behaved_client_waits_for_stream_credit() -> None:
    p = Pair(streams=2)
    p.handshaken()
    for i in range(4):
        p.client.send_stream_data(i * 4, b"x", end_stream=True)
    p.pump()
    assert p.server is not None and p.server.closing_event() is None
    opened = {e.stream_id for e in p.events["server"] if isinstance(e, events.StreamDataReceived)}
    assert opened == {0, 4}  # the rest wait for MAX_STREAMS
    for sid in (0, 4):
        p.server.send_stream_data(sid, b"", end_stream=True)
    p.pump(50)
    opened = {e.stream_id for e in p.events["server"] if isinstance(e, events.StreamDataReceived)}
    assert opened == {0, 4, 8, 12}


def test_unidirectional_streams_are_refused() -> None:
    p = Pair()
    p.handshaken()
    p.client._remote_max_streams_uni = 10  # pretend the server allowed them
    p.client.send_stream_data(2, b"uni")
    p.pump()
    assert p.server is not None
    ev = p.server.closing_event()
    assert ev is not None and ev.error_code == QuicErrorCode.STREAM_LIMIT_ERROR


def test_datagram_support_is_announced() -> None:
    p = Pair()
    p.handshaken()
    assert p.client.remote_max_datagram_frame_size is not None
    p.client.send_datagram_frame(b"hello")
    p.pump()
    assert [e.data for e in p.events["server"] if isinstance(e, events.DatagramFrameReceived)] == [
        b"hello"
    ]


def test_resets_give_their_connection_credit_back() -> None:
    p = Pair()
    p.handshaken()
    assert p.server is not None
    # Far more streams than the connection window holds, each reset after a partial send.
    for _ in range(40):
        sid = p.client.get_next_available_stream_id()
        p.client.send_stream_data(sid, bytes(30_000))
        p.pump(20)
        p.client.reset_stream(sid, 0)
        p.pump(20)
        for ev in p.events["server"]:
            if isinstance(ev, events.StreamReset) and ev.stream_id == sid:
                p.server.settle(sid)
        p.pump(20)
        p.server.send_stream_data(sid, b"", end_stream=True)  # finish our side too
        p.pump(20)
    # 40 x 30 kB > 4 windows of 64 kB: without settling the connection would be stuck
    sid = p.client.get_next_available_stream_id()
    p.client.send_stream_data(sid, bytes(100_000), end_stream=True)
    for _ in range(20):
        p.pump(50)
        got = p.received("server", sid)
        p.server.consume(sid, len(got) - p.server._consumed.get(sid, 0))
    assert len(p.received("server", sid)) == 100_000


def test_raised_packet_size_carries_data_and_never_exceeds_the_peers_limit() -> None:
    p = Pair()
    p.handshaken()
    assert p.server is not None
    # aioquic announces no max_udp_payload_size: RFC 9000's default applies
    assert p.client._remote_max_udp_payload_size == DEFAULT_MAX_UDP_PAYLOAD_SIZE
    assert p.client.raise_datagram_size(16000) == 16000
    assert p.client.raise_datagram_size(4000) == 16000  # never shrinks
    assert p.client._loss._pacer._max_datagram_size == 16000
    sid = p.client.get_next_available_stream_id()
    data = bytes(range(256)) * 200
    p.client.send_stream_data(sid, data, end_stream=True)
    sent = p.client.datagrams_to_send(p.now)
    assert 1200 < max(len(d) for d, _ in sent) <= 16000
    for d, _ in sent:
        p.server.receive_datagram(d, A, p.now)
    p.pump(50)
    p._drain()
    assert p.received("server", sid) == data
    # a peer announcing a smaller limit caps the size
    q = Pair()
    q.handshaken()
    q.client._remote_max_udp_payload_size = 1400
    assert q.client.raise_datagram_size(16000) == 1400
