"""QUIC transport (``/ip4|ip6/…/udp/N/quic-v1``) on aioquic with the libp2p TLS handshake.

* :mod:`transports.quic.tls` — libp2p certificates (make, verify → peer id);
* :mod:`transports.quic.core` — the sans-IO core (aioquic's QuicConnection, extended);
* :mod:`transports.quic.connection` — the asyncio adapter: connection, streams, datagrams;
* :mod:`transports.quic.endpoint` — one socket, many connections;
* :mod:`transports.quic.transport` — :class:`QuicTransport`;
* :mod:`transports.quic.io` / :mod:`transports.quic.sim` — real UDP or the simulator.
"""

from transports.quic.connection import QuicConnection, QuicStream
from transports.quic.transport import QuicListener, QuicTransport

__all__ = ["QuicConnection", "QuicListener", "QuicStream", "QuicTransport"]
