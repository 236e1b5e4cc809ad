"""QUIC transport (``/ip4|ip6/…/udp/N/quic-v1``) on aioquic with the libp2p TLS handshake.

* :mod:`switchy.transports.quic.tls` — libp2p certificates (make, verify → peer id), with
  :mod:`switchy.transports.quic.der`, the bounded ASN.1 DER pieces they need;
* :mod:`switchy.transports.quic.core` — the sans-IO core (aioquic's QuicConnection, extended);
* :mod:`switchy.transports.quic.connection` — the asyncio adapter: connection, streams, datagrams;
* :mod:`switchy.transports.quic.endpoint` — one socket, many connections;
* :mod:`switchy.transports.quic.transport` — :class:`QuicTransport`;
* :mod:`switchy.transports.quic.io` / :mod:`switchy.transports.quic.sim` — real UDP or
  the simulator.
"""

from switchy.transports.quic.connection import QuicConnection, QuicStream
from switchy.transports.quic.transport import QuicListener, QuicTransport

__all__ = ["QuicConnection", "QuicListener", "QuicStream", "QuicTransport"]
