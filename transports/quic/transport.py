"""The QUIC transport: ``/ip4|ip6/…/udp/N/quic-v1`` listen and dial, libp2p TLS, native streams.

QUIC brings its own security (TLS 1.3 with libp2p certificates) and
multiplexing, so :meth:`QuicTransport.dial` and the listener hand the node a
ready :class:`~switchy.stack.mux.MuxedConnection` and the upgrader is skipped.

One socket per listen address serves both directions: dials go out from a
listening socket that can reach the destination (same address family,
loopback to loopback), so peers see our listen port.  Without a suitable
listener a dial-only socket is opened and shared by later dials.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Final

from aioquic.quic.configuration import SMALLEST_MAX_DATAGRAM_SIZE, QuicConfiguration
from multiaddr import Multiaddr

from switchy.stack.addresses import split_peer
from switchy.stack.config import NetworkConfig
from switchy.stack.errors import InvalidConfiguration, UnsupportedAddress
from switchy.stack.transport import ConnectionHandler, Listener, Transport
from switchy.transports.quic.connection import QuicConnection
from switchy.transports.quic.core import (
    DEFAULT_CONNECTION_WINDOW,
    DEFAULT_STREAM_WINDOW,
    IDLE_TIMEOUT,
    make_configuration,
)
from switchy.transports.quic.endpoint import QuicEndpoint
from switchy.transports.quic.io import DatagramNetwork, SockAddr, UdpNetwork
from switchy.transports.quic.tls import CertificateKeyType, Libp2pCertificate, make_certificate

if TYPE_CHECKING:
    from switchy.stack.identity import KeyPair, PeerId
    from switchy.stack.mux import MuxedConnection
    from switchy.stack.stream import Connection

__all__ = [
    "CERTIFICATE_RENEWAL",
    "MAX_UDP_PAYLOAD",
    "QuicConnection",
    "QuicListener",
    "QuicTransport",
]

#: Largest UDP payload (IPv4: 65535 - 20 - 8).
MAX_UDP_PAYLOAD: Final = 65507
#: A certificate with less validity left than this is replaced by a new one.
CERTIFICATE_RENEWAL: Final = datetime.timedelta(days=1)


class QuicListener(Listener):
    """A listening QUIC socket (which also carries this node's dials)."""

    def __init__(self, endpoint: QuicEndpoint) -> None:
        self.endpoint = endpoint
        self._addrs = [endpoint.local_multiaddr]

    @property
    def addrs(self) -> list[Multiaddr]:
        return list(self._addrs)

    async def close(self) -> None:
        self.endpoint.stop_listening()


class QuicTransport(Transport):
    """QUIC v1 with libp2p TLS (see the module docstring).

    ``network`` chooses the datagram service (real UDP by default; see
    :mod:`switchy.transports.quic.sim`).  ``key`` is only needed outside a node (a
    node binds its own key).  ``datagrams=False`` stops announcing RFC 9221
    datagram support.  ``max_datagram_size`` (UDP payload, default 1200) may be raised
    where the path MTU allows: per-packet work bounds throughput.
    """

    name = "quic"

    def __init__(
        self,
        config: NetworkConfig | None = None,
        *,
        key: KeyPair | None = None,
        network: DatagramNetwork | None = None,
        cert_key_type: CertificateKeyType = "ecdsa-p256",
        datagrams: bool = True,
        stream_window: int = DEFAULT_STREAM_WINDOW,
        connection_window: int = DEFAULT_CONNECTION_WINDOW,
        idle_timeout: float = IDLE_TIMEOUT,
        max_datagram_size: int = SMALLEST_MAX_DATAGRAM_SIZE,
    ) -> None:
        self.config = config or NetworkConfig()
        self.network = network or UdpNetwork()
        self._key = key
        self._cert_key_type: CertificateKeyType = cert_key_type
        self._cert: Libp2pCertificate | None = None
        self._datagrams = datagrams
        self._stream_window = stream_window
        self._connection_window = connection_window
        self._idle_timeout = idle_timeout
        if not SMALLEST_MAX_DATAGRAM_SIZE <= max_datagram_size <= MAX_UDP_PAYLOAD:
            raise InvalidConfiguration(
                f"max_datagram_size must be within [{SMALLEST_MAX_DATAGRAM_SIZE}, "
                f"{MAX_UDP_PAYLOAD}], got {max_datagram_size}"
            )
        self._max_datagram_size = max_datagram_size
        self._endpoints: list[QuicEndpoint] = []
        self._listening: list[QuicEndpoint] = []

    def bind(self, key: KeyPair, config: NetworkConfig) -> None:
        self._key = key
        self.config = config
        # Made now, with the node, rather than in its first dial.
        self._cert = make_certificate(key, key_type=self._cert_key_type)

    @property
    def identity(self) -> KeyPair:
        """The key this transport authenticates with."""
        if self._key is None:
            raise InvalidConfiguration(
                "QuicTransport needs an identity: pass key= or add it to a Node"
            )
        return self._key

    @property
    def certificate(self) -> Libp2pCertificate:
        """Our libp2p certificate (made on first use, renewed before it expires)."""
        cert = self._cert
        now = datetime.datetime.now(datetime.UTC)
        if cert is None or cert.certificate.not_valid_after_utc - now < CERTIFICATE_RENEWAL:
            cert = self._cert = make_certificate(self.identity, key_type=self._cert_key_type)
        return cert

    def quic_configuration(self, *, is_client: bool) -> QuicConfiguration:
        """The aioquic configuration of a new connection."""
        return make_configuration(
            self.certificate,
            is_client=is_client,
            stream_window=self._stream_window,
            connection_window=self._connection_window,
            datagrams=self._datagrams,
            idle_timeout=self._idle_timeout,
            max_datagram_size=self._max_datagram_size,
        )

    # --- Transport ----------------------------------------------------------------------------

    def can_dial(self, addr: Multiaddr) -> bool:
        return self.network.parse(addr) is not None

    def observer_group(self, addr: Multiaddr) -> str | None:
        """The IPv4 address or IPv6 /56 of ``addr``, or its host on a simulated network."""
        from switchy.stack.addrbook import ip_observer_group

        sock = self.network.parse(addr)
        if sock is None:
            return None
        return ip_observer_group(str(sock[0])) or f"host:{sock[0]}"

    def can_listen(self, addr: Multiaddr) -> bool:
        return self.network.parse(addr) is not None

    async def listen(self, addr: Multiaddr, handler: ConnectionHandler) -> Listener:
        local = self.network.parse(addr)
        if local is None:
            raise UnsupportedAddress(f"QUIC cannot listen on {addr}")
        self.identity  # noqa: B018 - fail early without a key
        endpoint = await QuicEndpoint.open(self, self.network, local)
        endpoint.listen(handler)
        self._endpoints.append(endpoint)
        self._listening.append(endpoint)
        return QuicListener(endpoint)

    async def dial(
        self, addr: Multiaddr, *, remote_peer: PeerId | None = None
    ) -> Connection | MuxedConnection:
        base, in_addr = split_peer(addr)
        remote = self.network.parse(base)
        if remote is None:
            raise UnsupportedAddress(f"QUIC cannot dial {addr}")
        if remote_peer is not None and in_addr is not None and remote_peer != in_addr:
            raise InvalidConfiguration(f"{addr} names peer {in_addr}, not {remote_peer}")
        endpoint = await self._endpoint_for(remote)
        return await endpoint.connect(remote, remote_peer or in_addr)

    async def _endpoint_for(self, remote: SockAddr) -> QuicEndpoint:
        """A listening socket that can reach ``remote``, else a shared dial-only socket."""
        for ep in self._listening:
            if ep.is_listening and self.network.can_reach(ep.local_address, remote):
                return ep
        for ep in self._endpoints:
            if not ep.is_closed and self.network.can_reach(ep.local_address, remote):
                return ep
        endpoint = await QuicEndpoint.open(self, self.network, self.network.dial_address(remote))
        self._endpoints.append(endpoint)
        return endpoint

    def send_punch(self, addr: Multiaddr, data: bytes) -> bool:
        """Send one datagram of ``data`` to ``addr`` from a *listening* socket (hole punching).

        The packet leaves from the socket the peer will reach us on, so our NAT
        maps (and permits) exactly that socket toward ``addr``; a fresh socket
        would open a hole nobody uses.  Returns False (nothing sent) when ``addr``
        is not a QUIC address or no listening socket can reach it.
        """
        remote = self.network.parse(split_peer(addr)[0])
        if remote is None:
            return False
        for ep in self._listening:
            if ep.is_listening and self.network.can_reach(ep.local_address, remote):
                ep.send(data, remote)
                return True
        return False

    def _endpoint_closed(self, endpoint: QuicEndpoint) -> None:
        if endpoint in self._endpoints:
            self._endpoints.remove(endpoint)
        if endpoint in self._listening:
            self._listening.remove(endpoint)

    @property
    def endpoints(self) -> list[QuicEndpoint]:
        """The sockets open now."""
        return list(self._endpoints)

    def close(self) -> None:
        """Close every socket at once (connections end; normally the node closes them)."""
        for ep in list(self._endpoints):
            ep.close()

    def __repr__(self) -> str:
        return f"<QuicTransport {self.network!r} {len(self._endpoints)} sockets>"
