"""QUIC: a libp2p server connection fed arbitrary datagrams (alone, or after a real client
Initial), and whole in-memory handshakes whose client sends arbitrary transport parameters."""

from __future__ import annotations

from typing import Any

from _harness import expected, instrumented, main

with instrumented("aioquic"):
    from aioquic._buffer import Buffer
    from aioquic.quic.packet import QuicPacketType, pull_quic_header

    from switchy.stack.identity import KeyPair
    from switchy.transports.quic.core import (
        CONNECTION_ID_LENGTH,
        Libp2pQuicConnection,
        make_configuration,
    )
    from switchy.transports.quic.endpoint import MIN_INITIAL_SIZE
    from switchy.transports.quic.tls import make_certificate

_SERVER_CERT = make_certificate(KeyPair.from_seed(b"s" * 32))
_CLIENT_CERT = make_certificate(KeyPair.from_seed(b"c" * 32))
_ADDR = ("127.0.0.1", 4433)


def _server(odcid: bytes | None = None) -> Libp2pQuicConnection:
    return Libp2pQuicConnection(
        configuration=make_configuration(_SERVER_CERT, is_client=False),
        max_inbound_streams=8,
        original_destination_connection_id=odcid,
    )


def _client() -> Libp2pQuicConnection:
    return Libp2pQuicConnection(
        configuration=make_configuration(_CLIENT_CERT, is_client=True), max_inbound_streams=8
    )


def _exchange(a: Libp2pQuicConnection, b: Libp2pQuicConnection, now: float) -> None:
    for _ in range(8):
        moved = False
        for src, dst in ((a, b), (b, a)):
            for data, _addr in src.datagrams_to_send(now):
                dst.receive_datagram(data, _ADDR, now)
                moved = True
        if not moved:
            return


def _first_initial() -> bytes:
    client = _client()
    client.connect(_ADDR, 0.0)
    return client.datagrams_to_send(0.0)[0][0]


_INITIAL = _first_initial()


def _odcid(datagram: bytes) -> bytes:
    header = pull_quic_header(Buffer(data=datagram), host_cid_length=CONNECTION_ID_LENGTH)
    return header.destination_cid


def test_one_input(data: bytes) -> None:
    mode = data[0] % 3 if data else 0
    body = data[1:]
    with expected():
        if mode == 0:
            # what the endpoint lets through to a new connection: a long enough Initial
            try:
                header = pull_quic_header(Buffer(data=body), host_cid_length=CONNECTION_ID_LENGTH)
            except ValueError:  # aioquic's header parser: the endpoint drops such datagrams
                return
            if header.packet_type != QuicPacketType.INITIAL or len(body) < MIN_INITIAL_SIZE:
                return
            server = _server(header.destination_cid)
            server.receive_datagram(body, _ADDR, 0.0)
            if server.decrypted_any:  # else the endpoint drops the connection at once
                server.datagrams_to_send(0.0)
        elif mode == 1:
            server = _server(_odcid(_INITIAL))
            server.receive_datagram(_INITIAL, _ADDR, 0.0)
            server.datagrams_to_send(0.0)
            server.receive_datagram(body, _ADDR, 0.01)
            server.datagrams_to_send(0.01)
        else:  # the client's transport parameters are whatever the input says
            client = _client()
            patched: Any = client
            patched._serialize_transport_parameters = lambda: body
            client.connect(_ADDR, 0.0)
            first = client.datagrams_to_send(0.0)
            server = _server(_odcid(first[0][0]))
            for datagram, _addr in first:
                server.receive_datagram(datagram, _ADDR, 0.0)
            _exchange(client, server, 0.01)
            if server.peer_id is None and server._handshake_complete:
                server.verify_peer()


if __name__ == "__main__":
    main(test_one_input)
